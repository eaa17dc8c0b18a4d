//! The alarm timers: every `alarms.tick_ms` the engine judges timed conditions
//! (stale data, device offline, pump without SpO2, discharge readiness), sends
//! due escalations and reminders, and forgets idle chairs.

use crate::app::{self, App};
use crate::engine;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every `alarms.tick_ms`: judge timed conditions (stale data, device offline, pump
/// without SpO2, discharge readiness), send due escalations and reminders, and forget
/// chairs idle for `ingest.forget_idle_chair_ms`.
pub async fn run(app: Arc<App>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(app.config.alarms.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = app::now_ms();
        let Some(ticked) = app
            .engine
            .ask(|reply| engine::Command::Tick { now_ms: now, reply })
            .await
        else {
            return;
        };
        let m = &app.metrics;
        m.chairs_forgotten.increment(ticked.forgotten as u64);
        m.chairs.set(ticked.chairs as f64);
        m.chairs_silent.set(ticked.silent as f64);
        // The engine answered: the service watchdog's sign of life.
        app.health.ticked(now);
        m.timers_last_tick.set(now as f64 / 1000.0);
    }
}
