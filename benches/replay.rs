//! How fast the alarm engine replays recorded sessions: the scenario library
//! (scenarios/, 23 sessions, 158k readings) with the shipped rules,
//! - `engine`: decoded messages through the ward (the engine's own share);
//! - `from_memory`: records as read from a file, decoded as ingest decodes them,
//!   then through the ward (what `vitalgate replay` does after reading a line).
//!
//! `cargo bench --bench replay`; figures in docs/performance.md (readings/s is
//! criterion's "thrpt").

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::path::Path;
use std::time::Duration;
use vitalgate::replay::record::{expand, records, Record};
use vitalgate::replay::run::Run;
use vitalgate::Config;

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let recordings: Vec<Vec<Record>> = expand(&[dir])
        .unwrap()
        .iter()
        .map(|f| records(f).unwrap().map(Result::unwrap).collect())
        .collect();
    let decoded: Vec<_> = recordings
        .iter()
        .map(|recs| {
            let mut run = Run::new(&config).unwrap();
            recs.iter().map(|r| run.decode(r)).collect::<Vec<_>>()
        })
        .collect();
    let readings = recordings
        .iter()
        .map(|recs| {
            let mut run = Run::new(&config).unwrap();
            recs.iter().for_each(|r| run.feed(r));
            run.finish(0).readings
        })
        .sum::<u64>();

    let mut group = c.benchmark_group("replay_library");
    group.throughput(Throughput::Elements(readings));
    group.sample_size(10);
    group.bench_function("engine", |b| {
        b.iter_batched(
            || decoded.clone(),
            |decoded| {
                for messages in decoded {
                    let mut run = Run::new(&config).unwrap();
                    for m in messages {
                        run.apply(m);
                    }
                    std::hint::black_box(run.finish(0));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("from_memory", |b| {
        b.iter(|| {
            for recs in &recordings {
                let mut run = Run::new(&config).unwrap();
                for r in recs {
                    run.feed(r);
                }
                std::hint::black_box(run.finish(0));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = bench
}
criterion_main!(benches);
