//! A dashboard's events in cluster mode, read from the events stream: every
//! alarm and session event of its sites after `since`, in the stream's order,
//! each frame's `seq` the stream's sequence number.
//!
//! Invariants:
//! - One ephemeral pull consumer per dashboard connection, starting right after
//!   the last event handed on (`since` at first). Each event is handed on once,
//!   in order, whichever gateway made it and whichever serves the dashboard: a
//!   message whose consumer sequence is not the next one (the consumer was
//!   lost and remade by the server, a message went missing) ends that consumer
//!   and a new one starts after the last event handed on.
//! - A consumer whose node is lost goes quiet: the server's idle heartbeat every
//!   [`HEARTBEAT`] stops, the read fails after two, and a new consumer is made
//!   on a surviving node. A new consumer, the first one too, is asked for
//!   again while unanswered ([`ask_wait`]: 2 s, then half as long again after
//!   each unanswered ask, up to 8 s, below the client's 10 s request timeout): with a node of
//!   three lost, NATS placed about a third of new one-replica consumers on the
//!   lost node (2.10.26: 11 of 30, and 3 of 8 at each check from 16 to 82 s
//!   after the kill; 2.12.8: 16 of 30), and such a request is never answered
//!   (a restarted gateway's start-up once waited 27 s on the client's 10 s
//!   request timeout). Events flowed again 2 to 12 s after the
//!   consumer's node was killed in 8 runs (tests/cluster_journal.rs);
//!   async-nats's own ordered consumer remakes its consumer after two missed
//!   15 s heartbeats, and in one run delivered nothing within 30 s.
//! - `seq` is the stream's sequence: the same event has the same `seq` on every
//!   gateway and after every restart, so a dashboard that reconnects to another
//!   gateway with `since` misses nothing. It increases across the whole
//!   cluster; a dashboard limited to some sites sees gaps where other sites'
//!   events are.
//! - A single-site scope is filtered by NATS (`vitalgate.events.{site}`); any
//!   other scope reads every site's subject and skips the others here, because
//!   several filter subjects per consumer need NATS 2.10's API.

use super::events::{CHAIR_HEADER, EVENTS_PREFIX, EVENTS_STREAM, KIND_HEADER};
use super::ClusterError;
use crate::access::SiteScope;
use crate::protocol::Frame;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// One event as a dashboard receives it.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// The stream's sequence number: the frame's `seq`.
    pub seq: u64,
    /// "alarm" | "session".
    pub kind: String,
    pub frame: Frame,
}

/// Why a feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("reading the events stream: {0}")]
    Read(String),
    /// An event in the stream that no gateway could have written. Not skipped:
    /// the dashboard would miss an event without knowing.
    #[error("event {seq} in the events stream is malformed: {reason}")]
    Malformed { seq: u64, reason: String },
}

/// How often a consumer's server says it is there while no event comes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request stays open.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Pause before making a consumer again after failing to.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Wait for a new consumer before asking again (the first ask in a row).
const REMAKE_WAIT: Duration = Duration::from_secs(2);
/// The longest wait for a new consumer: below the client's request timeout
/// (10 s), so that an unanswered ask is always ours to repeat. At 10 s the
/// client's own timeout could end the request in the same timer tick, and it
/// was then reported as a failure instead of asked again.
const ASK_WAIT_MAX: Duration = Duration::from_secs(8);
/// A consumer left behind (its reader gone) is removed by the server after this.
const INACTIVE: Duration = Duration::from_secs(30);

/// The events of a scope, from the stream.
pub struct Feed {
    js: Context,
    scope: SiteScope,
    filter_subject: String,
    /// The stream sequence of the last event read (handed on or out of scope).
    last: u64,
    /// The current consumer and the consumer sequence of its last message.
    reading: Option<(pull::Stream, u64)>,
    /// Consumer requests in a row not answered (kept when a read is cancelled).
    unanswered: u32,
}

impl Feed {
    /// Every event of `scope`'s sites after stream sequence `since` (0: from the
    /// oldest the stream keeps), then each new one as it is stored. Waits
    /// while NATS leaves the request for a consumer unanswered.
    pub async fn open(js: &Context, scope: SiteScope, since: u64) -> Result<Feed, FeedError> {
        let filter_subject = match scope.single() {
            Some(site) => format!("{EVENTS_PREFIX}.{site}"),
            None => format!("{EVENTS_PREFIX}.>"),
        };
        Feed::start(js, scope, since, filter_subject).await
    }

    /// As [`Feed::open`], reading every site's events and skipping those out
    /// of scope here: every stream sequence is read, so [`Feed::read_until`]
    /// can tell where it is and whether one is missing.
    pub async fn open_every_site(
        js: &Context,
        scope: SiteScope,
        since: u64,
    ) -> Result<Feed, FeedError> {
        Feed::start(js, scope, since, format!("{EVENTS_PREFIX}.>")).await
    }

    async fn start(
        js: &Context,
        scope: SiteScope,
        since: u64,
        filter_subject: String,
    ) -> Result<Feed, FeedError> {
        let mut feed = Feed {
            js: js.clone(),
            scope,
            filter_subject,
            last: since,
            reading: None,
            unanswered: 0,
        };
        feed.reading = Some((feed.consumer_answered().await?, 0));
        Ok(feed)
    }

