//! The audit commit when alarms are rare: one alarm's `Audit::append` (the body
//! its frame, the file as deployed: WAL, synchronous=NORMAL) back to back, and
//! after 20 ms and 100 ms of the process doing nothing (at clinic scale alarms
//! come about 100 ms apart). Timed by hand rather than by criterion, which
//! would plan its iterations from the commit's time alone and sleep for hours.
//!
//! `cargo bench --bench audit_idle`; results in docs/performance.md.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use vitalgate::audit::{Audit, Record};
use vitalgate::fanout::protocol;

/// Commits timed per gap.
const COMMITS: usize = 200;

fn main() {
    let dir = std::env::temp_dir().join(format!("vitalgate-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let audit = Arc::new(Audit::open(&dir.join("audit.sqlite3"), false).expect("audit file"));
    let event = common::event();
    let mut seq = 0;
    for gap_ms in [0u64, 20, 100] {
        let mut took = Vec::with_capacity(COMMITS);
        for _ in 0..COMMITS {
            std::thread::sleep(Duration::from_millis(gap_ms));
            seq += 1;
            let frame = protocol::alarm_frame(seq, &event, None);
            let record = Record {
                seq,
                instance: "0123456789abcdef",
                kind: "alarm",
                chair: &event.chair,
                at_ms: common::NOW + seq,
                body: frame.text.as_str(),
            };
            let start = Instant::now();
            audit.append(&[record]).expect("append");
            took.push(start.elapsed());
        }
        took.sort();
        let at =
            |q: f64| took[((COMMITS as f64 * q) as usize).min(COMMITS - 1)].as_secs_f64() * 1e6;
        println!(
            "audit append after {gap_ms:>3} ms idle: p50 {:>6.1} µs  p90 {:>6.1} µs  p99 {:>6.1} µs  ({COMMITS} commits)",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
