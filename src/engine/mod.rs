//! The alarm engine: the one owner of alarm state, behind one small API.
//!
//! # Who owns what
//! - **The engine task** owns the ward (every patient's state, conditions, latches,
//!   alarm ids), the board (event `seq`, active alarms, acknowledgements,
//!   escalation) and the replay buffer. It is fed by one bounded channel of
//!   [`Command`]s: readings, session and status messages from ingest;
//!   acknowledgements, session and limit commands and subscriptions from
//!   dashboards; timer ticks. Commands are applied one after another in arrival
//!   order, so a timer's `raised` can never overtake a reading's `cleared` for the
//!   same alarm, and a snapshot always agrees with its `seq`: order by
//!   construction, without a lock. Evaluation is pure CPU (about a microsecond a
//!   reading, `cargo bench --bench replay`), so the engine is a task on the runtime
//!   rather than a thread of its own: handing it a command is a task wake-up, not
//!   a thread switch, and it never waits on I/O.
//! - **The journal thread** owns the journal (the SQLite audit trail today, any
//!   [`Journal`] tomorrow). It takes everything the engine has sequenced and
//!   commits whatever has accumulated in one transaction (group commit: a storm of
//!   5,000 alarms is a handful of fsyncs, not 5,000), then *releases* it in order:
//!   frames to the fan-out, receipts to ingest (which then acknowledges the MQTT
//!   message), replies that must not overtake an event. SQLite and fsync never run
//!   on a runtime worker. An event no dashboard has seen may be in the journal; an
//!   event a dashboard has seen always is.
//! - Live vitals are not journaled: the engine hands a reading's new values to the
//!   [`Outlet`] at once, so they keep flowing while a commit is slow.
//! - Others read chairs through [`WardView`] (a shard read lock per chair, never
//!   held across anything else); only the engine writes.
//!
//! The engine knows nothing of sockets or brokers: ingest and the fan-out are
//! edges that send it commands and implement [`Outlet`].

mod copies;
mod journal;
mod restore;
mod state;
mod task;

pub use copies::{ChairCopy, CopyError};
pub use journal::{Journal, JournalError, SqliteJournal, NOT_JOURNALED};
pub use restore::Restore;
pub use state::in_scope;

use crate::access::SiteScope;
use crate::core::{AckError, LimitOverride, Reading, Rejection, SessionUpdate, Ward, WardError};
use crate::protocol::Frame;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Where a new dashboard starts.
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

/// What happened to one device message.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Applied; `alarm_events` were journaled and handed to the fan-out.
    Accepted { alarm_events: usize },
    /// A redelivery of a reading already applied.
    Duplicate,
    /// A reading rejected (counted by reason).
    Rejected(Rejection),
    /// A session or status message applied; `events` were journaled and handed to
    /// the fan-out.
    Session { events: usize },
    /// A session or status message refused: `code` names why.
    Refused { code: &'static str, detail: String },
}

/// Where a device message's [`Processed`] goes once its events are released.
#[derive(Debug)]
pub enum Reply {
    /// Ingest's receipt channel, under the ticket ingest gave the message.
    Ticket(u64),
    /// One waiting caller (tests, tools).
    Once(oneshot::Sender<Processed>),
}

/// A device message's outcome, to ingest, after its events are in the journal.
#[derive(Debug)]
pub struct Receipt {
    pub ticket: u64,
    pub processed: Processed,
}

/// What the timers learn from a tick.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticked {
    pub chairs: usize,
    pub forgotten: usize,
    /// Chairs with a patient in them and nothing heard for the offline allowance.
    pub silent: usize,
}

/// Called once a subscription's first frames are ready, in order with events: the
/// frames before the first event it will receive.
pub type OnSubscribed = Box<dyn FnOnce(Vec<Frame>) + Send>;

