//! Cluster mode's footing on a real 3-node NATS cluster (started by the test on
//! free ports with the shipped partition mapping): the leases, the partition
//! mapping of MQTT publishes, and what a PUBACK from NATS's MQTT listener
//! promises when a node is killed.

mod common;

use async_nats::jetstream;
use common::nats::{NatsCluster, PARTITIONS};
use common::publisher::Publisher;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;
use vitalgate::cluster::lease::{LeaseTimes, Leases, Renewal};
use vitalgate::cluster::{self, parse_reading_subject, streams};

const TIMES: LeaseTimes = LeaseTimes {
    ttl: Duration::from_secs(2),
    margin: Duration::from_millis(500),
};

/// Long enough to ride out the election of a new stream leader after a node
/// is lost (seconds in NATS 2.9).
const NODE_LOSS_TIMES: LeaseTimes = LeaseTimes {
    ttl: Duration::from_secs(15),
    margin: Duration::from_secs(3),
};

async fn js(cluster: &NatsCluster) -> jetstream::Context {
    cluster::connect(&cluster.urls(), &common::unique("test"))
        .await
        .unwrap()
}

/// The three node configurations an operator installs parse (`nats-server -t`).
#[test]
fn the_shipped_node_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats");
    for node in ["node-1.conf", "node-2.conf", "node-3.conf"] {
        let out = std::process::Command::new(common::nats::nats_bin())
            .arg("-t")
            .arg("-c")
            .arg(dir.join(node))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("is valid"),
            "{node}: {said}"
        );
    }
}

#[tokio::test]
async fn a_partition_has_one_holder_and_a_release_frees_it_at_once() {
    let nats = NatsCluster::start(3).await;
    let js = js(&nats).await;
    let a = Leases::open(&js, "gw-a", TIMES, 3).await.unwrap();
    let b = Leases::open(&js, "gw-b", TIMES, 3).await.unwrap();

    let mut lease = a.acquire(4).await.unwrap().expect("p4 was free");
    assert!(lease.is_valid());
    assert!(b.acquire(4).await.unwrap().is_none(), "p4 taken twice");
    assert_eq!(b.holder(4).await.unwrap().as_deref(), Some("gw-a"));
    let before = lease.valid_until();
    assert_eq!(a.renew(&mut lease).await.unwrap(), Renewal::Renewed);
    assert!(lease.valid_until() > before, "a renewal extends the lease");
    assert!(b.acquire(4).await.unwrap().is_none());

    a.release(lease).await.unwrap();
    b.acquire(4).await.unwrap().expect("released p4 is free");
    assert_eq!(b.holder(4).await.unwrap().as_deref(), Some("gw-b"));
}

