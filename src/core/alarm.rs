//! Alarm events and the board of active alarms.
//!
//! The [`Board`] gives every event a gateway-wide, strictly increasing `seq`, keeps
//! the set of alarms that are raised and not yet cleared, and decides when an alarm
//! is due for escalation (raised, not acknowledged in time) or a reminder
//! (acknowledged, still active). The fan-out holds it under the same lock as its
//! replay buffer, so a snapshot's alarms and its `seq` agree.

use super::condition::AlarmKind;
use super::reading::{Pump, Vital};
use super::rules::{Direction, Priority};
use super::session::{Phase, Route};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where an alarm is in its life: `raised` → (`acknowledged`) → `cleared`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// One part of a combined alarm: the vital, its value and the limit it crossed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartValue {
    pub vital: Vital,
    pub condition: Direction,
    pub value: f64,
    pub limit: f64,
}

/// One rule an alarm holds: met now, or latched (ended, waiting for an
/// acknowledgement).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMet {
    pub rule: Arc<str>,
    pub priority: Priority,
    /// The value and limit it joined the alarm with.
    pub value: f64,
    pub limit: f64,
}

/// What was going on at the chair when the alarm changed: what a nurse needs to
/// judge it without looking anything up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AlarmContext {
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_number: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_count: Option<u16>,
    pub route: Route,
    /// Minutes since the infusion started (infusion and recovery only), to 0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infusion_minute: Option<f64>,
    /// The pump's latest report: rate and volume infused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pump: Option<Pump>,
    /// The patient's baseline for the alarm's vital.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// For combined alarms, every part.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartValue>,
}

/// One transition of one alarm, as dashboards receive it (without `type` and `seq`,
/// which the fan-out adds). Read back from the audit trail for alarms open at a
/// restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// The alarm's id: the same for its raised, acknowledged and cleared events.
    pub id: u64,
    pub state: AlarmState,
    /// `{site}/{chair}`.
    pub chair: Arc<str>,
    /// `physiological` (about the patient) or `technical` (equipment, data).
    pub kind: AlarmKind,
    /// The vital concerned; absent for a device offline alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vital: Option<Vital>,
    /// The rule that raised it.
    pub rule: Arc<str>,
    /// Which side of the limit was crossed.
    pub condition: Direction,
    /// For `raised` and `cleared`, the value that caused the transition (technical:
    /// seconds without data); for later events, the value that raised the alarm.
    pub value: f64,
    /// The limit crossed, as it applied to this patient (technical: the allowance, s).
    pub limit: f64,
    pub priority: Priority,
    /// One line for a person: "SpO2 88 below 90", "SpO2 stale 15 s".
    pub message: Arc<str>,
    /// Stays raised after the condition ends, until acknowledged.
    pub latching: bool,
    /// Device time of the reading that caused the transition (gateway time for
    /// technical alarms and re-sends), ms since the epoch.
    pub ts: u64,
    /// Gateway wall-clock time of this event, ms since the epoch.
    pub received_at: u64,
    /// Time the alarm was raised at.
    pub raised_ts: u64,
    /// Re-sent because nobody acknowledged it in time.
    pub escalated: bool,
    /// 0 until escalated; then the whole escalation periods since the raise (capped
    /// at the maximum level), carried by each re-send while unacknowledged: 1, 2,
    /// ... one per period, or a skip to the level due after the timer did not run
    /// for more than a period (a restart, a late tick).
    pub escalation_level: u8,
    /// Re-sent because it is still active a while after it was acknowledged.
    pub reminder: bool,
    /// Why a `cleared` alarm ended, when not simply by the value recovering:
    /// `acknowledged` (latched), `phase_change`, `data_returned`, `no_limit`,
    /// `not_restored`, `new_session`.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub reason: Option<&'static str>,
    /// Who acknowledged it, once someone has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<Arc<str>>,
    /// Every rule the alarm holds, highest priority first: the first is `rule` and
    /// sets `priority`. One alarm stands for one vital and direction (or one probe),
    /// however many of its rules are met. Empty on `cleared`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleMet>,
    /// An open alarm changed: rules joined or left it, its priority may have too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub updated: bool,
    /// On an update that changed the priority, the priority before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_priority: Option<Priority>,
    #[serde(default)]
    pub context: AlarmContext,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no active alarm has id {0}: it was never raised or has already cleared")]
    UnknownAlarm(u64),
    #[error("alarm {id} was already acknowledged by {by}")]
    AlreadyAcknowledged { id: u64, by: Arc<str> },
    #[error("the gateway is shutting down; acknowledge the alarm on the gateway you reconnect to")]
    ShuttingDown,
    #[error("the acknowledgement could not be stored (cluster mode: the chair's partition changed hands); send it again")]
    NotJournaled,
}

