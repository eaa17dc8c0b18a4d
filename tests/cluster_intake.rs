//! Device messages read by the gateways owning their partitions, on a real
//! 3-node NATS cluster: every acknowledged publish is read and acknowledged by
//! an owner, and a gateway that stalls past its lease hands nothing on after it.

mod common;

use common::nats::{NatsCluster, LEASE_TIMES, OWNERSHIP, PARTITIONS};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitalgate::cluster::intake::{self, ReadSettings};
use vitalgate::cluster::lease::{LeaseTimes, Leases};
use vitalgate::cluster::ownership::{self, Owned, OwnershipSettings};
use vitalgate::telemetry::ClusterMetrics;

const TIMES: LeaseTimes = LEASE_TIMES;
const SETTINGS: OwnershipSettings = OWNERSHIP;

/// Each message handed on: its `seq`, when, the deadline of the lease it was
/// read under, and whether its acknowledgement went through.
type Log = Arc<Mutex<Vec<(u64, Instant, Instant, bool)>>>;

struct Gateway {
    owned: watch::Receiver<Owned>,
    log: Log,
    stop: CancellationToken,
    /// Freezes the gateway's whole runtime for the given time (as SIGSTOP
    /// would), answering once frozen.
    stall: mpsc::UnboundedSender<(Duration, std::sync::mpsc::Sender<()>)>,
}

/// A gateway on a runtime of its own, on its own thread (one worker), so that
/// the test can freeze all of it at once.
async fn gateway(nats: &NatsCluster, name: &str) -> Gateway {
    let urls = nats.urls();
    let name = name.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let js = vitalgate::cluster::connect(&urls, &name).await.unwrap();
            let leases = Leases::open(&js, &name, TIMES, 3).await.unwrap();
            let stop = CancellationToken::new();
            let owned = ownership::start(
                &js,
                leases,
                &name,
                SETTINGS,
                ClusterMetrics::detached(),
                stop.clone(),
            )
            .await
            .unwrap()
            .owned;
            let (tx, mut rx) = mpsc::channel(64);
            intake::start(
                js,
                owned.clone(),
                ReadSettings::for_leases(TIMES, 3),
                tx,
                metrics::Counter::noop(),
                stop.clone(),
            );
            let log: Log = Arc::default();
            let record = log.clone();
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    let seq = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()
                        ["seq"]
                        .as_u64()
                        .unwrap();
                    let at = Instant::now();
                    let valid_until = m.valid_until;
                    let acked = m.ack().await.is_ok();
                    record.lock().unwrap().push((seq, at, valid_until, acked));
                }
            });
            let (stall, mut stalls) =
                mpsc::unbounded_channel::<(Duration, std::sync::mpsc::Sender<()>)>();
            let _ = ready_tx.send(Gateway {
                owned,
                log,
                stop: stop.clone(),
                stall,
            });
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    Some((how_long, frozen)) = stalls.recv() => {
                        let _ = frozen.send(());
                        std::thread::sleep(how_long);
                    }
                }
            }
        });
    });
    ready_rx.await.expect("the gateway started")
}

fn acked(gateways: &[&Gateway]) -> std::collections::BTreeSet<u64> {
    gateways
        .iter()
        .flat_map(|g| {
            g.log
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, _, acked)| *acked)
                .map(|(seq, _, _, _)| *seq)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn publish(device: &mut common::Device, seqs: std::ops::Range<u64>) {
    let n = seqs.end - seqs.start;
    for seq in seqs {
        let topic = format!("clinic/north/chair/{}/vitals", seq % 40);
        device
            .publish(&topic, &serde_json::json!({ "seq": seq }))
            .await;
    }
    device.wait_acked(n as usize).await;
}

#[tokio::test]
async fn an_owner_that_stalls_hands_nothing_on_after_its_lease_and_its_partitions_move() {
    let nats = NatsCluster::start(3).await;
    let js = vitalgate::cluster::connect(&nats.urls(), "setup")
        .await
        .unwrap();
    common::nats::partition_consumers(&nats, 1, &js, ReadSettings::for_leases(TIMES, 3).ack_wait)
        .await;
    let mut device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;

    let a = gateway(&nats, "gw-a").await;
    let b = gateway(&nats, "gw-b").await;
    common::eventually(
        || {
            let (na, nb) = (a.owned.borrow().len(), b.owned.borrow().len());
            async move { na + nb == PARTITIONS as usize && na > 0 && nb > 0 }
        },
        "both gateways owning partitions",
    )
    .await;

    publish(&mut device, 0..100).await;
    common::eventually(
        || {
            let n = acked(&[&a, &b]).len();
            async move { n == 100 }
        },
        "the first 100 read and acknowledged",
    )
    .await;
    assert!(!b.log.lock().unwrap().is_empty(), "b read nothing");

    // b stalls past its lease (its whole runtime frozen, as by SIGSTOP), then
    // wakes with whatever it had pulled in hand.
    let stall = TIMES.ttl + Duration::from_secs(2);
    let (frozen_tx, frozen) = std::sync::mpsc::channel();
    b.stall.send((stall, frozen_tx)).unwrap();
    frozen.recv().unwrap();
    let stalled_at = Instant::now();
    publish(&mut device, 100..200).await;
    let limit = TIMES.ttl * 2 + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    while acked(&[&a, &b]).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "only {} of 200 acknowledged after {limit:?}",
            acked(&[&a, &b]).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = stalled_at.elapsed();
    // b has woken: give it time to act on what it held, then check.
    while stalled_at.elapsed() < stall + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late: Vec<_> = b
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at, valid_until, _)| at >= valid_until)
        .map(|(seq, at, _, acked)| (*seq, at.duration_since(stalled_at), *acked))
        .collect();
    assert!(late.is_empty(), "b handed on {late:?} after its lease");
    println!(
        "all 200 read and acknowledged {moved:?} after b stalled (lease {:?})",
        TIMES.ttl
    );
    a.stop.cancel();
    b.stop.cancel();
}