/// Everything the engine can be asked to do.
pub enum Command {
    /// A decoded reading from `chair`, received at `received` / `now_ms`.
    Reading {
        chair: String,
        reading: Reading,
        received: Instant,
        now_ms: u64,
        reply: Reply,
    },
    /// A session message from the clinic's systems.
    Session {
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
        reply: Reply,
    },
    /// A device said it is online or offline.
    Status {
        chair: String,
        online: bool,
        now_ms: u64,
        reply: Reply,
    },
    /// A dashboard acknowledges alarm `id` for `by`, within `scope`.
    Acknowledge {
        id: u64,
        by: String,
        now_ms: u64,
        scope: SiteScope,
        reply: oneshot::Sender<Result<(), AckError>>,
    },
    /// A dashboard moves a chair's session.
    SetSession {
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
        reply: oneshot::Sender<Result<(), WardError>>,
    },
    /// A dashboard changes one rule's limits for a chair.
    SetLimit {
        chair: String,
        rule: String,
        limits: LimitOverride,
        by: String,
        now_ms: u64,
        reply: oneshot::Sender<Result<(), WardError>>,
    },
    /// Judge timed conditions, escalate, forget idle chairs.
    Tick {
        now_ms: u64,
        reply: oneshot::Sender<Ticked>,
    },
    /// A dashboard connects: its first frames go to `then` once every event before
    /// them is released, so it receives each later event exactly once.
    Subscribe {
        start: Start,
        scope: SiteScope,
        then: OnSubscribed,
    },
    /// Answered once every event made before it is journaled and released.
    Flush { reply: oneshot::Sender<()> },
    /// Drop the chairs `which` names, their state and active alarms, without
    /// events (cluster mode: their partition went to another gateway, or came
    /// to this one and its earlier state here is stale). Answers how many went.
    HandOver {
        which: Box<dyn Fn(&str) -> bool + Send>,
        reply: oneshot::Sender<usize>,
    },
    /// Take back sessions and open alarms, as at start-up (cluster mode: a
    /// partition taken over); answered once the events it made are released.
    Restore {
        restore: RestoreFn,
        reply: oneshot::Sender<()>,
    },
    /// Copies of chairs' whole state (cluster mode's snapshots, see
    /// [`ChairCopy`]): of `chairs`, and of the chairs `changed_in` names
    /// among those that made an event since they were last copied. Answered
    /// once every event made before it is released, with whether the commit
    /// it follows worked (false: the journal withheld events the copies may
    /// assume; the chairs are no longer counted as changed either way).
    Copies {
        chairs: Vec<String>,
        changed_in: Box<dyn Fn(&str) -> bool + Send>,
        reply: oneshot::Sender<(bool, Vec<ChairCopy>)>,
    },
    /// A dashboard asks for a fresh snapshot, ordered with its events.
    Snapshot {
        scope: SiteScope,
        then: Box<dyn FnOnce(Frame) + Send>,
    },
}

/// What a [`Command::Restore`] runs on the engine's state.
pub type RestoreFn = Box<dyn FnOnce(&mut Restore<'_>) + Send>;

/// The engine has stopped (the gateway is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the alarm engine has stopped (shutting down)")]
pub struct Stopped;

/// An event sequenced by the engine, as the journal records it and dashboards see it.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    /// "alarm" | "session".
    pub kind: &'static str,
    pub chair: Arc<str>,
    /// Gateway time of the event, ms since the epoch.
    pub at_ms: u64,
    pub frame: Frame,
}

/// Where the engine's output goes: the fan-out implements it.
pub trait Outlet: Send + Sync + 'static {
    /// Events in `seq` order, after their journal commit.
    fn release(&self, events: &[Sequenced]);
    /// A chair's new values, at once (live vitals are not journaled).
    fn vitals(&self, chair: &Arc<str>, latest: &crate::core::Latest, ingested_at: Instant);
}

/// Reading chairs without going through the engine: only the engine writes.
#[derive(Clone)]
pub struct WardView(Arc<Ward>);

impl From<Ward> for WardView {
    fn from(ward: Ward) -> WardView {
        WardView(Arc::new(ward))
    }
}

impl WardView {
    pub fn chair(&self, chair: &str) -> Option<crate::core::ChairView> {
        self.0.chair(chair)
    }
    pub fn chairs(&self) -> Vec<crate::core::ChairView> {
        self.0.chairs()
    }
    pub fn chair_count(&self) -> usize {
        self.0.chair_count()
    }
}

/// The handle edges hold: cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    ward: WardView,
    instance: Arc<str>,
    journal_ok: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
}

/// The running engine: its task and its journal thread.
pub struct Running {
    pub task: tokio::task::JoinHandle<()>,
    pub journal: std::thread::JoinHandle<()>,
}

impl Running {
    /// Wait until every command taken has been applied and every event released
    /// (after [`Engine::close`]).
    pub async fn finished(self) {
        let _ = self.task.await;
        let _ = tokio::task::spawn_blocking(move || self.journal.join()).await;
    }
}

/// What the engine needs to start.
pub struct Parts {
    pub ward: Ward,
    /// The first event gets `last_seq + 1`.
    pub last_seq: u64,
    pub instance: String,
    pub replay_capacity: usize,
    pub commands: usize,
    pub escalation: crate::core::EscalationPolicy,
    pub forget_idle_chair_ms: u64,
    /// Nothing heard for this long from a chair in session counts as silent.
    pub silent_ms: u64,
    pub metrics: Arc<Metrics>,
}

impl Parts {
    /// The `last_seq` of an engine started at wall-clock `now_ms`: the time in
    /// microseconds, so that `seq` keeps increasing across restarts (as long as
    /// fewer than a million events a second are made). Such values stay below
    /// 2^53, exact in JavaScript numbers.
    pub fn last_seq_at_start(now_ms: u64) -> u64 {
        now_ms.saturating_mul(1_000)
    }

