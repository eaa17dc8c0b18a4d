//! The library's invariants, and its files kept as the generator makes them.
use super::*;
use crate::core::chair_key::is_chair_key;
use crate::sim::{EventKind, Message, DEMO_SITE};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

const MIN: u64 = 60_000;

fn session(e: &Entry) -> &SessionScript {
    &e.scenario.chairs[0].sessions[0]
}

fn has(e: &Entry, kind: &str) -> bool {
    e.expect.iter().any(|x| x.kind == kind)
}

fn entry<'a>(lib: &'a [Entry], name: &str) -> &'a Entry {
    lib.iter().find(|e| e.name == name).unwrap()
}

#[test]
fn names_are_unique_kebab_case_file_stems() {
    let lib = library();
    assert!(lib.len() >= 22, "{} entries", lib.len());
    let mut seen = HashSet::new();
    for e in &lib {
        let n = e.name;
        assert!(seen.insert(n), "duplicate {n}");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !n.starts_with('-')
                && !n.ends_with('-')
                && !n.contains("--"),
            "{n}"
        );
        assert!(
            !e.description.is_empty() && e.description.len() < 300,
            "{n}"
        );
    }
}

#[test]
fn every_required_category_is_present() {
    let lib = library();
    type Check = fn(&Entry) -> bool;
    let required: [(&str, Check); 23] = [
        ("normal-typical-adult", |e| session(e).baseline.sbp == 118.0),
        ("normal-low-normal-bp", |e| session(e).baseline.sbp < 110.0),
        ("normal-resting-hypertension", |e| {
            session(e).baseline.sbp >= 145.0 && session(e).baseline.dbp >= 90.0
        }),
        ("normal-older-patient", |e| {
            session(e).baseline.sbp >= 130.0 && session(e).baseline.spo2 <= 95.0
        }),
        ("normal-high-responder", |e| session(e).response >= 1.4),
        ("normal-long-session", |e| {
            session(e).infusion_ms == 60 * MIN
        }),
        ("normal-im", |e| session(e).route == Route::Im),
        ("normal-sublingual", |e| {
            session(e).route == Route::Sublingual
        }),
        ("normal-intranasal", |e| {
            session(e).route == Route::Intranasal
        }),
        ("bp-surge-first-session", |e| {
            let s = session(e);
            let x = &e.expect[0];
            s.session_number == 1
                && x.kind == "bp_surge"
                && x.start_ms >= s.infusion_start() + 30 * MIN
                && x.end_ms <= s.infusion_start() + 40 * MIN
        }),
        ("bp-surge-late-course", |e| {
            session(e).session_number > 3 && has(e, "bp_surge")
        }),
        ("slow-hypertension-late", |e| {
            e.expect
                .iter()
                .any(|x| x.kind == "slow_hypertension" && x.end_ms - x.start_ms >= 30 * MIN)
        }),
        ("desaturation", |e| has(e, "desaturation")),
        ("respiratory-depression", |e| {
            has(e, "respiratory_depression")
        }),
        ("bradycardia", |e| has(e, "bradycardia")),
        ("tachycardia", |e| has(e, "tachycardia")),
        ("artefact-spo2-motion", |e| has(e, "motion_artefact")),
        ("artefact-cuff-misreading", |e| has(e, "cuff_artefact")),
        ("artefact-loose-lead", |e| {
            e.expect.len() > 3 && has(e, "loose_lead")
        }),
        ("probe-off-recovery", |e| {
            let s = session(e);
            e.expect.iter().any(|x| {
                x.kind == "probe_off"
                    && x.end_ms - x.start_ms >= MIN
                    && x.start_ms >= s.recovery_start()
            })
        }),
        ("device-offline", |e| has(e, "device_offline")),
        ("pump-without-spo2", |e| {
            let s = session(e);
            s.route == Route::Iv
                && e.expect.iter().any(|x| {
                    x.kind == "probe_off"
                        && x.start_ms >= s.infusion_start()
                        && x.end_ms <= s.recovery_start()
                })
        }),
        ("late-burst-network-outage", |e| has(e, "network_outage")),
    ];
    for (name, ok) in required {
        assert!(ok(entry(&lib, name)), "{name}");
    }
}

