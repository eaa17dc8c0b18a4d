//! Which partitions this gateway owns: a loop that keeps its leases renewed,
//! takes free partitions up to its share, gives back what is over it, and
//! publishes the result for the parts that act for a partition.
//!
//! Share: every gateway announces itself in a members bucket (same expiry as
//! the leases); with `n` members alive, a gateway holds at most `ceil(P / n)`
//! partitions. Each prefers the partitions that rank it highest among the
//! members (rendezvous hashing), so after a gateway dies the others split its
//! partitions without asking each other, and a gateway that joins takes its
//! share as the others give extras back, one per round.
//!
//! Giving a partition back never lets another gateway act while work read
//! under our lease may still land: the partition leaves the published set at
//! once (readers stop), the lease is no longer renewed, and its key is removed
//! once nothing of ours can act for it any more: when the device path says it
//! has let that give-back go ([`Ownership::let_go`]: its chairs handed over
//! and every event they made journaled or known not to be) and the messages
//! handed to us and not acknowledged are due to the next owner
//! ([`OwnershipSettings::released_after`] since the readers were told to
//! stop: a pull in flight, the consumers' `ack_wait`, the server's timer), or
//! else once its deadline has passed (every acknowledgement and publish checks
//! that deadline). A handover therefore pauses the partition's chairs for
//! about `released_after` (up to `ttl - margin` without the device path's
//! word), a crash up to `ttl`.
//!
//! A lease whose deadline passed before its renewal was sent is not renewed,
//! even if no one else took it: it is dropped, and the partition is taken again
//! later like any free one. So every time this gateway starts acting for a
//! partition is an acquisition, announced as [`Change::Taken`]: whatever it
//! held for the partition's chairs before may be stale (work done under the
//! lapsed lease that was never journaled) and is dropped.

use super::lease::{Lease, Leases, Renewal};
use super::{expiring_bucket, keys_of, ClusterError, MEMBER_BUCKET};
use crate::telemetry::ClusterMetrics;
use async_nats::jetstream::{kv, Context};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The partitions held, each with the instant from which this gateway must
/// no longer act for it (see [`Lease::valid_until`]).
pub type Owned = BTreeMap<u32, Instant>;

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct OwnershipSettings {
    /// Partitions in the cluster (`deploy/nats/partitions.conf`'s count).
    pub partitions: u32,
    /// How often leases are renewed and shares reconsidered.
    pub round: Duration,
    /// Copies of the members bucket (as of the lease bucket).
    pub replicas: usize,
    /// How long after a partition's readers are told to stop every message
    /// they were handed is due again to the next owner
    /// (the intake's `ReadSettings::due_after_stop`): the earliest a
    /// partition given back is released.
    pub released_after: Duration,
}

/// A partition this gateway started or stopped acting for, in the order it
/// happened (never coalesced, unlike [`Owned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Acquired (at the instant given): announced before the partition
    /// appears in [`Owned`], so before any of its messages are read.
    Taken(u32, Instant),
    /// Lost, lapsed or given back: announced once it has left [`Owned`]. A
    /// give-back carries its lease's revision, which names it for
    /// [`Ownership::let_go`]; a lease lost carries none (nothing to release).
    Gone(u32, Option<u64>),
}

/// The running loop.
pub struct Ownership {
    /// The partitions held now, with their deadlines.
    pub owned: watch::Receiver<Owned>,
    /// Every [`Change`], in order.
    pub changes: mpsc::UnboundedReceiver<Change>,
    /// Where the device path says it has let a partition go (echoing its
    /// [`Change::Gone`]): nothing of this gateway will act for it again under
    /// that lease.
    pub let_go: mpsc::UnboundedSender<(u32, u64)>,
    /// Cancelled: give every partition back, each released as soon as the
    /// device path has let it go (a clean stop while the device path still
    /// runs); the task ends once all are released.
    pub leave: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// Start the loop; it runs until `stop` or [`Ownership::leave`], then gives
/// every partition back (each key removed as above: after `stop`, once its
/// deadline has passed). It counts takes, losses and give-backs in `metrics`.
pub async fn start(
    js: &Context,
    leases: Leases,
    me: &str,
    settings: OwnershipSettings,
    metrics: ClusterMetrics,
    stop: CancellationToken,
) -> Result<Ownership, ClusterError> {
    let members = super::once_answered(
        "the members bucket does not answer yet",
        super::unanswered,
        || {
            expiring_bucket(
                js,
                MEMBER_BUCKET,
                "vitalgate: gateways alive",
                leases.ttl(),
                settings.replicas,
            )
        },
    )
    .await?;
    let (tx, rx) = watch::channel(Owned::new());
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let (let_go, let_go_rx) = mpsc::unbounded_channel();
    let mut owner = Owner {
        changes: changes_tx,
        leases,
        members,
        me: member_key(me),
        settings,
        held: BTreeMap::new(),
        releasing: Vec::new(),
        tx,
        metrics,
        let_go: let_go_rx,
    };
    let leave = CancellationToken::new();
    let leaving = leave.clone();
    let task = tokio::spawn(async move {
        let mut round = tokio::time::interval(settings.round);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = leaving.cancelled() => break,
                _ = round.tick() => owner.round().await,
            }
        }
        owner.release_all(settings.round).await;
    });
    Ok(Ownership {
        owned: rx,
        changes,
        let_go,
        leave,
        task,
    })
}

