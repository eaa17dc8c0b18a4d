use super::*;
use crate::core::alarm_id;
use crate::core::reading::Vital;
use crate::core::rules::{Priority, RuleSpec};
use std::collections::BTreeMap;

fn ward(max_chairs: usize) -> Ward {
    let rules = RuleSet::compile(&[RuleSpec {
        id: "spo2_low".into(),
        vital: Vital::Spo2,
        low: Some(90.0),
        priority: Priority::High,
        hysteresis: 1.0,
        ..RuleSpec::default()
    }])
    .unwrap();
    Ward::new(Arc::new(rules), max_chairs)
}

fn spo2(seq: u64, v: f64) -> Reading {
    let mut values = [None; 6];
    values[Vital::Spo2.index()] = Some(v);
    Reading {
        seq,
        ts: 1_000 * seq,
        values,
        pump: None,
    }
}

/// Patient `P` in `phase`, as a session message sent at `ts`.
fn session(phase: crate::core::Phase, ts: u64) -> SessionUpdate {
    SessionUpdate {
        phase,
        patient: Some("P".into()),
        session_number: None,
        session_count: None,
        route: None,
        ts: Some(ts),
        by: None,
        limits: None,
    }
}

fn events(o: Outcome) -> Vec<AlarmEvent> {
    match o {
        Outcome::Accepted { events, .. } => events
            .into_iter()
            .filter_map(|e| match e {
                Event::Alarm(a) => Some(a),
                Event::Session(_) => None,
            })
            .collect(),
        Outcome::Duplicate => vec![],
    }
}

#[test]
fn chairs_are_independent_and_ids_are_gateway_wide() {
    let w = ward(10);
    let a = events(w.apply("n/1", &spo2(1, 85.0), 5).unwrap());
    let b = events(w.apply("n/2", &spo2(1, 85.0), 6).unwrap());
    assert_eq!((a[0].id, b[0].id), (1, 2));
    assert_eq!(&*b[0].chair, "n/2");
    let c = events(w.apply("n/1", &spo2(2, 95.0), 7).unwrap());
    assert_eq!(c[0].state, AlarmState::Cleared);
    assert_eq!(c[0].id, 1);
    assert_eq!(w.chairs().len(), 2);
}

/// Two gateways evaluating the same readings (a partition's next owner taking
/// them again) raise the same alarm under the same id; a new breach of the same
/// rule gets another.
#[test]
fn derived_ids_are_the_same_wherever_a_reading_is_evaluated() {
    let rules = ward(10).rules;
    let (first, next) = (
        Ward::with_derived_alarm_ids(rules.clone(), 10),
        Ward::with_derived_alarm_ids(rules, 10),
    );
    let a = events(first.apply("n/1", &spo2(1, 85.0), 5).unwrap());
    // Received later by the other gateway, after readings of another chair.
    events(next.apply("n/2", &spo2(1, 85.0), 900).unwrap());
    let b = events(next.apply("n/1", &spo2(1, 85.0), 1_000).unwrap());
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(
        a[0].id,
        alarm_id::derived(
            "n/1",
            alarm_id::AlarmSeed {
                rule: "spo2_low",
                ts: 1_000
            }
        )
    );
    let cleared = events(next.apply("n/1", &spo2(2, 95.0), 1_001).unwrap());
    assert_eq!(
        (cleared[0].state, cleared[0].id),
        (AlarmState::Cleared, a[0].id)
    );
    let again = events(next.apply("n/1", &spo2(3, 85.0), 1_002).unwrap());
    assert_eq!(again[0].state, AlarmState::Raised);
    assert_ne!(again[0].id, a[0].id);
}

