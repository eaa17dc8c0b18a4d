//! One alarm per chair, vital and direction (or probe): its priority escalates and
//! de-escalates with the rules met, under one id, one event per change.

use super::alarm::{AlarmEvent, AlarmState, Board};
use super::event::Event;
use super::reading::{Reading, Vital};
use super::rules::{Priority, RuleSet, RuleSpec};
use super::session::{Phase, SessionUpdate};
use super::ward::{Outcome, Ward};
use std::sync::Arc;

const T0: u64 = 1_780_000_000_000;

struct Chair {
    ward: Ward,
    seq: u64,
}

impl Chair {
    fn new(rules: RuleSet) -> Chair {
        Chair {
            ward: Ward::new(Arc::new(rules), 10),
            seq: 0,
        }
    }

    fn shipped() -> Chair {
        let config = crate::config::Config::load(None, std::iter::empty()).unwrap();
        Chair::new(config.rule_set().unwrap())
    }

    /// A reading `s` seconds after T0, device time = gateway time.
    fn read(&mut self, s: u64, vitals: &[(Vital, f64)], pump: bool) -> Vec<AlarmEvent> {
        self.seq += 1;
        let r = Reading::of(self.seq, T0 + s * 1_000, vitals, Some(pump).filter(|p| *p));
        match self.ward.apply("n/1", &r, r.ts).unwrap() {
            Outcome::Accepted { events, .. } => alarms(events),
            Outcome::Duplicate => panic!("not a duplicate"),
        }
    }

    fn sbp(&mut self, s: u64, v: f64) -> Vec<AlarmEvent> {
        self.read(s, &[(Vital::Sbp, v)], false)
    }

    fn phase(&mut self, s: u64, phase: Phase) {
        let u = SessionUpdate {
            phase,
            patient: Some("P".into()),
            session_number: Some(5),
            session_count: Some(6),
            route: None,
            ts: Some(T0 + s * 1_000),
            by: None,
            limits: None,
        };
        self.ward.set_session("n/1", &u, T0 + s * 1_000).unwrap();
    }
}

fn alarms(events: Vec<Event>) -> Vec<AlarmEvent> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Alarm(a) => Some(a),
            Event::Session(_) => None,
        })
        .collect()
}

/// (state, updated, priority, rule, rules held) of each event.
fn seen(events: &[AlarmEvent]) -> Vec<(AlarmState, bool, Priority, String, Vec<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e.state,
                e.updated,
                e.priority,
                e.rule.to_string(),
                e.rules.iter().map(|r| r.rule.to_string()).collect(),
            )
        })
        .collect()
}

fn sbp_rules() -> RuleSet {
    let rule = |id: &str, high: f64, priority| RuleSpec {
        id: id.into(),
        vital: Vital::Sbp,
        high: Some(high),
        priority,
        hysteresis: 5.0,
        ..RuleSpec::default()
    };
    RuleSet::compile(&[
        rule("sbp_warn", 140.0, Priority::Medium),
        rule("sbp_critical", 180.0, Priority::High),
    ])
    .unwrap()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn one_alarm_escalates_and_de_escalates_under_one_id() {
    use AlarmState::*;
    let mut c = Chair::new(sbp_rules());
    let raised = c.sbp(1, 150.0);
    assert_eq!(
        seen(&raised),
        vec![(
            Raised,
            false,
            Priority::Medium,
            s("sbp_warn"),
            vec![s("sbp_warn")]
        )]
    );
    let id = raised[0].id;
    let up = c.sbp(2, 190.0);
    assert_eq!(
        seen(&up),
        vec![(
            Raised,
            true,
            Priority::High,
            s("sbp_critical"),
            vec![s("sbp_critical"), s("sbp_warn")]
        )]
    );
    assert_eq!(up[0].id, id);
    assert_eq!(up[0].previous_priority, Some(Priority::Medium));
    assert_eq!((up[0].value, up[0].limit), (190.0, 180.0));
    assert_eq!(up[0].raised_ts, raised[0].raised_ts);
    assert!(c.sbp(3, 195.0).is_empty(), "no change, no event");
    // Acknowledged while high: nothing latched, nothing to clear.
    assert!(alarms(c.ward.acknowledged("n/1", id, T0 + 4_000)).is_empty());
    // Back under the critical limit: medium again, still acknowledged.
    let down = c.sbp(5, 170.0);
    assert_eq!(
        seen(&down),
        vec![(
            Acknowledged,
            true,
            Priority::Medium,
            s("sbp_warn"),
            vec![s("sbp_warn")]
        )]
    );
    assert_eq!(down[0].previous_priority, Some(Priority::High));
    // High again: a higher priority breaks through the acknowledgement.
    let again = c.sbp(6, 185.0);
    assert_eq!(again[0].state, Raised);
    assert_eq!(again[0].priority, Priority::High);
    assert_eq!(again[0].id, id);
    // Both rules end with one reading: one clear.
    let cleared = c.sbp(7, 120.0);
    assert_eq!(
        seen(&cleared),
        vec![(Cleared, false, Priority::High, s("sbp_critical"), vec![])]
    );
    assert_eq!(cleared[0].id, id);
    // A new breach is a new alarm.
    let next = c.sbp(8, 150.0);
    assert!(next[0].id > id);
}

#[test]
fn a_rule_joining_an_acknowledged_alarm_below_its_priority_keeps_it_acknowledged() {
    let warn = RuleSpec {
        id: "sbp_warn".into(),
        vital: Vital::Sbp,
        high: Some(140.0),
        priority: Priority::Medium,
        hysteresis: 5.0,
        delay_ms: 2_000,
        latching: true,
        ..RuleSpec::default()
    };
    let critical = RuleSpec {
        id: "sbp_critical".into(),
        high: Some(180.0),
        priority: Priority::High,
        delay_ms: 0,
        latching: false,
        ..warn.clone()
    };
    let mut c = Chair::new(RuleSet::compile(&[warn, critical]).unwrap());
    let raised = c.sbp(1, 190.0);
    assert_eq!(raised[0].rules.len(), 1, "the warning waits for its delay");
    let id = raised[0].id;
    c.ward.acknowledged("n/1", id, T0 + 2_000);
    assert!(c.sbp(2, 190.0).is_empty());
    // The medium rule joins the high alarm after its delay: still high, still
    // acknowledged, and the latching rule is acknowledged with it.
    let joined = c.sbp(3, 190.0);
    assert_eq!(
        seen(&joined),
        vec![(
            AlarmState::Acknowledged,
            true,
            Priority::High,
            s("sbp_critical"),
            vec![s("sbp_critical"), s("sbp_warn")]
        )]
    );
    assert_eq!(joined[0].previous_priority, None);
    // Both end: the latching rule does not hold the acknowledged alarm up.
    let cleared = c.sbp(4, 120.0);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].state, AlarmState::Cleared);
    assert_eq!(cleared[0].id, id);
}

