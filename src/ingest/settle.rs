//! Settling device messages: each is acknowledged to the broker once it is settled
//! (refused here, or answered by the engine after its events were journaled and
//! released), in arrival order (MQTT 3.1.1 §4.6). Messages are known here by the
//! tickets this hands out, which grow with each message.

use super::capture::Capture;
use super::pipeline::Processed;
use crate::engine::Receipt;
use rumqttc::{EventLoop, Publish};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// At most one log line per rejection reason per interval, with a count of the rest.
struct RejectLog {
    interval: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RejectLog {
    fn log(&mut self, topic: &str, reason: &'static str, detail: &str) {
        let now = Instant::now();
        let entry = self
            .last
            .entry(reason)
            .or_insert((now - self.interval * 2, 0));
        if now.duration_since(entry.0) >= self.interval {
            // The target these lines always had, for `RUST_LOG` filters set on it.
            tracing::warn!(
                target: "vitalgate::ingest::mqtt",
                topic,
                reason,
                detail,
                suppressed_since_last = entry.1,
                "rejected device message"
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

/// A message received and not yet acknowledged.
struct Unsettled {
    ticket: u64,
    publish: Publish,
    received_ms: u64,
    /// Set once settled (at once for a message refused here).
    outcome: Option<Processed>,
}

/// The messages of the current connection that are not yet acknowledged.
pub(super) struct Settlement {
    /// In arrival order, and so sorted by ticket.
    unsettled: VecDeque<Unsettled>,
    /// The last ticket handed out.
    last_ticket: u64,
    /// Outcomes of the messages handed to the engine.
    pub receipts: UnboundedReceiver<Receipt>,
    /// Settled messages not yet acknowledged, in arrival order.
    pending_acks: VecDeque<Publish>,
    rejects: RejectLog,
    /// `[capture]`: where applied messages are recorded, when enabled.
    capture: Option<Capture>,
}

impl Settlement {
    /// `reject_log_interval`: `ingest.reject_log_interval_ms`.
    pub fn new(receipts: UnboundedReceiver<Receipt>, reject_log_interval: Duration) -> Self {
        Settlement {
            unsettled: VecDeque::new(),
            last_ticket: 0,
            receipts,
            pending_acks: VecDeque::new(),
            rejects: RejectLog {
                interval: reject_log_interval,
                last: HashMap::new(),
            },
            capture: None,
        }
    }

    pub fn set_capture(&mut self, capture: Option<Capture>) {
        self.capture = capture;
    }

    pub fn take_capture(&mut self) -> Option<Capture> {
        self.capture.take()
    }

    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// The connection is lost: what the broker sent on it comes again.
    pub fn forget(&mut self) {
        self.unsettled.clear();
        self.pending_acks.clear();
    }

    /// The ticket of the next message received: the engine's receipt for it
    /// names it.
    pub fn next_ticket(&self) -> u64 {
        self.last_ticket + 1
    }

    /// A message received, under [`Self::next_ticket`], with its outcome when it
    /// was settled here.
    pub fn received(&mut self, publish: Publish, received_ms: u64, outcome: Option<Processed>) {
        self.last_ticket += 1;
        let ticket = self.last_ticket;
        self.unsettled.push_back(Unsettled {
            ticket,
            publish,
            received_ms,
            outcome,
        });
        self.settle();
    }

    /// Take `receipt` and every other one already waiting, then settle once: the
    /// engine answers a burst of messages together.
    pub fn on_receipt(&mut self, receipt: Receipt) {
        let mut next = Some(receipt);
        while let Some(receipt) = next {
            // A receipt for a message of a lost connection finds nothing: it comes
            // again.
            if let Ok(i) = self
                .unsettled
                .binary_search_by_key(&receipt.ticket, |u| u.ticket)
            {
                self.unsettled[i].outcome = Some(receipt.processed);
            }
            next = self.receipts.try_recv().ok();
        }
        self.settle();
    }

    /// Log and record the settled messages at the front, and queue their
    /// acknowledgements for [`Self::acknowledge`], in arrival order.
    fn settle(&mut self) {
        while self.unsettled.front().is_some_and(|u| u.outcome.is_some()) {
            let Some(Unsettled {
                publish,
                received_ms,
                outcome: Some(outcome),
                ..
            }) = self.unsettled.pop_front()
            else {
                break;
            };
            let topic = publish.topic.as_str();
            match outcome {
                Processed::Rejected(r) => self.rejects.log(topic, r.reason.as_str(), &r.detail),
                Processed::Refused { code, detail } => self.rejects.log(topic, code, &detail),
                Processed::Accepted { .. } | Processed::Duplicate | Processed::Session { .. } => {
                    if let Some(capture) = &self.capture {
                        capture.record(received_ms, topic, &publish.payload, publish.retain);
                    }
                }
            }
            // Settled (or rejected for good): acknowledge, in arrival order.
            self.pending_acks.push_back(publish);
        }
    }

    /// Write the acknowledgements of the settled messages into the connection that
    /// brought them, in arrival order; the event loop's next poll sends them before
    /// it waits. Not through the client's request queue: that would wake the task
    /// polling the event loop, this one, a second time per message.
    pub fn acknowledge(&mut self, events: &mut EventLoop) {
        for publish in self.pending_acks.drain(..) {
            match events.ack_now(&publish) {
                Ok(true) => {}
                // No connection: what it brought comes again on the next one, and the
                // next poll reports the loss.
                Ok(false) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RejectLog;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Log lines, as a `RUST_LOG`-style filter on `filter` lets them through.
    fn logged(filter: &str, log: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rejections_are_logged_under_the_mqtt_ingest_target_once_per_interval() {
        let mut rejects = RejectLog {
            interval: Duration::from_secs(60),
            last: HashMap::new(),
        };
        let text = logged("warn,vitalgate::ingest::mqtt=off", || {
            rejects.log("clinic/north/chair/1/vitals", "wrong_type", "ts: soon")
        });
        assert_eq!(text, "", "a filter on vitalgate::ingest::mqtt silences it");
        let mut rejects = RejectLog {
            interval: Duration::from_secs(60),
            last: HashMap::new(),
        };
        let text = logged("off,vitalgate::ingest::mqtt=warn", || {
            rejects.log("clinic/north/chair/1/vitals", "wrong_type", "ts: soon");
            rejects.log("clinic/north/chair/1/vitals", "wrong_type", "ts: later");
        });
        assert_eq!(text.matches("rejected device message").count(), 1, "{text}");
        assert!(text.contains("reason=\"wrong_type\""), "{text}");
    }
}
