//! What a slow journal does to a dashboard: the same load through the gateway in
//! one run, with the SQLite journal as deployed and with every commit made 200 ms
//! slower, each on the embedded broker and on a private Mosquitto set up as the
//! operations guide asks (`max_inflight_messages 1000`). Alarms wait for their
//! commit (they are never shown before they are recorded); live vitals and the
//! server's pings must not.
//!
//! Why two brokers: readings are acknowledged in arrival order (MQTT 3.1.1 §4.6),
//! each after the commits before it, so a broker stops sending once its window of
//! unacknowledged messages is full. The embedded broker's window is fixed at 100
//! (rumqttd's `MAX_INFLIGHT`), Mosquitto's is the setting.
//!
//! `cargo bench --bench slow_journal`; results in docs/performance.md.

#[path = "../tests/common/mod.rs"]
mod common;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use vitalgate::audit::Record;
use vitalgate::config::BrokerMode;
use vitalgate::engine::{Journal, JournalError};
use vitalgate::{Config, Gateway};

/// Chairs publishing, each at `RATE` readings/s, for `RUN`.
const CHAIRS: u64 = 100;
const RATE: u64 = 5;
const RUN: Duration = Duration::from_secs(10);
const SLOW: Duration = Duration::from_millis(200);

/// The SQLite journal, each commit `delay` slower.
struct Slowed {
    inner: Box<dyn Journal>,
    delay: Duration,
}

impl Journal for Slowed {
    fn commit(&mut self, records: &[Record<'_>]) -> Result<(), JournalError> {
        std::thread::sleep(self.delay);
        self.inner.commit(records)
    }
}

fn now_ms() -> u64 {
    vitalgate::clock::now_ms()
}

#[derive(Default)]
struct Seen {
    vitals: Option<Histogram<u64>>,
    alarms: Option<Histogram<u64>>,
    ping_gap: Option<Histogram<u64>>,
    commits: f64,
}

fn hist() -> Option<Histogram<u64>> {
    Some(Histogram::new_with_bounds(1, 60_000, 3).unwrap())
}

/// `mosquitto`: the port of a private Mosquitto, or the embedded broker.
async fn run(delay: Duration, mosquitto: Option<u16>) -> Seen {
    let dir = std::env::temp_dir().join(format!("vitalgate-slow-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Config::default();
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    match mosquitto {
        Some(port) => {
            c.mqtt.broker = BrokerMode::External;
            c.mqtt.host = "127.0.0.1".into();
            c.mqtt.port = port;
        }
        None => {
            c.mqtt.broker = BrokerMode::Embedded;
            c.mqtt.embedded.bind = "127.0.0.1:0".parse().unwrap();
        }
    }
    c.mqtt.client_id = format!("slow-journal-{}", fastrand::u64(..));
    c.audit.path = dir.join(format!("{}.sqlite3", delay.as_millis()));
    c.websocket.ping_interval_ms = 100;
    c.rules = vec![vitalgate::core::RuleSpec {
        id: "spo2_low".into(),
        vital: vitalgate::core::Vital::Spo2,
        low: Some(90.0),
        priority: vitalgate::core::Priority::High,
        hysteresis: 2.0,
        ..Default::default()
    }];
    c.combined_rules.clear();
    c.trend_rules.clear();
    c.technical = vitalgate::core::TechnicalSpec::default();
    let gw = Gateway::start_with_journal(c, move |inner| match delay.is_zero() {
        true => inner,
        false => Box::new(Slowed { inner, delay }),
    })
    .await
    .unwrap();
    let mut ready = gw.app().health.watch_mqtt_subscribed();
    ready.wait_for(|r| *r).await.unwrap();

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr()))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"subscribe_vitals"}"#))
        .await
        .unwrap();
    let broker = gw.broker().clone();
    let mut o = MqttOptions::new(
        format!("dev-{}", fastrand::u64(..)),
        broker.host,
        broker.port,
    );
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move {
        while let Ok(e) = events.poll().await {
            drop(e);
        }
    });
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / (CHAIRS * RATE)));
        let end = Instant::now() + RUN;
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let chair = n % CHAIRS;
            let seq = n / CHAIRS;
            // Every chair breaches for a second in every four: raises and clears.
            let spo2 = if (seq / RATE) % 4 == 3 { 80 } else { 97 };
            let body = format!(r#"{{"seq":{seq},"ts":{},"spo2":{spo2},"hr":70}}"#, now_ms());
            let topic = format!("clinic/north/chair/{chair}/vitals");
            let _ = client
                .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
                .await;
        }
    });

    let mut seen = Seen {
        vitals: hist(),
        alarms: hist(),
        ping_gap: hist(),
        commits: 0.0,
    };
    let mut last_ping: Option<Instant> = None;
    let end = Instant::now() + RUN + Duration::from_secs(1);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(end.into(), ws.next()).await {
        match msg {
            Message::Ping(_) => {
                let now = Instant::now();
                if let Some(last) = last_ping.replace(now) {
                    let gap = now.duration_since(last).as_millis() as u64;
                    seen.ping_gap.as_mut().unwrap().record(gap.max(1)).unwrap();
                }
            }
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                let late = |ts: u64| now_ms().saturating_sub(ts).max(1);
                match v["type"].as_str() {
                    Some("vitals") => {
                        if let Some(ts) = v["vitals"]["spo2"]["ts"].as_u64() {
                            seen.vitals.as_mut().unwrap().record(late(ts)).unwrap();
                        }
                    }
                    Some("alarm") if v["state"] == "raised" => {
                        let ts = v["ts"].as_u64().unwrap();
                        seen.alarms.as_mut().unwrap().record(late(ts)).unwrap();
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    publisher.await.unwrap();
    let (_, body) = get(gw.http_addr(), "/metrics").await;
    seen.commits = body
        .lines()
        .find_map(|l| l.strip_prefix("vitalgate_journal_commits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    seen
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0),
        body.to_string(),
    )
}

fn row(name: &str, h: &Option<Histogram<u64>>) -> String {
    let h = h.as_ref().unwrap();
    format!(
        "{name:<28} {:>7} {:>8} {:>8} {:>8}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{CHAIRS} chairs at {RATE} readings/s for {}s, one dashboard with live vitals, server pings every 100 ms",
        RUN.as_secs()
    );
    let mosquitto = rt.block_on(common::PrivateBroker::start());
    let runs = [
        (None, Duration::ZERO),
        (None, SLOW),
        (Some(mosquitto.port), Duration::ZERO),
        (Some(mosquitto.port), SLOW),
    ];
    for (broker, delay) in runs {
        let seen = rt.block_on(run(delay, broker));
        println!(
            "\n{}, journal commit + {} ms ({} commits)\n{:<28} {:>7} {:>8} {:>8} {:>8}",
            match broker {
                Some(_) => "mosquitto (max_inflight_messages 1000)",
                None => "embedded broker",
            },
            delay.as_millis(),
            seen.commits,
            "ms",
            "count",
            "p50",
            "p99",
            "max"
        );
        println!("{}", row("live vitals (device ts →)", &seen.vitals));
        println!("{}", row("alarm raised (device ts →)", &seen.alarms));
        println!("{}", row("gap between server pings", &seen.ping_gap));
    }
}
