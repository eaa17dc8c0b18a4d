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
