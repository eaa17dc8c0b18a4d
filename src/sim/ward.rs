//! The demo ward: twelve chairs of site `demo` (dashboards treat that site as
//! simulated), at different points of their sessions from the first second, and
//! alarms in the first minute.
//!
//! At `start_ms` (chair: state):
//! 1: baseline just started (a 3 s probe-motion SpO2 dip at 20 s: an artefact the
//!    alarm delays absorb); 2: infusion minute 5; 3: infusion minute 35, **BP surge**;
//! 4: infusion minute 20, **desaturation**; 5: infusion minute 12, **probe off**;
//! 6: infusion minute 45, **device offline**; 7: recovery minute 10; 8: recovery
//! minute 40 of 60, vitals back near baseline (discharge-ready once the gateway has
//! seen them in band for `session.discharge_stable_ms`, 15 minutes by default, before
//! its discharge at 20 minutes); 9: IM session (no pump),
//! infusion minute 15; 10 and 11: empty (idle); 12: discharged 3 minutes ago.
//!
//! The four events of the first minute, with the default rules of
//! config/vitalgate.toml (see [`first_minute_events`] for the exact times):
//! - chair 3, stat cuff reading 188/106 at 8 s (`sbp_critical`, high; also
//!   `sbp_warn`, `dbp_warn`, `sbp_rising`, and `sbp_over_baseline`, which latches
//!   until acknowledged), recheck at 45 s back to normal;
//! - chair 4, SpO2 ramps to 82 from 5 s to 32 s (`spo2_critical` after its 5 s delay,
//!   `spo2_warn` after 15 s), back to baseline;
//! - chair 5, no SpO2 nor HR from 10 s to 35 s (`spo2_stale`, `hr_stale` after 15 s,
//!   `pump_without_spo2`: the pump runs), then the probe is back;
//! - chair 6, retained `offline` at 15 s and silence (`device_offline` at once),
//!   `online` and data again at 27 s (under the 15 s stale allowance, so only
//!   `device_offline` is raised).
//!
//! Normal chairs raise nothing: baselines are drawn from ranges chosen so that the
//! typical ketamine rise plus noise stays under the default absolute limits (SBP at
//! most 118 + 16 + 4 < 140, DBP at most 78 + 11 + 3 < 100, SpO2 at least 96).
//!
//! Afterwards the ward goes on in real time: each chair's session ends, the chair is
//! idle 10 minutes, and a new patient starts (baseline 10 min, infusion 40-60 min,
//! recovery 30-60 min, discharged 5 min). The four events repeat every
//! [`DEMO_EVENT_PERIOD_MS`] (5 minutes) at the same offsets within the period, each
//! on a chair that is in infusion or recovery for that whole minute (chosen in
//! rotation), so someone who opens the station later sees alarms too. The script
//! covers [`DEMO_HORIZON_MS`] (7 days); after that the chairs fall silent.

use super::{Baseline, ChairScript, EventKind, Route, Scenario, ScriptedEvent, SessionScript};
use crate::core::Phase;
use fastrand::Rng;

/// The demo's site: dashboards treat it as simulated.
pub const DEMO_SITE: &str = crate::core::chair_key::SIMULATED_SITE;
pub const DEMO_CHAIRS: usize = 12;
/// The first minute's events repeat this often.
pub const DEMO_EVENT_PERIOD_MS: u64 = 5 * 60_000;
/// How long the demo ward is scripted for.
pub const DEMO_HORIZON_MS: u64 = 7 * 24 * 3_600_000;

const MIN: u64 = 60_000;
const SEC: u64 = 1_000;
/// Idle time between one patient's discharge and the next patient's baseline.
const TURNOVER_MS: u64 = 10 * MIN;

/// What a chair is doing at the demo's start.
#[derive(Clone, Copy)]
enum At {
    /// Minutes into the phase.
    Baseline(u64),
    Infusion(u64),
    Recovery(u64),
    Discharged(u64),
    Idle,
}

