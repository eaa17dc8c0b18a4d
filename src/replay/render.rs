//! A replay's report for a person (a terminal table), a program (JSON) and a page
//! (an SVG chart of alarm burden per rule, A against B).

use super::report::{only_in, OnlyIn, Report, RuleRow};
use crate::core::Priority;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Everything `vitalgate replay` prints with `--json`.
#[derive(Serialize)]
pub struct Comparison<'a> {
    pub a: &'a Report,
    pub b: Option<&'a Report>,
    /// Alarms A raises where B raises none (chair, vital and direction, overlapping).
    pub only_in_a: Vec<OnlyIn>,
    pub only_in_b: Vec<OnlyIn>,
}

impl<'a> Comparison<'a> {
    pub fn new(a: &'a Report, b: Option<&'a Report>) -> Self {
        Comparison {
            a,
            b,
            only_in_a: b.map(|b| only_in(a, b)).unwrap_or_default(),
            only_in_b: b.map(|b| only_in(b, a)).unwrap_or_default(),
        }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for report in std::iter::once(self.a).chain(self.b) {
            summary(&mut out, report);
        }
        let _ = writeln!(out);
        let header = |out: &mut String, name: &str| {
            let _ = writeln!(out, "{:<26} {:<6} | {name:^54}", "rule", "prio");
            let _ = writeln!(
                out,
                "{:<26} {:<6} | {:>6} {:>7} {:>9} {:>8} {:>8} {:>6}",
                "", "", "alarms", "/chr", "in alarm", "median", "p90", "<30s"
            );
        };
        let rows_a = rows(self.a);
        match self.b {
            None => {
                header(&mut out, &self.a.config);
                for ((rule, prio), row) in &rows_a {
                    let _ = writeln!(
                        out,
                        "{rule:<26} {:<6} | {}",
                        prio_name(*prio),
                        cells(Some(row))
                    );
                }
            }
            Some(b) => {
                let rows_b = rows(b);
                let _ = writeln!(
                    out,
                    "{:<26} {:<6} | {:^54} | {:^54}",
                    "rule", "prio", self.a.config, b.config
                );
                let _ = writeln!(
                    out,
                    "{:<26} {:<6} | {:>6} {:>7} {:>9} {:>8} {:>8} {:>6} | {:>6} {:>7} {:>9} {:>8} {:>8} {:>6}",
                    "", "", "alarms", "/chr", "in alarm", "median", "p90", "<30s",
                    "alarms", "/chr", "in alarm", "median", "p90", "<30s"
                );
                let mut keys: Vec<_> = rows_a.keys().chain(rows_b.keys()).collect();
                keys.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
                keys.dedup();
                for key in keys {
                    let _ = writeln!(
                        out,
                        "{:<26} {:<6} | {} | {}",
                        key.0,
                        prio_name(key.1),
                        cells(rows_a.get(key).copied()),
                        cells(rows_b.get(key).copied())
                    );
                }
                for (name, only) in [
                    (&self.a.config, &self.only_in_a),
                    (&b.config, &self.only_in_b),
                ] {
                    let _ = writeln!(out, "\nRaised only by {name} (no alarm of the other for that chair, vital and direction at the time, at that priority or higher):");
                    if only.is_empty() {
                        let _ = writeln!(out, "  none");
                    }
                    for o in only {
                        let _ = writeln!(
                            out,
                            "  {:<26} {:<6} {:>5} alarms, worst {} ({} in {})",
                            o.rule,
                            prio_name(o.priority),
                            o.alarms,
                            o.worst,
                            o.worst_chair,
                            o.worst_recording
                        );
                    }
                }
            }
        }
        for report in std::iter::once(self.a).chain(self.b) {
            scores(&mut out, report);
        }
        out
    }

