//! Takeover from snapshots, with `vitalgate` processes on a 3-node NATS
//! cluster: a gateway holding a chair mid-way through a condition's delay and
//! a baseline is killed with SIGKILL; the gateway taking its partitions over
//! carries on from the chair's snapshot and the device messages after it.
//!
//! - The breach began under the first gateway: its alarm is raised by the
//!   reading that completes the delay counted from the breach's first
//!   reading (not from the first reading the second gateway saw), once.
//! - The baseline is the median of every sample of the phase, those the
//!   first gateway collected included.
//!
//! Needs `nats-server` 2.10 or later (see tests/common/nats.rs).

mod common;

use common::cluster_script::{self, GatewayProcess};
use common::nats::{NatsCluster, PARTITIONS};
use common::pg::TestDb;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;
use vitalgate::access::SiteScope;
use vitalgate::cluster::feed::Feed;
use vitalgate::cluster::snapshots::{self, Snapshot, SNAPSHOT_BUCKET};
use vitalgate::core::Vital;

const CHAIR: &str = "north/7";
/// Device time between two readings.
const STEP_MS: u64 = 200;
/// The SpO2 rule's delay: 20 readings.
const DELAY_MS: u64 = 4_000;

fn config(nats: &NatsCluster, name: &str, audit: &TestDb) -> vitalgate::Config {
    let mut c = cluster_script::gateway_config(nats, name, audit);
    c.rules[0].delay_ms = DELAY_MS;
    let k = &mut c.cluster;
    k.lease_ms = 4_000;
    k.lease_margin_ms = 1_000;
    k.round_ms = 500;
    k.snapshot_ms = 250;
    c
}

/// Reading `i`: device time `t0 + i * STEP_MS`.
fn reading(t0: u64, i: u64, hr: f64, spo2: f64) -> Value {
    json!({ "seq": i + 1, "ts": t0 + i * STEP_MS, "hr": hr, "spo2": spo2 })
}

#[tokio::test]
async fn a_chair_taken_over_carries_on_its_delay_and_baseline_from_its_snapshot() {
    let nats = NatsCluster::start(3).await;
    let mut device = common::Device::connect("127.0.0.1", nats.nodes[0].mqtt_port).await;
    let audit = TestDb::create().await;
    let dir = tempdir("takeover");
    let mut a = GatewayProcess::start(config(&nats, "gw-a", &audit), &dir).await;
    a.holds_every_partition().await;
    let js =
        async_nats::jetstream::new(async_nats::connect(nats.urls()[0].as_str()).await.unwrap());
    let mut feed = Feed::open(&js, SiteScope::all(), 0).await.unwrap();

    let (vitals, session) = (
        "clinic/north/chair/7/vitals",
        "clinic/north/chair/7/session",
    );
    let t0 = common::now_ms() - 120_000;
    device
        .publish(
            session,
            &json!({ "phase": "baseline", "patient": "P-7", "ts": t0 }),
        )
        .await;
    // On gw-a: 20 baseline samples at HR 60, then SpO2 85 from reading 20 on,
    // which must last DELAY_MS (to reading 40) before it is alarmed.
    for i in 0..30 {
        let spo2 = if i < 20 { 97.0 } else { 85.0 };
        device.publish(vitals, &reading(t0, i, 60.0, spo2)).await;
    }
    device.wait_acked(31).await;
    let last_ts = t0 + 29 * STEP_MS;
    let kv = js.get_key_value(SNAPSHOT_BUCKET).await.unwrap();
    let key = snapshots::key(vitalgate::cluster::partition_of(CHAIR, PARTITIONS), CHAIR);
    common::eventually(
        || async {
            let Ok(Some(entry)) = kv.entry(key.as_str()).await else {
                return false;
            };
            let snapshot: Snapshot = serde_json::from_slice(&entry.value).unwrap();
            snapshot.copy.state.latest().get(Vital::Spo2).map(|s| s.ts) == Some(last_ts)
        },
        "gw-a stored the chair's snapshot through reading 29",
    )
    .await;
    // Three more the killed gateway may or may not have applied and stored:
    // NATS holds them until a snapshot reflects them.
    for i in 30..33 {
        device.publish(vitals, &reading(t0, i, 60.0, 85.0)).await;
    }
    device.wait_acked(3).await;
    a.kill();

    let b = GatewayProcess::start(config(&nats, "gw-b", &audit), &dir).await;
    b.holds_every_partition().await;
    // On gw-b: the breach goes on (raised at reading 40), and 12 baseline
    // samples at HR 100: with gw-a's 20 at 60 the median stays 60.
    for i in 33..45 {
        device.publish(vitals, &reading(t0, i, 100.0, 85.0)).await;
    }
    device
        .publish(
            session,
            &json!({ "phase": "infusion", "patient": "P-7", "ts": t0 + 45 * STEP_MS }),
        )
        .await;
    device.wait_acked(13).await;

    let (mut raised, mut baseline) = (Vec::new(), None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while baseline.is_none() || raised.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = tokio::time::timeout(left, feed.next()).await else {
            panic!(
                "no alarm ({raised:?}) or no baseline ({baseline:?}) within 60 s:\n{}",
                b.log_tail(30)
            );
        };
        let frame: Value = serde_json::from_str(event.unwrap().frame.as_str()).unwrap();
        if is_breach_raised(&frame) {
            raised.push(frame["ts"].as_u64().unwrap());
        } else if frame["type"] == "session" && frame["phase"] == "infusion" {
            baseline = Some(frame["baseline"].clone());
        }
    }
    // Anything raised twice would follow within a few seconds.
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(3), feed.next()).await {
        let frame: Value = serde_json::from_str(event.frame.as_str()).unwrap();
        if is_breach_raised(&frame) {
            raised.push(frame["ts"].as_u64().unwrap());
        }
    }
    assert_eq!(
        raised,
        vec![t0 + 40 * STEP_MS],
        "one alarm, raised by reading 40 (the delay counted from reading 20, under gw-a); t0 {t0}"
    );
    let baseline = baseline.unwrap();
    assert_eq!(baseline["hr"], json!(60.0), "baseline {baseline}");
    let from_snapshots =
        common::metric(b.http, "vitalgate_cluster_chairs_from_snapshots_total").await;
    assert!(from_snapshots >= 1.0, "{from_snapshots}");
    // Kept, with the gateways' logs, only when the test fails.
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SpO2 rule's raise (technical alarms, such as a vital going stale once
/// the device stops, are not what this test is about).
fn is_breach_raised(frame: &Value) -> bool {
    frame["type"] == "alarm" && frame["state"] == "raised" && frame["rule"] == "spo2_low"
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique(&format!("vgt-{what}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
