use super::*;
use crate::core::AlarmState;

fn raised(id: u64) -> Event {
    Event::Alarm(crate::core::alarm::tests::event(id, AlarmState::Raised))
}

fn ward() -> Ward {
    Ward::new(Arc::new(crate::core::RuleSet::default()), 10)
}

fn hub(replay: usize) -> Hub {
    Hub::starting_after(0, replay, Arc::new(Metrics::new()))
}

fn seqs(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            format!("{}:{}", v["type"].as_str().unwrap(), v["seq"])
        })
        .collect()
}

#[test]
fn full_queue_cuts_off_only_that_subscriber() {
    let h = hub(100);
    let (slow_tx, _slow_rx) = mpsc::channel(1);
    let (fast_tx, mut fast_rx) = mpsc::channel(100);
    let slow = CutOff::default();
    h.subscribe(
        Start::Since {
            since: 0,
            instance: None,
        },
        &ward(),
        slow_tx,
        slow.clone(),
        SiteScope::all(),
    );
    h.subscribe(
        Start::Since {
            since: 0,
            instance: None,
        },
        &ward(),
        fast_tx,
        CutOff::default(),
        SiteScope::all(),
    );
    h.publish((1..=5).map(raised).collect(), None);
    assert!(slow.slow.is_cancelled() && slow.wake.is_cancelled());
    assert_eq!(h.subscriber_count(), 1);
    let mut got = Vec::new();
    while let Ok(frame) = fast_rx.try_recv() {
        got.push(frame);
    }
    // Every event of the publish, in sequence order, though they are queued
    // subscriber by subscriber.
    let seqs: Vec<u64> = seqs(&got)
        .iter()
        .map(|s| s.trim_start_matches("alarm:").parse().unwrap())
        .collect();
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[test]
fn a_restored_alarm_escalates_on_time_from_its_original_raise() {
    let h = hub(100);
    let policy = EscalationPolicy {
        escalate_after_ms: [60_000, 0, 0],
        max_level: 5,
        reminder_ms: 0,
    };
    // Raised at 0, escalated to level 1 at 60 s; the gateway restarts.
    let mut e = crate::core::alarm::tests::event(7, AlarmState::Raised);
    e.escalated = true;
    e.escalation_level = 1;
    e.received_at = 60_000;
    h.restore_alarm(e, &policy);
    h.escalate(119_000, &policy);
    assert_eq!(h.last_seq(), 0, "not due before 120 s");
    h.escalate(120_000, &policy);
    assert_eq!(h.last_seq(), 1);
    assert_eq!(h.active_alarms()[0].escalation_level, 2);
}

#[test]
fn since_replays_held_events_or_says_missed() {
    let h = hub(3);
    h.publish((1..=5).map(raised).collect(), None);
    let (tx, _rx) = mpsc::channel(10);
    let sub = |since, instance: Option<&str>| {
        let s = h.subscribe(
            Start::Since {
                since,
                instance: instance.map(String::from),
            },
            &ward(),
            tx.clone(),
            CutOff::default(),
            SiteScope::all(),
        );
        seqs(&s.initial)
    };
    assert_eq!(sub(3, None), vec!["alarm:4", "alarm:5"]);
    assert_eq!(
        sub(2, Some(h.instance())),
        vec!["alarm:3", "alarm:4", "alarm:5"]
    );
    assert_eq!(sub(5, None), Vec::<String>::new());
    assert_eq!(sub(1, None), vec!["missed:null", "snapshot:5"]);
    assert_eq!(sub(9, None), vec!["missed:null", "snapshot:5"]);
    assert_eq!(sub(3, Some("other")), vec!["missed:null", "snapshot:5"]);
}
