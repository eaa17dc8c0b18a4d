//! The ward: every chair's patient state in a concurrent map, and the rules they share.

use super::alarm::{AlarmEvent, AlarmState};
use super::patient::{Applied, Latest, PatientState};
use super::reading::Reading;
use super::rules::{RuleSet, Step};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A reading could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WardError {
    #[error("the ward already tracks its maximum of {0} chairs")]
    ChairLimit(usize),
}

/// What applying a reading produced.
// Returned by value once per reading and never stored: boxing would only add an
// allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A redelivered reading: nothing changed, nothing to send.
    Duplicate,
    Accepted {
        /// The chair's key, shared with its map entry.
        chair: Arc<str>,
        /// Alarm events to hand to the fan-out, in order.
        events: Vec<AlarmEvent>,
        /// Values older than the vital's latest, ignored.
        late_values: usize,
        /// The device clock stepped back (see [`PatientState::apply`]).
        clock_stepped_back: bool,
        /// The chair's state after the reading, for live vitals.
        latest: Latest,
    },
}

/// One chair and its latest values, for snapshots.
#[derive(Debug, Clone)]
pub struct ChairView {
    pub chair: Arc<str>,
    pub latest: Latest,
}

pub struct Ward {
    patients: DashMap<Arc<str>, PatientState>,
    rules: Arc<RuleSet>,
    max_chairs: usize,
    last_alarm_id: AtomicU64,
}

impl Ward {
    /// A ward whose first alarm gets id 1.
    pub fn new(rules: Arc<RuleSet>, max_chairs: usize) -> Self {
        Self::with_alarm_ids_after(rules, max_chairs, 0)
    }

    /// A ward whose alarm ids start after `last_alarm_id`. The gateway starts them
    /// after its start time in microseconds, so an id from an earlier run (held by a
    /// dashboard that has not caught up) never names a different patient's alarm.
    pub fn with_alarm_ids_after(
        rules: Arc<RuleSet>,
        max_chairs: usize,
        last_alarm_id: u64,
    ) -> Self {
        Ward {
            patients: DashMap::new(),
            rules,
            max_chairs,
            last_alarm_id: AtomicU64::new(last_alarm_id),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn chair_count(&self) -> usize {
        self.patients.len()
    }

    /// Apply a reading to `chair`'s state and build the alarm events it caused.
    ///
    /// The map guard is held only for the state update; events are built after it is
    /// released, so nothing here ever holds a guard while touching another key.
    pub fn apply(
        &self,
        chair: &str,
        reading: &Reading,
        received_at: u64,
    ) -> Result<Outcome, WardError> {
        let mut next_id = || self.last_alarm_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (key, applied) = match self.patients.get_mut(chair) {
            Some(mut state) => {
                let key = state.key().clone();
                let applied = state.apply(&self.rules, reading, received_at, &mut next_id);
                (key, applied)
            }
            None => {
                if self.patients.len() >= self.max_chairs {
                    return Err(WardError::ChairLimit(self.max_chairs));
                }
                let key: Arc<str> = Arc::from(chair);
                let mut entry = self
                    .patients
                    .entry(key.clone())
                    .or_insert_with(|| PatientState::new(&self.rules));
                let applied = entry.apply(&self.rules, reading, received_at, &mut next_id);
                (key, applied)
            }
        };
        Ok(match applied {
            Applied::Duplicate => Outcome::Duplicate,
            Applied::Accepted {
                transitions,
                late_values,
                clock_stepped_back,
                latest,
            } => Outcome::Accepted {
                clock_stepped_back,
                chair: key.clone(),
                events: transitions
                    .iter()
                    .map(|t| {
                        let c = self.rules.condition(t.condition);
                        let (id, state) = match t.step {
                            Step::Raised { alarm_id } => (alarm_id, AlarmState::Raised),
                            Step::Cleared { alarm_id } => (alarm_id, AlarmState::Cleared),
                            Step::Nothing => unreachable!("transitions hold only changes"),
                        };
                        AlarmEvent {
                            id,
                            state,
                            chair: key.clone(),
                            vital: c.vital,
                            rule: c.rule.clone(),
                            condition: c.direction,
                            value: t.value,
                            limit: c.limit,
                            priority: c.priority,
                            ts: t.ts,
                            received_at,
                            raised_ts: t.ts,
                            acknowledged_by: None,
                        }
                    })
                    .collect(),
                late_values,
                latest,
            },
        })
    }

    /// Every chair with its latest values, ordered by chair key.
    pub fn chairs(&self) -> Vec<ChairView> {
        let mut all: Vec<ChairView> = self
            .patients
            .iter()
            .map(|e| ChairView {
                chair: e.key().clone(),
                latest: *e.value().latest(),
            })
            .collect();
        all.sort_by(|a, b| a.chair.cmp(&b.chair));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reading::Vital;
    use crate::core::rules::{Priority, RuleSpec};

    fn ward(max_chairs: usize) -> Ward {
        let rules = RuleSet::compile(&[RuleSpec {
            id: "spo2_low".into(),
            vital: Vital::Spo2,
            low: Some(90.0),
            high: None,
            priority: Priority::High,
            delay_ms: 0,
            hysteresis: 1.0,
        }])
        .unwrap();
        Ward::new(Arc::new(rules), max_chairs)
    }

    fn spo2(seq: u64, v: f64) -> Reading {
        let mut values = [None; 6];
        values[Vital::Spo2.index()] = Some(v);
        Reading {
            seq,
            ts: 1_000 * seq,
            values,
            pump: None,
        }
    }

    fn events(o: Outcome) -> Vec<AlarmEvent> {
        match o {
            Outcome::Accepted { events, .. } => events,
            Outcome::Duplicate => vec![],
        }
    }

    #[test]
    fn chairs_are_independent_and_ids_are_gateway_wide() {
        let w = ward(10);
        let a = events(w.apply("n/1", &spo2(1, 85.0), 5).unwrap());
        let b = events(w.apply("n/2", &spo2(1, 85.0), 6).unwrap());
        assert_eq!((a[0].id, b[0].id), (1, 2));
        assert_eq!(&*b[0].chair, "n/2");
        let c = events(w.apply("n/1", &spo2(2, 95.0), 7).unwrap());
        assert_eq!(c[0].state, AlarmState::Cleared);
        assert_eq!(c[0].id, 1);
        assert_eq!(w.chairs().len(), 2);
    }

    #[test]
    fn chair_limit_is_enforced_for_new_chairs_only() {
        let w = ward(1);
        w.apply("n/1", &spo2(1, 95.0), 1).unwrap();
        assert_eq!(
            w.apply("n/2", &spo2(1, 95.0), 1),
            Err(WardError::ChairLimit(1))
        );
        assert!(w.apply("n/1", &spo2(2, 95.0), 1).is_ok());
    }
}
