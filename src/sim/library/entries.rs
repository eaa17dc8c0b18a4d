//! The entries of the scenario library: one chair, one patient, one session each.
//!
//! Each entry's expected priority is what a clinician would want the gateway to raise
//! for its event, judged from the event's clinical meaning and the shipped rules of
//! config/vitalgate.toml (docs/alarms.md); the reasoning is the comment on the entry.
//! `None`: an artefact, or nothing that needs action.
//!
//! Entries are only ever appended: an entry's index sets its seed, chair and device
//! time, so reordering would change every file after it.

use super::{Entry, Expected};
use crate::core::Priority;
use crate::sim::{
    Baseline, ChairScript, EventKind, Route, Scenario, ScriptedEvent, SessionScript, DEMO_SITE,
};

const MIN: u64 = 60_000;
const SEC: u64 = 1_000;
/// Device time of entry 0's first message (2026-05-28T20:26:40Z, in the past so that a
/// gateway's future-timestamp check never refuses a replay); entry `i` starts `i`
/// days later.
pub const EPOCH_MS: u64 = 1_780_000_000_000;
pub const DAY_MS: u64 = 24 * 60 * MIN;
/// Entry `i`'s seed is this plus `i`.
pub const SEED_BASE: u64 = 0x5ce0_0000;
const BASELINE_MIN: u64 = 10;
const DISCHARGED_MIN: u64 = 5;
const SESSION_COUNT: u16 = 6;
const PUMP_ML_H: f64 = 40.0;

/// Where an event starts: this long into a phase.
#[derive(Clone, Copy)]
enum At {
    Infusion(u64),
    Recovery(u64),
}

/// A scripted event and what the library expects of it. `label` names it when its
/// kind alone would mislead (a loose lead made of probe-off blips).
struct Event {
    kind: EventKind,
    at: At,
    len_ms: u64,
    label: Option<&'static str>,
    priority: Option<Priority>,
}

fn event(kind: EventKind, at: At, len_ms: u64, priority: Option<Priority>) -> Event {
    Event {
        kind,
        at,
        len_ms,
        label: None,
        priority,
    }
}

/// One entry before it is placed in time.
struct Plan {
    name: &'static str,
    description: &'static str,
    baseline: Baseline,
    response: f64,
    route: Route,
    session_number: u16,
    infusion_min: u64,
    recovery_min: u64,
    events: Vec<Event>,
}

/// Resting values (no capnography unless set).
fn patient(sbp: f64, dbp: f64, hr: f64, spo2: f64, rr: f64) -> Baseline {
    Baseline {
        hr,
        spo2,
        sbp,
        dbp,
        rr,
        etco2: None,
    }
}

/// A typical adult's IV session, 3 of 6, no event: entries change what differs.
fn plan(name: &'static str, description: &'static str) -> Plan {
    Plan {
        name,
        description,
        baseline: patient(118.0, 76.0, 72.0, 98.0, 14.0),
        response: 1.0,
        route: Route::Iv,
        session_number: 3,
        infusion_min: 40,
        recovery_min: 60,
        events: Vec::new(),
    }
}

/// Every entry, in file order.
pub(super) fn all() -> Vec<Entry> {
    plans()
        .into_iter()
        .enumerate()
        .map(|(i, p)| build(i, p))
        .collect()
}

/// Places plan `i` in time: chair `i + 1`, session from the chair's first message.
fn build(i: usize, p: Plan) -> Entry {
    let origin = EPOCH_MS + i as u64 * DAY_MS;
    let chair = ChairScript {
        site: DEMO_SITE.into(),
        chair: (i + 1).to_string(),
        origin_ms: origin,
        sessions: Vec::new(),
    };
    let mut s = SessionScript {
        patient: format!("SIM-L{:02}", i + 1),
        baseline: p.baseline,
        response: p.response,
        route: p.route,
        session_number: p.session_number,
        session_count: SESSION_COUNT,
        start_ms: origin,
        baseline_ms: BASELINE_MIN * MIN,
        infusion_ms: p.infusion_min * MIN,
        recovery_ms: p.recovery_min * MIN,
        discharged_ms: Some(DISCHARGED_MIN * MIN),
        pump_rate_ml_h: if p.route == Route::Iv { PUMP_ML_H } else { 0.0 },
        events: Vec::new(),
    };
    // Each scripted event and its expectation come from the same line of the plan.
    let mut expect = Vec::with_capacity(p.events.len());
    for e in p.events {
        let start_ms = match e.at {
            At::Infusion(ms) => s.infusion_start() + ms,
            At::Recovery(ms) => s.recovery_start() + ms,
        };
        let end_ms = start_ms + e.len_ms;
        s.events.push(ScriptedEvent {
            kind: e.kind,
            start_ms,
            end_ms,
        });
        expect.push(Expected {
            chair: chair.key(),
            kind: e.label.unwrap_or(e.kind.name()).to_string(),
            start_ms,
            end_ms,
            priority: e.priority,
        });
    }
    Entry {
        name: p.name,
        description: p.description,
        scenario: Scenario {
            seed: SEED_BASE + i as u64,
            live_from_ms: 0,
            chairs: vec![ChairScript {
                sessions: vec![s],
                ..chair
            }],
        },
        expect,
    }
}

