//! Keeping chairs' snapshots: device messages the engine has applied wait
//! here, unacknowledged, until a snapshot of their chair reflecting them is
//! stored ([`super::snapshots`]); a round every `every` stores them and then
//! acknowledges what they reflect.
//!
//! Invariants:
//! - A round asks the engine for copies only of chairs of partitions whose
//!   chairs it holds, after the messages it acknowledges were applied (their
//!   receipts came first), and writes a copy only once the engine has
//!   answered, which it does after every event made before is journaled.
//! - A message is acknowledged only after its chair's snapshot was stored;
//!   one whose snapshot failed waits for the next round, one whose partition
//!   went is dropped unacknowledged (its next owner is handed it again).
//! - One round at a time: a partition given back is let go only after the
//!   round in flight ends ([`Keeper::quiet`]), so no snapshot of it is written,
//!   and none of its messages acknowledged, once its next owner may read.

use super::intake::DeviceMessage;
use super::ownership::Owned;
use super::partition_of;
use super::snapshots::{Snapshot, Snapshots};
use crate::engine::{Command, Engine, Processed};
use crate::telemetry::ClusterMetrics;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What became of one device message, for whoever watches (tests, metrics).
#[derive(Debug)]
pub struct Applied {
    pub chair: String,
    pub processed: Processed,
    /// Whether NATS was told the message is done with.
    pub acknowledged: bool,
}

/// A device message applied, waiting for its chair's snapshot.
pub struct Held {
    pub message: DeviceMessage,
    pub processed: Processed,
    /// Where its outcome is reported once acknowledged (tests, tools).
    pub report: Option<mpsc::UnboundedSender<Applied>>,
}

/// The messages waiting and the rounds that settle them.
pub struct Keeper {
    snapshots: Arc<Snapshots>,
    held: Mutex<Vec<Held>>,
    /// Chairs changed by something other than a device message whose last
    /// snapshot failed: asked for again next round.
    retry: Mutex<HashSet<String>>,
    /// Held by the round in flight.
    round: tokio::sync::Mutex<()>,
    metrics: ClusterMetrics,
}

