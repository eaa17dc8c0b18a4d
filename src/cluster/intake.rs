//! Reading the partitions this gateway owns: one reader per owned partition
//! pulls device messages from the partition's consumer and hands them on, for
//! as long as the lease holds.
//!
//! Invariants:
//! - Nothing is handed on, and nothing acknowledged, once the lease under which
//!   it was read has reached its deadline: a gateway that stalled past its
//!   lease (SIGSTOP, a long pause) wakes, finds the deadline passed and drops
//!   what it holds, unacknowledged. NATS hands it out again once the
//!   consumer's `ack_wait` has passed since it was delivered.
//! - A partition's reader makes its first pull [`ReadSettings::first_pull_after`]
//!   after the partition was taken: by then every message the previous owner
//!   was handed and did not acknowledge is due again, and NATS hands those out
//!   before newer ones, so a chair's readings reach the new owner in order. (The
//!   previous owner was handed its last message before its lease's deadline,
//!   at most `ttl - margin` after its last renewal; the new owner takes the
//!   partition no sooner than `ttl` after it; the message is due `ack_wait`
//!   after it was handed out. So waiting `ack_wait - margin` suffices, and with
//!   `ack_wait` the margin, as [`ReadSettings::for_leases`] sets it, the new
//!   owner reads at once. A partition given back is released before its
//!   deadline only [`ReadSettings::due_after_stop`] after its readers were told
//!   to stop, when the same holds.) A reader started too early would apply a newer
//!   reading first and then drop the older one as late: a breach in between
//!   would never be alarmed.
//! - A message the owner holds for longer than `ack_wait` (its events waiting
//!   for the events stream while that stream's leader moves) is handed out
//!   again, to the owner itself: the engine takes the repeat as one, and answers
//!   it after the first copy's events are journaled, so neither copy is
//!   acknowledged before them.
//! - A partition's messages are handed on in the order NATS delivered them, with
//!   none missing: a delivery that did not reach the reader (its pull ended on
//!   the client's side first) shows as a gap in the consumer's delivery
//!   sequence. The reader then hands on nothing more until everything
//!   delivered is due again ([`ReadSettings::due_after_stop`]) and reads on
//!   from there: NATS hands the missed message out again before the later ones,
//!   which the engine would otherwise have applied first, making the missed
//!   reading late and so ignored.
//! - A message is acknowledged only by whoever finished with it
//!   ([`DeviceMessage::ack`]); a message handed on and never acknowledged is
//!   delivered again, so the receiver must take a repeat (the engine does: a
//!   reading with a `seq` and `ts` it has seen is dropped).

use super::ownership::Owned;
use super::{parse_reading_subject, streams, ClusterError};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use metrics::Counter;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most messages one pull asks for.
const BATCH: usize = 256;
/// Longest a pull waits for messages before the lease is looked at again.
const PULL_WAIT: Duration = Duration::from_millis(500);

/// A device message from an owned partition.
pub struct DeviceMessage {
    pub partition: u32,
    /// `{site}/{chair}`.
    pub chair: String,
    /// The topic's last level: `vitals`, `session` or `status`.
    pub kind: String,
    pub payload: bytes::Bytes,
    /// The deadline of the lease it was read under.
    pub valid_until: Instant,
    /// Its sequence in the MQTT listener's stream (0 if NATS did not say).
    pub stream_seq: u64,
    message: jetstream::Message,
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("partition {0}'s lease lapsed before the acknowledgement: the next owner gets the message again")]
    Lapsed(u32),
    #[error("acknowledging a device message: {0}")]
    Nats(String),
}

impl DeviceMessage {
    /// Tell NATS the message is done with (its effects are journaled), unless
    /// the lease it was read under has lapsed.
    pub async fn ack(self) -> Result<(), AckError> {
        if Instant::now() >= self.valid_until {
            return Err(AckError::Lapsed(self.partition));
        }
        self.message
            .ack()
            .await
            .map_err(|e| AckError::Nats(e.to_string()))
    }
}

