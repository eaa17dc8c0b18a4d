//! Chairs' snapshots in JetStream: what a partition's next owner takes each
//! chair back from, so that it carries on where the previous owner was (a
//! condition's delay under way, a baseline being collected, trends, the
//! device's clock), not from the chair's session and open alarms alone.
//!
//! A snapshot is one chair's whole state ([`ChairCopy`]) with `through`, the
//! sequence in the MQTT listener's stream of the latest device message of
//! the chair it reflects. It lives in a replicated key-value bucket under
//! `p{partition}.{site}.{chair}`.
//!
//! Invariants (with the keeper, which writes them):
//! - A device message is acknowledged only once a snapshot reflecting it is
//!   stored: the messages after a chair's snapshot are exactly those NATS
//!   still holds for it, and a new owner is handed them again, first (see
//!   [`super::intake`]). Taken back from the snapshot and handed those
//!   messages through the same engine on device time, the chair is where the
//!   previous owner left it; a message at or before `through` is done with.
//! - A snapshot is stored only after every event its state assumes is in the
//!   events stream (the engine answers [`crate::engine::Command::Copies`]
//!   after their commit), and only while its partition's lease holds.
//! - A write expects the revision this gateway last read or wrote: one that
//!   finds another means a snapshot written late by a gateway that held the
//!   partition before, and is written over (the lease holder's state follows
//!   from everything that gateway journaled). A gateway that stalls between
//!   its lease check and its write can still land one snapshot over the
//!   holder's; it stands until the holder's next write of that chair, and is
//!   itself consistent with the events stream.

use super::{entries_of, expiring_bucket, partition_of, ClusterError};
use crate::engine::ChairCopy;
use async_nats::jetstream::kv::{CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::Context;
use metrics::Counter;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The key-value bucket of chairs' snapshots.
pub const SNAPSHOT_BUCKET: &str = "vitalgate_chairs";

/// How long a snapshot nobody rewrites is kept. A chair in session is
/// rewritten with every reading round; one silent this long starts, at its
/// next owner, from its session and open alarms in the events stream.
const SNAPSHOT_TTL: Duration = Duration::from_secs(24 * 3600);

/// One chair's snapshot as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Sequence, in the MQTT listener's stream, of the latest device message
    /// of the chair the state reflects (0: none).
    pub through: u64,
    pub copy: ChairCopy,
}

/// Why a snapshot was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("partition {0}'s lease lapsed before the snapshot was written")]
    Lapsed(u32),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The key of `chair` (`{site}/{chair}`) in partition `partition`.
pub fn key(partition: u32, chair: &str) -> String {
    let (site, chair) = chair.split_once('/').unwrap_or((chair, ""));
    format!("p{partition}.{site}.{chair}")
}

/// What this gateway knows of a chair's stored snapshot.
#[derive(Debug, Clone, Copy)]
struct Known {
    revision: u64,
    through: u64,
}

/// The snapshot bucket, with what this gateway last read or wrote of each
/// chair of the partitions it holds.
pub struct Snapshots {
    kv: Store,
    partitions: u32,
    /// By chair key (`{site}/{chair}`).
    known: Mutex<HashMap<String, Known>>,
    /// Counts snapshots found that could not be read.
    unreadable: Counter,
}

