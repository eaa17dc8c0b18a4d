//! The device path in cluster mode, end to end on a 3-node NATS cluster: a
//! device publishes MQTT QoS 1 to one node's listener; the gateway that owns
//! the chair's partition reads it, applies it through the engine, journals its
//! events into the events stream and only then acknowledges it.

mod common;

use common::nats::{NatsCluster, LEASE_TIMES, PARTITIONS};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vitalgate::access::SiteScope;
use vitalgate::cluster::apply::Applied;
use vitalgate::cluster::feed::Feed;
use vitalgate::cluster::member::{self, Member};
use vitalgate::cluster::{events, streams};
use vitalgate::engine::{Journal, JournalError, Processed, NOT_JOURNALED};

/// How long a partition's message may go unacknowledged before NATS hands it
/// out again, as a gateway configures it.
const ACK_WAIT: Duration = LEASE_TIMES.margin;

/// A gateway named `name` (a cluster member as the binary will run it), once
/// it owns every partition; `refusing`: its journal refuses every commit.
/// What became of each device message comes out of `applied`.
struct Gateway {
    member: Option<Member>,
    js: async_nats::jetstream::Context,
    applied: mpsc::UnboundedReceiver<Applied>,
}

/// A journal that can never store anything (and says so, withholding).
struct Refusing;

impl Journal for Refusing {
    fn commit(&mut self, _: &[vitalgate::audit::Record<'_>]) -> Result<(), JournalError> {
        Err(JournalError("this test's journal stores nothing".into()))
    }

    fn withholds_on_failure(&self) -> bool {
        true
    }
}

impl Gateway {
    async fn start(nats: &NatsCluster, name: &str, refusing: bool) -> Gateway {
        // The MQTT listener's stream exists once a first MQTT client connected.
        drop(common::Device::connect("127.0.0.1", nats.nodes[0].mqtt_port).await);
        let settings = common::nats::member_settings(nats.urls(), name);
        let checks = common::nats::device_checks();
        let (applied_tx, applied) = mpsc::unbounded_channel();
        let member = member::start(
            &settings,
            common::nats::engine_parts(name),
            checks,
            member::Outlets {
                engine: Arc::new(common::nats::Nowhere),
                dashboards: None,
            },
            |journal| match refusing {
                true => Box::new(Refusing),
                false => Box::new(journal),
            },
            Some(applied_tx),
        )
        .await
        .unwrap();
        let mut owned = member.owned.clone();
        tokio::time::timeout(
            Duration::from_secs(20),
            owned.wait_for(|o| o.len() == PARTITIONS as usize),
        )
        .await
        .expect("the gateway owns every partition")
        .unwrap();
        Gateway {
            js: member.js.clone(),
            member: Some(member),
            applied,
        }
    }

    /// A clean stop (every partition given back).
    async fn stop(&mut self) {
        if let Some(member) = self.member.take() {
            member.stop().await;
        }
    }

    /// The next `n` outcomes.
    async fn outcomes(&mut self, n: usize) -> Vec<Applied> {
        let mut outcomes = Vec::new();
        while outcomes.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(30), self.applied.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} messages applied", outcomes.len()))
                .unwrap();
            outcomes.push(next);
        }
        outcomes
    }

    /// (unacknowledged, not yet delivered) device messages over every partition.
    async fn left_in_partitions(&self) -> (usize, u64) {
        let mut left = (0, 0);
        for p in 0..PARTITIONS {
            let mut consumer = streams::partition_consumer(&self.js, p, 3, ACK_WAIT)
                .await
                .unwrap();
            let info = consumer.info().await.unwrap();
            left.0 += info.num_ack_pending;
            left.1 += info.num_pending;
        }
        left
    }
}

