//! Readings: the vitals one device message carries, and the decoder that turns an
//! MQTT payload into one or a counted, named rejection.
//!
//! The decoder is pure so that it can be fuzzed and property-tested: for any bytes
//! it returns `Ok(Reading)` or `Err(Rejection)` and never panics.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A numeric vital sign that limits can be set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vital {
    /// Heart rate, beats/min.
    Hr,
    /// Peripheral oxygen saturation, %.
    Spo2,
    /// Systolic blood pressure, mmHg.
    Sbp,
    /// Diastolic blood pressure, mmHg.
    Dbp,
    /// Respiratory rate, breaths/min.
    Rr,
    /// End-tidal CO2, mmHg.
    Etco2,
}

impl Vital {
    /// Every vital, in wire order.
    pub const ALL: [Vital; 6] = [
        Vital::Hr,
        Vital::Spo2,
        Vital::Sbp,
        Vital::Dbp,
        Vital::Rr,
        Vital::Etco2,
    ];

    /// The JSON field name, which is also the name used in alarms and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Vital::Hr => "hr",
            Vital::Spo2 => "spo2",
            Vital::Sbp => "sbp",
            Vital::Dbp => "dbp",
            Vital::Rr => "rr",
            Vital::Etco2 => "etco2",
        }
    }

    /// Index into per-vital arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The physiologically possible range. A value outside it is a device or
    /// transport fault, never a patient's state, and is rejected rather than alarmed on.
    pub fn possible_range(self) -> (f64, f64) {
        match self {
            Vital::Hr => (0.0, 350.0),
            Vital::Spo2 => (0.0, 100.0),
            Vital::Sbp => (0.0, 350.0),
            Vital::Dbp => (0.0, 300.0),
            Vital::Rr => (0.0, 150.0),
            Vital::Etco2 => (0.0, 150.0),
        }
    }
}

impl fmt::Display for Vital {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Infusion pump state reported with a reading. Context for alarms, not alarmed on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pump {
    pub running: bool,
    pub rate_ml_h: f64,
    pub infused_ml: f64,
}

/// One decoded, validated device message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Per-device message counter.
    pub seq: u64,
    /// Device time, ms since the Unix epoch.
    pub ts: u64,
    /// Values indexed by [`Vital::index`]; `None` when the message did not carry it.
    pub values: [Option<f64>; 6],
    pub pump: Option<Pump>,
}

impl Reading {
    /// A reading of `vitals` at device time `ts`, with a pump infusing 40 ml/h
    /// (10 ml so far) reported as `pump` says (running or stopped), if at all.
    #[cfg(test)]
    pub(crate) fn of(seq: u64, ts: u64, vitals: &[(Vital, f64)], pump: Option<bool>) -> Reading {
        let mut values = [None; 6];
        for (v, x) in vitals {
            values[v.index()] = Some(*x);
        }
        Reading {
            seq,
            ts,
            values,
            pump: pump.map(|running| Pump {
                running,
                rate_ml_h: 40.0,
                infused_ml: 10.0,
            }),
        }
    }

    /// The vitals this reading carries, with their values.
    pub fn vitals(&self) -> impl Iterator<Item = (Vital, f64)> + '_ {
        Vital::ALL
            .iter()
            .filter_map(|v| self.values[v.index()].map(|x| (*v, x)))
    }
}

/// Why a payload was rejected. Each is a label value of the
/// `vitalgate_readings_rejected_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    PayloadTooLarge,
    InvalidUtf8,
    MalformedJson,
    WrongType,
    MissingField,
    OutOfRange,
    NoVitals,
    FutureTimestamp,
    BadTopic,
    /// A new chair beyond `ingest.max_chairs`.
    ChairLimit,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::PayloadTooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::MalformedJson,
        RejectReason::WrongType,
        RejectReason::MissingField,
        RejectReason::OutOfRange,
        RejectReason::NoVitals,
        RejectReason::FutureTimestamp,
        RejectReason::BadTopic,
        RejectReason::ChairLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::WrongType => "wrong_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::NoVitals => "no_vitals",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::ChairLimit => "chair_limit",
        }
    }
}

