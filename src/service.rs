//! The service manager's view of the gateway (systemd's `sd_notify` protocol, as
//! deploy/systemd/vitalgate.service uses it): `READY=1` once the gateway listens,
//! `STATUS=` with the broker's state, `WATCHDOG=1` while the gateway is alive, and
//! `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` (not started by systemd) all of
//! it is a no-op.
//!
//! Alive means more than "the process runs": the alarm timers' loop (which takes the
//! ward and the hub in turn, every `alarms.tick_ms`) has completed a tick within
//! half the watchdog period. A gateway deadlocked on a lock, or a runtime whose
//! workers are all blocked, stops pinging, and systemd restarts it; the restarted
//! gateway takes back its open alarms from the audit trail.

use crate::app::{now_ms, App};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Send `state` to the service manager, off the runtime (a datagram to a Unix
/// socket that a stalled manager could leave full).
async fn notify(state: Vec<NotifyState<'static>>) {
    let sent = tokio::task::spawn_blocking(move || sd_notify::notify(&state)).await;
    if let Ok(Err(e)) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Whether the timers' last tick (`last_tick_ms`, gateway time) is recent enough to
/// ping a watchdog of `period`.
pub fn alive(last_tick_ms: u64, now_ms: u64, period: Duration) -> bool {
    last_tick_ms > 0 && now_ms.saturating_sub(last_tick_ms) < period.as_millis() as u64 / 2
}

/// Tell the service manager the gateway is up, then keep its watchdog fed while the
/// gateway is alive and its status current, until `stop`.
pub async fn run(app: Arc<App>, stop: CancellationToken) {
    notify(vec![NotifyState::Ready]).await;
    let watchdog = sd_notify::watchdog_enabled();
    // Ping at a quarter of the period: two pings may be lost or late before systemd
    // acts. Without a watchdog, only the status is kept current.
    let every = watchdog.map_or(Duration::from_secs(5), |w| w / 4);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut subscribed = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut states = Vec::new();
        let now = app.health.mqtt_subscribed();
        if subscribed != Some(now) {
            subscribed = Some(now);
            states.push(NotifyState::Status(if now {
                "subscribed to the broker; alarms flowing"
            } else {
                "NOT subscribed to the broker: no readings arrive"
            }));
        }
        if let Some(period) = watchdog {
            if alive(app.health.last_tick_ms(), now_ms(), period) {
                states.push(NotifyState::Watchdog);
            } else {
                tracing::error!(
                    last_tick_ms = app.health.last_tick_ms(),
                    "alarm timers have not run for half the watchdog period: not pinging it"
                );
            }
        }
        if !states.is_empty() {
            notify(states).await;
        }
    }
    notify(vec![NotifyState::Stopping]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_while_the_timers_ticked_within_half_the_period() {
        let period = Duration::from_secs(30);
        assert!(alive(100_000, 110_000, period));
        assert!(!alive(100_000, 115_000, period), "15 s is half of 30");
        assert!(!alive(0, 1_000, period), "never ticked");
        assert!(
            alive(100_000, 99_000, period),
            "a clock stepped back is no hang"
        );
    }
}
