//! Partition ownership among gateways on a real 3-node NATS cluster: shares,
//! takeover after a gateway dies, and never two owners acting at once.

mod common;

use common::nats::{NatsCluster, LEASE_TIMES, OWNERSHIP, PARTITIONS};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitalgate::cluster::lease::{LeaseTimes, Leases};
use vitalgate::cluster::ownership::Change;
use vitalgate::cluster::ownership::{self, Owned, OwnershipSettings};
use vitalgate::telemetry::ClusterMetrics;

const TIMES: LeaseTimes = LEASE_TIMES;
const SETTINGS: OwnershipSettings = OWNERSHIP;

struct Gateway {
    owned: watch::Receiver<Owned>,
    changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn gateway(nats: &NatsCluster, name: &str) -> Gateway {
    let js = vitalgate::cluster::connect(&nats.urls(), name)
        .await
        .unwrap();
    let leases = Leases::open(&js, name, TIMES, 3).await.unwrap();
    let stop = CancellationToken::new();
    let ownership = ownership::start(
        &js,
        leases,
        name,
        SETTINGS,
        ClusterMetrics::detached(),
        stop.clone(),
    )
    .await
    .unwrap();
    Gateway {
        owned: ownership.owned,
        changes: ownership.changes,
        stop,
        task: ownership.task,
    }
}

/// Which gateways may act for each partition right now (their published lease
/// has not reached its deadline).
fn acting(gateways: &[&Gateway]) -> BTreeMap<u32, usize> {
    let now = Instant::now();
    let mut acting = BTreeMap::new();
    for g in gateways {
        for (p, until) in g.owned.borrow().iter() {
            if *until > now {
                *acting.entry(*p).or_insert(0) += 1;
            }
        }
    }
    acting
}

/// Sample every 20 ms until `done` holds (or `limit` passes, failing), checking
/// at every sample that no partition has two gateways acting for it.
async fn watch_until(
    gateways: &[&Gateway],
    limit: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<u32, usize>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let acting = acting(gateways);
        let doubled: Vec<_> = acting.iter().filter(|(_, n)| **n > 1).collect();
        if !doubled.is_empty() {
            let now = Instant::now();
            let views: Vec<Vec<(u32, i128)>> = gateways
                .iter()
                .map(|g| {
                    g.owned
                        .borrow()
                        .iter()
                        .map(|(p, u)| (*p, u.duration_since(now).as_millis() as i128))
                        .collect()
                })
                .collect();
            panic!("two gateways acting for {doubled:?}: {views:?}");
        }
        if done(&acting) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}: {acting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_covered(acting: &BTreeMap<u32, usize>) -> bool {
    acting.len() == PARTITIONS as usize
}

#[tokio::test]
async fn gateways_share_the_partitions_and_take_over_from_a_dead_one() {
    let nats = NatsCluster::start(3).await;
    let mut a = gateway(&nats, "gw-a").await;
    let b = gateway(&nats, "gw-b").await;
    let c = gateway(&nats, "gw-c").await;
    let all = [&a, &b, &c];

    // Shares settle: every partition owned once, nobody above ceil(16/3) = 6.
    watch_until(&all, Duration::from_secs(20), "fair shares", |acting| {
        all_covered(acting) && all.iter().all(|g| g.owned.borrow().len() <= 6)
    })
    .await;

    // A clean stop hands c's partitions over at once (released, not expired).
    c.stop.cancel();
    c.task.await.unwrap();
    let handover = watch_until(
        &[&a, &b],
        Duration::from_secs(10),
        "c's partitions taken",
        all_covered,
    )
    .await;
    println!("clean stop: all partitions owned again after {handover:?}");

    // A crash (no release, no more renewals): b's partitions go to a after b's
    // leases expire, and a never acts for one while b still might.
    let b_held = b.owned.borrow().len();
    assert!(b_held > 0);
    b.task.abort();
    let crashed_at = Instant::now();
    let takeover = watch_until(
        &[&a, &b],
        TIMES.ttl * 2 + Duration::from_secs(5),
        "a owns all 16",
        |_| a.owned.borrow().len() == PARTITIONS as usize,
    )
    .await;
    assert!(crashed_at.elapsed() >= TIMES.ttl - TIMES.margin - Duration::from_millis(400));
    println!(
        "crash: a owns all 16 after {takeover:?} (lease {:?})",
        TIMES.ttl
    );
    a.stop.cancel();
    a.task.await.unwrap();

    // What a told of, in order: each partition taken, then gone, alternately;
    // all 16 taken at some point and none left at the stop.
    let mut held = std::collections::BTreeSet::new();
    let mut ever = std::collections::BTreeSet::new();
    while let Ok(change) = a.changes.try_recv() {
        match change {
            Change::Taken(p, _) => {
                assert!(held.insert(p), "p{p} taken twice without going");
                ever.insert(p);
            }
            Change::Gone(p, _) => assert!(held.remove(&p), "p{p} gone without being taken"),
        }
    }
    assert!(held.is_empty(), "still held after the stop: {held:?}");
    assert_eq!(ever.len(), PARTITIONS as usize);
}
