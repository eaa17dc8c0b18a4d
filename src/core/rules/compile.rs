//! Validating the configuration and compiling it into a [`RuleSet`]: every problem
//! is reported with the key that has it, not just the first.

use super::spec::monitored_phases;
use super::*;
use crate::core::condition::{Check, Limit};
use crate::core::session::{Phase, PhaseSet};
use std::collections::HashSet;

/// Without an offline allowance, how long after the chair was last heard from its
/// pump's last "running" report still counts.
const DEFAULT_PUMP_HEARD_WITHIN_MS: u64 = 60_000;

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
        widens: false,
    })
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
            let widen = |limit: Option<Limit>| {
                limit.map(|l| Limit {
                    widens: spec.widen_to_baseline,
                    ..l
                })
            };
            let low = widen(side_limit(
                &mut errs,
                &key,
                spec.vital,
                Direction::Low,
                spec.low,
                &spec.relative(),
            ));
            let high = widen(side_limit(
                &mut errs,
                &key,
                spec.vital,
                Direction::High,
                spec.high,
                &spec.relative(),
            ));
            if spec.widen_to_baseline
                && !low.is_some_and(|l| l.uses_baseline())
                && !high.is_some_and(|l| l.uses_baseline())
            {
                errs.push(
                    format!("{key}.widen_to_baseline"),
                    "needs a limit relative to the baseline (above_baseline, ...) to widen to",
                );
            }
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
                            phases: PhaseSet::of(&spec.phases),
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
                    phases: PhaseSet::of(&spec.phases),
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
                        phases: PhaseSet::of(&spec.phases),
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
            phases: PhaseSet::of(phases),
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
                        heard_within_ms: if t.offline_ms > 0 {
                            t.offline_ms
                        } else {
                            DEFAULT_PUMP_HEARD_WITHIN_MS
                        },
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

        set.assign_groups();
        if errs.0.is_empty() {
            Ok(set)
        } else {
            Err(errs.0)
        }
    }
}
