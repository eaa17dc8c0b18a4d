//! The parts of one running gateway, assembled at start-up.

use crate::audit::Trail;
use crate::config::Config;
use crate::engine::Engine;
use crate::fanout::Dashboards;
use crate::ingest::Devices;
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::Instant;

pub use crate::clock::now_ms;
pub use crate::health::Health;

/// The gateway's parts, for the HTTP edge (which reports on all of them) and
/// start-up. The other edges are handed only the parts they use.
pub struct App {
    pub config: Config,
    /// The alarm engine: every change to alarm state goes through it.
    pub engine: Engine,
    /// The WebSocket edge's handle.
    pub dashboards: Arc<Dashboards>,
    /// The MQTT edge's handle.
    pub devices: Arc<Devices>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The durable audit trail, read by `/api/...`: the SQLite file the
    /// engine's journal writes, or in cluster mode PostgreSQL. `None` in
    /// cluster mode without `cluster.audit_postgres`.
    pub trail: Option<Arc<dyn Trail>>,
    started: Instant,
}

impl App {
    /// Build from a validated config and the edges' handles around a started engine.
    pub fn new(
        config: Config,
        dashboards: Arc<Dashboards>,
        devices: Arc<Devices>,
        trail: Option<Arc<dyn Trail>>,
    ) -> App {
        App {
            engine: dashboards.engine.clone(),
            metrics: dashboards.metrics.clone(),
            health: devices.health.clone(),
            dashboards,
            devices,
            trail,
            started: Instant::now(),
            config,
        }
    }

    /// Monotonic ms since this gateway started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
