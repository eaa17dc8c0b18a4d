//! Device messages of the partitions this gateway owns, through the same
//! intake as single-node mode, into the engine; each acknowledged to NATS once
//! what it caused is journaled in the events stream and, with a keeper, once a
//! snapshot of its chair reflecting it is stored.
//!
//! Invariants:
//! - Messages are handed to the engine in the order the partitions' readers
//!   hand them on (one task), so one chair's messages keep their order.
//! - A message is acknowledged only after the engine's receipt for it, which
//!   comes after the journal commit of its events ([`super::journal`]), and
//!   only while its lease holds ([`DeviceMessage::ack`]): a message whose
//!   events could not be journaled, or whose lease lapsed, is delivered again
//!   to the partition's next owner. With a keeper, a message that changed its
//!   chair waits there for a snapshot reflecting it; one handed out again
//!   that a stored snapshot already reflects is acknowledged unapplied.
//! - A message settled without the engine (a bad topic, an undecodable
//!   reading, a refused session) is acknowledged at once and counted by the
//!   intake, as in single-node mode: it would be refused again forever.
//! - A message the engine did not take (it is shutting down) is left
//!   unacknowledged.
//! - When a partition is taken or goes ([`Change`]), the engine drops its
//!   chairs' state and active alarms before the next message is applied: a
//!   partition gone is the next owner's to act for (no escalation from here),
//!   and one taken starts from its chairs' snapshots and the events stream, not
//!   from state this gateway kept from an earlier ownership that may never have
//!   been journaled.
//!   Ownership announces a take before any message of the partition is read,
//!   and the announcements are read here before every message.

use super::intake::DeviceMessage;
pub use super::keeper::Applied;
use super::keeper::{acknowledge_and_report, Held, Keeper};
use super::mirror::Mirror;
use super::ownership::{Change, Owned};
use super::partition_of;
use super::snapshots::Snapshot;
use crate::engine::{Command, Processed, Reply, Restore, Stopped, NOT_JOURNALED};
use crate::ingest::pipeline::{intake, Intake};
use crate::ingest::{Devices, Topics};
use crate::telemetry::ClusterMetrics;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The device topics in cluster mode: the shipped NATS mapping
/// (`deploy/nats/partitions.conf`) partitions `clinic.*.chair.*.*`, so devices
/// publish to `clinic/{site}/chair/{chair}/{vitals|session|status}`.
pub fn topics() -> Topics {
    Topics::parse(
        "clinic/+/chair/+/vitals",
        "clinic/+/chair/+/session",
        "clinic/+/chair/+/status",
    )
    .expect("the cluster's topics are valid filters")
}

/// The MQTT topic a device published `message` on.
pub fn mqtt_topic(message: &DeviceMessage) -> String {
    let (site, chair) = message
        .chair
        .split_once('/')
        .unwrap_or((&message.chair, ""));
    format!("clinic/{site}/chair/{chair}/{}", message.kind)
}

/// What the apply loop learns of ownership.
pub struct Partitions {
    /// The partitions held now: a message read before its partition went is
    /// dropped unacknowledged (the next owner gets it).
    pub owned: watch::Receiver<Owned>,
    pub changes: mpsc::UnboundedReceiver<Change>,
    /// How many partitions the cluster has.
    pub count: u32,
    /// Where a partition taken gets its chairs' sessions and open alarms
    /// from; without it, taken chairs start from their next messages.
    pub restore_from: Option<Arc<Mirror>>,
    /// Told each partition gone once its chairs are handed over and every
    /// event they made is journaled (or failed): ownership may release its
    /// lease early ([`super::ownership::Ownership::let_go`]).
    pub let_go: Option<mpsc::UnboundedSender<(u32, u64)>>,
    /// Where applied messages wait for their chairs' snapshots, and taken
    /// chairs come back from theirs; without it, a message is acknowledged
    /// once its events are journaled and taken chairs start from their
    /// sessions and open alarms.
    pub keeper: Option<Arc<Keeper>>,
}

