//! Partition leases on a replicated JetStream key-value bucket.
//!
//! One key per partition (`p{n}`), its value the holder's name. The bucket's
//! `max_age` is the lease time: an entry nobody rewrites expires, and only then
//! can another gateway create the key. Creating is a write expecting no entry;
//! renewing is a write expecting the revision we hold. Both are decided by the
//! stream's leader, so two gateways never hold one partition in the bucket:
//! from NATS 2.10 on. 2.9.10 checks the expected revision before replicating,
//! not in order with it, and lets two concurrent writes both succeed
//! (nats-server#4320; `deploy/nats/README.md`).
//!
//! The holder's own clock decides when it stops acting: a lease is valid until
//! `sent + ttl - margin`, `sent` being when the write that took or renewed it was
//! *sent*. The entry was stored after that, so it expires (and can be taken)
//! no earlier than `sent + ttl`: the holder stops at least `margin` before. The
//! margin covers what would make the entry expire early or the holder stop
//! late: NATS servers' wall clocks apart (expiry is judged by the clock of
//! whichever server leads the bucket then; keep them in NTP sync), two
//! machines' clock rates over one lease time, and the time between checking
//! validity and the effect of the work it allows landing. A stalled process (SIGSTOP, a long pause) wakes with its
//! monotonic clock past the deadline, so its next check says no.

use super::{expiring_bucket, keys_of, ClusterError, LEASE_BUCKET};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::Context;
use std::time::Duration;
use tokio::time::Instant;

/// How leases are timed.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    /// How long an entry lives after its last write (the bucket's `max_age`).
    pub ttl: Duration,
    /// How much earlier than the entry's earliest expiry the holder stops.
    pub margin: Duration,
}

/// A partition this gateway holds, until [`Lease::valid_until`].
#[derive(Debug)]
pub struct Lease {
    pub partition: u32,
    revision: u64,
    valid_until: Instant,
}

impl Lease {
    /// The key's revision as this holder last wrote it: names this lease (and
    /// its latest renewal) uniquely in the bucket.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The instant from which the holder must no longer act for the partition.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Held until the new [`Lease::valid_until`].
    Renewed,
    /// Someone else holds it (it expired and was taken, or was released).
    Lost,
}

/// This gateway's handle on the lease bucket.
pub struct Leases {
    kv: kv::Store,
    holder: String,
    times: LeaseTimes,
}

impl Leases {
    /// Open the bucket, creating it (`replicas` copies) if missing. An existing
    /// bucket with another lease time is refused: two gateways timing the same
    /// leases differently could both act for a partition.
    pub async fn open(
        js: &Context,
        holder: &str,
        times: LeaseTimes,
        replicas: usize,
    ) -> Result<Leases, ClusterError> {
        assert!(
            times.margin < times.ttl,
            "a lease's margin is below its ttl"
        );
        // A renewal that waits longer than this is given up and tried again:
        // several tries fit in a lease's margin-free span.
        let mut js = js.clone();
        js.set_timeout(times.ttl / 8);
        let kv = expiring_bucket(
            &js,
            LEASE_BUCKET,
            "vitalgate: which gateway owns each partition",
            times.ttl,
            replicas,
        )
        .await?;
        let found = kv
            .status()
            .await
            .map_err(|e| ClusterError::js("reading the lease bucket", e))?
            .max_age();
        if found != times.ttl {
            return Err(ClusterError::LeaseTime {
                bucket: LEASE_BUCKET,
                found,
                configured: times.ttl,
            });
        }
        Ok(Leases {
            kv,
            holder: holder.to_string(),
            times,
        })
    }

    /// The lease time every gateway of the cluster uses.
    pub fn ttl(&self) -> Duration {
        self.times.ttl
    }

    fn valid_from(&self, sent: Instant) -> Instant {
        sent + self.times.ttl - self.times.margin
    }

    /// Take `partition` if nobody holds it; `None` if somebody does.
    pub async fn acquire(&self, partition: u32) -> Result<Option<Lease>, ClusterError> {
        let sent = Instant::now();
        match self
            .kv
            .create(key(partition), self.holder.clone().into())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                partition,
                revision,
                valid_until: self.valid_from(sent),
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(ClusterError::js("taking a lease", e)),
        }
    }

    /// Extend `lease` by a lease time from now. An error (no answer, a leader
    /// election) leaves the lease as it was: try again while it is still valid.
    pub async fn renew(&self, lease: &mut Lease) -> Result<Renewal, ClusterError> {
        let sent = Instant::now();
        let name = key(lease.partition);
        match self
            .kv
            .update(&name, self.holder.clone().into(), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                lease.valid_until = self.valid_from(sent);
                Ok(Renewal::Renewed)
            }
            // Someone else wrote the key, or a renewal of ours whose answer was
            // lost did land. Either way it is given up: reading the key back to
            // tell the two apart could read a replica that lags (a direct get),
            // see our own older entry and keep a lease another gateway holds.
            // A lost answer costs a partition one lease time, never safety.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Renewal::Lost),
            Err(e) => Err(ClusterError::js("renewing a lease", e)),
        }
    }

    /// Give `lease` up at once (a clean shutdown), so that another gateway need
    /// not wait for it to expire. Only our own revision is removed.
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        self.kv
            .purge_expect_revision(key(lease.partition), Some(lease.revision))
            .await
            .map_err(|e| ClusterError::js("releasing a lease", e))
    }

    /// The partitions somebody holds now, as the bucket says: a hint of which
    /// are free (a replica behind may leave one out); taking one is checked
    /// against its revision.
    pub async fn taken(&self) -> Result<std::collections::BTreeSet<u32>, ClusterError> {
        Ok(keys_of(&self.kv, "listing leases")
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix('p')?.parse().ok())
            .collect())
    }

    /// Who holds `partition` now, as the bucket says.
    pub async fn holder(&self, partition: u32) -> Result<Option<String>, ClusterError> {
        match self.kv.entry(key(partition)).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                Ok(Some(String::from_utf8_lossy(&entry.value).into_owned()))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(ClusterError::js("reading a lease", e)),
        }
    }
}

fn key(partition: u32) -> String {
    format!("p{partition}")
}
