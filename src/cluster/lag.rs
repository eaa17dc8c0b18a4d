//! How far behind this gateway's cluster work is, read every [`EVERY`] into
//! the lag gauges of [`ClusterMetrics`]: device messages of its partitions
//! not yet acknowledged, events in the stream its mirror (so its dashboards)
//! has not read, and events the audit writers have not written.
//!
//! Each reading asks the consumers' leaders (the events stream's position the
//! mirror keeps asking itself), each gauge's questions apart: a question not
//! answered within [`EVERY`] (a leader moving) leaves its own gauge as it was
//! and is asked again next time, without holding the others back.

use super::audit_pg::AUDIT_CONSUMER;
use super::events::EVENTS_STREAM;
use super::mirror::Mirror;
use super::ownership::Owned;
use super::streams::{partition_consumer_name, MQTT_STREAM};
use crate::telemetry::ClusterMetrics;
use async_nats::jetstream::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the gauges are read.
pub const EVERY: Duration = Duration::from_secs(5);

/// What the lag is read of.
pub struct LagSources {
    pub js: Context,
    pub owned: watch::Receiver<Owned>,
    pub mirror: Arc<Mirror>,
    /// Whether this gateway writes the audit trail (reads its consumer's lag).
    pub audit: bool,
}

/// Read the gauges every [`EVERY`] until `stop`.
pub async fn report(sources: LagSources, metrics: ClusterMetrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(unread) = sources.mirror.unread() {
            metrics.events_unread.set(unread as f64);
        }
        let devices = read_into(
            &metrics.device_messages_pending,
            device_messages_pending(&sources),
            "the partitions' consumers",
        );
        let audit = async {
            if sources.audit {
                let asked = consumer_pending(&sources.js, EVENTS_STREAM, AUDIT_CONSUMER);
                read_into(&metrics.audit_pending, asked, "the audit consumer").await;
            }
        };
        tokio::join!(devices, audit);
    }
}

/// Set `gauge` to what `asked` answers within [`EVERY`]; left as it was when
/// `of` does not answer in time (or not at all).
async fn read_into(
    gauge: &metrics::Gauge,
    asked: impl std::future::Future<Output = Option<u64>>,
    of: &str,
) {
    match tokio::time::timeout(EVERY, asked).await {
        Ok(Some(pending)) => gauge.set(pending as f64),
        _ => tracing::debug!(of, "cluster lag: no answer in time; read again next time"),
    }
}

/// The unacknowledged messages of the partitions owned now; `None` if any
/// consumer did not answer.
async fn device_messages_pending(sources: &LagSources) -> Option<u64> {
    let owned: Vec<u32> = sources.owned.borrow().keys().copied().collect();
    let asked = owned.iter().map(|p| {
        let name = partition_consumer_name(*p);
        async move { consumer_pending(&sources.js, MQTT_STREAM, &name).await }
    });
    futures_util::future::join_all(asked)
        .await
        .into_iter()
        .sum()
}

/// A consumer's messages not delivered yet plus those delivered and not
/// acknowledged.
async fn consumer_pending(js: &Context, stream: &str, consumer: &str) -> Option<u64> {
    let stream = js.get_stream(stream).await.ok()?;
    let info = stream.consumer_info(consumer).await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}
