//! The gateway in cluster mode, as `vitalgate` runs it with `[cluster]
//! enabled = true`: two gateways on a 3-node NATS cluster, devices publishing
//! to a NATS node's MQTT listener, dashboards on both gateways over real
//! WebSockets: alarms, commands, live vitals and `since` across gateways, and
//! the PostgreSQL audit trail.

mod common;

use common::cluster_script::gateway_config;
use common::nats::{NatsCluster, LEASE_TIMES, OWNERSHIP, PARTITIONS};
use common::pg::TestDb;
use common::Dashboard;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use vitalgate::cluster::gateway::ClusterGateway;
use vitalgate::Config;

/// The lease time here: long enough beside the tests' margin and round that a
/// partition given back and released when let go (1.5 s and a round or two)
/// is told from one waiting out its deadline (at least 6 - 0.75 - 0.3 s).
const LEASE_MS: u64 = 6_000;

/// A gateway's config ([`gateway_config`]) with the tests' margin and round.
fn config(nats: &NatsCluster, name: &str, audit: &TestDb) -> Config {
    let mut c = gateway_config(nats, name, audit);
    let k = &mut c.cluster;
    k.lease_ms = LEASE_MS;
    k.lease_margin_ms = LEASE_TIMES.margin.as_millis() as u64;
    k.snapshot_ms = 200;
    k.round_ms = OWNERSHIP.round.as_millis() as u64;
    c
}

fn held(gateway: &ClusterGateway) -> BTreeSet<u32> {
    gateway
        .app()
        .health
        .cluster()
        .map(|c| c.partitions.into_iter().collect())
        .unwrap_or_default()
}