impl Keeper {
    pub fn new(snapshots: Arc<Snapshots>, metrics: ClusterMetrics) -> Keeper {
        Keeper {
            snapshots,
            held: Mutex::new(Vec::new()),
            retry: Mutex::new(HashSet::new()),
            round: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// Keep `held` until a snapshot reflects it.
    pub fn hold(&self, held: Held) {
        self.held.lock().expect("held messages").push(held);
    }

    /// Wait for the round in flight, if any, to end.
    pub async fn quiet(&self) {
        drop(self.round.lock().await);
    }

    /// Run rounds every `every` until `stop`, for the partitions `ready` names
    /// (those whose chairs the engine holds), under the leases in `owned`.
    pub fn start(
        self: Arc<Self>,
        engine: Engine,
        ready: watch::Receiver<BTreeSet<u32>>,
        owned: watch::Receiver<Owned>,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // The engine starts noting changed chairs with the first copies
            // asked for: asked at once, before any partition is held.
            let _ = engine
                .ask(|reply| Command::Copies {
                    chairs: Vec::new(),
                    changed_in: Box::new(|_| false),
                    reply,
                })
                .await;
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                self.round(&engine, &ready, &owned).await;
            }
        })
    }

    /// One round: snapshots of the chairs with messages waiting and of those
    /// changed otherwise, then the messages they reflect acknowledged.
    pub async fn round(
        &self,
        engine: &Engine,
        ready_now: &watch::Receiver<BTreeSet<u32>>,
        owned: &watch::Receiver<Owned>,
    ) {
        let _one_at_a_time = self.round.lock().await;
        // Read under the lock: a partition given back left `ready` before its
        // let-go waited for this lock, so a round after that leaves it alone.
        let ready = &ready_now.borrow().clone();
        let partitions = self.snapshots.partitions();
        let waiting = std::mem::take(&mut *self.held.lock().expect("held messages"));
        let retry = std::mem::take(&mut *self.retry.lock().expect("retried chairs"));
        // Messages of partitions gone are the next owner's to apply again.
        let (mut by_chair, mut through) = (BTreeMap::<String, Vec<Held>>::new(), BTreeMap::new());
        for held in waiting {
            if !ready.contains(&held.message.partition) {
                continue;
            }
            let seq = through.entry(held.message.chair.clone()).or_insert(0u64);
            *seq = (*seq).max(held.message.stream_seq);
            by_chair
                .entry(held.message.chair.clone())
                .or_default()
                .push(held);
        }
        let mut chairs: Vec<String> = by_chair.keys().cloned().collect();
        chairs.extend(
            retry
                .into_iter()
                .filter(|c| ready.contains(&partition_of(c, partitions))),
        );
        let held_in = ready.clone();
        let copies = engine
            .ask(|reply| Command::Copies {
                chairs,
                changed_in: Box::new(move |chair| {
                    held_in.contains(&partition_of(chair, partitions))
                }),
                reply,
            })
            .await
            .flatten();
        let Some(copies) = copies else {
            // Events not journaled (or the engine stopping): nothing is
            // written, everything waits for the next round.
            self.metrics
                .snapshots_failed
                .increment(by_chair.len() as u64);
            self.put_back(by_chair);
            return;
        };
        let owned = owned.borrow().clone();
        // A chair with messages waiting and no copy was handed over meanwhile
        // (its partition left `ready` before the engine dropped it): its
        // messages are its next owner's, unacknowledged.
        let still_ready = ready_now.borrow().clone();
        let copied: HashSet<&str> = copies.iter().map(|c| c.chair.as_str()).collect();
        by_chair.retain(|chair, _| {
            copied.contains(chair.as_str())
                || still_ready.contains(&partition_of(chair, partitions))
        });
        let writes = copies.into_iter().filter_map(|copy| {
            let partition = partition_of(&copy.chair, partitions);
            let valid_until = *owned.get(&partition)?;
            let snapshot = Snapshot {
                through: through
                    .get(&copy.chair)
                    .copied()
                    .unwrap_or(0)
                    .max(self.snapshots.through(partition, &copy.chair)),
                copy,
            };
            Some(async move {
                let stored = self.snapshots.write(&snapshot, valid_until).await;
                (snapshot.copy.chair, stored)
            })
        });
        let mut failed = Vec::new();
        for (chair, stored) in futures_util::future::join_all(writes).await {
            match stored {
                Ok(()) => self.metrics.snapshots_written.increment(1),
                Err(e) => {
                    self.metrics.snapshots_failed.increment(1);
                    tracing::warn!(chair = %chair, error = %e, "chair's snapshot not stored");
                    failed.push(chair);
                }
            }
        }
        let mut again = BTreeMap::new();
        for chair in failed {
            match by_chair.remove(&chair) {
                Some(held) => {
                    again.insert(chair, held);
                }
                None => {
                    self.retry.lock().expect("retried chairs").insert(chair);
                }
            }
        }
        self.put_back(again);
        // Stored (or nothing to keep: a chair the engine no longer holds).
        let acks = by_chair.into_values().flatten().map(|held| async move {
            let chair = held.message.chair.clone();
            let acknowledged = match held.message.ack().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(chair = %chair, error = %e, "device message not acknowledged");
                    false
                }
            };
            if let Some(report) = held.report {
                let _ = report.send(Applied {
                    chair,
                    processed: held.processed,
                    acknowledged,
                });
            }
        });
        futures_util::future::join_all(acks).await;
    }

    fn put_back(&self, by_chair: BTreeMap<String, Vec<Held>>) {
        self.held
            .lock()
            .expect("held messages")
            .extend(by_chair.into_values().flatten());
    }
}
