//! The floor: the same publishers into the same broker, received by a bare MQTT
//! subscriber that does nothing else. What vitalgate adds on top of this is what it
//! owns.

use crate::dashboards::{DashboardStats, Seen};
use crate::devices::SentLog;
use rumqttc::{Event, Packet, QoS};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// `{prefix}/site3/chair/c17/vitals` → 17.
fn chair_of(topic: &str) -> Option<u32> {
    topic.split('/').nth(3)?.strip_prefix('c')?.parse().ok()
}

/// The `ts` field of a payload this harness wrote.
fn ts_of(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = &text[text.find("\"ts\":")? + 5..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

/// Subscribe like the gateway does (QoS 1, TCP_NODELAY) and time every breach
/// reading's arrival, as a dashboard times its alarm.
pub async fn subscribe(
    broker: (String, u16),
    prefix: String,
    log: Arc<SentLog>,
    stats: Arc<DashboardStats>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::new(false);
    let (client, mut events) = crate::devices::connect("floor", broker, |_| {});
    let _ = client
        .subscribe(format!("{prefix}/+/chair/+/vitals"), QoS::AtLeastOnce)
        .await;
    let mut announced = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::SubAck(_))) if !announced => {
                announced = true;
                let _ = ready.send(()).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = Instant::now();
                let (Some(chair), Some(ts)) = (chair_of(&p.topic), ts_of(&p.payload)) else {
                    continue;
                };
                if let Some(sent) = log.breach(chair, ts) {
                    stats.alarms.fetch_add(1, Ordering::Relaxed);
                    if seen.note_breach(chair, &sent, at) {
                        stats.breach_deliveries.fetch_add(1, Ordering::Relaxed);
                    } else {
                        seen.duplicates += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                seen.error = Some(format!("subscriber connection: {e}"));
                break;
            }
        }
    }
    if !announced {
        let _ = ready.send(()).await;
    }
    let _ = client.try_disconnect();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_devices_write() {
        assert_eq!(chair_of("clinic/site3/chair/c17/vitals"), Some(17));
        assert_eq!(
            ts_of(br#"{"seq":4,"ts":1764000000123,"hr":80}"#),
            Some(1764000000123)
        );
    }
}
