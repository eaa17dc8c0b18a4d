//! The failure script, in one process: three gateways (each on a runtime and
//! thread of its own, so that one can be crashed or frozen whole) on a 3-node
//! NATS cluster, chairs publishing at 5 Hz with a breach every three seconds.
//! One gateway crashes (its runtime dropped: no lease given back), then a NATS
//! node is killed, then another gateway freezes past its lease and wakes.
//! Afterwards every breach is alarmed once and cleared once, in order, in the
//! events stream.
//!
//! Not yet run by CI: it does not hold yet. With 3 s leases it passed 3 times
//! in 9 runs here (NATS 2.10.26, two cores, a CI run beside some of them), and
//! the failures showed the gaps cluster mode still has: every member's leases
//! lapsing while the lease bucket's leader moved after the node kill, so every
//! partition changed hands at once and breaches around it were never alarmed;
//! a breach alarmed twice after its partition moved (its events journaled, its
//! acknowledgement lost, the next owner applying it again: deterministic event
//! ids would drop the repeat); old readings handed out again and applied by a
//! new owner as if new (a restored chair does not know which readings it has
//! seen). Confirmed acknowledgements (`double_ack`, retried while the lease
//! holds) were tried: 0 of 4 runs passed, so they are not in. With the 10 s
//! leases it has now, 2 of 5 runs passed; in the other 3 some of the device's
//! QoS 1 publishes through a surviving node were never acknowledged (the
//! listener does not answer a publish it could not store while its stream's
//! leader moved, and an MQTT 3.1.1 client sends it again only when it
//! reconnects), so the run stopped before its check. Run it with
//! `cargo test --test cluster_failover -- --ignored --nocapture`.

mod common;

use common::nats::{NatsCluster, PARTITIONS};
use vitalgate::cluster::lease::LeaseTimes;

/// Leases longer than a NATS stream's leader takes to move after its node is
/// lost (4 to 9 s, tests/cluster_nats.rs), so that the node's loss does not
/// take every partition from every member.
const LEASE: LeaseTimes = LeaseTimes {
    ttl: Duration::from_secs(10),
    margin: Duration::from_secs(2),
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use vitalgate::access::SiteScope;
use vitalgate::cluster::feed::Feed;
use vitalgate::cluster::member;
use vitalgate::cluster::ownership::Owned;

enum Control {
    /// Block the gateway's whole runtime for this long (as SIGSTOP would).
    Freeze(Duration),
    /// Drop the runtime with everything on it (as kill -9 would).
    Crash,
}

struct Gateway {
    owned: watch::Receiver<Owned>,
    control: mpsc::UnboundedSender<Control>,
}

/// Gateway `name` on a thread and current-thread runtime of its own.
async fn gateway(nats: &NatsCluster, name: &str) -> Gateway {
    let servers = nats.urls();
    let name = name.to_string();
    let (ready_tx, ready) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let settings = member::MemberSettings {
                lease: LEASE,
                ..common::nats::member_settings(servers, &name)
            };
            let checks = common::nats::device_checks();
            let member = member::start(
                &settings,
                common::nats::engine_parts(&name),
                checks,
                Arc::new(common::nats::Nowhere),
                |journal| Box::new(journal),
                None,
            )
            .await
            .unwrap();
            let (control_tx, mut control) = mpsc::unbounded_channel();
            let _ = ready_tx.send(Gateway {
                owned: member.owned.clone(),
                control: control_tx,
            });
            while let Some(order) = control.recv().await {
                match order {
                    Control::Freeze(how_long) => std::thread::sleep(how_long),
                    Control::Crash => break,
                }
            }
        });
        // Dropping the runtime here ends every task without a goodbye.
    });
    ready.await.expect("the gateway started")
}

/// Readings of chair `c` at 5 Hz: SpO2 85 for the first second of every three
/// (a breach), 97 otherwise. Reading `seq` of a chair breaches when this says.
fn breaching(seq: u64) -> bool {
    seq % 15 < 5
}

