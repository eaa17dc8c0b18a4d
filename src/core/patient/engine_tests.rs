//! The session engine driven with an injected clock: profiles per phase, personal
//! baselines, technical alarms, latching, combined and trend rules, discharge
//! readiness.

use super::*;
use crate::core::event::{SessionChange, SessionEvent};
use crate::core::rules::{
    CombinedRuleSpec, PartSpec, Priority, RuleSources, RuleSpec, SessionSpec, TechnicalSpec,
    TrendRuleSpec,
};
use crate::core::session::{LimitOverride, Route, SessionError, SessionUpdate};
use proptest::prelude::*;
use std::collections::BTreeMap;

const T0: u64 = 1_764_000_000_000;

struct Chair {
    rules: RuleSet,
    p: PatientState,
    next: u64,
    seq: u64,
}

/// (rule id, raised or cleared, reason) of each alarm transition.
type Seen = Vec<(String, &'static str, Option<&'static str>)>;

impl Chair {
    fn new(src: RuleSources<'_>) -> Chair {
        let rules = RuleSet::compile_all(src).unwrap();
        let p = PatientState::new(&rules);
        Chair {
            rules,
            p,
            next: 0,
            seq: 0,
        }
    }

    fn seen(&self, e: &Effects) -> Seen {
        e.transitions
            .iter()
            .map(|t| {
                let what = match t.step {
                    Step::Raised { .. } => "raised",
                    Step::Cleared { .. } => "cleared",
                    Step::Nothing => "nothing",
                };
                (
                    self.rules.condition(t.condition).rule.to_string(),
                    what,
                    t.reason,
                )
            })
            .collect()
    }

    /// A reading at device time = gateway time `t`.
    fn read(&mut self, t: u64, vitals: &[(Vital, f64)], pump: Option<bool>) -> Effects {
        self.seq += 1;
        let r = Reading::of(self.seq, t, vitals, pump);
        let next = &mut self.next;
        match self.p.apply(&self.rules, &r, t, &mut |_| {
            *next += 1;
            *next
        }) {
            Applied::Accepted { effects, .. } => effects,
            Applied::Duplicate => panic!("not a duplicate"),
        }
    }

    fn read_s(&mut self, t: u64, vitals: &[(Vital, f64)], pump: Option<bool>) -> Seen {
        let e = self.read(t, vitals, pump);
        self.seen(&e)
    }

    fn tick_s(&mut self, t: u64) -> Seen {
        let e = self.tick(t);
        self.seen(&e)
    }

    fn phase(&mut self, phase: Phase, t: u64) -> Effects {
        self.session(
            SessionUpdate {
                phase,
                patient: Some("P-1".into()),
                session_number: None,
                session_count: None,
                route: None,
                ts: Some(t),
                by: Some("kim".into()),
                limits: None,
            },
            t,
        )
        .unwrap()
    }

    fn session(&mut self, u: SessionUpdate, t: u64) -> Result<Effects, SessionError> {
        let next = &mut self.next;
        self.p.set_session(&self.rules, &u, t, &mut |_| {
            *next += 1;
            *next
        })
    }

    fn tick(&mut self, t: u64) -> Effects {
        let next = &mut self.next;
        self.p.tick(&self.rules, t, &mut |_| {
            *next += 1;
            *next
        })
    }
}

fn sources<'a>(
    rules: &'a [RuleSpec],
    technical: &'a TechnicalSpec,
    session: &'a SessionSpec,
) -> RuleSources<'a> {
    RuleSources {
        rules,
        combined: &[],
        trends: &[],
        technical,
        session,
    }
}

fn hr_rule(id: &str, high: f64, phases: &[Phase]) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        vital: Vital::Hr,
        high: Some(high),
        priority: Priority::Medium,
        hysteresis: 5.0,
        phases: phases.to_vec(),
        ..RuleSpec::default()
    }
}

#[test]
fn phase_change_swaps_the_profile() {
    let rules = [
        hr_rule("hr_infusion", 110.0, &[Phase::Infusion]),
        hr_rule("hr_recovery", 130.0, &[Phase::Recovery]),
    ];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.phase(Phase::Baseline, T0);
    assert!(c.read_s(T0 + 1_000, &[(Vital::Hr, 120.0)], None).is_empty());
    let e = c.phase(Phase::Infusion, T0 + 2_000);
    assert_eq!(
        e.sessions,
        vec![(SessionChange::Phase, Some(Phase::Baseline))]
    );
    // HR 120 is over the infusion limit: raised by the phase change itself.
    assert_eq!(c.seen(&e), vec![("hr_infusion".into(), "raised", None)]);
    let e = c.phase(Phase::Recovery, T0 + 3_000);
    assert_eq!(
        c.seen(&e),
        vec![("hr_infusion".into(), "cleared", Some("phase_change"))]
    );
    assert_eq!(
        c.read_s(T0 + 4_000, &[(Vital::Hr, 135.0)], None),
        vec![("hr_recovery".into(), "raised", None)]
    );
    // Discharged: no physiological rule lists it; everything ends.
    c.phase(Phase::Discharged, T0 + 5_000);
    assert!(c.read_s(T0 + 6_000, &[(Vital::Hr, 200.0)], None).is_empty());
    assert_eq!(c.p.active_alarms().count(), 0);
}

