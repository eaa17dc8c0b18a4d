//! Cluster mode on NATS JetStream: the parts that scale the gateway past one
//! machine and one broker. `vitalgate` runs them with `[cluster] enabled = true`
//! ([`gateway`], docs/cluster.md); otherwise it runs single-node (embedded
//! broker or Mosquitto, SQLite journal), and nothing here changes that mode.
//!
//! # Design
//! - **Devices** publish MQTT QoS 1 to any NATS node's MQTT listener. The shipped
//!   NATS configuration (`deploy/nats/partitions.conf`) maps every
//!   `clinic.{site}.chair.{chair}.{kind}` subject into
//!   `vitalgate.p.{partition}.clinic.{site}.chair.{chair}.{kind}`, the partition a
//!   hash of site and chair, so one chair's messages are always in one partition.
//!   Each partition is read through a durable consumer on the MQTT listener's
//!   own replicated stream, because only that makes a device's PUBACK mean the
//!   reading is kept ([`streams`] says why, with the measurement), by the
//!   partition's owner only, and only while its lease holds ([`intake`]).
//! - **Partitions** are owned through leases ([`lease`], shared out by
//!   [`ownership`]): a key per partition in a
//!   replicated key-value bucket whose entries expire. The owner renews well before
//!   expiry and treats its lease as gone `margin` before the earliest instant
//!   another gateway could create it, measured from when it *sent* the renewal,
//!   so that a gateway that stalls (a SIGSTOP, a long pause) has stopped acting
//!   for the partition before anyone else may start.
//! - **Events** (alarm, session and limit frames) are journaled in one replicated
//!   stream ([`events`]) whose sequence is the `seq` dashboards see, each
//!   published with an id (`Nats-Msg-Id`) that the stream deduplicates, and
//!   never once the partition's lease has lapsed. The engine's journal in
//!   cluster mode is that stream ([`journal`]): a commit returns once every
//!   event is stored, so a device message is acknowledged only after the events
//!   it caused are in the stream. The PostgreSQL audit trail ([`audit_pg`])
//!   writes each event once, keyed by that sequence.
//! - **Dashboards** of every gateway get their events from the stream through
//!   the gateway's [`mirror`] (one [`feed`] per gateway), and their commands go
//!   to the chair's owner ([`dashboards`]): `seq` is the stream's sequence,
//!   global and the same on every gateway (a dashboard limited to some sites
//!   sees gaps where other sites' events are), and a `since` is served from
//!   the gateway's latest `websocket.replay_capacity` events.
//!
//! - **Device messages** of owned partitions go through the same intake as
//!   single-node mode into the engine ([`apply`]). When a partition is taken or
//!   goes ([`ownership::Change`]), the engine drops its chairs.
//! - **Takeover from snapshots**: every `snapshot_ms` the owner stores each
//!   changed chair's whole state (a condition's delay under way, a baseline
//!   being collected, trends, open alarms: [`crate::engine::ChairCopy`]) in a
//!   replicated bucket ([`snapshots`]) with the stream position of the last
//!   device message it reflects, and acknowledges a device message only once
//!   such a snapshot is stored ([`keeper`]), after its events are in the
//!   events stream. The messages after a chair's snapshot are so exactly those
//!   NATS still holds for it. A gateway taking a partition takes each chair
//!   back from its snapshot, then what the events stream says happened after
//!   it (an acknowledgement, a session change: [`mirror`]), then is handed the
//!   chair's messages after the snapshot before newer ones and applies them
//!   through the same engine on device time. A chair without a snapshot starts
//!   from its session and open alarms in the events stream, with the device
//!   time up to which the previous owner evaluated its readings (those handed
//!   out again change nothing).
//! - **Nothing raised twice**: alarm ids are derived from what raised them
//!   (chair, rule, the reading's device time: [`crate::core::alarm_id`]) and an
//!   alarm event's stream id from what it says ([`journal::event_id`]), so a
//!   reading the next owner evaluates again raises the same alarm under the same
//!   id, and the stream drops the repeat.

//! # NATS 2.10 or later
//! Leases need the server to serialise writes that expect a revision; 2.9.10
//! (Debian 12's) does not (see [`lease`]). Tested with 2.10.26.
//!
//! # Names and the cluster's limits
//! A NATS subject token cannot hold `.`: in cluster mode a site or chair name is
//! letters, digits, `_` and `-` only (single-node mode also allows `.`).

