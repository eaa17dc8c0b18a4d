//! The hub: alarm events in, one serialised frame out to every dashboard's queue.
//!
//! One mutex covers the [`Board`] (sequence numbers and active alarms), the replay
//! buffer and the subscriber list. Holding it while assigning a `seq`, storing the
//! frame and pushing it to every queue is what makes delivery gap-free and in order
//! for every dashboard, and makes a snapshot's alarms agree with its `seq`. The work
//! under the lock is one serialisation per event and one non-blocking `try_send` per
//! subscriber; a subscriber whose queue is full is cut off, never waited for.

use super::protocol::{self, Frame, RenderedChairs};
use crate::access::SiteScope;
use crate::audit::{Audit, Record};
use crate::core::{AckError, AlarmEvent, Board, EscalationPolicy, Event, Ward};
use crate::telemetry::Metrics;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a new subscriber starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A snapshot of the current state, then live events.
    Snapshot,
    /// Every held event after `since`, then live events. `instance`, when given, must
    /// match this gateway's, or the client is told it missed events.
    Since {
        since: u64,
        instance: Option<String>,
    },
}

/// How a dashboard's connection is told it is cut off as a slow consumer.
#[derive(Clone, Debug, Default)]
pub struct CutOff {
    /// Cancelled when cut off: the connection then closes with 4008. Only through
    /// [`CutOff::cut`], which wakes the writer too.
    pub(crate) slow: CancellationToken,
    /// Cancelled with it: the one token the connection's writer waits on for
    /// every reason to stop (it is also cancelled when the client goes away and
    /// when the gateway shuts down), so that a writer polls one future per wake
    /// instead of one per reason.
    pub(crate) wake: CancellationToken,
}

impl CutOff {
    /// Cut the connection off as a slow consumer.
    pub fn cut(&self) {
        self.slow.cancel();
        self.wake.cancel();
    }
}

/// A dashboard's place in the hub.
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Frame>,
    /// Used when the subscriber is cut off as a slow consumer.
    cut_off: CutOff,
    /// The sites whose events it receives.
    scope: SiteScope,
}

/// Whether a frame about `chair` (if any) is for a client with `scope`.
fn in_scope(frame: &Frame, scope: &SiteScope) -> bool {
    frame.chair.as_deref().is_none_or(|c| scope.allows_chair(c))
}