#[test]
fn transitions_are_checked_and_stale_messages_ignored() {
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&[], &t, &s));
    c.phase(Phase::Baseline, T0);
    c.phase(Phase::Infusion, T0 + 10);
    let jump = SessionUpdate {
        phase: Phase::Discharged,
        patient: Some("P-1".into()),
        session_number: None,
        session_count: None,
        route: None,
        ts: Some(T0 + 20),
        by: None,
        limits: None,
    };
    assert!(matches!(
        c.session(jump.clone(), T0 + 20),
        Err(SessionError::Transition { .. })
    ));
    let old = SessionUpdate {
        phase: Phase::Recovery,
        ts: Some(T0 + 5),
        ..jump.clone()
    };
    assert!(matches!(
        c.session(old, T0 + 30),
        Err(SessionError::Stale { .. })
    ));
    // The same state again (a retained message redelivered) changes nothing.
    let again = SessionUpdate {
        phase: Phase::Infusion,
        ts: Some(T0 + 10),
        ..jump
    };
    assert!(c.session(again, T0 + 40).unwrap().is_empty());
}

proptest! {
    /// A limit relative to the baseline fires exactly when the value crosses the
    /// stricter of it and the absolute limit.
    #[test]
    fn baseline_relative_limit_fires_at_the_right_value(
        resting in prop::collection::vec(50.0f64..100.0, 3..30),
        value in 40.0f64..200.0,
    ) {
        let rules = [RuleSpec {
            id: "hr_surge".into(),
            vital: Vital::Hr,
            high: Some(150.0),
            above_baseline_ratio: Some(1.3),
            priority: Priority::Medium,
            phases: vec![Phase::Infusion],
            ..RuleSpec::default()
        }];
        let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
        let mut c = Chair::new(sources(&rules, &t, &s));
        c.phase(Phase::Baseline, T0);
        for (i, x) in resting.iter().enumerate() {
            c.read(T0 + 1_000 * (i as u64 + 1), &[(Vital::Hr, *x)], None);
        }
        c.phase(Phase::Infusion, T0 + 100_000);
        let mut sorted = resting.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let baseline = c.p.session().baseline_of(Vital::Hr).unwrap();
        prop_assert!((baseline - median).abs() <= 0.06, "baseline {baseline}, median {median}");
        let limit = (baseline * 1.3).min(150.0);
        // The phase change itself may already have raised (the last resting value
        // can be over the new limit): what counts is the state after `value`.
        c.read(T0 + 101_000, &[(Vital::Hr, value)], None);
        let raised = c.p.active_alarms().count() == 1;
        prop_assert_eq!(raised, value > limit, "value {} limit {}", value, limit);
    }

    /// A vital silent for longer than its allowance raises exactly one stale alarm at
    /// the first tick past the allowance, and it clears when data returns.
    #[test]
    fn stale_alarm_fires_on_time_and_clears_when_data_returns(
        allowance_s in 2u64..60,
        silence_s in 1u64..120,
    ) {
        let t = TechnicalSpec {
            stale_ms: BTreeMap::from([(Vital::Spo2, allowance_s * 1_000)]),
            ..TechnicalSpec::default()
        };
        let s = SessionSpec::default();
        let mut c = Chair::new(sources(&[], &t, &s));
        c.phase(Phase::Baseline, T0 - 1);
        c.phase(Phase::Infusion, T0);
        c.read(T0, &[(Vital::Spo2, 98.0)], None);
        let mut raised_at = None;
        for sec in 1..=silence_s {
            let seen = c.tick_s(T0 + sec * 1_000);
            if !seen.is_empty() {
                prop_assert_eq!(seen, vec![("spo2_stale".to_string(), "raised", None)]);
                prop_assert!(raised_at.is_none());
                raised_at = Some(sec);
            }
        }
        // Raised at the first whole second past the allowance, if the silence got there.
        prop_assert_eq!(raised_at, (silence_s > allowance_s).then_some(allowance_s + 1));
        let back = c.read_s(T0 + silence_s * 1_000 + 500, &[(Vital::Spo2, 97.0)], None);
        if raised_at.is_some() {
            prop_assert_eq!(back, vec![("spo2_stale".to_string(), "cleared", Some("data_returned"))]);
        } else {
            prop_assert!(back.is_empty());
        }
    }
}

/// A phase change is not data: an alarm about a silent device or vital stays up
/// across it, and clears only when the data returns.
#[test]
fn a_phase_change_does_not_end_an_alarm_about_silence() {
    let t = TechnicalSpec {
        offline_ms: 30_000,
        stale_ms: BTreeMap::from([(Vital::Spo2, 15_000)]),
        ..TechnicalSpec::default()
    };
    let s = SessionSpec::default();
    let mut c = Chair::new(sources(&[], &t, &s));
    c.phase(Phase::Baseline, T0 - 1);
    c.phase(Phase::Infusion, T0);
    c.read(T0, &[(Vital::Spo2, 98.0)], None);
    let mut raised = Vec::new();
    for sec in 1..=31 {
        raised.extend(c.tick_s(T0 + sec * 1_000));
    }
    assert_eq!(
        raised,
        vec![
            ("spo2_stale".into(), "raised", None),
            ("device_offline".into(), "raised", None)
        ]
    );
    let e = c.phase(Phase::Recovery, T0 + 40_000);
    assert!(c.seen(&e).is_empty(), "{:?}", c.seen(&e));
    assert!(c.tick_s(T0 + 41_000).is_empty());
    assert_eq!(c.p.active_alarms().count(), 2);
    let mut back = c.read_s(T0 + 42_000, &[(Vital::Spo2, 97.0)], None);
    back.sort();
    assert_eq!(
        back,
        vec![
            ("device_offline".into(), "cleared", Some("data_returned")),
            ("spo2_stale".into(), "cleared", Some("data_returned"))
        ]
    );
}