pub mod apply;
pub mod audit_pg;
pub mod dashboards;
pub mod events;
pub mod feed;
pub mod gateway;
pub mod intake;
pub mod journal;
pub mod keeper;
pub mod lag;
pub mod lease;
pub mod member;
pub mod mirror;
pub mod ownership;
pub mod snapshots;
pub mod streams;

use std::time::Duration;

/// The subjects the shipped mapping writes device messages to.
pub const READINGS_PREFIX: &str = "vitalgate.p";
/// The key-value bucket holding one lease per partition.
pub const LEASE_BUCKET: &str = "vitalgate_leases";
/// The key-value bucket where each gateway alive announces itself.
pub const MEMBER_BUCKET: &str = "vitalgate_gateways";

/// Pause between attempts at start-up (the partitions' consumers, the events
/// stream).
const STREAM_RETRY: Duration = Duration::from_secs(2);

/// `attempt` until it succeeds or fails otherwise than `waits` says NATS may
/// yet answer (a stream's or bucket's leader moving after a node was lost, the
/// MQTT stream not made yet): a gateway started then waits, logging `what`
/// every [`STREAM_RETRY`], rather than exiting.
pub(crate) async fn once_answered<T, E, F>(
    what: &str,
    waits: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let since = tokio::time::Instant::now();
    loop {
        match attempt().await {
            Err(e) if waits(&e) => {
                tracing::warn!(
                    error = %e,
                    waited_s = since.elapsed().as_secs(),
                    "{what}; trying again"
                );
                tokio::time::sleep(STREAM_RETRY).await;
            }
            done => return done,
        }
    }
}

/// A JetStream request that failed (not a settings conflict NATS reported
/// in another way): worth asking again at start-up.
pub(crate) fn unanswered(e: &ClusterError) -> bool {
    matches!(e, ClusterError::JetStream { .. })
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("JetStream {what}: {reason}")]
    JetStream { what: &'static str, reason: String },
    #[error("a cluster member's engine needs {0}")]
    Engine(&'static str),
    #[error("the {bucket} bucket keeps entries {found:?}, not the configured {configured:?}: every gateway must use one lease time (change it on all of them, and delete the bucket, while all are stopped)")]
    LeaseTime {
        bucket: &'static str,
        found: Duration,
        configured: Duration,
    },
    /// Asking again cannot help: an operator must act.
    #[error("{0}")]
    ConsumerSettings(String),
}

impl ClusterError {
    fn js(what: &'static str, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream {
            what,
            reason: e.to_string(),
        }
    }
}

/// The partition the shipped mapping puts chair `{site}/{chair}` in, out of
/// `partitions`: NATS's `{{partition(n,1,2)}}` is FNV-1a (32 bits) of the site
/// and chair tokens written one after the other, modulo n (nats-server's
/// `getHashPartition`). Checked against a running NATS in tests/cluster_nats.rs.
pub fn partition_of(chair_key: &str, partitions: u32) -> u32 {
    let (site, chair) = chair_key.split_once('/').unwrap_or((chair_key, ""));
    let hash = fnv1a(FNV_OFFSET_BASIS, site.as_bytes());
    fnv1a(hash, chair.as_bytes()) % partitions.max(1)
}

/// Where an FNV-1a (32 bits) hash starts.
const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;

/// FNV-1a, 32 bits, continuing from `hash` ([`FNV_OFFSET_BASIS`] to start).
fn fnv1a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Key-value bucket `name`, created if missing: one value per key, entries
/// expiring `ttl` after their last write, on file, in `replicas` copies. An
/// existing bucket is used as it is (a caller that depends on its settings
/// checks them).
async fn expiring_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    // Only a bucket that is not there is made: a lookup that failed otherwise
    // (a timeout while the cluster elects a leader) is an error, not a reason
    // to make the bucket again with this gateway's settings.
    match js.get_stream(format!("KV_{name}")).await {
        Ok(_) => {
            return js.get_key_value(name).await.map_err(|e| {
                ClusterError::js("opening a key-value bucket", format!("{name}: {e}"))
            })
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {}
        Err(e) => {
            return Err(ClusterError::js(
                "looking up a key-value bucket",
                format!("{name}: {e}"),
            ))
        }
    }
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        max_age: ttl,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::js("creating a key-value bucket", format!("{name}: {e}")))
}

