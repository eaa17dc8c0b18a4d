//! End to end against a real broker: device publishes over MQTT, dashboards receive
//! over WebSockets.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn breach_raises_an_alarm_on_the_dashboard_and_recovery_clears_it() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    let snap = dash.next_of("snapshot").await;
    assert_eq!(snap["alarms"], json!([]));
    let dev = gw.device().await;
    let topic = gw.topic("north", "7");

    dev.publish(&topic, &reading(1, json!({"spo2": 97, "hr": 80})))
        .await;
    dev.publish(&topic, &reading(2, json!({"spo2": 85}))).await;
    let raised = dash.next_of("alarm").await;
    assert_eq!(raised["state"], "raised");
    assert_eq!(raised["chair"], "north/7");
    assert_eq!(raised["vital"], "spo2");
    assert_eq!(raised["rule"], "spo2_low");
    assert_eq!(raised["condition"], "low");
    assert_eq!(raised["value"], 85.0);
    assert_eq!(raised["limit"], 90.0);
    assert_eq!(raised["priority"], "high");
    assert!(raised["ts"].as_u64().unwrap() > 0);
    assert!(raised["received_at"].as_u64().unwrap() >= raised["ts"].as_u64().unwrap() - 1000);
    let seq = raised["seq"].as_u64().unwrap();

    // Inside the hysteresis band: still active. Past it: cleared, same id, next seq.
    dev.publish(&topic, &reading(3, json!({"spo2": 91}))).await;
    dev.publish(&topic, &reading(4, json!({"spo2": 93}))).await;
    let cleared = dash.next_of("alarm").await;
    assert_eq!(cleared["state"], "cleared");
    assert_eq!(cleared["id"], raised["id"]);
    assert_eq!(cleared["seq"].as_u64().unwrap(), seq + 1);
    assert_eq!(cleared["value"], 93.0);

    // A new dashboard sees the chair's latest vitals and no active alarm.
    let mut late = gw.dashboard().await;
    let snap = late.next_of("snapshot").await;
    assert_eq!(snap["seq"].as_u64().unwrap(), seq + 1);
    assert_eq!(snap["chairs"][0]["chair"], "north/7");
    assert_eq!(snap["chairs"][0]["vitals"]["spo2"]["value"], 93.0);
    assert_eq!(snap["chairs"][0]["vitals"]["hr"]["value"], 80.0);
    assert_eq!(snap["alarms"], json!([]));
    assert_eq!(gw.metric("vitalgate_readings_ingested_total").await, 4.0);
    // The latency histograms saw the traffic: four readings, two alarms
    // released after their commit and written to the first dashboard.
    assert_eq!(
        gw.metric("vitalgate_device_to_ingest_seconds_count").await,
        4.0
    );
    assert_eq!(
        gw.metric("vitalgate_ingest_to_release_seconds_count").await,
        2.0
    );
    assert!(gw.metric("vitalgate_ingest_to_ws_send_seconds_count").await >= 2.0);
    gw.stop().await;
}

#[tokio::test]
async fn snapshot_on_connect_holds_active_alarms() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let mut first = gw.dashboard().await;
    first.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 80})))
        .await;
    let raised = first.next_of("alarm").await;

    let mut second = gw.dashboard().await;
    let snap = second.next_of("snapshot").await;
    assert_eq!(snap["seq"], raised["seq"]);
    assert_eq!(snap["alarms"][0]["id"], raised["id"]);
    assert_eq!(snap["alarms"][0]["state"], "raised");
    gw.stop().await;
}

#[tokio::test]
async fn redelivered_reading_raises_no_second_alarm() {
    let (gw, mut dash, dev) = setup(|_| {}).await;
    let topic = gw.topic("north", "2");

    let breach = reading(10, json!({"spo2": 84}));
    dev.publish(&topic, &breach).await;
    dev.publish(&topic, &breach).await; // as a QoS 1 redelivery would
    dev.publish(&topic, &reading(11, json!({"spo2": 98}))).await;
    let a = dash.next_of("alarm").await;
    let b = dash.next_of("alarm").await;
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("raised"), Some("cleared"))
    );
    assert_eq!(gw.metric("vitalgate_readings_duplicate_total").await, 1.0);
    assert_eq!(gw.metric("vitalgate_readings_ingested_total").await, 2.0);
    gw.stop().await;
}

