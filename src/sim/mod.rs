//! A ward simulator: scripted infusion sessions of bedside devices, generated
//! deterministically from a seed, as the MQTT messages the devices would send.
//!
//! Layers, each usable alone:
//! - the script ([`Scenario`], [`ChairScript`], [`SessionScript`], [`ScriptedEvent`]):
//!   plain data describing who sits in which chair, when each phase starts and what
//!   happens when. Events carry their own start and end, so a caller can annotate the
//!   "true events" of a recording ([`Scenario::events`]);
//! - the generator ([`Scenario::stream`], [`Scenario::messages`]): a pure function of
//!   the script and its seed, no I/O and no clock. Same seed, same messages, byte for
//!   byte (every random draw comes from per-chair `fastrand::Rng`s seeded from the
//!   scenario's seed and the chair's key, consumed in message order);
//! - [`demo_ward`]: the twelve chairs of site `demo` that `vitalgate demo` runs;
//! - [`publish`]: sends a scenario over MQTT as the devices would, in real time;
//! - [`demo`]: the `vitalgate demo` wiring (gateway + simulator).
//!
//! Invariants of the generated messages (unit-tested):
//! - per chair, `at_ms` never decreases and vitals `seq` strictly increases;
//! - every vitals payload is protocol v1 plus `"simulated": true`; NIBP readings
//!   (`sbp` and `dbp` together) are alone in their message;
//! - session and status messages are retained, session payloads use only the fields of
//!   docs/protocol.md (the gateway refuses unknown session fields) with `by:
//!   "simulator"` and `ts` = the phase's start;
//! - before [`Scenario::live_from_ms`] (a chair already part-way through its session
//!   when the simulator starts) only a thinned history is generated: session messages,
//!   cuff readings, and a reading every [`HISTORY_BASELINE_EVERY_MS`] of the baseline
//!   phase, which is enough for the gateway to take the patient's baseline median.

pub mod demo;
pub mod library;
mod physiology;
pub mod publish;
mod stream;
mod ward;

#[cfg(test)]
mod tests;

pub use crate::core::Route;
pub use physiology::ketamine_bp_fraction;
pub use stream::{ChairStream, ScenarioStream};
pub use ward::{demo_ward, DEMO_CHAIRS, DEMO_EVENT_PERIOD_MS, DEMO_HORIZON_MS, DEMO_SITE};

use crate::core::Phase;
use serde::{Deserialize, Serialize};

/// One MQTT message a device sends: what a recorded scenario stores, one per line,
/// in the recording format `vitalgate replay` reads. `at_ms` is the device time the
/// message is sent at (and its `ts`); `delivered_ms`, when the device buffered it
/// through a network outage ([`EventKind::NetworkOutage`]). Messages are in `at_ms`
/// order; per chair, delivery times never decrease.
pub use crate::replay::record::Record as Message;

/// In the history of a chair that started before the simulator, one baseline reading
/// (HR, SpO2, RR, EtCO2) per this interval.
pub const HISTORY_BASELINE_EVERY_MS: u64 = 15_000;

/// The identity of every session message the simulator sends.
pub const SIMULATOR: &str = "simulator";

/// A patient's resting values, taken as the baseline by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub hr: f64,
    pub spo2: f64,
    pub sbp: f64,
    pub dbp: f64,
    pub rr: f64,
    /// With capnography only; `None`: no EtCO2 is reported.
    pub etco2: Option<f64>,
}

/// One scripted event. `start_ms..end_ms` (device time) is when it happens; for
/// events seen through periodic measurements (a BP surge), the measurements that show
/// it are inside the window: a stat cuff reading at the start and a recheck at the end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScriptedEvent {
    #[serde(flatten)]
    pub kind: EventKind,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl ScriptedEvent {
    pub fn covers(&self, t: u64) -> bool {
        self.start_ms <= t && t < self.end_ms
    }
}