/// Apply every message from `messages` until `stop` (or until the readers
/// stop), reporting each outcome to `applied` when given. Also returns the
/// partitions whose chairs the engine holds now: handed over to it and, when
/// taken, restored (what commands for a chair may act on).
pub fn start(
    devices: Arc<Devices>,
    mut messages: mpsc::Receiver<DeviceMessage>,
    partitions: Partitions,
    applied: Option<mpsc::UnboundedSender<Applied>>,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<BTreeSet<u32>>) {
    let Partitions {
        owned,
        mut changes,
        count: partitions,
        restore_from,
        let_go,
        keeper,
    } = partitions;
    let (ready_tx, ready) = watch::channel(BTreeSet::new());
    let handing = HandOver {
        devices: devices.clone(),
        partitions,
        mirror: restore_from,
        ready: ready_tx,
        metrics: devices.metrics.cluster(),
        let_go,
        keeper: keeper.clone(),
    };
    let task = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                Some(change) = changes.recv() => {
                    if handing.run(change, &mut changes).await.is_err() {
                        return;
                    }
                    continue;
                }
                next = messages.recv() => match next {
                    Some(message) => message,
                    None => return,
                },
            };
            if let Ok(change) = changes.try_recv() {
                if handing.run(change, &mut changes).await.is_err() {
                    return;
                }
            }
            if !owned.borrow().contains_key(&message.partition) {
                continue;
            }
            if let Some(keeper) = &keeper {
                if keeper
                    .snapshots()
                    .reflects(&message.chair, message.stream_seq)
                {
                    // Handed out again after a snapshot reflecting it was
                    // stored (by this gateway or the partition's previous
                    // owner): done with.
                    tokio::spawn(async move { drop(message.ack().await) });
                    continue;
                }
            }
            let topic = mqtt_topic(&message);
            let (reply, outcome) = oneshot::channel();
            let now_ms = crate::clock::now_ms();
            let received = std::time::Instant::now();
            let settled = match intake(
                &devices,
                &topic,
                &message.payload,
                received,
                now_ms,
                Reply::Once(reply),
            ) {
                Intake::Done(processed) => Settled::Now(processed),
                Intake::Engine(command) => match devices.engine.send(command).await {
                    Ok(()) => Settled::Later(outcome),
                    Err(_) => return,
                },
            };
            // Waiting for the receipt off this loop: the next message is handed
            // to the engine while this one's events are being journaled.
            let applied = applied.clone();
            let keeper = keeper.clone();
            let generation = keeper
                .as_ref()
                .map_or(0, |k| k.generation(message.partition));
            tokio::spawn(async move {
                let processed = match settled {
                    Settled::Now(processed) => processed,
                    Settled::Later(outcome) => match outcome.await {
                        Ok(processed) => processed,
                        Err(_) => return,
                    },
                };
                let changed_state = matches!(
                    processed,
                    Processed::Accepted { .. } | Processed::Duplicate | Processed::Session { .. }
                );
                if let Some(keeper) = keeper.filter(|_| changed_state) {
                    keeper.hold(Held {
                        message,
                        processed,
                        report: applied,
                        generation,
                    });
                    return;
                }
                let not_journaled = matches!(
                    processed,
                    Processed::Refused { code, .. } if code == NOT_JOURNALED
                );
                acknowledge_and_report(message, processed, applied, !not_journaled).await;
            });
        }
    });
    (task, ready)
}

/// What a change of ownership does to the engine.
struct HandOver {
    devices: Arc<Devices>,
    partitions: u32,
    mirror: Option<Arc<Mirror>>,
    /// The partitions whose chairs the engine holds (see [`start`]).
    ready: watch::Sender<BTreeSet<u32>>,
    metrics: ClusterMetrics,
    let_go: Option<mpsc::UnboundedSender<(u32, u64)>>,
    keeper: Option<Arc<Keeper>>,
}

impl HandOver {
    /// Drop from the engine the chairs of the partitions in `first` and every
    /// change waiting after it; then restore those of the partitions taken
    /// from the mirror. Done once the engine has answered.
    async fn run(
        &self,
        first: Change,
        changes: &mut mpsc::UnboundedReceiver<Change>,
    ) -> Result<(), Stopped> {
        let (mut moved, mut taken) = (BTreeSet::new(), BTreeMap::new());
        // Every give-back seen, as ownership named it.
        let mut given_up = Vec::new();
        let mut next = Some(first);
        while let Some(change) = next {
            match change {
                Change::Taken(p, at) => {
                    moved.insert(p);
                    taken.insert(p, at);
                }
                Change::Gone(p, revision) => {
                    moved.insert(p);
                    taken.remove(&p);
                    given_up.extend(revision.map(|r| (p, r)));
                }
            }
            next = changes.try_recv().ok();
        }
        // Nothing acts on a moving partition's chairs until it is settled.
        self.ready
            .send_modify(|ready| ready.retain(|p| !moved.contains(p)));
        if let Some(keeper) = &self.keeper {
            keeper.moved(&moved);
        }
        let partitions = self.partitions;
        let engine = &self.devices.engine;
        let acquired = taken;
        let taken: BTreeSet<u32> = acquired.keys().copied().collect();
        // Those not taken again in the same breath.
        given_up.retain(|(p, _)| !taken.contains(p));
        let which = move |chair: &str| moved.contains(&partition_of(chair, partitions));
        let dropped = engine
            .ask(|reply| Command::HandOver {
                which: Box::new(which),
                reply,
            })
            .await
            .ok_or(Stopped)?;
        if dropped > 0 {
            tracing::info!(chairs = dropped, "chairs handed over with their partitions");
        }
        if let Some(let_go) = self.let_go.clone().filter(|_| !given_up.is_empty()) {
            // The engine takes the flush after the hand-over: once it answers,
            // every event of those chairs is journaled or failed, and none
            // will be made. Not waited for here: other partitions' messages go on.
            let engine = engine.clone();
            let keeper = self.keeper.clone();
            tokio::spawn(async move {
                if engine.flushed().await {
                    // Nor any snapshot written, or message acknowledged, from here.
                    if let Some(keeper) = keeper {
                        keeper.quiet().await;
                    }
                    for word in given_up {
                        let _ = let_go.send(word);
                    }
                }
            });
        }
        if taken.is_empty() {
            self.settled(&acquired);
            return Ok(());
        }
        let snapshots = self.snapshots_of(&taken).await;
        let journaled = self.journaled(&taken).await;
        let (copied, restored) = (snapshots.len(), journaled.is_some());
        let now_ms = crate::clock::now_ms();
        let metrics = self.metrics.clone();
        engine
            .ask(|reply| Command::Restore {
                restore: Box::new(move |r| {
                    let from_copies = take_back(r, snapshots);
                    metrics
                        .chairs_from_snapshots
                        .increment(from_copies.len() as u64);
                    if let Some(now) = journaled {
                        restore_journaled(r, now, &from_copies, now_ms);
                    }
                }),
                reply,
            })
            .await
            .ok_or(Stopped)?;
        tracing::info!(
            snapshots = copied,
            from_events = restored,
            "partitions taken over: chairs taken back"
        );
        self.settled(&acquired);
        Ok(())
    }

