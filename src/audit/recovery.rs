//! What the audit trail tells a starting gateway of the run before it.

use super::{clamp_i64, stored, Audit, AuditError, Stored, COLUMNS, LATEST_IDS};
use rusqlite::params;

impl Audit {
    /// The most recent record of `kind` for every chair (one per chair,
    /// ordered by chair), for restart recovery. "Most recent" is insertion
    /// order, not `at_ms`: that is the order dashboards saw, and it survives
    /// wall-clock steps and `seq` restarting in a new instance.
    pub fn latest_per_chair(&self, kind: &str) -> Result<Vec<Stored>, AuditError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE id IN ({LATEST_IDS}) ORDER BY chair"
        ))?;
        let rows = stmt.query_map([kind], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Alarms whose latest event is not `cleared`: alarms open when the gateway
    /// stopped, oldest first, each as its latest event. Read at start-up so that an
    /// alarm nobody acknowledged (a latched one especially) is not lost in a restart.
    pub fn open_alarms(&self) -> Result<Vec<Stored>, AuditError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE id IN
               (SELECT max(id) FROM events WHERE kind = 'alarm'
                GROUP BY json_extract(body, '$.id'))
             AND json_extract(body, '$.state') <> 'cleared'
             ORDER BY id"
        ))?;
        let rows = stmt.query_map([], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records of `kind` made within `window_ms` (by `at_ms`) of the latest one,
    /// in insertion order: what was going on when the gateway last stopped.
    pub fn latest_window(&self, kind: &str, window_ms: u64) -> Result<Vec<Stored>, AuditError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE kind = ?1
               AND at_ms >= (SELECT max(at_ms) FROM events WHERE kind = ?1) - ?2
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![kind, clamp_i64(window_ms)], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