/// A rejected payload: the counted reason plus a human-readable detail for the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Limits the decoder enforces, from `[ingest]` in the config.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Larger payloads are rejected before parsing.
    pub max_payload_bytes: usize,
    /// A `ts` more than this far ahead of the gateway clock is rejected.
    pub max_future_skew_ms: u64,
}

/// Device timestamps before 2000-01-01 mean an unset device clock.
const MIN_PLAUSIBLE_TS_MS: u64 = 946_684_800_000;

/// Wire form of payload v1. Unknown fields are ignored (newer firmware); known ones are typed.
#[derive(Deserialize)]
struct WireReading {
    seq: u64,
    ts: u64,
    hr: Option<f64>,
    spo2: Option<f64>,
    sbp: Option<f64>,
    dbp: Option<f64>,
    rr: Option<f64>,
    etco2: Option<f64>,
    pump: Option<ObjectOnly<WirePump>>,
}

#[derive(Deserialize)]
struct WirePump {
    running: bool,
    rate_ml_h: f64,
    infused_ml: f64,
}

/// `T` from a JSON object only. serde also reads a derived struct from an array,
/// by position (`"pump": [true, 40, 10]`), which payload v1 does not allow
/// (`wrong_type`, as for the payload itself).
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
    }
}

/// Highest accepted pump rate, ml/h, and infused volume, ml: beyond them the pump
/// report is a fault.
const MAX_PUMP_RATE_ML_H: f64 = 2_000.0;
const MAX_INFUSED_ML: f64 = 10_000.0;

/// Decode and validate a payload v1. `now_ms` is the gateway's wall clock.
pub fn decode(payload: &[u8], now_ms: u64, limits: &DecodeLimits) -> Result<Reading, Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::new(
            RejectReason::PayloadTooLarge,
            format!(
                "{} bytes, limit {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    // serde also reads a struct from a JSON array (fields by position); payload v1
    // is an object only.
    if text.trim_start().starts_with('[') {
        return Err(Rejection::new(
            RejectReason::WrongType,
            "payload must be a JSON object, not an array",
        ));
    }
    let wire: WireReading = serde_json::from_str(text).map_err(classify_json_error)?;

    if wire.ts < MIN_PLAUSIBLE_TS_MS {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("ts {} is before 2000-01-01: device clock not set", wire.ts),
        ));
    }
    if wire.ts > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(Rejection::new(
            RejectReason::FutureTimestamp,
            format!(
                "ts is {} ms ahead of the gateway clock, limit {}",
                wire.ts - now_ms,
                limits.max_future_skew_ms
            ),
        ));
    }

    let values = [wire.hr, wire.spo2, wire.sbp, wire.dbp, wire.rr, wire.etco2];
    for vital in Vital::ALL {
        if let Some(x) = values[vital.index()] {
            let (lo, hi) = vital.possible_range();
            if !(lo..=hi).contains(&x) {
                return Err(Rejection::new(
                    RejectReason::OutOfRange,
                    format!("{vital} = {x} is outside the possible range {lo}..={hi}"),
                ));
            }
        }
    }
    let pump = match wire.pump.map(|ObjectOnly(p)| p) {
        Some(p) => {
            if !(0.0..=MAX_PUMP_RATE_ML_H).contains(&p.rate_ml_h) {
                return Err(Rejection::new(
                    RejectReason::OutOfRange,
                    format!(
                        "pump.rate_ml_h = {} is outside 0..={MAX_PUMP_RATE_ML_H}",
                        p.rate_ml_h
                    ),
                ));
            }
            if !(0.0..=MAX_INFUSED_ML).contains(&p.infused_ml) {
                return Err(Rejection::new(
                    RejectReason::OutOfRange,
                    format!(
                        "pump.infused_ml = {} is outside 0..={MAX_INFUSED_ML}",
                        p.infused_ml
                    ),
                ));
            }
            Some(Pump {
                running: p.running,
                rate_ml_h: p.rate_ml_h,
                infused_ml: p.infused_ml,
            })
        }
        None => None,
    };
    if values.iter().all(Option::is_none) && pump.is_none() {
        return Err(Rejection::new(
            RejectReason::NoVitals,
            "none of hr, spo2, sbp, dbp, rr, etco2, pump is present",
        ));
    }
    Ok(Reading {
        seq: wire.seq,
        ts: wire.ts,
        values,
        pump,
    })
}