/// A limit narrowed, widened and narrowed again on one sample raises two
/// alarms, not one twice: the events stream would drop a second raise with
/// the first one's id as a repeat.
#[test]
fn a_raise_by_a_limit_change_gets_an_id_of_its_own() {
    let w = Ward::with_derived_alarm_ids(ward(10).rules, 10);
    assert!(events(w.apply("n/1", &spo2(1, 91.0), 5).unwrap()).is_empty());
    let limit = |low: f64| LimitOverride {
        low: Some(low),
        high: None,
    };
    let alarms = |evs: Vec<Event>| -> Vec<AlarmEvent> {
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Alarm(a) => Some(a),
                Event::Session(_) => None,
            })
            .collect()
    };
    let first = alarms(
        w.set_limit("n/1", "spo2_low", limit(93.0), "dr", 10)
            .unwrap(),
    );
    let cleared = alarms(
        w.set_limit("n/1", "spo2_low", limit(90.0), "dr", 20)
            .unwrap(),
    );
    let again = alarms(
        w.set_limit("n/1", "spo2_low", limit(93.0), "dr", 30)
            .unwrap(),
    );
    assert_eq!(first[0].state, AlarmState::Raised);
    assert_eq!(
        (cleared[0].state, cleared[0].id),
        (AlarmState::Cleared, first[0].id)
    );
    assert_eq!(again[0].state, AlarmState::Raised);
    assert_ne!(again[0].id, first[0].id);
}

#[test]
fn idle_chairs_are_forgotten_but_not_with_an_alarm_or_a_session() {
    let w = ward(10);
    w.apply("n/1", &spo2(1, 97.0), 1_000).unwrap();
    w.apply("n/2", &spo2(1, 80.0), 1_000).unwrap(); // alarm raised
    w.apply("n/3", &spo2(1, 97.0), 1_000).unwrap();
    w.set_session("n/3", &session(crate::core::Phase::Baseline, 1), 1_000)
        .unwrap();
    let idle = SessionUpdate {
        patient: None,
        ..session(crate::core::Phase::Idle, 1)
    };
    w.set_session("n/4", &idle, 1_000).unwrap();
    assert_eq!(w.evict_idle(60_999, 60_000), 0);
    assert_eq!(w.evict_idle(61_000, 60_000), 1);
    let left: Vec<String> = w.chairs().iter().map(|c| c.chair.to_string()).collect();
    assert_eq!(
        left,
        vec!["n/2", "n/3", "n/4"],
        "n/4 was named by a session message"
    );
    assert_eq!(w.evict_idle(u64::MAX, 0), 0, "0 keeps every chair");
}

#[test]
fn chair_limit_is_enforced_for_new_chairs_only() {
    let w = ward(1);
    w.apply("n/1", &spo2(1, 95.0), 1).unwrap();
    assert_eq!(
        w.apply("n/2", &spo2(1, 95.0), 1),
        Err(WardError::ChairLimit(1))
    );
    assert!(w.apply("n/1", &spo2(2, 95.0), 1).is_ok());
}

#[test]
fn a_refused_session_message_leaves_no_chair_behind() {
    let w = ward(1);
    let unknown_rule = SessionUpdate {
        limits: Some(BTreeMap::from([(
            "nope".to_string(),
            LimitOverride::default(),
        )])),
        ..session(crate::core::Phase::Baseline, 1)
    };
    assert!(matches!(
        w.set_session("n/1", &unknown_rule, 1_000),
        Err(WardError::Session(SessionError::UnknownRule(_)))
    ));
    assert!(w.chairs().is_empty());
    // The chair limit (1) is still free for a real chair.
    w.set_session("n/2", &session(crate::core::Phase::Baseline, 1), 1_000)
        .unwrap();
    // A known chair stays when a message for it is refused.
    let later = SessionUpdate {
        ts: Some(2),
        ..unknown_rule
    };
    assert!(w.set_session("n/2", &later, 1_001).is_err());
    assert_eq!(w.chairs().len(), 1);
}

