//! One MQTT message into a command for the engine: topic → chair, payload →
//! reading, session or status. No network I/O, so tests and benchmarks drive it
//! directly; what the message changes is the engine's to decide.

use super::Devices;
use crate::core::{decode, RejectReason, Rejection, SessionError, SessionUpdate};
use crate::engine::{Command, Reply};
use crate::ingest::TopicKind;
use std::time::Instant;
use tokio::sync::oneshot;

pub use crate::engine::Processed;

/// What ingest makes of one message.
pub enum Intake {
    /// For the engine; its outcome comes back through the command's reply.
    Engine(Command),
    /// Settled here: rejected, refused, or nothing to apply.
    Done(Processed),
}

/// Turn one message received at `received` (monotonic) / `now_ms` (wall clock)
/// into a command whose outcome goes to `reply`.
pub fn intake(
    app: &Devices,
    topic: &str,
    payload: &[u8],
    received: Instant,
    now_ms: u64,
    reply: Reply,
) -> Intake {
    let (kind, chair) = match app.topics.classify(topic) {
        Ok(found) => found,
        Err(e) => {
            let rejection = Rejection::new(RejectReason::BadTopic, e.to_string());
            app.metrics.rejected(rejection.reason).increment(1);
            return Intake::Done(Processed::Rejected(rejection));
        }
    };
    match kind {
        TopicKind::Vitals => match decode(payload, now_ms, &app.decode_limits) {
            Ok(reading) => Intake::Engine(Command::Reading {
                chair,
                reading,
                received,
                now_ms,
                reply,
            }),
            Err(rejection) => {
                app.metrics.rejected(rejection.reason).increment(1);
                Intake::Done(Processed::Rejected(rejection))
            }
        },
        // A retained message being cleared: nothing to apply.
        TopicKind::Session | TopicKind::Status if payload.is_empty() => {
            if kind == TopicKind::Status {
                app.metrics.status_messages.increment(1);
            }
            Intake::Done(Processed::Session { events: 0 })
        }
        TopicKind::Session => match decode_session(
            payload,
            app.session_max_bytes,
            now_ms,
            app.decode_limits.max_future_skew_ms,
        ) {
            Ok(update) => Intake::Engine(Command::Session {
                chair,
                update,
                now_ms,
                reply,
            }),
            Err(e) => {
                let e = crate::core::WardError::from(e);
                app.metrics.session_rejected.increment(1);
                Intake::Done(Processed::Refused {
                    code: e.code(),
                    detail: e.to_string(),
                })
            }
        },
        TopicKind::Status => {
            app.metrics.status_messages.increment(1);
            match parse_status(payload) {
                Some(online) => Intake::Engine(Command::Status {
                    chair,
                    online,
                    now_ms,
                    reply,
                }),
                None => {
                    app.metrics.session_rejected.increment(1);
                    Intake::Done(Processed::Refused {
                        code: "bad_status",
                        detail: "status must be \"online\" or \"offline\" (or {\"status\": ...})"
                            .into(),
                    })
                }
            }
        }
    }
}

/// Process one message and wait until it is settled: when this returns, its
/// events are in the journal and in every dashboard's queue.
pub async fn process(
    app: &Devices,
    topic: &str,
    payload: &[u8],
    received: Instant,
    now_ms: u64,
) -> Processed {
    let (tx, rx) = oneshot::channel();
    match intake(app, topic, payload, received, now_ms, Reply::Once(tx)) {
        Intake::Done(processed) => processed,
        Intake::Engine(command) => match app.engine.send(command).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Processed::stopped()),
            Err(_) => Processed::stopped(),
        },
    }
}

/// A session message's payload as the gateway takes it from MQTT (the replay too),
/// at gateway time `now_ms`.
pub fn decode_session(
    payload: &[u8],
    max_bytes: usize,
    now_ms: u64,
    max_future_skew_ms: u64,
) -> Result<SessionUpdate, SessionError> {
    SessionUpdate::decode(payload, max_bytes).and_then(|update| match update.ts {
        // Session messages are ordered by `ts`: one from far ahead (a time in
        // microseconds, a clock set wrong) would make every later, correct message
        // of the chair look older and be refused, for as long as that lead lasts.
        Some(ts) if ts > now_ms.saturating_add(max_future_skew_ms) => {
            Err(SessionError::Invalid(format!(
                "`ts` is {} ms ahead of the gateway's clock (at most {max_future_skew_ms} allowed): ms since the epoch, from a clock in sync",
                ts - now_ms
            )))
        }
        Some(_) => Ok(update),
        // Retained messages are redelivered on every new subscription: without
        // their own time they could not be told from a newer change.
        None => Err(SessionError::Invalid(
            "`ts` is required on session messages (ms since the epoch, when the phase was set)"
                .into(),
        )),
    })
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

#[cfg(test)]
mod tests {
    use super::decode_session;

    #[test]
    fn a_session_message_from_far_ahead_is_refused() {
        let now = 1_800_000_000_000;
        let at = |ts: u64| format!(r#"{{"phase":"idle","ts":{ts}}}"#);
        let decode = |ts: u64| decode_session(at(ts).as_bytes(), 4096, now, 30_000);
        assert!(decode(now + 30_000).is_ok());
        assert!(decode(now - 3_600_000).is_ok());
        // A time in microseconds.
        let err = decode(now * 1000).unwrap_err();
        assert_eq!(err.code(), "bad_session");
        assert!(decode(now + 30_001).is_err());
        let untimed = decode_session(br#"{"phase":"idle"}"#, 4096, now, 30_000);
        assert_eq!(untimed.unwrap_err().code(), "bad_session");
    }
}
