//! The hub: every connected dashboard's queue, and the delivery of released events.
//!
//! Events reach the hub from the engine's journal thread, in `seq` order and only
//! after their commit (`crate::engine`); the hub queues each for every dashboard
//! whose scope holds its chair. The work under the lock is one non-blocking
//! `try_send` per subscriber and event; a subscriber whose queue is full is cut
//! off, never waited for. A new subscriber is registered by the journal thread too
//! (the engine's `Subscribe`), in order with events: it receives every event after
//! its first frames exactly once.

use crate::access::SiteScope;
use crate::engine::{Outlet, Sequenced};
use crate::protocol::Frame;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::engine::Start;

/// How a dashboard's connection is told it is cut off as a slow consumer.
#[derive(Clone, Debug, Default)]
pub struct CutOff {
    /// Cancelled when cut off: the connection then closes with 4008. Only through
    /// [`CutOff::cut`], which wakes the writer too.
    pub(crate) slow: CancellationToken,
    /// Cancelled with it: the one token the connection's writer waits on for
    /// every reason to stop (it is also cancelled when the client goes away and
    /// when the gateway shuts down), so that a writer polls one future per wake
    /// instead of one per reason.
    pub(crate) wake: CancellationToken,
}

impl CutOff {
    /// Cut the connection off as a slow consumer.
    pub fn cut(&self) {
        self.slow.cancel();
        self.wake.cancel();
    }
}

/// A dashboard's place in the hub.
pub struct Subscriber {
    pub id: u64,
    pub tx: mpsc::Sender<Frame>,
    /// Used when the subscriber is cut off as a slow consumer.
    pub cut_off: CutOff,
    /// The sites whose events it receives.
    pub scope: SiteScope,
}

impl Subscriber {
    /// Queue a frame without waiting (a frame about a chair outside its scope is
    /// skipped). False when the subscriber is gone, or its queue is full, in which
    /// case it is told to close as a slow consumer.
    fn deliver(&self, frame: &Frame) -> bool {
        if !crate::engine::in_scope(frame, &self.scope) {
            return true;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut_off.cut();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<Vec<Subscriber>>,
    next_subscriber: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        // Nothing under the lock can leave the list half-changed.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh subscriber id.
    pub fn next_id(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Start delivering events to `subscriber` (from the journal thread, in order
    /// with the events).
    pub fn register(&self, subscriber: Subscriber) {
        self.lock().push(subscriber);
    }

    /// Queue `frame` for subscriber `id` only (a requested snapshot).
    pub fn deliver_to(&self, id: u64, frame: &Frame) {
        self.lock().retain(|s| s.id != id || s.deliver(frame));
    }

    /// Queue released events, in order, for every subscriber.
    ///
    /// Subscriber by subscriber rather than frame by frame: the events of one reading
    /// (a surge that raises two rules) then sit in each queue together, and its
    /// writer sends them in one socket write instead of waking once per frame.
    pub fn deliver(&self, events: &[Sequenced]) {
        self.lock()
            .retain(|s| events.iter().all(|e| s.deliver(&e.frame)));
    }

    /// Remove a subscriber that has gone away.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().retain(|s| s.id != id);
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }
}

/// The fan-out as the engine sees it: alarm and session events to the hub, live
/// vitals to the live feed.
pub struct Outlets {
    pub hub: Arc<Hub>,
    pub live: Arc<super::LiveFeed>,
}

impl Outlet for Outlets {
    fn release(&self, events: &[Sequenced]) {
        self.hub.deliver(events);
    }

    fn vitals(&self, chair: &Arc<str>, latest: &crate::core::Latest, ingested_at: Instant) {
        self.live.publish(chair, latest, ingested_at);
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