struct Owner {
    leases: Leases,
    members: kv::Store,
    /// This gateway's key in the members bucket (its name, made a valid key).
    me: String,
    settings: OwnershipSettings,
    held: BTreeMap<u32, Lease>,
    /// Given back, not renewed, removed from the bucket once nothing of ours
    /// can act for it (see the module's doc).
    releasing: Vec<Releasing>,
    tx: watch::Sender<Owned>,
    changes: mpsc::UnboundedSender<Change>,
    metrics: ClusterMetrics,
    let_go: mpsc::UnboundedReceiver<(u32, u64)>,
}

/// A lease given back.
struct Releasing {
    lease: Lease,
    /// When its readers were told to stop.
    since: Instant,
    /// Whether the device path has let it go.
    let_go: bool,
}

impl Owner {
    async fn round(&mut self) {
        self.renew().await;
        self.release_lapsed().await;
        // Each step waits no longer than a lease request may: a members bucket
        // whose leader was on a lost node must not hold up the next round's
        // renewals until every lease has lapsed (seen: a listing that took
        // until the client's 10 s timeout lost a gateway all its partitions).
        let step = self.leases.ttl() / 8;
        if let Err(e) = within(step, self.members.put(&self.me, "".into())).await {
            tracing::warn!(error = %e, "cannot announce this gateway to the cluster");
        }
        let alive = match within(step, self.alive()).await {
            Ok(alive) => alive,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the cluster's gateways");
                self.publish();
                return;
            }
        };
        let share = self.settings.partitions.div_ceil(alive.len().max(1) as u32) as usize;
        if self.held.len() > share {
            self.give_back_one(&alive).await;
        } else if self.held.len() < share {
            self.take_free(&alive, share).await;
        }
        self.publish();
    }

    /// Renew every lease, all at once (one slow answer must not hold up the
    /// others); forget those lost or past their validity.
    async fn renew(&mut self) {
        let leases = &self.leases;
        let renewals = self.held.iter_mut().map(|(partition, lease)| async move {
            if !lease.is_valid() {
                // Lapsed here: not renewed, even if nobody took it (see above).
                tracing::warn!(partition, "lease lapsed before its renewal");
                return Some(*partition);
            }
            match leases.renew(lease).await {
                Ok(Renewal::Renewed) => None,
                Ok(Renewal::Lost) => Some(*partition),
                Err(e) if !lease.is_valid() => {
                    tracing::warn!(partition, error = %e, "lease expired unrenewed");
                    Some(*partition)
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "lease renewal failed; retrying");
                    None
                }
            }
        });
        let gone: Vec<u32> = futures_util::future::join_all(renewals)
            .await
            .into_iter()
            .flatten()
            .collect();
        for &partition in &gone {
            self.held.remove(&partition);
            self.metrics.leases_lost.increment(1);
            tracing::warn!(partition, "partition lost");
        }
        // Out of the published set before anyone hears it is gone.
        self.publish();
        for partition in gone {
            let _ = self.changes.send(Change::Gone(partition, None));
        }
    }

    async fn alive(&self) -> Result<Vec<String>, ClusterError> {
        let mut alive = keys_of(&self.members, "listing gateways").await?;
        if !alive.contains(&self.me) {
            alive.push(self.me.clone());
        }
        Ok(alive)
    }

    /// Release the held partition that ranks this gateway lowest.
    async fn give_back_one(&mut self, alive: &[String]) {
        let me = &self.me;
        let Some(&partition) = self.held.keys().min_by_key(|p| rank_of(**p, me, alive)) else {
            return;
        };
        let lease = self.held.remove(&partition).expect("held");
        self.metrics.partitions_given_back.increment(1);
        // Out of the published set at once; out of the bucket once let go.
        self.publish();
        let _ = self
            .changes
            .send(Change::Gone(partition, Some(lease.revision())));
        self.releasing.push(Releasing {
            lease,
            since: Instant::now(),
            let_go: false,
        });
    }

    /// Remove from the bucket the given-back leases nothing of ours can act
    /// for any more: let go by the device path with their unacknowledged
    /// messages due again, or past their deadline.
    async fn release_lapsed(&mut self) {
        while let Ok(word) = self.let_go.try_recv() {
            for r in self
                .releasing
                .iter_mut()
                .filter(|r| (r.lease.partition, r.lease.revision()) == word)
            {
                r.let_go = true;
            }
        }
        let due = self.settings.released_after;
        let (done, waiting) = std::mem::take(&mut self.releasing)
            .into_iter()
            .partition(|r| !r.lease.is_valid() || (r.let_go && r.since.elapsed() >= due));
        self.releasing = waiting;
        for Releasing { lease, .. } in done {
            let partition = lease.partition;
            if let Err(e) = self.leases.release(lease).await {
                tracing::warn!(partition, error = %e, "releasing a partition failed; it will expire");
            }
        }
    }

    /// Take free partitions, those ranking this gateway highest first. Only
    /// those the bucket lists as free are tried: a gateway below its share while
    /// the others are at theirs (16 over 3 is 6, 6, 4) asks once per round, not
    /// once per partition.
    async fn take_free(&mut self, alive: &[String], share: usize) {
        let me = &self.me;
        let taken = match self.leases.taken().await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the partitions' leases");
                return;
            }
        };
        let mut wanted: Vec<u32> = (0..self.settings.partitions)
            .filter(|p| !self.held.contains_key(p) && !taken.contains(p))
            .collect();
        wanted.sort_by_key(|p| std::cmp::Reverse(rank_of(*p, me, alive)));
        for partition in wanted {
            if self.held.len() >= share {
                break;
            }
            match self.leases.acquire(partition).await {
                Ok(Some(lease)) => {
                    tracing::info!(partition, "partition taken");
                    self.metrics.takeovers.increment(1);
                    // Announced before it is published (at the round's end).
                    let _ = self.changes.send(Change::Taken(partition, Instant::now()));
                    self.held.insert(partition, lease);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(partition, error = %e, "taking a partition failed");
                    return;
                }
            }
        }
    }

    fn publish(&self) {
        let owned: Owned = self
            .held
            .iter()
            .filter(|(_, l)| l.is_valid())
            .map(|(p, l)| (*p, l.valid_until()))
            .collect();
        self.metrics.partitions_owned.set(owned.len() as f64);
        self.tx.send_if_modified(|current| {
            let changed = *current != owned;
            *current = owned;
            changed
        });
    }

    /// A clean stop: give everything back, then release each lease as
    /// [`Owner::release_lapsed`] allows, looking every `round`.
    async fn release_all(&mut self, round: Duration) {
        let held = std::mem::take(&mut self.held);
        self.metrics
            .partitions_given_back
            .increment(held.len() as u64);
        self.publish();
        for (&partition, lease) in &held {
            let _ = self
                .changes
                .send(Change::Gone(partition, Some(lease.revision())));
        }
        let _ = self.members.purge(&self.me).await;
        let since = Instant::now();
        self.releasing
            .extend(held.into_values().map(|lease| Releasing {
                lease,
                since,
                let_go: false,
            }));
        while !self.releasing.is_empty() {
            tokio::time::sleep(round).await;
            self.release_lapsed().await;
        }
    }
}

