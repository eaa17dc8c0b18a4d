//! The engine's state: applies commands to the ward and the board, and
//! sequences the events they make for the journal (the engine task runs it).

use super::{
    ChairCopy, Command, Outlet, Parts, Processed, Reply, RestoreFn, Sequenced, Start, Ticked,
};
use crate::access::SiteScope;
use crate::core::{
    Board, EscalationPolicy, Event, Outcome, RejectReason, Rejection, Ward, WardError,
};
use crate::protocol::{self, Frame};
use crate::telemetry::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One step of the engine's output, released by the journal thread in order.
pub(super) enum Pass {
    /// Committed, then handed to the fan-out.
    Events(Vec<Sequenced>),
    /// A device message's outcome, once everything before it is released.
    Receipt(Reply, Processed),
    /// Run once everything before it is released (a subscription's first
    /// frames, a command's answer), told whether the commit it follows worked
    /// (false: the journal withheld its events).
    Then(Box<dyn FnOnce(bool) + Send>),
}

impl Pass {
    /// Whether the journal thread must see it: events to commit, or an answer
    /// to release after them. Receipts alone, with nothing before them at the
    /// journal, are released by the engine itself.
    pub(super) fn needs_journal(&self) -> bool {
        !matches!(self, Pass::Receipt(..))
    }
}

/// What makes a [`Command::Copies`]' copies (a plain function, which keeps
/// the copies module out of the state's dependencies, as the restorer).
pub(super) type Copier = fn(&mut State, Vec<String>, &dyn Fn(&str) -> bool) -> Vec<ChairCopy>;

/// Chairs that made an event since they were last copied: tracked once the
/// first copies are asked for (single-node mode never asks).
#[derive(Default)]
pub(super) struct Changed(pub(super) Option<HashSet<Arc<str>>>);

impl Changed {
    fn note(&mut self, chair: &Arc<str>) {
        if let Some(set) = &mut self.0 {
            if !set.contains(chair) {
                set.insert(chair.clone());
            }
        }
    }
}

/// Alarms the journal holds open that were raised after their chair's copy
/// was made (cluster mode's takeover), by chair: taken back when the readings
/// handed out again reach the one that raised them (the copies module), not
/// before, so that a reading measured before the raise does not end them.
#[derive(Default)]
pub(super) struct AfterCopy(pub(super) HashMap<Arc<str>, Vec<Deferred>>);

/// An alarm of [`AfterCopy`], as the journal holds it, and when (gateway
/// time) its chair was taken back.
pub(super) struct Deferred {
    pub event: crate::core::AlarmEvent,
    pub since_ms: u64,
}

pub(super) struct State {
    pub ward: Arc<Ward>,
    pub(super) board: Board,
    /// The latest events, for dashboards resuming with `since`.
    replay: VecDeque<(u64, Frame)>,
    replay_capacity: usize,
    pub instance: Arc<str>,
    pub(super) policy: EscalationPolicy,
    forget_idle_chair_ms: u64,
    silent_ms: u64,
    metrics: Arc<Metrics>,
    outlet: Arc<dyn Outlet>,
    /// Runs a [`Command::Restore`] (the restore module's runner).
    restorer: fn(&mut State, RestoreFn) -> Vec<Pass>,
    /// Chairs with events since they were last copied ([`Command::Copies`]).
    pub(super) changed: Changed,
    /// Makes a [`Command::Copies`]' copies (the copies module's).
    copier: Copier,
    pub(super) after_copy: AfterCopy,
}

impl State {
    pub fn new(
        parts: Parts,
        outlet: Arc<dyn Outlet>,
        restorer: fn(&mut State, RestoreFn) -> Vec<Pass>,
        copier: Copier,
    ) -> State {
        State {
            ward: Arc::new(parts.ward),
            board: Board::starting_after(parts.last_seq),
            replay: VecDeque::with_capacity(parts.replay_capacity.min(4096)),
            replay_capacity: parts.replay_capacity,
            instance: Arc::from(parts.instance),
            policy: parts.escalation,
            forget_idle_chair_ms: parts.forget_idle_chair_ms,
            silent_ms: parts.silent_ms,
            metrics: parts.metrics,
            outlet,
            restorer,
            changed: Changed::default(),
            copier,
            after_copy: AfterCopy::default(),
        }
    }

