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
//! - An event's id ([`event_id`]) is the same for every retry of one commit. An
//!   alarm event's id is made of what it says (chair, alarm id, state,
//!   escalation, reminder, time, rule, priority; an acknowledgement, made by a
//!   nurse, also its gateway time, as its `ts` is the alarm's raising time):
//!   with alarm ids derived from the
//!   raising reading ([`crate::core::alarm_id`]), a partition's next owner that
//!   evaluates a device message again, from the same state, produces the same
//!   ids, and the stream drops the repeats. Session and limit events carry the
//!   publishing engine's instance and sequence: a session message evaluated
//!   again changes nothing (the restored session holds its time), and commands
//!   are taken once.

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
        let ids: Vec<String> = records.iter().map(event_id).collect();
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
    ///
    /// An event already sent once whose partition has since been given back
    /// is sent again (under its id: a repeat is dropped) until confirmed or
    /// that lease's deadline passes: a commit ends with each event stored or
    /// never to be, so that the partition's release after the engine's flush
    /// (`ownership`) cannot be followed by one of its events landing.
    async fn publish_all(&self, events: &[Event<'_>]) -> Result<(), JournalError> {
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut refused: Vec<String> = Vec::new();
        // The deadline each event was first sent under.
        let mut sent_under: Vec<Option<tokio::time::Instant>> = vec![None; events.len()];
        while !pending.is_empty() {
            let owned = self.owned.borrow().clone();
            let mut sent = Vec::with_capacity(pending.len());
            for i in pending.drain(..) {
                let event = &events[i];
                let partition = partition_of(event.chair, self.partitions);
                let Some(valid_until) = owned.get(&partition).copied().or(sent_under[i]) else {
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
                sent_under[i].get_or_insert(valid_until);
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

/// The `Nats-Msg-Id` of `record` (see the module's invariants).
pub fn event_id(record: &Record<'_>) -> String {
    /// What tells one alarm event from another, whoever made it.
    #[derive(serde::Deserialize)]
    struct AlarmEvent<'a> {
        id: u64,
        state: &'a str,
        escalation_level: u8,
        reminder: bool,
        ts: u64,
        // Owned: a rule id with an escape in its JSON text cannot be borrowed.
        rule: String,
        priority: &'a str,
        received_at: u64,
        #[serde(default)]
        updated: bool,
    }
    if record.kind == "alarm" {
        if let Ok(a) = serde_json::from_str::<AlarmEvent<'_>>(record.body) {
            let id = format!(
                "alarm/{}/{}/{}/{}/{}/{}/{}/{}",
                record.chair,
                a.id,
                a.state,
                a.escalation_level,
                u8::from(a.reminder),
                a.ts,
                a.rule,
                a.priority
            );
            // An acknowledgement is made by a nurse, not evaluated from a
            // reading: its `ts` is the alarm's raising time, the same for a second
            // acknowledgement (after the alarm went unacknowledged again). Its
            // gateway time tells them apart; retries of one commit carry the same
            // body. (A reminder's `ts` is its own gateway time already.)
            return if a.state == "acknowledged" && !a.updated && !a.reminder {
                format!("{id}/at/{}", a.received_at)
            } else {
                id
            };
        }
        tracing::error!(chair = record.chair, "an alarm event without its fields");
    }
    format!("{}-{}", record.instance, record.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alarm event's id: `body` holds `state` and what else it says
    /// (`reminder` is false unless it says otherwise).
    fn alarm(instance: &'static str, seq: u64, received_at: u64, body: &str) -> String {
        let reminder = if body.contains(r#""reminder""#) {
            ""
        } else {
            r#""reminder":false,"#
        };
        let body = format!(
            r#"{{"type":"alarm","seq":{seq},"id":17,"chair":"north/7","rule":"spo2_low","priority":"high","escalation_level":0,{reminder}"ts":1000,"received_at":{received_at},{body}}}"#
        );
        event_id(&Record {
            seq,
            instance,
            kind: "alarm",
            chair: "north/7",
            at_ms: received_at,
            body: &body,
        })
    }

    #[test]
    fn an_alarm_event_is_named_by_what_it_says_not_by_who_made_it() {
        let raised = alarm("aaaa", 5, 1_003, r#""state":"raised""#);
        assert_eq!(raised, "alarm/north/7/17/raised/0/0/1000/spo2_low/high");
        assert_eq!(raised, alarm("bbbb", 900, 2_000, r#""state":"raised""#));
        assert_ne!(raised, alarm("aaaa", 5, 1_003, r#""state":"cleared""#));
    }

    #[test]
    fn each_acknowledgement_of_an_alarm_is_its_own_event() {
        let acked = |seq, at, extra: &str| {
            alarm(
                "aaaa",
                seq,
                at,
                &format!(r#""state":"acknowledged","acknowledged_by":"kim"{extra}"#),
            )
        };
        // Acknowledged, unacknowledged again (its priority rose and fell), and
        // acknowledged again at the same level: two acknowledgements.
        assert_ne!(acked(5, 2_000, ""), acked(9, 9_000, ""));
        // A retry of one commit is the same event.
        assert_eq!(acked(5, 2_000, ""), acked(5, 2_000, ""));
        assert_eq!(
            acked(5, 2_000, ""),
            "alarm/north/7/17/acknowledged/0/0/1000/spo2_low/high/at/2000"
        );
        // A reading's update of an acknowledged alarm is named by the reading, as
        // a raise is, whoever evaluates it.
        assert_eq!(
            acked(8, 3_000, r#","updated":true"#),
            alarm(
                "bbbb",
                40,
                4_500,
                r#""state":"acknowledged","acknowledged_by":"kim","updated":true"#
            )
        );
    }

    #[test]
    fn other_events_are_named_by_their_engine() {
        let record = Record {
            seq: 5,
            instance: "aaaa",
            kind: "session",
            chair: "north/7",
            at_ms: 1,
            body: r#"{"type":"session","seq":5}"#,
        };
        assert_eq!(event_id(&record), "aaaa-5");
    }
}
