//! What the WebSocket edge needs of the gateway, and nothing more: every
//! connection holds one of these.

use super::{Hub, LiveFeed};
use crate::config::WebSocketConfig;
use crate::engine::Engine;
use crate::telemetry::Metrics;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Dashboards {
    /// Commands (acknowledge, sessions, limits, subscriptions) go here.
    pub engine: Engine,
    pub hub: Arc<Hub>,
    pub live: Arc<LiveFeed>,
    pub metrics: Arc<Metrics>,
    pub config: WebSocketConfig,
    /// Cancelled once ingest has stopped: dashboards flush their queues and close.
    /// A child of `force_close`, so that the grace running out always reaches a
    /// dashboard's writer, which waits on one token below this one.
    pub close: CancellationToken,
    /// Cancelled when the shutdown grace period is over: dashboards still draining
    /// stop writing and are dropped.
    pub force_close: CancellationToken,
    /// Every dashboard connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Dashboards connected or upgrading, against `websocket.max_connections`.
    pub count: AtomicUsize,
    started: Instant,
}

impl Dashboards {
    pub fn new(
        engine: Engine,
        hub: Arc<Hub>,
        live: Arc<LiveFeed>,
        metrics: Arc<Metrics>,
        config: WebSocketConfig,
    ) -> Dashboards {
        let force_close = CancellationToken::new();
        Dashboards {
            engine,
            hub,
            live,
            metrics,
            config,
            close: force_close.child_token(),
            force_close,
            connections: TaskTracker::new(),
            count: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    /// Monotonic ms since the fan-out started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