    pub fn apply(&mut self, command: Command, out: &mut Vec<Pass>) {
        match command {
            Command::Reading {
                chair,
                reading,
                received,
                now_ms,
                reply,
            } => {
                let processed = self.reading(&chair, &reading, received, now_ms, out);
                out.push(Pass::Receipt(reply, processed));
            }
            Command::Session {
                chair,
                update,
                now_ms,
                reply,
            } => {
                let result = self.ward.set_session(&chair, &update, now_ms);
                self.settle_session(&chair, result, reply, out);
            }
            Command::Status {
                chair,
                online,
                now_ms,
                reply,
            } => {
                let result = self.ward.set_device_online(&chair, online, now_ms);
                self.settle_session(&chair, result, reply, out);
            }
            Command::Acknowledge {
                id,
                by,
                now_ms,
                scope,
                reply,
            } => {
                let result = self.acknowledge(id, &by, now_ms, &scope, out);
                answer_journaled(reply, result, || crate::core::AckError::NotJournaled, out);
            }
            Command::SetSession {
                chair,
                update,
                now_ms,
                reply,
            } => {
                let result = self.ward.set_session(&chair, &update, now_ms);
                let changed = matches!(&result, Ok(events) if !events.is_empty());
                let result = result.map(|events| self.sequence(events, None, out));
                answer_journaled(reply, result, || WardError::NotJournaled, out);
                if changed {
                    self.show_vitals(&chair);
                }
            }
            Command::SetLimit {
                chair,
                rule,
                limits,
                by,
                now_ms,
                reply,
            } => {
                let result = self.ward.set_limit(&chair, &rule, limits, &by, now_ms);
                let result = result.map(|events| self.sequence(events, None, out));
                answer_journaled(reply, result, || WardError::NotJournaled, out);
            }
            Command::Tick { now_ms, reply } => {
                let _ = reply.send(self.tick(now_ms, out));
            }
            Command::Subscribe { start, scope, then } => {
                let initial = self.first_frames(start, &scope);
                out.push(Pass::Then(Box::new(move |_| then(initial))));
            }
            Command::Flush { reply } => answer(reply, (), out),
            Command::Restore { restore, reply } => {
                let restorer = self.restorer;
                out.extend(restorer(self, restore));
                answer(reply, (), out)
            }
            Command::HandOver { which, reply } => {
                self.board.forget(&which);
                self.after_copy.0.retain(|chair, _| !which(chair));
                let gone = self.ward.forget(&which);
                answer(reply, gone, out)
            }
            Command::Copies {
                chairs,
                changed_in,
                reply,
            } => {
                let copier = self.copier;
                let copies = copier(self, chairs, &*changed_in);
                out.push(Pass::Then(Box::new(move |journaled| {
                    let _ = reply.send((journaled, copies));
                })));
            }
            Command::Snapshot { scope, then } => {
                let frame = self.snapshot(&scope);
                out.push(Pass::Then(Box::new(move |_| then(frame))));
            }
        }
    }

    fn reading(
        &mut self,
        chair: &str,
        reading: &crate::core::Reading,
        received: Instant,
        now_ms: u64,
        out: &mut Vec<Pass>,
    ) -> Processed {
        let m = &self.metrics;
        let outcome = match self.ward.apply(chair, reading, now_ms) {
            Ok(outcome) => outcome,
            Err(e) => {
                let reason = match e {
                    WardError::ChairLimit(_) => RejectReason::ChairLimit,
                    _ => RejectReason::BadTopic,
                };
                let rejection = Rejection::new(reason, e.to_string());
                m.rejected(rejection.reason).increment(1);
                return Processed::Rejected(rejection);
            }
        };
        match outcome {
            Outcome::Duplicate => {
                m.readings_duplicate.increment(1);
                Processed::Duplicate
            }
            Outcome::Accepted {
                chair,
                events,
                late_values,
                clock_stepped_back,
                latest,
            } => {
                m.readings_ingested.increment(1);
                if clock_stepped_back {
                    m.device_clock_steps.increment(1);
                }
                if late_values > 0 {
                    m.readings_late_values.increment(late_values as u64);
                }
                Metrics::observe(
                    &m.device_to_ingest,
                    Duration::from_millis(now_ms.saturating_sub(reading.ts)),
                );
                let alarm_events = events.len();
                self.sequence(events, Some(received), out);
                self.outlet.vitals(&chair, &latest, received);
                Processed::Accepted { alarm_events }
            }
        }
    }