    /// The parts `config` sets, around `ward`: `last_seq` 0 and no `instance`
    /// (the caller sets those it needs).
    pub fn configured(config: &crate::config::Config, ward: Ward, metrics: Arc<Metrics>) -> Parts {
        Parts {
            ward,
            last_seq: 0,
            instance: String::new(),
            replay_capacity: config.websocket.replay_capacity,
            commands: config.mqtt.request_queue.max(1024),
            escalation: config.alarms.escalation_policy(),
            forget_idle_chair_ms: config.ingest.forget_idle_chair_ms,
            // The default allowance when the offline check is off: a minute of silence.
            silent_ms: match config.technical.offline_ms {
                0 => 60_000,
                ms => ms,
            },
            metrics,
        }
    }
}

impl Engine {
    /// Start the engine task and the journal thread. `restore` runs first, on the
    /// engine's own state, and the events it makes (alarms closed as not restored)
    /// are the first journaled. Receipts for [`Reply::Ticket`] go to `receipts`.
    pub fn start(
        parts: Parts,
        journal: Box<dyn Journal>,
        outlet: Arc<dyn Outlet>,
        receipts: mpsc::UnboundedSender<Receipt>,
        restore: impl FnOnce(&mut Restore<'_>),
    ) -> (Engine, Running) {
        let metrics = parts.metrics.clone();
        let journal_ok = Arc::new(AtomicBool::new(true));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel(parts.commands.max(1));
        let (to_journal, from_engine) = mpsc::channel(JOURNAL_QUEUE);
        let mut state = state::State::new(parts, outlet.clone(), restore::run_boxed, copies::take);
        let (ward, instance) = (state.ward.clone(), state.instance.clone());
        let first = restore::run(&mut state, restore);
        let release = journal::Release {
            instance: instance.clone(),
            outlet,
            receipts: receipts.clone(),
            in_flight: in_flight.clone(),
            ok: journal_ok.clone(),
            metrics,
        };
        let withholds = journal.withholds_on_failure();
        let journal_thread = std::thread::Builder::new()
            .name("vitalgate-journal".into())
            .spawn(move || journal::run(journal, from_engine, release))
            .expect("the journal thread starts");
        let pipe = task::Pipe {
            to_journal,
            in_flight,
            receipts,
            withholds,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(task::run(state, rx, pipe, first, stop.clone()));
        (
            Engine {
                tx,
                ward: WardView(ward),
                instance,
                journal_ok,
                stop,
            },
            Running {
                task,
                journal: journal_thread,
            },
        )
    }

    /// Stop taking commands: those already queued are applied and their events
    /// released, then the engine and its journal thread end ([`Running::finished`]).
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Hand the engine a command, waiting while its queue is full.
    pub async fn send(&self, command: Command) -> Result<(), Stopped> {
        // Most commands find room: `try_send` takes a permit without making and
        // polling an acquire future (one per device message). Order holds: while
        // senders wait, freed permits go to them, so `try_send` finds none.
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => {
                self.tx.send(command).await.map_err(|_| Stopped)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stopped),
        }
    }

    /// Acknowledge alarm `id` for `by`, as a client limited to `scope`.
    pub async fn acknowledge(
        &self,
        id: u64,
        by: String,
        now_ms: u64,
        scope: SiteScope,
    ) -> Result<(), AckError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Acknowledge {
            id,
            by,
            now_ms,
            scope,
            reply,
        };
        if self.send(command).await.is_err() {
            return Err(AckError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(AckError::ShuttingDown))
    }

    /// Ask for a change to the ward and wait for its answer (`None`: the engine stopped).
    pub async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.send(command(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Wait until every event made so far is journaled and released (false: the
    /// engine stopped first).
    pub async fn flushed(&self) -> bool {
        self.ask(|reply| Command::Flush { reply }).await.is_some()
    }

    pub fn ward(&self) -> &WardView {
        &self.ward
    }

    /// This gateway run's id: `seq` values are comparable only within one instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// False after a failed journal commit, until one succeeds (shown by `/ready`).
    pub fn journal_ok(&self) -> bool {
        self.journal_ok.load(Ordering::Relaxed)
    }
}

impl Processed {
    /// The engine stopped before the message was applied.
    pub fn stopped() -> Processed {
        Processed::Refused {
            code: "shutting_down",
            detail: Stopped.to_string(),
        }
    }
}

/// Batches queued for the journal before the engine waits (while the journal is
/// busy, one per engine wake-up: a batch goes early only to an idle journal):
/// enough for many commits' worth of a storm, bounded so that a journal that has
/// stopped committing holds ingest back instead of memory.
const JOURNAL_QUEUE: usize = 1024;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod copies_tests;
