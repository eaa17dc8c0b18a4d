//! One MQTT message through the core: topic → chair, payload → reading, reading →
//! patient state and alarm events, events → fan-out. No network I/O, so tests and
//! benchmarks drive it directly.

use crate::app::App;
use crate::core::{
    decode, Outcome, RejectReason, Rejection, SessionError, SessionUpdate, WardError,
};
use crate::ingest::TopicKind;
use crate::telemetry::Metrics;
use std::time::{Duration, Instant};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Applied; `alarm_events` were handed to the fan-out.
    Accepted { alarm_events: usize },
    /// A redelivery of a reading already applied.
    Duplicate,
    /// A reading rejected (counted by reason).
    Rejected(Rejection),
    /// A session or status message applied; `events` were handed to the fan-out.
    Session { events: usize },
    /// A session or status message refused: `code` names why.
    Refused { code: &'static str, detail: String },
}

/// Process one message received at `received` (monotonic) / `now_ms` (wall clock).
/// When this returns, any events are in the audit trail and in every dashboard's
/// queue, so the caller may acknowledge the message.
pub fn process(
    app: &App,
    topic: &str,
    payload: &[u8],
    received: Instant,
    now_ms: u64,
) -> Processed {
    match app.topics.classify(topic) {
        Ok((TopicKind::Vitals, chair)) => reading(app, &chair, payload, received, now_ms),
        Ok((TopicKind::Session, chair)) => session(app, &chair, payload, now_ms),
        Ok((TopicKind::Status, chair)) => status(app, &chair, payload, now_ms),
        Err(e) => {
            let rejection = Rejection::new(RejectReason::BadTopic, e.to_string());
            app.metrics.rejected(rejection.reason).increment(1);
            Processed::Rejected(rejection)
        }
    }
}

/// A session message: the clinic says what the chair is doing.
fn session(app: &App, chair: &str, payload: &[u8], now_ms: u64) -> Processed {
    if payload.is_empty() {
        // A retained message being cleared: nothing to apply.
        return Processed::Session { events: 0 };
    }
    let _order = app.in_order();
    let result = decode_session(payload, app.config.session.max_message_bytes)
        .map_err(WardError::from)
        .and_then(|update| app.ward.set_session(chair, &update, now_ms));
    let changed = matches!(&result, Ok(events) if !events.is_empty());
    let processed = publish_or_refuse(app, result);
    if changed {
        app.publish_live(chair);
    }
    processed
}

/// A session message's payload as the gateway takes it from MQTT (the replay too).
pub fn decode_session(payload: &[u8], max_bytes: usize) -> Result<SessionUpdate, SessionError> {
    SessionUpdate::decode(payload, max_bytes).and_then(|update| match update.ts {
        Some(_) => Ok(update),
        // Retained messages are redelivered on every new subscription: without
        // their own time they could not be told from a newer change.
        None => Err(SessionError::Invalid(
            "`ts` is required on session messages (ms since the epoch, when the phase was set)"
                .into(),
        )),
    })
}

/// A device status message: `online` / `offline`, as plain text or as
/// `{"status": "..."}` (a device's last will is typically a retained `offline`).
fn status(app: &App, chair: &str, payload: &[u8], now_ms: u64) -> Processed {
    app.metrics.status_messages.increment(1);
    if payload.is_empty() {
        return Processed::Session { events: 0 };
    }
    let Some(online) = parse_status(payload) else {
        app.metrics.session_rejected.increment(1);
        return Processed::Refused {
            code: "bad_status",
            detail: "status must be \"online\" or \"offline\" (or {\"status\": ...})".into(),
        };
    };
    let _order = app.in_order();
    let result = app.ward.set_device_online(chair, online, now_ms);
    publish_or_refuse(app, result)
}

/// Publish what a session or status message changed, or count and name its refusal.
fn publish_or_refuse(app: &App, result: Result<Vec<crate::core::Event>, WardError>) -> Processed {
    match result {
        Ok(events) => {
            let n = events.len();
            app.hub.publish(events, None);
            Processed::Session { events: n }
        }
        Err(e) => {
            app.metrics.session_rejected.increment(1);
            Processed::Refused {
                code: e.code(),
                detail: e.to_string(),
            }
        }
    }
}

/// `online` / `offline` from a status payload.
pub fn parse_status(payload: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    let word = if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Status {
            status: String,
        }
        serde_json::from_str::<Status>(text).ok()?.status
    } else {
        text.trim_matches('"').to_string()
    };
    match word.to_ascii_lowercase().as_str() {
        "online" => Some(true),
        "offline" => Some(false),
        _ => None,
    }
}

/// A device reading.
fn reading(app: &App, chair: &str, payload: &[u8], received: Instant, now_ms: u64) -> Processed {
    let reading = decode(payload, now_ms, &app.decode_limits);
    // From the change to the ward until its events are published (App::in_order).
    let _order = app.in_order();
    let result = reading.and_then(|reading| {
        let outcome = app
            .ward
            .apply(chair, &reading, now_ms)
            .map_err(|e| match e {
                WardError::ChairLimit(_) => Rejection::new(RejectReason::ChairLimit, e.to_string()),
                other => Rejection::new(RejectReason::BadTopic, other.to_string()),
            })?;
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
