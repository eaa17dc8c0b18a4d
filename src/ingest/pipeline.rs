//! One MQTT message through the core: topic → chair, payload → reading, reading →
//! patient state and alarm events, events → fan-out. No network I/O, so tests and
//! benchmarks drive it directly.

use crate::app::App;
use crate::core::{decode, Outcome, RejectReason, Rejection, WardError};
use crate::telemetry::Metrics;
use std::time::{Duration, Instant};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Applied; `alarm_events` were handed to the fan-out.
    Accepted {
        alarm_events: usize,
    },
    /// A redelivery of a reading already applied.
    Duplicate,
    Rejected(Rejection),
}

/// Process one message received at `received` (monotonic) / `now_ms` (wall clock).
/// When this returns, any alarm events are in every dashboard's queue, so the caller
/// may acknowledge the message.
pub fn process(
    app: &App,
    topic: &str,
    payload: &[u8],
    received: Instant,
    now_ms: u64,
) -> Processed {
    let result = app
        .topic
        .chair_key(topic)
        .map_err(|e| Rejection::new(RejectReason::BadTopic, e.to_string()))
        .and_then(|chair| {
            let reading = decode(payload, now_ms, &app.decode_limits)?;
            let outcome = app.ward.apply(&chair, &reading, now_ms).map_err(
                |e @ WardError::ChairLimit(_)| {
                    Rejection::new(RejectReason::ChairLimit, e.to_string())
                },
            )?;
            Ok((reading.ts, outcome))
        });
    let m = &app.metrics;
    match result {
        Err(rejection) => {
            m.rejected(rejection.reason).increment(1);
            Processed::Rejected(rejection)
        }
        Ok((_, Outcome::Duplicate)) => {
            m.readings_duplicate.increment(1);
            Processed::Duplicate
        }
        Ok((
            device_ts,
            Outcome::Accepted {
                chair,
                events,
                late_values,
                clock_stepped_back,
                latest,
            },
        )) => {
            m.readings_ingested.increment(1);
            if clock_stepped_back {
                m.device_clock_steps.increment(1);
            }
            if late_values > 0 {
                m.readings_late_values.increment(late_values as u64);
            }
            Metrics::observe(
                &m.device_to_ingest,
                Duration::from_millis(now_ms.saturating_sub(device_ts)),
            );
            let alarm_events = events.len();
            app.hub.publish(events, Some(received));
            app.live.publish(&chair, &latest, received);
            Processed::Accepted { alarm_events }
        }
    }
}
