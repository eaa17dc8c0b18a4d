//! Restart recovery: what the audit trail says of the run before, taken back into
//! the engine before it runs.
//!
//! - Every chair's latest session, so that phase, patient, baseline and limits
//!   are known before the first message (a persistent MQTT session does not
//!   resend retained messages).
//! - The alarms that were open, so that one nobody acknowledged survives.
//! - Per chair, the device time up to which readings had been evaluated: a
//!   reading applied and journaled but not yet acknowledged when the gateway
//!   died is redelivered by the broker, and must not raise its alarm again.

use crate::audit::{self, Audit};
use crate::{core, engine};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the audit trail says was going on when the previous run stopped.
#[derive(Default)]
pub(crate) struct Restored {
    sessions: Vec<audit::Stored>,
    open_alarms: Vec<audit::Stored>,
    /// Per chair, the device time up to which its readings had been evaluated.
    evaluated: BTreeMap<String, u64>,
}

impl Restored {
    /// Read at start-up, off the runtime. What cannot be read is logged and left
    /// out: the gateway starts without it.
    pub(crate) async fn read(audit: &Arc<Audit>) -> Restored {
        let audit = audit.clone();
        let read = move || {
            let mut r = Restored::default();
            match audit.latest_per_chair("session") {
                Ok(records) => r.sessions = records,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read sessions from the audit trail (chairs start idle)")
                }
            }
            match audit.open_alarms() {
                Ok(records) => r.open_alarms = records,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read open alarms from the audit trail")
                }
            }
            match audit.latest_window("alarm", REDELIVERY_WINDOW_MS) {
                Ok(records) => r.evaluated = evaluated_until(&records),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the latest alarms from the audit trail (readings the broker redelivers may alarm again)")
                }
            }
            r
        };
        tokio::task::spawn_blocking(read).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the audit trail at start-up failed");
            Restored::default()
        })
    }

    /// Restore every chair's session, so that a restarted gateway knows each
    /// chair's phase, patient, baseline and limits before the first message
    /// arrives (a persistent MQTT session does not resend retained messages); then
    /// take back the alarms that were open (raised or acknowledged, not cleared),
    /// so that one nobody acknowledged is not lost in a restart: a latched alarm
    /// stays until acknowledged, an unacknowledged one keeps escalating. One that
    /// no longer matches a rule of its chair's profile (rules changed) is closed
    /// with `reason: "not_restored"`, so the record is complete.
    pub(crate) fn apply(self, r: &mut engine::Restore<'_>, now: u64) {
        let mut sessions = 0;
        for record in self.sessions {
            match serde_json::from_str::<core::SessionEvent>(&record.body) {
                // Idle chairs too: their last message time keeps an old retained
                // message for a previous patient from bringing that session back.
                Ok(e) => match r.session(&e, now) {
                    Ok(()) => sessions += 1,
                    Err(err) => {
                        tracing::warn!(chair = %record.chair, error = %err, "session not restored")
                    }
                },
                Err(err) => {
                    tracing::warn!(chair = %record.chair, error = %err, "unreadable session record")
                }
            }
        }
        if sessions > 0 {
            tracing::info!(chairs = sessions, "sessions restored from the audit trail");
        }
        let (mut restored, mut closed) = (0, 0);
        for record in self.open_alarms {
            match serde_json::from_str::<core::AlarmEvent>(&record.body) {
                Ok(event) => match r.alarm(event, now) {
                    true => restored += 1,
                    false => closed += 1,
                },
                Err(err) => {
                    tracing::warn!(chair = %record.chair, error = %err, "unreadable alarm record")
                }
            }
        }
        if restored > 0 || closed > 0 {
            tracing::warn!(restored, closed, "alarms open at the last stop taken back");
        }
        for (chair, ts) in &self.evaluated {
            if let Err(e) = r.evaluated_until(chair, *ts, now) {
                tracing::warn!(chair = %chair, error = %e, "chair's evaluated readings not restored");
            }
        }
    }
}

/// How long before the latest alarm event an event is looked at for the readings
/// behind it. The readings a broker redelivers after a crash are those not yet
/// acknowledged, and a reading is acknowledged within milliseconds of its commit:
/// ten minutes bounds a gateway stalled before it died, and keeps the read to a
/// few rows however large the file.
const REDELIVERY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Per chair, the latest device time of a reading that raised or ended an alarm
/// in `records` ([`core::RecordedAlarm::reading_ts`]).
fn evaluated_until(records: &[audit::Stored]) -> BTreeMap<String, u64> {
    let mut until = BTreeMap::new();
    for record in records {
        let Ok(alarm) = serde_json::from_str::<core::RecordedAlarm>(&record.body) else {
            continue;
        };
        if let Some(ts) = alarm.reading_ts() {
            let at: &mut u64 = until.entry(record.chair.clone()).or_default();
            *at = (*at).max(ts);
        }
    }
    until
}
