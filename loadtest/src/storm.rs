//! The alarm storm (`--storm`): every chair breaching at once, as after a broker
//! reconnect, and how long the gateway takes to put every one of those alarms on
//! every dashboard.
//!
//! The storm starts at its first publish (the earliest storm reading handed to an
//! MQTT client), not at the planned instant: what is timed is the gateway and the
//! path to it, not how promptly the publishers woke up. It completes when the last
//! storm alarm reaches the last dashboard; a storm that lost an alarm never does.

use crate::dashboards::{histogram, Seen};
use crate::devices::SentLog;
use crate::report::Latency;
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The storm instant from the start of publishing: `at`, or half `duration`. It
/// must leave a reading period before it (every chair has published a baseline
/// reading) and one after it within `duration` (every publisher reaches it while
/// still on schedule).
pub fn instant(at: Option<Duration>, duration: Duration, rate: f64) -> Result<Duration> {
    let at = at.unwrap_or(duration / 2);
    let period = Duration::from_secs_f64(1.0 / rate);
    if at < period || at + period > duration {
        bail!(
            "--storm-at {:.3} s must be at least one reading period ({:.3} s) after the \
             start and one before the end of --duration ({:.3} s)",
            at.as_secs_f64(),
            period.as_secs_f64(),
            duration.as_secs_f64()
        );
    }
    Ok(at)
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    /// The planned storm instant, from the start of publishing.
    pub at_s: f64,
    /// Chairs that stormed: one storm reading each.
    pub chairs: u64,
    /// Dashboards (the floor's one subscriber with --floor).
    pub dashboards: usize,
    /// First storm publish → last one (all handed to the MQTT clients).
    pub publish_span_ms: f64,
    /// Chairs × dashboards: each chair's alarm on each dashboard once, holding every
    /// expected rule (the floor: each storm reading once).
    pub alarms_expected: u64,
    pub alarms_delivered: u64,
    /// Alarms that did not arrive, or arrived without an expected rule.
    pub alarms_lost: u64,
    /// `raised` alarms of a storm breach after its first, on the same dashboard.
    pub alarms_duplicated: u64,
    /// First storm publish → the last storm alarm on the last dashboard: the
    /// storm's figure. `None` when an alarm was lost.
    pub complete_ms: Option<f64>,
    /// Per alarm and dashboard: first storm publish → arrival.
    pub latency_from_storm: Latency,
    /// Per alarm and dashboard: its own reading's publish → arrival.
    pub latency_from_sent: Latency,
}

/// The storm's figures from what was sent and what each dashboard saw. An alarm is
/// delivered to a dashboard when every rule of `rules` was raised for its chair's
/// storm reading (with `floor`, when the reading itself arrived).
pub fn tally(
    at: Duration,
    log: &SentLog,
    seen: &[Seen],
    rules: &[String],
    floor: bool,
) -> StormReport {
    let storm: Vec<(u32, u64, Instant)> = log
        .breaches
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.storm)
        .map(|(&(chair, ts), s)| (chair, ts, s.actual))
        .collect();
    let first = storm.iter().map(|s| s.2).min();
    let last = storm.iter().map(|s| s.2).max();
    let mut delivered = 0;
    let mut duplicated = 0;
    let mut from_storm = histogram();
    let mut from_sent = histogram();
    let mut done: Option<Instant> = None;
    for s in seen {
        delivered += storm
            .iter()
            .filter(|&&(chair, ts, _)| {
                if floor {
                    s.breaches.contains(&(chair, ts))
                } else {
                    rules.iter().all(|r| s.was_raised(chair, ts, r))
                }
            })
            .count() as u64;
        duplicated += s.storm_duplicates;
        for &(sent, arrived) in &s.storm {
            let us = |from: Instant| arrived.saturating_duration_since(from).as_micros() as u64;
            if let Some(first) = first {
                from_storm.saturating_record(us(first).max(1));
            }
            from_sent.saturating_record(us(sent).max(1));
            done = done.max(Some(arrived));
        }
    }
    let expected = storm.len() as u64 * seen.len() as u64;
    let lost = expected - delivered;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    StormReport {
        at_s: at.as_secs_f64(),
        chairs: storm.len() as u64,
        dashboards: seen.len(),
        publish_span_ms: first.zip(last).map_or(0.0, |(f, l)| ms(l - f)),
        alarms_expected: expected,
        alarms_delivered: delivered,
        alarms_lost: lost,
        alarms_duplicated: duplicated,
        complete_ms: match (first, done) {
            (Some(first), Some(done)) if lost == 0 => Some(ms(done - first)),
            _ => None,
        },
        latency_from_storm: Latency::of(&from_storm),
        latency_from_sent: Latency::of(&from_sent),
    }
}

impl StormReport {
    /// Why the storm missed `limit`, if it did.
    pub fn missed(&self, limit: Duration) -> Option<String> {
        let limit_ms = limit.as_secs_f64() * 1000.0;
        match self.complete_ms {
            Some(ms) if ms <= limit_ms => None,
            Some(ms) => Some(format!(
                "storm complete in {ms:.3} ms > {limit_ms:.3} ms (first storm publish → last alarm on every dashboard)"
            )),
            None => Some(format!(
                "storm never complete ({} alarms lost), limit {limit_ms:.3} ms",
                self.alarms_lost
            )),
        }
    }

    pub fn print(&self) {
        println!();
        println!(
            "storm at {:.1} s: {} chairs breaching at once, published in {:.1} ms; \
             alarms expected {} ({} × {} dashboards), delivered {}, LOST {}, duplicated {}",
            self.at_s,
            self.chairs,
            self.publish_span_ms,
            self.alarms_expected,
            self.chairs,
            self.dashboards,
            self.alarms_delivered,
            self.alarms_lost,
            self.alarms_duplicated
        );
        match self.complete_ms {
            Some(ms) => println!(
                "storm complete: {ms:.1} ms from its first publish to its last alarm on every dashboard"
            ),
            None => println!("storm NEVER complete: alarms were lost"),
        }
        println!(
            "{:<36} {:>9} {:>8} {:>8} {:>8}",
            "storm alarm latency (ms)", "samples", "p50", "p99", "max"
        );
        for (name, l) in [
            ("from the storm's first publish", &self.latency_from_storm),
            ("from its own reading's publish", &self.latency_from_sent),
        ] {
            println!(
                "{:<36} {:>9} {:>8.3} {:>8.3} {:>8.3}",
                name, l.samples, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_instant_leaves_a_period_either_side() {
        let s = Duration::from_secs;
        assert_eq!(instant(None, s(10), 1.0).unwrap(), s(5));
        assert_eq!(instant(Some(s(1)), s(10), 1.0).unwrap(), s(1));
        assert_eq!(instant(Some(s(9)), s(10), 1.0).unwrap(), s(9));
        assert!(instant(Some(Duration::from_millis(500)), s(10), 1.0).is_err());
        assert!(instant(Some(Duration::from_millis(9_500)), s(10), 1.0).is_err());
        assert!(instant(None, s(1), 1.0).is_err(), "no room for a baseline");
    }
}