impl Snapshots {
    /// Open the bucket, made if missing (`replicas` copies); snapshots found
    /// that cannot be read are counted in `unreadable`.
    pub async fn open(
        js: &Context,
        replicas: usize,
        partitions: u32,
        unreadable: Counter,
    ) -> Result<Snapshots, ClusterError> {
        let kv = expiring_bucket(
            js,
            SNAPSHOT_BUCKET,
            "vitalgate: each chair's state and the device messages it reflects",
            SNAPSHOT_TTL,
            replicas,
        )
        .await?;
        Ok(Snapshots {
            kv,
            partitions,
            known: Mutex::new(HashMap::new()),
            unreadable,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The snapshots of `partition`'s chairs (a partition taken), remembered
    /// as this gateway's starting point for them.
    pub async fn load(&self, partition: u32) -> Result<Vec<Snapshot>, ClusterError> {
        let entries = entries_of(
            &self.kv,
            &format!("p{partition}.>"),
            "reading chairs' snapshots",
        )
        .await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut known = self.known.lock().expect("snapshot revisions");
        for entry in entries {
            let decoded = serde_json::from_slice::<Snapshot>(&entry.value)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    // Written when the cluster had another number of partitions.
                    let p = partition_of(&s.copy.chair, self.partitions);
                    if p == partition {
                        Ok(s)
                    } else {
                        Err(format!("{} is in partition {p} now", s.copy.chair))
                    }
                });
            match decoded {
                Ok(snapshot) => {
                    known.insert(
                        snapshot.copy.chair.clone(),
                        Known {
                            revision: entry.revision,
                            through: snapshot.through,
                        },
                    );
                    out.push(snapshot);
                }
                // Written by another version of the gateway: the chair starts
                // from its session and open alarms; the next write finds the
                // entry there and replaces it.
                Err(e) => {
                    self.unreadable.increment(1);
                    tracing::warn!(key = %entry.key, error = %e, "a chair's snapshot not read")
                }
            }
        }
        Ok(out)
    }

    /// Forget what is known of the chairs of the partitions `which` names
    /// (given back: their next owner writes them).
    pub fn forget(&self, which: impl Fn(u32) -> bool) {
        let partitions = self.partitions;
        self.known
            .lock()
            .expect("snapshot revisions")
            .retain(|chair, _| !which(partition_of(chair, partitions)));
    }

    /// Whether a device message of `chair` at stream sequence `seq` is
    /// reflected in the chair's stored snapshot (and so done with).
    pub fn reflects(&self, chair: &str, seq: u64) -> bool {
        self.known
            .lock()
            .expect("snapshot revisions")
            .get(chair)
            .is_some_and(|k| seq <= k.through)
    }

    /// The `through` of `chair`'s stored snapshot (0 if none).
    pub fn through(&self, chair: &str) -> u64 {
        self.known
            .lock()
            .expect("snapshot revisions")
            .get(chair)
            .map_or(0, |k| k.through)
    }

    /// Store `snapshot` for its chair, while the partition's lease holds
    /// (`valid_until`).
    pub async fn write(&self, snapshot: &Snapshot, valid_until: Instant) -> Result<(), WriteError> {
        let chair = &snapshot.copy.chair;
        let partition = partition_of(chair, self.partitions);
        let key = key(partition, chair);
        let value: bytes::Bytes = serde_json::to_vec(snapshot)
            .map_err(|e| ClusterError::js("encoding a chair's snapshot", e))?
            .into();
        let lapsed = || Instant::now() >= valid_until;
        if lapsed() {
            return Err(WriteError::Lapsed(partition));
        }
        let known = self
            .known
            .lock()
            .expect("snapshot revisions")
            .get(chair)
            .map(|k| k.revision);
        let first = match known {
            Some(revision) => self
                .kv
                .update(&key, value.clone(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => self
                .kv
                .create(&key, value.clone())
                .await
                .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())),
        };
        let revision = match first {
            Ok(revision) => revision,
            Err((true, _)) => {
                // Written by a gateway that held the partition before.
                let current = self
                    .kv
                    .entry(&key)
                    .await
                    .map_err(|e| ClusterError::js("reading a chair's snapshot", e))?
                    .map_or(0, |entry| entry.revision);
                if lapsed() {
                    return Err(WriteError::Lapsed(partition));
                }
                self.kv
                    .update(&key, value, current)
                    .await
                    .map_err(|e| ClusterError::js("writing a chair's snapshot", e))?
            }
            Err((false, e)) => return Err(ClusterError::js("writing a chair's snapshot", e).into()),
        };
        self.known.lock().expect("snapshot revisions").insert(
            chair.clone(),
            Known {
                revision,
                through: snapshot.through,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_partition_site_and_chair() {
        assert_eq!(key(7, "north/chair-3"), "p7.north.chair-3");
    }
}