/// Readings applied and journaled whose PUBACKs never reached the broker (the
/// gateway died first) come again after the restart: the breach and recovery
/// they made are not made a second time.
#[tokio::test]
async fn readings_redelivered_after_a_restart_raise_no_second_alarm() {
    let (mut config, prefix) = test_config();
    simple_rules(&mut config);
    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    let topic = gw.topic("west", "1");
    let breach = reading(1, json!({"spo2": 84}));
    let recovery = reading(2, json!({"spo2": 97}));
    dev.publish(&topic, &breach).await;
    dev.publish(&topic, &recovery).await;
    assert_eq!(dash.next_of("alarm").await["state"], "raised");
    assert_eq!(dash.next_of("alarm").await["state"], "cleared");
    dev.wait_acked(2).await;
    gw.stop().await;

    let gw = TestGateway::start(config, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let dev = gw.device().await;
    // As the broker redelivers what was not acknowledged.
    dev.publish(&topic, &breach).await;
    dev.publish(&topic, &recovery).await;
    // A new breach is the first alarm after the restart.
    dev.publish(&topic, &reading(3, json!({"spo2": 83}))).await;
    let first = dash.next_of("alarm").await;
    assert_eq!(
        (first["state"].as_str(), first["value"].as_f64()),
        (Some("raised"), Some(83.0))
    );
    assert_eq!(gw.metric("vitalgate_readings_duplicate_total").await, 2.0);
    gw.stop().await;
}

/// A breach applied and journaled whose PUBACK never reached the broker, the
/// recovery after it not yet applied when the gateway died: after the restart the
/// breach comes again and changes nothing, and the recovery ends the alarm taken
/// back from the audit trail.
#[tokio::test]
async fn a_recovery_after_a_restart_ends_the_alarm_taken_back() {
    let (mut config, prefix) = test_config();
    simple_rules(&mut config);
    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    let topic = gw.topic("west", "2");
    let breach = reading(1, json!({"spo2": 84}));
    dev.publish(&topic, &breach).await;
    let raised = dash.next_of("alarm").await;
    assert_eq!(raised["state"], "raised");
    dev.wait_acked(1).await;
    gw.stop().await;

    let gw = TestGateway::start(config, prefix).await;
    let mut dash = gw.dashboard().await;
    let snapshot = dash.next_of("snapshot").await;
    let open = snapshot["alarms"].as_array().unwrap();
    assert_eq!(open.len(), 1, "the alarm is taken back: {snapshot}");
    assert_eq!(open[0]["id"], raised["id"]);
    let dev = gw.device().await;
    dev.publish(&topic, &breach).await; // as the broker redelivers it
    dev.publish(&topic, &reading(2, json!({"spo2": 97}))).await;
    let ended = dash.next_of("alarm").await;
    assert_eq!(
        (ended["id"].clone(), ended["state"].as_str()),
        (raised["id"].clone(), Some("cleared"))
    );
    assert_eq!(gw.metric("vitalgate_readings_duplicate_total").await, 1.0);
    assert_eq!(gw.metric("vitalgate_readings_ingested_total").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn reconnect_with_since_replays_missed_alarms_in_order() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    let snap = dash.next_of("snapshot").await;
    let instance = snap["instance"].as_str().unwrap().to_string();
    let dev = gw.device().await;
    dev.publish(&gw.topic("north", "3"), &reading(1, json!({"spo2": 80})))
        .await;
    let seen = dash.next_of("alarm").await;
    let since = seen["seq"].as_u64().unwrap();
    drop(dash); // the dashboard goes away

    // While it is away: cleared on chair 3, raised on chair 4.
    let mut watcher = gw.dashboard().await;
    watcher.next_of("snapshot").await;
    dev.publish(&gw.topic("north", "3"), &reading(2, json!({"spo2": 97})))
        .await;
    dev.publish(&gw.topic("north", "4"), &reading(1, json!({"spo2": 70})))
        .await;
    watcher.next_of("alarm").await;
    watcher.next_of("alarm").await;

    let mut back =
        Dashboard::connect(gw.http(), &format!("?since={since}&instance={instance}")).await;
    let a = back.next().await;
    let b = back.next().await;
    assert_eq!(a["type"], "alarm");
    assert_eq!(a["seq"].as_u64().unwrap(), since + 1);
    assert_eq!(
        (a["chair"].as_str(), a["state"].as_str()),
        (Some("north/3"), Some("cleared"))
    );
    assert_eq!(b["seq"].as_u64().unwrap(), since + 2);
    assert_eq!(
        (b["chair"].as_str(), b["state"].as_str()),
        (Some("north/4"), Some("raised"))
    );

    // A `since` from another gateway instance is told plainly and re-snapshotted.
    let mut stale = Dashboard::connect(gw.http(), &format!("?since={since}&instance=0000")).await;
    let missed = stale.next().await;
    assert_eq!(missed["type"], "missed");
    let snap = stale.next().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["alarms"].as_array().unwrap().len(), 1);

    // A `since` from an earlier run (smaller than anything this run issued) is
    // recognised without `instance`, because seq keeps increasing across restarts.
    let mut old_run = Dashboard::connect(gw.http(), "?since=12345").await;
    assert_eq!(old_run.next().await["type"], "missed");
    assert_eq!(old_run.next().await["type"], "snapshot");
    gw.stop().await;
}

#[tokio::test]
async fn since_older_than_the_replay_buffer_says_missed_then_snapshots() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.websocket.replay_capacity = 2;
    let gw = TestGateway::start(c, prefix).await;
    let mut watcher = gw.dashboard().await;
    let base = watcher.next_of("snapshot").await["seq"].as_u64().unwrap();
    let dev = gw.device().await;
    let topic = gw.topic("south", "1");
    for (seq, spo2) in [(1, 80), (2, 97), (3, 80), (4, 97)] {
        dev.publish(&topic, &reading(seq, json!({ "spo2": spo2 })))
            .await;
        watcher.next_of("alarm").await;
    }
    let mut back = Dashboard::connect(gw.http(), &format!("?since={}", base + 1)).await;
    let missed = back.next().await;
    assert_eq!(missed["type"], "missed");
    assert_eq!(missed["oldest_available"], base + 3);
    assert_eq!(missed["latest"], base + 4);
    assert_eq!(back.next().await["type"], "snapshot");
    gw.stop().await;
}