#[test]
fn one_complete_reproducible_session_per_entry() {
    for (i, e) in library().iter().enumerate() {
        let n = e.name;
        let sc = &e.scenario;
        assert_eq!(sc.live_from_ms, 0, "{n}");
        assert_eq!(sc.seed, SEED_BASE + i as u64, "{n}");
        assert_eq!(sc.chairs.len(), 1, "{n}");
        let c = &sc.chairs[0];
        assert_eq!(c.site, DEMO_SITE);
        assert!(is_chair_key(&c.key()), "{n}");
        assert_eq!(c.sessions.len(), 1, "{n}");
        let s = &c.sessions[0];
        assert_eq!(c.origin_ms, EPOCH_MS + i as u64 * DAY_MS, "{n}");
        assert_eq!(s.start_ms, c.origin_ms, "{n}");
        assert!((8 * MIN..=12 * MIN).contains(&s.baseline_ms), "{n}");
        assert!((40 * MIN..=60 * MIN).contains(&s.infusion_ms), "{n}");
        assert!((60 * MIN..=90 * MIN).contains(&s.recovery_ms), "{n}");
        assert!(s.discharged_ms.is_some_and(|d| d <= 10 * MIN), "{n}");
        assert_eq!(s.route == Route::Iv, s.pump_rate_ml_h > 0.0, "{n}");
    }
}

#[test]
fn one_expectation_per_scripted_event_within_its_session() {
    for e in library() {
        let (chair, s) = e.sessions().next().unwrap();
        assert_eq!(s.events.len(), e.expect.len(), "{}", e.name);
        for (ev, x) in s.events.iter().zip(&e.expect) {
            assert_eq!((x.start_ms, x.end_ms), (ev.start_ms, ev.end_ms));
            assert_eq!(x.chair, chair);
            assert!(x.kind == ev.kind.name() || x.kind == "loose_lead");
            assert!(x.start_ms < x.end_ms);
            assert!(x.start_ms >= s.start_ms && x.end_ms <= s.discharged_at());
            if ev.kind.is_artefact() {
                assert_eq!(x.priority, None, "{}", e.name);
            }
        }
        // Sessions without a scripted event, and artefacts only, are normal.
        let artefacts = e.name.starts_with("artefact-");
        assert_eq!(e.name.starts_with("normal-"), s.events.is_empty());
        assert_eq!(e.normal(), s.events.is_empty() || artefacts, "{}", e.name);
        let a = e.annotation();
        assert!(a.simulated && a.normal == e.normal());
        if a.normal {
            assert!(a.events.iter().all(|x| x.priority.is_none()));
        }
    }
}

/// Every vitals message's device time and payload.
fn vitals(messages: &[Message]) -> Vec<(u64, Value)> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/vitals"))
        .map(|m| (m.at_ms, serde_json::from_str(&m.payload).unwrap()))
        .collect()
}

#[test]
fn stream_order_delivery_and_simulated_flag() {
    for e in library() {
        let messages: Vec<Message> = e.scenario.stream().collect();
        // Per chair: (latest at_ms, latest delivery time).
        let mut last: HashMap<String, (u64, u64)> = HashMap::new();
        for m in &messages {
            let chair: Vec<&str> = m.topic.split('/').collect();
            let chair = format!("{}/{}", chair[1], chair[3]);
            let delivered = m.delivered_ms.unwrap_or(m.at_ms);
            assert!(delivered >= m.at_ms, "{}: {m:?}", e.name);
            let prev = last.insert(chair, (m.at_ms, delivered)).unwrap_or_default();
            assert!(m.at_ms >= prev.0, "{}: at_ms decreases", e.name);
            assert!(delivered >= prev.1, "{}: delivery goes back", e.name);
        }
        // Session and status payloads cannot carry it (the gateway refuses unknown
        // session fields; a status is plain text): the site says "demo" there.
        for (_, v) in vitals(&messages) {
            assert_eq!(v["simulated"], true, "{}", e.name);
        }
    }
}

