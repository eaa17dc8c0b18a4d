use super::*;
use crate::core::AlarmState;
use crate::engine::Sequenced;

fn raised(seq: u64) -> Sequenced {
    let event = crate::core::alarm::tests::event(seq, AlarmState::Raised);
    Sequenced {
        seq,
        kind: "alarm",
        chair: event.chair.clone(),
        at_ms: 0,
        frame: crate::protocol::alarm_frame(seq, &event, None),
    }
}

fn subscriber(hub: &Hub, capacity: usize, scope: SiteScope) -> (CutOff, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(capacity);
    let cut_off = CutOff::default();
    hub.register(Subscriber {
        id: hub.next_id(),
        tx,
        cut_off: cut_off.clone(),
        scope,
    });
    (cut_off, rx)
}

#[test]
fn full_queue_cuts_off_only_that_subscriber() {
    let hub = Hub::new();
    let (slow, _slow_rx) = subscriber(&hub, 1, SiteScope::all());
    let (fast, mut fast_rx) = subscriber(&hub, 100, SiteScope::all());
    let events: Vec<Sequenced> = (1..=5).map(raised).collect();
    hub.deliver(&events);
    assert!(slow.slow.is_cancelled() && slow.wake.is_cancelled());
    assert!(!fast.slow.is_cancelled());
    assert_eq!(hub.subscriber_count(), 1);
    let mut seqs = Vec::new();
    while let Ok(frame) = fast_rx.try_recv() {
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        seqs.push(v["seq"].as_u64().unwrap());
    }
    // Every event of the release, in sequence order, though they are queued
    // subscriber by subscriber.
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_subscriber_receives_only_its_sites_and_a_snapshot_meant_for_it() {
    let hub = Hub::new();
    let (_, mut north) = subscriber(&hub, 10, SiteScope::only(vec!["north".to_string()]));
    let (_, mut south) = subscriber(&hub, 10, SiteScope::only(vec!["south".to_string()]));
    hub.deliver(&[raised(1)]);
    assert!(north.try_recv().is_ok(), "north/1 is in north's scope");
    assert!(south.try_recv().is_err(), "and not in south's");
    let frame = crate::protocol::missed_frame("x", 0, 1, 1);
    hub.deliver_to(2, &frame);
    assert!(south.try_recv().is_ok() && north.try_recv().is_err());
}
