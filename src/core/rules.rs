//! Alarm rules: configured limits compiled into one-sided alarm conditions, and the
//! per-condition state machine (delay on device time, hysteresis on clear).

use super::reading::Vital;
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

/// One `[[rules]]` entry of the config: a band on one vital with one priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name, carried in every alarm the rule raises (e.g. `spo2_low_critical`).
    pub id: String,
    pub vital: Vital,
    /// Breach when the value is strictly below this.
    #[serde(default)]
    pub low: Option<f64>,
    /// Breach when the value is strictly above this.
    #[serde(default)]
    pub high: Option<f64>,
    pub priority: Priority,
    /// How long, in device time, the breach must persist before an alarm is raised.
    #[serde(default)]
    pub delay_ms: u64,
    /// How far back inside the limit the value must come before the alarm clears.
    #[serde(default)]
    pub hysteresis: f64,
}

/// The longest alarm-condition delay accepted; longer would hide a deteriorating patient.
pub const MAX_DELAY_MS: u64 = 120_000;

/// An invalid rule, naming the offending field of `rules[index]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rules[{index}].{field}: {message}")]
pub struct RuleError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// One side of one rule: the unit that is raised and cleared.
#[derive(Debug, Clone)]
pub struct Condition {
    pub rule: Arc<str>,
    pub vital: Vital,
    pub direction: Direction,
    pub limit: f64,
    pub priority: Priority,
    pub delay_ms: u64,
    pub hysteresis: f64,
}

impl Condition {
    pub fn breached(&self, value: f64) -> bool {
        match self.direction {
            Direction::Low => value < self.limit,
            Direction::High => value > self.limit,
        }
    }

    /// Back inside the limit by at least the hysteresis margin.
    pub fn recovered(&self, value: f64) -> bool {
        match self.direction {
            Direction::Low => value >= self.limit + self.hysteresis,
            Direction::High => value <= self.limit - self.hysteresis,
        }
    }
}

/// The state of one condition for one patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionState {
    #[default]
    Normal,
    /// Breached since device time `since`, not yet for the whole delay.
    Pending { since: u64 },
    /// An alarm is raised and has not cleared.
    Active { alarm_id: u64 },
}

/// What one value did to one condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Raised { alarm_id: u64 },
    Cleared { alarm_id: u64 },
}

impl Condition {
    /// Advance `state` with a value measured at device time `ts`. Values must come in
    /// non-decreasing `ts` order; the caller drops late ones. `next_id` allocates the
    /// id of a newly raised alarm.
    pub fn step(
        &self,
        state: &mut ConditionState,
        value: f64,
        ts: u64,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Step {
        match *state {
            ConditionState::Normal if self.breached(value) => {
                if self.delay_ms == 0 {
                    let alarm_id = next_id();
                    *state = ConditionState::Active { alarm_id };
                    Step::Raised { alarm_id }
                } else {
                    *state = ConditionState::Pending { since: ts };
                    Step::Nothing
                }
            }
            ConditionState::Normal => Step::Nothing,
            ConditionState::Pending { since } => {
                if !self.breached(value) {
                    *state = ConditionState::Normal;
                    Step::Nothing
                } else if ts.saturating_sub(since) >= self.delay_ms {
                    let alarm_id = next_id();
                    *state = ConditionState::Active { alarm_id };
                    Step::Raised { alarm_id }
                } else {
                    Step::Nothing
                }
            }
            ConditionState::Active { alarm_id } => {
                if self.recovered(value) {
                    *state = ConditionState::Normal;
                    Step::Cleared { alarm_id }
                } else {
                    Step::Nothing
                }
            }
        }
    }
}

/// All conditions, compiled once from the config and shared by every patient.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    conditions: Vec<Condition>,
    /// Condition indices per vital, indexed by [`Vital::index`].
    by_vital: [Vec<usize>; 6],
}

