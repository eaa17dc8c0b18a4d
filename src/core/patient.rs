//! One chair's patient state: the latest value of each vital, the pump, recently
//! seen message ids for de-duplication, and the state of every alarm condition.

use super::reading::{Pump, Reading, Vital};
use super::rules::{ConditionState, RuleSet, Step};
use serde::Serialize;

/// A vital's latest value and the device time it was measured at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub value: f64,
    pub ts: u64,
}

/// The pump's latest report and its device time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PumpSample {
    #[serde(flatten)]
    pub pump: Pump,
    pub ts: u64,
}

/// The latest known values of one chair, as dashboards see them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latest {
    pub vitals: [Option<Sample>; 6],
    pub pump: Option<PumpSample>,
    /// Gateway wall-clock time the last accepted reading arrived, ms since the epoch.
    pub received_at: u64,
}

impl Latest {
    pub fn get(&self, vital: Vital) -> Option<Sample> {
        self.vitals[vital.index()]
    }
}

/// How many recent `(seq, ts)` pairs a chair remembers to recognise redeliveries.
/// A QoS 1 redelivery repeats a message that was never acknowledged, so it is among
/// the most recent few; older repeats are dropped anyway by the per-vital time check.
pub const RECENT_IDS: usize = 32;

/// A `seq` this far below the latest means the device's counter restarted (a reboot),
/// not a late message: late deliveries come from the broker's in-flight window, which
/// is far smaller.
pub const SEQ_RESTART_GAP: u64 = 10_000;

/// A change of one alarm condition caused by a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// Index of the condition in the [`RuleSet`].
    pub condition: usize,
    pub step: Step,
    /// The value that caused it and its device time.
    pub value: f64,
    pub ts: u64,
}

/// What applying one reading did.
// Returned by value once per reading and never stored: boxing would only add an
// allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Same `(seq, ts)` as a recent reading: a redelivery. Nothing was changed.
    Duplicate,
    Accepted {
        /// Alarm conditions that were raised or cleared, in rule order.
        transitions: Vec<Transition>,
        /// Values older than the vital's latest, ignored (late, out-of-order delivery).
        late_values: usize,
        /// An in-order message carried a `ts` older than a stored value: the device
        /// clock stepped back.
        clock_stepped_back: bool,
        /// The chair's state after the reading.
        latest: Latest,
    },
}

#[derive(Debug, Clone)]
pub struct PatientState {
    latest: Latest,
    recent: [(u64, u64); RECENT_IDS],
    recent_len: usize,
    recent_next: usize,
    /// The `seq` of the latest in-order message.
    last_seq: Option<u64>,
    conditions: Box<[ConditionState]>,
}

impl PatientState {
    pub fn new(rules: &RuleSet) -> Self {
        PatientState {
            latest: Latest::default(),
            recent: [(0, 0); RECENT_IDS],
            recent_len: 0,
            recent_next: 0,
            last_seq: None,
            conditions: vec![ConditionState::Normal; rules.len()].into_boxed_slice(),
        }
    }

    pub fn latest(&self) -> &Latest {
        &self.latest
    }