/// `work`'s result, or a timeout once `limit` has passed.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// A member's key: its name with what a key cannot hold replaced.
fn member_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where `me` ranks among `alive` for `partition`: 0 is last. Rendezvous
/// hashing: every gateway computes the same order from the same names.
fn rank_of(partition: u32, me: &str, alive: &[String]) -> usize {
    let score = |name: &str| {
        super::fnv1a(
            super::FNV_OFFSET_BASIS,
            format!("{partition}/{name}").as_bytes(),
        )
    };
    let mine = score(me);
    alive.iter().filter(|other| score(other) < mine).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_ranks_partitions_the_same_way() {
        let alive: Vec<String> = ["gw-a", "gw-b", "gw-c"].map(String::from).to_vec();
        let mut firsts = BTreeMap::new();
        for p in 0..48 {
            let ranks: Vec<usize> = alive.iter().map(|g| rank_of(p, g, &alive)).collect();
            let mut sorted = ranks.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "p{p}: each rank once");
            let first = alive[ranks.iter().position(|r| *r == 2).unwrap()].clone();
            *firsts.entry(first).or_insert(0) += 1;
        }
        // Each gateway is first for some partitions (48 over 3: not all on one).
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn member_keys_are_valid_key_names() {
        assert_eq!(member_key("gw-1.north/x"), "gw-1_north_x");
    }
}