    /// Sequence what a session or status message changed, or count its refusal;
    /// its outcome follows its events to `reply`.
    fn settle_session(
        &mut self,
        chair: &str,
        result: Result<Vec<Event>, WardError>,
        reply: Reply,
        out: &mut Vec<Pass>,
    ) {
        let processed = match result {
            Ok(events) => {
                let n = events.len();
                let changed = n > 0;
                self.sequence(events, None, out);
                if changed {
                    self.show_vitals(chair);
                }
                Processed::Session { events: n }
            }
            Err(e) => {
                self.metrics.session_rejected.increment(1);
                Processed::Refused {
                    code: e.code(),
                    detail: e.to_string(),
                }
            }
        };
        out.push(Pass::Receipt(reply, processed));
    }

    /// Send live-vitals subscribers the chair's values after a session change: a
    /// chair whose patient left has forgotten them.
    fn show_vitals(&self, chair: &str) {
        if let Some(view) = self.ward.chair(chair) {
            self.outlet
                .vitals(&view.chair, &view.latest, Instant::now());
        }
    }

    fn acknowledge(
        &mut self,
        id: u64,
        by: &str,
        now_ms: u64,
        scope: &SiteScope,
        out: &mut Vec<Pass>,
    ) -> Result<(), crate::core::AckError> {
        // Outside the client's sites: as if it did not exist, before anything else
        // (who acknowledged it, say) could be told.
        if self
            .board
            .chair_of(id)
            .is_some_and(|chair| !scope.allows_chair(chair))
        {
            return Err(crate::core::AckError::UnknownAlarm(id));
        }
        let event = self.board.acknowledge(id, Arc::from(by), now_ms)?;
        let chair = event.chair.clone();
        self.sequence(vec![Event::Alarm(event)], None, out);
        // A latched alarm whose condition has ended clears now.
        let cleared = self.ward.acknowledged(&chair, id, now_ms);
        self.sequence(cleared, None, out);
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Pass>) -> Ticked {
        let events = self.ward.tick(now_ms);
        self.sequence(events, None, out);
        for event in self.board.due(now_ms, &self.policy) {
            if event.reminder {
                self.metrics.alarm_reminders.increment(1);
            } else {
                self.metrics.alarm_escalations.increment(1);
            }
            let (id, reminder) = (event.id, event.reminder);
            self.sequence(vec![Event::Alarm(event)], None, out);
            if reminder {
                self.board.reminded(id, now_ms);
            }
        }
        let forgotten = self.ward.evict_idle(now_ms, self.forget_idle_chair_ms);
        Ticked {
            chairs: self.ward.chair_count(),
            forgotten,
            silent: self.ward.silent_in_session(now_ms, self.silent_ms),
        }
    }