/// What happens. Values are the targets reached at the event's height; the
/// physiological ones ramp there and back (a few seconds each way).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// Blood pressure surge: cuff readings in the window read about this.
    BpSurge {
        sbp: f64,
        dbp: f64,
    },
    /// SpO2 falls to about `spo2`.
    Desaturation {
        spo2: f64,
    },
    /// RR and SpO2 fall together (EtCO2 rises where measured).
    RespiratoryDepression {
        rr: f64,
        spo2: f64,
    },
    Bradycardia {
        hr: f64,
    },
    Tachycardia {
        hr: f64,
    },
    /// The finger probe is off: no SpO2 and no HR in the window (RR, pump go on).
    ProbeOff,
    /// Retained `offline` status at the start, nothing from the chair, `online` at the
    /// end and data again.
    DeviceOffline,
    /// Artefact: one extra cuff reading at the start with these values.
    CuffArtefact {
        sbp: f64,
        dbp: f64,
    },
    /// Artefact: probe motion, SpO2 reads `spo2` for the (short) window.
    MotionArtefact {
        spo2: f64,
    },
    /// Blood pressure climbs steadily through the window: cuff readings go from the
    /// patient's usual curve at the start to about `sbp`/`dbp` at the end, then (the
    /// event over) follow the usual curve again. Only the routine cuff cycle sees it:
    /// too slow for a rate-of-rise rule, caught by the absolute and baseline limits.
    SlowHypertension {
        sbp: f64,
        dbp: f64,
    },
    /// The chair's network is down: the device goes on measuring and buffers, and
    /// everything it sends in the window reaches the gateway together at the end
    /// ([`Message::delivered_ms`]), with its own `at_ms`/`ts`. No status change.
    NetworkOutage,
}

impl EventKind {
    /// An artefact is not a change in the patient: a good alarm system stays quiet.
    pub fn is_artefact(&self) -> bool {
        matches!(
            self,
            EventKind::CuffArtefact { .. } | EventKind::MotionArtefact { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            EventKind::BpSurge { .. } => "bp_surge",
            EventKind::Desaturation { .. } => "desaturation",
            EventKind::RespiratoryDepression { .. } => "respiratory_depression",
            EventKind::Bradycardia { .. } => "bradycardia",
            EventKind::Tachycardia { .. } => "tachycardia",
            EventKind::ProbeOff => "probe_off",
            EventKind::DeviceOffline => "device_offline",
            EventKind::CuffArtefact { .. } => "cuff_artefact",
            EventKind::MotionArtefact { .. } => "motion_artefact",
            EventKind::SlowHypertension { .. } => "slow_hypertension",
            EventKind::NetworkOutage => "network_outage",
        }
    }
}

/// One patient's session in one chair: baseline, infusion (the drug given: by pump
/// for `iv`), recovery, discharged, then the chair is idle again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionScript {
    /// The clinic's patient id, e.g. `SIM-03`.
    pub patient: String,
    pub baseline: Baseline,
    /// Scales the typical ketamine rise (+16/+11 mmHg SBP/DBP, +6 /min HR at its peak
    /// around infusion minute 40); 1.0 is the mean response.
    pub response: f64,
    pub route: Route,
    pub session_number: u16,
    pub session_count: u16,
    /// Device time the `baseline` phase starts.
    pub start_ms: u64,
    pub baseline_ms: u64,
    pub infusion_ms: u64,
    pub recovery_ms: u64,
    /// How long the chair stays `discharged` before an `idle` message; `None`: it
    /// stays discharged.
    pub discharged_ms: Option<u64>,
    /// Pump rate during the infusion (`iv` only).
    pub pump_rate_ml_h: f64,
    pub events: Vec<ScriptedEvent>,
}

impl SessionScript {
    pub fn infusion_start(&self) -> u64 {
        self.start_ms + self.baseline_ms
    }

    pub fn recovery_start(&self) -> u64 {
        self.infusion_start() + self.infusion_ms
    }

    pub fn discharged_at(&self) -> u64 {
        self.recovery_start() + self.recovery_ms
    }

    /// When the chair becomes idle again, if it does.
    pub fn idle_at(&self) -> Option<u64> {
        self.discharged_ms.map(|d| self.discharged_at() + d)
    }