/// How partitions are read.
#[derive(Debug, Clone, Copy)]
pub struct ReadSettings {
    /// Copies of each partition consumer's state.
    pub replicas: usize,
    /// How long a message handed out may go unacknowledged before NATS hands
    /// it out again.
    pub ack_wait: Duration,
    /// How long after a partition is taken its reader first pulls: at least
    /// `ack_wait - margin` of the lease times (see the module's invariants).
    pub first_pull_after: Duration,
}

impl ReadSettings {
    /// How long after a partition's readers are told to stop every message
    /// handed out to them is due again: a pull already asked for delivers
    /// until it expires ([`PULL_WAIT`]), then `ack_wait` and the server's
    /// timer.
    pub fn due_after_stop(&self) -> Duration {
        PULL_WAIT + self.ack_wait + REDELIVERY_SLACK
    }

    /// The settings for leases of `times`: `ack_wait` the lease's margin, so
    /// that the previous owner's messages are due again when the partition can
    /// be taken and its new owner reads at once (the first pull after
    /// [`REDELIVERY_SLACK`]): a takeover costs the lease time, not twice it.
    pub fn for_leases(times: super::lease::LeaseTimes, replicas: usize) -> ReadSettings {
        let ack_wait = times.margin;
        ReadSettings {
            replicas,
            ack_wait,
            first_pull_after: ack_wait.saturating_sub(times.margin) + REDELIVERY_SLACK,
        }
    }
}

/// The server notices an overdue acknowledgement on a timer of its own: a
/// little more than the arithmetic says.
pub const REDELIVERY_SLACK: Duration = Duration::from_millis(250);

/// Start reading: readers start and stop as `owned` changes, until `stop`.
/// Messages go to `out`, whose capacity bounds what is read ahead.
pub fn start(
    js: Context,
    owned: watch::Receiver<Owned>,
    settings: ReadSettings,
    out: mpsc::Sender<DeviceMessage>,
    missed: Counter,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut owned = owned;
        let mut readers: BTreeMap<u32, (CancellationToken, tokio::task::JoinHandle<()>)> =
            BTreeMap::new();
        loop {
            let now_owned: Vec<u32> = owned.borrow_and_update().keys().copied().collect();
            // A reader ends by itself when its lease lapses; the partition may
            // be owned again since (a late renewal landed): started afresh.
            readers.retain(|p, (token, reader)| {
                let keep = now_owned.contains(p) && !reader.is_finished();
                if !keep {
                    token.cancel();
                }
                keep
            });
            for p in now_owned {
                if readers.contains_key(&p) {
                    continue;
                }
                let token = stop.child_token();
                let reader = Reader {
                    js: js.clone(),
                    partition: p,
                    owned: owned.clone(),
                    out: out.clone(),
                    missed: missed.clone(),
                };
                let task = tokio::spawn(reader.run(settings, token.clone()));
                readers.insert(p, (token, task));
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = owned.changed() => if changed.is_err() { break },
            }
        }
        for (token, _) in readers.values() {
            token.cancel();
        }
    })
}

/// The consumer's delivery sequence as one reader sees it: each delivery
/// NATS makes to the partition's consumer, redeliveries included, takes the
/// next number, and only the partition's owner pulls.
#[derive(Debug, Default)]
struct Deliveries {
    last: Option<u64>,
}

impl Deliveries {
    /// Note `delivery`; `Err((last, delivery))` if a delivery in between
    /// never arrived (or the sequence went back: the consumer's state moved
    /// to a node that had not seen the latest deliveries). A delivery NATS did
    /// not number (0) breaks the chain: whatever comes next starts it again.
    fn next(&mut self, delivery: u64) -> Result<(), (u64, u64)> {
        let last = std::mem::replace(&mut self.last, (delivery > 0).then_some(delivery));
        match last {
            Some(last) if delivery > 0 && delivery != last + 1 => {
                self.last = None;
                Err((last, delivery))
            }
            _ => Ok(()),
        }
    }
}

struct Reader {
    js: Context,
    partition: u32,
    owned: watch::Receiver<Owned>,
    out: mpsc::Sender<DeviceMessage>,
    /// Counts the gaps in the deliveries (see the module's invariants).
    missed: Counter,
}