    /// Give events their `seq`, record them on the board, keep them for replay and
    /// queue them for the journal.
    pub(super) fn sequence(
        &mut self,
        events: Vec<Event>,
        ingested_at: Option<Instant>,
        out: &mut Vec<Pass>,
    ) {
        if events.is_empty() {
            return;
        }
        let sequenced: Vec<Sequenced> = events
            .into_iter()
            .map(|event| match event {
                Event::Alarm(mut alarm) => {
                    let seq = self.board.record(&mut alarm);
                    self.metrics
                        .alarm_event(alarm.priority, alarm.state)
                        .increment(1);
                    Sequenced {
                        seq,
                        kind: "alarm",
                        chair: alarm.chair.clone(),
                        at_ms: alarm.received_at,
                        frame: protocol::alarm_frame(seq, &alarm, ingested_at),
                    }
                }
                Event::Session(session) => {
                    let seq = self.board.next_seq();
                    self.metrics.session_events.increment(1);
                    Sequenced {
                        seq,
                        kind: "session",
                        frame: protocol::session_frame(seq, &session),
                        chair: session.chair,
                        at_ms: session.at,
                    }
                }
            })
            .collect();
        for s in &sequenced {
            self.changed.note(&s.chair);
            if self.replay.len() >= self.replay_capacity {
                self.replay.pop_front();
            }
            self.replay.push_back((s.seq, s.frame.clone()));
        }
        // The events of one command stay one release: each dashboard's writer then
        // sends them in one socket write.
        match out.last_mut() {
            Some(Pass::Events(held)) => held.extend(sequenced),
            _ => out.push(Pass::Events(sequenced)),
        }
    }

    /// Whether a `since` can be served from the replay buffer as it is now.
    fn can_replay(&self, since: u64, instance: Option<&str>) -> bool {
        let last = self.board.last_seq();
        let oldest = self.replay.front().map_or(last + 1, |(s, _)| *s);
        // A `since` from before this run started is older than anything held:
        // `oldest` is then this run's first seq, and the check fails.
        instance.is_none_or(|i| i == &*self.instance)
            && since <= last
            && (since + 1 >= oldest || since == last)
    }

    /// What a new subscriber receives before live events: a snapshot, or the replay
    /// after `since` (or `missed` and a snapshot).
    fn first_frames(&self, start: Start, scope: &SiteScope) -> Vec<Frame> {
        match start {
            Start::Snapshot => vec![self.snapshot(scope)],
            Start::Since { since, instance } => {
                if self.can_replay(since, instance.as_deref()) {
                    self.replay
                        .iter()
                        .filter(|(s, f)| *s > since && in_scope(f, scope))
                        .map(|(_, f)| f.clone())
                        .collect()
                } else {
                    let last = self.board.last_seq();
                    let oldest = self.replay.front().map_or(last + 1, |(s, _)| *s);
                    vec![
                        protocol::missed_frame(&self.instance, since, oldest, last),
                        self.snapshot(scope),
                    ]
                }
            }
        }
    }

    fn snapshot(&self, scope: &SiteScope) -> Frame {
        let mut chairs = self.ward.chairs();
        if !scope.is_all() {
            chairs.retain(|c| scope.allows_chair(&c.chair));
        }
        protocol::snapshot_frame(
            &self.instance,
            self.board.last_seq(),
            &protocol::render_chairs(&chairs),
            self.board.active().filter(|a| scope.allows_chair(&a.chair)),
        )
    }
}

/// Answer a dashboard's command once the events it made are released, so that a
/// refusal reaches the client in order with the alarms around it.
fn answer<T: Send + 'static>(
    reply: tokio::sync::oneshot::Sender<T>,
    result: T,
    out: &mut Vec<Pass>,
) {
    out.push(Pass::Then(Box::new(move |_| drop(reply.send(result)))));
}

/// Answer a dashboard's change once its events are released, or, when the
/// journal withheld them (cluster mode: not in the events stream), with
/// `not_journaled`: the change did not happen for anyone else, so the client
/// must not be told it did.
fn answer_journaled<E: Send + 'static>(
    reply: tokio::sync::oneshot::Sender<Result<(), E>>,
    result: Result<(), E>,
    not_journaled: fn() -> E,
    out: &mut Vec<Pass>,
) {
    out.push(Pass::Then(Box::new(move |journaled| {
        let result = match result {
            Ok(()) if !journaled => Err(not_journaled()),
            other => other,
        };
        let _ = reply.send(result);
    })));
}

/// Whether a frame about `chair` (if any) is for a client with `scope`.
pub fn in_scope(frame: &Frame, scope: &SiteScope) -> bool {
    frame.chair.as_deref().is_none_or(|c| scope.allows_chair(c))
}
