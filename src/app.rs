//! State shared by every edge of one running gateway.

use crate::audit::Audit;
use crate::config::Config;
use crate::core::{DecodeLimits, RuleSet, Ward};
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
    pub ward: Ward,
    pub hub: Hub,
    pub live: LiveFeed,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    pub topics: Topics,
    /// The durable audit trail (also behind the hub).
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
    /// Held from a change to the ward until its events are published (see
    /// [`App::in_order`]).
    sequencer: std::sync::Mutex<()>,
    started: Instant,
}

impl App {
    /// Build from a validated config.
    pub fn new(
        config: Config,
        rules: RuleSet,
        topics: Topics,
        audit: Arc<Audit>,
        auth: Authenticator,
    ) -> App {
        let metrics = Arc::new(Metrics::new());
        let force_close = CancellationToken::new();
        App {
            ward: Ward::with_alarm_ids_after(
                Arc::new(rules),
                config.ingest.max_chairs,
                now_ms().saturating_mul(1_000),
            ),
            hub: Hub::new(
                config.websocket.replay_capacity,
                metrics.clone(),
                Some(audit.clone()),
            ),
            live: LiveFeed::new(config.websocket.live_log_capacity),
            metrics,
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
            sequencer: std::sync::Mutex::new(()),
            started: Instant::now(),
            config,
        }
    }

    /// Send live-vitals subscribers the chair's values after a session change: a
    /// chair whose patient left has forgotten them.
    pub fn publish_live(&self, chair: &str) {
        if let Some(view) = self.ward.chair(chair) {
            self.live.publish(&view.chair, &view.latest, Instant::now());
        }
    }

    /// Hold this from a change to the ward until its events are published.
    ///
    /// The ward builds a chair's events under the chair's map guard, but they are
    /// published after it is released (the hub lock is never taken under a map guard:
    /// subscribing reads the map under the hub lock). Without one order for the
    /// whole change, a timer's `raised` and a reading's `cleared` for the same alarm
    /// could reach the hub the wrong way round and leave an alarm that never clears.
    /// Ingest and the timer are one task each, so this is rarely contended.
    pub fn in_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sequencer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Monotonic ms since this gateway started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
