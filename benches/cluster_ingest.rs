//! What replication costs a device message, side by side in one run: the same
//! QoS 1 load through a private Mosquitto to a subscriber (the single-node
//! path), and through a 3-node NATS cluster's MQTT listener to the partitions'
//! consumers (cluster mode's path: stored in three copies before the PUBACK,
//! read by pull, acknowledged). Rounds alternate, so that both see the same
//! machine. Reported: end-to-end latency (publish to read) and broker CPU per
//! message (all three NATS servers together).
//!
//! `NATS_SERVER=... cargo bench --bench cluster_ingest`; results in
//! docs/performance.md.

#[path = "../tests/common/mod.rs"]
mod common;

use async_nats::jetstream::consumer::AckPolicy;
use common::nats::{NatsCluster, PARTITIONS};
use common::PrivateBroker;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vitalgate::cluster::streams;

/// Devices (one connection each) and each one's rate.
const DEVICES: u64 = 50;
const RATE: u64 = 20;
const RUN: Duration = Duration::from_secs(10);
const ROUNDS: usize = 2;

type Latencies = Arc<Mutex<Histogram<u64>>>;

fn latencies() -> Latencies {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Every device publishes `RATE` readings/s for `RUN`, each carrying when it
/// was sent (µs since `epoch`); returns once every publish is acknowledged.
async fn devices(port: u16, epoch: Instant) -> u64 {
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(common::unique("bench-dev"), "127.0.0.1", port);
            o.set_clean_session(true).set_inflight(100);
            let (client, mut events) = AsyncClient::new(o, 1000);
            let acks = tokio::spawn(async move {
                let mut acked = 0u64;
                let want = RATE * RUN.as_secs();
                while acked < want {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(e) => panic!("device connection: {e}"),
                    }
                }
                acked
            });
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            for seq in 0..RATE * RUN.as_secs() {
                tick.tick().await;
                let sent = epoch.elapsed().as_micros() as u64;
                let payload = format!("{{\"seq\":{seq},\"sent_us\":{sent}}}");
                let topic = format!("clinic/bench/chair/{d}/vitals");
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            acks.await.unwrap()
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    acked
}

fn record(latencies: &Latencies, payload: &[u8], epoch: Instant) {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    let sent = v["sent_us"].as_u64().unwrap();
    let now = epoch.elapsed().as_micros() as u64;
    latencies
        .lock()
        .unwrap()
        .record(now.saturating_sub(sent).max(1))
        .unwrap();
}

/// The single-node path: Mosquitto to a QoS 1 subscriber.
async fn mosquitto_round() -> (Histogram<u64>, f64, u64) {
    let broker = PrivateBroker::start().await;
    let epoch = Instant::now();
    let lat = latencies();
    let mut o = MqttOptions::new(common::unique("bench-sub"), "127.0.0.1", broker.port);
    o.set_clean_session(true).set_inflight(1000);
    let (sub, mut events) = AsyncClient::new(o, 1000);
    sub.subscribe("clinic/+/chair/+/vitals", QoS::AtLeastOnce)
        .await
        .unwrap();
    // Subscribed before anyone publishes: nothing is kept for a subscriber
    // that is not there yet.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let reader_lat = lat.clone();
    let reader = tokio::spawn(async move {
        let mut read = 0u64;
        while read < DEVICES * RATE * RUN.as_secs() {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                record(&reader_lat, &p.payload, epoch);
                read += 1;
            }
        }
    });
    let cpu0 = cpu_seconds(broker.pid());
    let acked = devices(broker.port, epoch).await;
    reader.await.unwrap();
    let cpu = cpu_seconds(broker.pid()) - cpu0;
    let h = lat.lock().unwrap().clone();
    (h, cpu, acked)
}

/// How the partitions' readers acknowledge what they read.
#[derive(Clone, Copy, Debug)]
enum Acks {
    /// Every message on its own (`AckPolicy::Explicit`).
    EachMessage,
    /// The latest message read, every so often, for everything before it
    /// (`AckPolicy::All`).
    AllEvery(Duration),
}

/// Cluster mode's path: NATS MQTT listener, R3 store, partition consumers.
async fn nats_round(acks: Acks) -> (Histogram<u64>, f64, u64) {
    let nats = NatsCluster::start(3).await;
    let js = vitalgate::cluster::connect(&nats.urls(), "bench")
        .await
        .unwrap();
    let ack_wait = Duration::from_secs(30);
    let policy = match acks {
        Acks::EachMessage => AckPolicy::Explicit,
        Acks::AllEvery(_) => AckPolicy::All,
    };
    common::nats::partition_consumers_acking(&nats, 0, &js, ack_wait, policy).await;
    let epoch = Instant::now();
    let lat = latencies();
    let total = DEVICES * RATE * RUN.as_secs();
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for p in 0..PARTITIONS {
        let (js, lat, read) = (js.clone(), lat.clone(), read.clone());
        readers.push(tokio::spawn(async move {
            let consumer = streams::partition_consumer_acking(&js, p, 3, ack_wait, policy)
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut latest = None;
            let mut last_ack = Instant::now();
            while read.load(std::sync::atomic::Ordering::Relaxed) < total {
                let next = tokio::time::timeout(Duration::from_millis(100), messages.next()).await;
                if let Ok(Some(Ok(m))) = next {
                    record(&lat, &m.payload, epoch);
                    read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match acks {
                        Acks::EachMessage => m.ack().await.unwrap(),
                        Acks::AllEvery(_) => latest = Some(m),
                    }
                }
                if let Acks::AllEvery(every) = acks {
                    if last_ack.elapsed() >= every {
                        if let Some(m) = latest.take() {
                            m.ack().await.unwrap();
                        }
                        last_ack = Instant::now();
                    }
                }
            }
            if let Some(m) = latest {
                m.ack().await.unwrap();
            }
        }));
    }
    let pids = nats.pids();
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let acked = devices(nats.nodes[1].mqtt_port, epoch).await;
    for r in readers {
        r.await.unwrap();
    }
    let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let h = lat.lock().unwrap().clone();
    (h, cpu, acked)
}

fn line(name: &str, h: &Histogram<u64>, cpu: f64, n: u64) {
    println!(
        "{name:<22} {n:>7} msgs  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  broker CPU {:>6.1} µs/msg",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        cpu * 1e6 / n as f64
    );
}

#[tokio::main]
async fn main() {
    println!(
        "{DEVICES} devices x {RATE}/s for {:?}, QoS 1, {ROUNDS} rounds each, alternating",
        RUN
    );
    for round in 0..ROUNDS {
        let (h, cpu, n) = mosquitto_round().await;
        line(&format!("mosquitto #{round}"), &h, cpu, n);
        let (h, cpu, n) = nats_round(Acks::EachMessage).await;
        line(&format!("nats, ack each #{round}"), &h, cpu, n);
        let (h, cpu, n) = nats_round(Acks::AllEvery(Duration::from_millis(500))).await;
        line(&format!("nats, ack all #{round}"), &h, cpu, n);
    }
}