    /// Alarms per chair-hour for each rule, A against B, as a horizontal bar chart.
    pub fn svg(&self) -> String {
        let rows_a = rows(self.a);
        let rows_b = self.b.map(rows).unwrap_or_default();
        let mut keys: Vec<_> = rows_a.keys().chain(rows_b.keys()).collect();
        keys.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        keys.dedup();
        let rate = |rows: &BTreeMap<(String, Priority), &RuleRow>, k| {
            rows.get(k).map_or(0.0, |r: &&RuleRow| r.per_chair_hour)
        };
        let max = keys
            .iter()
            .map(|k| rate(&rows_a, k).max(rate(&rows_b, k)))
            .fold(0.0_f64, f64::max)
            .max(FLOOR * 10.0);
        let (label_w, bar_w, row_h) = (260.0, 420.0, 34.0);
        // Rates span several orders of magnitude (a flickering limit raises
        // hundreds of times what a well-set one does): a log scale from FLOOR keeps
        // every bar readable.
        let span = (max / FLOOR).log10();
        let width = |v: f64| {
            if v <= 0.0 {
                0.0
            } else {
                (bar_w * (v.max(FLOOR) / FLOOR).log10() / span).max(2.0)
            }
        };
        let height = 70.0 + row_h * keys.len() as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
            w = label_w + bar_w + 90.0
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let simulated = self.a.simulated || self.b.is_some_and(|b| b.simulated);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">Alarms per chair-hour, by rule (log scale){}</text>"#,
            if simulated {
                " (SIMULATED patients)"
            } else {
                ""
            }
        );
        let b_name = self.b.map_or("", |b| b.config.as_str());
        let _ = writeln!(
            s,
            r##"<rect x="10" y="32" width="12" height="10" fill="#1f5fa8"/><text x="26" y="41">A: {}</text><rect x="{bx}" y="32" width="12" height="10" fill="#d9822b" stroke="black" stroke-dasharray="2"/><text x="{tx}" y="41">B: {}</text>"##,
            escape(&self.a.config),
            escape(b_name),
            bx = label_w + 60.0,
            tx = label_w + 76.0
        );
        for (i, key) in keys.iter().enumerate() {
            let y = 56.0 + row_h * i as f64;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}">{} ({})</text>"#,
                y + 16.0,
                escape(&key.0),
                prio_name(key.1)
            );
            for (j, (rows, fill, dash)) in [
                (&rows_a, "#1f5fa8", ""),
                (
                    &rows_b,
                    "#d9822b",
                    r#" stroke="black" stroke-dasharray="2""#,
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let v = rate(rows, key);
                let w = width(v);
                let by = y + 3.0 + 14.0 * j as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{by}" width="{w:.1}" height="12" fill="{fill}"{dash}/><text x="{}" y="{}">{v:.2}</text>"#,
                    label_w + w + 4.0,
                    by + 10.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The smallest rate the chart's log scale shows apart from zero, per chair-hour.
const FLOOR: f64 = 0.01;

fn rows(report: &Report) -> BTreeMap<(String, Priority), &RuleRow> {
    report
        .rules
        .iter()
        .map(|r| ((r.rule.clone(), r.priority), r))
        .collect()
}

fn cells(row: Option<&RuleRow>) -> String {
    match row {
        Some(r) => format!(
            "{:>6} {:>7.2} {:>8.0}s {:>7.0}s {:>7.0}s {:>5.0}%",
            r.alarms,
            r.per_chair_hour,
            r.time_in_alarm_s,
            r.median_s,
            r.p90_s,
            r.short_share * 100.0
        ),
        None => format!(
            "{:>6} {:>7} {:>9} {:>8} {:>8} {:>6}",
            0, "-", "-", "-", "-", "-"
        ),
    }
}

fn summary(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "{}: {} recordings{}, {} messages ({} readings, {} refused), {:.1} chair-hours, {} alarms ({:.2} per chair-hour)",
        r.config,
        r.recordings,
        if r.simulated { " of SIMULATED patients" } else { "" },
        r.messages,
        r.readings,
        r.refused,
        r.chair_hours,
        r.alarms,
        if r.chair_hours > 0.0 { r.alarms as f64 / r.chair_hours } else { 0.0 }
    );
}

fn scores(out: &mut String, r: &Report) {
    let Some(score) = &r.score else { return };
    let missed: Vec<_> = score.missed().collect();
    let _ = writeln!(
        out,
        "\n{}: {} true events in {} annotated recordings: {} detected at their priority, {} missed; {} alarms outside true events ({} during artefacts); {} physiological alarms in normal sessions (no event at all)",
        r.config,
        score.events.len(),
        score.recordings,
        score.events.len() - missed.len(),
        missed.len(),
        score.unneeded.len(),
        score.unneeded.iter().filter(|u| u.during.is_some()).count(),
        score.in_normal_sessions
    );
    for e in &score.events {
        let _ = writeln!(
            out,
            "  {:<34} {:<24} wants {:<6} {}",
            e.recording,
            e.event.kind,
            e.event.priority.map_or("-", prio_name),
            match (e.time_to_alarm_ms, e.highest) {
                (Some(ms), Some(p)) => format!(
                    "alarm after {:.1} s (highest {})",
                    ms as f64 / 1000.0,
                    prio_name(p)
                ),
                (None, Some(p)) => format!("MISSED (only {} raised)", prio_name(p)),
                _ => "MISSED (no alarm)".into(),
            }
        );
    }
}

fn prio_name(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
