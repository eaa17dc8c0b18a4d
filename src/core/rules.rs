//! Alarm rules as configured, and their compilation into the conditions every
//! patient shares ([`RuleSet`]).
//!
//! A phase's *profile* is the set of rules that list it in `phases`: the infusion
//! profile can have tighter limits and shorter delays than the recovery one, and no
//! rule needs to list `discharged`. Limits can be absolute, relative to the
//! patient's own baseline, or both (the stricter applies).

use super::condition::{Check, Condition, Limit};
use super::reading::Vital;
use super::session::{Phase, PhaseSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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

fn monitored_phases() -> Vec<Phase> {
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
    pub session: SessionSpec,
}

struct Errors(Vec<RuleError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(RuleError {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn check_id(errs: &mut Errors, seen: &mut HashSet<String>, key: &str, id: &str) {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        errs.push(
            format!("{key}.id"),
            "must be 1-64 characters of letters, digits, '_', '-' or '.'",
        );
    } else if !seen.insert(id.to_string()) {
        errs.push(
            format!("{key}.id"),
            format!("'{id}' is used by another rule"),
        );
    }
}

fn check_common(
    errs: &mut Errors,
    key: &str,
    delay_ms: u64,
    hysteresis: f64,
    phases: &[Phase],
    max_session: Option<u16>,
) {
    if delay_ms > MAX_DELAY_MS {
        errs.push(
            format!("{key}.delay_ms"),
            format!("{delay_ms} exceeds the maximum of {MAX_DELAY_MS}"),
        );
    }
    if !hysteresis.is_finite() || hysteresis < 0.0 {
        errs.push(format!("{key}.hysteresis"), "must be zero or positive");
    }
    if phases.is_empty() {
        errs.push(
            format!("{key}.phases"),
            "must list at least one phase, or the rule never applies",
        );
    }
    if max_session == Some(0) {
        errs.push(format!("{key}.max_session"), "sessions are numbered from 1");
    }
}

/// Check one side's limits and build them. `side` is "low" or "high".
fn side_limit(
    errs: &mut Errors,
    key: &str,
    vital: Vital,
    direction: Direction,
    absolute: Option<f64>,
    rel: &RelativeLimits,
) -> Option<Limit> {
    let (lo, hi) = vital.possible_range();
    let (field, delta_field, ratio_field, delta, ratio) = match direction {
        Direction::Low => (
            "low",
            "below_baseline",
            "below_baseline_ratio",
            rel.below_baseline,
            rel.below_baseline_ratio,
        ),
        Direction::High => (
            "high",
            "above_baseline",
            "above_baseline_ratio",
            rel.above_baseline,
            rel.above_baseline_ratio,
        ),
    };
    if let Some(x) = absolute {
        if !x.is_finite() || x < lo || x > hi {
            errs.push(
                format!("{key}.{field}"),
                format!("{x} is outside what {vital} can be ({lo}..={hi})"),
            );
        }
    }
    if let Some(d) = delta {
        if !d.is_finite() || d <= 0.0 || d > hi {
            errs.push(
                format!("{key}.{delta_field}"),
                format!("must be above 0 and at most {hi}"),
            );
        }
    }
    if let Some(r) = ratio {
        let ok = r.is_finite()
            && match direction {
                Direction::Low => r > 0.0 && r < 1.0,
                Direction::High => r > 1.0 && r < 10.0,
            };
        if !ok {
            let range = match direction {
                Direction::Low => "between 0 and 1",
                Direction::High => "between 1 and 10",
            };
            errs.push(format!("{key}.{ratio_field}"), format!("must be {range}"));
        }
    }
    (absolute.is_some() || delta.is_some() || ratio.is_some()).then_some(Limit {
        absolute,
        from_baseline: delta,
        baseline_ratio: ratio,
    })
}

fn phase_set(phases: &[Phase]) -> PhaseSet {
    PhaseSet::of(phases)
}

impl RuleSet {
    /// Compile threshold rules alone, with no technical alarms (tests, benchmarks).
    pub fn compile(specs: &[RuleSpec]) -> Result<RuleSet, Vec<RuleError>> {
        RuleSet::compile_all(RuleSources {
            rules: specs,
            combined: &[],
            trends: &[],
            technical: &TechnicalSpec::default(),
            session: &SessionSpec::default(),
        })
    }

    /// Validate and compile everything. Every problem is reported, not just the first.
    pub fn compile_all(src: RuleSources<'_>) -> Result<RuleSet, Vec<RuleError>> {
        let mut errs = Errors(Vec::new());
        let mut seen = HashSet::new();
        let mut set = RuleSet {
            session: src.session.clone(),
            ..RuleSet::default()
        };
        let add = |set: &mut RuleSet, c: Condition| {
            let i = set.conditions.len();
            match &c.check {
                Check::Threshold { vital, .. } => {
                    set.by_vital[vital.index()].push(i);
                    set.by_rule.entry(c.rule.clone()).or_default().push(i);
                }
                Check::Trend { vital, .. } => set.by_vital[vital.index()].push(i),
                Check::Combined { parts } => {
                    let mut vitals: Vec<Vital> = parts.iter().map(|p| p.0).collect();
                    vitals.dedup();
                    for v in vitals {
                        set.by_vital[v.index()].push(i);
                    }
                }
                Check::Stale { vital, .. } => {
                    set.by_vital[vital.index()].push(i);
                    set.timed.push(i);
                }
                Check::Offline { .. } | Check::PumpWithoutSpo2 { .. } => {
                    set.every_reading.push(i);
                    set.timed.push(i);
                }
            }
            set.conditions.push(c);
        };

        for (index, spec) in src.rules.iter().enumerate() {
            let key = format!("rules[{index}]");
            check_id(&mut errs, &mut seen, &key, &spec.id);
            check_common(
                &mut errs,
                &key,
                spec.delay_ms,
                spec.hysteresis,
                &spec.phases,
                spec.max_session,
            );
            let (lo, hi) = spec.vital.possible_range();
            let low = side_limit(
                &mut errs,
                &key,
                spec.vital,
                Direction::Low,
                spec.low,
                &spec.relative(),
            );
            let high = side_limit(
                &mut errs,
                &key,
                spec.vital,
                Direction::High,
                spec.high,
                &spec.relative(),
            );
            match (spec.low, spec.high) {
                _ if low.is_none() && high.is_none() => errs.push(
                    format!("{key}.low"),
                    "a rule needs a low or a high limit (absolute or relative to the baseline)",
                ),
                (Some(l), Some(h)) if l >= h => errs.push(
                    format!("{key}.low"),
                    format!("low ({l}) must be less than high ({h})"),
                ),
                (Some(l), Some(h)) if spec.hysteresis >= (h - l) / 2.0 => errs.push(
                    format!("{key}.hysteresis"),
                    format!(
                        "{} must be less than half the band {l}..{h}, or no value could clear it",
                        spec.hysteresis
                    ),
                ),
                _ => {}
            }
            if spec.low.is_some_and(|l| l + spec.hysteresis > hi)
                || spec.high.is_some_and(|h| h - spec.hysteresis < lo)
            {
                errs.push(
                    format!("{key}.hysteresis"),
                    format!(
                        "{} puts the clearing point outside what {} can be ({lo}..={hi}): the alarm could never clear",
                        spec.hysteresis, spec.vital
                    ),
                );
            }
            let rule: Arc<str> = Arc::from(spec.id.as_str());
            for (direction, limit) in [(Direction::Low, low), (Direction::High, high)] {
                if let Some(limit) = limit {
                    add(
                        &mut set,
                        Condition {
                            rule: rule.clone(),
                            check: Check::Threshold {
                                vital: spec.vital,
                                direction,
                                limit,
                            },
                            priority: spec.priority,
                            delay_ms: spec.delay_ms,
                            hysteresis: spec.hysteresis,
                            phases: phase_set(&spec.phases),
                            max_session: spec.max_session,
                            needs_pump: false,
                            latching: spec.latching,
                        },
                    );
                }
            }
        }

        for (index, spec) in src.combined.iter().enumerate() {
            let key = format!("combined_rules[{index}]");
            check_id(&mut errs, &mut seen, &key, &spec.id);
            check_common(
                &mut errs,
                &key,
                spec.delay_ms,
                spec.hysteresis,
                &spec.phases,
                spec.max_session,
            );
            if spec.all.len() < 2 {
                errs.push(
                    format!("{key}.all"),
                    "a combined rule needs at least two parts",
                );
            }
            let mut parts = Vec::new();
            for (pi, part) in spec.all.iter().enumerate() {
                let pkey = format!("{key}.all[{pi}]");
                let low = side_limit(
                    &mut errs,
                    &pkey,
                    part.vital,
                    Direction::Low,
                    part.low,
                    &part.relative(),
                );
                let high = side_limit(
                    &mut errs,
                    &pkey,
                    part.vital,
                    Direction::High,
                    part.high,
                    &part.relative(),
                );
                match (low, high) {
                    (Some(l), None) => parts.push((part.vital, Direction::Low, l)),
                    (None, Some(h)) => parts.push((part.vital, Direction::High, h)),
                    _ => errs.push(
                        pkey,
                        "each part needs limits on exactly one side (low or high)",
                    ),
                }
            }
            add(
                &mut set,
                Condition {
                    rule: Arc::from(spec.id.as_str()),
                    check: Check::Combined { parts },
                    priority: spec.priority,
                    delay_ms: spec.delay_ms,
                    hysteresis: spec.hysteresis,
                    phases: phase_set(&spec.phases),
                    max_session: spec.max_session,
                    needs_pump: false,
                    latching: spec.latching,
                },
            );
        }

        for (index, spec) in src.trends.iter().enumerate() {
            let key = format!("trend_rules[{index}]");
            check_id(&mut errs, &mut seen, &key, &spec.id);
            check_common(
                &mut errs,
                &key,
                0,
                spec.hysteresis,
                &spec.phases,
                spec.max_session,
            );
            if spec.window_ms < 1_000 || spec.window_ms > 3_600_000 {
                errs.push(
                    format!("{key}.window_ms"),
                    "must be 1000-3600000 (1 s to 1 h)",
                );
            }
            let (_, hi) = spec.vital.possible_range();
            let sides = [
                (Direction::High, spec.rise, "rise"),
                (Direction::Low, spec.fall, "fall"),
            ];
            if sides.iter().all(|s| s.1.is_none()) {
                errs.push(format!("{key}.rise"), "a trend rule needs `rise` or `fall`");
            }
            for (direction, by, field) in sides {
                let Some(by) = by else { continue };
                if !by.is_finite() || by <= 0.0 || by > hi {
                    errs.push(
                        format!("{key}.{field}"),
                        format!("must be above 0 and at most {hi}"),
                    );
                } else if spec.hysteresis >= by {
                    errs.push(
                        format!("{key}.hysteresis"),
                        format!("must be less than {field} ({by}), or the alarm could never clear"),
                    );
                }
                set.trend_window[spec.vital.index()] =
                    set.trend_window[spec.vital.index()].max(spec.window_ms);
                add(
                    &mut set,
                    Condition {
                        rule: Arc::from(spec.id.as_str()),
                        check: Check::Trend {
                            vital: spec.vital,
                            direction,
                            by,
                            window_ms: spec.window_ms,
                        },
                        priority: spec.priority,
                        delay_ms: 0,
                        hysteresis: spec.hysteresis,
                        phases: phase_set(&spec.phases),
                        max_session: spec.max_session,
                        needs_pump: false,
                        latching: spec.latching,
                    },
                );
            }
        }

        let t = src.technical;
        let technical = |check, priority, phases: &[Phase], needs_pump, id: String| Condition {
            rule: Arc::from(id.as_str()),
            check,
            priority,
            delay_ms: 0,
            hysteresis: 0.0,
            phases: phase_set(phases),
            max_session: None,
            needs_pump,
            latching: false,
        };
        for (vital, &ms) in &t.stale_ms {
            if ms == 0 {
                continue;
            }
            if ms < 1_000 {
                errs.push(
                    format!("technical.stale_ms.{vital}"),
                    "must be 0 (off) or at least 1000",
                );
            }
            set.stale_ms[vital.index()] = ms;
            add(
                &mut set,
                technical(
                    Check::Stale {
                        vital: *vital,
                        allowance_ms: ms,
                    },
                    t.stale_priority,
                    &t.stale_phases,
                    false,
                    format!("{vital}_stale"),
                ),
            );
        }
        if t.offline_ms > 0 {
            if t.offline_ms < 1_000 {
                errs.push("technical.offline_ms", "must be 0 (off) or at least 1000");
            }
            add(
                &mut set,
                technical(
                    Check::Offline {
                        silent_ms: t.offline_ms,
                    },
                    t.offline_priority,
                    &t.offline_phases,
                    false,
                    "device_offline".into(),
                ),
            );
        }
        if t.pump_without_spo2_ms > 0 {
            if t.pump_without_spo2_ms < 1_000 {
                errs.push(
                    "technical.pump_without_spo2_ms",
                    "must be 0 (off) or at least 1000",
                );
            }
            add(
                &mut set,
                technical(
                    Check::PumpWithoutSpo2 {
                        allowance_ms: t.pump_without_spo2_ms,
                    },
                    t.pump_without_spo2_priority,
                    &monitored_phases(),
                    true,
                    "pump_without_spo2".into(),
                ),
            );
        }
        for (key, phases) in [
            ("technical.stale_phases", &t.stale_phases),
            ("technical.offline_phases", &t.offline_phases),
        ] {
            if phases.is_empty() {
                errs.push(key, "must list at least one phase");
            }
        }

        let s = src.session;
        if s.baseline_min_samples < 1 {
            errs.push("session.baseline_min_samples", "must be at least 1");
        }
        if s.baseline_max_samples < s.baseline_min_samples.max(2) || s.baseline_max_samples > 65_536
        {
            errs.push(
                "session.baseline_max_samples",
                "must be at least 2 and session.baseline_min_samples, and at most 65536",
            );
        }
        if s.discharge_stable_ms < 1_000 {
            errs.push("session.discharge_stable_ms", "must be at least 1000");
        }
        for (vital, band) in &s.discharge_band {
            if !band.is_finite() || *band <= 0.0 {
                errs.push(format!("session.discharge_band.{vital}"), "must be above 0");
            }
        }
        if s.max_message_bytes < 256 || s.max_message_bytes > 1 << 20 {
            errs.push("session.max_message_bytes", "must be 256-1048576");
        }

        if errs.0.is_empty() {
            Ok(set)
        } else {
            Err(errs.0)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spo2_rule() -> RuleSpec {
        RuleSpec {
            id: "spo2_low".into(),
            vital: Vital::Spo2,
            low: Some(98.0),
            priority: Priority::High,
            hysteresis: 3.0,
            ..RuleSpec::default()
        }
    }

    #[test]
    fn one_sided_rule_that_could_never_clear_is_refused() {
        let errs = RuleSet::compile(&[spo2_rule()]).unwrap_err();
        assert_eq!(errs[0].key, "rules[0].hysteresis");
        assert!(RuleSet::compile(&[RuleSpec {
            hysteresis: 2.0,
            ..spo2_rule()
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
            phases: vec![],
            ..RuleSpec::default()
        };
        let errs = RuleSet::compile(&[bad]).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "rules[0].id",
                "rules[0].delay_ms",
                "rules[0].hysteresis",
                "rules[0].phases",
                "rules[0].high"
            ]
        );
    }

    #[test]
    fn relative_only_rule_is_a_limit_and_bad_ratios_are_refused() {
        let rel = RuleSpec {
            id: "sbp_surge".into(),
            vital: Vital::Sbp,
            above_baseline: Some(40.0),
            above_baseline_ratio: Some(0.8),
            ..RuleSpec::default()
        };
        let errs = RuleSet::compile(std::slice::from_ref(&rel)).unwrap_err();
        assert_eq!(errs[0].key, "rules[0].above_baseline_ratio");
        let ok = RuleSpec {
            above_baseline_ratio: None,
            ..rel
        };
        let set = RuleSet::compile(&[ok]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.threshold_conditions("sbp_surge"), &[0]);
    }

    #[test]
    fn combined_and_trend_rules_compile_and_index_their_vitals() {
        let combined = CombinedRuleSpec {
            id: "resp".into(),
            all: vec![
                PartSpec {
                    vital: Vital::Rr,
                    low: Some(10.0),
                    high: None,
                    below_baseline: None,
                    above_baseline: None,
                    below_baseline_ratio: None,
                    above_baseline_ratio: None,
                },
                PartSpec {
                    vital: Vital::Spo2,
                    low: Some(94.0),
                    high: None,
                    below_baseline: None,
                    above_baseline: None,
                    below_baseline_ratio: None,
                    above_baseline_ratio: None,
                },
            ],
            priority: Priority::High,
            delay_ms: 0,
            hysteresis: 1.0,
            phases: monitored_phases(),
            max_session: None,
            latching: false,
        };
        let trend = TrendRuleSpec {
            id: "sbp_rise".into(),
            vital: Vital::Sbp,
            rise: Some(30.0),
            fall: None,
            window_ms: 600_000,
            priority: Priority::Medium,
            hysteresis: 5.0,
            phases: monitored_phases(),
            max_session: None,
            latching: false,
        };
        let set = RuleSet::compile_all(RuleSources {
            rules: &[],
            combined: std::slice::from_ref(&combined),
            trends: &[trend],
            technical: &TechnicalSpec::default(),
            session: &SessionSpec::default(),
        })
        .unwrap();
        assert_eq!(set.for_vital(Vital::Rr), &[0]);
        assert_eq!(set.for_vital(Vital::Spo2), &[0]);
        assert_eq!(set.for_vital(Vital::Sbp), &[1]);
        assert_eq!(set.trend_window(Vital::Sbp), 600_000);
        let one_part = CombinedRuleSpec {
            all: combined.all[..1].to_vec(),
            ..combined
        };
        let errs = RuleSet::compile_all(RuleSources {
            rules: &[],
            combined: &[one_part],
            trends: &[],
            technical: &TechnicalSpec::default(),
            session: &SessionSpec::default(),
        })
        .unwrap_err();
        assert_eq!(errs[0].key, "combined_rules[0].all");
    }
}