impl RuleSet {
    /// Validate and compile rules. Every problem is reported, not just the first.
    pub fn compile(specs: &[RuleSpec]) -> Result<RuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut set = RuleSet::default();
        let mut seen = std::collections::HashSet::new();
        for (index, spec) in specs.iter().enumerate() {
            let mut err = |field, message: String| {
                errors.push(RuleError {
                    index,
                    field,
                    message,
                })
            };
            let id_ok = !spec.id.is_empty()
                && spec.id.len() <= 64
                && spec
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !id_ok {
                err(
                    "id",
                    "must be 1-64 characters of letters, digits, '_', '-' or '.'".into(),
                );
            } else if !seen.insert(spec.id.clone()) {
                err("id", format!("'{}' is used by another rule", spec.id));
            }
            let (lo, hi) = spec.vital.possible_range();
            for (field, limit) in [("low", spec.low), ("high", spec.high)] {
                if let Some(x) = limit {
                    if !x.is_finite() || x < lo || x > hi {
                        err(
                            field,
                            format!("{x} is outside what {} can be ({lo}..={hi})", spec.vital),
                        );
                    }
                }
            }
            match (spec.low, spec.high) {
                (None, None) => err("low", "a rule needs a low or a high limit (or both)".into()),
                (Some(l), Some(h)) if l >= h => {
                    err("low", format!("low ({l}) must be less than high ({h})"))
                }
                _ => {}
            }
            if spec.delay_ms > MAX_DELAY_MS {
                err(
                    "delay_ms",
                    format!("{} exceeds the maximum of {MAX_DELAY_MS}", spec.delay_ms),
                );
            }
            if !spec.hysteresis.is_finite() || spec.hysteresis < 0.0 {
                err("hysteresis", "must be zero or positive".into());
            } else if let (Some(l), Some(h)) = (spec.low, spec.high) {
                if spec.hysteresis >= (h - l) / 2.0 {
                    err(
                        "hysteresis",
                        format!(
                            "{} must be less than half the band {l}..{h}, or no value could clear it",
                            spec.hysteresis
                        ),
                    );
                }
            } else if spec.low.is_some_and(|l| l + spec.hysteresis > hi)
                || spec.high.is_some_and(|h| h - spec.hysteresis < lo)
            {
                err(
                    "hysteresis",
                    format!(
                        "{} puts the clearing point outside what {} can be ({lo}..={hi}): the alarm could never clear",
                        spec.hysteresis, spec.vital
                    ),
                );
            }
            let rule: Arc<str> = Arc::from(spec.id.as_str());
            for (direction, limit) in [(Direction::Low, spec.low), (Direction::High, spec.high)] {
                if let Some(limit) = limit {
                    set.by_vital[spec.vital.index()].push(set.conditions.len());
                    set.conditions.push(Condition {
                        rule: rule.clone(),
                        vital: spec.vital,
                        direction,
                        limit,
                        priority: spec.priority,
                        delay_ms: spec.delay_ms,
                        hysteresis: spec.hysteresis,
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.conditions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    pub fn condition(&self, index: usize) -> &Condition {
        &self.conditions[index]
    }

    /// Indices of the conditions on `vital`.
    pub fn for_vital(&self, vital: Vital) -> &[usize] {
        &self.by_vital[vital.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spo2_low(delay_ms: u64, hysteresis: f64) -> Condition {
        Condition {
            rule: Arc::from("spo2_low"),
            vital: Vital::Spo2,
            direction: Direction::Low,
            limit: 90.0,
            priority: Priority::High,
            delay_ms,
            hysteresis,
        }
    }

    /// Feed values one second apart; return the steps that were not `Nothing`.
    fn run(cond: &Condition, values: &[f64]) -> Vec<Step> {
        let mut state = ConditionState::Normal;
        let mut id = 0;
        let mut next = || {
            id += 1;
            id
        };
        values
            .iter()
            .enumerate()
            .map(|(i, v)| cond.step(&mut state, *v, 1_000 * i as u64, &mut next))
            .filter(|s| *s != Step::Nothing)
            .collect()
    }

    #[test]
    fn zero_delay_raises_on_first_breach_and_clears_past_hysteresis() {
        let c = spo2_low(0, 2.0);
        assert_eq!(
            run(&c, &[95.0, 89.0, 91.0, 91.9, 92.0]),
            vec![Step::Raised { alarm_id: 1 }, Step::Cleared { alarm_id: 1 }]
        );
    }

    #[test]
    fn raise_clear_raise_gives_two_alarms() {
        let c = spo2_low(0, 1.0);
        assert_eq!(
            run(&c, &[89.0, 95.0, 88.0]),
            vec![
                Step::Raised { alarm_id: 1 },
                Step::Cleared { alarm_id: 1 },
                Step::Raised { alarm_id: 2 }
            ]
        );
    }

    #[test]
    fn delay_counts_device_time_from_the_first_breach() {
        let c = spo2_low(3_000, 0.0);
        // Breach at t=1,2,3 s: 2 s elapsed, nothing. At t=4 s, 3 s elapsed: raise.
        assert_eq!(run(&c, &[95.0, 89.0, 89.0, 89.0]), vec![]);
        assert_eq!(
            run(&c, &[95.0, 89.0, 89.0, 89.0, 89.0]),
            vec![Step::Raised { alarm_id: 1 }]
        );
    }

    #[test]
    fn one_sided_rule_that_could_never_clear_is_refused() {
        let spec = RuleSpec {
            id: "spo2_low".into(),
            vital: Vital::Spo2,
            low: Some(98.0),
            high: None,
            priority: Priority::High,
            delay_ms: 0,
            hysteresis: 3.0,
        };
        let errs = RuleSet::compile(std::slice::from_ref(&spec)).unwrap_err();
        assert_eq!(errs[0].field, "hysteresis");
        assert!(RuleSet::compile(&[RuleSpec {
            hysteresis: 2.0,
            ..spec
        }])
        .is_ok());
    }

    #[test]
    fn compile_reports_every_bad_field() {
        let bad = RuleSpec {
            id: "x y".into(),
            vital: Vital::Spo2,
            low: Some(95.0),
            high: Some(140.0),
            priority: Priority::High,
            delay_ms: MAX_DELAY_MS + 1,
            hysteresis: -1.0,
        };
        let errs = RuleSet::compile(&[bad]).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["id", "high", "delay_ms", "hysteresis"]);
    }

    proptest! {
        /// A breach that lasts less than the delay raises nothing, however it wobbles.
        #[test]
        fn breach_shorter_than_delay_raises_nothing(
            delay_s in 1u64..30,
            values in prop::collection::vec(50.0f64..100.0, 0..200),
        ) {
            let c = spo2_low(delay_s * 1_000, 0.0);
            let mut state = ConditionState::Normal;
            let mut run_len = 0u64; // consecutive breached samples, one per second
            for (i, v) in values.iter().enumerate() {
                let step = c.step(&mut state, *v, 1_000 * i as u64, &mut || 1);
                if c.breached(*v) { run_len += 1 } else { run_len = 0 }
                if let Step::Raised { .. } = step {
                    // raised only once the breach has lasted the delay
                    prop_assert!((run_len - 1) * 1_000 >= c.delay_ms);
                    state = ConditionState::Normal; // re-arm to keep checking
                    run_len = 0;
                }
            }
        }

        /// A value oscillating within the hysteresis band after a raise never clears,
        /// so it raises at most one alarm.
        #[test]
        fn oscillation_inside_hysteresis_raises_at_most_once(
            wobble in prop::collection::vec(88.0f64..91.99, 1..300),
        ) {
            let c = spo2_low(0, 2.0);
            let mut values = vec![89.0];
            values.extend(wobble);
            let steps = run(&c, &values);
            prop_assert_eq!(steps, vec![Step::Raised { alarm_id: 1 }]);
        }

        /// Raises and clears always alternate, starting with a raise, with fresh ids.
        #[test]
        fn raises_and_clears_alternate(values in prop::collection::vec(70.0f64..100.0, 0..300),
                                       delay_s in 0u64..5, hyst in 0.0f64..5.0) {
            let c = spo2_low(delay_s * 1_000, hyst);
            let steps = run(&c, &values);
            let mut active: Option<u64> = None;
            let mut last_id = 0;
            for s in steps {
                match s {
                    Step::Raised { alarm_id } => {
                        prop_assert!(active.is_none());
                        prop_assert!(alarm_id > last_id);
                        last_id = alarm_id;
                        active = Some(alarm_id);
                    }
                    Step::Cleared { alarm_id } => {
                        prop_assert_eq!(active, Some(alarm_id));
                        active = None;
                    }
                    Step::Nothing => unreachable!(),
                }
            }
        }
    }
}
