//! `vitalgate demo` end to end: a gateway in-process (embedded broker on a free port),
//! the demo ward published into it by the simulator's MQTT clients, and a real
//! WebSocket dashboard that must see, within the ward's first minute, the alarms the
//! demo promises, and nothing from the chairs declared normal.

mod common;

use common::{audit_path, holds_rule, now_ms, unique, Dashboard};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use vitalgate::sim::demo::{Demo, DemoOptions};
use vitalgate::sim::{demo_ward, DEMO_CHAIRS};
use vitalgate::Config;

/// The first scripted minute, plus room for the tick and a loaded machine.
const WITHIN: Duration = Duration::from_secs(75);
const FIRST_MINUTE_MS: u64 = 60_000;

fn raised(alarms: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    alarms.iter().find(|a| a["state"] == "raised" && pred(a))
}

fn cleared(alarms: &[Value], raised: &Value) -> bool {
    alarms
        .iter()
        .any(|a| a["id"] == raised["id"] && a["state"] == "cleared")
}

/// Every promise met: SBP high, desaturation, probe off, device offline raised, and
/// each of the last three cleared again.
fn promises_met(alarms: &[Value]) -> bool {
    let demo = |a: &Value| a["chair"].as_str().is_some_and(|c| c.starts_with("demo/"));
    let rule = |r: &'static str| move |a: &Value| demo(a) && holds_rule(a, r);
    let sbp_high = raised(alarms, |a| {
        demo(a) && a["vital"] == "sbp" && a["priority"] == "high"
    });
    let ends = ["spo2_critical", "spo2_stale", "device_offline"]
        .into_iter()
        .all(|r| raised(alarms, rule(r)).is_some_and(|a| cleared(alarms, a)));
    sbp_high.is_some() && ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_ward_raises_its_promised_alarms_in_the_first_minute() {
    let mut c = Config::default();
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    c.mqtt.embedded.bind = "127.0.0.1:0".parse().unwrap();
    c.mqtt.client_id = unique("gw");
    c.audit.path = audit_path();
    c.shutdown.grace_period_ms = 3_000;
    let demo = Demo::start(c, DemoOptions::default())
        .await
        .expect("demo starts");
    let start = demo.start_ms();
    let scenario = demo.scenario().clone();
    assert_eq!(
        *scenario,
        demo_ward(start, 1),
        "the ward is a function of start and seed"
    );
    let event_chairs: HashSet<String> = scenario
        .events()
        .into_iter()
        .filter(|e| e.event.start_ms < start + WITHIN.as_millis() as u64)
        .filter(|e| !e.event.kind.is_artefact())
        .map(|e| e.chair)
        .collect();
    let normal: Vec<String> = scenario
        .chairs
        .iter()
        .map(|c| c.key())
        .filter(|k| !event_chairs.contains(k))
        .collect();
    assert_eq!(event_chairs.len(), 4);
    assert_eq!(normal.len(), DEMO_CHAIRS - 4);

    let mut dash = Dashboard::connect(demo.http_addr(), "").await;
    let snap = dash.next_of("snapshot").await;
    let mut alarms: Vec<Value> = snap["alarms"].as_array().cloned().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WITHIN;
    // Read alarm frames until every promise is met and the first minute is over (the
    // normal chairs must stay quiet through all of it).
    loop {
        let minute_over = now_ms() >= start + FIRST_MINUTE_MS;
        if promises_met(&alarms) && minute_over {
            break;
        }
        let wake = if promises_met(&alarms) {
            let left = (start + FIRST_MINUTE_MS).saturating_sub(now_ms());
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(left))
        } else {
            deadline
        };
        match tokio::time::timeout_at(wake, dash.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "alarm" {
                    alarms.push(v);
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("dashboard connection ended: {other:?}"),
            Err(_) if wake < deadline => {}
            Err(_) => panic!(
                "promised alarms not all seen within {WITHIN:?}; alarms: {:#}",
                Value::from(alarms.clone())
            ),
        }
    }
    let by_normal: Vec<&Value> = alarms
        .iter()
        .filter(|a| normal.iter().any(|n| a["chair"] == n.as_str()))
        .collect();
    assert!(
        by_normal.is_empty(),
        "normal chairs raised alarms: {by_normal:#?}"
    );
    // Every payload about a simulated chair says so.
    let unlabelled: Vec<&Value> = alarms.iter().filter(|a| a["simulated"] != true).collect();
    assert!(unlabelled.is_empty(), "{unlabelled:#?}");

    // The snapshot: 12 chairs on site demo, the empty ones idle, and the chair that
    // started at infusion minute 35 has its baseline from the replayed history.
    dash.send(json!({"type": "snapshot"})).await;
    let snap = dash.next_of("snapshot").await;
    let chairs: Vec<&Value> = snap["chairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["site"] == "demo")
        .collect();
    assert_eq!(chairs.len(), DEMO_CHAIRS, "{chairs:#?}");
    assert!(chairs.iter().all(|c| c["simulated"] == true), "{chairs:#?}");
    let chair = |k: &str| *chairs.iter().find(|c| c["chair"] == k).unwrap();
    for idle in ["demo/10", "demo/11"] {
        assert_eq!(chair(idle)["session"]["phase"], "idle");
    }
    let c3 = &chair("demo/3")["session"];
    assert_eq!(c3["phase"], "infusion");
    assert_eq!(c3["infusion_started"], start - 35 * 60_000);
    for vital in ["hr", "spo2", "sbp", "dbp", "rr"] {
        assert!(
            c3["baseline"][vital].is_number(),
            "no {vital} baseline: {c3:#}"
        );
    }
    assert_eq!(chair("demo/12")["session"]["phase"], "discharged");
    demo.stop().await;
}