#[tokio::test]
async fn acknowledgement_reaches_every_dashboard() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let mut nurse = gw.dashboard().await;
    let mut station = gw.dashboard().await;
    nurse.next_of("snapshot").await;
    station.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("north", "5"), &reading(1, json!({"spo2": 82})))
        .await;
    let raised = nurse.next_of("alarm").await;
    station.next_of("alarm").await;

    nurse
        .send(json!({"type": "ack", "id": raised["id"], "by": "nurse.kim"}))
        .await;
    for d in [&mut nurse, &mut station] {
        let ack = d.next_of("alarm").await;
        assert_eq!(ack["state"], "acknowledged");
        assert_eq!(ack["id"], raised["id"]);
        assert_eq!(ack["acknowledged_by"], "nurse.kim");
        assert_eq!(
            ack["seq"].as_u64().unwrap(),
            raised["seq"].as_u64().unwrap() + 1
        );
    }
    // A second acknowledgement and an unknown id are refused, to the sender only.
    station
        .send(json!({"type": "ack", "id": raised["id"], "by": "nurse.lee"}))
        .await;
    let err = station.next_of("error").await;
    assert_eq!(err["code"], "already_acknowledged");
    station
        .send(json!({"type": "ack", "id": 999_999, "by": "nurse.lee"}))
        .await;
    assert_eq!(station.next_of("error").await["code"], "unknown_alarm");
    station.send(json!({"type": "reboot"})).await;
    assert_eq!(station.next_of("error").await["code"], "bad_command");

    // Clearing keeps who acknowledged it.
    dev.publish(&gw.topic("north", "5"), &reading(2, json!({"spo2": 99})))
        .await;
    let cleared = nurse.next_of("alarm").await;
    assert_eq!(cleared["state"], "cleared");
    assert_eq!(cleared["acknowledged_by"], "nurse.kim");
    assert_eq!(gw.metric("vitalgate_ws_commands_rejected_total").await, 3.0);
    gw.stop().await;
}

#[tokio::test]
async fn live_vitals_for_a_site() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let dev = gw.device().await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    dash.send(json!({"type": "subscribe_vitals", "site": "east"}))
        .await;
    assert_eq!(dash.next().await["type"], "vitals_subscribed");
    dev.publish(&gw.topic("west", "1"), &reading(1, json!({"hr": 61})))
        .await;
    dev.publish(
        &gw.topic("east", "1"),
        &reading(
            1,
            json!({"hr": 72, "pump": {"running": true, "rate_ml_h": 30.0, "infused_ml": 4.5}}),
        ),
    )
    .await;
    let v = dash.next_of("vitals").await;
    assert_eq!(v["chair"], "east/1");
    assert_eq!(v["site"], "east");
    assert_eq!(v["vitals"]["hr"]["value"], 72.0);
    assert_eq!(v["pump"]["rate_ml_h"], 30.0);
    dash.send(json!({"type": "unsubscribe_vitals"})).await;
    assert_eq!(
        dash.next_of("vitals_unsubscribed").await["type"],
        "vitals_unsubscribed"
    );
    gw.stop().await;
}

