//! Alarm events and the board of active alarms.
//!
//! The [`Board`] gives every event a gateway-wide, strictly increasing `seq` and keeps
//! the set of alarms that are raised and not yet cleared. The fan-out holds it under
//! the same lock as its replay buffer, so a snapshot's alarms and its `seq` agree.

use super::reading::Vital;
use super::rules::{Direction, Priority};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where an alarm is in its life: `raised` → (`acknowledged`) → `cleared`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    Raised,
    Acknowledged,
    Cleared,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Raised => "raised",
            AlarmState::Acknowledged => "acknowledged",
            AlarmState::Cleared => "cleared",
        }
    }
}

/// One transition of one alarm, as dashboards receive it (without `type` and `seq`,
/// which the fan-out adds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmEvent {
    /// The alarm's id: the same for its raised, acknowledged and cleared events.
    pub id: u64,
    pub state: AlarmState,
    /// `{site}/{chair}`.
    pub chair: Arc<str>,
    pub vital: Vital,
    /// The rule that raised it.
    pub rule: Arc<str>,
    /// Which side of the limit was crossed.
    pub condition: Direction,
    /// For `raised` and `cleared`, the value that caused the transition; for
    /// `acknowledged`, the value that raised the alarm.
    pub value: f64,
    pub limit: f64,
    pub priority: Priority,
    /// Device time of the reading that caused the transition (for `acknowledged`,
    /// of the reading that raised it), ms since the epoch.
    pub ts: u64,
    /// Gateway wall-clock time of the transition, ms since the epoch.
    pub received_at: u64,
    /// Device time the alarm was raised at.
    pub raised_ts: u64,
    /// Who acknowledged it, once someone has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<Arc<str>>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no active alarm has id {0}: it was never raised or has already cleared")]
    UnknownAlarm(u64),
    #[error("alarm {id} was already acknowledged by {by}")]
    AlreadyAcknowledged { id: u64, by: Arc<str> },
}

impl AckError {
    /// Machine-readable code sent to the dashboard.
    pub fn code(&self) -> &'static str {
        match self {
            AckError::UnknownAlarm(_) => "unknown_alarm",
            AckError::AlreadyAcknowledged { .. } => "already_acknowledged",
        }
    }
}

/// Gateway-wide sequence of alarm events and the alarms currently active.
#[derive(Debug, Default)]
pub struct Board {
    last_seq: u64,
    active: BTreeMap<u64, AlarmEvent>,
}

impl Board {
    /// A board whose first event gets `last_seq + 1`.
    pub fn starting_after(last_seq: u64) -> Self {
        Board {
            last_seq,
            active: BTreeMap::new(),
        }
    }

    /// The `seq` of the latest event (the starting point before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Record an event and give it the next `seq`. A `cleared` event takes its
    /// `raised_ts` and `acknowledged_by` from the alarm it clears.
    pub fn record(&mut self, event: &mut AlarmEvent) -> u64 {
        self.last_seq += 1;
        match event.state {
            AlarmState::Raised | AlarmState::Acknowledged => {
                self.active.insert(event.id, event.clone());
            }
            AlarmState::Cleared => {
                if let Some(was) = self.active.remove(&event.id) {
                    event.raised_ts = was.raised_ts;
                    event.acknowledged_by = was.acknowledged_by;
                }
            }
        }
        self.last_seq
    }

    /// The `acknowledged` event for an active, unacknowledged alarm. The caller
    /// records it with [`Board::record`].
    pub fn acknowledge(&self, id: u64, by: Arc<str>, now_ms: u64) -> Result<AlarmEvent, AckError> {
        let alarm = self.active.get(&id).ok_or(AckError::UnknownAlarm(id))?;
        if let Some(prev) = &alarm.acknowledged_by {
            return Err(AckError::AlreadyAcknowledged {
                id,
                by: prev.clone(),
            });
        }
        Ok(AlarmEvent {
            state: AlarmState::Acknowledged,
            ts: alarm.raised_ts,
            received_at: now_ms,
            acknowledged_by: Some(by),
            ..alarm.clone()
        })
    }

    /// Active alarms in id order, each as its latest event.
    pub fn active(&self) -> impl Iterator<Item = &AlarmEvent> {
        self.active.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, state: AlarmState) -> AlarmEvent {
        AlarmEvent {
            id,
            state,
            chair: Arc::from("north/1"),
            vital: Vital::Spo2,
            rule: Arc::from("spo2_low"),
            condition: Direction::Low,
            value: 88.0,
            limit: 90.0,
            priority: Priority::High,
            ts: 10,
            received_at: 11,
            raised_ts: 10,
            acknowledged_by: None,
        }
    }

    #[test]
    fn seq_increases_and_active_set_follows_the_lifecycle() {
        let mut b = Board::default();
        assert_eq!(b.record(&mut event(1, AlarmState::Raised)), 1);
        let mut ack = b.acknowledge(1, Arc::from("kim"), 20).unwrap();
        assert_eq!(ack.state, AlarmState::Acknowledged);
        assert_eq!(b.record(&mut ack), 2);
        assert!(matches!(
            b.acknowledge(1, Arc::from("lee"), 21),
            Err(AckError::AlreadyAcknowledged { .. })
        ));
        assert_eq!(b.active().count(), 1);
        let mut clear = event(1, AlarmState::Cleared);
        clear.raised_ts = 0;
        assert_eq!(b.record(&mut clear), 3);
        assert_eq!(clear.raised_ts, 10);
        assert_eq!(clear.acknowledged_by.as_deref(), Some("kim"));
        assert_eq!(b.active().count(), 0);
        assert_eq!(
            b.acknowledge(1, Arc::from("kim"), 22),
            Err(AckError::UnknownAlarm(1))
        );
    }
}