impl Subscriber {
    /// Queue a frame without waiting (a frame about a chair outside its scope is
    /// skipped). False when the subscriber is gone, or its queue is full, in which
    /// case it is told to close as a slow consumer.
    fn deliver(&self, frame: &Frame) -> bool {
        if !in_scope(frame, &self.scope) {
            return true;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut_off.cut();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// One event on its way out: what the audit trail records of it, and its frame.
struct Outgoing {
    seq: u64,
    kind: &'static str,
    chair: Arc<str>,
    at_ms: u64,
    frame: Frame,
}

impl Outgoing {
    fn alarm(seq: u64, alarm: &AlarmEvent, at_ms: u64, ingested_at: Option<Instant>) -> Outgoing {
        Outgoing {
            seq,
            kind: "alarm",
            chair: alarm.chair.clone(),
            at_ms,
            frame: protocol::alarm_frame(seq, alarm, ingested_at),
        }
    }
}

struct Inner {
    board: Board,
    replay: VecDeque<(u64, Frame)>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
}

pub struct Hub {
    inner: Mutex<Inner>,
    replay_capacity: usize,
    instance: String,
    metrics: Arc<Metrics>,
    /// Where every event is written before any dashboard sees it.
    audit: Option<Arc<Audit>>,
    /// False after a failed audit write, until one succeeds (shown by `/ready`).
    audit_ok: std::sync::atomic::AtomicBool,
}

/// The ward's chairs within `scope`.
fn chairs_in(ward: &Ward, scope: &SiteScope) -> Vec<crate::core::ChairView> {
    let mut chairs = ward.chairs();
    if !scope.is_all() {
        chairs.retain(|c| scope.allows_chair(&c.chair));
    }
    chairs
}

/// What a new subscriber receives before live events.
pub struct Subscription {
    pub id: u64,
    pub initial: Vec<Frame>,
}

impl Hub {
    /// A hub whose `seq` starts after the current wall-clock time in microseconds, so
    /// that `seq` keeps increasing across gateway restarts (as long as fewer than a
    /// million alarm events per second are raised): a client resuming with a `since`
    /// from an earlier run is always told it missed events, with or without
    /// `instance`. Such values stay below 2^53, exact in JavaScript numbers.
    pub fn new(replay_capacity: usize, metrics: Arc<Metrics>, audit: Option<Arc<Audit>>) -> Self {
        let mut hub = Self::starting_after(
            crate::clock::now_ms().saturating_mul(1_000),
            replay_capacity,
            metrics,
        );
        hub.audit = audit;
        hub
    }

    /// A hub whose first event gets `seq` `last_seq + 1`.
    pub fn starting_after(last_seq: u64, replay_capacity: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            inner: Mutex::new(Inner {
                board: Board::starting_after(last_seq),
                replay: VecDeque::with_capacity(replay_capacity.min(4096)),
                subscribers: Vec::new(),
                next_subscriber: 1,
            }),
            replay_capacity,
            instance: format!("{:016x}", fastrand::u64(..)),
            metrics,
            audit: None,
            audit_ok: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// False while audit writes fail (since the last one that failed).
    pub fn audit_ok(&self) -> bool {
        self.audit_ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This gateway run's id: `seq` values are comparable only within one instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the board half-updated in a way
        // that matters more than stopping alarms altogether, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `seq` of the latest alarm event.
    pub fn last_seq(&self) -> u64 {
        self.lock().board.last_seq()
    }

    /// Active alarms, each as its latest event.
    pub fn active_alarms(&self) -> Vec<AlarmEvent> {
        self.lock().board.active().cloned().collect()
    }

    /// Sequence, record, store and deliver events. When this returns, every event is
    /// in the audit trail, in the replay buffer and in the queue of every connected
    /// dashboard (or that dashboard has been cut off as slow).
    pub fn publish(&self, events: Vec<Event>, ingested_at: Option<Instant>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let out = events
            .into_iter()
            .map(|event| match event {
                Event::Alarm(mut alarm) => {
                    let seq = inner.board.record(&mut alarm);
                    self.metrics
                        .alarm_event(alarm.priority, alarm.state)
                        .increment(1);
                    Outgoing::alarm(seq, &alarm, alarm.received_at, ingested_at)
                }
                Event::Session(session) => {
                    let seq = inner.board.next_seq();
                    self.metrics.session_events.increment(1);
                    Outgoing {
                        seq,
                        kind: "session",
                        frame: protocol::session_frame(seq, &session),
                        chair: session.chair,
                        at_ms: session.at,
                    }
                }
            })
            .collect();
        self.send_locked(&mut inner, out);
    }

    /// Record events in the audit trail, then store and deliver them.
    fn send_locked(&self, inner: &mut Inner, out: Vec<Outgoing>) {
        self.record(&out);
        self.deliver_locked(inner, &out);
    }

    /// After an append, start an audit checkpoint if one is due, on a blocking
    /// thread, so that its disk flush runs while the events are delivered instead
    /// of before (an append that comes while it runs waits for it).
    fn checkpoint_if_due(&self, audit: &Arc<Audit>) {
        let Some(checkpoint) = audit.claim_checkpoint() else {
            return;
        };
        let metrics = self.metrics.clone();
        let run = move || {
            if let Err(e) = checkpoint.run() {
                metrics.audit_errors.increment(1);
                tracing::warn!(error = %e, "audit trail checkpoint failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Write events to the audit trail. A failure is counted and logged, and the
    /// events are still delivered: a nurse seeing an alarm matters more than its
    /// record.
    fn record(&self, out: &[Outgoing]) {
        let Some(audit) = &self.audit else { return };
        let records: Vec<Record<'_>> = out
            .iter()
            .map(|o| Record {
                seq: o.seq,
                instance: &self.instance,
                kind: o.kind,
                chair: &o.chair,
                at_ms: o.at_ms,
                body: o.frame.as_str(),
            })
            .collect();
        let result = audit.append(&records);
        self.checkpoint_if_due(audit);
        self.audit_ok
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = result {
            self.metrics.audit_errors.increment(1);
            tracing::error!(error = %e, events = records.len(), "audit trail write failed; events delivered anyway");
        }
    }

    /// Store `out` for replay and queue them, in order, for every subscriber.
    ///
    /// Subscriber by subscriber rather than frame by frame: the events of one reading
    /// (a surge that raises two rules) then sit in each queue together, and its
    /// writer sends them in one socket write instead of waking once per frame.
    fn deliver_locked(&self, inner: &mut Inner, out: &[Outgoing]) {
        for o in out {
            if inner.replay.len() >= self.replay_capacity {
                inner.replay.pop_front();
            }
            inner.replay.push_back((o.seq, o.frame.clone()));
        }
        inner
            .subscribers
            .retain(|s| out.iter().all(|o| s.deliver(&o.frame)));
    }

    /// Acknowledge an active alarm on behalf of `by`; every dashboard gets the event,
    /// which is returned (the ward may clear a latched alarm on it).
    pub fn acknowledge(
        &self,
        id: u64,
        by: &str,
        now_ms: u64,
        scope: &SiteScope,
    ) -> Result<AlarmEvent, AckError> {
        let mut inner = self.lock();
        // Outside the client's sites: as if it did not exist, before anything else
        // (who acknowledged it, say) could be told.
        if inner
            .board
            .chair_of(id)
            .is_some_and(|chair| !scope.allows_chair(chair))
        {
            return Err(AckError::UnknownAlarm(id));
        }
        let mut event = inner.board.acknowledge(id, Arc::from(by), now_ms)?;
        let seq = inner.board.record(&mut event);
        self.metrics
            .alarm_event(event.priority, event.state)
            .increment(1);
        self.send_locked(&mut inner, vec![Outgoing::alarm(seq, &event, now_ms, None)]);
        Ok(event)
    }

    /// Take back an alarm open when the previous run stopped, without a new event
    /// (it is already in the audit trail; new dashboards see it in their snapshot).
    pub fn restore_alarm(&self, event: AlarmEvent, policy: &EscalationPolicy) {
        let at = event.received_at;
        let acknowledged = (event.state == crate::core::AlarmState::Acknowledged).then_some(at);
        // An unacknowledged alarm's latest event is its raise or its last
        // escalation: count the next escalation from the raise.
        let raised_at = match acknowledged {
            Some(_) => at,
            None => at.saturating_sub(
                policy
                    .after_ms(event.priority)
                    .saturating_mul(u64::from(event.escalation_level)),
            ),
        };
        self.lock().board.restore(event, raised_at, acknowledged);
    }

    /// Send the escalations and reminders due at gateway time `now_ms`.
    pub fn escalate(&self, now_ms: u64, policy: &EscalationPolicy) {
        let mut inner = self.lock();
        let due = inner.board.due(now_ms, policy);
        for mut event in due {
            let seq = inner.board.record(&mut event);
            if event.reminder {
                inner.board.reminded(event.id, now_ms);
                self.metrics.alarm_reminders.increment(1);
            } else {
                self.metrics.alarm_escalations.increment(1);
            }
            self.send_locked(&mut inner, vec![Outgoing::alarm(seq, &event, now_ms, None)]);
        }
    }

    /// Whether a `since` can be served from the replay buffer as it is now.
    fn can_replay(&self, inner: &Inner, since: u64, instance: Option<&str>) -> bool {
        let last = inner.board.last_seq();
        let oldest = inner.replay.front().map_or(last + 1, |(s, _)| *s);
        // A `since` from before this run started is older than anything held:
        // `oldest` is then this run's first seq, and the check fails.
        instance.is_none_or(|i| i == self.instance)
            && since <= last
            && (since + 1 >= oldest || since == last)
    }

    /// Register a dashboard and return what it receives first: a snapshot, or the
    /// replay after `since` (or `missed` and a snapshot).
    ///
    /// The chairs for a snapshot are read from the ward and rendered before the hub
    /// lock is taken, so the lock is held only for the active alarms; the ward is read
    /// under the lock only if the replay buffer moved past `since` in between.
    pub fn subscribe(
        &self,
        start: Start,
        ward: &Ward,
        tx: mpsc::Sender<Frame>,
        cut_off: CutOff,
        scope: SiteScope,
    ) -> Subscription {
        let needs_snapshot = match &start {
            Start::Snapshot => true,
            Start::Since { since, instance } => {
                !self.can_replay(&self.lock(), *since, instance.as_deref())
            }
        };
        let render = || protocol::render_chairs(&chairs_in(ward, &scope));
        let rendered = needs_snapshot.then(render);
        let chairs = || rendered.clone().unwrap_or_else(render);
        let mut inner = self.lock();
        let last = inner.board.last_seq();
        let mut initial = Vec::new();
        match start {
            Start::Snapshot => initial.push(self.snapshot_locked(&inner, &chairs(), &scope)),
            Start::Since { since, instance } => {
                if self.can_replay(&inner, since, instance.as_deref()) {
                    initial.extend(
                        inner
                            .replay
                            .iter()
                            .filter(|(s, f)| *s > since && in_scope(f, &scope))
                            .map(|(_, f)| f.clone()),
                    );
                } else {
                    let oldest = inner.replay.front().map_or(last + 1, |(s, _)| *s);
                    initial.push(protocol::missed_frame(&self.instance, since, oldest, last));
                    initial.push(self.snapshot_locked(&inner, &chairs(), &scope));
                }
            }
        }
        let id = inner.next_subscriber;
        inner.next_subscriber += 1;
        inner.subscribers.push(Subscriber {
            id,
            tx,
            cut_off,
            scope,
        });
        Subscription { id, initial }
    }

    /// Queue a fresh snapshot for subscriber `id`, ordered with its alarm events.
    pub fn send_snapshot(&self, id: u64, ward: &Ward, scope: &SiteScope) {
        let chairs = protocol::render_chairs(&chairs_in(ward, scope));
        let mut inner = self.lock();
        let frame = self.snapshot_locked(&inner, &chairs, scope);
        inner
            .subscribers
            .retain(|s| s.id != id || s.deliver(&frame));
    }

    fn snapshot_locked(&self, inner: &Inner, chairs: &RenderedChairs, scope: &SiteScope) -> Frame {
        protocol::snapshot_frame(
            &self.instance,
            inner.board.last_seq(),
            chairs,
            inner
                .board
                .active()
                .filter(|a| scope.allows_chair(&a.chair)),
        )
    }

    /// Remove a subscriber that has gone away.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