#[test]
fn device_offline_by_last_will_or_silence_and_pump_without_spo2() {
    let t = TechnicalSpec {
        offline_ms: 30_000,
        pump_without_spo2_ms: 15_000,
        ..TechnicalSpec::default()
    };
    let s = SessionSpec::default();
    let mut c = Chair::new(sources(&[], &t, &s));
    c.phase(Phase::Baseline, T0 - 1);
    c.phase(Phase::Infusion, T0);
    c.read(T0, &[(Vital::Spo2, 98.0)], Some(true));
    assert!(c.tick_s(T0 + 15_000).is_empty());
    // SpO2 stops, the pump keeps reporting: after 15 s the infusion is unmonitored.
    c.read(T0 + 10_000, &[], Some(true));
    assert_eq!(
        c.tick_s(T0 + 16_000),
        vec![("pump_without_spo2".into(), "raised", None)]
    );
    // A pump that has itself gone silent is not known to run: no alarm of this kind
    // (a silent device is the offline alarm's business).
    {
        let mut quiet = Chair::new(sources(&[], &t, &s));
        quiet.phase(Phase::Baseline, T0 - 1);
        quiet.phase(Phase::Infusion, T0);
        quiet.read(T0, &[(Vital::Spo2, 98.0)], Some(true));
        assert!(quiet
            .tick_s(T0 + 40_000)
            .iter()
            .all(|(rule, _, _)| rule != "pump_without_spo2"));
    }
    // A pump that reports only every 20 s still counts as running.
    {
        let mut rare = Chair::new(sources(&[], &t, &s));
        rare.phase(Phase::Baseline, T0 - 1);
        rare.phase(Phase::Infusion, T0);
        rare.read(T0, &[], Some(true));
        let mut raised = 0;
        for k in 1..=6u64 {
            let mut seen = Vec::new();
            if k % 2 == 0 {
                seen.extend(rare.read_s(T0 + k * 10_000, &[], Some(true)));
            }
            seen.extend(rare.tick_s(T0 + k * 10_000 + 5_000));
            raised += seen
                .iter()
                .filter(|(r, w, _)| r == "pump_without_spo2" && *w == "raised")
                .count();
            assert!(seen.iter().all(|(_, w, _)| *w != "cleared"), "{seen:?}");
        }
        assert_eq!(raised, 1);
    }
    // The pump stops: that alarm ends.
    assert_eq!(
        c.read_s(T0 + 17_000, &[], Some(false)),
        vec![("pump_without_spo2".into(), "cleared", Some("data_returned"))]
    );
    // Nothing at all for 30 s: device offline.
    assert!(c.tick_s(T0 + 47_000).is_empty());
    assert_eq!(
        c.tick_s(T0 + 48_000),
        vec![("device_offline".into(), "raised", None)]
    );
    assert_eq!(
        c.read_s(T0 + 49_000, &[(Vital::Spo2, 97.0)], Some(false)),
        vec![("device_offline".into(), "cleared", Some("data_returned"))]
    );
    // The last will: offline at once, online again when it says so.
    let next = &mut c.next;
    let e =
        c.p.set_device_online(&c.rules, false, T0 + 50_000, &mut |_| {
            *next += 1;
            *next
        });
    assert_eq!(c.seen(&e), vec![("device_offline".into(), "raised", None)]);
    let e =
        c.p.set_device_online(&c.rules, true, T0 + 51_000, &mut |_| 0);
    assert_eq!(
        c.seen(&e),
        vec![("device_offline".into(), "cleared", Some("data_returned"))]
    );
}