    /// The phase at device time `t`, `None` outside the session.
    pub fn phase_at(&self, t: u64) -> Option<Phase> {
        if t < self.start_ms || self.idle_at().is_some_and(|i| t >= i) {
            None
        } else if t < self.infusion_start() {
            Some(Phase::Baseline)
        } else if t < self.recovery_start() {
            Some(Phase::Infusion)
        } else if t < self.discharged_at() {
            Some(Phase::Recovery)
        } else {
            Some(Phase::Discharged)
        }
    }

    /// The phase changes of the session: (device time, phase), in order.
    pub fn phase_marks(&self) -> Vec<(u64, Phase)> {
        let mut marks = vec![
            (self.start_ms, Phase::Baseline),
            (self.infusion_start(), Phase::Infusion),
            (self.recovery_start(), Phase::Recovery),
            (self.discharged_at(), Phase::Discharged),
        ];
        if let Some(i) = self.idle_at() {
            marks.push((i, Phase::Idle));
        }
        marks
    }

    /// Whether a physiological event of `kind` is in progress at `t`.
    fn event_at(&self, t: u64, pred: impl Fn(&EventKind) -> bool) -> Option<&ScriptedEvent> {
        self.events.iter().find(|e| e.covers(t) && pred(&e.kind))
    }
}

/// One chair (one device's MQTT connection) and the sessions held in it, in order and
/// not overlapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChairScript {
    pub site: String,
    pub chair: String,
    /// Device time of the chair's first message (its `online` status, and an `idle`
    /// session message when no session starts then).
    pub origin_ms: u64,
    pub sessions: Vec<SessionScript>,
}

impl ChairScript {
    /// The gateway's chair key, `{site}/{chair}`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.site, self.chair)
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("clinic/{}/chair/{}/{kind}", self.site, self.chair)
    }

    /// The session at device time `t`, if any.
    pub fn session_at(&self, t: u64) -> Option<&SessionScript> {
        self.sessions.iter().find(|s| s.phase_at(t).is_some())
    }
}

/// A scripted event with where it happened, for annotating a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotatedEvent {
    /// `{site}/{chair}`.
    pub chair: String,
    pub patient: String,
    #[serde(flatten)]
    pub event: ScriptedEvent,
}

/// A set of chairs and the seed of their noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub seed: u64,
    /// Device time from which data is generated at full rate; before it, only the
    /// thinned history (see the module docs).
    pub live_from_ms: u64,
    pub chairs: Vec<ChairScript>,
}

impl Scenario {
    /// Every message of every chair, in `at_ms` order (ties: chair order).
    pub fn stream(&self) -> ScenarioStream<'_> {
        ScenarioStream::new(self)
    }

    /// One chair's messages, in order.
    pub fn chair_stream(&self, chair: usize) -> ChairStream<'_> {
        ChairStream::new(&self.chairs[chair], self.seed, self.live_from_ms)
    }

    /// The messages with `from_ms <= at_ms < to_ms`, sorted by `at_ms`. Pure: the same
    /// scenario gives the same messages, whatever was asked before.
    pub fn messages(&self, from_ms: u64, to_ms: u64) -> Vec<Message> {
        self.stream()
            .skip_while(|m| m.at_ms < from_ms)
            .take_while(|m| m.at_ms < to_ms)
            .collect()
    }

    /// Every scripted event (artefacts included: see [`EventKind::is_artefact`]),
    /// by start time.
    pub fn events(&self) -> Vec<AnnotatedEvent> {
        let mut out: Vec<AnnotatedEvent> = self
            .chairs
            .iter()
            .flat_map(|c| {
                c.sessions.iter().flat_map(move |s| {
                    s.events.iter().map(move |e| AnnotatedEvent {
                        chair: c.key(),
                        patient: s.patient.clone(),
                        event: *e,
                    })
                })
            })
            .collect();
        out.sort_by_key(|e| (e.event.start_ms, e.chair.clone()));
        out
    }
}
