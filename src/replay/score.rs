//! Alarms against a recording's annotated true events: which events were detected,
//! at what priority and how soon, and which alarms needed no action.

use super::run::{Replayed, Span};
use super::ReplayError;
use crate::core::{AlarmKind, Priority};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An alarm raised up to this long after a true event's end still belongs to it: a
/// value ramps back over a few seconds, and a recheck closes a cuff event.
pub const GRACE_MS: u64 = 30_000;

/// The annotation beside a recording (`{name}.json` next to `{name}.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct Annotation {
    pub name: String,
    /// The session has no event that needs action: it must raise no
    /// physiological alarm.
    #[serde(default)]
    pub normal: bool,
    #[serde(default)]
    pub events: Vec<TrueEvent>,
}

/// Something that happened to the patient or the equipment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrueEvent {
    /// `{site}/{chair}`.
    pub chair: String,
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The priority the event calls for; `None`: it needs no action (an artefact).
    pub priority: Option<Priority>,
}

impl TrueEvent {
    /// Whether device time `ts` lies in this event (or its grace after it).
    fn during(&self, ts: u64) -> bool {
        self.start_ms <= ts && ts <= self.end_ms + GRACE_MS
    }

    /// Whether `span` belongs to this event: raised, or its priority raised, during
    /// it.
    fn covers(&self, span: &Span) -> bool {
        *span.chair == *self.chair
            && (self.during(span.raised_ms)
                || span.reached.iter().flatten().any(|t| self.during(*t)))
    }

    /// When `span` first reached `priority` (or higher) during this event.
    fn reached(&self, span: &Span, priority: Priority) -> Option<u64> {
        Priority::ALL
            .iter()
            .zip(span.reached)
            .filter(|(p, _)| **p >= priority)
            .filter_map(|(_, t)| t.filter(|t| self.during(*t)))
            .min()
    }
}

impl Annotation {
    /// The annotation of `recording` (`x.json` beside `x.jsonl` or `x.jsonl.gz`), if
    /// there is one.
    pub fn beside(recording: &Path) -> Result<Option<Annotation>, ReplayError> {
        let path = recording.with_file_name(format!("{}.json", super::record::stem(recording)));
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ReplayError::Read {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ReplayError::Line {
                path,
                line: e.line(),
                message: e.to_string(),
            })
    }
}

/// What became of one true event that needs action.
#[derive(Debug, Clone, Serialize)]
pub struct EventResult {
    pub recording: String,
    #[serde(flatten)]
    pub event: TrueEvent,
    /// Device ms from the event's start to the first alarm at (or above) its
    /// priority; `None`: missed.
    pub time_to_alarm_ms: Option<u64>,
    /// The highest priority raised during the event, if any alarm was.
    pub highest: Option<Priority>,
}

/// An alarm outside every true event that needs action.
#[derive(Debug, Clone, Serialize)]
pub struct Unneeded {
    pub recording: String,
    pub chair: String,
    pub rule: String,
    pub priority: Priority,
    pub raised_ms: u64,
    /// During an artefact, the artefact's kind.
    pub during: Option<String>,
}

/// The scores of every annotated recording.
#[derive(Debug, Default, Serialize)]
pub struct Score {
    pub events: Vec<EventResult>,
    pub unneeded: Vec<Unneeded>,
    /// Physiological alarms in the normal sessions: those with no annotated event
    /// at all (sessions with artefacts only are scored by their alarms outside
    /// true events).
    pub in_normal_sessions: usize,
    pub recordings: usize,
}

impl Score {
    pub fn missed(&self) -> impl Iterator<Item = &EventResult> {
        self.events.iter().filter(|e| e.time_to_alarm_ms.is_none())
    }

    /// Score one recording's alarms against its annotation.
    pub fn add(&mut self, annotation: &Annotation, replayed: &Replayed) {
        self.recordings += 1;
        let actionable: Vec<&TrueEvent> = annotation
            .events
            .iter()
            .filter(|e| e.priority.is_some())
            .collect();
        for event in &actionable {
            let during: Vec<&Span> = replayed.spans.iter().filter(|s| event.covers(s)).collect();
            let needed = event.priority.unwrap_or(Priority::Low);
            self.events.push(EventResult {
                recording: annotation.name.clone(),
                event: (*event).clone(),
                time_to_alarm_ms: during
                    .iter()
                    .filter_map(|s| event.reached(s, needed))
                    .map(|t| t.saturating_sub(event.start_ms))
                    .min(),
                highest: during
                    .iter()
                    .filter_map(|s| {
                        Priority::ALL
                            .into_iter()
                            .find(|p| event.reached(s, *p).is_some())
                    })
                    .max(),
            });
        }
        for span in &replayed.spans {
            if actionable.iter().any(|e| e.covers(span)) {
                continue;
            }
            if annotation.normal
                && annotation.events.is_empty()
                && span.kind == AlarmKind::Physiological
            {
                self.in_normal_sessions += 1;
            }
            self.unneeded.push(Unneeded {
                recording: annotation.name.clone(),
                chair: span.chair.to_string(),
                rule: span.rule.to_string(),
                priority: span.priority,
                raised_ms: span.raised_ms,
                during: annotation
                    .events
                    .iter()
                    .find(|e| e.priority.is_none() && e.covers(span))
                    .map(|e| e.kind.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Direction;
    use std::sync::Arc;

    fn span(raised_ms: u64, priority: Priority) -> Span {
        Span {
            id: raised_ms,
            chair: Arc::from("demo/1"),
            rule: Arc::from("spo2_low"),
            priority,
            rules: vec![Arc::from("spo2_low")],
            reached: {
                let mut r = [None; 3];
                r[Priority::ALL.iter().position(|p| *p == priority).unwrap()] = Some(raised_ms);
                r
            },
            kind: AlarmKind::Physiological,
            vital: None,
            condition: Direction::Low,
            raised_ms,
            cleared_ms: None,
            worst: 80.0,
        }
    }

    fn event(kind: &str, start_ms: u64, end_ms: u64, priority: Option<Priority>) -> TrueEvent {
        TrueEvent {
            chair: "demo/1".into(),
            kind: kind.into(),
            start_ms,
            end_ms,
            priority,
        }
    }

    #[test]
    fn events_are_detected_at_their_priority_and_the_rest_is_unneeded() {
        let annotation = Annotation {
            name: "t".into(),
            normal: false,
            events: vec![
                event("desaturation", 100_000, 160_000, Some(Priority::High)),
                event("bradycardia", 300_000, 360_000, Some(Priority::High)),
                event("motion_artefact", 500_000, 503_000, None),
            ],
        };
        let replayed = Replayed {
            spans: vec![
                span(105_000, Priority::Medium),
                span(112_000, Priority::High),
                span(310_000, Priority::Medium),
                span(501_000, Priority::Medium),
                span(900_000, Priority::Low),
            ],
            ..Replayed::default()
        };
        let mut score = Score::default();
        score.add(&annotation, &replayed);
        assert_eq!(score.events[0].time_to_alarm_ms, Some(12_000));
        assert_eq!(score.events[0].highest, Some(Priority::High));
        // Only a medium alarm during a high event: missed at its priority.
        assert_eq!(score.events[1].time_to_alarm_ms, None);
        assert_eq!(score.events[1].highest, Some(Priority::Medium));
        assert_eq!(score.missed().count(), 1);
        let unneeded: Vec<_> = score
            .unneeded
            .iter()
            .map(|u| (u.raised_ms, u.during.as_deref()))
            .collect();
        assert_eq!(
            unneeded,
            vec![(501_000, Some("motion_artefact")), (900_000, None)]
        );
    }
}