/// A device message NATS delivered that never reached the reader (here a
/// second client pulls one from the partition's consumer, as a pull that ended
/// on the reader's side first would leave it): the reader sees the gap in the
/// consumer's deliveries and hands on nothing more until the missed message is
/// handed out again, so every message is handed on once, in the order
/// published. Handing on the later ones first would make the missed reading
/// late at the engine, and so ignored.
#[tokio::test]
async fn a_delivery_that_never_arrived_is_waited_for_and_order_is_kept() {
    let nats = NatsCluster::start(3).await;
    let js = vitalgate::cluster::connect(&nats.urls(), "reader")
        .await
        .unwrap();
    let settings = ReadSettings {
        replicas: 3,
        ack_wait: Duration::from_secs(1),
        first_pull_after: Duration::ZERO,
    };
    common::nats::partition_consumers(&nats, 1, &js, settings.ack_wait).await;
    let chair = "north/gap-1";
    let partition = vitalgate::cluster::partition_of(chair, PARTITIONS);
    let topic = "clinic/north/chair/gap-1/vitals";
    let far = Instant::now() + Duration::from_secs(3600);
    let (_owned_tx, owned) = watch::channel(Owned::from([(partition, far)]));
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let missed = ClusterMetrics::detached().deliveries_missed;
    intake::start(js.clone(), owned, settings, tx, missed, stop.clone());
    let consumer =
        vitalgate::cluster::streams::partition_consumer(&js, partition, 3, settings.ack_wait)
            .await
            .unwrap();
    let waiting = |n: usize| {
        let mut consumer = consumer.clone();
        async move { consumer.info().await.unwrap().num_waiting >= n }
    };
    let device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    // Each message handed on is acknowledged, as the engine's receipt would.
    async fn handed_on(m: vitalgate::cluster::intake::DeviceMessage) -> u64 {
        let seq = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"]
            .as_u64()
            .unwrap();
        m.ack().await.unwrap();
        seq
    }

    // The reader is pulling; its first message arrives.
    common::eventually(|| waiting(1), "the reader pulling").await;
    device
        .publish(topic, &serde_json::json!({ "seq": 1 }))
        .await;
    let mut seen = vec![handed_on(rx.recv().await.unwrap()).await];
    // A second pull waits beside the reader's; one of the next messages goes
    // to it and is never acknowledged.
    let mut thief = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap();
    common::eventually(|| waiting(2), "both pulling").await;
    let mut seq = 1;
    let stolen = loop {
        seq += 1;
        assert!(seq < 40, "NATS never served the second pull");
        device
            .publish(topic, &serde_json::json!({ "seq": seq }))
            .await;
        // Each message goes to one of the two pulls: wait for whichever takes it.
        let taken = tokio::time::timeout(common::DEADLINE, async {
            tokio::select! {
                m = thief.next() => Err(m.unwrap().unwrap().payload.clone()),
                m = rx.recv() => Ok(m.unwrap()),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("message {seq} reached neither pull"));
        match taken {
            Ok(m) => seen.push(handed_on(m).await),
            Err(payload) => {
                break serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            }
        }
    };
    // One more after it, so that the reader sees the gap.
    seq += 1;
    device
        .publish(topic, &serde_json::json!({ "seq": seq }))
        .await;
    while seen.len() < seq as usize {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("handed on so far: {seen:?} (message {stolen} taken)"))
            .unwrap();
        seen.push(handed_on(m).await);
    }
    stop.cancel();
    let published: Vec<u64> = (1..=seq).collect();
    assert_eq!(
        seen, published,
        "handed on in the order published, once each (message {stolen} was taken by the other pull)"
    );
}
