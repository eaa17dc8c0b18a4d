//! What the WebSocket edge needs of the gateway, and nothing more: every
//! connection holds one of these.

use super::{Backend, Hub, LiveFeed};
use crate::config::WebSocketConfig;
use crate::engine::Engine;
use crate::telemetry::Metrics;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Dashboards {
    /// The local engine: live vitals are read from its ward.
    pub engine: Engine,
    /// Subscriptions and commands (acknowledge, sessions, limits, snapshots).
    pub backend: Arc<dyn Backend>,
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
        backend: Arc<dyn Backend>,
        hub: Arc<Hub>,
        live: Arc<LiveFeed>,
        metrics: Arc<Metrics>,
        config: WebSocketConfig,
    ) -> Dashboards {
        let force_close = CancellationToken::new();
        Dashboards {
            engine,
            backend,
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

    /// Tell every dashboard to flush what is queued for it and close (1001);
    /// after `grace`, drop those still draining, waiting `close_timeout` more
    /// for them to go.
    pub async fn close_all(&self, grace: std::time::Duration, close_timeout: std::time::Duration) {
        self.close.cancel();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.connections.len(),
                "grace period over: dropping dashboards that did not drain"
            );
            self.force_close.cancel();
            let _ = tokio::time::timeout(close_timeout, self.connections.wait()).await;
        }
    }

    /// Monotonic ms since the fan-out started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