impl Reader {
    /// The deadline of this partition's lease as last published, if owned.
    fn valid_until(&self) -> Option<Instant> {
        self.owned
            .borrow()
            .get(&self.partition)
            .copied()
            .filter(|until| Instant::now() < *until)
    }

    async fn run(self, settings: ReadSettings, stop: CancellationToken) {
        let p = self.partition;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.first_pull_after) => {}
        }
        let consumer = loop {
            match streams::partition_consumer(&self.js, p, settings.replicas, settings.ack_wait)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "partition consumer unavailable; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(PULL_WAIT) => {}
                    }
                }
            }
        };
        let mut deliveries = Deliveries::default();
        while !stop.is_cancelled() {
            let Some(until) = self.valid_until() else {
                return;
            };
            let wait = PULL_WAIT.min(until.saturating_duration_since(Instant::now()));
            let batch = consumer
                .fetch()
                .max_messages(BATCH)
                .expires(wait)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "pulling device messages failed");
                    tokio::time::sleep(PULL_WAIT).await;
                    continue;
                }
            };
            let mut missed = None;
            while let Some(next) = batch.next().await {
                let Ok(message) = next else { break };
                let delivery = message.info().map_or(0, |i| i.consumer_sequence);
                if let Err(gap) = deliveries.next(delivery) {
                    missed = Some(gap);
                    break;
                }
                // Checked per message: a stall between two of them may have
                // outlasted the lease. What is dropped here is delivered again.
                let Some(valid_until) = self.valid_until() else {
                    return;
                };
                if let Err(e) = self.hand_on(message, valid_until).await {
                    tracing::warn!(partition = p, error = %e, "device message dropped");
                }
            }
            if let Some((after, came)) = missed {
                // The pull is dropped with what it still brings: all of it,
                // and the missed delivery, is handed out again, in order.
                drop(batch);
                self.missed.increment(1);
                tracing::warn!(
                    partition = p,
                    after,
                    came,
                    "a device message delivered did not arrive: reading again once it is due"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(settings.due_after_stop()) => {}
                }
                deliveries = Deliveries::default();
            }
        }
    }

    async fn hand_on(
        &self,
        message: jetstream::Message,
        valid_until: Instant,
    ) -> Result<(), ClusterError> {
        let Some((partition, chair, kind)) = parse_reading_subject(&message.subject) else {
            // Not a device message of ours (the filter makes this impossible):
            // acknowledged, so that it does not come back forever.
            let _ = message.ack().await;
            return Err(ClusterError::js(
                "reading a partition",
                format!("unexpected subject {}", message.subject),
            ));
        };
        let kind = kind.to_string();
        let payload = message.payload.clone();
        let stream_seq = message.info().map_or(0, |i| i.stream_sequence);
        let item = DeviceMessage {
            partition,
            chair,
            kind,
            payload,
            valid_until,
            stream_seq,
            message,
        };
        // A full queue must not hold a message past the lease: then it is
        // dropped (and delivered again to whoever owns the partition).
        tokio::select! {
            sent = self.out.send(item) => sent.map_err(|_| {
                ClusterError::js("reading a partition", "nobody takes device messages")
            }),
            _ = tokio::time::sleep_until(valid_until) => Err(ClusterError::js(
                "reading a partition",
                "the lease lapsed while the message waited for the engine",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Deliveries;

    #[test]
    fn deliveries_in_sequence_pass_and_a_gap_or_a_step_back_is_caught() {
        let mut d = Deliveries::default();
        assert_eq!(d.next(7), Ok(()), "the first starts the chain");
        assert_eq!(d.next(8), Ok(()));
        assert_eq!(d.next(10), Err((8, 10)), "9 never arrived");
        // After a gap the chain starts again (the reader waits, then pulls afresh).
        assert_eq!(d.next(14), Ok(()));
        assert_eq!(d.next(15), Ok(()));
        assert_eq!(d.next(15), Err((15, 15)), "the same delivery twice");
        assert_eq!(d.next(3), Ok(()));
        assert_eq!(d.next(2), Err((3, 2)));
        assert_eq!(d.next(0), Ok(()), "unnumbered");
        assert_eq!(d.next(9), Ok(()), "an unnumbered delivery breaks the chain");
    }
}
