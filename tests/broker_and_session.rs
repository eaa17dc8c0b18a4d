//! The MQTT session across broker and gateway restarts, and the limits on what the
//! gateway keeps.

mod common;

use common::*;
use serde_json::json;

/// The broker restarts and has forgotten everything: the gateway reconnects with
/// backoff, subscribes again, and the next breach still alarms.
#[tokio::test]
async fn gateway_resubscribes_when_the_broker_lost_its_session() {
    let mut broker = PrivateBroker::start().await;
    let (c, prefix) = config_for(&broker);
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;

    broker.restart().await;
    // Wait until the gateway has seen the connection drop, then until it is
    // subscribed again (readiness turns false before the error is counted).
    eventually(
        || async { gw.metric("vitalgate_mqtt_connection_errors_total").await >= 1.0 },
        "the gateway noticing the broker restart",
    )
    .await;
    let mut ready = gw.gateway.app().health.watch_mqtt_subscribed();
    tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
        .await
        .expect("subscribed again")
        .unwrap();
    let (status, _) = http_get(gw.http(), "/ready").await;
    assert_eq!(status, 200);

    let dev = Device::connect("127.0.0.1", broker.port).await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 80})))
        .await;
    assert_eq!(dash.next_of("alarm").await["state"], "raised");
    gw.stop().await;
}

/// A reading published while the gateway is down waits in its persistent session
/// and raises its alarm once the gateway is back with the same client id.
#[tokio::test]
async fn reading_published_while_gateway_is_down_is_processed_after_restart() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let first = TestGateway::start(c.clone(), prefix.clone()).await;
    let topic = first.topic("north", "2");
    let broker = first.gateway.broker().clone();
    first.gateway.shutdown().await; // keeps the session

    let mut dev = Device::connect(&broker.host, broker.port).await;
    dev.publish(&topic, &reading(1, json!({"spo2": 75}))).await;
    dev.wait_acked(1).await; // the broker holds it for the absent gateway

    let second = TestGateway::start(c, prefix).await;
    let mut dash = second.dashboard().await;
    let alarm = dash.first_alarm().await;
    assert_eq!(alarm["chair"], "north/2");
    assert_eq!(alarm["value"], 75.0);
    second.stop().await;
}

/// With an in-flight window of one, the broker sends a message only once the one
/// before it is acknowledged. Every reading of a burst is still processed: each
/// acknowledgement goes out as soon as its message is settled, without waiting for
/// further traffic on the connection (which, with this window, never comes).
#[tokio::test]
async fn a_window_of_one_message_delivers_every_reading_of_a_burst() {
    let broker = PrivateBroker::start_config(false, "max_inflight_messages 1").await;
    let (c, prefix) = config_for(&broker);
    let gw = TestGateway::start(c, prefix).await;
    let mut dev = Device::connect("127.0.0.1", broker.port).await;
    let topic = gw.topic("north", "3");
    const N: u64 = 40;
    for seq in 1..=N {
        dev.publish(&topic, &reading(seq, json!({"hr": 70}))).await;
    }
    dev.wait_acked(N as usize).await;
    eventually(
        || async { gw.metric("vitalgate_readings_ingested_total").await == N as f64 },
        "every reading of the burst processed, one acknowledgement at a time",
    )
    .await;
    gw.stop().await;
}

/// A snapshot of thousands of chairs fits in one frame and reaches the dashboard.
#[tokio::test]
async fn snapshot_of_thousands_of_chairs_reaches_the_dashboard() {
    const CHAIRS: usize = 5_000;
    let (mut c, prefix) = test_config();
    c.ingest.max_chairs = CHAIRS;
    c.websocket.max_write_buffer_bytes =
        vitalgate::config::snapshot_bound(CHAIRS, c.condition_count());
    let gw = TestGateway::start(c, prefix).await;
    let app = gw.gateway.app();
    let payload = reading(
        1,
        json!({"hr": 81.25, "spo2": 97.5, "sbp": 121.75, "dbp": 79.5, "rr": 14.25, "etco2": 37.5,
               "pump": {"running": true, "rate_ml_h": 40.125, "infused_ml": 12.375}}),
    )
    .to_string();
    for i in 0..CHAIRS {
        let topic = gw.topic("big", &format!("chair-{i:05}"));
        let done = vitalgate::ingest::process(
            &app.devices,
            &topic,
            payload.as_bytes(),
            std::time::Instant::now(),
            now_ms(),
        )
        .await;
        assert!(
            matches!(done, vitalgate::ingest::Processed::Accepted { .. }),
            "{done:?}"
        );
    }
    let mut dash = gw.dashboard().await;
    let snap = dash.next_of("snapshot").await;
    assert_eq!(snap["chairs"].as_array().unwrap().len(), CHAIRS);
    gw.stop().await;
}

/// Readings for more chairs than `ingest.max_chairs` are rejected and counted; the
/// chairs already tracked keep alarming.
#[tokio::test]
async fn chairs_beyond_the_limit_are_rejected_and_counted() {
    let (gw, mut dash, dev) = setup(|c| c.ingest.max_chairs = 2).await;
    for chair in ["1", "2", "3"] {
        dev.publish(&gw.topic("north", chair), &reading(1, json!({"hr": 70})))
            .await;
    }
    dev.publish(&gw.topic("north", "1"), &reading(2, json!({"spo2": 70})))
        .await;
    assert_eq!(dash.next_of("alarm").await["chair"], "north/1");
    let m = "vitalgate_readings_rejected_total{reason=\"chair_limit\"}";
    assert_eq!(gw.metric(m).await, 1.0);
    gw.stop().await;
}
