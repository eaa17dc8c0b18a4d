//! Alarm burden per rule and priority, and what one limit set raises that another
//! does not.

use super::run::{Replayed, Span};
use super::score::Score;
use crate::core::{AlarmKind, Direction, Priority, Vital};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Alarms shorter than this are counted apart: most of them are not acted upon.
pub const SHORT_MS: u64 = 30_000;

/// One rule at one priority.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRow {
    pub rule: String,
    pub priority: Priority,
    pub alarms: usize,
    pub per_chair_hour: f64,
    /// Summed over alarms, s.
    pub time_in_alarm_s: f64,
    pub median_s: f64,
    pub p90_s: f64,
    /// Share of alarms shorter than [`SHORT_MS`], 0 to 1.
    pub short_share: f64,
}

/// One limit set over the recordings.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The configuration's name (its file, or "shipped defaults").
    pub config: String,
    pub recordings: usize,
    pub messages: u64,
    pub readings: u64,
    pub refused: u64,
    pub chair_hours: f64,
    pub alarms: usize,
    /// Some recordings are of simulated patients.
    pub simulated: bool,
    pub rules: Vec<RuleRow>,
    /// With annotated recordings.
    pub score: Option<Score>,
    #[serde(skip)]
    pub(super) alarms_by_recording: Vec<(String, Vec<Span>, u64)>,
}

impl Report {
    pub(super) fn new(config: String) -> Report {
        Report {
            config,
            recordings: 0,
            messages: 0,
            readings: 0,
            refused: 0,
            chair_hours: 0.0,
            alarms: 0,
            simulated: false,
            rules: Vec::new(),
            score: None,
            alarms_by_recording: Vec::new(),
        }
    }

    /// Add one recording's replay.
    pub(super) fn add(&mut self, recording: String, replayed: Replayed) {
        self.recordings += 1;
        self.messages += replayed.messages;
        self.readings += replayed.readings;
        self.refused += replayed.refused;
        self.chair_hours += replayed.chair_hours();
        self.alarms += replayed.spans.len();
        self.simulated |= replayed.simulated;
        self.alarms_by_recording
            .push((recording, replayed.spans, replayed.end_ms));
    }

    /// Build the per-rule rows from everything added.
    pub(super) fn tally(&mut self) {
        let mut by_rule: BTreeMap<(String, Priority), Vec<u64>> = BTreeMap::new();
        for (_, spans, end_ms) in &self.alarms_by_recording {
            for s in spans {
                by_rule
                    .entry((s.rule.to_string(), s.priority))
                    .or_default()
                    .push(s.duration_ms(*end_ms));
            }
        }
        self.rules = by_rule
            .into_iter()
            .map(|((rule, priority), mut durations)| {
                durations.sort_unstable();
                let n = durations.len();
                RuleRow {
                    rule,
                    priority,
                    alarms: n,
                    per_chair_hour: per_hour(n, self.chair_hours),
                    time_in_alarm_s: durations.iter().sum::<u64>() as f64 / 1000.0,
                    median_s: quantile(&durations, 0.5) as f64 / 1000.0,
                    p90_s: quantile(&durations, 0.9) as f64 / 1000.0,
                    short_share: durations.iter().filter(|d| **d < SHORT_MS).count() as f64
                        / n.max(1) as f64,
                }
            })
            .collect();
        // Highest priority first, then by burden.
        self.rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(b.alarms.cmp(&a.alarms))
                .then(a.rule.cmp(&b.rule))
        });
    }

    fn spans(&self) -> impl Iterator<Item = (&str, &Span)> {
        self.alarms_by_recording
            .iter()
            .flat_map(|(r, spans, _)| spans.iter().map(move |s| (r.as_str(), s)))
    }
}

fn per_hour(n: usize, hours: f64) -> f64 {
    if hours > 0.0 {
        n as f64 / hours
    } else {
        0.0
    }
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Alarms one limit set raises where the other raises none for the same chair,
/// vital and direction at an overlapping time, grouped by rule.
#[derive(Debug, Serialize)]
pub struct OnlyIn {
    /// The configuration that raises them.
    pub config: String,
    pub rule: String,
    pub priority: Priority,
    pub alarms: usize,
    /// The furthest value from normal among them (lowest for a low limit).
    pub worst: f64,
    pub worst_chair: String,
    pub worst_recording: String,
}

/// Which alarms of two limit sets are the same clinical alarm: recording, chair,
/// vital (technical alarms: also the rule) and direction.
type Key<'a> = (&'a str, &'a str, Option<Vital>, &'a str, Direction);

fn key<'a>(recording: &'a str, span: &'a Span) -> Key<'a> {
    let technical = if span.kind == AlarmKind::Technical {
        &*span.rule
    } else {
        ""
    };
    (
        recording,
        &*span.chair,
        span.vital,
        technical,
        span.condition,
    )
}

/// What `a` raises that `b` does not, by rule: an alarm of `a` counts when `b` has
/// none for the same chair, vital (technical alarms: the same rule) and direction,
/// at the same priority or higher, at an overlapping time.
pub fn only_in(a: &Report, b: &Report) -> Vec<OnlyIn> {
    let mut others: HashMap<Key, Vec<(u64, u64, Priority)>> = HashMap::new();
    for (recording, span) in b.spans() {
        let end = span.cleared_ms.unwrap_or(u64::MAX);
        others
            .entry(key(recording, span))
            .or_default()
            .push((span.raised_ms, end, span.priority));
    }
    let mut out: BTreeMap<(String, Priority), OnlyIn> = BTreeMap::new();
    for (recording, span) in a.spans() {
        let end = span.cleared_ms.unwrap_or(u64::MAX);
        let overlaps = others.get(&key(recording, span)).is_some_and(|v| {
            v.iter()
                .any(|(s, e, p)| *s <= end && span.raised_ms <= *e && *p >= span.priority)
        });
        if overlaps {
            continue;
        }
        let row = out
            .entry((span.rule.to_string(), span.priority))
            .or_insert_with(|| OnlyIn {
                config: a.config.clone(),
                rule: span.rule.to_string(),
                priority: span.priority,
                alarms: 0,
                worst: span.worst,
                worst_chair: span.chair.to_string(),
                worst_recording: recording.to_string(),
            });
        row.alarms += 1;
        let worse = match span.condition {
            Direction::Low => span.worst < row.worst,
            Direction::High => span.worst > row.worst,
        };
        if worse {
            row.worst = span.worst;
            row.worst_chair = span.chair.to_string();
            row.worst_recording = recording.to_string();
        }
    }
    let mut rows: Vec<OnlyIn> = out.into_values().collect();
    rows.sort_by(|x, y| y.priority.cmp(&x.priority).then(y.alarms.cmp(&x.alarms)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(quantile(&v, 0.5), 5);
        assert_eq!(quantile(&v, 0.9), 9);
        assert_eq!(quantile(&[7], 0.9), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
