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

use crate::app::App;
use crate::clock::now_ms;
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

/// What the timers' last tick (`last_tick_ms`, gateway time; 0: none yet) says of
/// a gateway up for `uptime_ms`, against a watchdog of `period`.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Ticked within half the period: ping.
    Alive,
    /// Not ticked yet, within half a period of the start: neither ping nor worry.
    Starting,
    /// Hung: no ping, so that systemd restarts the gateway.
    Hung,
}

pub fn liveness(last_tick_ms: u64, now_ms: u64, uptime_ms: u64, period: Duration) -> Liveness {
    let half = period.as_millis() as u64 / 2;
    match last_tick_ms {
        0 if uptime_ms < half => Liveness::Starting,
        0 => Liveness::Hung,
        t if now_ms.saturating_sub(t) < half => Liveness::Alive,
        _ => Liveness::Hung,
    }
}

fn status(subscribed: bool) -> NotifyState<'static> {
    NotifyState::Status(if subscribed {
        "subscribed to the broker; alarms flowing"
    } else {
        "NOT subscribed to the broker: no readings arrive"
    })
}

/// Tell the service manager the gateway is up, then keep its watchdog fed while the
/// gateway is alive, and its status current (at once when the broker subscription
/// changes), until `stop`.
pub async fn run(app: Arc<App>, stop: CancellationToken) {
    let mut subscribed = app.health.watch_mqtt_subscribed();
    let now = *subscribed.borrow_and_update();
    notify(vec![NotifyState::Ready, status(now)]).await;
    let watchdog = sd_notify::watchdog_enabled();
    // Ping at a quarter of the period: two pings may be lost or late before systemd
    // acts. Without a watchdog, only the status is kept current.
    let every = watchdog.map_or(Duration::from_secs(5), |w| w / 4);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = subscribed.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *subscribed.borrow_and_update();
                notify(vec![status(now)]).await;
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(period) = watchdog else { continue };
        let last = app.health.last_tick_ms();
        match liveness(last, now_ms(), app.uptime_ms(), period) {
            Liveness::Alive => notify(vec![NotifyState::Watchdog]).await,
            Liveness::Starting => {}
            Liveness::Hung => tracing::error!(
                last_tick_ms = last,
                "alarm timers have not run for half the watchdog period: not pinging it"
            ),
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
        let up = 600_000;
        assert_eq!(liveness(100_000, 110_000, up, period), Liveness::Alive);
        assert_eq!(
            liveness(100_000, 115_000, up, period),
            Liveness::Hung,
            "15 s is half of 30"
        );
        assert_eq!(
            liveness(100_000, 99_000, up, period),
            Liveness::Alive,
            "a clock stepped back is no hang"
        );
    }

    #[test]
    fn a_gateway_that_has_not_ticked_yet_is_starting_for_half_a_period() {
        let period = Duration::from_secs(30);
        assert_eq!(liveness(0, 1_000, 10, period), Liveness::Starting);
        assert_eq!(liveness(0, 1_000, 14_999, period), Liveness::Starting);
        assert_eq!(liveness(0, 1_000, 15_000, period), Liveness::Hung);
    }
}
