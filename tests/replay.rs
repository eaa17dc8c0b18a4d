//! `[capture]` and `vitalgate replay`: a capture recorded by a real gateway over a
//! real broker, replayed with the same configuration, raises the alarms that gateway
//! raised live.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const MIN: u64 = 60_000;

/// Every alarm as (raised ts, cleared ts, the rule at the highest priority it
/// reached, that priority).
type Alarms = BTreeSet<(u64, Option<u64>, String, String)>;

fn rank(priority: &str) -> u8 {
    match priority {
        "high" => 3,
        "medium" => 2,
        _ => 1,
    }
}

#[tokio::test]
async fn a_capture_replays_to_the_alarms_raised_live() {
    let broker = PrivateBroker::start().await;
    let (mut c, prefix) = test_config();
    c.mqtt.host = "127.0.0.1".into();
    c.mqtt.port = broker.port;
    let capture_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("capture"));
    c.capture.enabled = true;
    c.capture.dir = capture_dir.clone();
    // The shipped rules, delays and technical alarms, as a clinic would capture.
    let config = c.clone();
    let gw = TestGateway::start(c, prefix).await;
    let dev = gw.device().await;

    // A session 20 minutes long in device time, sent as fast as the broker takes it:
    // baseline, then the infusion with a desaturation and a blood-pressure surge.
    let t0 = now_ms() - 20 * MIN;
    let session = |phase: &str, ts: u64| {
        json!({"phase": phase, "patient": "SIM-R1", "session_number": 2,
               "session_count": 6, "route": "iv", "ts": ts})
    };
    let s = gw.session_topic("north", "1");
    dev.publish(&s, &session("baseline", t0)).await;
    let v = gw.topic("north", "1");
    let mut sent = 0;
    for i in 0..20 * 60u64 {
        let ts = t0 + i * 1000;
        if i == 10 * 60 {
            dev.publish(&s, &session("infusion", ts)).await;
        }
        let spo2 = if (14 * 60..14 * 60 + 25).contains(&i) {
            84
        } else {
            98
        };
        let mut r = json!({"seq": i + 1, "ts": ts, "hr": 72, "spo2": spo2, "rr": 14});
        if i % 180 == 5 {
            let sbp = if i == 5 * 180 + 5 { 186 } else { 122 };
            r["sbp"] = json!(sbp);
            r["dbp"] = json!(78);
        }
        dev.publish(&v, &r).await;
        sent += 1;
    }
    eventually(
        || async { gw.metric("vitalgate_readings_ingested_total").await >= sent as f64 },
        "every reading applied",
    )
    .await;
    let (status, body) = http_get(gw.http(), "/api/alarms?limit=10000").await;
    assert_eq!(status, 200);
    let live: Value = serde_json::from_str(&body).unwrap();
    // Per alarm id, in event order: raise, updates, clear.
    let mut by_id: std::collections::BTreeMap<u64, (u64, Option<u64>, String, String)> =
        Default::default();
    for a in live["alarms"].as_array().unwrap() {
        if a["escalated"] == true || a["reminder"] == true {
            continue;
        }
        let ts = a["ts"].as_u64().unwrap();
        let rule = a["rule"].as_str().unwrap().to_string();
        let priority = a["priority"].as_str().unwrap().to_string();
        let entry = by_id
            .entry(a["id"].as_u64().unwrap())
            .or_insert_with(|| (ts, None, rule.clone(), priority.clone()));
        match a["state"].as_str().unwrap() {
            "cleared" => entry.1 = Some(ts),
            _ if rank(&priority) > rank(&entry.3) => {
                entry.2 = rule;
                entry.3 = priority;
            }
            _ => {}
        }
    }
    let live: Alarms = by_id.into_values().collect();
    gw.stop().await;

    let replayed = vitalgate::replay::replay_files(
        &config,
        &vitalgate::replay::record::expand(std::slice::from_ref(&capture_dir)).unwrap(),
    )
    .unwrap();
    let again: Alarms = replayed
        .spans
        .iter()
        .map(|s| {
            (
                s.raised_ms,
                s.cleared_ms,
                s.rule.to_string(),
                s.priority.as_str().to_string(),
            )
        })
        .collect();
    let rules: BTreeSet<&str> = live.iter().map(|t| t.2.as_str()).collect();
    assert!(
        rules.contains("spo2_critical") && rules.contains("sbp_critical"),
        "the session raised what it was written to: {rules:?}"
    );
    assert_eq!(again, live);
    assert_eq!(replayed.refused, 0);
    std::fs::remove_dir_all(&capture_dir).unwrap();
}