/// The chairs: (state at start, route, session k of n, recovery length in minutes).
const CHAIRS: [(At, Route, u16, u16, u64); DEMO_CHAIRS] = [
    (At::Baseline(0), Route::Iv, 2, 6, 45),
    (At::Infusion(5), Route::Iv, 1, 6, 45),
    (At::Infusion(35), Route::Iv, 4, 6, 45),
    (At::Infusion(20), Route::Iv, 3, 6, 45),
    (At::Infusion(12), Route::Iv, 2, 4, 45),
    (At::Infusion(45), Route::Iv, 5, 6, 45),
    (At::Recovery(10), Route::Iv, 6, 6, 45),
    (At::Recovery(40), Route::Iv, 3, 6, 60),
    (At::Infusion(15), Route::Im, 2, 8, 45),
    (At::Idle, Route::Iv, 1, 6, 45),
    (At::Idle, Route::Iv, 1, 6, 45),
    (At::Discharged(3), Route::Iv, 6, 6, 45),
];

/// The first minute's events: (kind, chair index, start and end offsets from the
/// start of the period).
fn first_minute_events() -> [(EventKind, usize, u64, u64); 4] {
    [
        (
            EventKind::BpSurge {
                sbp: 188.0,
                dbp: 106.0,
            },
            2,
            8 * SEC,
            45 * SEC,
        ),
        (EventKind::Desaturation { spo2: 82.0 }, 3, 5 * SEC, 32 * SEC),
        (EventKind::ProbeOff, 4, 10 * SEC, 35 * SEC),
        (EventKind::DeviceOffline, 5, 15 * SEC, 27 * SEC),
    ]
}

/// A normal patient, from ranges that keep the ketamine rise under the limits.
fn patient(rng: &mut Rng, capnography: bool) -> (Baseline, f64) {
    let baseline = Baseline {
        hr: rng.u32(62..=84) as f64,
        spo2: rng.u32(97..=99) as f64,
        sbp: rng.u32(105..=118) as f64,
        dbp: rng.u32(66..=78) as f64,
        rr: rng.u32(12..=16) as f64,
        etco2: capnography.then(|| rng.u32(35..=40) as f64),
    };
    (baseline, 0.8 + rng.f64() * 0.2)
}

/// The pump rate of chair `c`'s sessions: 40-51 ml/h by chair, none off the IV route.
fn pump_rate(route: Route, c: usize) -> f64 {
    if route == Route::Iv {
        40.0 + c as f64
    } else {
        0.0
    }
}

