//! Keeping chairs' snapshots: device messages the engine has applied wait
//! here, unacknowledged, until a snapshot of their chair reflecting them is
//! stored ([`super::snapshots`]); a round every `every` stores them and then
//! acknowledges what they reflect.
//!
//! Invariants:
//! - A round asks the engine for copies only of chairs of partitions whose
//!   chairs it holds, after the messages it acknowledges were applied (their
//!   receipts came first), and writes a copy only once the engine has
//!   answered, which it does after the commit of every event made before,
//!   and only while the chair's lease holds: the journal retries each event
//!   until it is stored or its partition's lease lapses, so a copy written
//!   under a valid lease assumes only events that are in the events stream.
//! - A message applied to chairs the engine has since dropped (its partition
//!   moved away, and maybe back: [`Keeper::moved`]) is dropped unacknowledged,
//!   and a copy of a partition that moved while the round was under way is
//!   not written: made before the engine dropped its chairs, it may assume
//!   events that a lapsed lease kept out of the events stream, and a lease
//!   taken again since would let it through.
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
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

/// Acknowledge `message` to NATS if `acknowledge` (its lease permitting), and
/// tell `report`, if any, what became of it.
pub async fn acknowledge_and_report(
    message: DeviceMessage,
    processed: Processed,
    report: Option<mpsc::UnboundedSender<Applied>>,
    acknowledge: bool,
) {
    let chair = message.chair.clone();
    let acknowledged = acknowledge
        && match message.ack().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(chair = %chair, error = %e, "device message not acknowledged");
                false
            }
        };
    if let Some(report) = report {
        let _ = report.send(Applied {
            chair,
            processed,
            acknowledged,
        });
    }
}

/// Snapshot writes of one round in flight at once.
const WRITES_IN_FLIGHT: usize = 32;

/// A device message applied, waiting for its chair's snapshot.
pub struct Held {
    pub message: DeviceMessage,
    pub processed: Processed,
    /// Where its outcome is reported once acknowledged (tests, tools).
    pub report: Option<mpsc::UnboundedSender<Applied>>,
    /// Its partition's [`Keeper::generation`] when it was handed to the engine.
    pub generation: u64,
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
    generations: Mutex<HashMap<u32, u64>>,
    metrics: ClusterMetrics,
}

