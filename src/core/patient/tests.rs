//! Readings, redeliveries, late values and device clocks.

use super::*;
use crate::core::alarm_id::AlarmSeed;
use crate::core::rules::{Priority, RuleSpec};

fn rules() -> RuleSet {
    RuleSet::compile(&[RuleSpec {
        id: "hr_high".into(),
        vital: Vital::Hr,
        high: Some(120.0),
        priority: Priority::Medium,
        hysteresis: 5.0,
        ..RuleSpec::default()
    }])
    .unwrap()
}

fn hr(seq: u64, ts: u64, v: f64) -> Reading {
    let mut values = [None; 6];
    values[Vital::Hr.index()] = Some(v);
    Reading {
        seq,
        ts,
        values,
        pump: None,
    }
}

fn raised(a: &Applied) -> usize {
    match a {
        Applied::Accepted { effects, .. } => effects
            .transitions
            .iter()
            .filter(|t| matches!(t.step, Step::Raised { .. }))
            .count(),
        Applied::Duplicate => 0,
    }
}

#[test]
fn redelivery_is_applied_once() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut id = 0;
    let mut next = |_: AlarmSeed| {
        id += 1;
        id
    };
    let r = hr(5, 1_000, 150.0);
    assert_eq!(raised(&p.apply(&rules, &r, 1, &mut next)), 1);
    assert_eq!(p.apply(&rules, &r, 2, &mut next), Applied::Duplicate);
    assert_eq!(p.active_alarms().collect::<Vec<_>>(), vec![1]);
}

/// A restored chair with nothing else to keep it (no session, no alarm) waits
/// for its redelivered readings as long as an idle chair heard of now would.
#[test]
fn a_chair_waiting_for_redeliveries_is_not_forgotten_at_once() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let idle_ms = 3_600_000;
    p.evaluated_until(3_000, 50_000);
    assert!(!p.evictable(50_000 + idle_ms - 1, idle_ms));
    assert!(p.evictable(50_000 + idle_ms, idle_ms));
}

/// A chair taken over from another gateway: the readings that gateway had
/// evaluated, handed out again, change nothing (the alarm they raised and
/// cleared is over); the first newer one is evaluated, and from then on the
/// device's counter orders them again.
#[test]
fn readings_evaluated_before_a_takeover_change_nothing() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 7;
    p.evaluated_until(3_000, 1);
    for (seq, ts) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        assert_eq!(
            p.apply(&rules, &hr(seq, ts, 150.0), 1, &mut next),
            Applied::Duplicate
        );
    }
    assert_eq!(p.active_alarms().count(), 0);
    assert_eq!(
        raised(&p.apply(&rules, &hr(4, 4_000, 150.0), 2, &mut next)),
        1
    );
    // An older one after it is late, as for any chair.
    assert!(matches!(
        p.apply(&rules, &hr(2, 2_000, 60.0), 3, &mut next),
        Applied::Accepted { late_values: 1, .. }
    ));
    assert_eq!(p.active_alarms().count(), 1);
    // Known already: nothing to hold back any more.
    p.evaluated_until(9_000, 1);
    assert!(matches!(
        p.apply(&rules, &hr(5, 5_000, 60.0), 4, &mut next),
        Applied::Accepted { .. }
    ));
    assert_eq!(p.active_alarms().count(), 0);
}

/// A device whose clock stepped back far (or another device in the chair)
/// after the takeover is not silenced until its clock catches up.
#[test]
fn a_reading_long_before_the_takeover_is_a_clock_step_not_a_repeat() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 7;
    p.evaluated_until(600_000, 1);
    assert_eq!(
        p.apply(&rules, &hr(1, 599_000, 150.0), 1, &mut next),
        Applied::Duplicate
    );
    let stepped = hr(2, 600_000 - EVALUATED_REPEAT_WINDOW_MS - 1, 150.0);
    assert_eq!(raised(&p.apply(&rules, &stepped, 2, &mut next)), 1);
}

#[test]
fn late_value_does_not_overwrite_newer_state_or_clear() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 1;
    p.apply(&rules, &hr(2, 2_000, 150.0), 1, &mut next);
    let a = p.apply(&rules, &hr(1, 1_000, 60.0), 2, &mut next);
    match a {
        Applied::Accepted {
            late_values,
            effects,
            latest,
            ..
        } => {
            assert_eq!(late_values, 1);
            assert!(effects.transitions.is_empty());
            assert_eq!(latest.get(Vital::Hr).unwrap().value, 150.0);
        }
        Applied::Duplicate => panic!("not a duplicate"),
    }
    assert_eq!(p.active_alarms().count(), 1);
}

#[test]
fn device_counter_restart_is_not_a_duplicate() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 1;
    p.apply(&rules, &hr(0, 1_000, 60.0), 1, &mut next);
    let a = p.apply(&rules, &hr(0, 9_000, 61.0), 2, &mut next);
    assert!(matches!(a, Applied::Accepted { late_values: 0, .. }));
}

/// Every raise and clear (with its device time) that `stream` causes on a fresh
/// patient, alarm ids numbered from 1.
fn steps<'a>(rules: &RuleSet, stream: impl IntoIterator<Item = &'a Reading>) -> Vec<(Step, u64)> {
    let mut p = PatientState::new(rules);
    let mut id = 0;
    let mut next = |_: AlarmSeed| {
        id += 1;
        id
    };
    let mut out = Vec::new();
    for r in stream {
        if let Applied::Accepted { effects, .. } = p.apply(rules, r, 0, &mut next) {
            out.extend(effects.transitions.into_iter().map(|t| (t.step, t.ts)));
        }
    }
    out
}

