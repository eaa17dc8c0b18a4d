//! The hot path without sockets: payload decode, one reading through the core
//! (decode + state update + rule evaluation + fan-out hand-off), alarm frame
//! serialisation, and publishing one alarm to 1k / 10k in-memory dashboard queues.
//!
//! `cargo bench --bench hot_path`; results in docs/performance.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vitalgate::audit::Audit;
use vitalgate::core::{decode, DecodeLimits, Event, RuleSet, Ward};
use vitalgate::fanout::{protocol, Hub, Start};
use vitalgate::ingest::{process, Topics};
use vitalgate::telemetry::Metrics;
use vitalgate::{App, Config};

mod common;
use common::{event, NOW};

fn payload(seq: u64, spo2: u32) -> Vec<u8> {
    format!(
        r#"{{"seq":{seq},"ts":{},"hr":78,"spo2":{spo2},"sbp":128,"dbp":81,"rr":14,"pump":{{"running":true,"rate_ml_h":40.0,"infused_ml":12.5}}}}"#,
        NOW + seq
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = DecodeLimits {
        max_payload_bytes: 16_384,
        max_future_skew_ms: 30_000,
    };
    let p = payload(1, 97);
    c.bench_function("decode_reading", |b| {
        b.iter(|| decode(black_box(&p), NOW, &limits).unwrap())
    });

    // One reading through the whole core for one of 1,000 chairs, with the shipped
    // rules; every 50th reading breaches SpO2 so raises and clears happen too.
    let config = Config::default();
    let rules = config.rule_set().unwrap();
    let m = &config.mqtt;
    let topics = Topics::parse(&m.topic, &m.session_topic, &m.status_topic).unwrap();
    // The audit trail as deployed: a WAL file with synchronous=NORMAL.
    let dir = std::env::temp_dir().join(format!("vitalgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = Arc::new(Audit::open(&dir.join("audit.sqlite3"), false).unwrap());
    let auth = vitalgate::http::auth::Authenticator::from_config(&config.auth).unwrap();
    let app = App::new(config, rules, topics, audit.clone(), auth);
    let topics: Vec<String> = (0..1000)
        .map(|i| format!("clinic/site{}/chair/{}/vitals", i % 10, i))
        .collect();
    let mut n = 0u64;
    c.bench_function("process_reading_1k_chairs", |b| {
        b.iter_batched(
            || {
                // A fresh (seq, ts) per chair visit, so never a duplicate; every 50th
                // round breaches SpO2, so raises and clears happen too.
                n += 1;
                let round = n / 1000;
                let spo2 = if round % 50 == 49 { 80 } else { 97 };
                (&topics[(n % 1000) as usize], payload(round, spo2), round)
            },
            |(t, body, round)| process(&app, t, &body, Instant::now(), NOW + round),
            BatchSize::SmallInput,
        )
    });

    let ev = event();
    c.bench_function("serialise_alarm_frame", |b| {
        b.iter(|| protocol::alarm_frame(black_box(42), &ev, None))
    });

    // What the audit trail adds to each alarm event: one SQLite transaction.
    let hub = Hub::new(10_000, Arc::new(Metrics::new()), Some(audit));
    c.bench_function("publish_alarm_with_audit_no_queues", |b| {
        b.iter(|| hub.publish(vec![Event::Alarm(event())], None))
    });
    let _ = std::fs::remove_dir_all(&dir);

    for subscribers in [1_000usize, 10_000] {
        let hub = Hub::new(10_000, Arc::new(Metrics::new()), None);
        let ward = Ward::new(Arc::new(RuleSet::default()), 1);
        let mut receivers = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let (tx, rx) = mpsc::channel(64);
            hub.subscribe(
                Start::Since {
                    since: 0,
                    instance: None,
                },
                &ward,
                tx,
                vitalgate::fanout::CutOff::default(),
                vitalgate::access::SiteScope::all(),
            );
            receivers.push(rx);
        }
        c.bench_function(&format!("publish_alarm_to_{subscribers}_queues"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let e = event();
                    let start = Instant::now();
                    hub.publish(vec![Event::Alarm(e)], None);
                    total += start.elapsed();
                    for rx in receivers.iter_mut() {
                        let _ = rx.try_recv();
                    }
                }
                total
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
