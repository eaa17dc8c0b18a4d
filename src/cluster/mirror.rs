//! What the events stream says is going on: each chair's latest session and
//! its open alarms, kept up to date by reading every event as it is stored.
//!
//! A gateway that takes a partition over restores its chairs from here, as a
//! single-node gateway restores from its audit trail at start-up: sessions
//! (phase, patient, baseline, limits) and the alarms raised or acknowledged
//! and not cleared. Before it does, it waits until the mirror has read up to
//! the stream's last event ([`Mirror::caught_up`]): the previous owner
//! published nothing after its lease's deadline, which passed before the
//! partition could be taken.
//!
//! The mirror reads the stream from its first event: its memory holds one
//! session per chair, one entry per open alarm and the latest
//! `replay_capacity` events.
//!
//! It is also where this gateway's dashboards get their events: each event
//! read is handed to the fan-out (the `outlet`) while the ledger is held, and a
//! dashboard subscribes under the same hold ([`Mirror::subscribe`]), so that it
//! gets a snapshot (or the events after its `since`) and then every later
//! event exactly once, as a single gateway's engine does. The snapshot's chairs
//! carry their sessions; their vitals come with live vitals.

use super::events::EVENTS_STREAM;
use super::feed::{Feed, FeedError, StreamEvent};
use super::ClusterError;
use crate::access::SiteScope;
use crate::core::{AlarmEvent, Latest, RecordedAlarm, SessionEvent};
use crate::engine::{in_scope, Outlet, Sequenced, Start};
use crate::protocol::{self, ChairJson, Frame};
use async_nats::jetstream::Context;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Each chair's latest session event and its open alarms, as frame texts.
#[derive(Default)]
struct Ledger {
    sessions: HashMap<String, String>,
    /// By chair and alarm id.
    open: BTreeMap<(String, u64), String>,
    /// Per chair, the device time of the latest reading that raised or ended
    /// an alarm: what its owner had evaluated at least.
    evaluated: HashMap<String, u64>,
    /// The latest events, oldest first, for dashboards resuming with `since`.
    recent: VecDeque<(u64, Frame)>,
    replay_capacity: usize,
    /// The stream sequence of the last event taken in.
    last: u64,
}

/// A dashboard's events read from the stream, older than the mirror keeps.
#[derive(Debug)]
pub struct Earlier {
    /// The dashboard's `since`.
    pub asked: u64,
    /// The stream sequence read up to.
    pub upto: u64,
    /// The events of its scope in `(asked, upto]`, in order.
    pub frames: Vec<Frame>,
}

/// What the stream holds of some chairs.
#[derive(Debug, Default)]
pub struct ChairsNow {
    pub sessions: Vec<SessionEvent>,
    pub alarms: Vec<AlarmEvent>,
    /// Per chair, the device time up to which its readings were evaluated
    /// (see [`crate::engine::Restore::evaluated_until`]).
    pub evaluated: Vec<(String, u64)>,
}

pub struct Mirror {
    js: Context,
    ledger: Arc<Mutex<Ledger>>,
    /// The stream sequence of the last event read.
    read: watch::Receiver<u64>,
    /// The events stream's last sequence as last asked (every
    /// [`STALL_CHECK`]); `None` before the first answer.
    stream_last: watch::Receiver<Option<u64>>,
    /// What dashboards are told names the events stream (see
    /// [`Mirror::instance`]).
    instance: String,
}