fn classify_json_error(e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let msg = e.to_string();
    let reason = match e.classify() {
        Category::Data if msg.starts_with("missing field") => RejectReason::MissingField,
        Category::Data => RejectReason::WrongType,
        Category::Syntax | Category::Eof | Category::Io => RejectReason::MalformedJson,
    };
    Rejection::new(reason, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000_000;
    const LIMITS: DecodeLimits = DecodeLimits {
        max_payload_bytes: 4096,
        max_future_skew_ms: 30_000,
    };

    fn reason(payload: &[u8]) -> RejectReason {
        decode(payload, NOW, &LIMITS).unwrap_err().reason
    }

    #[test]
    fn decodes_a_full_reading_and_ignores_unknown_fields() {
        let r = decode(
            br#"{"seq":7,"ts":1764000000000,"hr":72,"spo2":98.5,"sbp":121,"dbp":80,"rr":14,
                "etco2":38,"pump":{"running":true,"rate_ml_h":40.5,"infused_ml":12},"fw":"2.1"}"#,
            NOW,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.values[Vital::Spo2.index()], Some(98.5));
        assert_eq!(r.vitals().count(), 6);
        assert_eq!(r.pump.unwrap().rate_ml_h, 40.5);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let big = vec![b' '; 5000];
        assert_eq!(reason(&big), RejectReason::PayloadTooLarge);
        assert_eq!(reason(b"{\"seq\":1,\xff}"), RejectReason::InvalidUtf8);
        assert_eq!(reason(b"{\"seq\":1,"), RejectReason::MalformedJson);
        assert_eq!(reason(b"[1,2]"), RejectReason::WrongType);
        assert_eq!(
            reason(b" [1,1764000000000,150,null,null,null,null,null,null]"),
            RejectReason::WrongType
        );
        assert_eq!(reason(b"42"), RejectReason::WrongType);
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"pump":[true,40,10]}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"pump":{"running":true,"rate_ml_h":40}}"#),
            RejectReason::MissingField
        );
        let pumped = decode(
            br#"{"seq":1,"ts":1764000000000,"pump":{"running":true,"rate_ml_h":40,"infused_ml":10,"x":1}}"#,
            NOW,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(pumped.pump.map(|p| p.rate_ml_h), Some(40.0));
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"hr":"fast"}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(br#"{"seq":-1,"ts":1764000000000,"hr":60}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(br#"{"ts":1764000000000,"hr":60}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"spo2":140}"#),
            RejectReason::OutOfRange
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"hr":-5}"#),
            RejectReason::OutOfRange
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":5,"hr":60}"#),
            RejectReason::OutOfRange
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000000000,"fw":"x"}"#),
            RejectReason::NoVitals
        );
        assert_eq!(
            reason(br#"{"seq":1,"ts":1764000031000,"hr":60}"#),
            RejectReason::FutureTimestamp
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes, NOW, &LIMITS);
        }

        #[test]
        fn accepted_values_are_always_in_range(hr in -1000.0f64..1000.0, spo2 in -50.0f64..200.0) {
            let p = format!(r#"{{"seq":1,"ts":{NOW},"hr":{hr},"spo2":{spo2}}}"#);
            if let Ok(r) = decode(p.as_bytes(), NOW, &LIMITS) {
                for (v, x) in r.vitals() {
                    let (lo, hi) = v.possible_range();
                    proptest::prop_assert!(x >= lo && x <= hi);
                }
            }
        }
    }
}
