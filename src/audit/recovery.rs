//! What the audit trail tells a starting gateway of the run before it.

use super::{clamp_i64, stored, Audit, AuditError, Stored, COLUMNS, LATEST_IDS};
use rusqlite::params;

/// The `at_ms` of the latest record of kind `?1`.
const LATEST_AT: &str = "SELECT at_ms FROM events WHERE +kind = ?1 ORDER BY id DESC LIMIT 1";

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

    /// Records of `kind` made within `window_ms` (by `at_ms`) before the latest
    /// one (by insertion order, so a wall clock that stepped back since an
    /// earlier record does not hide the last ones), in insertion order: what
    /// was going on when the gateway last stopped. (`+kind`: the latest record
    /// is found walking the table back from its end, not by sorting every
    /// record of `kind` the index holds.)
    pub fn latest_window(&self, kind: &str, window_ms: u64) -> Result<Vec<Stored>, AuditError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE kind = ?1
               AND at_ms >= ({LATEST_AT}) - ?2
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![kind, clamp_i64(window_ms)], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::{Audit, Record};

    fn alarm(seq: u64, at_ms: u64) -> Record<'static> {
        Record {
            seq,
            instance: "00112233aabbccdd",
            kind: "alarm",
            chair: "north/1",
            at_ms,
            body: "{}",
        }
    }

    #[test]
    fn the_latest_record_is_found_without_sorting_a_kinds_records() {
        let audit = Audit::in_memory().unwrap();
        let conn = audit.reader();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::LATEST_AT))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(["alarm"], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    #[test]
    fn the_latest_window_is_counted_back_from_the_last_record() {
        let audit = Audit::in_memory().unwrap();
        assert!(audit.latest_window("alarm", 600_000).unwrap().is_empty());
        // The wall clock stepped back an hour before the last two records.
        let records = [
            alarm(1, 1_000_000),
            alarm(2, 5_000_000),
            alarm(3, 5_500_000),
            alarm(4, 1_500_000),
            alarm(5, 1_600_000),
        ];
        audit.append(&records).unwrap();
        let seqs = |window_ms| -> Vec<u64> {
            let rows = audit.latest_window("alarm", window_ms).unwrap();
            rows.iter().map(|s| s.seq).collect()
        };
        assert_eq!(seqs(600_000), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(100_000), [2, 3, 4, 5], "at or after 1,500,000");
    }
}
