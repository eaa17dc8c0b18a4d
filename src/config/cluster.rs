//! `[cluster]`: cluster mode on NATS JetStream (docs/cluster.md). Off by
//! default: one gateway with its MQTT broker and SQLite audit trail.

use serde::{Deserialize, Serialize};

/// `[cluster]`: how this gateway takes part in a cluster of gateways on NATS
/// JetStream. `partitions`, `lease_ms`, `lease_margin_ms`, `round_ms`,
/// `replicas`, `read_ahead` and `snapshot_ms` must be the same on every gateway
/// of the cluster; `enabled`, `servers`, `name`, `audit_postgres` and
/// `since_from_stream_max` are each gateway's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Off by default.
    pub enabled: bool,
    /// NATS servers to connect to (any of them: the client learns the others),
    /// e.g. `nats://10.0.0.1:4222`.
    pub servers: Vec<String>,
    /// This gateway's name, unique in the cluster: its leases carry it. Letters,
    /// digits, `-` and `_`.
    pub name: String,
    /// Partitions of the NATS mapping (`deploy/nats/partitions.conf`): the
    /// same number there and on every gateway.
    pub partitions: u32,
    /// Lease time, ms: how long a partition's owner may go unheard before
    /// another gateway takes the partition over.
    pub lease_ms: u64,
    /// A lease is treated as gone this long before another gateway could take
    /// it; also how long a device message may go unacknowledged before NATS
    /// hands it out again, ms.
    pub lease_margin_ms: u64,
    /// How often leases are renewed and shares of partitions reconsidered, ms.
    pub round_ms: u64,
    /// Copies of every stream, bucket and durable consumer this gateway makes:
    /// 3 on a 3-node cluster.
    pub replicas: usize,
    /// Device messages read ahead of the engine.
    pub read_ahead: usize,
    /// How often each changed chair's snapshot is stored, ms: a partition's
    /// next owner takes its chairs back from their snapshots, and a device
    /// message is acknowledged once one reflecting it is stored.
    pub snapshot_ms: u64,
    /// PostgreSQL connection string of the audit trail (every event of the
    /// events stream, written once); empty: this gateway does not write it.
    pub audit_postgres: String,
    /// Most events a dashboard resuming with `since` is sent from the events
    /// stream when its `since` is older than the latest
    /// `websocket.replay_capacity` events this gateway keeps in memory; a
    /// dashboard further behind gets `missed` and a snapshot. 0: never read
    /// from the stream.
    pub since_from_stream_max: usize,
}

impl ClusterConfig {
    /// What is wrong with the section, as `(key, problem)` pairs. Nothing is
    /// checked while cluster mode is off.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        let mut check = |ok: bool, key: &str, problem: &str| {
            if !ok {
                problems.push((format!("cluster.{key}"), problem.to_string()));
            }
        };
        check(
            !self.servers.is_empty() && self.servers.iter().all(|s| !s.trim().is_empty()),
            "servers",
            "must list at least one NATS server",
        );
        check(
            !self.name.is_empty()
                && self.name.len() <= 64
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "name",
            "must be 1-64 letters, digits, '-' or '_', unique in the cluster",
        );
        check(
            (1..=1024).contains(&self.partitions),
            "partitions",
            "must be 1-1024, as in the NATS mapping",
        );
        check(
            (1_000..=300_000).contains(&self.lease_ms),
            "lease_ms",
            "must be 1000-300000",
        );
        check(
            self.lease_margin_ms >= 500 && self.lease_margin_ms * 2 <= self.lease_ms,
            "lease_margin_ms",
            // It is also how long a device message may go unacknowledged
            // before NATS hands it out again: shorter than a commit's usual
            // time, and every message would come twice.
            "must be at least 500 and at most half of cluster.lease_ms",
        );
        // A lease is renewed several times within the part of it that counts.
        check(
            self.round_ms >= 50
                && self.round_ms * 3 <= self.lease_ms.saturating_sub(self.lease_margin_ms),
            "round_ms",
            "must be at least 50 and at most a third of cluster.lease_ms - cluster.lease_margin_ms",
        );
        check(
            (1..=5).contains(&self.replicas),
            "replicas",
            "must be 1-5 (the cluster's nodes, at most)",
        );
        check(
            self.since_from_stream_max <= 10_000_000,
            "since_from_stream_max",
            "must be at most 10000000",
        );
        check(
            self.snapshot_ms >= 50 && self.snapshot_ms * 2 <= self.lease_margin_ms,
            "snapshot_ms",
            "must be at least 50 and at most half of cluster.lease_margin_ms (a device message waits up to this long, unacknowledged, and NATS hands it out again after lease_margin_ms)",
        );
        check(
            (1..=1_000_000).contains(&self.read_ahead),
            "read_ahead",
            "must be 1-1000000",
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            enabled: true,
            name: "gw-1".into(),
            ..crate::Config::default().cluster
        }
    }

    #[test]
    fn the_shipped_section_is_off_and_valid_once_named() {
        assert!(!crate::Config::default().cluster.enabled);
        assert_eq!(on().problems(), Vec::new());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: [(ClusterConfig, &str); 7] = [
            (
                ClusterConfig {
                    name: String::new(),
                    ..on()
                },
                "cluster.name",
            ),
            (
                ClusterConfig {
                    name: "gw.1".into(),
                    ..on()
                },
                "cluster.name",
            ),
            (
                ClusterConfig {
                    servers: vec![],
                    ..on()
                },
                "cluster.servers",
            ),
            (
                ClusterConfig {
                    partitions: 0,
                    ..on()
                },
                "cluster.partitions",
            ),
            (
                ClusterConfig {
                    lease_margin_ms: 6_000,
                    ..on()
                },
                "cluster.lease_margin_ms",
            ),
            (
                ClusterConfig {
                    round_ms: 4_000,
                    ..on()
                },
                "cluster.round_ms",
            ),
            (
                ClusterConfig {
                    replicas: 0,
                    ..on()
                },
                "cluster.replicas",
            ),
        ];
        for (config, key) in cases {
            let problems = config.problems();
            assert_eq!(
                problems.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                vec![key],
                "{config:?}"
            );
        }
    }
}
