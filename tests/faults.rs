//! Broker faults under load: nothing acknowledged is lost, nothing is alarmed twice.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn wait_ready_status(gw: &TestGateway, want: u16) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while http_get(gw.http(), "/ready").await.0 != want {
        assert!(Instant::now() < deadline, "/ready never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Under steady load from 200 chairs, the broker is frozen (SIGSTOP) for 10 s:
/// `/ready` turns 503 during the outage and 200 after, and every breach published
/// before, during and after raises exactly one alarm on the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_for_ten_seconds_loses_and_duplicates_nothing() {
    let broker = PrivateBroker::start().await;
    let (mut c, prefix) = config_for(&broker);
    c.mqtt.keep_alive_s = 2;
    c.mqtt.connect_timeout_s = 2;
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let dev = Device::connect("127.0.0.1", broker.port).await;

    // 200 chairs at 1 Hz each (half of them every 500 ms tick); chairs 0..40 breach
    // once each, spread over the run.
    const CHAIRS: u64 = 200;
    const BREACHES: u64 = 40;
    const TICKS: u64 = 28; // of 500 ms: 14 s
    let load = {
        let client = dev.client.clone();
        let gw_topic = |chair: u64| gw.topic("load", &chair.to_string());
        let topics: Vec<String> = (0..CHAIRS).map(gw_topic).collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            for t in 0..TICKS {
                tick.tick().await;
                for chair in (0..CHAIRS).filter(|c| c % 2 == t % 2) {
                    // The chair's one publishing tick in [first, first + 2), with
                    // `first` spread over ticks 1..27: before (< tick 4), during
                    // and after the pause (from about tick 24).
                    let first = 1 + chair * 26 / BREACHES;
                    let breach = chair < BREACHES && (first..first + 2).contains(&t);
                    let spo2 = if breach { 80 } else { 97 };
                    let payload = reading(t, json!({ "spo2": spo2 })).to_string();
                    client
                        .publish(
                            &topics[chair as usize],
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .unwrap();
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.signal("STOP");
    let noticed = wait_ready_status(&gw, 503).await;
    assert!(
        noticed < Duration::from_secs(10),
        "outage not noticed within the pause"
    );
    let resume_at = Instant::now() + Duration::from_secs(10) - noticed;
    tokio::time::sleep_until(resume_at.into()).await;
    broker.signal("CONT");
    wait_ready_status(&gw, 200).await;
    load.await.unwrap();

    // Every breach chair must raise exactly once. Collect until each has, then
    // publish a marker breach last and read up to it, so a late duplicate shows.
    let mut raised: HashMap<String, u32> = HashMap::new();
    while raised.len() < BREACHES as usize {
        let a = match tokio::time::timeout(DEADLINE, dash.next_of("alarm")).await {
            Ok(a) => a,
            Err(_) => {
                let (_, m) = http_get(gw.http(), "/metrics").await;
                let counters: Vec<&str> = m
                    .lines()
                    .filter(|l| {
                        l.starts_with("vitalgate_readings") || l.starts_with("vitalgate_mqtt")
                    })
                    .collect();
                panic!(
                    "alarms missing; raised so far {raised:?}\n{}",
                    counters.join("\n")
                );
            }
        };
        if a["state"] == "raised" {
            *raised
                .entry(a["chair"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    dev.publish(&gw.topic("marker", "1"), &reading(1, json!({"spo2": 70})))
        .await;
    loop {
        let a = dash.next_of("alarm").await;
        if a["chair"] == "marker/1" {
            break;
        }
        if a["state"] == "raised" {
            *raised
                .entry(a["chair"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for k in 0..BREACHES {
        assert_eq!(raised.get(&format!("load/{k}")), Some(&1), "chair {k}");
    }
    assert_eq!(raised.len(), BREACHES as usize);
    gw.stop().await;
}

/// The broker is stopped and restarted with persistence on: the gateway reconnects
/// with backoff (a handful of attempts, no storm) and the next breach alarms. Then a
/// breach published while the gateway is away survives a broker restart in the
/// broker's saved session and raises its alarm when the gateway returns.
#[tokio::test]
async fn broker_restart_with_persistence_reconnects_without_a_storm_and_keeps_the_session() {
    let mut broker = PrivateBroker::start_with(true).await;
    let (mut c, prefix) = config_for(&broker);
    c.mqtt.reconnect_initial_ms = 200;
    c.mqtt.reconnect_max_ms = 2_000;
    let gw = TestGateway::start(c.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let before = gw.metric("vitalgate_mqtt_connect_attempts_total").await;

    broker.stop();
    wait_ready_status(&gw, 503).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
    broker.start_again().await;
    wait_ready_status(&gw, 200).await;
    let attempts = gw.metric("vitalgate_mqtt_connect_attempts_total").await - before;
    // 3 s down with backoff 200 ms doubling to 2 s: about 5 attempts. A storm
    // (immediate retries) would make thousands.
    assert!(
        (1.0..=12.0).contains(&attempts),
        "{attempts} connection attempts"
    );

    let mut dev = Device::connect("127.0.0.1", broker.port).await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 80})))
        .await;
    dev.wait_acked(1).await;
    assert_eq!(dash.next_of("alarm").await["state"], "raised");

    // The gateway goes away (session kept); a breach waits for it in the broker,
    // which is then restarted: only its saved state can still hold the breach.
    let topic = gw.topic("north", "2");
    gw.gateway.shutdown().await;
    dev.publish(&topic, &reading(1, json!({"spo2": 75}))).await;
    dev.wait_acked(1).await;
    broker.stop();
    broker.start_again().await;
    let back = TestGateway::start(c, prefix).await;
    let mut dash = back.dashboard().await;
    let snap = dash.next_of("snapshot").await;
    let active = snap["alarms"].as_array().unwrap();
    // The first alarm is still open: taken back from the audit trail.
    assert!(active.iter().any(|a| a["chair"] == "north/1"), "{snap}");
    let alarm = match active.iter().find(|a| a["chair"] == "north/2") {
        Some(a) => a.clone(),
        None => dash.next_of("alarm").await,
    };
    assert_eq!(
        (alarm["chair"].as_str(), alarm["value"].as_f64()),
        (Some("north/2"), Some(75.0))
    );
    back.gateway.shutdown().await;
}