/// The loose lead: dropouts (2-3 s with no HR nor SpO2) and spikes (HR to 180 for
/// 2 s), every 20 s for three minutes from infusion minute 22. Each is shorter than
/// every delay and stale allowance of the shipped rules (5 s at least).
fn loose_lead() -> Vec<Event> {
    (0..9u64)
        .map(|k| {
            let (kind, len_ms) = if k % 3 == 2 {
                (EventKind::Tachycardia { hr: 180.0 }, 2 * SEC)
            } else {
                (EventKind::ProbeOff, (2 + k % 2) * SEC)
            };
            Event {
                kind,
                at: At::Infusion(22 * MIN + k * 20 * SEC),
                len_ms,
                label: Some("loose_lead"),
                priority: None,
            }
        })
        .collect()
}

fn plans() -> Vec<Plan> {
    use Priority::{High, Medium};
    vec![
        // Normal sessions: no event. Typical, low-normal, high-responder, long and the
        // non-IV routes stay inside every shipped absolute limit (SBP 118 + 16 + noise
        // 4 <= 140). The resting-hypertension and older patients are over the absolute
        // BP limits by their own baseline: the shipped rules raise sbp_warn/dbp_warn
        // (medium) and the baseline "not fit to start" advisories (low) on their cuff
        // readings, which this library counts as not needing action.
        Plan {
            baseline: Baseline {
                etco2: Some(37.0),
                ..patient(118.0, 76.0, 72.0, 98.0, 14.0)
            },
            ..plan(
                "normal-typical-adult",
                "A typical adult (118/76 at rest, with capnography) whose blood pressure rises \
                 by the usual 16/11 mmHg, peaking about 40 minutes into the infusion. \
                 Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(102.0, 66.0, 58.0, 99.0, 12.0),
            ..plan(
                "normal-low-normal-bp",
                "A patient with a low-normal blood pressure (102/66) and a slow resting pulse \
                 (58), with the usual ketamine rise. Nothing needs action.",
            )
        },
        // Session 4: the early-session rule (SBP > 160, sessions 1-3) would make the
        // usual rise to about 166 a high alarm; this patient is past it.
        Plan {
            baseline: patient(150.0, 95.0, 78.0, 97.0, 15.0),
            session_number: 4,
            ..plan(
                "normal-resting-hypertension",
                "A patient with resting hypertension (about 150/95, above the 140/90 start \
                 advisory) and the usual rise to about 166/106. No event: these are the \
                 patient's usual values.",
            )
        },
        // SpO2 95 sits on the spo2_warn limit (< 95 for 15 s): noise dips to 94
        // for single seconds only.
        Plan {
            baseline: patient(136.0, 80.0, 64.0, 95.0, 16.0),
            session_number: 4,
            ..plan(
                "normal-older-patient",
                "An older patient with a higher resting blood pressure (136/80) and a lower \
                 oxygen saturation (95 %), with the usual rise to about 152/91. \
                 Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(112.0, 72.0, 70.0, 98.0, 14.0),
            response: 1.5,
            ..plan(
                "normal-high-responder",
                "A patient whose blood pressure responds 1.5 times as much as usual (112/72 \
                 rising to about 136/88 at infusion minute 40). Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(120.0, 78.0, 68.0, 98.0, 14.0),
            response: 0.8,
            infusion_min: 60,
            recovery_min: 90,
            ..plan(
                "normal-long-session",
                "A long session: a 60-minute infusion and 90 minutes of recovery, with a \
                 modest blood pressure rise. Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(116.0, 74.0, 76.0, 98.0, 14.0),
            route: Route::Im,
            ..plan(
                "normal-im",
                "An intramuscular dose (no pump) with the usual blood pressure rise. \
                 Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(114.0, 72.0, 68.0, 98.0, 14.0),
            route: Route::Sublingual,
            ..plan(
                "normal-sublingual",
                "A sublingual dose (no pump) with the usual blood pressure rise. \
                 Nothing needs action.",
            )
        },
        Plan {
            baseline: patient(110.0, 70.0, 80.0, 98.0, 14.0),
            route: Route::Intranasal,
            ..plan(
                "normal-intranasal",
                "An intranasal dose (no pump) with the usual blood pressure rise. \
                 Nothing needs action.",
            )
        },
        // 188/106 in a first session: over sbp_critical (> 180, high) and the
        // early-session limit (> 160, high): severe hypertension, immediate response.
        Plan {
            baseline: patient(122.0, 78.0, 74.0, 98.0, 14.0),
            session_number: 1,
            infusion_min: 50,
            events: vec![event(
                EventKind::BpSurge {
                    sbp: 188.0,
                    dbp: 106.0,
                },
                At::Infusion(30 * MIN),
                10 * MIN,
                Some(High),
            )],
            ..plan(
                "bp-surge-first-session",
                "First session of a course: blood pressure surges to about 188/106 from infusion \
                 minute 30 to 40, then settles. Needs an immediate response.",
            )
        },
        // 172/100 late in a course: sbp_warn, sbp_over_baseline (> 153, latched) and
        // sbp_rising (+40 in 10 min), all medium; under 180 and past session 3, so no
        // high rule applies. A prompt review, not an emergency.
        Plan {
            session_number: 5,
            infusion_min: 50,
            events: vec![event(
                EventKind::BpSurge {
                    sbp: 172.0,
                    dbp: 100.0,
                },
                At::Infusion(36 * MIN),
                6 * MIN,
                Some(Medium),
            )],
            ..plan(
                "bp-surge-late-course",
                "Fifth session of a course: blood pressure surges to about 172/100 at infusion \
                 minute 36 for six minutes. Needs a prompt review.",
            )
        },
        // About +5 mmHg per 10 min, too slow for sbp_rising; sbp_warn, dbp_warn and
        // sbp_over_baseline (> 161) catch it, all medium; it stays under 180.
        Plan {
            baseline: patient(124.0, 80.0, 70.0, 98.0, 14.0),
            session_number: 5,
            infusion_min: 45,
            recovery_min: 75,
            events: vec![event(
                EventKind::SlowHypertension {
                    sbp: 174.0,
                    dbp: 104.0,
                },
                At::Infusion(30 * MIN),
                60 * MIN,
                Some(Medium),
            )],
            ..plan(
                "slow-hypertension-late",
                "Blood pressure keeps climbing slowly from infusion minute 30 into recovery, \
                 reaching about 174/104 an hour later instead of settling. Needs a prompt review.",
            )
        },
        // SpO2 82 for over a minute: spo2_critical (<= 85, high).
        Plan {
            baseline: patient(118.0, 76.0, 72.0, 97.0, 14.0),
            events: vec![event(
                EventKind::Desaturation { spo2: 82.0 },
                At::Infusion(25 * MIN),
                90 * SEC,
                Some(High),
            )],
            ..plan(
                "desaturation",
                "Oxygen saturation falls to about 82 % for a minute and a half at infusion \
                 minute 25. Needs an immediate response.",
            )
        },
        // RR 6 with SpO2 88: respiratory_depression (RR < 10 with SpO2 < 95, high).
        Plan {
            baseline: Baseline {
                etco2: Some(38.0),
                ..patient(118.0, 76.0, 72.0, 97.0, 14.0)
            },
            events: vec![event(
                EventKind::RespiratoryDepression {
                    rr: 6.0,
                    spo2: 88.0,
                },
                At::Infusion(20 * MIN),
                3 * MIN,
                Some(High),
            )],
            ..plan(
                "respiratory-depression",
                "Breathing slows to about 6 a minute and oxygen saturation falls to about 88 % \
                 together for three minutes (EtCO2 rises). Needs an immediate response.",
            )
        },
        // HR 38: hr_warn (< 40, medium); hr_critical's low limit is 20, so no high
        // rule fires at 38.
        Plan {
            baseline: patient(116.0, 74.0, 58.0, 98.0, 14.0),
            events: vec![event(
                EventKind::Bradycardia { hr: 38.0 },
                At::Infusion(15 * MIN),
                2 * MIN,
                Some(Medium),
            )],
            ..plan(
                "bradycardia",
                "The heart rate falls to about 38 a minute for two minutes at infusion minute 15. \
                 Needs a prompt response.",
            )
        },
        // HR 156: hr_critical (> 150, the low-dose ketamine contraindication, high).
        Plan {
            baseline: patient(118.0, 76.0, 76.0, 98.0, 14.0),
            events: vec![event(
                EventKind::Tachycardia { hr: 156.0 },
                At::Infusion(32 * MIN),
                2 * MIN,
                Some(High),
            )],
            ..plan(
                "tachycardia",
                "The heart rate rises to about 156 a minute for two minutes at infusion minute 32. \
                 Needs an immediate response.",
            )
        },
        // 3 s dips: shorter than spo2_critical's 5 s delay. An artefact.
        Plan {
            events: vec![
                event(
                    EventKind::MotionArtefact { spo2: 84.0 },
                    At::Infusion(12 * MIN),
                    3 * SEC,
                    None,
                ),
                event(
                    EventKind::MotionArtefact { spo2: 79.0 },
                    At::Recovery(25 * MIN),
                    3 * SEC,
                    None,
                ),
            ],
            ..plan(
                "artefact-spo2-motion",
                "The finger probe moves twice, each time reading a false oxygen saturation \
                 (84 %, then 79 %) for three seconds. Artefacts: no action needed.",
            )
        },
        // One false cuff reading. The window runs to the latest time a routine reading
        // replaces it (one cuff cycle, 5 min). The shipped BP rules have no delay, so
        // the gateway raises sbp_critical (high) on it: a known false alarm.
        Plan {
            session_number: 4,
            events: vec![event(
                EventKind::CuffArtefact {
                    sbp: 196.0,
                    dbp: 112.0,
                },
                At::Infusion(18 * MIN),
                5 * MIN,
                None,
            )],
            ..plan(
                "artefact-cuff-misreading",
                "One cuff reading of 196/112 while the arm moves, between normal readings. \
                 An artefact: a repeat measurement shows the true value.",
            )
        },
        Plan {
            events: loose_lead(),
            ..plan(
                "artefact-loose-lead",
                "A loose lead for three minutes from infusion minute 22: the heart rate and oxygen \
                 saturation drop out for a few seconds or spike, again and again. \
                 Artefacts: no action on the patient.",
            )
        },
        // Four minutes without SpO2/HR in recovery (the pump has stopped):
        // spo2_stale and hr_stale (technical, stale_priority = medium).
        Plan {
            events: vec![event(
                EventKind::ProbeOff,
                At::Recovery(20 * MIN),
                4 * MIN,
                Some(Medium),
            )],
            ..plan(
                "probe-off-recovery",
                "The finger probe is off for four minutes in recovery: no oxygen saturation or \
                 heart rate. Needs a prompt response to put it back.",
            )
        },
        // Offline status and silence in the infusion: device_offline (offline_priority
        // = high).
        Plan {
            events: vec![event(
                EventKind::DeviceOffline,
                At::Infusion(28 * MIN),
                2 * MIN,
                Some(High),
            )],
            ..plan(
                "device-offline",
                "The bedside monitor goes offline for two minutes during the infusion: nothing \
                 is seen of the patient. Needs an immediate response.",
            )
        },
        // The pump runs with no SpO2: pump_without_spo2 after 15 s
        // (pump_without_spo2_priority = high), the stale alarms (medium) too.
        Plan {
            events: vec![event(
                EventKind::ProbeOff,
                At::Infusion(15 * MIN),
                2 * MIN,
                Some(High),
            )],
            ..plan(
                "pump-without-spo2",
                "The finger probe is off for two minutes while the pump is infusing: the \
                 infusion runs unmonitored. Needs an immediate response.",
            )
        },
        // Nothing reaches the gateway for 3 minutes, so device_offline (by silence,
        // over offline_ms = 30 s; high); the readings then arrive at once with their
        // own times (normal values).
        Plan {
            events: vec![event(
                EventKind::NetworkOutage,
                At::Infusion(24 * MIN),
                3 * MIN,
                Some(High),
            )],
            ..plan(
                "late-burst-network-outage",
                "The network drops for three minutes at infusion minute 24: the monitor keeps \
                 measuring and sends everything when it returns. Nothing is seen meanwhile: \
                 needs an immediate check.",
            )
        },
    ]
}