#[tokio::test]
async fn a_breach_published_to_any_node_is_alarmed_once_and_acknowledged_after_its_journal() {
    let nats = NatsCluster::start(3).await;
    let mut gateway = Gateway::start(&nats, "gw-a", false).await;
    let mut feed = Feed::open(&gateway.js, SiteScope::all(), 0).await.unwrap();

    // Six chairs breach and recover, through node 2's MQTT listener; one
    // message cannot be read.
    let mut device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let chairs: Vec<usize> = (1..=6).collect();
    every_chair_reads(&mut device, chairs.len(), 1, 85).await;
    every_chair_reads(&mut device, chairs.len(), 2, 97).await;
    device
        .publish_raw("clinic/north/chair/1/vitals", "not a reading")
        .await;
    device.wait_acked(1).await;

    let outcomes = gateway.outcomes(chairs.len() * 2 + 1).await;
    assert!(outcomes.iter().all(|o| o.acknowledged), "{outcomes:?}");
    let rejected = outcomes
        .iter()
        .filter(|o| matches!(o.processed, Processed::Rejected(_)))
        .count();
    assert_eq!(rejected, 1, "{outcomes:?}");

    let mut seen = HashSet::new();
    for _ in 0..chairs.len() * 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("the alarms reach the stream")
            .unwrap();
        let frame: serde_json::Value = serde_json::from_str(event.frame.as_str()).unwrap();
        let key = (
            frame["chair"].as_str().unwrap().to_string(),
            frame["state"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "{key:?} twice");
    }
    for chair in &chairs {
        for state in ["raised", "cleared"] {
            assert!(seen.contains(&(format!("north/{chair}"), state.to_string())));
        }
    }
    // Every device message was acknowledged: nothing is left for NATS to hand
    // out again.
    assert_eq!(gateway.left_in_partitions().await, (0, 0));
    // And nothing more reaches the stream.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), feed.next())
            .await
            .is_err(),
        "an event beyond the twelve"
    );
}

/// A device message whose events cannot be journaled is not acknowledged: NATS
/// keeps it and hands it out again.
#[tokio::test]
async fn a_message_whose_events_are_not_journaled_is_not_acknowledged() {
    let nats = NatsCluster::start(3).await;
    let mut gateway = Gateway::start(&nats, "gw-a", true).await;
    let device = common::Device::connect("127.0.0.1", nats.nodes[2].mqtt_port).await;
    device
        .publish(
            "clinic/south/chair/4/vitals",
            &common::reading(1, json!({"spo2": 80})),
        )
        .await;
    let first = gateway.outcomes(1).await.remove(0);
    assert!(!first.acknowledged);
    match &first.processed {
        Processed::Refused { code, .. } => assert_eq!(*code, NOT_JOURNALED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        gateway.left_in_partitions().await,
        (1, 0),
        "held, unacknowledged"
    );
    // Handed out again once its acknowledgement is overdue.
    let again = gateway.outcomes(1).await.remove(0);
    assert_eq!(again.chair, "south/4");
    let mut stream = gateway.js.get_stream(events::EVENTS_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

/// A gateway that takes the partitions over restores their chairs' sessions
/// and open alarms from the events stream: the recovery readings it receives
/// clear the alarms the first gateway raised, under their ids.
#[tokio::test]
async fn a_gateway_taking_partitions_over_carries_on_with_their_open_alarms() {
    let nats = NatsCluster::start(3).await;
    let mut a = Gateway::start(&nats, "gw-a", false).await;
    let mut feed = Feed::open(&a.js, SiteScope::all(), 0).await.unwrap();
    let mut device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let chairs = 5;
    every_chair_reads(&mut device, chairs, 1, 84).await;
    a.outcomes(chairs).await;
    let mut raised = std::collections::HashMap::new();
    for _ in 0..chairs {
        let frame = next_frame(&mut feed).await;
        assert_eq!(frame["state"], "raised");
        raised.insert(
            frame["chair"].as_str().unwrap().to_string(),
            frame["id"].clone(),
        );
    }

    // a stops (its partitions are free once their leases' deadlines pass);
    // b, which reads the stream, takes them all.
    a.stop().await;
    let mut b = Gateway::start(&nats, "gw-b", false).await;
    every_chair_reads(&mut device, chairs, 2, 97).await;
    b.outcomes(chairs).await;
    for _ in 0..chairs {
        let frame = next_frame(&mut feed).await;
        assert_eq!(frame["state"], "cleared", "{frame}");
        let chair = frame["chair"].as_str().unwrap();
        assert_eq!(
            frame["id"], raised[chair],
            "{chair} cleared under another id"
        );
    }
}

/// Chairs north/1 to north/`chairs` send reading `seq` with SpO2 `spo2`,
/// acknowledged by the broker.
async fn every_chair_reads(device: &mut common::Device, chairs: usize, seq: u64, spo2: u32) {
    for chair in 1..=chairs {
        let topic = format!("clinic/north/chair/{chair}/vitals");
        device
            .publish(&topic, &common::reading(seq, json!({ "spo2": spo2 })))
            .await;
    }
    device.wait_acked(chairs).await;
}

async fn next_frame(feed: &mut Feed) -> serde_json::Value {
    let event = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("an event")
        .unwrap();
    serde_json::from_str(event.frame.as_str()).unwrap()
}
