//! Where device messages are read from in cluster mode, and why there.
//!
//! A device's PUBACK must mean its reading is kept. NATS's MQTT listener sends
//! the PUBACK for a QoS 1 publish after storing the message in its own
//! replicated stream (`$MQTT_msgs`) for every durable consumer interested in
//! the subject, and only for those: with no interested consumer the message is
//! not kept there. A user stream capturing the same subject gets an ordinary
//! copy, sent on without waiting: after the node a device published through was
//! killed, a stream on `vitalgate.p.>` held only 176 to 186 of the 250 messages
//! the device had been acknowledged in 4 of 7 runs on NATS 2.9.10
//! (tests/cluster_nats.rs); the partitions' consumers delivered every one. On
//! 2.10.26 no such loss was seen in the runs made, but the copy is still not
//! waited for (nats-server's `mqttProcessPub`).
//!
//! So each partition has a durable, replicated pull consumer on `$MQTT_msgs`
//! filtered to its subjects, created before devices publish, read by the
//! partition's owner and acknowledged once the reading's effects are journaled;
//! unacknowledged messages go to the next owner. Messages stay in `$MQTT_msgs`
//! (interest retention) until every such consumer has acknowledged them.

use super::{ClusterError, READINGS_PREFIX};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::Context;
use std::time::Duration;

/// The MQTT listener's own stream of QoS 1 messages (NATS names it).
pub const MQTT_STREAM: &str = "$MQTT_msgs";
/// How its subjects begin: `$MQTT.msgs.` and the message's NATS subject.
pub const MQTT_SUBJECT_PREFIX: &str = "$MQTT.msgs.";

/// The durable consumer name of `partition`.
pub fn partition_consumer_name(partition: u32) -> String {
    format!("vitalgate_p{partition}")
}

/// The durable consumer of `partition` on [`MQTT_STREAM`], created if missing
/// (`replicas` copies of its state). `ack_wait` is how long a message handed to
/// the partition's owner may go unacknowledged before it is handed out again:
/// no longer than the lease's margin, so that a dead owner's messages are due
/// again by the time its partition can be taken over
/// ([`super::intake::ReadSettings::for_leases`]). The first gateway to create a consumer
/// sets these. The stream itself exists once a first MQTT client has connected
/// to the cluster; until then this fails.
pub async fn partition_consumer(
    js: &Context,
    partition: u32,
    replicas: usize,
    ack_wait: Duration,
) -> Result<PullConsumer, ClusterError> {
    partition_consumer_acking(js, partition, replicas, ack_wait, AckPolicy::Explicit).await
}

/// [`partition_consumer`] acknowledged as `ack_policy` says.
pub async fn partition_consumer_acking(
    js: &Context,
    partition: u32,
    replicas: usize,
    ack_wait: Duration,
    ack_policy: AckPolicy,
) -> Result<PullConsumer, ClusterError> {
    let stream = js
        .get_stream(MQTT_STREAM)
        .await
        .map_err(|e| ClusterError::js("finding the MQTT listener's stream", e))?;
    let name = partition_consumer_name(partition);
    let filter = format!("{MQTT_SUBJECT_PREFIX}{READINGS_PREFIX}.{partition}.>");
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "vitalgate: device messages of partition {partition}"
                )),
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy,
                ack_wait,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ClusterError::js("creating a partition's consumer", e))?;
    // Made by another gateway (or an earlier build) with other settings: a
    // different ack_wait would break the takeover timing, another filter
    // would read the wrong messages.
    let made = &consumer.cached_info().config;
    if made.filter_subject != filter || made.ack_wait != ack_wait || made.ack_policy != ack_policy {
        return Err(ClusterError::ConsumerSettings(format!(
            "the partition consumer {name} reads {:?} with ack_wait {:?} and {:?} acknowledgements, not {filter:?} with {ack_wait:?} and {ack_policy:?} (every gateway must use one lease_margin_ms): delete it while no gateway runs",
            made.filter_subject, made.ack_wait, made.ack_policy
        )));
    }
    Ok(consumer)
}

/// Every partition's consumer, as a gateway makes sure of at start-up: a
/// device message published while none is interested in it is not kept.
pub async fn partition_consumers(
    js: &Context,
    partitions: u32,
    replicas: usize,
    ack_wait: Duration,
) -> Result<(), ClusterError> {
    for partition in 0..partitions {
        partition_consumer(js, partition, replicas, ack_wait).await?;
    }
    Ok(())
}
