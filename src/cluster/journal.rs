//! The engine's journal in cluster mode: the events stream.
//!
//! [`StreamJournal::commit`] runs on the engine's journal thread (never a
//! runtime worker) and returns once every event of the commit is stored in the
//! events stream, so the engine releases a device message's receipt, and the
//! intake acknowledges the message, only after its events are in the stream.
//!
//! Invariants:
//! - An event is published only while the lease of its chair's partition holds
//!   (checked before each attempt against the deadlines the ownership loop
//!   publishes). A failed attempt (no stream leader during a node's failover, a
//!   timeout) is retried with the same `Nats-Msg-Id` until the event is stored
//!   or the lease lapses: a retry whose first attempt was in fact stored is
//!   dropped by the stream, not stored twice.
//! - A commit with an event whose lease lapsed, or whose partition this gateway
//!   does not own, fails, and the journal withholds: the device messages behind
//!   the commit are refused ([`crate::engine::NOT_JOURNALED`]), not
//!   acknowledged, and come again (to the partition's next owner). A message of
//!   another partition in the same commit comes again to this gateway, whose
//!   engine takes it as a repeat. A message of the failed partition does not
//!   come back to an engine that still holds what it did: a lease that lapsed
//!   is never renewed, so the partition is gone from this gateway, and its
//!   chairs are dropped from the engine, before any of its messages can be
//!   read here again (the apply loop's hand-over, and [`super::ownership`]).
//! - The event id is the publishing engine's instance and the event's engine
//!   sequence: unique, and the same for every retry of one commit. A takeover
//!   that evaluates a device message again produces its events under the new
//!   owner's instance; deterministic ids across owners come with takeover replay.

use super::events::{self, Event};
use super::ownership::Owned;
use super::partition_of;
use crate::audit::Record;
use crate::engine::{Journal, JournalError};
use async_nats::jetstream::Context;
use std::time::Duration;
use tokio::sync::watch;

/// Pause between attempts at events the stream did not confirm.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The events stream as the engine's journal.
pub struct StreamJournal {
    js: Context,
    runtime: tokio::runtime::Handle,
    owned: watch::Receiver<Owned>,
    partitions: u32,
}

impl StreamJournal {
    /// Publish through `js`, on `runtime` (the journal thread is not one of its
    /// workers), under the leases in `owned` of `partitions` partitions.
    pub fn new(
        js: Context,
        runtime: tokio::runtime::Handle,
        owned: watch::Receiver<Owned>,
        partitions: u32,
    ) -> StreamJournal {
        StreamJournal {
            js,
            runtime,
            owned,
            partitions,
        }
    }
}

impl Journal for StreamJournal {
    fn commit(&mut self, records: &[Record<'_>]) -> Result<(), JournalError> {
        let ids: Vec<String> = records
            .iter()
            .map(|r| format!("{}-{}", r.instance, r.seq))
            .collect();
        let events: Vec<Event<'_>> = records
            .iter()
            .zip(&ids)
            .map(|(r, id)| Event {
                id,
                kind: r.kind,
                chair: r.chair,
                at_ms: r.at_ms,
                body: r.body,
            })
            .collect();
        self.runtime.block_on(self.publish_all(&events))
    }

    /// Dashboards read events from the stream, and a device message is
    /// acknowledged only once its events are there.
    fn withholds_on_failure(&self) -> bool {
        true
    }
}

impl StreamJournal {
    /// Publish `events` (every one in flight at once), retrying those not
    /// confirmed, until all are stored or the leases of those left have lapsed.
    async fn publish_all(&self, events: &[Event<'_>]) -> Result<(), JournalError> {
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut refused: Vec<String> = Vec::new();
        while !pending.is_empty() {
            let owned = self.owned.borrow().clone();
            let mut sent = Vec::with_capacity(pending.len());
            for i in pending.drain(..) {
                let event = &events[i];
                let partition = partition_of(event.chair, self.partitions);
                let Some(valid_until) = owned.get(&partition).copied() else {
                    refused.push(format!("{} (partition {partition} not owned)", event.chair));
                    continue;
                };
                if tokio::time::Instant::now() >= valid_until {
                    refused.push(format!(
                        "{} (partition {partition}'s lease lapsed)",
                        event.chair
                    ));
                    continue;
                }
                sent.push((i, events::send(&self.js, event, valid_until).await.ok()));
            }
            for (i, ack) in sent {
                // Stored now or before (a repeat): either way it is in the stream.
                let stored = match ack {
                    Some(ack) => events::stored(ack).await.is_ok(),
                    None => false,
                };
                if !stored {
                    pending.push(i);
                }
            }
            if !pending.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(JournalError(format!(
                "{} of {} events not in the events stream: {}",
                refused.len(),
                events.len(),
                refused.join(", ")
            )))
        }
    }
}