/// The demo ward at `start_ms` (the scenario's `live_from_ms`), deterministic in
/// `seed`.
pub fn demo_ward(start_ms: u64, seed: u64) -> Scenario {
    let mut rng = Rng::with_seed(seed ^ 0xde30_0a4d);
    let end = start_ms + DEMO_HORIZON_MS;
    let origin = start_ms;
    let mut chairs: Vec<ChairScript> = Vec::with_capacity(DEMO_CHAIRS);
    for (c, &(at, route, k, n, recovery_min)) in CHAIRS.iter().enumerate() {
        let baseline_ms = 10 * MIN;
        let infusion_ms = match at {
            At::Infusion(m) => (m.max(40) + rng.u64(8..=15)) * MIN,
            _ => rng.u64(40..=60) * MIN,
        };
        let recovery_ms = recovery_min * MIN;
        let session_start = match at {
            At::Baseline(m) => Some(start_ms - m * MIN),
            At::Infusion(m) => Some(start_ms - baseline_ms - m * MIN),
            At::Recovery(m) => Some(start_ms - baseline_ms - infusion_ms - m * MIN),
            At::Discharged(m) => Some(start_ms - baseline_ms - infusion_ms - recovery_ms - m * MIN),
            At::Idle => None,
        };
        let mut sessions = Vec::new();
        let mut next_start = match session_start {
            Some(s) => {
                let (baseline, response) = patient(&mut rng, c % 3 == 1);
                sessions.push(SessionScript {
                    patient: format!("SIM-{:02}", c + 1),
                    baseline,
                    response,
                    route,
                    session_number: k,
                    session_count: n,
                    start_ms: s,
                    baseline_ms,
                    infusion_ms,
                    recovery_ms,
                    discharged_ms: Some(5 * MIN),
                    pump_rate_ml_h: pump_rate(route, c),
                    events: Vec::new(),
                });
                s + baseline_ms + infusion_ms + recovery_ms + 5 * MIN + TURNOVER_MS
            }
            // Empty chairs receive a patient later, staggered.
            None => start_ms + (20 + 30 * (c as u64 % 2)) * MIN,
        };
        let mut number = 1;
        while next_start < end {
            let (baseline, response) = patient(&mut rng, c % 3 == 1);
            let s = SessionScript {
                patient: format!("SIM-{:02}", c + 1 + DEMO_CHAIRS * number),
                baseline,
                response,
                route,
                session_number: 1 + (k + number as u16 - 1) % n,
                session_count: n,
                start_ms: next_start,
                baseline_ms: 10 * MIN,
                infusion_ms: rng.u64(40..=60) * MIN,
                recovery_ms: rng.u64(30..=60) * MIN,
                discharged_ms: Some(5 * MIN),
                pump_rate_ml_h: pump_rate(route, c),
                events: Vec::new(),
            };
            next_start = s.idle_at().unwrap_or(end) + TURNOVER_MS;
            sessions.push(s);
            number += 1;
        }
        if let Some(first) = sessions.first_mut() {
            if c == 0 {
                first.events.push(ScriptedEvent {
                    kind: EventKind::MotionArtefact { spo2: 89.0 },
                    start_ms: start_ms + 20 * SEC,
                    end_ms: start_ms + 23 * SEC,
                });
            }
        }
        chairs.push(ChairScript {
            site: DEMO_SITE.into(),
            chair: (c + 1).to_string(),
            origin_ms: origin.min(sessions.first().map_or(origin, |s| s.start_ms)),
            sessions,
        });
    }
    schedule_events(&mut chairs, start_ms, end);
    Scenario {
        seed,
        live_from_ms: start_ms,
        chairs,
    }
}

/// Attach the periodic events: period 0 on the designated chairs, later periods on
/// chairs in infusion or recovery for the whole first minute of the period.
fn schedule_events(chairs: &mut [ChairScript], start_ms: u64, end: u64) {
    let mut period = 0u64;
    loop {
        let at = start_ms + period * DEMO_EVENT_PERIOD_MS;
        if at + MIN >= end {
            break;
        }
        let mut taken = [false; DEMO_CHAIRS];
        for (j, (kind, designated, from, to)) in first_minute_events().into_iter().enumerate() {
            let eligible = |c: usize, chairs: &[ChairScript]| {
                let chair = &chairs[c];
                let watched = |t: u64| {
                    chair
                        .session_at(t)
                        .and_then(|s| s.phase_at(t))
                        .filter(|p| matches!(p, Phase::Infusion | Phase::Recovery))
                };
                let same = chair.session_at(at).map(|s| s.start_ms)
                    == chair.session_at(at + MIN).map(|s| s.start_ms);
                !taken[c] && same && watched(at).is_some() && watched(at + MIN).is_some()
            };
            let chosen = if period == 0 {
                Some(designated)
            } else {
                let first = (period as usize * 5 + j * 3) % DEMO_CHAIRS;
                (0..DEMO_CHAIRS)
                    .map(|i| (first + i) % DEMO_CHAIRS)
                    .find(|&c| eligible(c, chairs))
            };
            let Some(c) = chosen else { continue };
            taken[c] = true;
            if let Some(s) = chairs[c]
                .sessions
                .iter_mut()
                .find(|s| s.phase_at(at).is_some())
            {
                s.events.push(ScriptedEvent {
                    kind,
                    start_ms: at + from,
                    end_ms: at + to,
                });
            }
        }
        period += 1;
    }
}
