//! The generator: a chair's script → its messages, in order, as an iterator.
//!
//! Two kinds of message times:
//! - marks, computed when the stream is made: session messages at each phase start,
//!   status messages, and NIBP cuff readings (one at each phase start + 5 s, then
//!   every 3-5 minutes, plus the stat and recheck readings of events). Their schedule
//!   has its own seeded generator, so it does not depend on how many values were drawn;
//! - the monitor grid, one instant per second (at a per-chair offset within the
//!   second, so chairs do not publish in lockstep): HR and SpO2 every second, RR (and
//!   EtCO2) every 4 s, the pump's report with each message of an `iv` session in
//!   infusion and recovery.
//!
//! Values are drawn from the chair's generator in message order, which is fixed, so
//! the stream is a pure function of script and seed.

use super::physiology::Physiology;
use super::{
    ChairScript, EventKind, Message, Route, Scenario, SessionScript, HISTORY_BASELINE_EVERY_MS,
    SIMULATOR,
};
use crate::core::Phase;
use fastrand::Rng;
use serde::Serialize;
use std::collections::VecDeque;

/// Cuff cycle: a reading every 3 to 5 minutes.
pub(super) const CUFF_MIN_MS: u64 = 180_000;
pub(super) const CUFF_MAX_MS: u64 = 300_000;
/// The first cuff reading of a phase comes this long after its start.
pub(super) const CUFF_AT_PHASE_START_MS: u64 = 5_000;
/// RR (and EtCO2) every this many monitor seconds.
const RR_EVERY: u64 = 4;

#[derive(Debug, Clone)]
enum MarkKind {
    /// Session `i` enters `phase`.
    Session(usize, Phase),
    /// The chair is idle (no session yet, or after one).
    Idle,
    Status(&'static str),
    /// A cuff reading during session `i`; an artefact's exact values.
    Cuff(usize, Option<(f64, f64)>),
}

#[derive(Debug, Clone)]
struct Mark {
    at: u64,
    kind: MarkKind,
}

#[derive(Serialize)]
struct PumpPayload {
    running: bool,
    rate_ml_h: f64,
    infused_ml: f64,
}

/// Protocol v1 payload, plus `simulated`.
#[derive(Serialize, Default)]
struct VitalsPayload {
    seq: u64,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    hr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spo2: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbp: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dbp: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etco2: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pump: Option<PumpPayload>,
    simulated: bool,
}

impl VitalsPayload {
    fn is_empty(&self) -> bool {
        self.hr.is_none() && self.spo2.is_none() && self.rr.is_none() && self.pump.is_none()
    }
}

/// Session message: only protocol fields (the gateway refuses unknown ones).
#[derive(Serialize)]
struct SessionPayload<'a> {
    phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_number: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<Route>,
    ts: u64,
    by: &'a str,
}

/// FNV-1a, to derive each chair's seed from its key (stable across Rust versions,
/// unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One chair's messages, in `at_ms` order.
pub struct ChairStream<'a> {
    chair: &'a ChairScript,
    live_from: u64,
    rng: Rng,
    seq: u64,
    marks: Vec<Mark>,
    next_mark: usize,
    /// Offset of the monitor grid within each second.
    offset: u64,
    /// Next monitor instant to consider, and the session it is looked up from.
    tick: u64,
    session: usize,
    topic_vitals: String,
    topic_session: String,
    topic_status: String,
    out: VecDeque<Message>,
}

