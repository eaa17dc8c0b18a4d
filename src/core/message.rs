//! Alarm messages as people read them: "SpO2 88 below 90", "SBP rose more than 30
//! in 10 min (now 168)", "SpO2 stale 15 s".

use super::alarm::PartValue;
use super::condition::{Check, Direction};
use super::reading::Vital;

/// How a vital is named to people.
fn label(v: Vital) -> &'static str {
    match v {
        Vital::Hr => "HR",
        Vital::Spo2 => "SpO2",
        Vital::Sbp => "SBP",
        Vital::Dbp => "DBP",
        Vital::Rr => "RR",
        Vital::Etco2 => "EtCO2",
    }
}

/// A value or limit as people read it: to 0.1 at most, without a trailing ".0".
/// Limits computed from a baseline carry binary fractions (109 x 1.3 is
/// 141.70000000000002 in `f64`); nobody should read those.
fn num(x: f64) -> String {
    let s = format!("{:.1}", (x * 10.0).round() / 10.0);
    match s.strip_suffix(".0") {
        Some("-0") => "0".to_string(),
        Some(whole) => whole.to_string(),
        None => s,
    }
}

fn side(d: Direction) -> &'static str {
    match d {
        Direction::Low => "below",
        Direction::High => "above",
    }
}

/// The one-line message of an alarm of `check` (rule `rule`) at `value` against
/// `limit`; a combined rule names each of its `parts`. `ended`: for the event
/// that clears it.
pub fn alarm(
    check: &Check,
    rule: &str,
    value: f64,
    limit: f64,
    parts: &[PartValue],
    ended: bool,
) -> String {
    match check {
        // An ended alarm's value may be back inside the limit or, when it ended
        // for another reason (a phase change, a new patient), still beyond it:
        // its line says the alarm ended, not where the value is.
        Check::Threshold { vital, .. } if ended => format!(
            "{} {}: alarm {} {} ended",
            label(*vital),
            num(value),
            side(check.direction()),
            num(limit)
        ),
        Check::Threshold { vital, .. } => {
            format!(
                "{} {} {} {}",
                label(*vital),
                num(value),
                side(check.direction()),
                num(limit)
            )
        }
        // The parts' values, without saying they are beyond limits they may be
        // back inside of (or none: it ended for a reason).
        Check::Combined { .. } if ended => {
            let values: Vec<String> = parts
                .iter()
                .map(|p| format!("{} {}", label(p.vital), num(p.value)))
                .collect();
            match values.is_empty() {
                true => format!("{rule} ended"),
                false => format!("{rule} ended ({})", values.join(", ")),
            }
        }
        Check::Combined { .. } => {
            let parts: Vec<String> = parts
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {} {}",
                        label(p.vital),
                        num(p.value),
                        side(p.condition),
                        num(p.limit)
                    )
                })
                .collect();
            format!("{}: {}", rule, parts.join(" and "))
        }
        Check::Trend {
            vital,
            by,
            window_ms,
            ..
        } => {
            let window = if window_ms % 60_000 == 0 {
                format!("{} min", window_ms / 60_000)
            } else {
                format!("{} s", window_ms / 1_000)
            };
            let moved = match check.direction() {
                Direction::High => "rose",
                Direction::Low => "fell",
            };
            let ended = if ended { ": ended" } else { "" };
            format!(
                "{} {moved} more than {} in {window}{ended} (now {})",
                label(*vital),
                num(*by),
                num(value)
            )
        }
        Check::Stale { vital, .. } => format!("{} stale {} s", label(*vital), value),
        // Inside the allowance, the device itself said it is offline (its last
        // will): say so, rather than a silence of "0 s".
        Check::Offline { .. } if value < limit && !ended => {
            format!("Device offline (it said so; {} s without data)", value)
        }
        Check::Offline { .. } => format!("Device offline ({} s without data)", value),
        Check::PumpWithoutSpo2 { .. } => {
            format!("Pump running without live SpO2 ({} s)", value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_alarm_says_it_ended_not_that_the_value_is_beyond_the_limit() {
        let high = Check::Threshold {
            vital: Vital::Sbp,
            direction: Direction::High,
            limit: crate::core::condition::Limit::default(),
        };
        assert_eq!(
            alarm(&high, "sbp_critical", 190.0, 180.0, &[], false),
            "SBP 190 above 180"
        );
        assert_eq!(
            alarm(&high, "sbp_critical", 120.0, 180.0, &[], true),
            "SBP 120: alarm above 180 ended"
        );
        let combined = Check::Combined { parts: Vec::new() };
        let part = |vital, value, limit| PartValue {
            vital,
            condition: Direction::Low,
            value,
            limit,
        };
        let parts = [part(Vital::Rr, 12.0, 10.0), part(Vital::Spo2, 97.0, 95.0)];
        assert_eq!(
            alarm(&combined, "respiratory_depression", 0.0, 0.0, &parts, true),
            "respiratory_depression ended (RR 12, SpO2 97)"
        );
        assert_eq!(
            alarm(&combined, "respiratory_depression", 0.0, 0.0, &[], true),
            "respiratory_depression ended",
            "ended for a reason: no parts"
        );
    }

    #[test]
    fn limits_from_a_baseline_read_as_people_write_them() {
        let high = Check::Threshold {
            vital: Vital::Sbp,
            direction: Direction::High,
            limit: crate::core::condition::Limit::default(),
        };
        // 30 % over a baseline of 109 (sbp_over_baseline).
        let limit = 109.0 * 1.3;
        assert_ne!(limit.to_string(), "141.7", "the f64 is not 141.7");
        assert_eq!(
            alarm(&high, "sbp_over_baseline", 189.0, limit, &[], false),
            "SBP 189 above 141.7"
        );
        assert_eq!(
            alarm(&high, "sbp_over_baseline", 120.0, limit, &[], true),
            "SBP 120: alarm above 141.7 ended"
        );
        assert_eq!(
            alarm(&high, "sbp_warn", 155.0, 139.1, &[], false),
            "SBP 155 above 139.1"
        );
        let combined = Check::Combined { parts: Vec::new() };
        let parts = [PartValue {
            vital: Vital::Spo2,
            condition: Direction::Low,
            value: 93.0,
            // A limit with more decimals than anyone reads.
            limit: 283.0 / 3.0,
        }];
        assert_eq!(
            alarm(&combined, "respiratory_depression", 0.0, 0.0, &parts, false),
            "respiratory_depression: SpO2 93 below 94.3"
        );
    }

    #[test]
    fn an_offline_device_is_told_apart_from_a_silent_one() {
        let offline = Check::Offline { silent_ms: 30_000 };
        assert_eq!(
            alarm(&offline, "device_offline", 31.0, 30.0, &[], false),
            "Device offline (31 s without data)"
        );
        assert_eq!(
            alarm(&offline, "device_offline", 0.0, 30.0, &[], false),
            "Device offline (it said so; 0 s without data)"
        );
        assert_eq!(
            alarm(&offline, "device_offline", 0.0, 30.0, &[], true),
            "Device offline (0 s without data)",
            "its clear, when data returns"
        );
    }
}
