//! Alarm conditions at run time: what each compiled rule checks, and the state
//! machine every condition shares (delay, hysteresis, latching, acknowledgement).

use super::reading::Vital;
use super::session::{Phase, PhaseSet, Route, Session};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Alarm priority after IEC 60601-1-8. Ordered so that `High > Medium > Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of its limit a condition watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Breached when the value is below the limit.
    Low,
    /// Breached when the value is above the limit.
    High,
}

/// Physiological alarms are about the patient; technical ones about the equipment
/// or the data (IEC 60601-1-8 keeps the two apart in every signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmKind {
    Physiological,
    Technical,
}

/// A limit on one side of one vital: absolute, relative to the patient's baseline,
/// or both, in which case the stricter one applies — unless `widens`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limit {
    pub absolute: Option<f64>,
    /// Distance from the baseline (below it for a low limit, above for a high one).
    pub from_baseline: Option<f64>,
    /// Multiple of the baseline (e.g. 1.3 for a high limit, 0.9 for a low one).
    pub baseline_ratio: Option<f64>,
    /// The baseline-relative limit replaces the absolute one where it lies further
    /// out: the limit follows a patient whose own baseline plus the expected change
    /// is beyond the absolute limit, and is the absolute one for everyone else and
    /// for a patient without a baseline. A per-patient limit then applies alone.
    pub widens: bool,
}

impl Limit {
    /// The limit that applies to a patient with `baseline`, the absolute part
    /// replaced by `absolute_override` when given. `None`: nothing to compare with.
    pub fn effective(
        &self,
        direction: Direction,
        baseline: Option<f64>,
        absolute_override: Option<f64>,
    ) -> Option<f64> {
        if self.widens && absolute_override.is_some() {
            return absolute_override;
        }
        let absolute = absolute_override.or(self.absolute);
        let relative = baseline.into_iter().flat_map(|b| {
            let delta = self.from_baseline.map(|d| match direction {
                Direction::Low => b - d,
                Direction::High => b + d,
            });
            [delta, self.baseline_ratio.map(|r| b * r)]
        });
        if self.widens {
            // The stricter of the relative limits, then the looser of that and the
            // absolute one.
            let relative = match direction {
                Direction::Low => relative.flatten().reduce(f64::max),
                Direction::High => relative.flatten().reduce(f64::min),
            };
            let candidates = absolute.into_iter().chain(relative);
            return match direction {
                Direction::Low => candidates.reduce(f64::min),
                Direction::High => candidates.reduce(f64::max),
            };
        }
        let candidates = absolute.into_iter().chain(relative.flatten());
        match direction {
            Direction::Low => candidates.reduce(f64::max),
            Direction::High => candidates.reduce(f64::min),
        }
    }

    pub fn uses_baseline(&self) -> bool {
        self.from_baseline.is_some() || self.baseline_ratio.is_some()
    }
}

/// What a condition checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// One vital against a limit.
    Threshold {
        vital: Vital,
        direction: Direction,
        limit: Limit,
    },
    /// Every part breached at once (e.g. respiratory depression: RR low and SpO2
    /// falling). The first part names the alarm's vital.
    Combined {
        parts: Vec<(Vital, Direction, Limit)>,
    },
    /// The vital moved by more than `by` within `window_ms` (a rise for `High`).
    Trend {
        vital: Vital,
        direction: Direction,
        by: f64,
        window_ms: u64,
    },
    /// Technical: nothing new for `vital` for longer than `allowance_ms`.
    Stale { vital: Vital, allowance_ms: u64 },
    /// Technical: the device said it is offline, or nothing at all arrived for
    /// longer than `silent_ms`.
    Offline { silent_ms: u64 },
    /// Technical: the pump is running but there is no live SpO2.
    /// The pump counts as running while its latest report says so and the chair
    /// has been heard from within `heard_within_ms` (the offline allowance): a pump
    /// may report rarely, but a chair gone silent is not known to infuse.
    PumpWithoutSpo2 {
        allowance_ms: u64,
        heard_within_ms: u64,
    },
}

impl Check {
    /// The vital an alarm of this condition is about, if any.
    pub fn vital(&self) -> Option<Vital> {
        match self {
            Check::Threshold { vital, .. }
            | Check::Trend { vital, .. }
            | Check::Stale { vital, .. } => Some(*vital),
            Check::Combined { parts } => parts.first().map(|p| p.0),
            Check::Offline { .. } => None,
            Check::PumpWithoutSpo2 { .. } => Some(Vital::Spo2),
        }
    }

    pub fn direction(&self) -> Direction {
        match self {
            Check::Threshold { direction, .. } | Check::Trend { direction, .. } => *direction,
            Check::Combined { parts } => parts.first().map_or(Direction::Low, |p| p.1),
            _ => Direction::High,
        }
    }

    pub fn kind(&self) -> AlarmKind {
        match self {
            Check::Threshold { .. } | Check::Combined { .. } | Check::Trend { .. } => {
                AlarmKind::Physiological
            }
            _ => AlarmKind::Technical,
        }
    }

    /// Whether it is judged on gateway time by the periodic tick (silence cannot be
    /// noticed when a reading arrives).
    pub fn is_timed(&self) -> bool {
        matches!(
            self,
            Check::Stale { .. } | Check::Offline { .. } | Check::PumpWithoutSpo2 { .. }
        )
    }
}

/// One compiled alarm condition, shared by every patient.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The rule's id, carried in every alarm it raises.
    pub rule: Arc<str>,
    pub check: Check,
    pub priority: Priority,
    /// How long the breach must last before raising (device time for physiological
    /// conditions).
    pub delay_ms: u64,
    /// How far back inside the limit a value must come to clear.
    pub hysteresis: f64,
    /// The phases the condition applies in: the phase's profile.
    pub phases: PhaseSet,
    /// Applies only to sessions 1..=this of a course (stricter early sessions).
    pub max_session: Option<u16>,
    /// Only with a pump (route `iv`).
    pub needs_pump: bool,
    /// Stays raised after the value recovers, until acknowledged.
    pub latching: bool,
}

impl Condition {
    /// Whether the condition applies to a chair in this session.
    pub fn applies(&self, session: &Session) -> bool {
        self.phases.contains(session.phase)
            && (!self.needs_pump || session.route == Route::Iv)
            && match (self.max_session, session.session_number) {
                (Some(max), Some(k)) => k <= max,
                // Course position unknown: apply the stricter early-session rule.
                _ => true,
            }
            // Without a session a chair has no patient to be offline from.
            && !(matches!(self.check, Check::Offline { .. }) && session.phase == Phase::Idle)
    }
}

/// One measurement of a condition: is it breached, has it recovered (with
/// hysteresis), and the value and limit to report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    pub breached: bool,
    pub recovered: bool,
    pub value: f64,
    pub limit: f64,
}

impl Measure {
    /// `value` against `limit` on `direction`'s side, clearing `hysteresis` inside.
    pub fn against(value: f64, limit: f64, direction: Direction, hysteresis: f64) -> Measure {
        let (breached, recovered) = match direction {
            Direction::Low => (value < limit, value >= limit + hysteresis),
            Direction::High => (value > limit, value <= limit - hysteresis),
        };
        Measure {
            breached,
            recovered,
            value,
            limit,
        }
    }
}

/// The state of one condition for one patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConditionState {
    #[default]
    Normal,
    /// Breached since `since`, not yet for the whole delay.
    Pending { since: u64 },
    /// An alarm is raised and has not cleared.
    Active { alarm_id: u64, acknowledged: bool },
    /// A latching alarm whose condition has ended; it waits for acknowledgement.
    Latched { alarm_id: u64 },
}

impl ConditionState {
    pub fn alarm_id(&self) -> Option<u64> {
        match self {
            ConditionState::Active { alarm_id, .. } | ConditionState::Latched { alarm_id } => {
                Some(*alarm_id)
            }
            _ => None,
        }
    }
}

/// What one measurement did to one condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Raised { alarm_id: u64 },
    Cleared { alarm_id: u64 },
}

/// Raise a new alarm on `state`.
fn raise(state: &mut ConditionState, next_id: &mut dyn FnMut() -> u64) -> Step {
    let alarm_id = next_id();
    *state = ConditionState::Active {
        alarm_id,
        acknowledged: false,
    };
    Step::Raised { alarm_id }
}

impl Condition {
    /// Advance `state` with a measurement taken at `ts` (non-decreasing; device time
    /// for physiological conditions, gateway time for technical ones). `next_id`
    /// allocates the id of a newly raised alarm.
    pub fn step(
        &self,
        state: &mut ConditionState,
        m: &Measure,
        ts: u64,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Step {
        match *state {
            ConditionState::Normal if m.breached => {
                if self.delay_ms == 0 {
                    raise(state, next_id)
                } else {
                    *state = ConditionState::Pending { since: ts };
                    Step::Nothing
                }
            }
            ConditionState::Normal => Step::Nothing,
            ConditionState::Pending { since } => {
                if !m.breached {
                    *state = ConditionState::Normal;
                    Step::Nothing
                } else if ts.saturating_sub(since) >= self.delay_ms {
                    raise(state, next_id)
                } else {
                    Step::Nothing
                }
            }
            ConditionState::Active {
                alarm_id,
                acknowledged,
            } => {
                if !m.recovered {
                    Step::Nothing
                } else if self.latching && !acknowledged {
                    *state = ConditionState::Latched { alarm_id };
                    Step::Nothing
                } else {
                    *state = ConditionState::Normal;
                    Step::Cleared { alarm_id }
                }
            }
            ConditionState::Latched { alarm_id } => {
                if m.breached {
                    // Still the same unacknowledged alarm: the condition is back.
                    *state = ConditionState::Active {
                        alarm_id,
                        acknowledged: false,
                    };
                }
                Step::Nothing
            }
        }
    }

    /// The alarm on this condition was acknowledged: a latched alarm whose condition
    /// has ended clears now; an active one clears when its value recovers.
    pub fn acknowledge(state: &mut ConditionState) -> Step {
        match *state {
            ConditionState::Latched { alarm_id } => {
                *state = ConditionState::Normal;
                Step::Cleared { alarm_id }
            }
            ConditionState::Active { alarm_id, .. } => {
                *state = ConditionState::Active {
                    alarm_id,
                    acknowledged: true,
                };
                Step::Nothing
            }
            _ => Step::Nothing,
        }
    }

    /// The condition joined an alarm already acknowledged, without raising its
    /// priority: it is acknowledged with it (an active one only; nothing clears).
    pub fn acknowledge_joined(state: &mut ConditionState) {
        if let ConditionState::Active { alarm_id, .. } = *state {
            *state = ConditionState::Active {
                alarm_id,
                acknowledged: true,
            };
        }
    }

    /// The condition no longer applies (phase changed): end whatever it holds.
    pub fn withdraw(state: &mut ConditionState) -> Step {
        let was = *state;
        *state = ConditionState::Normal;
        match was.alarm_id() {
            Some(alarm_id) => Step::Cleared { alarm_id },
            None => Step::Nothing,
        }
    }
}

#[cfg(test)]
#[path = "condition_tests.rs"]
mod tests;