/// Every key `kv` holds now (deleted and expired ones are not listed).
///
/// Read without a consumer: the subjects the bucket's stream holds (one
/// request to its leader), then each key's latest entry (direct gets, which
/// any replica answers), keeping the values and dropping the markers deleted
/// and purged keys leave. The client's own listing (`Store::keys`) makes an
/// ordered consumer each time, and after a node of the cluster was lost such
/// listings went unanswered for over a minute while leases and gets worked.
async fn keys_of(
    kv: &async_nats::jetstream::kv::Store,
    what: &'static str,
) -> Result<Vec<String>, ClusterError> {
    Ok(entries_of(kv, ">", what)
        .await?
        .into_iter()
        .map(|entry| entry.key)
        .collect())
}

/// The latest entry of every key of `kv` matching `filter` (a subject filter
/// on keys, `>` for all), in key order, read as [`keys_of`] says.
async fn entries_of(
    kv: &async_nats::jetstream::kv::Store,
    filter: &str,
    what: &'static str,
) -> Result<Vec<async_nats::jetstream::kv::Entry>, ClusterError> {
    use async_nats::jetstream::kv::Operation;
    use futures_util::TryStreamExt;
    let subjects: Vec<(String, usize)> = kv
        .stream
        .info_with_subjects(format!("{}{filter}", kv.prefix))
        .await
        .map_err(|e| ClusterError::js(what, e))?
        .try_collect()
        .await
        .map_err(|e| ClusterError::js(what, e))?;
    let latest = subjects.iter().filter_map(|(subject, _)| {
        let key = subject.strip_prefix(&kv.prefix)?.to_string();
        Some(async move { kv.entry(key.as_str()).await.map(|entry| (key, entry)) })
    });
    let mut entries = Vec::new();
    for found in futures_util::future::join_all(latest).await {
        match found.map_err(|e| ClusterError::js(what, e))? {
            (_, Some(entry)) if entry.operation == Operation::Put => entries.push(entry),
            _ => {}
        }
    }
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
}

/// Connect to the cluster (any of `servers`; the client follows the cluster's
/// own list of nodes once connected) and return its JetStream context.
pub async fn connect(
    servers: &[String],
    name: &str,
) -> Result<async_nats::jetstream::Context, ClusterError> {
    Ok(async_nats::jetstream::new(
        connect_client(servers, name).await?,
    ))
}

/// [`connect`], the client itself.
pub async fn connect_client(
    servers: &[String],
    name: &str,
) -> Result<async_nats::Client, ClusterError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| ClusterError::Connect {
            servers: servers.join(","),
            reason: e.to_string(),
        })
}

/// The partition of a device message's subject
/// (`vitalgate.p.{partition}.clinic.{site}.chair.{chair}.{kind}`, as mapped, or
/// with the `$MQTT.msgs.` prefix of the MQTT listener's stream), with the chair
/// key `{site}/{chair}` and the message kind.
pub fn parse_reading_subject(subject: &str) -> Option<(u32, String, &str)> {
    let subject = subject
        .strip_prefix(streams::MQTT_SUBJECT_PREFIX)
        .unwrap_or(subject);
    let rest = subject.strip_prefix(READINGS_PREFIX)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let partition = tokens.next()?.parse().ok()?;
    let (clinic, site, chair_word, chair, kind) = (
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
    );
    if clinic != "clinic" || chair_word != "chair" || tokens.next().is_some() {
        return None;
    }
    Some((partition, format!("{site}/{chair}"), kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readings_subject_names_partition_chair_and_kind() {
        assert_eq!(
            parse_reading_subject("vitalgate.p.7.clinic.north.chair.3.vitals"),
            Some((7, "north/3".to_string(), "vitals"))
        );
        assert_eq!(
            parse_reading_subject("$MQTT.msgs.vitalgate.p.7.clinic.north.chair.3.session"),
            Some((7, "north/3".to_string(), "session"))
        );
        for bad in [
            "vitalgate.p.x.clinic.north.chair.3.vitals",
            "vitalgate.p.7.clinic.north.chair.3",
            "vitalgate.p.7.clinic.north.chair.3.vitals.extra",
            "vitalgate.p.7.site.north.chair.3.vitals",
            "clinic.north.chair.3.vitals",
        ] {
            assert_eq!(parse_reading_subject(bad), None, "{bad}");
        }
    }
}
