//! What the alarm engine tells dashboards and the audit trail: alarm events and
//! session changes, in one ordered stream.

use super::alarm::AlarmEvent;
use super::reading::Vital;
use super::session::{LimitOverride, Phase, Route, Session};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What changed about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionChange {
    /// The phase changed (or a session message set it on a chair it was unknown for).
    Phase,
    /// Per-patient limits changed.
    Limits,
    /// Route or course position (session number, count) changed.
    Details,
    /// The chair became ready for discharge, or stopped being.
    DischargeReady,
}

/// A session change, as dashboards receive it (without `type` and `seq`). Read back
/// from the audit trail to restore sessions after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub chair: Arc<str>,
    pub change: SessionChange,
    pub phase: Phase,
    /// The phase before, for a phase change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_number: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_count: Option<u16>,
    pub route: Route,
    /// When the current phase began, ms since the epoch.
    pub phase_since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infusion_started: Option<u64>,
    /// The personal baseline, once taken.
    #[serde(default)]
    pub baseline: BTreeMap<Vital, f64>,
    /// Per-patient limits by rule id.
    #[serde(default)]
    pub limits: BTreeMap<Arc<str>, LimitOverride>,
    pub discharge_ready: bool,
    /// `ts` of the latest session message applied (clinic clock), if any: session
    /// messages are ordered by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ts: Option<u64>,
    /// Who made the change (absent for changes the gateway made itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Arc<str>>,
    /// Gateway wall-clock time of the change, ms since the epoch.
    pub at: u64,
    /// The chair's device clock against the gateway's (`gateway − device`, ms), as
    /// estimated when the event was made; a restarted gateway starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

impl SessionEvent {
    pub fn new(chair: Arc<str>, change: SessionChange, s: &Session, at: u64) -> Self {
        SessionEvent {
            chair,
            change,
            phase: s.phase,
            previous: None,
            patient: s.patient.clone(),
            session_number: s.session_number,
            session_count: s.session_count,
            route: s.route,
            phase_since: s.phase_since,
            infusion_started: s.infusion_started,
            baseline: Vital::ALL
                .iter()
                .filter_map(|v| s.baseline_of(*v).map(|b| (*v, b)))
                .collect(),
            limits: s.overrides.clone(),
            discharge_ready: s.discharge_ready,
            message_ts: s.message_ts,
            by: s.by.clone(),
            at,
            clock_offset_ms: None,
        }
    }
}

/// One event for the fan-out, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Alarm(AlarmEvent),
    Session(SessionEvent),
}

impl Event {
    pub fn chair(&self) -> &Arc<str> {
        match self {
            Event::Alarm(a) => &a.chair,
            Event::Session(s) => &s.chair,
        }
    }
}

/// What a recorded alarm event (its frame text, read back from the audit trail
/// or the cluster's events stream) says of the readings behind it.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedAlarm {
    pub id: u64,
    pub state: String,
    pub kind: String,
    pub ts: u64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub escalated: bool,
    #[serde(default)]
    pub reminder: bool,
}

impl RecordedAlarm {
    /// The device time of the reading that raised or ended the alarm, when a
    /// reading did: its chair's readings up to then had been evaluated when the
    /// event was recorded. `None` for events of timers (escalations, reminders,
    /// technical alarms on gateway time), commands (acknowledgements) and
    /// session changes (`reason` given), whose `ts` is not a reading's.
    pub fn reading_ts(&self) -> Option<u64> {
        let by_reading = self.kind == "physiological"
            && match self.state.as_str() {
                "raised" => !self.escalated && !self.reminder,
                "cleared" => self.reason.is_none(),
                _ => false,
            };
        by_reading.then_some(self.ts)
    }
}

#[cfg(test)]
mod tests {
    use super::RecordedAlarm;

    fn recorded(text: &str) -> RecordedAlarm {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn only_events_a_reading_made_name_a_reading_time() {
        let base = r#""id":1,"kind":"physiological","ts":5000"#;
        let by_reading = [
            format!(r#"{{{base},"state":"raised"}}"#),
            format!(r#"{{{base},"state":"raised","updated":true}}"#),
            format!(r#"{{{base},"state":"cleared"}}"#),
        ];
        for text in &by_reading {
            assert_eq!(recorded(text).reading_ts(), Some(5000), "{text}");
        }
        let not_by_reading = [
            format!(r#"{{{base},"state":"raised","escalated":true}}"#),
            format!(r#"{{{base},"state":"acknowledged"}}"#),
            format!(r#"{{{base},"state":"acknowledged","reminder":true}}"#),
            format!(r#"{{{base},"state":"cleared","reason":"phase_change"}}"#),
            r#"{"id":1,"kind":"technical","ts":5000,"state":"raised"}"#.to_string(),
        ];
        for text in &not_by_reading {
            assert_eq!(recorded(text).reading_ts(), None, "{text}");
        }
    }
}