impl<'a> ChairStream<'a> {
    pub fn new(chair: &'a ChairScript, seed: u64, live_from: u64) -> Self {
        let h = fnv1a(&chair.key());
        let mut schedule = Rng::with_seed(seed ^ h.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
        let marks = plan(chair, &mut schedule);
        let offset = h % 1000;
        ChairStream {
            chair,
            live_from,
            rng: Rng::with_seed(seed ^ h),
            seq: 0,
            marks,
            next_mark: 0,
            offset,
            tick: chair.origin_ms + offset,
            session: 0,
            topic_vitals: chair.topic("vitals"),
            topic_session: chair.topic("session"),
            topic_status: chair.topic("status"),
            out: VecDeque::new(),
        }
    }

    /// The first monitor grid instant at or after `t`.
    fn align(&self, t: u64) -> u64 {
        let base = self.chair.origin_ms + self.offset;
        if t <= base {
            return base;
        }
        base + (t - base).div_ceil(1000) * 1000
    }

    /// The next monitor instant with something to measure, skipping empty chairs,
    /// discharged phases and (in the history) everything but the thinned baseline.
    fn next_monitor(&mut self) -> Option<u64> {
        let sessions = &self.chair.sessions;
        loop {
            let s = sessions.get(self.session)?;
            let t = self.tick;
            if t < s.start_ms {
                self.tick = self.align(s.start_ms);
                continue;
            }
            if t >= s.discharged_at() {
                self.session += 1;
                continue;
            }
            if t < self.live_from {
                let next_start = sessions
                    .get(self.session + 1)
                    .map_or(u64::MAX, |n| n.start_ms);
                if t >= s.infusion_start() {
                    self.tick = self.align(self.live_from.min(next_start));
                    continue;
                }
                let k = (t - self.chair.origin_ms - self.offset) / 1000;
                let every = HISTORY_BASELINE_EVERY_MS / 1000;
                if !k.is_multiple_of(every) {
                    self.tick = t + (every - k % every) * 1000;
                    continue;
                }
            }
            return Some(t);
        }
    }

    fn vitals(&mut self, at: u64, mut p: VitalsPayload) {
        self.seq += 1;
        p.seq = self.seq;
        p.ts = at;
        p.simulated = true;
        self.out.push_back(Message {
            at_ms: at,
            topic: self.topic_vitals.clone(),
            payload: serde_json::to_string(&p).expect("payload serialises"),
            retain: false,
            delivered_ms: self.delivered(at),
        });
    }

    /// A message sent during a scripted network outage reaches the gateway at the
    /// outage's end (every message of the chair: one connection carries them all).
    fn delivered(&self, at: u64) -> Option<u64> {
        let s = self.chair.session_at(at)?;
        s.event_at(at, |k| *k == EventKind::NetworkOutage)
            .map(|e| e.end_ms)
    }

    fn monitor(&mut self, t: u64) {
        let s = &self.chair.sessions[self.session];
        let Some(phase) = s.phase_at(t) else { return };
        if offline(s, t) || !matches!(phase, Phase::Baseline | Phase::Infusion | Phase::Recovery) {
            return;
        }
        let body = Physiology { s };
        let history = t < self.live_from;
        let probe_off = !history && s.event_at(t, |k| *k == EventKind::ProbeOff).is_some();
        let k = (t - self.chair.origin_ms - self.offset) / 1000;
        let rng = &mut self.rng;
        let mut p = VitalsPayload::default();
        if !probe_off {
            p.hr = Some(body.hr(t, rng) as u32);
            p.spo2 = Some(body.spo2(t, rng) as u32);
        }
        if history || k.is_multiple_of(RR_EVERY) {
            p.rr = Some(body.rr(t, rng) as u32);
            p.etco2 = body.etco2(t, rng).map(|v| v as u32);
        }
        if !history && s.route == Route::Iv && phase != Phase::Baseline {
            let (running, rate_ml_h, infused_ml) = body.pump(t);
            p.pump = Some(PumpPayload {
                running,
                rate_ml_h,
                infused_ml,
            });
        }
        if !p.is_empty() {
            self.vitals(t, p);
        }
    }

    fn retained(&mut self, at: u64, topic: String, payload: String) {
        let delivered_ms = self.delivered(at);
        self.out.push_back(Message {
            at_ms: at,
            topic,
            payload,
            retain: true,
            delivered_ms,
        });
    }

    fn mark(&mut self, m: Mark) {
        match m.kind {
            MarkKind::Session(i, phase) => {
                let s = &self.chair.sessions[i];
                let p = SessionPayload {
                    phase,
                    patient: Some(&s.patient),
                    session_number: Some(s.session_number),
                    session_count: Some(s.session_count),
                    route: Some(s.route),
                    ts: m.at,
                    by: SIMULATOR,
                };
                let payload = serde_json::to_string(&p).expect("payload serialises");
                self.retained(m.at, self.topic_session.clone(), payload);
            }
            MarkKind::Idle => {
                let p = SessionPayload {
                    phase: Phase::Idle,
                    patient: None,
                    session_number: None,
                    session_count: None,
                    route: None,
                    ts: m.at,
                    by: SIMULATOR,
                };
                let payload = serde_json::to_string(&p).expect("payload serialises");
                self.retained(m.at, self.topic_session.clone(), payload);
            }
            MarkKind::Status(status) => {
                self.retained(m.at, self.topic_status.clone(), status.to_string())
            }
            MarkKind::Cuff(i, artefact) => {
                let s = &self.chair.sessions[i];
                let measuring = matches!(
                    s.phase_at(m.at),
                    Some(Phase::Baseline | Phase::Infusion | Phase::Recovery)
                );
                if !measuring || offline(s, m.at) {
                    return;
                }
                let (sbp, dbp) = Physiology { s }.cuff(m.at, artefact, &mut self.rng);
                let p = VitalsPayload {
                    sbp: Some(sbp as u32),
                    dbp: Some(dbp as u32),
                    ..Default::default()
                };
                self.vitals(m.at, p);
            }
        }
    }
}

/// The device is offline at `t` (a scripted `DeviceOffline`).
fn offline(s: &SessionScript, t: u64) -> bool {
    s.event_at(t, |k| *k == EventKind::DeviceOffline).is_some()
}

/// Every mark of the chair, sorted by time (ties keep this order: status, session,
/// cuff).
fn plan(chair: &ChairScript, schedule: &mut Rng) -> Vec<Mark> {
    let mut marks = vec![Mark {
        at: chair.origin_ms,
        kind: MarkKind::Status("online"),
    }];
    if chair
        .sessions
        .first()
        .is_none_or(|s| s.start_ms > chair.origin_ms)
    {
        marks.push(Mark {
            at: chair.origin_ms,
            kind: MarkKind::Idle,
        });
    }
    for (i, s) in chair.sessions.iter().enumerate() {
        for (at, phase) in s.phase_marks() {
            let kind = match phase {
                Phase::Idle => MarkKind::Idle,
                p => MarkKind::Session(i, p),
            };
            marks.push(Mark { at, kind });
        }
        for (start, end) in [
            (s.start_ms, s.infusion_start()),
            (s.infusion_start(), s.recovery_start()),
            (s.recovery_start(), s.discharged_at()),
        ] {
            let mut t = start + CUFF_AT_PHASE_START_MS;
            while t < end {
                marks.push(Mark {
                    at: t,
                    kind: MarkKind::Cuff(i, None),
                });
                t += schedule.u64(CUFF_MIN_MS..=CUFF_MAX_MS);
            }
        }
        for e in &s.events {
            match e.kind {
                EventKind::BpSurge { .. } => {
                    for at in [e.start_ms, e.end_ms] {
                        marks.push(Mark {
                            at,
                            kind: MarkKind::Cuff(i, None),
                        });
                    }
                }
                EventKind::CuffArtefact { sbp, dbp } => marks.push(Mark {
                    at: e.start_ms,
                    kind: MarkKind::Cuff(i, Some((sbp, dbp))),
                }),
                EventKind::DeviceOffline => {
                    marks.push(Mark {
                        at: e.start_ms,
                        kind: MarkKind::Status("offline"),
                    });
                    marks.push(Mark {
                        at: e.end_ms,
                        kind: MarkKind::Status("online"),
                    });
                }
                _ => {}
            }
        }
    }
    marks.sort_by_key(|m| m.at);
    marks
}

impl Iterator for ChairStream<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.out.pop_front() {
                return Some(m);
            }
            let mark_at = self.marks.get(self.next_mark).map(|m| m.at);
            match (self.next_monitor(), mark_at) {
                (None, None) => return None,
                (monitor, Some(at)) if monitor.is_none_or(|t| at <= t) => {
                    let m = self.marks[self.next_mark].clone();
                    self.next_mark += 1;
                    self.mark(m);
                }
                (Some(t), _) => {
                    self.monitor(t);
                    self.tick = t + 1000;
                }
                (None, Some(_)) => unreachable!("handled above"),
            }
        }
    }
}

/// Every chair's stream merged by `at_ms` (ties: chair order).
pub struct ScenarioStream<'a> {
    chairs: Vec<ChairStream<'a>>,
    heads: Vec<Option<Message>>,
}

impl<'a> ScenarioStream<'a> {
    pub(super) fn new(scenario: &'a Scenario) -> Self {
        let mut chairs: Vec<ChairStream<'a>> = (0..scenario.chairs.len())
            .map(|i| scenario.chair_stream(i))
            .collect();
        let heads = chairs.iter_mut().map(Iterator::next).collect();
        ScenarioStream { chairs, heads }
    }
}

impl Iterator for ScenarioStream<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let i = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|m| (m.at_ms, i)))
            .min()?
            .1;
        let next = self.chairs[i].next();
        std::mem::replace(&mut self.heads[i], next)
    }
}
