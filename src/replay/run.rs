//! Recorded messages through the gateway's own alarm engine ([`Ward`]), on the
//! recording's time: the same decoding, the same ward, the same timer tick as the
//! gateway (`alarms.tick_ms`), without a broker, a clock or an audit trail.

use super::record::Record;
use super::ReplayError;
use crate::config::Config;
use crate::core::{
    decode, AlarmEvent, AlarmKind, AlarmState, DecodeLimits, Direction, Event, Outcome, Priority,
    Reading, SessionUpdate, Vital, Ward,
};
use crate::ingest::pipeline::{decode_session, parse_status};
use crate::ingest::{TopicKind, Topics};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One alarm from raise to clear (or to the end of the recording). An alarm stands
/// for one vital and direction (or one probe) and its priority follows the rules
/// met: a span is counted under the highest priority it reached and the rule that
/// set it.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub id: u64,
    pub chair: Arc<str>,
    /// The rule that set the highest priority it reached.
    pub rule: Arc<str>,
    /// The highest priority it reached.
    pub priority: Priority,
    /// Every rule it held at some time, in the order they joined.
    pub rules: Vec<Arc<str>>,
    /// Device time it first reached each priority (high, medium, low).
    pub reached: [Option<u64>; 3],
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
    fn reach(&mut self, a: &AlarmEvent) {
        let i = Priority::ALL
            .iter()
            .position(|p| *p == a.priority)
            .unwrap_or(0);
        self.reached[i].get_or_insert(a.ts);
        if a.priority > self.priority {
            self.priority = a.priority;
            self.rule = a.rule.clone();
        }
        for r in a.rules.iter().map(|r| &r.rule).chain([&a.rule]) {
            if !self.rules.contains(r) {
                self.rules.push(r.clone());
            }
        }
    }

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

/// One recorded message, decoded as the gateway's ingest decodes it.
#[derive(Clone)]
pub struct Decoded {
    /// The gateway's clock when it arrived.
    now: u64,
    /// `None`: the topic is not one the gateway subscribes to.
    chair: Option<Arc<str>>,
    what: What,
}

#[derive(Clone)]
enum What {
    Reading {
        reading: Reading,
        simulated: bool,
    },
    Session(SessionUpdate),
    Status(bool),
    /// An empty retained message: a topic being cleared.
    Cleared,
    /// What the gateway would refuse.
    Refused,
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
    /// Each chair's key, once: decoded messages share it.
    keys: HashMap<String, Arc<str>>,
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
            ward: Ward::single_threaded(Arc::new(rules)),
            topics,
            limits: DecodeLimits {
                max_payload_bytes: config.ingest.max_payload_bytes,
                max_future_skew_ms: config.ingest.max_future_skew_ms,
            },
            session_max_bytes: config.session.max_message_bytes,
            tick_ms: config.alarms.tick_ms.max(1),
            next_tick: None,
            open: HashMap::new(),
            keys: HashMap::new(),
            out: Replayed::default(),
        })
    }

    /// Apply one message at its delivery time, after the timer ticks due before it.
    pub fn feed(&mut self, record: &Record) {
        let message = self.decode(record);
        self.apply(message);
    }

    /// A record as the gateway's ingest reads it: topic, then payload. No state
    /// changes: the engine's share of a replay is [`Run::apply`].
    pub fn decode(&mut self, record: &Record) -> Decoded {
        let now = record.delivered_at();
        let payload = record.payload.as_bytes();
        let Ok((kind, chair)) = self.topics.classify(&record.topic) else {
            return Decoded {
                now,
                chair: None,
                what: What::Refused,
            };
        };
        let what = match kind {
            TopicKind::Vitals => match decode(payload, now, &self.limits) {
                Ok(reading) => What::Reading {
                    reading,
                    // The flag is on every reading of a simulator: looking in the
                    // first readings of a recording is enough.
                    simulated: self.out.readings < 16
                        && record.payload.contains("\"simulated\":true"),
                },
                Err(_) => What::Refused,
            },
            TopicKind::Session | TopicKind::Status if payload.is_empty() => What::Cleared,
            TopicKind::Session => match decode_session(
                payload,
                self.session_max_bytes,
                now,
                self.limits.max_future_skew_ms,
            ) {
                Ok(update) => What::Session(update),
                Err(_) => What::Refused,
            },
            TopicKind::Status => match parse_status(payload) {
                Some(online) => What::Status(online),
                None => What::Refused,
            },
        };
        let chair = match self.keys.get(&chair) {
            Some(key) => key.clone(),
            None => {
                let key: Arc<str> = Arc::from(chair.as_str());
                self.keys.insert(chair, key.clone());
                key
            }
        };
        Decoded {
            now,
            chair: Some(chair),
            what,
        }
    }

    /// Apply one decoded message, after the timer ticks due before it.
    pub fn apply(&mut self, message: Decoded) {
        let now = message.now;
        self.tick_until(now);
        self.out.messages += 1;
        self.out.end_ms = self.out.end_ms.max(now);
        let Some(chair) = message.chair else {
            self.out.refused += 1;
            return;
        };
        match self.out.chairs.get_mut(&*chair) {
            Some(span) => span.1 = span.1.max(now),
            None => {
                self.out.chairs.insert(chair.to_string(), (now, now));
            }
        }
        let events = match message.what {
            What::Reading { reading, simulated } => {
                self.out.readings += 1;
                self.out.simulated |= simulated;
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
            What::Session(update) => match self.ward.set_session(&chair, &update, now) {
                Ok(events) => events,
                Err(_) => {
                    self.out.refused += 1;
                    Vec::new()
                }
            },
            What::Status(online) => self
                .ward
                .set_device_online(&chair, online, now)
                .unwrap_or_default(),
            What::Cleared => Vec::new(),
            What::Refused => {
                self.out.refused += 1;
                Vec::new()
            }
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
            _ if a.updated => {
                if let Some(&i) = self.open.get(&a.id) {
                    self.out.spans[i].reach(&a);
                }
            }
            AlarmState::Raised if !a.escalated => {
                self.open.insert(a.id, self.out.spans.len());
                let mut span = Span {
                    id: a.id,
                    chair: a.chair.clone(),
                    rule: a.rule.clone(),
                    priority: a.priority,
                    rules: Vec::new(),
                    reached: [None; 3],
                    kind: a.kind,
                    vital: a.vital,
                    condition: a.condition,
                    raised_ms: a.ts,
                    cleared_ms: None,
                    worst: a.value,
                };
                span.reach(&a);
                self.out.spans.push(span);
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
    fn worsen(&mut self, chair: &str, reading: &Reading) {
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