#[tokio::test]
#[ignore = "cluster mode does not survive the failure script yet: see the module doc"]
async fn three_gateways_survive_a_crash_a_lost_node_and_a_freeze() {
    let mut nats = NatsCluster::start(3).await;
    // The MQTT listener's stream exists once a first MQTT client connected.
    drop(common::Device::connect("127.0.0.1", nats.nodes[0].mqtt_port).await);
    let g1 = gateway(&nats, "gw-1").await;
    let g2 = gateway(&nats, "gw-2").await;
    let g3 = gateway(&nats, "gw-3").await;
    common::eventually(
        || {
            let n: usize = [&g1, &g2, &g3].iter().map(|g| g.owned.borrow().len()).sum();
            async move { n == PARTITIONS as usize }
        },
        "every partition owned",
    )
    .await;
    let js = vitalgate::cluster::connect(&nats.urls(), "watcher")
        .await
        .unwrap();
    let mut feed = Feed::open(&js, SiteScope::all(), 0).await.unwrap();

    // Devices publish through node 2, which is never killed.
    let chairs = 12u64;
    let mut device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut episodes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut crashed, mut killed, mut frozen) = (false, false, false);
    let mut seq = 0u64;
    let mut starts = Vec::new();
    while started.elapsed() < Duration::from_secs(48) {
        tick.tick().await;
        let at = started.elapsed();
        if !crashed && at >= Duration::from_secs(3) {
            g1.control.send(Control::Crash).unwrap();
            crashed = true;
        }
        if !killed && at >= Duration::from_secs(15) {
            nats.kill(2);
            killed = true;
        }
        if !frozen && at >= Duration::from_secs(27) {
            g2.control
                .send(Control::Freeze(LEASE.ttl + Duration::from_secs(2)))
                .unwrap();
            frozen = true;
        }
        for c in 1..=chairs {
            let spo2 = if breaching(seq) { 85 } else { 97 };
            device
                .publish(
                    &format!("clinic/north/chair/{c}/vitals"),
                    &common::reading(seq, json!({ "spo2": spo2 })),
                )
                .await;
            if seq.is_multiple_of(15) {
                *episodes.entry(format!("north/{c}")).or_default() += 1;
                if c == 1 {
                    starts.push((vitalgate::clock::now_ms(), at));
                }
            }
        }
        seq += 1;
    }
    // The last episode must have ended: 97 until the cycle is over.
    while !seq.is_multiple_of(15) {
        tick.tick().await;
        for c in 1..=chairs {
            device
                .publish(
                    &format!("clinic/north/chair/{c}/vitals"),
                    &common::reading(seq, json!({ "spo2": 97 })),
                )
                .await;
        }
        seq += 1;
    }
    // Acknowledged late while the listener's stream changed leaders.
    device
        .wait_acked_within((seq * chairs) as usize, Duration::from_secs(60))
        .await;

    // Every episode raised once and cleared once, in order, per chair.
    let expected: u64 = episodes.values().sum::<u64>() * 2;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while got < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = tokio::time::timeout(left, feed.next()).await else {
            break;
        };
        let frame: serde_json::Value = serde_json::from_str(event.unwrap().frame.as_str()).unwrap();
        let state = frame["state"].as_str().unwrap().to_string();
        if state == "raised" || state == "cleared" {
            got += 1;
            let ts = frame["ts"].as_u64().unwrap();
            let episode = starts.iter().rposition(|(ms, _)| *ms <= ts + 100);
            seen.entry(frame["chair"].as_str().unwrap().to_string())
                .or_default()
                .push(format!("{state}@{episode:?}"));
        }
    }
    let mut wrong = Vec::new();
    for (chair, n) in &episodes {
        let states = seen.get(chair).cloned().unwrap_or_default();
        let alternate = states
            .iter()
            .enumerate()
            .all(|(i, s)| s.starts_with(if i % 2 == 0 { "raised" } else { "cleared" }));
        if states.len() as u64 != n * 2 || !alternate {
            wrong.push(format!("{chair}: {n} breaches, events {states:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nepisodes began at {:?}",
        wrong.join("\n"),
        starts.iter().map(|(_, at)| *at).collect::<Vec<_>>()
    );
    let _ = g3.control.send(Control::Crash);
    let _ = g2.control.send(Control::Crash);
}
