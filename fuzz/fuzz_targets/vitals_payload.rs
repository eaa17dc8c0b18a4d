//! Device payloads and topics: the reading decoder, the session and status decoders
//! and the topic parser must return a value or a rejection for any input, never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::core::{decode, DecodeLimits, SessionUpdate};
use vitalgate::ingest::pipeline::parse_status;
use vitalgate::ingest::TopicPattern;

const NOW: u64 = 1_764_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_payload_bytes: 16_384,
        max_future_skew_ms: 30_000,
    };
    if let Ok(reading) = decode(data, NOW, &limits) {
        for (vital, value) in reading.vitals() {
            let (lo, hi) = vital.possible_range();
            assert!(value >= lo && value <= hi, "accepted {vital} = {value}");
        }
    }
    if let Ok(update) = SessionUpdate::decode(data, 4096) {
        assert!(update.check().is_ok(), "accepted an invalid session message");
    }
    let _ = parse_status(data);
    if let Ok(topic) = std::str::from_utf8(data) {
        let pattern = TopicPattern::parse("clinic/+/chair/+/vitals").unwrap();
        let _ = pattern.chair_key(topic);
        let _ = TopicPattern::parse(topic);
    }
});
