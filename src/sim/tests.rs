//! The simulator's promises: determinism, plausibility, the ketamine curve, the
//! part-way start, and the demo ward's first minute.

use super::stream::{CUFF_AT_PHASE_START_MS, CUFF_MAX_MS, CUFF_MIN_MS};
use super::*;
use crate::core::{decode, DecodeLimits, Phase};
use serde_json::Value;
use std::collections::HashMap;

/// A fixed start (2025-11-26T00:00:00Z): tests do not read the clock.
const T0: u64 = 1_764_115_200_000;
const MIN: u64 = 60_000;

fn json(m: &Message) -> Value {
    serde_json::from_str(&m.payload).unwrap_or(Value::String(m.payload.clone()))
}

fn chair_of(topic: &str) -> &str {
    topic.split('/').nth(3).unwrap()
}

fn kind_of(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap()
}

/// The demo ward's first 20 minutes (and its history).
fn ward_messages(seed: u64) -> Vec<Message> {
    demo_ward(T0, seed).messages(0, T0 + 20 * MIN)
}

#[test]
fn same_seed_same_messages_other_seed_other_values() {
    let a = ward_messages(7);
    assert_eq!(a, ward_messages(7));
    assert_ne!(a, ward_messages(8));
    // A window is the same whether asked alone or cut from a longer one.
    let s = demo_ward(T0, 7);
    let window = s.messages(T0 + 3 * MIN, T0 + 4 * MIN);
    let cut: Vec<Message> = a
        .iter()
        .filter(|m| m.at_ms >= T0 + 3 * MIN && m.at_ms < T0 + 4 * MIN)
        .cloned()
        .collect();
    assert_eq!(window, cut);
    assert!(window.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
}

#[test]
fn ward_messages_are_plausible_protocol_v1() {
    let scenario = demo_ward(T0, 3);
    let messages = ward_messages(3);
    let event_chairs: Vec<String> = scenario
        .events()
        .iter()
        .filter(|e| !e.event.kind.is_artefact())
        .map(|e| e.chair.split('/').nth(1).unwrap().to_string())
        .collect();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let limits = DecodeLimits {
        max_payload_bytes: 16_384,
        max_future_skew_ms: 30_000,
    };
    let mut vitals = 0;
    for m in &messages {
        assert!(m.topic.starts_with("clinic/demo/chair/"), "{}", m.topic);
        let chair = chair_of(&m.topic).to_string();
        match kind_of(&m.topic) {
            "vitals" => {
                vitals += 1;
                assert!(!m.retain);
                let v = json(m);
                assert_eq!(v["simulated"], true, "{}", m.payload);
                assert_eq!(v["ts"], m.at_ms);
                let r = decode(m.payload.as_bytes(), m.at_ms, &limits)
                    .unwrap_or_else(|e| panic!("{} rejected: {e:?}", m.payload));
                let prev = last_seq.insert(chair.clone(), r.seq);
                assert!(
                    prev.is_none_or(|p| r.seq > p),
                    "seq not increasing on {chair}"
                );
                if v.get("sbp").is_some() {
                    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                    assert_eq!(keys.len(), 5, "cuff reading not alone: {}", m.payload);
                    assert!(v.get("dbp").is_some());
                }
                let (hr, spo2) = (v["hr"].as_f64(), v["spo2"].as_f64());
                let (sbp, dbp, rr) = (v["sbp"].as_f64(), v["dbp"].as_f64(), v["rr"].as_f64());
                assert!(hr.is_none_or(|x| (40.0..=150.0).contains(&x)));
                assert!(spo2.is_none_or(|x| (75.0..=100.0).contains(&x)));
                assert!(rr.is_none_or(|x| (8.0..=30.0).contains(&x)));
                if !event_chairs.contains(&chair) {
                    // Normal patients stay inside the default absolute limits.
                    assert!(hr.is_none_or(|x| (40.0..=140.0).contains(&x)));
                    assert!(
                        sbp.is_none_or(|x| (90.0..=140.0).contains(&x)),
                        "{}",
                        m.payload
                    );
                    assert!(
                        dbp.is_none_or(|x| (60.0..=100.0).contains(&x)),
                        "{}",
                        m.payload
                    );
                    assert!(rr.is_none_or(|x| (10.0..=25.0).contains(&x)));
                    // The motion artefact of chair 1 dips to 89 for 3 s.
                    assert!(
                        spo2.is_none_or(|x| x >= 95.0 || chair == "1"),
                        "{}",
                        m.payload
                    );
                }
            }
            "session" => {
                assert!(m.retain);
                let v = json(m);
                assert_eq!(v["by"], SIMULATOR);
                assert_eq!(v["ts"], m.at_ms);
                assert!(
                    v.get("simulated").is_none(),
                    "sessions refuse unknown fields"
                );
                crate::core::SessionUpdate::decode(m.payload.as_bytes(), 4096).unwrap();
            }
            "status" => {
                assert!(m.retain);
                assert!(m.payload == "online" || m.payload == "offline");
            }
            other => panic!("unexpected topic kind {other}"),
        }
    }
    assert!(
        vitals > 9_000,
        "about one reading a second per occupied chair: {vitals}"
    );
}

/// A single long IV session with capnography and no events, live from its start.
fn one_session(infusion_min: u64) -> Scenario {
    let s = SessionScript {
        patient: "SIM-99".into(),
        baseline: Baseline {
            hr: 72.0,
            spo2: 98.0,
            sbp: 112.0,
            dbp: 72.0,
            rr: 14.0,
            etco2: Some(37.0),
        },
        response: 1.0,
        route: Route::Iv,
        session_number: 1,
        session_count: 6,
        start_ms: T0,
        baseline_ms: 10 * MIN,
        infusion_ms: infusion_min * MIN,
        recovery_ms: 60 * MIN,
        discharged_ms: Some(5 * MIN),
        pump_rate_ml_h: 40.0,
        events: Vec::new(),
    };
    Scenario {
        seed: 11,
        live_from_ms: T0,
        chairs: vec![ChairScript {
            site: "lab".into(),
            chair: "1".into(),
            origin_ms: T0,
            sessions: vec![s],
        }],
    }
}

#[test]
fn cuff_every_3_to_5_minutes_and_at_each_phase_start() {
    let scenario = one_session(60);
    let s = &scenario.chairs[0].sessions[0];
    let cuffs: Vec<u64> = scenario
        .messages(0, u64::MAX)
        .iter()
        .filter(|m| m.payload.contains("\"sbp\""))
        .map(|m| m.at_ms)
        .collect();
    for start in [s.start_ms, s.infusion_start(), s.recovery_start()] {
        assert!(cuffs.contains(&(start + CUFF_AT_PHASE_START_MS)));
    }
    for w in cuffs.windows(2) {
        if s.phase_at(w[0]) == s.phase_at(w[1]) {
            let gap = w[1] - w[0];
            assert!((CUFF_MIN_MS..=CUFF_MAX_MS).contains(&gap), "gap {gap} ms");
        }
    }
    // HR/SpO2 every second, RR and EtCO2 every 4 s, the pump in infusion.
    let live = scenario.messages(s.infusion_start() + MIN, s.infusion_start() + 2 * MIN);
    let monitor: Vec<Value> = live
        .iter()
        .map(json)
        .filter(|v| v.get("hr").is_some())
        .collect();
    assert_eq!(monitor.len(), 60);
    let rr = monitor.iter().filter(|v| v.get("rr").is_some()).count();
    assert_eq!(rr, 15);
    assert!(monitor.iter().all(|v| v["pump"]["running"] == true));
    assert!(monitor
        .iter()
        .filter(|v| v.get("rr").is_some())
        .all(|v| v.get("etco2").is_some()));
}

#[test]
fn sbp_rise_peaks_near_infusion_minute_40() {
    // Average the cuff readings of many seeds per 5-minute bin of the infusion.
    let mut bins = [(0.0, 0u32); 12];
    for seed in 0..40 {
        let mut scenario = one_session(60);
        scenario.seed = seed;
        let start = scenario.chairs[0].sessions[0].infusion_start();
        for m in scenario.messages(start, start + 60 * MIN) {
            if let Some(sbp) = json(&m)["sbp"].as_f64() {
                let bin = ((m.at_ms - start) / (5 * MIN)) as usize;
                bins[bin].0 += sbp;
                bins[bin].1 += 1;
            }
        }
    }
    let means: Vec<f64> = bins.iter().map(|(s, n)| s / *n as f64).collect();
    let peak = (0..12)
        .max_by(|&a, &b| means[a].total_cmp(&means[b]))
        .unwrap();
    assert!(
        (6..=9).contains(&peak),
        "peak bin {peak} (minutes {}-{}): {means:?}",
        peak * 5,
        peak * 5 + 5
    );
    assert!(means[7] - means[0] > 9.0, "{means:?}");
    assert!(
        (means[7] - 112.0 - 16.0).abs() < 3.0,
        "mean rise +16 at the peak: {means:?}"
    );
}

#[test]
fn part_way_chair_sends_its_history_first() {
    let scenario = demo_ward(T0, 1);
    // Chair 3 is at infusion minute 35.
    let chair = &scenario.chairs[2];
    let s = &chair.sessions[0];
    assert_eq!(s.infusion_start(), T0 - 35 * MIN);
    let messages: Vec<Message> = scenario
        .chair_stream(2)
        .take_while(|m| m.at_ms < T0 + 5_000)
        .collect();
    let sessions: Vec<(u64, String)> = messages
        .iter()
        .filter(|m| kind_of(&m.topic) == "session")
        .map(|m| (m.at_ms, json(m)["phase"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        sessions,
        vec![
            (s.start_ms, "baseline".into()),
            (T0 - 35 * MIN, "infusion".into())
        ]
    );
    let infusion_at = messages
        .iter()
        .position(|m| m.payload.contains("\"infusion\""))
        .unwrap();
    let before = &messages[..infusion_at];
    for vital in ["hr", "spo2", "rr", "sbp", "dbp"] {
        let n = before
            .iter()
            .filter(|m| json(m).get(vital).is_some())
            .count();
        assert!(
            n >= 2,
            "{n} baseline values of {vital} before the infusion message"
        );
    }
    assert!(before.iter().all(|m| m.at_ms < T0));
    // Live data follows from T0 at full rate.
    let live = messages
        .iter()
        .filter(|m| m.at_ms >= T0 && json(m).get("hr").is_some())
        .count();
    assert!((4..=6).contains(&live));
    // Empty chairs say so, discharged chair 12 ends discharged, then idle.
    for c in [9, 10] {
        let first = scenario
            .chair_stream(c)
            .find(|m| kind_of(&m.topic) == "session")
            .unwrap();
        assert_eq!(json(&first)["phase"], "idle");
    }
    let c12: Vec<String> = scenario
        .chair_stream(11)
        .take_while(|m| m.at_ms < T0 + 3 * MIN)
        .filter(|m| kind_of(&m.topic) == "session")
        .map(|m| json(&m)["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        c12,
        ["baseline", "infusion", "recovery", "discharged", "idle"]
    );
}

#[test]
fn demo_ward_first_minute_has_the_four_events_and_they_end() {
    let scenario = demo_ward(T0, 1);
    assert_eq!(scenario.chairs.len(), DEMO_CHAIRS);
    let first: Vec<AnnotatedEvent> = scenario
        .events()
        .into_iter()
        .filter(|e| e.event.start_ms < T0 + MIN && !e.event.kind.is_artefact())
        .collect();
    let kinds: Vec<&str> = first.iter().map(|e| e.event.kind.name()).collect();
    for k in ["bp_surge", "desaturation", "probe_off", "device_offline"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(first
        .iter()
        .all(|e| e.event.start_ms >= T0 && e.event.end_ms <= T0 + MIN));
    let minute = scenario.messages(T0, T0 + MIN);
    let of = |chair: &str| -> Vec<(u64, Value)> {
        minute
            .iter()
            .filter(|m| chair_of(&m.topic) == chair)
            .map(|m| (m.at_ms - T0, json(m)))
            .collect()
    };
    // Chair 3: SBP above 180, then a normal reading.
    let sbp: Vec<(u64, f64)> = of("3")
        .into_iter()
        .filter_map(|(t, v)| Some((t, v["sbp"].as_f64()?)))
        .collect();
    let surge = sbp
        .iter()
        .position(|(_, x)| *x > 180.0)
        .expect("SBP above 180");
    assert!(sbp[surge + 1..].iter().any(|(_, x)| *x < 140.0), "{sbp:?}");
    // Chair 4: SpO2 at or below 85 for more than 5 s, then back to 95 or more.
    let spo2: Vec<(u64, f64)> = of("4")
        .into_iter()
        .filter_map(|(t, v)| Some((t, v["spo2"].as_f64()?)))
        .collect();
    let low: Vec<u64> = spo2
        .iter()
        .filter(|(_, x)| *x <= 85.0)
        .map(|(t, _)| *t)
        .collect();
    assert!(
        low.last().unwrap() - low.first().unwrap() >= 8_000,
        "{spo2:?}"
    );
    assert!(spo2.last().unwrap().1 >= 95.0);
    // Chair 5: no SpO2 for more than 17 s, then SpO2 again.
    let spo2_at: Vec<u64> = of("5")
        .into_iter()
        .filter(|(_, v)| v.get("spo2").is_some())
        .map(|(t, _)| t)
        .collect();
    let gap = spo2_at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap >= 17_000, "longest SpO2 gap {gap} ms");
    assert!(*spo2_at.last().unwrap() > 40_000);
    // Chair 6: offline, nothing, online, data again.
    let c6 = of("6");
    let off = c6
        .iter()
        .position(|(_, v)| v == "offline")
        .expect("offline status");
    let on = c6
        .iter()
        .position(|(_, v)| v == "online")
        .expect("online status");
    assert!(off < on && on + 1 < c6.len());
    assert!(c6[on].0 - c6[off].0 < 15_000, "under the stale allowance");
    assert!(c6[off + 1..on].is_empty());
    // The events repeat later, on chairs in infusion or recovery.
    let later = scenario
        .events()
        .into_iter()
        .filter(|e| {
            e.event.start_ms >= T0 + DEMO_EVENT_PERIOD_MS
                && e.event.start_ms < T0 + 2 * DEMO_EVENT_PERIOD_MS
                && !e.event.kind.is_artefact()
        })
        .count();
    assert_eq!(later, 4);
    for e in scenario.events() {
        let c = scenario.chairs.iter().find(|c| c.key() == e.chair).unwrap();
        let s = c.session_at(e.event.start_ms).unwrap();
        if !e.event.kind.is_artefact() {
            assert!(matches!(
                s.phase_at(e.event.start_ms),
                Some(Phase::Infusion | Phase::Recovery)
            ));
        }
    }
}