/// Until `gateway` holds `chair`'s partition.
async fn holds(gateway: &ClusterGateway, chair: &str) {
    let partition = vitalgate::cluster::partition_of(chair, PARTITIONS);
    let held_by = Instant::now() + Duration::from_secs(30);
    while !held(gateway).contains(&partition) {
        assert!(Instant::now() < held_by, "{chair} not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chair whose partition `gateway` holds.
fn chair_of(gateway: &ClusterGateway, taken: &[String]) -> String {
    let mine = held(gateway);
    (1..1000)
        .map(|c| format!("north/{c}"))
        .find(|chair| {
            mine.contains(&vitalgate::cluster::partition_of(chair, PARTITIONS))
                && !taken.contains(chair)
        })
        .expect("a chair in one of the gateway's partitions")
}

/// The next frame of `kind` whose `state` is `state`.
async fn next_alarm(dashboard: &mut Dashboard, state: &str) -> Value {
    loop {
        let frame = dashboard.next_of("alarm").await;
        if frame["state"] == state {
            return frame;
        }
    }
}

#[tokio::test]
async fn any_gateway_serves_any_dashboard_and_commands_reach_the_chairs_owner() {
    let nats = NatsCluster::start(3).await;
    // The MQTT listener's stream exists once a first MQTT client connected.
    let device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let audit = TestDb::create().await;
    let a = ClusterGateway::start(config(&nats, "gw-a", &audit))
        .await
        .unwrap();
    // Gateway b keeps only the latest event in memory: a dashboard resuming on
    // it further back is served from the events stream.
    let mut config_b = config(&nats, "gw-b", &audit);
    config_b.websocket.replay_capacity = 1;
    let b = ClusterGateway::start(config_b).await.unwrap();
    // Gateway a, up first, took every partition and gives b its share one a
    // round: each is released once a has let it go and its unacknowledged
    // messages are due again (the margin), not at its lease's deadline.
    let shared_by = Instant::now() + Duration::from_secs(60);
    let (mut before, mut left_a, mut moves) = (held(&a), BTreeMap::new(), Vec::new());
    loop {
        let (now_a, now_b) = (held(&a), held(&b));
        for p in before.difference(&now_a) {
            left_a.insert(*p, Instant::now());
        }
        for p in &now_b {
            if let Some(at) = left_a.remove(p) {
                moves.push(at.elapsed());
            }
        }
        before = now_a;
        if !before.is_empty() && !now_b.is_empty() && before.len() + now_b.len() == 16 {
            break;
        }
        assert!(Instant::now() < shared_by, "partitions not shared out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    moves.sort();
    println!("partitions from a to b after {moves:?}");
    // Waiting out the deadline takes at least ttl - margin - a round (4.95 s).
    let median = *moves.get(moves.len() / 2).expect("a partition seen moving");
    assert!(median < Duration::from_millis(3_500), "{moves:?}");

    // /ready names the partitions held and the stream reached.
    let (status, body) = common::http_get(a.http_addr(), "/ready").await;
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(ready["cluster"]["stream_reachable"], true, "{body}");
    assert_eq!(ready["mqtt_subscribed"], true, "{body}");
    assert_eq!(
        common::metric(a.http_addr(), "vitalgate_mqtt_connected").await,
        1.0,
        "the device path is up: the single-node rules' MQTT alert stays quiet"
    );
    assert!(!ready["cluster"]["partitions"]
        .as_array()
        .unwrap()
        .is_empty());
    // Each gateway counts what it took and gave back; every partition it holds
    // was restored and read, and its takeover timed.
    for gateway in [&a, &b] {
        let addr = gateway.http_addr();
        common::eventually(
            || async move {
                let m = |name: &'static str| common::metric(addr, name);
                let owned = m("vitalgate_cluster_partitions_owned").await;
                let took = m("vitalgate_cluster_takeovers_total").await;
                let gave = m("vitalgate_cluster_partitions_given_back_total").await;
                let lost = m("vitalgate_cluster_leases_lost_total").await;
                let timed = m("vitalgate_cluster_takeover_seconds_count").await;
                let serving = m("vitalgate_cluster_partitions_serving").await;
                // A partition taken and gone before it was served is not timed.
                owned > 0.0
                    && took - gave - lost == owned
                    && (owned..=took).contains(&timed)
                    && serving == owned
            },
            "cluster metrics add up",
        )
        .await;
        for gauge in [
            "vitalgate_cluster_device_messages_pending",
            "vitalgate_cluster_events_unread",
            "vitalgate_cluster_audit_pending",
        ] {
            assert!(common::metric(addr, gauge).await >= 0.0);
        }
    }
    // The cluster's alert rules and board query metrics a cluster gateway
    // exposes.
    common::assert_deploy_queries_exposed(
        a.http_addr(),
        &[
            "prometheus/vitalgate-cluster-rules.yml",
            "grafana/vitalgate-cluster-dashboard.json",
        ],
        5,
    )
    .await;
    assert_eq!(
        common::metric(a.http_addr(), "vitalgate_cluster_partitions").await,
        16.0
    );
    let owned_a = common::metric(a.http_addr(), "vitalgate_cluster_partitions_owned").await;
    let owned_b = common::metric(b.http_addr(), "vitalgate_cluster_partitions_owned").await;
    assert_eq!(owned_a + owned_b, 16.0);

    let mut on_a = Dashboard::connect(a.http_addr(), "").await;
    let mut on_b = Dashboard::connect(b.http_addr(), "").await;
    let (snap_a, snap_b) = (
        on_a.next_of("snapshot").await,
        on_b.next_of("snapshot").await,
    );
    assert_eq!(
        snap_a["instance"], snap_b["instance"],
        "one stream, one instance"
    );
    assert!(snap_a["instance"].as_str().is_some_and(|i| !i.is_empty()));

    // One chair owned by each gateway breaches.
    let chair_a = chair_of(&a, &[]);
    let chair_b = chair_of(&b, &[]);
    for chair in [&chair_a, &chair_b] {
        device
            .publish(
                &format!("clinic/{}/vitals", chair.replacen('/', "/chair/", 1)),
                &common::reading(1, json!({ "spo2": 84 })),
            )
            .await;
    }
    let mut raised = Vec::new();
    for dashboard in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let alarm = next_alarm(dashboard, "raised").await;
            seen.push((
                alarm["seq"].as_u64().unwrap(),
                alarm["chair"].as_str().unwrap().to_string(),
                alarm["id"].as_u64().unwrap(),
            ));
        }
        raised.push(seen);
    }
    assert_eq!(
        raised[0], raised[1],
        "the same events, the same seq, on both gateways"
    );
    let chairs: BTreeSet<&str> = raised[0].iter().map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(chairs, BTreeSet::from([chair_a.as_str(), chair_b.as_str()]));

    // A nurse on gateway b acknowledges the alarm of gateway a's chair: the
    // command goes to its owner; both dashboards see the acknowledgement.
    let (first_seq, _, id_a) = raised[0]
        .iter()
        .find(|(_, chair, _)| *chair == chair_a)
        .cloned()
        .unwrap();
    on_b.send(json!({ "type": "ack", "id": id_a, "by": "nurse.kim" }))
        .await;
    let acked_b = next_alarm(&mut on_b, "acknowledged").await;
    let acked_a = next_alarm(&mut on_a, "acknowledged").await;
    assert_eq!(acked_a["seq"], acked_b["seq"]);
    assert_eq!(
        (acked_a["id"].as_u64(), acked_a["acknowledged_by"].as_str()),
        (Some(id_a), Some("nurse.kim"))
    );
    // An alarm nobody raised: refused by name.
    on_b.send(json!({ "type": "ack", "id": 12345, "by": "nurse.kim" }))
        .await;
    let refused = on_b.next_of("error").await;
    assert_eq!(refused["code"], "unknown_alarm", "{refused}");

    // A nurse on gateway b starts gateway a's chair's session.
    on_b.send(
        json!({ "type": "set_session", "chair": chair_a, "phase": "baseline", "patient": "P-7", "by": "nurse.kim" }),
    )
    .await;
    let session = on_b.next_of("session").await;
    assert_eq!(session["chair"], chair_a.as_str(), "{session}");

    // Live vitals of gateway a's chair reach a dashboard on gateway b.
    on_b.send(json!({ "type": "subscribe_vitals" })).await;
    on_b.next_of("vitals_subscribed").await;
    device
        .publish(
            &format!("clinic/{}/vitals", chair_a.replacen('/', "/chair/", 1)),
            &common::reading(2, json!({ "spo2": 84, "hr": 71 })),
        )
        .await;
    loop {
        let vitals = on_b.next_of("vitals").await;
        if vitals["chair"] == chair_a.as_str() && vitals["vitals"]["hr"]["value"] == 71.0 {
            break;
        }
    }

    // A dashboard subscribing on gateway b later gets gateway a's chair's
    // current values at once (no reading of it is published after this).
    let mut late = Dashboard::connect(b.http_addr(), "").await;
    late.send(json!({ "type": "subscribe_vitals" })).await;
    loop {
        let vitals = late.next_of("vitals").await;
        if vitals["chair"] == chair_a.as_str() {
            assert_eq!(vitals["vitals"]["hr"]["value"], 71.0, "{vitals}");
            break;
        }
    }

    // A dashboard moving from gateway a to gateway b resumes with its `since`:
    // exactly what came after it, although b keeps only the latest event.
    drop(on_a);
    let mut moved = Dashboard::connect(b.http_addr(), &format!("?since={first_seq}")).await;
    let mut expected: Vec<u64> = raised[0]
        .iter()
        .map(|(seq, _, _)| *seq)
        .chain([acked_b["seq"].as_u64().unwrap()])
        .filter(|seq| *seq > first_seq)
        .collect();
    expected.sort_unstable();
    let mut after = Vec::new();
    while after.len() < expected.len() {
        let frame = moved.next().await;
        assert_ne!(frame["type"], "missed", "{frame}");
        if frame["type"] == "alarm" {
            after.push(frame["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(after, expected);

    // Both gateways write the audit trail: every event once, under its `seq`.
    let mut seqs: Vec<u64> = raised[0].iter().map(|(seq, _, _)| *seq).collect();
    seqs.push(acked_b["seq"].as_u64().unwrap());
    seqs.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = audit.wait_for_alarms(&seqs, Duration::from_secs(30)).await;
    assert_eq!(stored, seqs, "the audit trail's alarm events");

    // `/api` on any gateway reads it, the frames numbered as dashboards got them.
    let (status, body) = common::http_get(b.http_addr(), "/api/alarms").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let mut api_seqs: Vec<u64> = listed["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    api_seqs.sort_unstable();
    assert_eq!(api_seqs, seqs, "{body}");
    let path = format!("/api/alarms?chair={chair_b}");
    let (status, body) = common::http_get(a.http_addr(), &path).await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let chairs: BTreeSet<&str> = listed["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["chair"].as_str().unwrap())
        .collect();
    assert_eq!(chairs, BTreeSet::from([chair_b.as_str()]), "{body}");
    // Gateway a's chair's session, asked of gateway b: the session now (from
    // the events stream) and its recorded change, under its `seq`.
    let path = format!("/api/sessions/{chair_a}");
    let body = loop {
        let (status, body) = common::http_get(b.http_addr(), &path).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let history: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(history["current"]["phase"], "baseline", "{body}");
    assert_eq!(history["current"]["patient"], "P-7", "{body}");
    assert_eq!(history["events"][0]["seq"], session["seq"], "{body}");

    // A clean stop of gateway a: b holds all its chairs again as soon as a has
    // let them go, not once a's leases' deadlines have passed.
    let stopping = Instant::now();
    let b_takes_all = async {
        while held(&b).len() != 16 {
            assert!(
                stopping.elapsed() < Duration::from_secs(30),
                "b did not take over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stopping.elapsed()
    };
    let ((), took) = tokio::join!(a.shutdown(), b_takes_all);
    println!("gateway b held every partition {took:?} after a began to stop");
    assert!(took < Duration::from_millis(3_500), "{took:?}");
    b.shutdown().await;
}

/// Session and limit events are named by their gateway and its engine's
/// sequence in the events stream and the audit trail, which drop a name seen
/// before: a gateway started again must not name its changes as its last run
/// did, or they would reach no dashboard and no record.
#[tokio::test]
async fn a_gateway_started_again_records_every_session_change() {
    let nats = NatsCluster::start(3).await;
    let _device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let audit = TestDb::create().await;
    let mut seqs = Vec::new();
    for (run, phase) in [(1, "baseline"), (2, "infusion")] {
        let gateway = ClusterGateway::start(config(&nats, "gw-a", &audit))
            .await
            .unwrap();
        let chair = "north/1";
        holds(&gateway, chair).await;
        let mut dashboard = Dashboard::connect(gateway.http_addr(), "").await;
        dashboard.next_of("snapshot").await;
        let command = json!({ "type": "set_session", "chair": chair, "phase": phase, "patient": "P-7", "by": "nurse.kim" });
        dashboard.send(command.clone()).await;
        let session = loop {
            let frame = dashboard.next().await;
            match frame["type"].as_str() {
                Some("session") => break frame,
                // Taken, and its command service not subscribed yet: as the
                // refusal says, send it again.
                Some("error") if frame["code"] == "no_owner" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    dashboard.send(command.clone()).await;
                }
                Some("error") => panic!("run {run}: {frame}"),
                _ => {}
            }
        };
        assert_eq!(
            (session["chair"].as_str(), session["phase"].as_str()),
            (Some(chair), Some(phase)),
            "run {run}: {session}"
        );
        seqs.push(session["seq"].as_u64().unwrap());
        gateway.shutdown().await;
    }
    let stored = audit
        .wait_for("session", &seqs, Duration::from_secs(30))
        .await;
    assert_eq!(
        stored, seqs,
        "both runs' session changes in the audit trail"
    );
}

/// PostgreSQL down when a gateway starts (after a power cut, the database
/// slower to come back than the gateways): the gateway starts, alarms flow, and
/// the audit trail is written once the database is there. A database that
/// answers with a refusal (here: no such database) stops the start instead.
#[tokio::test]
async fn a_gateway_starts_and_alarms_flow_while_postgres_is_down() {
    let nats = NatsCluster::start(3).await;
    let device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let missing = TestDb::later();
    let refused = ClusterGateway::start(config(&nats, "gw-a", &missing)).await;
    let error = refused
        .err()
        .expect("no such database: refused")
        .to_string();
    assert!(error.contains("does not exist"), "{error}");

    // The server is down: nothing listens where the gateway looks for it.
    let audit = TestDb::create().await;
    let port = common::free_port();
    let mut c = config(&nats, "gw-a", &audit);
    c.cluster.audit_postgres =
        format!("{} port={port} connect_timeout=2", audit.url()).replace("port=5432 ", "");
    let gateway = ClusterGateway::start(c)
        .await
        .expect("a gateway starts without its audit database");
    holds(&gateway, "north/1").await;
    let mut dashboard = Dashboard::connect(gateway.http_addr(), "").await;
    dashboard.next_of("snapshot").await;
    device
        .publish(
            "clinic/north/chair/1/vitals",
            &common::reading(1, json!({ "spo2": 84 })),
        )
        .await;
    let raised = next_alarm(&mut dashboard, "raised").await;
    let seq = raised["seq"].as_u64().unwrap();
    // The server is back: the machine's PostgreSQL, reached on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await
            });
        }
    });
    let stored = audit.wait_for_alarms(&[seq], Duration::from_secs(60)).await;
    assert_eq!(
        stored,
        vec![seq],
        "the alarm in the audit trail once it is there"
    );
    gateway.shutdown().await;
}

/// A gateway whose `lease_margin_ms` differs from the cluster's (its partition
/// consumers' `ack_wait`) cannot wait its way out of it: it stops at start,
/// saying why, rather than waiting for ever logging something else.
#[tokio::test]
async fn a_gateway_with_another_lease_margin_stops_at_start_saying_why() {
    let nats = NatsCluster::start(3).await;
    let _device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let audit = TestDb::create().await;
    let a = ClusterGateway::start(config(&nats, "gw-a", &audit))
        .await
        .unwrap();
    let mut other = config(&nats, "gw-b", &audit);
    other.cluster.lease_margin_ms *= 2;
    let refused = tokio::time::timeout(Duration::from_secs(60), ClusterGateway::start(other))
        .await
        .expect("an answer, not a wait");
    let error = refused.err().expect("refused").to_string();
    assert!(
        error.contains("every gateway must use one lease_margin_ms"),
        "{error}"
    );
    a.shutdown().await;
}

/// In cluster mode the events stream is the device path: a gateway that cannot
/// reach NATS says so as a single gateway does without its broker (`/ready` 503
/// with `mqtt_subscribed: false`, `vitalgate_mqtt_connected` 0), so that a load
/// balancer sends its stations elsewhere and the MQTT alert pages.
#[tokio::test]
async fn a_gateway_cut_off_from_nats_is_not_ready() {
    let mut nats = NatsCluster::start(3).await;
    let _device = common::Device::connect("127.0.0.1", nats.nodes[1].mqtt_port).await;
    let audit = TestDb::create().await;
    let gateway = ClusterGateway::start(config(&nats, "gw-a", &audit))
        .await
        .unwrap();
    let addr = gateway.http_addr();
    common::eventually(
        || async move { common::http_get(addr, "/ready").await.0 == 200 },
        "ready with NATS",
    )
    .await;
    assert_eq!(common::metric(addr, "vitalgate_mqtt_connected").await, 1.0);
    for i in 0..3 {
        nats.kill(i);
    }
    common::eventually(
        || async move {
            let (status, body) = common::http_get(addr, "/ready").await;
            let ready: Value = serde_json::from_str(&body).unwrap_or_default();
            status == 503
                && ready["mqtt_subscribed"] == false
                && ready["cluster"]["stream_reachable"] == false
        },
        "not ready without NATS",
    )
    .await;
    assert_eq!(common::metric(addr, "vitalgate_mqtt_connected").await, 0.0);
}
