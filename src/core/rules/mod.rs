//! Alarm rules as configured, and their compilation into the conditions every
//! patient shares ([`RuleSet`]).
//!
//! A phase's *profile* is the set of rules that list it in `phases`: the infusion
//! profile can have tighter limits and shorter delays than the recovery one, and no
//! rule needs to list `discharged`. Limits can be absolute, relative to the
//! patient's own baseline, or both (the stricter applies).

mod compile;
mod spec;
#[cfg(test)]
mod tests;

pub use spec::{
    CombinedRuleSpec, PartSpec, RelativeLimits, RuleSources, RuleSpec, SessionSpec, TechnicalSpec,
    TrendRuleSpec,
};

pub use super::condition::{Direction, Priority};

use super::condition::{AlarmKind, Condition};
use super::reading::Vital;
use std::collections::HashMap;
use std::sync::Arc;

/// The longest alarm-condition delay accepted; longer would hide a deteriorating patient.
pub const MAX_DELAY_MS: u64 = 120_000;

/// An invalid rule or setting, naming the offending key (e.g. `rules[2].high`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

/// Samples kept per vital for trend rules: enough for a window of NIBP cycles, and
/// spread over the window when a vital arrives faster.
pub const TREND_SAMPLES: usize = 16;

/// All conditions and policies, compiled once from the config and shared by every
/// patient.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    conditions: Vec<Condition>,
    /// Conditions to evaluate when a vital arrives, indexed by [`Vital::index`].
    by_vital: [Vec<usize>; 6],
    /// Conditions to evaluate on every reading (offline, pump without SpO2).
    every_reading: Vec<usize>,
    /// Conditions judged on gateway time by the periodic tick.
    timed: Vec<usize>,
    /// Threshold conditions by rule id, for per-patient limit changes.
    by_rule: HashMap<Arc<str>, Vec<usize>>,
    /// Per vital, the longest trend window (0: no trend rule), ms.
    trend_window: [u64; 6],
    /// Per vital, the stale allowance (0: none), ms.
    stale_ms: [u64; 6],
    /// Per condition, the index of its alarm group (see [`RuleSet::group_of`]).
    group_of: Vec<usize>,
    /// Per group, its conditions in index order.
    groups: Vec<Vec<usize>>,
    pub session: SessionSpec,
}

impl RuleSet {
    pub fn len(&self) -> usize {
        self.conditions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    pub fn condition(&self, index: usize) -> &Condition {
        &self.conditions[index]
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Conditions to evaluate when `vital` arrives.
    pub fn for_vital(&self, vital: Vital) -> &[usize] {
        &self.by_vital[vital.index()]
    }

    /// Conditions to evaluate on every reading.
    pub fn every_reading(&self) -> &[usize] {
        &self.every_reading
    }

    /// Conditions the periodic tick evaluates.
    pub fn timed(&self) -> &[usize] {
        &self.timed
    }

    /// Threshold conditions of rule `id` (empty for other kinds and unknown ids).
    pub fn threshold_conditions(&self, id: &str) -> &[usize] {
        self.by_rule.get(id).map_or(&[], Vec::as_slice)
    }

    /// The longest trend window on `vital`, ms (0: no trend rule).
    pub fn trend_window(&self, vital: Vital) -> u64 {
        self.trend_window[vital.index()]
    }

    /// The stale allowance of `vital`, ms (0: never stale).
    pub fn stale_ms(&self, vital: Vital) -> u64 {
        self.stale_ms[vital.index()]
    }

    /// The alarm group of condition `i`. People are shown one alarm per group, as
    /// central stations show one alarm per parameter whose priority rises and falls:
    /// - physiological thresholds and trends: one group per vital and direction
    ///   (`sbp_warn`, `sbp_critical`, `sbp_over_baseline` and `sbp_rising` are one
    ///   "SBP high" alarm);
    /// - technical conditions: one group per probe (`spo2_stale` and
    ///   `pump_without_spo2` are one "SpO2" alarm), and `device_offline` alone;
    /// - a combined rule is its own group: it is already one alarm about several
    ///   vitals.
    pub fn group_of(&self, i: usize) -> usize {
        self.group_of[i]
    }

    /// The conditions of group `g`, in index order.
    pub fn group(&self, g: usize) -> &[usize] {
        &self.groups[g]
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// What a chair's state depends on of the rule set: its conditions, in
    /// order (a chair's state holds one entry per condition, one per group).
    /// Two rule sets with the same fingerprint read each other's chair states
    /// (cluster mode's snapshots); FNV-1a, stable across builds and machines.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&(self.conditions.len() as u64).to_le_bytes());
        eat(&(self.groups.len() as u64).to_le_bytes());
        for (i, c) in self.conditions.iter().enumerate() {
            eat(c.rule.as_bytes());
            eat(&[0, c.check.kind() as u8, c.check.direction() as u8]);
            eat(&(self.group_of(i) as u64).to_le_bytes());
        }
        hash
    }

    /// Assign every condition its group (after all are compiled).
    fn assign_groups(&mut self) {
        let mut keys: Vec<GroupKey> = Vec::new();
        self.group_of = Vec::with_capacity(self.conditions.len());
        self.groups.clear();
        for (i, c) in self.conditions.iter().enumerate() {
            let key = GroupKey::of(c);
            let g = match keys.iter().position(|k| *k == key) {
                Some(g) => g,
                None => {
                    keys.push(key);
                    self.groups.push(Vec::new());
                    keys.len() - 1
                }
            };
            self.group_of.push(g);
            self.groups[g].push(i);
        }
    }
}

/// What makes conditions one alarm for people (see [`RuleSet::group_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupKey {
    Vital(AlarmKind, Vital, Direction),
    Offline,
    Rule(Arc<str>),
}

impl GroupKey {
    fn of(c: &Condition) -> GroupKey {
        use super::condition::Check;
        match &c.check {
            Check::Threshold {
                vital, direction, ..
            }
            | Check::Trend {
                vital, direction, ..
            } => GroupKey::Vital(AlarmKind::Physiological, *vital, *direction),
            Check::Combined { .. } => GroupKey::Rule(c.rule.clone()),
            Check::Stale { vital, .. } => {
                GroupKey::Vital(AlarmKind::Technical, *vital, Direction::High)
            }
            Check::PumpWithoutSpo2 { .. } => {
                GroupKey::Vital(AlarmKind::Technical, Vital::Spo2, Direction::High)
            }
            Check::Offline { .. } => GroupKey::Offline,
        }
    }
}