/// The board follows: an update that raises the priority is unacknowledged again and
/// escalates afresh; one that does not keeps who acknowledged it.
#[test]
fn the_board_follows_updates() {
    let mut c = Chair::new(sbp_rules());
    let mut b = Board::default();
    let record = |b: &mut Board, events: Vec<AlarmEvent>| {
        events
            .into_iter()
            .map(|mut e| {
                b.record(&mut e);
                e
            })
            .collect::<Vec<_>>()
    };
    let raised = record(&mut b, c.sbp(1, 190.0));
    let id = raised[0].id;
    let mut ack = b.acknowledge(id, Arc::from("kim"), T0 + 2_000).unwrap();
    b.record(&mut ack);
    c.ward.acknowledged("n/1", id, T0 + 2_000);
    let down = record(&mut b, c.sbp(3, 150.0));
    assert_eq!(down[0].acknowledged_by.as_deref(), Some("kim"));
    assert_eq!(down[0].raised_ts, raised[0].raised_ts);
    assert_eq!(b.active().next().unwrap().state, AlarmState::Acknowledged);
    let up = record(&mut b, c.sbp(4, 190.0));
    assert_eq!(up[0].acknowledged_by, None);
    assert_eq!(b.active().next().unwrap().state, AlarmState::Raised);
    assert!(b.acknowledge(id, Arc::from("lee"), T0 + 5_000).is_ok());
}

/// The example: one reading of 186 mmHg in an infusion raised four alarms
/// at once; it now raises one, high, holding every rule it meets.
#[test]
fn one_high_reading_raises_one_alarm_with_every_rule_it_meets() {
    let mut c = Chair::shipped();
    c.phase(0, Phase::Baseline);
    for i in 1..=3 {
        c.read(
            i,
            &[(Vital::Sbp, 125.0), (Vital::Hr, 75.0), (Vital::Spo2, 98.0)],
            false,
        );
    }
    c.phase(10, Phase::Infusion);
    for i in 11..=20 {
        assert!(c.sbp(i, 125.0).is_empty());
    }
    let surge = c.sbp(21, 186.0);
    assert_eq!(surge.len(), 1, "{:?}", seen(&surge));
    let a = &surge[0];
    assert_eq!((a.priority, &*a.rule), (Priority::High, "sbp_critical"));
    let held: Vec<&str> = a.rules.iter().map(|r| &*r.rule).collect();
    for rule in [
        "sbp_critical",
        "sbp_warn",
        "sbp_over_baseline",
        "sbp_rising",
    ] {
        assert!(held.contains(&rule), "{rule} in {held:?}");
    }
    assert_eq!(a.message.as_ref(), "SBP 186 above 180");
}

/// A probe coming off during an infusion: stale SpO2 and pump without SpO2 are one
/// technical alarm about the SpO2 probe.
#[test]
fn a_probe_off_is_one_technical_alarm() {
    let mut c = Chair::shipped();
    c.phase(0, Phase::Baseline);
    c.read(1, &[(Vital::Spo2, 98.0), (Vital::Hr, 75.0)], true);
    c.read(2, &[(Vital::Spo2, 98.0), (Vital::Hr, 75.0)], true);
    c.phase(3, Phase::Infusion);
    let mut events = Vec::new();
    for i in 4..=60 {
        // HR keeps coming (the chair is online); SpO2 stopped after 3 s.
        events.extend(c.read(i, &[(Vital::Hr, 75.0)], true));
        events.extend(alarms(c.ward.tick(T0 + i * 1_000)));
    }
    let technical: Vec<&AlarmEvent> = events
        .iter()
        .filter(|e| e.vital == Some(Vital::Spo2))
        .collect();
    let ids: std::collections::BTreeSet<u64> = technical.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1, "{:?}", seen(&events));
    let last = technical.last().unwrap();
    let held: Vec<&str> = last.rules.iter().map(|r| &*r.rule).collect();
    assert_eq!(held, vec!["pump_without_spo2", "spo2_stale"]);
    assert_eq!(last.priority, Priority::High);
}