/// A holder that stops renewing (a SIGSTOP, a hang) has stopped acting for the
/// partition before anyone else can take it, and someone does within a lease time.
#[tokio::test]
async fn a_silent_holder_stops_before_its_partition_is_taken_over() {
    let nats = NatsCluster::start(3).await;
    let js = js(&nats).await;
    let a = Leases::open(&js, "gw-a", TIMES, 3).await.unwrap();
    let b = Leases::open(&js, "gw-b", TIMES, 3).await.unwrap();
    let mut held = a.acquire(1).await.unwrap().unwrap();
    for _ in 0..3 {
        tokio::time::sleep(TIMES.ttl / 4).await;
        assert_eq!(a.renew(&mut held).await.unwrap(), Renewal::Renewed);
    }
    let silent_from = Instant::now();
    // `a` says nothing more; `b` tries every 50 ms.
    let taken_at = loop {
        if let Some(lease) = b.acquire(1).await.unwrap() {
            assert!(lease.is_valid());
            break Instant::now();
        }
        assert!(
            silent_from.elapsed() < TIMES.ttl + Duration::from_secs(5),
            "nobody took p1 after its holder fell silent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held.valid_until() <= taken_at,
        "the silent holder still thought it held p1 when it was taken"
    );
    assert!(!held.is_valid());
    assert_eq!(a.renew(&mut held).await.unwrap(), Renewal::Lost);
    assert_eq!(b.holder(1).await.unwrap().as_deref(), Some("gw-b"));
}

#[tokio::test]
async fn a_lease_outlives_the_loss_of_a_nats_node() {
    let mut nats = NatsCluster::start(3).await;
    let js = js(&nats).await;
    let a = Leases::open(&js, "gw-a", NODE_LOSS_TIMES, 3).await.unwrap();
    let b = Leases::open(&js, "gw-b", NODE_LOSS_TIMES, 3).await.unwrap();
    let mut held = a.acquire(2).await.unwrap().unwrap();
    // Kill the node leading the bucket's stream: the worst one to lose.
    let leader = stream_leader(&js, &format!("KV_{}", cluster::LEASE_BUCKET)).await;
    nats.kill(leader);
    let killed_at = Instant::now();
    // The holder renews until a renewal lands, all within its lease.
    loop {
        assert!(held.is_valid(), "p2 lapsed while a node was down");
        match a.renew(&mut held).await {
            Ok(Renewal::Renewed) => break,
            Ok(Renewal::Lost) => panic!("p2 lost with one node down"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    println!(
        "renewed {:?} after the leader was killed",
        killed_at.elapsed()
    );
    match b.acquire(2).await {
        Ok(None) | Err(_) => {}
        Ok(Some(_)) => panic!("p2 taken twice after a node was killed"),
    }
    assert_eq!(a.renew(&mut held).await.unwrap(), Renewal::Renewed);
}

#[tokio::test]
async fn a_bucket_with_another_lease_time_is_refused() {
    let nats = NatsCluster::start(1).await;
    let js = js(&nats).await;
    Leases::open(&js, "gw-a", TIMES, 1).await.unwrap();
    let other = LeaseTimes {
        ttl: Duration::from_secs(3),
        ..TIMES
    };
    let err = Leases::open(&js, "gw-b", other, 1).await.err().unwrap();
    assert!(
        err.to_string().contains("one lease time"),
        "unexpected error: {err}"
    );
}

/// Devices publish to any node's MQTT listener; every message of one chair
/// comes through one partition's consumer, with the chair readable from its
/// subject, each once, in the partition the gateway computes for it.
#[tokio::test]
async fn mqtt_publishes_reach_one_partition_per_chair() {
    let nats = NatsCluster::start(3).await;
    let js = js(&nats).await;
    let readers = partition_readers(&nats, &js).await;
    let chairs = 24;
    for (node, per_chair) in [(1usize, 3u64), (2, 2)] {
        let mut device = Publisher::connect(nats.nodes[node].mqtt_port).await;
        for chair in 0..chairs {
            for seq in 0..per_chair {
                let topic = format!("clinic/north/chair/{chair}/vitals");
                device.publish(&topic, format!("{{\"seq\":{seq}}}")).await;
            }
        }
        device.all_acked(RECOVERY).await;
    }
    let total = chairs * 5;
    let read = readers
        .read_until(&nats.nodes[0].url(), |r| r.len() >= total)
        .await;
    assert_eq!(read.len(), total, "each message once");
    let mut partition_of: HashMap<String, u32> = HashMap::new();
    for (from, subject, _) in read {
        let (partition, chair, kind) = parse_reading_subject(&subject).expect(&subject);
        assert_eq!(partition, from, "{subject} read from p{from}");
        assert_eq!(kind, "vitals");
        let first = *partition_of.entry(chair.clone()).or_insert(partition);
        assert_eq!(first, partition, "{chair} is in two partitions");
        assert_eq!(
            cluster::partition_of(&chair, PARTITIONS),
            partition,
            "the gateway places {chair} where NATS does not"
        );
    }
    assert_eq!(partition_of.len(), chairs);
    let used: HashSet<u32> = partition_of.values().copied().collect();
    assert!(used.len() > 1, "24 chairs all hashed to one partition");
}

/// What devices rely on: a PUBACK means the message is kept. Publish to the
/// listener of the node leading the MQTT listener's stream, kill -9 it
/// mid-flight: the partitions' consumers, read on a surviving node, deliver every
/// acknowledged message. A user stream capturing the same subjects is kept
/// beside them for the record: it is not a promise (see `cluster::streams`).
#[tokio::test]
async fn every_acknowledged_publish_survives_a_killed_stream_leader() {
    acknowledged_publishes_survive(true).await;
}

/// The same through a node that does not lead the stream.
#[tokio::test]
async fn every_acknowledged_publish_survives_a_killed_listener_node() {
    acknowledged_publishes_survive(false).await;
}

async fn acknowledged_publishes_survive(at_the_leader: bool) {
    let mut nats = NatsCluster::start(3).await;
    let js = js(&nats).await;
    let readers = partition_readers(&nats, &js).await;
    js.create_stream(jetstream::stream::Config {
        name: "CAPTURE".into(),
        subjects: vec!["vitalgate.p.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let leader = stream_leader(&js, streams::MQTT_STREAM).await;
    let victim = if at_the_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let survivor = (victim + 2) % 3;
    let mut device = Publisher::connect(nats.nodes[victim].mqtt_port).await;
    // Each QoS 1 publish waits for its replicated store before the listener
    // reads the next one from that connection.
    let sent = 1_000u64;
    let started = Instant::now();
    for seq in 0..sent {
        let topic = format!("clinic/north/chair/{}/vitals", seq % 50);
        device.publish(&topic, format!("{{\"seq\":{seq}}}")).await;
        if seq == sent / 2 {
            device.wait_acks(sent as usize / 4, RECOVERY).await;
            nats.kill(victim);
        }
    }
    let acks_took = started.elapsed();
    let acked = device.acked_payload_seqs();
    assert!(acked.len() >= sent as usize / 4, "{} acked", acked.len());

    let seq_of = |payload: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let read = readers
        .read_until(&nats.nodes[survivor].url(), |read| {
            let got: HashSet<u64> = read.iter().map(|(_, _, p)| seq_of(p)).collect();
            acked.iter().all(|s| got.contains(s))
        })
        .await;
    let got: HashSet<u64> = read.iter().map(|(_, _, p)| seq_of(p)).collect();
    let lost: Vec<&u64> = acked.iter().filter(|s| !got.contains(s)).collect();
    assert!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");

    let after = cluster::connect(&[nats.nodes[survivor].url()], "after-kill")
        .await
        .unwrap();
    let captured = match after.get_stream("CAPTURE").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).ok(),
        Err(_) => None,
    };
    println!(
        "{}: sent {sent}, acknowledged {} (in {acks_took:?}), through the partitions' consumers {}, in a user stream {captured:?}",
        if at_the_leader { "leader" } else { "listener" },
        acked.len(),
        got.len()
    );
}

/// The index (in `cluster.nodes`) of the node leading `stream`.
async fn stream_leader(js: &jetstream::Context, stream: &str) -> usize {
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    leader[1..].parse::<usize>().unwrap() - 1
}

/// How long the survivors of a killed node may take to elect new leaders (the
/// cluster's and each stream's): seconds each in NATS 2.9, more on a loaded
/// machine.
const RECOVERY: Duration = Duration::from_secs(30);

/// Every partition's consumer, created before devices publish (a message
/// nobody is interested in is not kept).
struct PartitionReaders;

async fn partition_readers(nats: &NatsCluster, js: &jetstream::Context) -> PartitionReaders {
    common::nats::partition_consumers(nats, 0, js, ACK_WAIT).await;
    PartitionReaders
}

const ACK_WAIT: Duration = Duration::from_secs(30);

impl PartitionReaders {
    /// Read every partition (through `url`), acknowledging, until `done` holds
    /// for what was read (partition, subject, payload), or [`RECOVERY`] passes.
    async fn read_until(
        &self,
        url: &str,
        done: impl Fn(&[(u32, String, Vec<u8>)]) -> bool,
    ) -> Vec<(u32, String, Vec<u8>)> {
        let js = cluster::connect(&[url.to_string()], "reader")
            .await
            .unwrap();
        let mut read = Vec::new();
        let deadline = Instant::now() + RECOVERY;
        while !done(&read) && Instant::now() < deadline {
            for p in 0..PARTITIONS {
                if Instant::now() >= deadline {
                    break;
                }
                // Right after a node is lost the consumer may not answer yet.
                let Ok(consumer) = streams::partition_consumer(&js, p, 3, ACK_WAIT).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok(mut batch) = consumer
                    .fetch()
                    .max_messages(500)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await
                else {
                    continue;
                };
                while let Some(Ok(m)) = batch.next().await {
                    read.push((p, m.subject.to_string(), m.payload.to_vec()));
                    let _ = m.ack().await;
                }
            }
        }
        read
    }
}
