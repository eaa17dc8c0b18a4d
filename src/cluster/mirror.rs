//! What the events stream says is going on: each chair's latest session and
//! its open alarms, kept up to date by reading every event as it is stored.
//!
//! A gateway that takes a partition over restores its chairs from here, as a
//! single-node gateway restores from its audit trail at start-up: sessions
//! (phase, patient, baseline, limits) and the alarms raised or acknowledged
//! and not cleared. Before it does, it waits until the mirror has read up to
//! the stream's last event ([`Mirror::caught_up`]): the previous owner
//! published nothing after its lease's deadline, which passed before the
//! partition could be taken.
//!
//! The mirror reads the stream from its first event: its memory holds one
//! session per chair and one entry per open alarm.

use super::events::EVENTS_STREAM;
use super::feed::{Feed, FeedError};
use super::ClusterError;
use crate::access::SiteScope;
use crate::core::{AlarmEvent, SessionEvent};
use async_nats::jetstream::Context;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Each chair's latest session event and its open alarms, as frame texts.
#[derive(Default)]
struct Ledger {
    sessions: HashMap<String, String>,
    /// By chair and alarm id.
    open: BTreeMap<(String, u64), String>,
    /// Per chair, the device time of the latest reading that raised or ended
    /// an alarm: what its owner had evaluated at least.
    evaluated: HashMap<String, u64>,
}

/// What the stream holds of some chairs.
#[derive(Debug, Default)]
pub struct ChairsNow {
    pub sessions: Vec<SessionEvent>,
    pub alarms: Vec<AlarmEvent>,
    /// Per chair, the device time up to which its readings were evaluated
    /// (see [`crate::engine::Restore::evaluated_until`]).
    pub evaluated: Vec<(String, u64)>,
}

pub struct Mirror {
    js: Context,
    ledger: Arc<Mutex<Ledger>>,
    /// The stream sequence of the last event read.
    read: watch::Receiver<u64>,
}

impl Mirror {
    /// Start reading the events stream from its first event, until `stop`.
    pub async fn start(js: &Context, stop: CancellationToken) -> Result<Mirror, FeedError> {
        let mut feed = Feed::open(js, SiteScope::all(), 0).await?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (read_tx, read) = watch::channel(0);
        let writing = ledger.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = feed.next() => event,
                };
                match event {
                    Ok(event) => {
                        let mut ledger = writing.lock().unwrap_or_else(|p| p.into_inner());
                        let chair = event.frame.chair.as_deref().unwrap_or_default();
                        ledger.take(&event.kind, chair, event.frame.as_str());
                        drop(ledger);
                        read_tx.send_replace(event.seq);
                    }
                    // Skipped by the feed; said loudly (no gateway writes such).
                    Err(e) => tracing::error!(error = %e, "an event the mirror cannot read"),
                }
            }
        });
        Ok(Mirror {
            js: js.clone(),
            ledger,
            read,
        })
    }

    /// Wait until every event stored so far has been read; the stream
    /// sequence read up to.
    pub async fn caught_up(&self) -> Result<u64, ClusterError> {
        let mut stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::js("finding the events stream", e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| ClusterError::js("reading the events stream's state", e))?
            .state
            .last_sequence;
        let mut read = self.read.clone();
        let reached = read
            .wait_for(|seq| *seq >= last)
            .await
            .map_err(|_| ClusterError::js("reading the events stream", "the mirror stopped"))?;
        Ok(*reached)
    }

    /// The sessions and open alarms of the chairs `which` names.
    pub fn chairs(&self, which: impl Fn(&str) -> bool) -> ChairsNow {
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = ChairsNow::default();
        for (chair, text) in &ledger.sessions {
            if which(chair) {
                match serde_json::from_str(text) {
                    Ok(session) => now.sessions.push(session),
                    Err(e) => {
                        tracing::warn!(chair = %chair, error = %e, "unreadable session event")
                    }
                }
            }
        }
        now.evaluated = ledger
            .evaluated
            .iter()
            .filter(|(chair, _)| which(chair))
            .map(|(chair, ts)| (chair.clone(), *ts))
            .collect();
        for ((chair, _), text) in &ledger.open {
            if which(chair) {
                match serde_json::from_str(text) {
                    Ok(alarm) => now.alarms.push(alarm),
                    Err(e) => tracing::warn!(chair = %chair, error = %e, "unreadable alarm event"),
                }
            }
        }
        now
    }
}

impl Ledger {
    /// Take in one event of `chair`, its frame `text`.
    fn take(&mut self, kind: &str, chair: &str, text: &str) {
        #[derive(serde::Deserialize)]
        struct Alarm {
            id: u64,
            state: String,
            kind: String,
            ts: u64,
            #[serde(default)]
            reason: Option<String>,
            #[serde(default)]
            escalated: bool,
            #[serde(default)]
            reminder: bool,
        }
        match kind {
            "session" => {
                self.sessions.insert(chair.to_string(), text.to_string());
            }
            "alarm" => {
                let Ok(alarm) = serde_json::from_str::<Alarm>(text) else {
                    tracing::warn!(
                        chair,
                        "an alarm event without an id or state in the events stream"
                    );
                    return;
                };
                // Raised or ended by a reading (not a timer, a command or a
                // re-send): its `ts` is that reading's device time.
                let by_reading = alarm.kind == "physiological"
                    && match alarm.state.as_str() {
                        "raised" => !alarm.escalated && !alarm.reminder,
                        "cleared" => alarm.reason.is_none(),
                        _ => false,
                    };
                if by_reading {
                    let until = self.evaluated.entry(chair.to_string()).or_default();
                    *until = (*until).max(alarm.ts);
                }
                let key = (chair.to_string(), alarm.id);
                if alarm.state == "cleared" {
                    self.open.remove(&key);
                } else {
                    self.open.insert(key, text.to_string());
                }
            }
            _ => {}
        }
    }
}