proptest::proptest! {
    /// Redelivering any of the recent readings, any number of times, changes
    /// nothing: the transitions are exactly those of the stream without repeats.
    #[test]
    fn redeliveries_change_nothing(
        values in proptest::collection::vec(100.0f64..160.0, 1..60),
        repeats in proptest::collection::vec((0usize..60, 0usize..8), 0..40),
    ) {
        let rules = rules();
        let readings: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(i, v)| hr(i as u64, 1_000 * i as u64, *v))
            .collect();
        // Each repeat re-sends reading `j` right after reading `j + lag`, while it
        // is still among the recent ids, as a broker redelivery would.
        let mut stream: Vec<&Reading> = Vec::new();
        for (i, r) in readings.iter().enumerate() {
            stream.push(r);
            for (j, lag) in &repeats {
                if j + lag == i && *j < readings.len() {
                    stream.push(&readings[*j]);
                }
            }
        }
        proptest::prop_assert_eq!(steps(&rules, stream), steps(&rules, &readings));
    }

    /// Late (out-of-order) readings never raise or clear anything: a stream with
    /// older readings interleaved gives the transitions of the in-order stream.
    #[test]
    fn late_readings_are_ignored(
        values in proptest::collection::vec(100.0f64..160.0, 2..60),
        late in proptest::collection::vec((1usize..60, 1usize..10), 0..30),
    ) {
        let rules = rules();
        let readings: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(i, v)| hr(i as u64, 1_000 * (i as u64 + 1), *v))
            .collect();
        let mut stream: Vec<Reading> = Vec::new();
        for (i, r) in readings.iter().enumerate() {
            stream.push(r.clone());
            for (at, back) in &late {
                if *at == i && *back <= i {
                    // A late delivery: an earlier message (lower seq, older ts) with
                    // a value that would otherwise alarm.
                    let j = i - back;
                    stream.push(hr(j as u64, 1_000 * (j as u64 + 1) - 1, 200.0));
                }
            }
        }
        proptest::prop_assert_eq!(steps(&rules, &stream), steps(&rules, &readings));
    }
}

#[test]
fn clock_stepping_back_does_not_silence_the_chair() {
    let rules = rules();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 1;
    p.apply(&rules, &hr(1, 100_000, 80.0), 1, &mut next);
    // NTP correction: the next message is 60 s "earlier" by the device clock.
    let a = p.apply(&rules, &hr(2, 40_000, 150.0), 2, &mut next);
    assert_eq!(raised(&a), 1);
    assert!(matches!(
        a,
        Applied::Accepted {
            clock_stepped_back: true,
            ..
        }
    ));
}

#[test]
fn clock_step_keeps_the_breach_time_already_counted() {
    let rules = RuleSet::compile(&[RuleSpec {
        id: "hr_high".into(),
        vital: Vital::Hr,
        high: Some(120.0),
        priority: Priority::Medium,
        delay_ms: 3_000,
        ..RuleSpec::default()
    }])
    .unwrap();
    let mut p = PatientState::new(&rules);
    let mut next = |_: AlarmSeed| 1;
    // Breached at 100 s and 102 s (2 s counted), then the clock steps back 60 s:
    // one more second of breach (at 43 s on the new clock) completes the delay.
    assert_eq!(
        raised(&p.apply(&rules, &hr(1, 100_000, 150.0), 0, &mut next)),
        0
    );
    assert_eq!(
        raised(&p.apply(&rules, &hr(2, 102_000, 150.0), 0, &mut next)),
        0
    );
    assert_eq!(
        raised(&p.apply(&rules, &hr(3, 42_000, 150.0), 0, &mut next)),
        0
    );
    assert_eq!(
        raised(&p.apply(&rules, &hr(4, 43_000, 150.0), 0, &mut next)),
        1
    );
}

/// Issue target: at most 2 KiB of state per patient with the shipped rules (the
/// map entry's key and bookkeeping add a few dozen bytes).
#[test]
fn patient_state_fits_in_two_kib_with_the_shipped_rules() {
    let rules = crate::config::Config::default().rule_set().unwrap();
    // Inline state, one state per alarm condition, and the trend history of each
    // vital a trend rule watches (full). Not counted: the patient id and per-patient
    // limits (a few dozen bytes each, when set) and the baseline sampler, which
    // exists only during the baseline phase (up to session.baseline_max_samples
    // values per vital).
    let trends = Vital::ALL
        .iter()
        .filter(|v| rules.trend_window(**v) > 0)
        .count()
        * (std::mem::size_of::<Trend>()
            + crate::core::rules::TREND_SAMPLES * std::mem::size_of::<(u64, f32)>());
    let bytes = std::mem::size_of::<PatientState>()
        + rules.len() * std::mem::size_of::<ConditionState>()
        + trends;
    eprintln!(
        "{bytes} bytes per patient ({} alarm conditions)",
        rules.len()
    );
    assert!(bytes <= 2048, "{bytes} bytes per patient");
}

#[test]
fn due_conditions_come_once_each_in_index_order() {
    for size in [10, 256, 300] {
        let mut due = super::Due::new(size);
        for i in [7, 3, 9, 3, 0, 7] {
            due.insert(i);
        }
        if size > 64 {
            due.insert(200);
            due.insert(64);
        }
        let got: Vec<usize> = due.iter().collect();
        let want: Vec<usize> = if size > 64 {
            vec![0, 3, 7, 9, 64, 200]
        } else {
            vec![0, 3, 7, 9]
        };
        assert_eq!(got, want, "{size} conditions");
    }
}
