//! Recorded messages through the gateway's own alarm engine ([`Ward`]), on the
//! recording's time: the same decoding, the same ward, the same timer tick as the
//! gateway (`alarms.tick_ms`), without a broker, a clock or an audit trail.

use super::record::Record;
use super::ReplayError;
use crate::config::Config;
use crate::core::{
    decode, AlarmEvent, AlarmKind, AlarmState, DecodeLimits, Direction, Event, Outcome, Priority,
    SessionUpdate, Vital, Ward,
};
use crate::ingest::pipeline::parse_status;
use crate::ingest::{TopicKind, Topics};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One alarm from raise to clear (or to the end of the recording).
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub id: u64,
    pub chair: Arc<str>,
    pub rule: Arc<str>,
    pub priority: Priority,
    pub kind: AlarmKind,
    pub vital: Option<Vital>,
    pub condition: Direction,
    /// The `ts` of its `raised` event: device time for physiological alarms.
    pub raised_ms: u64,
    /// The `ts` of its `cleared` event; `None`: still active when the recording ended.
    pub cleared_ms: Option<u64>,
    /// The furthest value from normal while it was active (lowest for `low`).
    pub worst: f64,
}

impl Span {
    /// How long it was active, counting one still active up to `end_ms`.
    pub fn duration_ms(&self, end_ms: u64) -> u64 {
        self.cleared_ms
            .unwrap_or(end_ms)
            .saturating_sub(self.raised_ms)
    }

    fn worsen(&mut self, value: f64) {
        self.worst = match self.condition {
            Direction::Low => self.worst.min(value),
            Direction::High => self.worst.max(value),
        };
    }
}

/// What a replay saw.
#[derive(Debug, Default, Serialize)]
pub struct Replayed {
    /// Every alarm, by raise order.
    pub spans: Vec<Span>,
    pub messages: u64,
    pub readings: u64,
    /// Messages the gateway would have refused (bad topic, payload or session).
    pub refused: u64,
    /// Per chair: first and last message time, ms.
    pub chairs: BTreeMap<String, (u64, u64)>,
    /// Time of the last message, ms.
    pub end_ms: u64,
    /// The recording is of simulated patients (its readings say `"simulated": true`).
    pub simulated: bool,
}

impl Replayed {
    /// Hours of recording summed over chairs.
    pub fn chair_hours(&self) -> f64 {
        self.chairs
            .values()
            .map(|(first, last)| last.saturating_sub(*first) as f64 / 3_600_000.0)
            .sum()
    }
}

/// One replay in progress.
pub struct Run {
    ward: Ward,
    topics: Topics,
    limits: DecodeLimits,
    session_max_bytes: usize,
    tick_ms: u64,
    next_tick: Option<u64>,
    /// Open spans by alarm id, and where they are in `out.spans`.
    open: HashMap<u64, usize>,
    out: Replayed,
}

impl Run {
    pub fn new(config: &Config) -> Result<Run, ReplayError> {
        let rules = config
            .rule_set()
            .map_err(|e| ReplayError::Config(e.to_string()))?;
        let topics = Topics::parse(
            &config.mqtt.topic,
            &config.mqtt.session_topic,
            &config.mqtt.status_topic,
        )
        .map_err(|(key, e)| ReplayError::Config(format!("{key}: {e}")))?;
        Ok(Run {
            ward: Ward::new(Arc::new(rules), usize::MAX),
            topics,
            limits: DecodeLimits {
                max_payload_bytes: config.ingest.max_payload_bytes,
                max_future_skew_ms: config.ingest.max_future_skew_ms,
            },
            session_max_bytes: config.session.max_message_bytes,
            tick_ms: config.alarms.tick_ms.max(1),
            next_tick: None,
            open: HashMap::new(),
            out: Replayed::default(),
        })
    }