fn values(w: &[&(u64, Value)], vital: &str) -> Vec<f64> {
    w.iter().filter_map(|(_, v)| v[vital].as_f64()).collect()
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The data shows each scripted event in its window, late delivery happens only in
/// an outage, and the normal sessions meant to stay quiet stay inside the shipped
/// warning limits (config/vitalgate.toml: HR 40-140, SpO2 >= 95, RR 10-25, SBP
/// 90-140, DBP 60-100).
#[test]
fn data_shows_each_event_and_quiet_sessions_stay_quiet() {
    for e in library() {
        let n = e.name;
        let s = session(&e);
        let messages: Vec<Message> = e.scenario.stream().collect();
        let all = vitals(&messages);
        for ev in &s.events {
            let w: Vec<&(u64, Value)> = all.iter().filter(|(t, _)| ev.covers(*t)).collect();
            let cuff_sbp = values(&w, "sbp");
            match ev.kind {
                EventKind::BpSurge { sbp, .. } => assert!(max(&cuff_sbp) >= sbp - 5.0, "{n}"),
                EventKind::SlowHypertension { sbp, .. } => {
                    let (first, last) = (cuff_sbp[0], *cuff_sbp.last().unwrap());
                    assert!(cuff_sbp.len() >= 8 && last >= first + 20.0, "{n}");
                    assert!(last >= sbp - 12.0, "{n}: {cuff_sbp:?}");
                }
                EventKind::Desaturation { spo2 } => {
                    assert!(min(&values(&w, "spo2")) <= spo2 + 1.0, "{n}")
                }
                EventKind::RespiratoryDepression { rr, spo2 } => {
                    assert!(min(&values(&w, "rr")) <= rr + 1.0, "{n}");
                    assert!(min(&values(&w, "spo2")) <= spo2 + 1.0, "{n}");
                }
                EventKind::Bradycardia { hr } => {
                    assert!(min(&values(&w, "hr")) <= hr + 1.0, "{n}")
                }
                EventKind::Tachycardia { .. } => {
                    assert!(max(&values(&w, "hr")) >= s.baseline.hr + 40.0, "{n}")
                }
                EventKind::ProbeOff => {
                    assert!(values(&w, "spo2").is_empty() && values(&w, "hr").is_empty())
                }
                EventKind::DeviceOffline => assert!(w.is_empty(), "{n}"),
                EventKind::MotionArtefact { spo2 } => {
                    let v = values(&w, "spo2");
                    assert!(v.len() >= 2 && v.iter().all(|x| *x == spo2), "{n}");
                }
                EventKind::CuffArtefact { sbp, dbp } => {
                    let (t, v) = w[0];
                    assert_eq!(
                        (*t, v["sbp"].as_f64(), v["dbp"].as_f64()),
                        (ev.start_ms, Some(sbp), Some(dbp)),
                        "{n}"
                    );
                }
                EventKind::NetworkOutage => assert!(!w.is_empty()),
            }
        }
        for m in &messages {
            let outage = s
                .events
                .iter()
                .find(|ev| ev.kind == EventKind::NetworkOutage && ev.covers(m.at_ms));
            assert_eq!(m.delivered_ms, outage.map(|ev| ev.end_ms), "{n}: {m:?}");
        }
        // These two are over the absolute BP limits by their own baseline (see
        // entries.rs): the shipped rules alarm on them although nothing happens.
        let over = matches!(n, "normal-resting-hypertension" | "normal-older-patient");
        if n.starts_with("normal-") {
            let v: Vec<&(u64, Value)> = all.iter().collect();
            let (sbp, dbp) = (values(&v, "sbp"), values(&v, "dbp"));
            assert_eq!(max(&sbp) > 140.0, over, "{n}: SBP up to {}", max(&sbp));
            if !over {
                assert!(min(&sbp) >= 90.0 && min(&dbp) >= 60.0 && max(&dbp) <= 100.0);
            }
            let (hr, rr) = (values(&v, "hr"), values(&v, "rr"));
            assert!(min(&hr) >= 40.0 && max(&hr) <= 140.0, "{n}");
            assert!(min(&rr) >= 10.0 && max(&rr) <= 25.0, "{n}");
            assert!(min(&values(&v, "spo2")) >= 94.0, "{n}");
        }
    }
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitalgate-library-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// The messages of a `.jsonl.gz` file, as the replay reads them.
fn read_back(path: &Path) -> Vec<Message> {
    crate::replay::record::records(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn files_are_identical_on_every_run_and_read_back() {
    let (a, b) = (temp_dir("a"), temp_dir("b"));
    let paths = write(&a).unwrap();
    let again = write(&b).unwrap();
    let lib = library();
    assert_eq!(paths.len(), 2 * lib.len());
    for (p, q) in paths.iter().zip(&again) {
        assert_eq!(p.file_name(), q.file_name());
        assert!(
            fs::read(p).unwrap() == fs::read(q).unwrap(),
            "{p:?} differs"
        );
    }
    for e in &lib {
        let json = fs::read_to_string(a.join(format!("{}.json", e.name))).unwrap();
        assert!(json.ends_with("}\n"));
        let back: Annotation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e.annotation());
        let back = read_back(&a.join(format!("{}.jsonl.gz", e.name)));
        assert!(
            back == e.scenario.stream().collect::<Vec<_>>(),
            "{}",
            e.name
        );
    }
    fs::remove_dir_all(a).unwrap();
    fs::remove_dir_all(b).unwrap();
}

/// The files in `scenarios/` are what the generator makes today (compared after
/// decompression, so a different zlib build does not matter). After changing the
/// simulator or the library: `vitalgate scenarios` rewrites them.
#[test]
fn the_committed_library_is_the_generators() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for e in library() {
        let json = fs::read_to_string(dir.join(format!("{}.json", e.name)))
            .unwrap_or_else(|err| panic!("scenarios/{}.json: {err}", e.name));
        assert!(
            json == e.annotation_json(),
            "scenarios/{}.json is out of date",
            e.name
        );
        let messages = read_back(&dir.join(format!("{}.jsonl.gz", e.name)));
        assert!(
            messages == e.scenario.stream().collect::<Vec<_>>(),
            "scenarios/{}.jsonl.gz is out of date",
            e.name
        );
    }
}