/// A reading delivered late keeps the minute of the infusion it was measured at,
/// whatever the device's clock offset: 35.5, not the 48 it arrived at.
#[test]
fn a_late_reading_keeps_its_minute_of_the_infusion() {
    const MIN: u64 = 60_000;
    let w = ward(10);
    let start = 1_780_000_000_000;
    let behind = 10 * MIN; // the device's clock
    let baseline = session(crate::core::Phase::Baseline, start - 10 * MIN);
    w.set_session("n/1", &baseline, start - 10 * MIN).unwrap();
    let infusion = session(crate::core::Phase::Infusion, start);
    w.set_session("n/1", &infusion, start).unwrap();
    let at = |seq: u64, v| Reading {
        ts: start - behind + seq * 1_000,
        ..spo2(seq, v)
    };
    // 35 minutes delivered within 40 ms of being measured.
    for seq in 1..=35 * 60 {
        let r = at(seq, 97.0);
        w.apply("n/1", &r, r.ts + behind + 40).unwrap();
    }
    // The next 13 minutes buffered, delivered together at minute 48.
    let delivered = start + 48 * MIN;
    let mut raised = vec![];
    for seq in 35 * 60 + 1..=48 * 60 {
        let v = if seq == 35 * 60 + 30 { 80.0 } else { 97.0 };
        raised.extend(events(w.apply("n/1", &at(seq, v), delivered).unwrap()));
    }
    assert_eq!(raised[0].state, AlarmState::Raised);
    assert_eq!(raised[0].context.infusion_minute, Some(35.5));
}

/// Another patient in the chair: the previous patient's alarm ends first, with
/// their name and phase in its context, then the new session's event.
#[test]
fn the_previous_patients_alarm_ends_under_their_session() {
    let w = ward(10);
    w.set_session("n/1", &session(crate::core::Phase::Baseline, 1), 1_000)
        .unwrap();
    let raised = events(w.apply("n/1", &spo2(1, 85.0), 2_000).unwrap());
    assert_eq!(raised[0].state, AlarmState::Raised);
    let next = SessionUpdate {
        patient: Some("Q".into()),
        ..session(crate::core::Phase::Baseline, 2)
    };
    let out = w.set_session("n/1", &next, 3_000).unwrap();
    let [Event::Alarm(ended), Event::Session(begun)] = &out[..] else {
        panic!("the alarm's end, then the new session: {out:?}");
    };
    assert_eq!(
        (ended.id, ended.state, ended.reason),
        (raised[0].id, AlarmState::Cleared, Some("new_session"))
    );
    assert_eq!(ended.context.patient.as_deref(), Some("P"));
    assert_eq!(ended.value, 85.0);
    assert_eq!(begun.patient.as_deref(), Some("Q"));
    let state = w.state_of("n/1").unwrap();
    assert_eq!(state.active_alarms().count(), 0);
}

/// A chair in session counts as silent once nothing has been heard from it for the
/// allowance, counted from the phase's start (a restart too), as its offline alarm
/// counts: not at once for a chair whose device has not spoken yet, and a status
/// message counts as heard.
#[test]
fn silent_chairs_are_counted_as_the_offline_alarm_counts() {
    let w = ward(10);
    let t0 = 1_000_000;
    w.set_session("north/1", &session(crate::core::Phase::Baseline, t0), t0)
        .unwrap();
    assert_eq!(w.silent_in_session(t0 + 30_000, 60_000), 0, "not yet");
    assert_eq!(w.silent_in_session(t0 + 60_001, 60_000), 1);
    w.set_device_online("north/1", true, t0 + 61_000).unwrap();
    assert_eq!(
        w.silent_in_session(t0 + 62_000, 60_000),
        0,
        "it said online"
    );
    w.apply("north/1", &spo2(1, 97.0), t0 + 100_000).unwrap();
    assert_eq!(w.silent_in_session(t0 + 150_000, 60_000), 0);
    assert_eq!(w.silent_in_session(t0 + 160_001, 60_000), 1);
}