impl Mirror {
    /// Start reading the events stream from its first event, until `stop`,
    /// keeping the latest `replay_capacity` events and handing each to
    /// `outlet` (the fan-out), if any.
    pub async fn start(
        js: &Context,
        stop: CancellationToken,
        replay_capacity: usize,
        outlet: Option<Arc<dyn Outlet>>,
    ) -> Result<Mirror, FeedError> {
        let instance = stream_instance(js).await?;
        let mut feed = Feed::open(js, SiteScope::all(), 0).await?;
        let ledger = Arc::new(Mutex::new(Ledger {
            replay_capacity,
            ..Ledger::default()
        }));
        let (read_tx, read) = watch::channel(0);
        let writing = ledger.clone();
        let stalled = Arc::new(tokio::sync::Notify::new());
        let (stream_last_tx, stream_last) = watch::channel(None);
        tokio::spawn(watch_for_stalls(
            js.clone(),
            read.clone(),
            stream_last_tx,
            stalled.clone(),
            stop.clone(),
        ));
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = stalled.notified() => {
                        tracing::warn!("the mirror's consumer delivers nothing while the events stream is ahead: made again");
                        feed.remake();
                        continue;
                    }
                    event = feed.next() => event,
                };
                match event {
                    Ok(event) => {
                        let seq = event.seq;
                        let mut ledger = writing.lock().unwrap_or_else(|p| p.into_inner());
                        let event = ledger.take(event);
                        // Under the ledger: in order with subscriptions.
                        if let Some(outlet) = &outlet {
                            outlet.release(std::slice::from_ref(&event));
                        }
                        drop(ledger);
                        read_tx.send_replace(seq);
                    }
                    // Skipped by the feed; said loudly (no gateway writes such).
                    // Read all the same: `caught_up` must not wait for it.
                    Err(e) => {
                        tracing::error!(error = %e, "an event the mirror cannot read");
                        if let FeedError::Malformed { seq, .. } = e {
                            read_tx.send_replace(seq);
                        }
                    }
                }
            }
        });
        Ok(Mirror {
            js: js.clone(),
            ledger,
            read,
            stream_last,
            instance,
        })
    }

    /// The events stream's name for dashboards (`instance` in snapshot and
    /// missed frames): the time the stream was made, in hex nanoseconds. The
    /// same on every gateway, since `seq` is the stream's; a stream made
    /// again (its sequence starting over) has another.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Wait, at most `within`, until the event `seq` has been read; whether it was.
    pub async fn reached(&self, seq: u64, within: std::time::Duration) -> bool {
        let mut read = self.read.clone();
        tokio::time::timeout(within, read.wait_for(|last| *last >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The stream sequence of the last event read.
    pub fn read_up_to(&self) -> u64 {
        *self.read.borrow()
    }

    /// Events stored in the stream and not read here yet, as of the stream's
    /// last sequence last asked (every [`STALL_CHECK`]); `None` before it
    /// first answered.
    pub fn unread(&self) -> Option<u64> {
        let last = (*self.stream_last.borrow())?;
        Some(last.saturating_sub(self.read_up_to()))
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a dashboard of `scope` at `start`: `then` gets its first frames (a
    /// snapshot, or the events after `since`, or `missed` and a snapshot) while
    /// no event can be handed to the outlet, so that registering it there in
    /// `then` gives it every later event exactly once.
    pub fn subscribe(&self, start: Start, scope: &SiteScope, then: impl FnOnce(Vec<Frame>)) {
        let ledger = self.ledger();
        let first = match start {
            Start::Snapshot => vec![ledger.snapshot(&self.instance, scope)],
            Start::Since { since, instance } => {
                if ledger.can_replay(since, instance.as_deref(), &self.instance) {
                    ledger.replay(since, scope, Vec::new())
                } else {
                    ledger.missed(&self.instance, since, scope)
                }
            }
        };
        then(first);
    }

    /// As [`Mirror::subscribe`] from `earlier.asked`, for a dashboard whose
    /// events up to `earlier.upto` were read from the stream: those, then the
    /// ones after (`missed` and a snapshot if this gateway no longer keeps
    /// them all).
    pub fn subscribe_after(
        &self,
        earlier: Earlier,
        scope: &SiteScope,
        then: impl FnOnce(Vec<Frame>),
    ) {
        let ledger = self.ledger();
        let first = if ledger.can_replay(earlier.upto, None, &self.instance) {
            ledger.replay(earlier.upto, scope, earlier.frames)
        } else {
            ledger.missed(&self.instance, earlier.asked, scope)
        };
        then(first);
    }

    /// Whether a dashboard resuming with `since` of this events stream is
    /// served from the events kept in memory.
    pub fn can_replay(&self, since: u64) -> bool {
        self.ledger().can_replay(since, None, &self.instance)
    }

    /// A snapshot of `scope` for `then`, in order with the events handed out.
    pub fn snapshot(&self, scope: &SiteScope, then: impl FnOnce(Frame)) {
        let ledger = self.ledger();
        then(ledger.snapshot(&self.instance, scope));
    }

    /// The chair of open alarm `id`, if the stream says one is open.
    pub fn chair_of_alarm(&self, id: u64) -> Option<String> {
        let ledger = self.ledger();
        ledger
            .open
            .keys()
            .find(|(_, open)| *open == id)
            .map(|(chair, _)| chair.clone())
    }

    /// Wait until every event stored so far has been read; the stream
    /// sequence read up to.
    pub async fn caught_up(&self) -> Result<u64, ClusterError> {
        let last = events_info(&self.js).await?.state.last_sequence;
        let mut read = self.read.clone();
        let reached = read
            .wait_for(|seq| *seq >= last)
            .await
            .map_err(|_| ClusterError::js("reading the events stream", "the mirror stopped"))?;
        Ok(*reached)
    }

    /// The sessions and open alarms of the chairs `which` names.
    pub fn chairs(&self, which: impl Fn(&str) -> bool) -> ChairsNow {
        self.ledger().chairs(which)
    }
}

/// How often the mirror's progress is checked against the stream's.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Ask the events stream's last sequence every [`STALL_CHECK`] (kept in
/// `stream_last`), and tell the mirror's reader (`stalled`) to make its
/// consumer again when the stream holds events past `read` and `read` has not
/// moved for a whole check. A consumer whose node was lost is normally noticed by its
/// missing heartbeats within seconds; seen here (NATS 2.10.26, async-nats
/// 0.40, a node killed): a consumer that delivered nothing and whose loss was
/// noticed only 50-75 s later, holding every takeover (which waits for the
/// mirror) and every dashboard's events that long.
async fn watch_for_stalls(
    js: Context,
    read: watch::Receiver<u64>,
    stream_last: watch::Sender<Option<u64>>,
    stalled: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut before = *read.borrow();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(STALL_CHECK) => {}
        }
        let now = *read.borrow();
        let ahead = match tokio::time::timeout(STALL_CHECK, events_info(&js)).await {
            Ok(Ok(info)) => {
                stream_last.send_replace(Some(info.state.last_sequence));
                info.state.last_sequence > now
            }
            _ => false,
        };
        if ahead && now == before {
            stalled.notify_one();
        }
        before = now;
    }
}

/// See [`Mirror::instance`].
async fn stream_instance(js: &Context) -> Result<String, ClusterError> {
    let created = events_info(js).await?.created;
    Ok(format!("{:016x}", created.unix_timestamp_nanos() as u64))
}

/// The events stream's configuration and state, as its leader has them now.
async fn events_info(js: &Context) -> Result<async_nats::jetstream::stream::Info, ClusterError> {
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| ClusterError::js("finding the events stream", e))?;
    stream
        .info()
        .await
        .map_err(|e| ClusterError::js("reading the events stream's state", e))
        .cloned()
}

impl Ledger {
    /// The sessions and open alarms of the chairs `which` names, and how far
    /// each one's readings were evaluated.
    fn chairs(&self, which: impl Fn(&str) -> bool) -> ChairsNow {
        let mut now = ChairsNow::default();
        for (chair, text) in &self.sessions {
            if which(chair) {
                match serde_json::from_str(text) {
                    Ok(session) => now.sessions.push(session),
                    Err(e) => {
                        tracing::warn!(chair = %chair, error = %e, "unreadable session event")
                    }
                }
            }
        }
        now.evaluated = self
            .evaluated
            .iter()
            .filter(|(chair, _)| which(chair))
            .map(|(chair, ts)| (chair.clone(), *ts))
            .collect();
        for ((chair, _), text) in &self.open {
            if which(chair) {
                match serde_json::from_str(text) {
                    Ok(alarm) => now.alarms.push(alarm),
                    Err(e) => tracing::warn!(chair = %chair, error = %e, "unreadable alarm event"),
                }
            }
        }
        now
    }

    /// Take in one event read from the stream; it, as the fan-out takes it.
    fn take(&mut self, event: StreamEvent) -> Sequenced {
        let chair: Arc<str> = event.frame.chair.clone().unwrap_or_else(|| Arc::from(""));
        self.note(&event.kind, &chair, event.frame.as_str());
        self.last = event.seq;
        if self.replay_capacity > 0 {
            if self.recent.len() >= self.replay_capacity {
                self.recent.pop_front();
            }
            self.recent.push_back((event.seq, event.frame.clone()));
        }
        Sequenced {
            seq: event.seq,
            kind: match event.kind.as_str() {
                "alarm" => "alarm",
                "session" => "session",
                _ => "other",
            },
            chair,
            at_ms: 0,
            frame: event.frame,
        }
    }

    /// Whether `since` can be served from the events held (as a single
    /// gateway decides from its replay buffer).
    fn can_replay(&self, since: u64, instance: Option<&str>, ours: &str) -> bool {
        let oldest = self.recent.front().map_or(self.last + 1, |(s, _)| *s);
        instance.is_none_or(|i| i == ours)
            && since <= self.last
            && (since + 1 >= oldest || since == self.last)
    }

    /// `first`, then the events of `scope` kept after `since`.
    fn replay(&self, since: u64, scope: &SiteScope, mut first: Vec<Frame>) -> Vec<Frame> {
        first.extend(
            self.recent
                .iter()
                .filter(|(seq, frame)| *seq > since && in_scope(frame, scope))
                .map(|(_, frame)| frame.clone()),
        );
        first
    }

    /// What a dashboard whose `since` cannot be served gets: `missed` and a
    /// snapshot.
    fn missed(&self, instance: &str, since: u64, scope: &SiteScope) -> Vec<Frame> {
        let oldest = self.recent.front().map_or(self.last + 1, |(s, _)| *s);
        vec![
            protocol::missed_frame(instance, since, oldest, self.last),
            self.snapshot(instance, scope),
        ]
    }

    /// Every chair with a session or an open alarm in `scope`, and its open
    /// alarms, as of the last event taken in.
    fn snapshot(&self, instance: &str, scope: &SiteScope) -> Frame {
        let ChairsNow {
            sessions, alarms, ..
        } = self.chairs(|chair| scope.allows_chair(chair));
        let mut chairs: BTreeMap<&str, Option<&SessionEvent>> = BTreeMap::new();
        for session in &sessions {
            chairs.insert(&session.chair, Some(session));
        }
        for alarm in &alarms {
            chairs.entry(&alarm.chair).or_insert(None);
        }
        let latest = Latest::default();
        let list: Vec<ChairJson<'_>> = chairs
            .into_iter()
            .map(|(chair, session)| ChairJson {
                session: session.cloned(),
                ..ChairJson::new(chair, &latest)
            })
            .collect();
        protocol::snapshot_frame(
            instance,
            self.last,
            &protocol::render_chair_list(&list),
            alarms.iter(),
        )
    }

    /// Take in one event of `chair`, its frame `text`.
    fn note(&mut self, kind: &str, chair: &str, text: &str) {
        match kind {
            "session" => {
                self.sessions.insert(chair.to_string(), text.to_string());
            }
            "alarm" => {
                let Ok(alarm) = serde_json::from_str::<RecordedAlarm>(text) else {
                    tracing::warn!(
                        chair,
                        "an alarm event without an id or state in the events stream"
                    );
                    return;
                };
                if let Some(ts) = alarm.reading_ts() {
                    let until = self.evaluated.entry(chair.to_string()).or_default();
                    *until = (*until).max(ts);
                }
                let key = (chair.to_string(), alarm.id);
                if alarm.state == "cleared" {
                    self.open.remove(&key);
                } else {
                    self.open.insert(key, text.to_string());
                }
            }
            _ => {}
        }
    }
}