impl Keeper {
    pub fn new(snapshots: Arc<Snapshots>, metrics: ClusterMetrics) -> Keeper {
        Keeper {
            snapshots,
            held: Mutex::new(Vec::new()),
            retry: Mutex::new(HashSet::new()),
            round: tokio::sync::Mutex::new(()),
            generations: Mutex::new(HashMap::new()),
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
        // A copy of a partition that moved (and maybe came back) after this
        // point may be of state the engine has since dropped, its events
        // never journaled: not written (see the write below).
        let generations: HashMap<u32, u64> =
            ready.iter().map(|&p| (p, self.generation(p))).collect();
        let partitions = self.snapshots.partitions();
        let waiting = std::mem::take(&mut *self.held.lock().expect("held messages"));
        let retry = std::mem::take(&mut *self.retry.lock().expect("retried chairs"));
        // Messages of partitions gone, or applied to chairs the engine has
        // dropped since (their partition moved away and back), are the
        // partition's owner's to apply again: dropped, unacknowledged.
        let mut by_chair = BTreeMap::<String, Vec<Held>>::new();
        for held in waiting {
            let p = held.message.partition;
            if !ready.contains(&p) || held.generation != self.generation(p) {
                continue;
            }
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
            .await;
        let copies = match copies {
            Some((true, copies)) => copies,
            other => {
                // Events not journaled (or the engine stopping): nothing is
                // written, everything waits for the next round.
                self.metrics
                    .snapshots_failed
                    .increment(by_chair.len() as u64);
                let mut retry = self.retry.lock().expect("retried chairs");
                retry.extend(other.into_iter().flat_map(|(_, c)| c).map(|c| c.chair));
                drop(retry);
                self.put_back(by_chair);
                return;
            }
        };
        let owned = owned.borrow().clone();
        let still_ready = ready_now.borrow().clone();
        let mut done = BTreeMap::new();
        let unmoved = |p: u32| generations.get(&p) == Some(&self.generation(p));
        // A chair with messages waiting and no copy was dropped by the engine
        // meanwhile: if its partition is still held and never moved (an idle
        // chair forgotten), they are done with; if it went, or went and came
        // back, they are the partition's owner's to apply again.
        let copied: HashSet<String> = copies.iter().map(|c| c.chair.clone()).collect();
        by_chair.retain(|chair, held| {
            if copied.contains(chair) {
                return true;
            }
            let p = partition_of(chair, partitions);
            if still_ready.contains(&p) && unmoved(p) {
                done.insert(chair.clone(), std::mem::take(held));
            }
            false
        });
        let by_chair_now = &by_chair;
        let writes = copies.into_iter().filter_map(|copy| {
            let partition = partition_of(&copy.chair, partitions);
            // Moved since the round began: the copy may predate the engine's
            // drop of the partition's chairs and assume events a lapsed lease
            // kept out of the events stream, while `owned` holds the lease
            // taken again since. Its messages are dropped below.
            if !unmoved(partition) {
                return None;
            }
            // No lease, no write: its messages wait, unacknowledged, for the
            // partition's next owner.
            let valid_until = *owned.get(&partition)?;
            let waiting = by_chair_now.get(&copy.chair).into_iter().flatten();
            let snapshot = Snapshot {
                through: waiting
                    .map(|held| held.message.stream_seq)
                    .fold(self.snapshots.through(&copy.chair), u64::max),
                copy,
            };
            Some(async move {
                let stored = self.snapshots.write(&snapshot, valid_until).await;
                (snapshot.copy.chair, stored)
            })
        });
        let mut again = BTreeMap::new();
        // A bounded number in flight: a round's writes are spread out rather
        // than landing on NATS all at once.
        let stored: Vec<(String, Result<(), super::snapshots::WriteError>)> =
            futures_util::stream::iter(writes)
                .buffer_unordered(WRITES_IN_FLIGHT)
                .collect()
                .await;
        for (chair, stored) in stored {
            match stored {
                Ok(()) => {
                    self.metrics.snapshots_written.increment(1);
                    if let Some(held) = by_chair.remove(&chair) {
                        done.insert(chair, held);
                    }
                }
                Err(e) => {
                    self.metrics.snapshots_failed.increment(1);
                    tracing::warn!(chair = %chair, error = %e, "chair's snapshot not stored");
                    match by_chair.remove(&chair) {
                        Some(held) => {
                            again.insert(chair, held);
                        }
                        None => {
                            self.retry.lock().expect("retried chairs").insert(chair);
                        }
                    }
                }
            }
        }
        self.put_back(again);
        // Left in `by_chair`: copied, but the lease had gone or the partition
        // moved meanwhile (dropped, unacknowledged).
        let acks = done
            .into_values()
            .flatten()
            .map(|held| acknowledge_and_report(held.message, held.processed, held.report, true));
        futures_util::future::join_all(acks).await;
    }

    /// How many times `partition` has moved (a message applied under an
    /// earlier count was applied to chairs the engine has since dropped).
    pub fn generation(&self, partition: u32) -> u64 {
        self.generations
            .lock()
            .expect("partition generations")
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// The partitions `moved` were taken or given back: the engine drops
    /// their chairs, and what was applied to those is void; what was known of
    /// their snapshots is the next owner's to know (or is read again when
    /// taken).
    pub fn moved(&self, moved: &BTreeSet<u32>) {
        let mut generations = self.generations.lock().expect("partition generations");
        for p in moved {
            *generations.entry(*p).or_insert(0) += 1;
        }
        drop(generations);
        self.snapshots.forget(|p| moved.contains(&p));
    }

    fn put_back(&self, by_chair: BTreeMap<String, Vec<Held>>) {
        self.held
            .lock()
            .expect("held messages")
            .extend(by_chair.into_values().flatten());
    }
}
