//! A journal commit that hangs holds back alarms (never shown before they are
//! recorded) and nothing else: live vitals and the server's pings keep flowing,
//! because no runtime worker waits on the journal.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use vitalgate::audit::Record;
use vitalgate::engine::{Journal, JournalError};

/// Commits wait while the test holds `gate`.
struct Gated {
    inner: Box<dyn Journal>,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Journal for Gated {
    fn commit(&mut self, records: &[Record<'_>]) -> Result<(), JournalError> {
        drop(self.gate.blocking_lock());
        self.inner.commit(records)
    }
}

/// What a dashboard saw next: a JSON frame, or a ping from the server.
enum Seen {
    Frame(serde_json::Value),
    Ping,
}

async fn next_seen(dash: &mut Dashboard) -> Seen {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), dash.ws.next())
            .await
            .expect("something within the deadline")
            .expect("connection open")
            .expect("frame reads");
        match msg {
            Message::Text(t) => return Seen::Frame(serde_json::from_str(t.as_str()).unwrap()),
            Message::Ping(_) => return Seen::Ping,
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_commit_hangs_live_vitals_and_pings_flow_and_the_alarm_waits() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.websocket.ping_interval_ms = 200;
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let g = gate.clone();
    let gw =
        TestGateway::start_with_journal(c, prefix, move |inner| Box::new(Gated { inner, gate: g }))
            .await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    dash.send(json!({"type": "subscribe_vitals"})).await;
    dash.next_of("vitals_subscribed").await;
    let dev = gw.device().await;

    let held = gate.lock().await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 80})))
        .await;
    // The breach's own values, then another chair's, then a ping: all while the
    // commit of the breach's alarm hangs.
    let (mut vitals, mut pinged) = (Vec::new(), false);
    let mut published_second = false;
    while vitals.len() < 2 || !pinged {
        match next_seen(&mut dash).await {
            Seen::Ping => pinged = true,
            Seen::Frame(f) => {
                assert_ne!(f["type"], "alarm", "no alarm before its commit: {f}");
                if f["type"] == "vitals" {
                    vitals.push(f["chair"].as_str().unwrap().to_string());
                    if !published_second {
                        published_second = true;
                        dev.publish(&gw.topic("north", "2"), &reading(1, json!({"spo2": 97})))
                            .await;
                    }
                }
            }
        }
    }
    assert_eq!(vitals, vec!["north/1", "north/2"]);
    assert_eq!(
        gw.metric(r#"vitalgate_alarm_events_total{priority="high",state="raised"}"#)
            .await,
        1.0
    );
    drop(held);
    let alarm = dash.next_of("alarm").await;
    assert_eq!(alarm["chair"], "north/1");
    assert_eq!(alarm["state"], "raised");
    gw.stop().await;
}
