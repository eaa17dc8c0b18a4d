//! Rule validation and compilation.

use super::spec::monitored_phases;
use super::*;

fn spo2_rule() -> RuleSpec {
    RuleSpec {
        id: "spo2_low".into(),
        vital: Vital::Spo2,
        low: Some(98.0),
        priority: Priority::High,
        hysteresis: 3.0,
        ..RuleSpec::default()
    }
}

#[test]
fn one_sided_rule_that_could_never_clear_is_refused() {
    let errs = RuleSet::compile(&[spo2_rule()]).unwrap_err();
    assert_eq!(errs[0].key, "rules[0].hysteresis");
    assert!(RuleSet::compile(&[RuleSpec {
        hysteresis: 2.0,
        ..spo2_rule()
    }])
    .is_ok());
}

#[test]
fn compile_reports_every_bad_field() {
    let bad = RuleSpec {
        id: "x y".into(),
        vital: Vital::Spo2,
        low: Some(95.0),
        high: Some(140.0),
        priority: Priority::High,
        delay_ms: MAX_DELAY_MS + 1,
        hysteresis: -1.0,
        phases: vec![],
        ..RuleSpec::default()
    };
    let errs = RuleSet::compile(&[bad]).unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "rules[0].id",
            "rules[0].delay_ms",
            "rules[0].hysteresis",
            "rules[0].phases",
            "rules[0].high"
        ]
    );
}

#[test]
fn relative_only_rule_is_a_limit_and_bad_ratios_are_refused() {
    let rel = RuleSpec {
        id: "sbp_surge".into(),
        vital: Vital::Sbp,
        above_baseline: Some(40.0),
        above_baseline_ratio: Some(0.8),
        ..RuleSpec::default()
    };
    let errs = RuleSet::compile(std::slice::from_ref(&rel)).unwrap_err();
    assert_eq!(errs[0].key, "rules[0].above_baseline_ratio");
    let ok = RuleSpec {
        above_baseline_ratio: None,
        ..rel
    };
    let set = RuleSet::compile(&[ok]).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.threshold_conditions("sbp_surge"), &[0]);
}

#[test]
fn combined_and_trend_rules_compile_and_index_their_vitals() {
    let combined = CombinedRuleSpec {
        id: "resp".into(),
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
                low: Some(94.0),
                high: None,
                below_baseline: None,
                above_baseline: None,
                below_baseline_ratio: None,
                above_baseline_ratio: None,
            },
        ],
        priority: Priority::High,
        delay_ms: 0,
        hysteresis: 1.0,
        phases: monitored_phases(),
        max_session: None,
        latching: false,
    };
    let trend = TrendRuleSpec {
        id: "sbp_rise".into(),
        vital: Vital::Sbp,
        rise: Some(30.0),
        fall: None,
        window_ms: 600_000,
        priority: Priority::Medium,
        hysteresis: 5.0,
        phases: monitored_phases(),
        max_session: None,
        latching: false,
    };
    let set = RuleSet::compile_all(RuleSources {
        rules: &[],
        combined: std::slice::from_ref(&combined),
        trends: &[trend],
        technical: &TechnicalSpec::default(),
        session: &SessionSpec::default(),
    })
    .unwrap();
    assert_eq!(set.for_vital(Vital::Rr), &[0]);
    assert_eq!(set.for_vital(Vital::Spo2), &[0]);
    assert_eq!(set.for_vital(Vital::Sbp), &[1]);
    assert_eq!(set.trend_window(Vital::Sbp), 600_000);
    let one_part = CombinedRuleSpec {
        all: combined.all[..1].to_vec(),
        ..combined
    };
    let errs = RuleSet::compile_all(RuleSources {
        rules: &[],
        combined: &[one_part],
        trends: &[],
        technical: &TechnicalSpec::default(),
        session: &SessionSpec::default(),
    })
    .unwrap_err();
    assert_eq!(errs[0].key, "combined_rules[0].all");
}
