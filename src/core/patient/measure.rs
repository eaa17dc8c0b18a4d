//! How each kind of condition is measured for one patient.

use super::PatientState;
use crate::core::alarm::PartValue;
use crate::core::condition::{Check, Condition, Measure};
use crate::core::reading::Vital;
use crate::core::rules::{Direction, RuleSet};

/// A part of a combined condition counts only if its value is this recent relative
/// to the newest part (or within the vital's stale allowance, if longer): "RR low
/// together with SpO2 falling" means at the same time.
pub const COMBINED_FRESH_MS: u64 = 60_000;

impl PatientState {
    /// The limit of one side of one vital for this patient: configured (or
    /// overridden) absolute limit and baseline-relative limits, the stricter.
    fn limit_for(
        &self,
        cond: &Condition,
        vital: Vital,
        direction: Direction,
        limit: &crate::core::condition::Limit,
    ) -> Option<f64> {
        let over = self
            .session
            .overrides
            .get(&cond.rule)
            .and_then(|o| match direction {
                Direction::Low => o.low,
                Direction::High => o.high,
            });
        limit.effective(direction, self.session.baseline_of(vital), over)
    }

    /// Gateway ms since `vital` was last heard. See [`Self::silent_since`].
    fn silent_ms(&self, vital: Vital, now_ms: u64, alarm_up: bool) -> u64 {
        now_ms.saturating_sub(self.silent_since(self.received[vital.index()], alarm_up))
    }

    /// From when silence counts, for data last heard at gateway time `heard`.
    /// While no alarm is up: at the earliest from when the current phase was
    /// applied (a restart too) or the chair was first heard of, so that a device
    /// has its allowance in a phase just entered. An alarm already up ends only
    /// when data returns: a phase change or a restart is not data.
    pub(super) fn silent_since(&self, heard: u64, alarm_up: bool) -> u64 {
        match alarm_up {
            true => heard,
            false => heard.max(self.session.applied_at).max(self.first_heard),
        }
    }
}

/// See [`PatientState::measure`].
pub(super) fn measure(p: &PatientState, rules: &RuleSet, i: usize, now_ms: u64) -> Option<Measure> {
    let cond = rules.condition(i);
    let alarm_up = p.conditions[i].alarm_id().is_some();
    let m = match &cond.check {
        Check::Threshold {
            vital,
            direction,
            limit,
        } => {
            let value = p.latest.get(*vital)?.value;
            let limit = p.limit_for(cond, *vital, *direction, limit)?;
            Measure::against(value, limit, *direction, cond.hysteresis)
        }
        Check::Combined { parts } => {
            // The breach, and the first part's value and limit, without collecting
            // the parts: that happens only on a transition ([`parts`]).
            let mut breached = true;
            let mut recovered = false;
            let mut first = None;
            for_each_part(p, rules, cond, parts, |part| match part {
                Some((value, limit, direction)) => {
                    let m = Measure::against(value, limit, direction, cond.hysteresis);
                    breached &= m.breached;
                    recovered |= m.recovered;
                    first.get_or_insert((value, limit));
                }
                // A part without a current value or limit cannot be breached, nor
                // has it recovered: an alarm up stays until a part with a current
                // value says it ended (a probe slipping off is not the patient
                // breathing again; its own stale alarm says the data is gone).
                None => breached = false,
            })?;
            let (value, limit) = first.unwrap_or((0.0, 0.0));
            Measure {
                breached,
                recovered,
                value,
                limit,
            }
        }
        Check::Trend {
            vital,
            direction,
            by,
            window_ms,
        } => {
            let latest = p.latest.get(*vital)?;
            let (lo, hi) = p.trends[vital.index()]
                .as_ref()?
                .range(latest.ts, *window_ms)?;
            let limit = match direction {
                Direction::High => lo + by,
                Direction::Low => hi - by,
            };
            Measure::against(latest.value, limit, *direction, cond.hysteresis)
        }
        Check::Stale {
            vital,
            allowance_ms,
        } => timed(p.silent_ms(*vital, now_ms, alarm_up), *allowance_ms, false),
        Check::Offline { silent_ms } => {
            let silent = now_ms.saturating_sub(p.silent_since(p.heard_at, alarm_up));
            timed(silent, *silent_ms, p.device_offline)
        }
        Check::PumpWithoutSpo2 {
            allowance_ms,
            heard_within_ms,
        } => {
            // Running as of its latest report, while the chair is still heard from:
            // a chair gone silent is not known to infuse (its silence is the offline
            // alarm's); a pump that reports rarely still counts.
            let heard = p.heard_at.max(p.first_heard);
            let running = p.latest.pump.is_some_and(|s| s.pump.running)
                && now_ms.saturating_sub(heard) <= *heard_within_ms;
            if !running {
                Measure {
                    breached: false,
                    recovered: true,
                    value: 0.0,
                    limit: *allowance_ms as f64 / 1000.0,
                }
            } else {
                timed(
                    p.silent_ms(Vital::Spo2, now_ms, alarm_up),
                    *allowance_ms,
                    false,
                )
            }
        }
    };
    Some(m)
}

/// Each part of a combined condition in order: its current value and limit with
/// its direction, or `None` when it has no fresh value or no limit. `None` overall
/// when no part has a value at all.
fn for_each_part(
    p: &PatientState,
    rules: &RuleSet,
    cond: &Condition,
    parts: &[(Vital, Direction, crate::core::condition::Limit)],
    mut f: impl FnMut(Option<(f64, f64, Direction)>),
) -> Option<()> {
    let newest = parts
        .iter()
        .filter_map(|(v, _, _)| p.latest.get(*v).map(|s| s.ts))
        .max()?;
    for (vital, direction, limit) in parts {
        let fresh = COMBINED_FRESH_MS.max(rules.stale_ms(*vital));
        let sample = p
            .latest
            .get(*vital)
            .filter(|s| newest.saturating_sub(s.ts) <= fresh);
        let limit = p.limit_for(cond, *vital, *direction, limit);
        f(sample.zip(limit).map(|(s, l)| (s.value, l, *direction)));
    }
    Some(())
}

/// A combined condition's parts as an alarm reports them (empty for other kinds).
pub(super) fn parts(p: &PatientState, rules: &RuleSet, cond: &Condition) -> Vec<PartValue> {
    let Check::Combined { parts } = &cond.check else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(parts.len());
    let mut vitals = parts.iter();
    let _ = for_each_part(p, rules, cond, parts, |part| {
        let (vital, _, _) = vitals.next().expect("one call per part");
        if let Some((value, limit, direction)) = part {
            out.push(PartValue {
                vital: *vital,
                condition: direction,
                value,
                limit,
            });
        }
    });
    out
}

/// A silence of `silent_ms` against an allowance, reported in seconds.
fn timed(silent_ms: u64, allowance_ms: u64, forced: bool) -> Measure {
    let breached = forced || silent_ms > allowance_ms;
    Measure {
        breached,
        recovered: !breached,
        value: (silent_ms / 1000) as f64,
        limit: (allowance_ms / 1000) as f64,
    }
}
