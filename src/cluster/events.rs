//! The cluster's journal of events: alarm, session and limit frames in one
//! replicated stream, whose sequence numbers them for every dashboard.
//!
//! An event is published with an id (`Nats-Msg-Id`): the same id published
//! again within [`DUPLICATE_WINDOW`] is dropped by the stream (a retry, and,
//! once ids are deterministic, a takeover evaluating a device message again:
//! the engine's journal in cluster mode says what its ids are). A publisher holds
//! the lease of the event's partition: nothing is published once that lease's
//! deadline has passed.

use super::ClusterError;
use crate::core::chair_key::site_of;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use std::time::Duration;
use tokio::time::Instant;

pub const EVENTS_STREAM: &str = "VITALGATE_EVENTS";
/// Events are published on `vitalgate.events.{site}`: a dashboard limited to
/// some sites reads only theirs.
pub const EVENTS_PREFIX: &str = "vitalgate.events";
/// How long the stream remembers an event id. Longer than a takeover (a lease
/// time, then replaying the messages since the last snapshot) can take.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Headers carrying what the audit trail keeps. The id travels in a header of
/// its own: the stream keeps `Nats-Msg-Id` for deduplication only and does not
/// deliver it.
pub const ID_HEADER: &str = "Vitalgate-Event-Id";
pub const KIND_HEADER: &str = "Vitalgate-Kind";
pub const CHAIR_HEADER: &str = "Vitalgate-Chair";
pub const AT_HEADER: &str = "Vitalgate-At-Ms";

/// One event to journal.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The same for every publication of one event.
    pub id: &'a str,
    /// "alarm" | "session" | "limit".
    pub kind: &'a str,
    /// `{site}/{chair}`.
    pub chair: &'a str,
    /// Gateway wall-clock ms since the epoch of the event.
    pub at_ms: u64,
    /// The frame's JSON text.
    pub body: &'a str,
}

/// The events stream, created if missing (`replicas` copies, on file).
pub async fn stream(js: &Context, replicas: usize) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: EVENTS_STREAM.to_string(),
        description: Some("vitalgate: alarm, session and limit events".into()),
        subjects: vec![format!("{EVENTS_PREFIX}.>")],
        retention: RetentionPolicy::Limits,
        // Events are never refused: the oldest go when limits are reached.
        discard: DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::js("creating the events stream", e))
}

/// What publishing an event came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored with this sequence number.
    Stored(u64),
    /// Already in the stream (same id), with this sequence number.
    Repeat(u64),
}

/// Publish `event` and wait until the stream has stored it, unless the lease
/// under which it was made (`valid_until`) has lapsed.
pub async fn publish(
    js: &Context,
    event: &Event<'_>,
    valid_until: Instant,
) -> Result<Published, ClusterError> {
    stored(send(js, event, valid_until).await?).await
}

/// Publish `event` without waiting for the stream (unless the lease under which
/// it was made, `valid_until`, has lapsed): many can be in flight at once, each
/// confirmed by [`stored`].
pub async fn send(
    js: &Context,
    event: &Event<'_>,
    valid_until: Instant,
) -> Result<PublishAckFuture, ClusterError> {
    if Instant::now() >= valid_until {
        return Err(ClusterError::js(
            "publishing an event",
            "the partition's lease lapsed",
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id);
    headers.insert(ID_HEADER, event.id);
    headers.insert(KIND_HEADER, event.kind);
    headers.insert(CHAIR_HEADER, event.chair);
    headers.insert(AT_HEADER, event.at_ms.to_string().as_str());
    let subject = format!("{EVENTS_PREFIX}.{}", site_of(event.chair));
    js.publish_with_headers(subject, headers, event.body.to_string().into())
        .await
        .map_err(|e| ClusterError::js("publishing an event", e))
}

/// Wait for the stream to confirm a [`send`].
pub async fn stored(ack: PublishAckFuture) -> Result<Published, ClusterError> {
    let ack = ack
        .await
        .map_err(|e| ClusterError::js("storing an event", e))?;
    Ok(if ack.duplicate {
        Published::Repeat(ack.sequence)
    } else {
        Published::Stored(ack.sequence)
    })
}