    /// The alarm ids currently active on this chair.
    pub fn active_alarms(&self) -> impl Iterator<Item = u64> + '_ {
        self.conditions.iter().filter_map(|c| match c {
            ConditionState::Active { alarm_id } => Some(*alarm_id),
            _ => None,
        })
    }

    fn seen(&self, seq: u64, ts: u64) -> bool {
        self.recent[..self.recent_len].contains(&(seq, ts))
    }

    fn remember(&mut self, seq: u64, ts: u64) {
        self.recent[self.recent_next] = (seq, ts);
        self.recent_next = (self.recent_next + 1) % RECENT_IDS;
        self.recent_len = (self.recent_len + 1).min(RECENT_IDS);
    }

    /// Whether `seq` comes after the latest message this chair has sent: a higher
    /// counter, or one so much lower that the device's counter restarted.
    fn in_order(&self, seq: u64) -> bool {
        match self.last_seq {
            None => true,
            Some(last) => seq > last || last - seq > SEQ_RESTART_GAP,
        }
    }

    /// Apply a reading received at gateway time `received_at`.
    ///
    /// Message order comes from the device's `seq`, not its clock:
    /// - an exact `(seq, ts)` repeat of a recent message is a redelivery and changes
    ///   nothing;
    /// - a message after the latest one is applied in full, even when its `ts` is
    ///   older than the stored values (the device clock stepped back, e.g. an NTP
    ///   correction): the chair must not go silent until the clock catches up.
    ///   Pending alarm delays are shifted by the step, so the breach time already
    ///   counted is kept;
    /// - a message from before the latest one (a late, out-of-order delivery) only
    ///   updates vitals it carries a newer measurement of; older values are ignored
    ///   and counted, so a late message cannot overwrite newer state.
    pub fn apply(
        &mut self,
        rules: &RuleSet,
        reading: &Reading,
        received_at: u64,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Applied {
        if self.seen(reading.seq, reading.ts) {
            return Applied::Duplicate;
        }
        self.remember(reading.seq, reading.ts);
        let in_order = self.in_order(reading.seq);
        if in_order {
            self.last_seq = Some(reading.seq);
        }
        let mut transitions = Vec::new();
        let mut late_values = 0;
        let mut clock_stepped_back = false;
        for (vital, value) in reading.vitals() {
            let slot = &mut self.latest.vitals[vital.index()];
            if let Some(prev) = *slot {
                if reading.ts < prev.ts {
                    if !in_order {
                        late_values += 1;
                        continue;
                    }
                    clock_stepped_back = true;
                    let step = prev.ts - reading.ts;
                    for &i in rules.for_vital(vital) {
                        if let ConditionState::Pending { since } = &mut self.conditions[i] {
                            *since = since.saturating_sub(step);
                        }
                    }
                }
            }
            *slot = Some(Sample {
                value,
                ts: reading.ts,
            });
            for &i in rules.for_vital(vital) {
                let step =
                    rules
                        .condition(i)
                        .step(&mut self.conditions[i], value, reading.ts, next_id);
                if step != Step::Nothing {
                    transitions.push(Transition {
                        condition: i,
                        step,
                        value,
                        ts: reading.ts,
                    });
                }
            }
        }
        if let Some(pump) = reading.pump {
            if in_order || self.latest.pump.is_none_or(|p| reading.ts >= p.ts) {
                self.latest.pump = Some(PumpSample {
                    pump,
                    ts: reading.ts,
                });
            } else {
                late_values += 1;
            }
        }
        self.latest.received_at = received_at;
        Applied::Accepted {
            transitions,
            late_values,
            clock_stepped_back,
            latest: self.latest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rules::{Priority, RuleSpec};

    fn rules() -> RuleSet {
        RuleSet::compile(&[RuleSpec {
            id: "hr_high".into(),
            vital: Vital::Hr,
            low: None,
            high: Some(120.0),
            priority: Priority::Medium,
            delay_ms: 0,
            hysteresis: 5.0,
        }])
        .unwrap()
    }

    fn hr(seq: u64, ts: u64, v: f64) -> Reading {
        let mut values = [None; 6];
        values[Vital::Hr.index()] = Some(v);
        Reading {
            seq,
            ts,
            values,
            pump: None,
        }
    }

    fn raised(a: &Applied) -> usize {
        match a {
            Applied::Accepted { transitions, .. } => transitions
                .iter()
                .filter(|t| matches!(t.step, Step::Raised { .. }))
                .count(),
            Applied::Duplicate => 0,
        }
    }

    #[test]
    fn redelivery_is_applied_once() {
        let rules = rules();
        let mut p = PatientState::new(&rules);
        let mut id = 0;
        let mut next = || {
            id += 1;
            id
        };
        let r = hr(5, 1_000, 150.0);
        assert_eq!(raised(&p.apply(&rules, &r, 1, &mut next)), 1);
        assert_eq!(p.apply(&rules, &r, 2, &mut next), Applied::Duplicate);
        assert_eq!(p.active_alarms().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn late_value_does_not_overwrite_newer_state_or_clear() {
        let rules = rules();
        let mut p = PatientState::new(&rules);
        let mut next = || 1;
        p.apply(&rules, &hr(2, 2_000, 150.0), 1, &mut next);
        let a = p.apply(&rules, &hr(1, 1_000, 60.0), 2, &mut next);
        match a {
            Applied::Accepted {
                late_values,
                transitions,
                latest,
                ..
            } => {
                assert_eq!(late_values, 1);
                assert!(transitions.is_empty());
                assert_eq!(latest.get(Vital::Hr).unwrap().value, 150.0);
            }
            Applied::Duplicate => panic!("not a duplicate"),
        }
        assert_eq!(p.active_alarms().count(), 1);
    }

    #[test]
    fn device_counter_restart_is_not_a_duplicate() {
        let rules = rules();
        let mut p = PatientState::new(&rules);
        let mut next = || 1;
        p.apply(&rules, &hr(0, 1_000, 60.0), 1, &mut next);
        let a = p.apply(&rules, &hr(0, 9_000, 61.0), 2, &mut next);
        assert!(matches!(a, Applied::Accepted { late_values: 0, .. }));
    }

    /// Every raise and clear (with its device time) that `stream` causes on a fresh
    /// patient, alarm ids numbered from 1.
    fn steps<'a>(
        rules: &RuleSet,
        stream: impl IntoIterator<Item = &'a Reading>,
    ) -> Vec<(Step, u64)> {
        let mut p = PatientState::new(rules);
        let mut id = 0;
        let mut next = || {
            id += 1;
            id
        };
        let mut out = Vec::new();
        for r in stream {
            if let Applied::Accepted { transitions, .. } = p.apply(rules, r, 0, &mut next) {
                out.extend(transitions.into_iter().map(|t| (t.step, t.ts)));
            }
        }
        out
    }

    proptest::proptest! {
        /// Redelivering any of the recent readings, any number of times, changes
        /// nothing: the transitions are exactly those of the stream without repeats.
        #[test]
        fn redeliveries_change_nothing(
            values in proptest::collection::vec(100.0f64..160.0, 1..60),
            repeats in proptest::collection::vec((0usize..60, 0usize..8), 0..40),
        ) {
            let rules = rules();
            let readings: Vec<Reading> = values
                .iter()
                .enumerate()
                .map(|(i, v)| hr(i as u64, 1_000 * i as u64, *v))
                .collect();
            // Each repeat re-sends reading `j` right after reading `j + lag`, while it
            // is still among the recent ids, as a broker redelivery would.
            let mut stream: Vec<&Reading> = Vec::new();
            for (i, r) in readings.iter().enumerate() {
                stream.push(r);
                for (j, lag) in &repeats {
                    if j + lag == i && *j < readings.len() {
                        stream.push(&readings[*j]);
                    }
                }
            }
            proptest::prop_assert_eq!(steps(&rules, stream), steps(&rules, &readings));
        }

        /// Late (out-of-order) readings never raise or clear anything: a stream with
        /// older readings interleaved gives the transitions of the in-order stream.
        #[test]
        fn late_readings_are_ignored(
            values in proptest::collection::vec(100.0f64..160.0, 2..60),
            late in proptest::collection::vec((1usize..60, 1usize..10), 0..30),
        ) {
            let rules = rules();
            let readings: Vec<Reading> = values
                .iter()
                .enumerate()
                .map(|(i, v)| hr(i as u64, 1_000 * (i as u64 + 1), *v))
                .collect();
            let mut stream: Vec<Reading> = Vec::new();
            for (i, r) in readings.iter().enumerate() {
                stream.push(r.clone());
                for (at, back) in &late {
                    if *at == i && *back <= i {
                        // A late delivery: an earlier message (lower seq, older ts) with
                        // a value that would otherwise alarm.
                        let j = i - back;
                        stream.push(hr(j as u64, 1_000 * (j as u64 + 1) - 1, 200.0));
                    }
                }
            }
            proptest::prop_assert_eq!(steps(&rules, &stream), steps(&rules, &readings));
        }
    }

    #[test]
    fn clock_stepping_back_does_not_silence_the_chair() {
        let rules = rules();
        let mut p = PatientState::new(&rules);
        let mut next = || 1;
        p.apply(&rules, &hr(1, 100_000, 80.0), 1, &mut next);
        // NTP correction: the next message is 60 s "earlier" by the device clock.
        let a = p.apply(&rules, &hr(2, 40_000, 150.0), 2, &mut next);
        assert_eq!(raised(&a), 1);
        assert!(matches!(
            a,
            Applied::Accepted {
                clock_stepped_back: true,
                ..
            }
        ));
    }

    #[test]
    fn clock_step_keeps_the_breach_time_already_counted() {
        let rules = RuleSet::compile(&[RuleSpec {
            id: "hr_high".into(),
            vital: Vital::Hr,
            low: None,
            high: Some(120.0),
            priority: Priority::Medium,
            delay_ms: 3_000,
            hysteresis: 0.0,
        }])
        .unwrap();
        let mut p = PatientState::new(&rules);
        let mut next = || 1;
        // Breached at 100 s and 102 s (2 s counted), then the clock steps back 60 s:
        // one more second of breach (at 43 s on the new clock) completes the delay.
        assert_eq!(
            raised(&p.apply(&rules, &hr(1, 100_000, 150.0), 0, &mut next)),
            0
        );
        assert_eq!(
            raised(&p.apply(&rules, &hr(2, 102_000, 150.0), 0, &mut next)),
            0
        );
        assert_eq!(
            raised(&p.apply(&rules, &hr(3, 42_000, 150.0), 0, &mut next)),
            0
        );
        assert_eq!(
            raised(&p.apply(&rules, &hr(4, 43_000, 150.0), 0, &mut next)),
            1
        );
    }

    /// Issue target: at most 2 KiB of state per patient with the shipped rules (the
    /// map entry's key and bookkeeping add a few dozen bytes).
    #[test]
    fn patient_state_fits_in_two_kib_with_the_shipped_rules() {
        let rules = crate::config::Config::default().rule_set().unwrap();
        let bytes = std::mem::size_of::<PatientState>()
            + rules.len() * std::mem::size_of::<ConditionState>();
        assert!(bytes <= 2048, "{bytes} bytes per patient");
    }
}