    /// [`Feed::consumer`], asked for again after [`ask_wait`] while unanswered
    /// (not the client's request timeout: a request placed on a lost node is
    /// never answered, and a new one is answered sooner; the wait grows so that
    /// a slow NATS is answered too). Fails only on an answer that says no.
    async fn consumer_answered(&mut self) -> Result<pull::Stream, ClusterError> {
        loop {
            let wait = ask_wait(self.unanswered);
            if let Ok(answered) = tokio::time::timeout(wait, self.consumer()).await {
                self.unanswered = 0;
                return answered;
            }
            self.unanswered = self.unanswered.saturating_add(1);
            // Said once every 5 asks: a third of asks fail while a node is lost.
            if self.unanswered.is_multiple_of(5) {
                tracing::warn!(
                    asked = self.unanswered,
                    filter = %self.filter_subject,
                    "the events stream does not answer consumer requests; asking again"
                );
            }
        }
    }

    /// A consumer of the scope's subject from the event after the last one read.
    async fn consumer(&self) -> Result<pull::Stream, ClusterError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::js("finding the events stream", e))?;
        let deliver_policy = match self.last {
            0 => DeliverPolicy::All,
            last => DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
        };
        let consumer: PullConsumer = stream
            .create_consumer(pull::Config {
                description: Some("vitalgate: a dashboard's events".into()),
                filter_subject: self.filter_subject.clone(),
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE,
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::js("reading the events stream", e))?;
        consumer
            .stream()
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| ClusterError::js("reading the events stream", e))
    }

    /// Drop the current consumer: the next read makes a new one after the last
    /// event read (for a reader that sees the stream ahead of it while its
    /// consumer delivers nothing and its heartbeats did not say so).
    pub fn remake(&mut self) {
        self.reading = None;
    }

    /// The next event in scope. Waits through a lost node or consumer (made
    /// again after the last event read); fails only on an event no gateway
    /// could have written.
    pub async fn next(&mut self) -> Result<StreamEvent, FeedError> {
        loop {
            if let Some(event) = self.next_read().await? {
                return Ok(event);
            }
        }
    }

    /// The events in scope after the last one read up to stream sequence
    /// `upto` (an event already stored), from a feed opened with
    /// [`Feed::open_every_site`]: fails on a sequence missing (removed from
    /// the stream by its limits). Waits as [`Feed::next`] does.
    pub async fn read_until(&mut self, upto: u64) -> Result<Vec<StreamEvent>, FeedError> {
        let mut events = Vec::new();
        while self.last < upto {
            let expected = self.last + 1;
            let event = self.next_read().await?;
            if self.last != expected {
                return Err(FeedError::Read(format!(
                    "event {expected} is no longer in the stream (read {} next)",
                    self.last
                )));
            }
            events.extend(event);
        }
        Ok(events)
    }

    /// The next event read, if in scope.
    async fn next_read(&mut self) -> Result<Option<StreamEvent>, FeedError> {
        loop {
            let Some((messages, consumer_seq)) = self.reading.as_mut() else {
                match self.consumer_answered().await {
                    Ok(messages) => self.reading = Some((messages, 0)),
                    Err(e) => {
                        tracing::debug!(error = %e, "a dashboard's events: no consumer yet");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                continue;
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                // A missed heartbeat, a deleted consumer, a closed subscription.
                other => {
                    tracing::debug!(error = ?other.map(|r| r.err()), "a dashboard's events: consumer lost");
                    self.reading = None;
                    continue;
                }
            };
            let info = message.info().map_err(|e| FeedError::Read(e.to_string()))?;
            if info.consumer_sequence != *consumer_seq + 1 {
                self.reading = None;
                continue;
            }
            *consumer_seq = info.consumer_sequence;
            let seq = info.stream_sequence;
            self.last = seq;
            let event = event_of(seq, &message)?;
            return Ok(self.scope.allows_chair(chair_of(&event)).then_some(event));
        }
    }
}

fn chair_of(event: &StreamEvent) -> &str {
    event.frame.chair.as_deref().unwrap_or_default()
}

/// The event a stream message holds, its frame numbered by its stream sequence.
fn event_of(seq: u64, message: &async_nats::jetstream::Message) -> Result<StreamEvent, FeedError> {
    let malformed = |reason: &str| FeedError::Malformed {
        seq,
        reason: reason.to_string(),
    };
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let kind = header(KIND_HEADER).ok_or_else(|| malformed("no kind header"))?;
    let chair = header(CHAIR_HEADER).ok_or_else(|| malformed("no chair header"))?;
    let text = std::str::from_utf8(&message.payload).map_err(|_| malformed("not UTF-8"))?;
    let text = crate::protocol::with_seq(text, seq)
        .ok_or_else(|| malformed("not an alarm or session frame"))?;
    let frame = Frame::about(text, Arc::from(chair));
    Ok(StreamEvent { seq, kind, frame })
}

/// How long a consumer request waits for its answer after `unanswered`
/// unanswered ones in a row: [`REMAKE_WAIT`], half as long again after each,
/// at most [`ASK_WAIT_MAX`].
fn ask_wait(unanswered: u32) -> Duration {
    let mut wait = REMAKE_WAIT;
    for _ in 0..unanswered.min(8) {
        wait = (wait * 3 / 2).min(ASK_WAIT_MAX);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_consumer_request_waits_longer_next_time_below_the_request_timeout() {
        let waits: Vec<u64> = (0..7).map(|n| ask_wait(n).as_millis() as u64).collect();
        assert_eq!(waits, [2_000, 3_000, 4_500, 6_750, 8_000, 8_000, 8_000]);
        assert_eq!(ask_wait(u32::MAX), ASK_WAIT_MAX);
    }
}
