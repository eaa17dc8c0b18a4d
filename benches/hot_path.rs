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
use vitalgate::audit::{Audit, Record};
use vitalgate::core::{decode, DecodeLimits, Ward};
use vitalgate::engine::{Engine, Journal, Parts, Sequenced, SqliteJournal};
use vitalgate::fanout::hub::Subscriber;
use vitalgate::fanout::{protocol, Hub};
use vitalgate::ingest::{process, Topics};
use vitalgate::telemetry::Metrics;
use vitalgate::Config;

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

    // One reading for one of 1,000 chairs with the shipped rules; every 50th round
    // breaches SpO2 so raises and clears happen too. First the ward alone, then
    // the whole in-process path: ingest's decode, the engine task, the journal
    // thread (a WAL file with synchronous=NORMAL, as deployed) and the receipt.
    let config = Config::default();
    let rules = config.rule_set().unwrap();
    let m = &config.mqtt;
    let topics = Topics::parse(&m.topic, &m.session_topic, &m.status_topic).unwrap();
    let chairs: Vec<String> = (0..1000).map(|i| format!("site{}/{}", i % 10, i)).collect();
    let ward = Ward::new(Arc::new(rules.clone()), 1000);
    let mut n = 0u64;
    let mut next = move || {
        // A fresh (seq, ts) per chair visit, so never a duplicate.
        n += 1;
        let round = n / 1000;
        let spo2 = if round % 50 == 49 { 80 } else { 97 };
        ((n % 1000) as usize, payload(round, spo2), round)
    };
    let mut next_apply = next;
    c.bench_function("apply_reading_1k_chairs", |b| {
        b.iter_batched(
            &mut next_apply,
            |(i, body, round)| {
                let r = decode(&body, NOW + round, &limits).unwrap();
                ward.apply(&chairs[i], &r, NOW + round).unwrap()
            },
            BatchSize::SmallInput,
        )
    });

    let dir = std::env::temp_dir().join(format!("vitalgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = Arc::new(Audit::open(&dir.join("audit.sqlite3"), false).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let devices = rt.block_on(async {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new());
        let live = Arc::new(vitalgate::fanout::LiveFeed::new(1024));
        let outlets = vitalgate::fanout::hub::Outlets { hub, live };
        let (receipts, _) = tokio::sync::mpsc::unbounded_channel();
        let (engine, _running) = Engine::start(
            Parts {
                ward: Ward::new(Arc::new(rules), 1000),
                last_seq: 0,
                instance: "bench".into(),
                replay_capacity: 10_000,
                commands: 1024,
                escalation: config.alarms.escalation_policy(),
                forget_idle_chair_ms: 0,
                silent_ms: 60_000,
                metrics: metrics.clone(),
            },
            Box::new(SqliteJournal {
                audit: audit.clone(),
                metrics: metrics.clone(),
            }),
            Arc::new(outlets),
            receipts,
            |_| {},
        );
        vitalgate::ingest::Devices {
            engine,
            topics,
            decode_limits: limits,
            session_max_bytes: config.session.max_message_bytes,
            metrics,
            health: Default::default(),
        }
    });
    let topics: Vec<String> = (0..1000)
        .map(|i| format!("clinic/site{}/chair/{}/vitals", i % 10, i))
        .collect();
    c.bench_function("process_reading_1k_chairs", |b| {
        b.iter_batched(
            &mut next,
            |(i, body, round)| {
                rt.block_on(process(
                    &devices,
                    &topics[i],
                    &body,
                    Instant::now(),
                    NOW + round,
                ))
            },
            BatchSize::SmallInput,
        )
    });

    let ev = event();
    c.bench_function("serialise_alarm_frame", |b| {
        b.iter(|| protocol::alarm_frame(black_box(42), &ev, None))
    });

    // What the journal adds to each alarm event when it commits alone: one SQLite
    // transaction.
    let mut journal = SqliteJournal {
        audit,
        metrics: Arc::new(Metrics::new()),
    };
    let frame = protocol::alarm_frame(42, &ev, None);
    let mut seq = 0;
    c.bench_function("journal_commit_one_alarm", |b| {
        b.iter(|| {
            seq += 1;
            let record = Record {
                seq,
                instance: "bench",
                kind: "alarm",
                chair: "north/1",
                at_ms: NOW,
                body: frame.as_str(),
            };
            journal.commit(&[record]).unwrap()
        })
    });
    let _ = std::fs::remove_dir_all(&dir);

    for subscribers in [1_000usize, 10_000] {
        let hub = Hub::new();
        let mut receivers = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let (tx, rx) = mpsc::channel(64);
            hub.register(Subscriber {
                id: hub.next_id(),
                tx,
                cut_off: vitalgate::fanout::CutOff::default(),
                scope: vitalgate::access::SiteScope::all(),
            });
            receivers.push(rx);
        }
        c.bench_function(&format!("publish_alarm_to_{subscribers}_queues"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let e = event();
                    let start = Instant::now();
                    let released = [Sequenced {
                        seq: i,
                        kind: "alarm",
                        chair: e.chair.clone(),
                        at_ms: NOW,
                        frame: protocol::alarm_frame(i, &e, None),
                    }];
                    hub.deliver(&released);
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