    /// The snapshots of the chairs of the partitions `taken` (none if there
    /// is no keeper, or they could not be read: the chairs then start from
    /// their sessions and open alarms).
    async fn snapshots_of(&self, taken: &BTreeSet<u32>) -> Vec<Snapshot> {
        let Some(keeper) = &self.keeper else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &p in taken {
            match keeper.snapshots().load(p).await {
                Ok(snapshots) => out.extend(snapshots),
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "chairs' snapshots not read: the partition's chairs start from their sessions and open alarms");
                }
            }
        }
        out
    }

    /// The sessions and open alarms of the chairs of the partitions `taken`
    /// in the events stream, once the mirror has read everything the
    /// previous owners published.
    async fn journaled(&self, taken: &BTreeSet<u32>) -> Option<super::mirror::ChairsNow> {
        let mirror = self.mirror.as_ref()?;
        if let Err(e) = mirror.caught_up().await {
            tracing::error!(error = %e, "partitions taken without their chairs' sessions and alarms from the events stream");
            return None;
        }
        let partitions = self.partitions;
        Some(mirror.chairs(|chair| taken.contains(&partition_of(chair, partitions))))
    }

    /// The partitions `acquired` (with when their leases were) are the
    /// engine's now.
    fn settled(&self, acquired: &BTreeMap<u32, tokio::time::Instant>) {
        self.ready
            .send_modify(|ready| ready.extend(acquired.keys()));
        let serving = self.ready.borrow().len();
        self.metrics.partitions_serving.set(serving as f64);
        for at in acquired.values() {
            self.metrics.takeover.record(at.elapsed().as_secs_f64());
        }
    }
}

/// Take chairs back from their snapshots; the chairs taken.
fn take_back(r: &mut Restore<'_>, snapshots: Vec<Snapshot>) -> BTreeSet<String> {
    let mut taken = BTreeSet::new();
    for snapshot in snapshots {
        let chair = snapshot.copy.chair.clone();
        match r.chair(snapshot.copy) {
            Ok(()) => {
                taken.insert(chair);
            }
            Err(e) => tracing::warn!(chair = %chair, error = %e, "chair's snapshot not taken back"),
        }
    }
    taken
}

/// What the events stream says of the chairs taken: all there is for chairs
/// without a snapshot; for those with one, what happened after it.
fn restore_journaled(
    r: &mut Restore<'_>,
    now: super::mirror::ChairsNow,
    from_copies: &BTreeSet<String>,
    now_ms: u64,
) {
    let copied = |chair: &str| from_copies.contains(chair);
    for session in &now.sessions {
        if copied(&session.chair) {
            r.session_after_copy(session, now_ms);
        } else if let Err(e) = r.session(session, now_ms) {
            tracing::warn!(chair = %session.chair, error = %e, "session not restored");
        }
    }
    let mut open: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
    for alarm in now.alarms.iter().filter(|a| copied(&a.chair)) {
        open.entry(alarm.chair.to_string())
            .or_default()
            .insert(alarm.id);
    }
    let none = HashSet::new();
    for alarm in now.alarms {
        if copied(&alarm.chair) {
            let open = open.get(&*alarm.chair).unwrap_or(&none);
            r.alarm_after_copy(alarm, open, now_ms);
        } else {
            r.alarm(alarm, now_ms);
        }
    }
    for chair in from_copies {
        r.closed_after_copy(chair, open.get(chair).unwrap_or(&none), now_ms);
    }
    for (chair, ts) in &now.evaluated {
        if copied(chair) {
            continue;
        }
        if let Err(e) = r.evaluated_until(chair, *ts, now_ms) {
            tracing::warn!(chair = %chair, error = %e, "chair's evaluated readings not restored");
        }
    }
}

enum Settled {
    Now(Processed),
    Later(oneshot::Receiver<Processed>),
}
