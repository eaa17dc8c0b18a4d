//! Where device messages are read from in cluster mode, and why there.
//!
//! A device's PUBACK must mean its reading is kept. NATS's MQTT listener sends
//! the PUBACK for a QoS 1 publish after storing the message in its own
//! replicated stream (`$MQTT_msgs`) for every durable consumer interested in
//! the subject, and only for those: with no interested consumer the message is
//! not kept there. A user stream capturing the same subject gets an ordinary
//! copy, sent on without waiting: after the node a device published through was
//! killed, a stream on `vitalgate.p.>` held only 176 to 186 of the 250 messages
//! the device had been acknowledged in 4 of 8 runs (NATS 2.9.10,
//! tests/cluster_nats.rs); the partitions' consumers delivered every one.
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

/// How long a message handed to a partition's owner may go unacknowledged
/// before it is handed out again (to the same or the next owner).
pub const DEVICE_ACK_WAIT: Duration = Duration::from_secs(30);

/// The durable consumer name of `partition`.
pub fn partition_consumer_name(partition: u32) -> String {
    format!("vitalgate_p{partition}")
}

/// The durable consumer of `partition` on [`MQTT_STREAM`], created if missing
/// (`replicas` copies of its state). The stream itself exists once a first MQTT
/// client has connected to the cluster; until then this fails.
pub async fn partition_consumer(
    js: &Context,
    partition: u32,
    replicas: usize,
) -> Result<PullConsumer, ClusterError> {
    let stream = js
        .get_stream(MQTT_STREAM)
        .await
        .map_err(|e| ClusterError::js("finding the MQTT listener's stream", e))?;
    let name = partition_consumer_name(partition);
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "vitalgate: device messages of partition {partition}"
                )),
                filter_subject: format!("{MQTT_SUBJECT_PREFIX}{READINGS_PREFIX}.{partition}.>"),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: DEVICE_ACK_WAIT,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ClusterError::js("creating a partition's consumer", e))
}
