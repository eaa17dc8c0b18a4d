//! The alarm configuration as written in `config/vitalgate.toml`: threshold,
//! combined and trend rules, technical alarms and session settings.

use super::Priority;
use crate::core::reading::Vital;
use crate::core::session::Phase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(super) fn monitored_phases() -> Vec<Phase> {
    vec![
        Phase::Idle,
        Phase::Baseline,
        Phase::Infusion,
        Phase::Recovery,
    ]
}

/// Limits relative to the patient's baseline, as threshold rules and the parts of
/// combined rules configure them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RelativeLimits {
    pub below_baseline: Option<f64>,
    pub above_baseline: Option<f64>,
    pub below_baseline_ratio: Option<f64>,
    pub above_baseline_ratio: Option<f64>,
}

macro_rules! relative_limits {
    ($t:ty) => {
        impl $t {
            /// The baseline-relative limits of this entry.
            pub fn relative(&self) -> RelativeLimits {
                RelativeLimits {
                    below_baseline: self.below_baseline,
                    above_baseline: self.above_baseline,
                    below_baseline_ratio: self.below_baseline_ratio,
                    above_baseline_ratio: self.above_baseline_ratio,
                }
            }
        }
    };
}
relative_limits!(RuleSpec);
relative_limits!(PartSpec);

/// One `[[rules]]` entry: a band on one vital with one priority.
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
    /// Breach when the value is more than this below the patient's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_baseline: Option<f64>,
    /// Breach when the value is more than this above the patient's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_baseline: Option<f64>,
    /// Breach when the value is below baseline × this (e.g. 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_baseline_ratio: Option<f64>,
    /// Breach when the value is above baseline × this (e.g. 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_baseline_ratio: Option<f64>,
    /// The baseline-relative limits replace the absolute ones where they lie further
    /// out (instead of the stricter applying): the limit follows a patient whose own
    /// baseline plus the expected change is beyond the absolute limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub widen_to_baseline: bool,
    pub priority: Priority,
    /// How long, in device time, the breach must persist before an alarm is raised.
    #[serde(default)]
    pub delay_ms: u64,
    /// How far back inside the limit the value must come before the alarm clears.
    #[serde(default)]
    pub hysteresis: f64,
    /// The phases whose profile includes the rule (default: all but `discharged`).
    #[serde(default = "monitored_phases")]
    pub phases: Vec<Phase>,
    /// Only for sessions 1..=this of a course (stricter limits for early sessions).
    #[serde(default)]
    pub max_session: Option<u16>,
    /// The alarm stays raised after the value recovers, until acknowledged.
    #[serde(default)]
    pub latching: bool,
}

impl Default for RuleSpec {
    fn default() -> Self {
        RuleSpec {
            id: String::new(),
            vital: Vital::Hr,
            low: None,
            high: None,
            below_baseline: None,
            above_baseline: None,
            below_baseline_ratio: None,
            above_baseline_ratio: None,
            widen_to_baseline: false,
            priority: Priority::Medium,
            delay_ms: 0,
            hysteresis: 0.0,
            phases: monitored_phases(),
            max_session: None,
            latching: false,
        }
    }
}

/// One part of a combined rule: a limit on one side of one vital.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    pub vital: Vital,
    #[serde(default)]
    pub low: Option<f64>,
    #[serde(default)]
    pub high: Option<f64>,
    /// Breach when the value is more than this below the patient's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_baseline: Option<f64>,
    /// Breach when the value is more than this above the patient's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_baseline: Option<f64>,
    /// Breach when the value is below baseline × this (e.g. 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_baseline_ratio: Option<f64>,
    /// Breach when the value is above baseline × this (e.g. 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_baseline_ratio: Option<f64>,
}