impl AckError {
    /// Machine-readable code sent to the dashboard.
    pub fn code(&self) -> &'static str {
        match self {
            AckError::UnknownAlarm(_) => "unknown_alarm",
            AckError::AlreadyAcknowledged { .. } => "already_acknowledged",
            AckError::ShuttingDown => "shutting_down",
            AckError::NotJournaled => "not_journaled",
        }
    }
}

/// When unacknowledged alarms escalate and acknowledged ones remind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EscalationPolicy {
    /// Per priority (indexed high, medium, low), how long a raised alarm may go
    /// unacknowledged before each escalation, ms; 0 never escalates.
    pub escalate_after_ms: [u64; 3],
    /// Highest escalation level.
    pub max_level: u8,
    /// An acknowledged alarm still active after this long is re-sent as a reminder,
    /// and again every this long, ms; 0 never reminds.
    pub reminder_ms: u64,
}

impl EscalationPolicy {
    /// The escalation period of `priority`, ms (0: never).
    pub fn after_ms(&self, priority: Priority) -> u64 {
        self.escalate_after_ms[priority_index(priority)]
    }
}

fn priority_index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Medium => 1,
        Priority::Low => 2,
    }
}

/// One active alarm as the board holds it (serialisable: cluster mode carries
/// it to a chair's next owner in the chair's snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// Its latest event.
    pub event: AlarmEvent,
    /// Gateway time of the raise, and of the acknowledgement.
    pub raised_at: u64,
    pub acknowledged_at: Option<u64>,
    /// Gateway time of the last reminder.
    pub reminded_at: Option<u64>,
}

/// Gateway-wide sequence of events and the alarms currently active.
#[derive(Debug, Default)]
pub struct Board {
    last_seq: u64,
    active: BTreeMap<u64, Active>,
}

impl Board {
    /// A board whose first event gets `last_seq + 1`.
    pub fn starting_after(last_seq: u64) -> Self {
        Board {
            last_seq,
            active: BTreeMap::new(),
        }
    }

    /// Drop the active alarms of every chair `which` names, without an event:
    /// another owner carries on with them (cluster mode).
    pub fn forget(&mut self, which: impl Fn(&str) -> bool) {
        self.active.retain(|_, a| !which(&a.event.chair));
    }

    /// The `seq` of the latest event (the starting point before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Take the next `seq` for an event that is not an alarm (a session change).
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Record an alarm event and give it the next `seq`. A `cleared` event takes its
    /// `raised_ts`, escalation and `acknowledged_by` from the alarm it clears.
    pub fn record(&mut self, event: &mut AlarmEvent) -> u64 {
        match event.state {
            AlarmState::Raised => match self.active.get_mut(&event.id) {
                None => {
                    self.active.insert(
                        event.id,
                        Active {
                            event: event.clone(),
                            raised_at: event.received_at,
                            acknowledged_at: None,
                            reminded_at: None,
                        },
                    );
                }
                Some(a) => {
                    if event.updated {
                        event.raised_ts = a.event.raised_ts;
                        if a.acknowledged_at.is_some() || event.priority != a.event.priority {
                            // Unacknowledged again, or at a new priority: its
                            // escalation counts afresh from now.
                            a.raised_at = event.received_at;
                            a.acknowledged_at = None;
                            a.reminded_at = None;
                            event.escalation_level = 0;
                            event.acknowledged_by = None;
                        } else {
                            event.escalation_level = a.event.escalation_level;
                        }
                    }
                    a.event = event.clone();
                }
            },
            AlarmState::Acknowledged => {
                if let Some(a) = self.active.get_mut(&event.id) {
                    if event.updated {
                        event.raised_ts = a.event.raised_ts;
                        event.escalation_level = a.event.escalation_level;
                        if event.acknowledged_by.is_none() {
                            event.acknowledged_by = a.event.acknowledged_by.clone();
                        }
                    } else if !event.reminder {
                        a.acknowledged_at = Some(event.received_at);
                    }
                    a.event = event.clone();
                }
            }
            AlarmState::Cleared => {
                if let Some(was) = self.active.remove(&event.id) {
                    event.raised_ts = was.event.raised_ts;
                    event.acknowledged_by = was.event.acknowledged_by;
                    event.escalation_level = was.event.escalation_level;
                    event.escalated = false;
                    event.reminder = false;
                }
            }
        }
        self.next_seq()
    }

