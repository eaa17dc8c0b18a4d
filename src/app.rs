//! State shared by every edge of one running gateway.

use crate::audit::Audit;
use crate::config::Config;
use crate::core::DecodeLimits;
use crate::engine::Engine;
use crate::fanout::{Hub, LiveFeed};
use crate::http::auth::Authenticator;
use crate::ingest::Topics;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::now_ms;

/// What `/ready` reports.
#[derive(Debug)]
pub struct Health {
    mqtt_subscribed: watch::Sender<bool>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    /// Gateway time of the alarm timers' last completed tick, ms (0: none yet): the
    /// service watchdog's sign of life.
    last_tick_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            mqtt_subscribed: watch::Sender::new(false),
            listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn set_mqtt_subscribed(&self, v: bool) {
        self.mqtt_subscribed.send_replace(v);
    }
    /// Watch the broker subscription state (true once subscribed).
    pub fn watch_mqtt_subscribed(&self) -> watch::Receiver<bool> {
        self.mqtt_subscribed.subscribe()
    }
    pub fn set_listening(&self, v: bool) {
        self.listening.store(v, Ordering::SeqCst);
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn mqtt_subscribed(&self) -> bool {
        *self.mqtt_subscribed.borrow()
    }
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
    /// The alarm timers completed a tick at gateway time `now_ms`.
    pub fn ticked(&self, now_ms: u64) {
        self.last_tick_ms.store(now_ms, Ordering::Relaxed);
    }
    pub fn last_tick_ms(&self) -> u64 {
        self.last_tick_ms.load(Ordering::Relaxed)
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
    /// Broker connected and subscribed, listeners bound, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.mqtt_subscribed() && self.listening() && !self.is_shutting_down()
    }
}

pub struct App {
    pub config: Config,
    /// The alarm engine: every change to alarm state goes through it.
    pub engine: Engine,
    pub hub: Arc<Hub>,
    pub live: Arc<LiveFeed>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    pub topics: Topics,
    /// The durable audit trail, read by `/api/...` (the engine's journal writes it).
    pub audit: Arc<Audit>,
    /// Checks every `/ws` and `/api/...` request.
    pub auth: Authenticator,
    pub decode_limits: DecodeLimits,
    /// Cancelled once ingest has stopped: dashboards flush their queues and close.
    /// A child of `force_close`, so that the grace running out always reaches a
    /// dashboard's writer, which waits on one token below this one.
    pub close_dashboards: CancellationToken,
    /// Cancelled when the shutdown grace period is over: dashboards still draining
    /// stop writing and are dropped.
    pub force_close: CancellationToken,
    /// Every dashboard connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Dashboards connected or upgrading, against `websocket.max_connections`.
    pub dashboards: std::sync::atomic::AtomicUsize,
    started: Instant,
}

/// The fan-out and engine an [`App`] is built around.
pub struct Parts {
    pub engine: Engine,
    pub hub: Arc<Hub>,
    pub live: Arc<LiveFeed>,
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Build from a validated config and a started engine.
    pub fn new(
        config: Config,
        parts: Parts,
        topics: Topics,
        audit: Arc<Audit>,
        auth: Authenticator,
    ) -> App {
        let force_close = CancellationToken::new();
        App {
            engine: parts.engine,
            hub: parts.hub,
            live: parts.live,
            metrics: parts.metrics,
            health: Health::default(),
            topics,
            audit,
            auth,
            decode_limits: DecodeLimits {
                max_payload_bytes: config.ingest.max_payload_bytes,
                max_future_skew_ms: config.ingest.max_future_skew_ms,
            },
            close_dashboards: force_close.child_token(),
            force_close,
            connections: TaskTracker::new(),
            dashboards: std::sync::atomic::AtomicUsize::new(0),
            started: Instant::now(),
            config,
        }
    }

    /// Monotonic ms since this gateway started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