    /// Apply one message at its delivery time, after the timer ticks due before it.
    pub fn feed(&mut self, record: &Record) {
        let now = record.delivered_at();
        self.tick_until(now);
        self.out.messages += 1;
        self.out.end_ms = self.out.end_ms.max(now);
        let payload = record.payload.as_bytes();
        let Ok((kind, chair)) = self.topics.classify(&record.topic) else {
            self.out.refused += 1;
            return;
        };
        let span = self.out.chairs.entry(chair.clone()).or_insert((now, now));
        span.1 = span.1.max(now);
        let events = match kind {
            TopicKind::Vitals => match decode(payload, now, &self.limits) {
                Ok(reading) => {
                    // Looked for in the first readings only: the flag is on every
                    // reading of a simulator, and a long capture need not be searched.
                    if self.out.readings < 16 && !self.out.simulated {
                        self.out.simulated = record.payload.contains("\"simulated\":true");
                    }
                    self.out.readings += 1;
                    let events = match self.ward.apply(&chair, &reading, now) {
                        Ok(Outcome::Accepted { events, .. }) => events,
                        Ok(Outcome::Duplicate) => Vec::new(),
                        Err(_) => {
                            self.out.refused += 1;
                            Vec::new()
                        }
                    };
                    self.worsen(&chair, &reading);
                    events
                }
                Err(_) => {
                    self.out.refused += 1;
                    Vec::new()
                }
            },
            TopicKind::Session if payload.is_empty() => Vec::new(),
            TopicKind::Session => {
                let update = SessionUpdate::decode(payload, self.session_max_bytes)
                    .ok()
                    .filter(|u| u.ts.is_some());
                match update.map(|u| self.ward.set_session(&chair, &u, now)) {
                    Some(Ok(events)) => events,
                    _ => {
                        self.out.refused += 1;
                        Vec::new()
                    }
                }
            }
            TopicKind::Status if payload.is_empty() => Vec::new(),
            TopicKind::Status => match parse_status(payload) {
                Some(online) => self
                    .ward
                    .set_device_online(&chair, online, now)
                    .unwrap_or_default(),
                None => {
                    self.out.refused += 1;
                    Vec::new()
                }
            },
        };
        self.record(events);
    }

    /// Run the ticks due up to `end_ms` and hand over what was seen.
    pub fn finish(mut self, end_ms: u64) -> Replayed {
        self.tick_until(end_ms);
        self.out.end_ms = self.out.end_ms.max(end_ms);
        self.out
    }

    /// The gateway's timer: technical alarms and discharge readiness, every
    /// `alarms.tick_ms` of recording time.
    fn tick_until(&mut self, now: u64) {
        let next = *self.next_tick.get_or_insert(now);
        let mut t = next;
        while t <= now {
            let events = self.ward.tick(t);
            self.record(events);
            t += self.tick_ms;
        }
        self.next_tick = Some(t);
    }

    fn record(&mut self, events: Vec<Event>) {
        for event in events {
            if let Event::Alarm(a) = event {
                self.alarm(a);
            }
        }
    }

    fn alarm(&mut self, a: AlarmEvent) {
        match a.state {
            AlarmState::Raised if !a.escalated => {
                self.open.insert(a.id, self.out.spans.len());
                self.out.spans.push(Span {
                    id: a.id,
                    chair: a.chair,
                    rule: a.rule,
                    priority: a.priority,
                    kind: a.kind,
                    vital: a.vital,
                    condition: a.condition,
                    raised_ms: a.ts,
                    cleared_ms: None,
                    worst: a.value,
                });
            }
            AlarmState::Cleared => {
                if let Some(i) = self.open.remove(&a.id) {
                    self.out.spans[i].cleared_ms = Some(a.ts.max(self.out.spans[i].raised_ms));
                }
            }
            _ => {}
        }
    }

    /// Follow the worst value of every open physiological alarm of `chair`.
    fn worsen(&mut self, chair: &str, reading: &crate::core::Reading) {
        if self.open.is_empty() {
            return;
        }
        for &i in self.open.values() {
            let span = &mut self.out.spans[i];
            if span.kind != AlarmKind::Physiological || &*span.chair != chair {
                continue;
            }
            if let Some(v) = span.vital.and_then(|v| reading.values[v.index()]) {
                span.worsen(v);
            }
        }
    }
}