    /// The `acknowledged` event for an active, unacknowledged alarm. The caller
    /// records it with [`Board::record`].
    pub fn acknowledge(&self, id: u64, by: Arc<str>, now_ms: u64) -> Result<AlarmEvent, AckError> {
        let alarm = &self
            .active
            .get(&id)
            .ok_or(AckError::UnknownAlarm(id))?
            .event;
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
            escalated: false,
            reminder: false,
            updated: false,
            previous_priority: None,
            ..alarm.clone()
        })
    }

    /// Escalations and reminders due at gateway time `now_ms`. The caller records
    /// each with [`Board::record`] and sends it.
    ///
    /// An unacknowledged alarm is re-sent at the level due now, not one level
    /// higher than before: when the timer has not run for more than a period (an
    /// alarm restored at start-up, raised minutes before), a dashboard gets one
    /// event at the right level, not one per level a tick apart.
    pub fn due(&self, now_ms: u64, policy: &EscalationPolicy) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        for a in self.active.values() {
            let e = &a.event;
            match a.acknowledged_at {
                None => {
                    let after = policy.after_ms(e.priority);
                    let due_level = match after {
                        0 => 0,
                        _ => (now_ms.saturating_sub(a.raised_at) / after)
                            .min(u64::from(policy.max_level)) as u8,
                    };
                    if due_level > e.escalation_level {
                        out.push(AlarmEvent {
                            updated: false,
                            previous_priority: None,
                            escalated: true,
                            escalation_level: due_level,
                            reminder: false,
                            reason: None,
                            received_at: now_ms,
                            ts: now_ms,
                            ..e.clone()
                        });
                    }
                }
                Some(acked) => {
                    let since = a.reminded_at.unwrap_or(acked);
                    if policy.reminder_ms > 0 && now_ms.saturating_sub(since) >= policy.reminder_ms
                    {
                        out.push(AlarmEvent {
                            updated: false,
                            previous_priority: None,
                            reminder: true,
                            escalated: false,
                            reason: None,
                            received_at: now_ms,
                            ts: now_ms,
                            ..e.clone()
                        });
                    }
                }
            }
        }
        out
    }

    /// Note that a reminder was sent (after recording it).
    pub fn reminded(&mut self, id: u64, now_ms: u64) {
        if let Some(a) = self.active.get_mut(&id) {
            a.reminded_at = Some(now_ms);
        }
    }

    /// Take back an alarm that was open when the previous run stopped (from the
    /// audit trail), without a new event: it stays as it was, with its escalation
    /// timing counted from its original raise.
    pub fn restore(&mut self, event: AlarmEvent, raised_at: u64, acknowledged_at: Option<u64>) {
        self.active.insert(
            event.id,
            Active {
                event,
                raised_at,
                acknowledged_at,
                reminded_at: None,
            },
        );
    }

    /// The active alarms of `chair`, as held, in id order.
    pub fn of_chair(&self, chair: &str) -> Vec<Active> {
        self.active
            .values()
            .filter(|a| &*a.event.chair == chair)
            .cloned()
            .collect()
    }

    /// Take back an active alarm exactly as another board held it (see
    /// [`Board::of_chair`]), without an event.
    pub fn take_back(&mut self, alarm: Active) {
        self.active.insert(alarm.event.id, alarm);
    }

    /// Active alarm `id` as held.
    pub fn get(&self, id: u64) -> Option<&Active> {
        self.active.get(&id)
    }

    /// Whether alarm `id` is active here, and if so whether acknowledged.
    pub fn is_acknowledged(&self, id: u64) -> Option<bool> {
        self.active.get(&id).map(|a| a.acknowledged_at.is_some())
    }

    /// Drop active alarm `id` without an event.
    pub fn drop_alarm(&mut self, id: u64) {
        self.active.remove(&id);
    }

    /// The chair of active alarm `id`.
    pub fn chair_of(&self, id: u64) -> Option<&Arc<str>> {
        self.active.get(&id).map(|a| &a.event.chair)
    }

    /// Active alarms in id order, each as its latest event.
    pub fn active(&self) -> impl Iterator<Item = &AlarmEvent> {
        self.active.values().map(|a| &a.event)
    }
}

#[cfg(test)]
#[path = "alarm_tests.rs"]
pub(crate) mod tests;
