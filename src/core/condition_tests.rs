use super::*;
use proptest::prelude::*;

fn spo2_low(delay_ms: u64, latching: bool) -> Condition {
    Condition {
        rule: Arc::from("spo2_low"),
        check: Check::Threshold {
            vital: Vital::Spo2,
            direction: Direction::Low,
            limit: Limit {
                absolute: Some(90.0),
                ..Limit::default()
            },
        },
        priority: Priority::High,
        delay_ms,
        hysteresis: 2.0,
        phases: PhaseSet::MONITORED,
        max_session: None,
        needs_pump: false,
        latching,
    }
}

/// Feed values one second apart; return the steps that were not `Nothing`.
fn run(c: &Condition, values: &[f64]) -> (Vec<Step>, ConditionState) {
    let mut state = ConditionState::Normal;
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    let steps = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let m = Measure::against(*v, 90.0, Direction::Low, c.hysteresis);
            c.step(&mut state, &m, 1_000 * i as u64, &mut next)
        })
        .filter(|s| *s != Step::Nothing)
        .collect();
    (steps, state)
}

#[test]
fn stricter_of_absolute_and_baseline_limits_applies() {
    let high = Limit {
        absolute: Some(180.0),
        from_baseline: Some(40.0),
        baseline_ratio: Some(1.3),
        widens: false,
    };
    // Baseline 120: 160 (delta) and 156 (ratio) are both under 180: 156.
    assert_eq!(
        high.effective(Direction::High, Some(120.0), None),
        Some(156.0)
    );
    // Baseline 150: 190 and 195 are over 180: the absolute limit is stricter.
    assert_eq!(
        high.effective(Direction::High, Some(150.0), None),
        Some(180.0)
    );
    assert_eq!(high.effective(Direction::High, None, None), Some(180.0));
    assert_eq!(
        high.effective(Direction::High, None, Some(170.0)),
        Some(170.0)
    );
    let low = Limit {
        absolute: Some(90.0),
        from_baseline: Some(4.0),
        baseline_ratio: None,
        widens: false,
    };
    assert_eq!(low.effective(Direction::Low, Some(97.0), None), Some(93.0));
    let relative_only = Limit {
        from_baseline: Some(4.0),
        ..Limit::default()
    };
    assert_eq!(relative_only.effective(Direction::Low, None, None), None);
}

#[test]
fn a_widening_limit_follows_a_baseline_beyond_the_absolute_one() {
    let high = Limit {
        absolute: Some(140.0),
        from_baseline: Some(30.0),
        baseline_ratio: Some(1.3),
        widens: true,
    };
    // Baseline 150: the stricter relative limit is 180 (195 by ratio), beyond 140.
    assert_eq!(
        high.effective(Direction::High, Some(150.0), None),
        Some(180.0)
    );
    // Baseline 100: 130 is inside 140: the absolute limit stays.
    assert_eq!(
        high.effective(Direction::High, Some(100.0), None),
        Some(140.0)
    );
    assert_eq!(high.effective(Direction::High, None, None), Some(140.0));
    // A clinician's limit for the patient applies as set.
    assert_eq!(
        high.effective(Direction::High, Some(150.0), Some(150.0)),
        Some(150.0)
    );
    let low = Limit {
        absolute: Some(90.0),
        from_baseline: Some(20.0),
        baseline_ratio: None,
        widens: true,
    };
    assert_eq!(low.effective(Direction::Low, Some(100.0), None), Some(80.0));
    assert_eq!(low.effective(Direction::Low, Some(125.0), None), Some(90.0));
}

#[test]
fn latched_alarm_stays_until_acknowledged() {
    let c = spo2_low(0, true);
    let (steps, mut state) = run(&c, &[95.0, 85.0, 97.0, 97.0]);
    assert_eq!(steps, vec![Step::Raised { alarm_id: 1 }]);
    assert_eq!(state, ConditionState::Latched { alarm_id: 1 });
    assert_eq!(
        Condition::acknowledge(&mut state),
        Step::Cleared { alarm_id: 1 }
    );
}

#[test]
fn latched_alarm_acknowledged_while_breached_clears_on_recovery() {
    let c = spo2_low(0, true);
    let (_, mut state) = run(&c, &[85.0]);
    assert_eq!(Condition::acknowledge(&mut state), Step::Nothing);
    let m = Measure::against(97.0, 90.0, Direction::Low, 2.0);
    assert_eq!(
        c.step(&mut state, &m, 5_000, &mut || 9),
        Step::Cleared { alarm_id: 1 }
    );
}

#[test]
fn delay_counts_from_the_first_breach() {
    let c = spo2_low(3_000, false);
    assert!(run(&c, &[95.0, 89.0, 89.0, 89.0]).0.is_empty());
    assert_eq!(
        run(&c, &[95.0, 89.0, 89.0, 89.0, 89.0]).0,
        vec![Step::Raised { alarm_id: 1 }]
    );
}

proptest! {
    /// Raises and clears alternate, starting with a raise, with fresh ids; a
    /// non-latching condition never ends in `Latched`.
    #[test]
    fn raises_and_clears_alternate(values in prop::collection::vec(70.0f64..100.0, 0..300),
                                   delay_s in 0u64..5) {
        let c = spo2_low(delay_s * 1_000, false);
        let (steps, state) = run(&c, &values);
        let mut active: Option<u64> = None;
        let mut last_id = 0;
        for s in steps {
            match s {
                Step::Raised { alarm_id } => {
                    prop_assert!(active.is_none());
                    prop_assert!(alarm_id > last_id);
                    last_id = alarm_id;
                    active = Some(alarm_id);
                }
                Step::Cleared { alarm_id } => {
                    prop_assert_eq!(active, Some(alarm_id));
                    active = None;
                }
                Step::Nothing => unreachable!(),
            }
        }
        let latched = matches!(state, ConditionState::Latched { .. });
        prop_assert!(!latched);
    }

    /// A latching condition raises at most once however the value moves, until
    /// it is acknowledged: it never clears on its own.
    #[test]
    fn latching_never_clears_by_itself(values in prop::collection::vec(70.0f64..100.0, 0..300)) {
        let c = spo2_low(0, true);
        let (steps, _) = run(&c, &values);
        prop_assert!(steps.len() <= 1);
        let all_raised = steps.iter().all(|s| matches!(s, Step::Raised { .. }));
        prop_assert!(all_raised);
    }

    /// A value oscillating within the hysteresis band raises at most once.
    #[test]
    fn oscillation_inside_hysteresis_raises_once(wobble in prop::collection::vec(88.0f64..91.99, 1..300)) {
        let c = spo2_low(0, false);
        let mut values = vec![89.0];
        values.extend(wobble);
        prop_assert_eq!(run(&c, &values).0, vec![Step::Raised { alarm_id: 1 }]);
    }
}
