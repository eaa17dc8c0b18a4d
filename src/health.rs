//! What `/ready` and the service watchdog report, set by the edges and the timers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;

/// What `/ready` reports.
#[derive(Debug)]
pub struct Health {
    mqtt_subscribed: watch::Sender<bool>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    /// Gateway time of the alarm timers' last completed tick, ms (0: none yet): the
    /// service watchdog's sign of life.
    last_tick_ms: AtomicU64,
    /// In cluster mode: the partitions this gateway owns, and whether the
    /// events stream answered lately. `None` for a single gateway.
    cluster: std::sync::Mutex<Option<ClusterHealth>>,
}

/// What `/ready` says of a gateway in cluster mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterHealth {
    /// The partitions whose leases this gateway holds now.
    pub partitions: Vec<u32>,
    /// The events stream answered its last check.
    pub stream_reachable: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            mqtt_subscribed: watch::Sender::new(false),
            listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(0),
            cluster: std::sync::Mutex::new(None),
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
    /// In cluster mode: what the cluster looks like from here now.
    pub fn set_cluster(&self, now: ClusterHealth) {
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }
    /// `None` for a single gateway.
    pub fn cluster(&self) -> Option<ClusterHealth> {
        self.cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Broker connected and subscribed, listeners bound, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.mqtt_subscribed() && self.listening() && !self.is_shutting_down()
    }
}