/// One `[[combined_rules]]` entry: raised only while every part is breached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedRuleSpec {
    pub id: String,
    /// At least two parts, each on one side of one vital.
    pub all: Vec<PartSpec>,
    pub priority: Priority,
    #[serde(default)]
    pub delay_ms: u64,
    /// Applied to each part: the alarm clears once any part is this far back inside.
    #[serde(default)]
    pub hysteresis: f64,
    #[serde(default = "monitored_phases")]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub max_session: Option<u16>,
    #[serde(default)]
    pub latching: bool,
}

/// One `[[trend_rules]]` entry: a vital changing too fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendRuleSpec {
    pub id: String,
    pub vital: Vital,
    /// Breach when the value is more than this above its lowest in the window.
    #[serde(default)]
    pub rise: Option<f64>,
    /// Breach when the value is more than this below its highest in the window.
    #[serde(default)]
    pub fall: Option<f64>,
    pub window_ms: u64,
    pub priority: Priority,
    #[serde(default)]
    pub hysteresis: f64,
    #[serde(default = "monitored_phases")]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub max_session: Option<u16>,
    #[serde(default)]
    pub latching: bool,
}

fn stale_phases() -> Vec<Phase> {
    vec![Phase::Infusion, Phase::Recovery]
}

fn patient_phases() -> Vec<Phase> {
    vec![Phase::Baseline, Phase::Infusion, Phase::Recovery]
}

/// `[technical]`: alarms about the equipment and the data rather than the patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TechnicalSpec {
    /// Per vital, how long it may go without a new value before a "stale" alarm,
    /// ms. A vital not listed (or 0) is never stale.
    #[serde(default)]
    pub stale_ms: BTreeMap<Vital, u64>,
    pub stale_priority: Priority,
    #[serde(default = "stale_phases")]
    pub stale_phases: Vec<Phase>,
    /// Nothing at all from the chair for this long (or its device's last will on
    /// the status topic) raises "device offline", ms. 0 disables the silence check.
    pub offline_ms: u64,
    pub offline_priority: Priority,
    #[serde(default = "patient_phases")]
    pub offline_phases: Vec<Phase>,
    /// The pump reports running while SpO2 is missing or older than this, ms.
    /// 0 disables the rule.
    pub pump_without_spo2_ms: u64,
    pub pump_without_spo2_priority: Priority,
}

impl Default for TechnicalSpec {
    /// No technical alarms (the shipped config turns them on).
    fn default() -> Self {
        TechnicalSpec {
            stale_ms: BTreeMap::new(),
            stale_priority: Priority::Medium,
            stale_phases: stale_phases(),
            offline_ms: 0,
            offline_priority: Priority::High,
            offline_phases: patient_phases(),
            pump_without_spo2_ms: 0,
            pump_without_spo2_priority: Priority::High,
        }
    }
}

/// `[session]`: baselines and discharge readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// A vital needs at least this many values in the baseline phase for a baseline.
    pub baseline_min_samples: usize,
    /// Most values kept per vital while the baseline is taken (memory bound; longer
    /// phases are sampled evenly).
    pub baseline_max_samples: usize,
    /// In recovery, vitals must stay within `discharge_band` of the baseline, with no
    /// active alarm, for this long before the chair is flagged ready for discharge.
    pub discharge_stable_ms: u64,
    /// Per vital, how far from the baseline (either way) still counts as back to
    /// baseline. Only vitals listed here and with a baseline are judged.
    pub discharge_band: BTreeMap<Vital, f64>,
    /// Largest session message accepted, bytes.
    pub max_message_bytes: usize,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            baseline_min_samples: 1,
            baseline_max_samples: 256,
            discharge_stable_ms: 15 * 60_000,
            discharge_band: BTreeMap::new(),
            max_message_bytes: 4096,
        }
    }
}

/// Everything the alarm engine is compiled from.
#[derive(Debug, Clone, Copy)]
pub struct RuleSources<'a> {
    pub rules: &'a [RuleSpec],
    pub combined: &'a [CombinedRuleSpec],
    pub trends: &'a [TrendRuleSpec],
    pub technical: &'a TechnicalSpec,
    pub session: &'a SessionSpec,
}