#[test]
fn latched_alarm_stays_until_acknowledged() {
    let rules = [RuleSpec {
        latching: true,
        ..hr_rule("hr_high", 120.0, &[Phase::Idle])
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    assert_eq!(c.read_s(T0, &[(Vital::Hr, 140.0)], None).len(), 1);
    assert!(c.read_s(T0 + 1_000, &[(Vital::Hr, 70.0)], None).is_empty());
    assert!(c.tick_s(T0 + 600_000).is_empty());
    let id = c.p.active_alarms().next().unwrap();
    let e = c.p.acknowledged(&c.rules, id, T0 + 601_000);
    assert_eq!(
        c.seen(&e),
        vec![("hr_high".into(), "cleared", Some("acknowledged"))]
    );
    assert_eq!(c.p.active_alarms().count(), 0);
}

#[test]
fn combined_rule_needs_every_part_at_once() {
    let combined = [CombinedRuleSpec {
        id: "respiratory_depression".into(),
        all: vec![
            PartSpec {
                vital: Vital::Rr,
                low: Some(10.0),
                high: None,
                below_baseline: None,
                above_baseline: None,
                below_baseline_ratio: None,
                above_baseline_ratio: None,
            },
            PartSpec {
                vital: Vital::Spo2,
                low: Some(95.0),
                high: None,
                below_baseline: Some(3.0),
                above_baseline: None,
                below_baseline_ratio: None,
                above_baseline_ratio: None,
            },
        ],
        priority: Priority::High,
        delay_ms: 0,
        hysteresis: 1.0,
        phases: vec![
            Phase::Idle,
            Phase::Baseline,
            Phase::Infusion,
            Phase::Recovery,
        ],
        max_session: None,
        latching: false,
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(RuleSources {
        rules: &[],
        combined: &combined,
        trends: &[],
        technical: &t,
        session: &s,
    });
    c.phase(Phase::Baseline, T0);
    c.read(T0 + 1, &[(Vital::Spo2, 99.0), (Vital::Rr, 14.0)], None);
    c.read(T0 + 2, &[(Vital::Spo2, 99.0), (Vital::Rr, 14.0)], None);
    c.phase(Phase::Infusion, T0 + 3);
    // Baseline 99: SpO2 "falling" means below 96 (99 - 3, stricter than 95).
    assert!(c.read_s(T0 + 1_000, &[(Vital::Rr, 8.0)], None).is_empty());
    let e = c.read(T0 + 2_000, &[(Vital::Spo2, 95.5)], None);
    assert_eq!(
        c.seen(&e),
        vec![("respiratory_depression".into(), "raised", None)]
    );
    assert_eq!(e.transitions[0].parts.len(), 2);
    assert_eq!(e.transitions[0].parts[1].limit, 96.0);
    // RR back above 10 + 1: one part recovered, the alarm clears.
    assert_eq!(
        c.read_s(T0 + 3_000, &[(Vital::Rr, 12.0)], None),
        vec![("respiratory_depression".into(), "cleared", None)]
    );
    // Raised again; then the SpO2 probe stops while RR stays low. No SpO2 is not
    // a recovery: the alarm stays until a current value says it ended.
    c.read(T0 + 4_000, &[(Vital::Rr, 8.0), (Vital::Spo2, 95.0)], None);
    assert_eq!(c.p.active_alarms().count(), 1);
    for k in 1..=20u64 {
        let seen = c.read_s(T0 + 4_000 + k * 10_000, &[(Vital::Rr, 8.0)], None);
        assert!(seen.is_empty(), "{seen:?} at {k}0 s without SpO2");
    }
    assert_eq!(
        c.read_s(T0 + 300_000, &[(Vital::Rr, 8.0), (Vital::Spo2, 98.0)], None),
        vec![("respiratory_depression".into(), "cleared", None)]
    );
}

#[test]
fn trend_rule_fires_on_a_fast_rise_not_a_slow_one() {
    let trends = [TrendRuleSpec {
        id: "sbp_rising".into(),
        vital: Vital::Sbp,
        rise: Some(30.0),
        fall: None,
        window_ms: 600_000,
        priority: Priority::Medium,
        hysteresis: 5.0,
        phases: vec![Phase::Idle],
        max_session: None,
        latching: false,
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(RuleSources {
        rules: &[],
        combined: &[],
        trends: &trends,
        technical: &t,
        session: &s,
    });
    // +10 mmHg every 5 minutes: 30 over 15 minutes, never more than 20 in 10.
    for (i, sbp) in [120.0, 130.0, 140.0, 150.0].iter().enumerate() {
        let e = c.read(T0 + 300_000 * i as u64, &[(Vital::Sbp, *sbp)], None);
        assert!(c.seen(&e).is_empty(), "slow rise at {sbp}");
    }
    // Then +35 within 5 minutes.
    assert_eq!(
        c.read_s(T0 + 1_200_000, &[(Vital::Sbp, 185.0)], None),
        vec![("sbp_rising".into(), "raised", None)]
    );
}

#[test]
fn per_patient_limit_changes_apply_at_once() {
    let rules = [hr_rule("hr_high", 120.0, &[Phase::Idle])];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    assert!(c.read_s(T0, &[(Vital::Hr, 115.0)], None).is_empty());
    let next = &mut c.next;
    let e =
        c.p.set_limit(
            &c.rules,
            "hr_high",
            LimitOverride {
                low: None,
                high: Some(110.0),
            },
            "dr.lee",
            T0 + 1,
            &mut |_| {
                *next += 1;
                *next
            },
        )
        .unwrap();
    assert_eq!(e.sessions, vec![(SessionChange::Limits, None)]);
    assert_eq!(c.seen(&e), vec![("hr_high".into(), "raised", None)]);
    assert_eq!(c.p.session().by.as_deref(), Some("dr.lee"));
    let bad = c.p.set_limit(
        &c.rules,
        "hr_high",
        LimitOverride {
            low: Some(40.0),
            high: None,
        },
        "dr.lee",
        T0 + 2,
        &mut |_| 0,
    );
    assert!(matches!(bad, Err(SessionError::Limit(_))));
    assert!(matches!(
        c.p.set_limit(
            &c.rules,
            "nope",
            LimitOverride::default(),
            "x",
            T0,
            &mut |_| 0
        ),
        Err(SessionError::UnknownRule(_))
    ));
}

#[test]
fn discharge_readiness_after_a_stable_recovery() {
    let s = SessionSpec {
        discharge_stable_ms: 600_000,
        discharge_band: BTreeMap::from([(Vital::Sbp, 20.0), (Vital::Hr, 20.0)]),
        ..SessionSpec::default()
    };
    let rules = [hr_rule("hr_high", 130.0, &[Phase::Recovery])];
    let t = TechnicalSpec::default();
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.phase(Phase::Baseline, T0);
    c.read(T0 + 1, &[(Vital::Sbp, 125.0), (Vital::Hr, 70.0)], None);
    c.phase(Phase::Infusion, T0 + 2);
    c.read(T0 + 3, &[(Vital::Sbp, 170.0), (Vital::Hr, 95.0)], None);
    c.phase(Phase::Recovery, T0 + 2_400_000);
    let mut at = T0 + 2_400_000;
    let mut ready_at = None;
    for minute in 1..=30u64 {
        at = T0 + 2_400_000 + minute * 60_000;
        // Still high for 5 minutes, then back within 20 of baseline.
        let sbp = if minute <= 5 { 160.0 } else { 135.0 };
        let e = c.read(at, &[(Vital::Sbp, sbp), (Vital::Hr, 80.0)], None);
        if e.sessions.contains(&(SessionChange::DischargeReady, None)) {
            ready_at = Some(minute);
            break;
        }
    }
    // In band from minute 6; stable for 10 minutes at minute 16.
    assert_eq!(ready_at, Some(16));
    assert!(c.p.session().discharge_ready);
    // An alarm takes the flag away.
    let e = c.read(at + 60_000, &[(Vital::Hr, 140.0)], None);
    assert!(e.sessions.contains(&(SessionChange::DischargeReady, None)));
    assert!(!c.p.session().discharge_ready);
}

#[test]
fn discharge_readiness_counts_only_current_values() {
    // DBP has no stale allowance of its own (it comes with SBP): it counts for as
    // long as SBP's, 7 minutes. SpO2 has none, nor has HR: the stable time, 10
    // minutes.
    let s = SessionSpec {
        discharge_stable_ms: 600_000,
        discharge_band: BTreeMap::from([
            (Vital::Sbp, 20.0),
            (Vital::Dbp, 15.0),
            (Vital::Spo2, 3.0),
        ]),
        ..SessionSpec::default()
    };
    let t = TechnicalSpec {
        stale_ms: BTreeMap::from([(Vital::Sbp, 420_000)]),
        ..TechnicalSpec::default()
    };
    let mut c = Chair::new(sources(&[], &t, &s));
    c.phase(Phase::Baseline, T0);
    let normal = [(Vital::Sbp, 125.0), (Vital::Dbp, 80.0), (Vital::Spo2, 98.0)];
    c.read(T0 + 1, &normal, None);
    c.phase(Phase::Infusion, T0 + 2);
    let start = T0 + 2_400_000;
    c.phase(Phase::Recovery, start);
    c.read(start + 1, &normal, None);
    // A cuff that reports SBP alone from then on: DBP's value grows old.
    let mut ready = Vec::new();
    for minute in 1..=25u64 {
        let at = start + minute * 60_000;
        let vitals: &[(Vital, f64)] = if minute <= 12 {
            &[(Vital::Sbp, 126.0), (Vital::Spo2, 98.0)]
        } else {
            &normal
        };
        let e = c.read(at, vitals, None);
        if e.sessions.contains(&(SessionChange::DischargeReady, None)) {
            ready.push((minute, c.p.session().discharge_ready));
        }
    }
    // Never ready on a DBP 7 minutes old; once DBP comes again (minute 13), ready 10
    // minutes later.
    assert_eq!(ready, vec![(23, true)]);
    // SpO2 silent for longer than the stable time takes readiness away.
    let at = start + 25 * 60_000 + 600_001;
    let e = c.read(at, &[(Vital::Sbp, 126.0), (Vital::Dbp, 80.0)], None);
    assert!(e.sessions.contains(&(SessionChange::DischargeReady, None)));
    assert!(!c.p.session().discharge_ready);
}

#[test]
fn early_session_rule_applies_only_to_early_sessions_and_pump_rules_only_iv() {
    let rules = [RuleSpec {
        max_session: Some(3),
        ..hr_rule("hr_early", 100.0, &[Phase::Infusion])
    }];
    let t = TechnicalSpec {
        pump_without_spo2_ms: 15_000,
        ..TechnicalSpec::default()
    };
    let s = SessionSpec::default();
    for (k, route, expect_hr, expect_pump) in [
        (2, Route::Iv, true, true),
        (4, Route::Iv, false, true),
        (2, Route::Intranasal, true, false),
    ] {
        let mut c = Chair::new(sources(&rules, &t, &s));
        let u = SessionUpdate {
            phase: Phase::Infusion,
            patient: Some("P".into()),
            session_number: Some(k),
            session_count: Some(6),
            route: Some(route),
            ts: Some(T0),
            by: None,
            limits: None,
        };
        c.session(u, T0).unwrap();
        let hr = !c
            .read_s(T0 + 1, &[(Vital::Hr, 110.0)], Some(true))
            .is_empty();
        // The pump keeps reporting; SpO2 never comes.
        c.read(T0 + 10_000, &[], Some(true));
        let pump = c
            .tick_s(T0 + 20_000)
            .iter()
            .any(|(rule, what, _)| rule == "pump_without_spo2" && *what == "raised");
        assert_eq!(
            (hr, pump),
            (expect_hr, expect_pump),
            "session {k} {route:?}"
        );
    }
}

/// The session event a gateway recorded for P-1's infusion (begun at T0 + 10),
/// as a restarted gateway reads it back.
fn infusion_recorded(t: &TechnicalSpec, s: &SessionSpec) -> crate::core::event::SessionEvent {
    let mut c = Chair::new(sources(&[], t, s));
    c.phase(Phase::Baseline, T0);
    c.phase(Phase::Infusion, T0 + 10);
    crate::core::event::SessionEvent::new(
        std::sync::Arc::from("n/1"),
        SessionChange::Phase,
        c.p.session(),
        T0 + 20,
    )
}

/// The restored exception is for the first newer message only, and never for a
/// dashboard's command (made on the restored phase the station shows).
#[test]
fn a_restored_session_steps_after_its_first_newer_message_and_for_commands() {
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let recorded = infusion_recorded(&t, &s);
    let infusion = SessionUpdate {
        session_count: None,
        ..update(Phase::Infusion, "P-1", None, None, T0 + 10)
    };
    let jump = |ts: Option<u64>| SessionUpdate {
        phase: Phase::Discharged,
        ts,
        ..infusion.clone()
    };
    let refused = |r: Result<Effects, SessionError>| {
        matches!(
            r,
            Err(SessionError::Transition {
                from: Phase::Infusion,
                to: Phase::Discharged
            })
        )
    };
    // A command from a station, straight after the restart.
    let mut d = Chair::new(sources(&[], &t, &s));
    d.p.restore(&d.rules, &recorded, T0 + 1_000);
    assert!(refused(d.session(jump(None), T0 + 1_001)));
    // Nor does a command that changes nothing end the exception: a newer message
    // from the clinic system may still say what happened meanwhile.
    {
        let mut e = Chair::new(sources(&[], &t, &s));
        e.p.restore(&e.rules, &recorded, T0 + 1_000);
        let same = SessionUpdate {
            ts: None,
            ..infusion.clone()
        };
        assert!(e.session(same, T0 + 1_001).unwrap().is_empty());
        assert!(e.session(jump(Some(T0 + 500)), T0 + 1_002).is_ok());
    }
    // A newer message that changes nothing confirms the restored session.
    let confirm = SessionUpdate {
        ts: Some(T0 + 500),
        ..infusion.clone()
    };
    assert!(d.session(confirm, T0 + 1_002).unwrap().is_empty());
    assert!(refused(d.session(jump(Some(T0 + 600)), T0 + 1_003)));
}

#[test]
fn a_restored_session_accepts_what_happened_while_the_gateway_was_down() {
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let recorded = infusion_recorded(&t, &s);
    // A new gateway restores the infusion; meanwhile the patient was discharged.
    let mut d = Chair::new(sources(&[], &t, &s));
    d.p.restore(&d.rules, &recorded, T0 + 1_000);
    let stale = SessionUpdate {
        phase: Phase::Infusion,
        patient: Some("P-1".into()),
        session_number: None,
        session_count: None,
        route: None,
        ts: Some(T0 + 10),
        by: None,
        limits: None,
    };
    // The retained message that set the infusion, seen again: nothing changes.
    assert!(d.session(stale.clone(), T0 + 1_001).unwrap().is_empty());
    let discharged = SessionUpdate {
        phase: Phase::Discharged,
        ts: Some(T0 + 500),
        ..stale
    };
    let e = d.session(discharged.clone(), T0 + 1_002).unwrap();
    assert_eq!(
        e.sessions,
        vec![(SessionChange::Phase, Some(Phase::Infusion))]
    );
    // Live again: the usual one-step rule applies.
    let back = SessionUpdate {
        phase: Phase::Infusion,
        ts: Some(T0 + 600),
        ..discharged
    };
    assert!(matches!(
        d.session(back, T0 + 1_003),
        Err(SessionError::Transition { .. })
    ));
}

fn update(
    phase: Phase,
    patient: &str,
    k: Option<u16>,
    route: Option<Route>,
    ts: u64,
) -> SessionUpdate {
    SessionUpdate {
        phase,
        patient: Some(patient.into()),
        session_number: k,
        session_count: Some(6),
        route,
        ts: Some(ts),
        by: None,
        limits: None,
    }
}

#[test]
fn same_phase_changes_of_route_course_or_patient_are_applied() {
    let rules = [RuleSpec {
        max_session: Some(3),
        ..hr_rule("hr_early", 100.0, &[Phase::Infusion])
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.session(
        update(Phase::Baseline, "P-1", Some(5), Some(Route::Im), T0),
        T0,
    )
    .unwrap();
    c.read(T0 + 1, &[(Vital::Hr, 70.0)], None);
    c.read(T0 + 2, &[(Vital::Hr, 72.0)], None);
    c.session(
        update(Phase::Infusion, "P-1", Some(5), Some(Route::Im), T0 + 10),
        T0 + 10,
    )
    .unwrap();
    assert_eq!(c.p.session().baseline_of(Vital::Hr), Some(71.0));
    assert!(c.read_s(T0 + 20, &[(Vital::Hr, 110.0)], None).is_empty());
    // Corrected: it is session 1, IV. The early-session rule applies at once.
    let e = c
        .session(
            update(Phase::Infusion, "P-1", Some(1), Some(Route::Iv), T0 + 30),
            T0 + 30,
        )
        .unwrap();
    assert_eq!(e.sessions, vec![(SessionChange::Details, None)]);
    assert_eq!(c.seen(&e), vec![("hr_early".into(), "raised", None)]);
    assert_eq!(c.p.session().route, Route::Iv);
    // A different patient in the same phase is a new session: no baseline carried over.
    let e = c
        .session(update(Phase::Infusion, "P-2", None, None, T0 + 40), T0 + 40)
        .unwrap();
    assert_eq!(
        e.sessions,
        vec![(SessionChange::Phase, Some(Phase::Infusion))]
    );
    assert_eq!(c.p.session().baseline_of(Vital::Hr), None);
    assert_eq!(c.p.session().session_number, None);
    assert_eq!(c.p.session().patient.as_deref(), Some("P-2"));
}

#[test]
fn minutes_into_the_infusion_count_from_the_session_on_the_event_clock() {
    let rules = [hr_rule("hr_high", 100.0, &[Phase::Infusion])];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.phase(Phase::Baseline, T0 - 600_000);
    c.phase(Phase::Infusion, T0);
    // The device clock is 10 minutes behind; the event happens 30 minutes in.
    let at = T0 + 30 * 60_000;
    c.read(at - 600_000, &[(Vital::Hr, 120.0)], None);
    let ctx = c.p.context(&c.rules, 0, at);
    assert_eq!(ctx.infusion_minute, Some(30.0));
    assert_eq!(ctx.phase, Phase::Infusion);
}

#[test]
fn an_alarm_whose_limit_disappears_ends() {
    // Relative-only rule: without a baseline, only a per-patient limit gives it one.
    let rules = [RuleSpec {
        id: "hr_surge".into(),
        vital: Vital::Hr,
        above_baseline: Some(30.0),
        priority: Priority::Medium,
        phases: vec![Phase::Idle],
        ..RuleSpec::default()
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.read(T0, &[(Vital::Hr, 120.0)], None);
    let high = LimitOverride {
        low: None,
        high: Some(110.0),
    };
    let next = &mut c.next;
    let e =
        c.p.set_limit(&c.rules, "hr_surge", high, "dr.lee", T0 + 1, &mut |_| {
            *next += 1;
            *next
        })
        .unwrap();
    assert_eq!(c.seen(&e), vec![("hr_surge".into(), "raised", None)]);
    let e =
        c.p.set_limit(
            &c.rules,
            "hr_surge",
            LimitOverride::default(),
            "dr.lee",
            T0 + 2,
            &mut |_| 0,
        )
        .unwrap();
    assert_eq!(
        c.seen(&e),
        vec![("hr_surge".into(), "cleared", Some("no_limit"))]
    );
}

#[test]
fn a_restored_alarm_waits_for_data_and_belongs_to_its_patient() {
    let rules = [RuleSpec {
        latching: true,
        ..hr_rule("hr_high", 100.0, &[Phase::Infusion])
    }];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.session(update(Phase::Baseline, "P-1", Some(1), None, T0), T0)
        .unwrap();
    c.session(
        update(Phase::Infusion, "P-1", Some(1), None, T0 + 10),
        T0 + 10,
    )
    .unwrap();
    let e = c.read(T0 + 20, &[(Vital::Hr, 130.0)], None);
    assert_eq!(c.seen(&e), vec![("hr_high".into(), "raised", None)]);
    let raised = crate::core::alarm::tests::event(
        c.p.active_alarms().next().unwrap(),
        crate::core::AlarmState::Raised,
    );
    let alarm = crate::core::AlarmEvent {
        rule: std::sync::Arc::from("hr_high"),
        condition: crate::core::Direction::High,
        context: c.p.context(&c.rules, 0, T0 + 20),
        ..raised
    };
    let recorded = crate::core::event::SessionEvent::new(
        std::sync::Arc::from("n/1"),
        SessionChange::Phase,
        c.p.session(),
        T0 + 10,
    );
    // After a restart: the alarm is back; a session change before any reading
    // must not end it.
    let mut d = Chair::new(sources(&rules, &t, &s));
    d.p.restore(&d.rules, &recorded, T0 + 1_000);
    assert!(d.p.restore_alarm(&d.rules, &alarm));
    let e = d
        .session(
            update(Phase::Infusion, "P-1", Some(1), Some(Route::Iv), T0 + 2_000),
            T0 + 2_000,
        )
        .unwrap();
    assert!(d.seen(&e).is_empty(), "{:?}", d.seen(&e));
    assert_eq!(d.p.active_alarms().next(), Some(alarm.id));
    // Another patient in the chair: not theirs.
    let mut other = Chair::new(sources(&rules, &t, &s));
    let mut theirs = recorded.clone();
    theirs.patient = Some(std::sync::Arc::from("P-2"));
    other.p.restore(&other.rules, &theirs, T0 + 1_000);
    assert!(!other.p.restore_alarm(&other.rules, &alarm));
}

/// A session called off, or another patient in the chair: the alarms about the
/// previous patient's values end, and do not stay to escalate on an empty chair.
#[test]
fn the_previous_patients_alarms_end_with_their_session() {
    let rules = [hr_rule("hr_high", 100.0, &[Phase::Idle, Phase::Baseline])];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.phase(Phase::Baseline, T0);
    assert_eq!(
        c.read_s(T0 + 1_000, &[(Vital::Hr, 130.0)], None),
        vec![("hr_high".into(), "raised", None)]
    );
    let called_off = c.phase(Phase::Idle, T0 + 2_000);
    assert_eq!(
        c.seen(&called_off),
        vec![("hr_high".into(), "cleared", Some("new_session"))]
    );
    assert_eq!(c.p.active_alarms().next(), None);
    let ended = called_off.transitions[0].value;
    assert_eq!(ended, 130.0, "reported with the value it was about");

    // Another patient sits down in the same phase.
    c.phase(Phase::Baseline, T0 + 3_000);
    c.read(T0 + 4_000, &[(Vital::Hr, 130.0)], None);
    let other = c.session(
        SessionUpdate {
            phase: Phase::Baseline,
            patient: Some("P-2".into()),
            session_number: None,
            session_count: None,
            route: None,
            ts: Some(T0 + 5_000),
            by: None,
            limits: None,
        },
        T0 + 5_000,
    );
    assert_eq!(
        c.seen(&other.unwrap()),
        vec![("hr_high".into(), "cleared", Some("new_session"))]
    );
    // Their own readings are judged as they come.
    assert_eq!(
        c.read_s(T0 + 6_000, &[(Vital::Hr, 125.0)], None),
        vec![("hr_high".into(), "raised", None)]
    );
}

/// A copy's session against the journal's latest: a session begun in between is
/// told apart from the same one changed, even for the same patient.
#[test]
fn a_session_begun_since_a_copy_is_told_apart() {
    let rules = [hr_rule(
        "hr_high",
        100.0,
        &[Phase::Baseline, Phase::Infusion],
    )];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut copy = Chair::new(sources(&rules, &t, &s));
    copy.phase(Phase::Baseline, T0);
    let mut later = Chair::new(sources(&rules, &t, &s));
    let event =
        |c: &Chair| SessionEvent::new("n/1".into(), SessionChange::Phase, c.p.session(), T0);
    later.phase(Phase::Baseline, T0);
    assert!(
        !copy.p.session_began_since(&event(&later)),
        "the same session"
    );
    later.phase(Phase::Infusion, T0 + 1_000);
    assert!(
        !copy.p.session_began_since(&event(&later)),
        "the same, changed"
    );
    later.phase(Phase::Recovery, T0 + 1_500);
    later.phase(Phase::Discharged, T0 + 1_800);
    later.phase(Phase::Idle, T0 + 2_000);
    assert!(copy.p.session_began_since(&event(&later)));
    later.phase(Phase::Baseline, T0 + 3_000);
    assert!(copy.p.session_began_since(&event(&later)), "baseline again");
    copy.phase(Phase::Infusion, T0 + 1_000);
    later.phase(Phase::Infusion, T0 + 4_000);
    assert!(copy.p.session_began_since(&event(&later)), "infusion again");
}

#[test]
fn an_empty_chair_is_not_judged_on_the_last_patients_values() {
    // A limit for chairs without a session, and none in the session's phases.
    let rules = [hr_rule("hr_idle", 100.0, &[Phase::Idle])];
    let (t, s) = (TechnicalSpec::default(), SessionSpec::default());
    let mut c = Chair::new(sources(&rules, &t, &s));
    c.phase(Phase::Baseline, T0);
    c.phase(Phase::Infusion, T0 + 600_000);
    c.phase(Phase::Recovery, T0 + 3_000_000);
    c.read(T0 + 3_100_000, &[(Vital::Hr, 120.0)], None);
    c.phase(Phase::Discharged, T0 + 5_000_000);
    let idle = c.session(
        SessionUpdate {
            phase: Phase::Idle,
            patient: None,
            session_number: None,
            session_count: None,
            route: None,
            ts: Some(T0 + 5_300_000),
            by: None,
            limits: None,
        },
        T0 + 5_300_000,
    );
    assert_eq!(c.seen(&idle.unwrap()), vec![]);
    assert_eq!(c.p.latest().get(Vital::Hr), None);
    // A late delivery of the previous patient's reading does not bring it back.
    let late = Reading {
        seq: 999,
        ts: T0 + 5_200_000,
        values: {
            let mut v = [None; 6];
            v[Vital::Hr.index()] = Some(130.0);
            v
        },
        pump: None,
    };
    let next = &mut c.next;
    let applied = c.p.apply(&c.rules, &late, T0 + 5_350_000, &mut |_| {
        *next += 1;
        *next
    });
    match applied {
        Applied::Accepted {
            effects,
            late_values,
            ..
        } => {
            assert!(effects.transitions.is_empty());
            assert_eq!(late_values, 1);
        }
        Applied::Duplicate => panic!("not a duplicate"),
    }
    assert_eq!(c.p.latest().get(Vital::Hr), None);
    // The chair's own readings are judged again as they come.
    assert_eq!(
        c.read_s(T0 + 5_400_000, &[(Vital::Hr, 120.0)], None),
        vec![("hr_idle".into(), "raised", None)]
    );
}