#[tokio::test]
async fn every_bad_payload_is_rejected_and_counted_and_the_next_good_one_alarms() {
    let (gw, mut dash, dev) = setup(|c| {
        c.ingest.max_payload_bytes = 512;
    })
    .await;
    let topic = gw.topic("north", "9");
    let now = now_ms();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "payload_too_large",
            format!(
                r#"{{"seq":1,"ts":{now},"hr":60,"pad":"{}"}}"#,
                "x".repeat(600)
            )
            .into_bytes(),
        ),
        ("invalid_utf8", b"{\"seq\":1,\"ts\":1,\"hr\":\xff}".to_vec()),
        ("malformed_json", b"{\"seq\":1,".to_vec()),
        (
            "wrong_type",
            format!(r#"{{"seq":1,"ts":{now},"spo2":"low"}}"#).into_bytes(),
        ),
        (
            "missing_field",
            format!(r#"{{"ts":{now},"hr":60}}"#).into_bytes(),
        ),
        (
            "out_of_range",
            format!(r#"{{"seq":1,"ts":{now},"spo2":140}}"#).into_bytes(),
        ),
        (
            "no_vitals",
            format!(r#"{{"seq":1,"ts":{now}}}"#).into_bytes(),
        ),
        (
            "future_timestamp",
            format!(r#"{{"seq":1,"ts":{},"spo2":80}}"#, now + 3_600_000).into_bytes(),
        ),
    ];
    for (_, payload) in &bad {
        dev.publish_raw(&topic, payload.clone()).await;
    }
    dev.publish_raw(
        &gw.topic("north", "bad chair"),
        format!(r#"{{"seq":1,"ts":{now},"spo2":80}}"#),
    )
    .await;
    // `hr: -5` is out of range too, and must not touch the patient's state.
    dev.publish_raw(&topic, format!(r#"{{"seq":2,"ts":{now},"hr":-5}}"#))
        .await;
    dev.publish(&topic, &reading(3, json!({"spo2": 81}))).await;

    let alarm = dash.next_of("alarm").await;
    assert_eq!(
        (alarm["chair"].as_str(), alarm["value"].as_f64()),
        (Some("north/9"), Some(81.0))
    );
    let m = |reason: &str| format!("vitalgate_readings_rejected_total{{reason=\"{reason}\"}}");
    for (reason, _) in &bad {
        let expected = if *reason == "out_of_range" { 2.0 } else { 1.0 };
        assert_eq!(gw.metric(&m(reason)).await, expected, "{reason}");
    }
    assert_eq!(gw.metric(&m("bad_topic")).await, 1.0);
    assert_eq!(gw.metric("vitalgate_readings_ingested_total").await, 1.0);
    let mut check = gw.dashboard().await;
    let snap = check.next_of("snapshot").await;
    assert_eq!(snap["chairs"].as_array().unwrap().len(), 1);
    assert!(snap["chairs"][0]["vitals"].get("hr").is_none());
    gw.stop().await;
}

/// A payload far over every limit (2 MiB, accepted by a broker with no size limit)
/// is rejected and acknowledged like any other bad input: it neither breaks the MQTT
/// connection nor comes back forever, and the next reading still alarms.
#[tokio::test]
async fn huge_payload_is_rejected_without_breaking_ingest() {
    let (gw, mut dash, dev) = setup(|_| {}).await;
    let topic = gw.topic("north", "11");
    dev.publish_raw(&topic, vec![b'x'; 2 << 20]).await;
    dev.publish(&topic, &reading(1, json!({"spo2": 77}))).await;
    assert_eq!(dash.next_of("alarm").await["value"], 77.0);
    let m = "vitalgate_readings_rejected_total{reason=\"payload_too_large\"}";
    assert_eq!(gw.metric(m).await, 1.0);
    assert_eq!(
        gw.metric("vitalgate_mqtt_connection_errors_total").await,
        0.0
    );
    gw.stop().await;
}
