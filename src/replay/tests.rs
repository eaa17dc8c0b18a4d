//! The replay against the simulator: the same alarms the gateway raises live.

use super::*;
use crate::sim::demo_ward;
use std::io::Write;

/// A recording of `messages` in a file of its own, removed on drop.
struct TempRecording(PathBuf);

impl TempRecording {
    fn new(messages: &[crate::sim::Message]) -> TempRecording {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "vitalgate-replay-{}-{nanos}.jsonl",
            std::process::id()
        ));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for m in messages {
            writeln!(file, "{}", serde_json::to_string(m).unwrap()).unwrap();
        }
        file.flush().unwrap();
        TempRecording(path)
    }
}

impl Drop for TempRecording {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The rules raised on `chair` from `from_ms` on.
fn rules_raised(replayed: &run::Replayed, chair: &str, from_ms: u64) -> Vec<String> {
    let mut rules: Vec<String> = replayed
        .spans
        .iter()
        .filter(|s| &*s.chair == chair && s.raised_ms >= from_ms)
        .flat_map(|s| s.rules.iter().map(|r| r.to_string()))
        .collect();
    rules.sort();
    rules.dedup();
    rules
}

/// The demo ward's first minute and a half, replayed with the shipped rules: its
/// four scripted events raise what docs and the live demo test say they do, and the
/// normal chairs raise nothing. (Before `start` the simulator sends only a thinned
/// history, whose gaps raise stale-data alarms on device time: not looked at.)
#[test]
fn the_demo_wards_first_minute_raises_its_four_events() {
    let start = 1_780_000_000_000;
    let scenario = demo_ward(start, 1);
    let recording = TempRecording::new(&scenario.messages(0, start + 90_000));
    let config = Config::load(None, std::iter::empty()).unwrap();
    let replayed = replay_files(&config, std::slice::from_ref(&recording.0)).unwrap();
    assert_eq!(replayed.refused, 0);
    assert!(replayed.simulated);
    assert!(rules_raised(&replayed, "demo/3", start).contains(&"sbp_critical".to_string()));
    assert!(rules_raised(&replayed, "demo/4", start).contains(&"spo2_critical".to_string()));
    assert!(rules_raised(&replayed, "demo/5", start).contains(&"spo2_stale".to_string()));
    assert_eq!(
        rules_raised(&replayed, "demo/6", start),
        vec!["device_offline"]
    );
    for chair in ["demo/1", "demo/2", "demo/7", "demo/8", "demo/9"] {
        assert_eq!(
            rules_raised(&replayed, chair, start),
            Vec::<String>::new(),
            "{chair}"
        );
    }
    // Device offline from its retained `offline` at 15 s to data again at 27 s.
    let offline = replayed
        .spans
        .iter()
        .find(|s| &*s.rule == "device_offline" && s.raised_ms >= start)
        .unwrap();
    assert_eq!(offline.raised_ms.saturating_sub(start) / 1000, 15);
    assert_eq!(
        offline.cleared_ms.map(|c| c.saturating_sub(start) / 1000),
        Some(27)
    );
}

fn scenarios() -> Vec<PathBuf> {
    vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")]
}

/// The whole scenario library through the engine with the shipped rules and with
/// naive limits (scenarios/naive.toml): every annotated true event that needs
/// action is detected at its priority, within its rule's delay plus 5 s of device
/// time (the cuff and stale-data events: at the reading or the allowance that
/// shows them), the shipped rules raise at least 70 % fewer alarms outside true
/// events than naive limits do, and none at all in the normal sessions.
#[test]
fn the_library_is_detected_with_fewer_unneeded_alarms_than_naive_limits() {
    let shipped = Config::load(None, std::iter::empty()).unwrap();
    let naive_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/naive.toml");
    let naive = Config::load(Some(&naive_path), std::iter::empty()).unwrap();
    let a = replay(&shipped, "shipped", &scenarios()).unwrap();
    let b = replay(&naive, "naive", &scenarios()).unwrap();
    assert!(a.recordings >= 22 && a.simulated);
    assert_eq!(a.refused, 0);
    let score = a.score.as_ref().unwrap();
    let missed: Vec<_> = score.missed().map(|e| &e.recording).collect();
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(score.events.len() >= 11);
    for e in &score.events {
        // The longest delay of a rule that detects a library event (15 s), plus 5 s.
        // A slow hypertension's window starts where the script starts the drift,
        // which no rule can tell from the usual ketamine rise for a while: it must
        // be raised while it is still going on.
        let allowed = match e.event.kind.as_str() {
            "slow_hypertension" => e.event.end_ms - e.event.start_ms,
            _ => 20_000,
        };
        let took = e.time_to_alarm_ms.unwrap();
        assert!(took <= allowed, "{} took {took} ms", e.recording);
    }
    assert_eq!(score.in_normal_sessions, 0, "{:?}", score.unneeded);
    let unneeded = score.unneeded.len() as f64;
    let naive_unneeded = b.score.as_ref().unwrap().unneeded.len() as f64;
    assert!(
        unneeded <= 0.3 * naive_unneeded,
        "{unneeded} alarms outside true events against naive limits' {naive_unneeded}"
    );
}
