//! Metrics: one Prometheus recorder per gateway instance (no global recorder, so
//! several gateways in one process — as in the tests — each report their own), with
//! handles registered once so the hot path never looks a metric up by name.

use crate::core::{AlarmState, Priority, RejectReason};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::time::Duration;

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A takeover's buckets in seconds: a partition is taken once its lease
/// expired (10 s by default), and restoring its chairs may wait for NATS.
const TAKEOVER_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
];

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Every metric the gateway exports. Names are part of the operations contract
/// (`docs/protocol.md`).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub readings_ingested: Counter,
    pub readings_duplicate: Counter,
    pub readings_late_values: Counter,
    pub device_clock_steps: Counter,
    rejected: Vec<(RejectReason, Counter)>,
    alarm_events: Vec<(Priority, AlarmState, Counter)>,
    pub ws_clients: Gauge,
    pub ws_slow_disconnects: Counter,
    pub ws_connections_total: Counter,
    pub ws_commands_rejected: Counter,
    pub ws_refused_max_connections: Counter,
    pub ws_closed_command_rate: Counter,
    ws_refused_auth: Vec<(&'static str, Counter)>,
    pub mqtt_connected: Gauge,
    pub mqtt_connect_attempts: Counter,
    pub mqtt_connection_errors: Counter,
    pub device_to_ingest: Histogram,
    pub ingest_to_ws_send: Histogram,
    pub session_events: Counter,
    pub session_rejected: Counter,
    pub status_messages: Counter,
    pub alarm_escalations: Counter,
    pub alarm_reminders: Counter,
    pub audit_errors: Counter,
    pub journal_commit: Histogram,
    pub journal_commits: Counter,
    pub ingest_to_release: Histogram,
    pub chairs: Gauge,
    pub chairs_forgotten: Counter,
    pub chairs_silent: Gauge,
    pub timers_last_tick: Gauge,
    pub capture_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("vitalgate_cluster_takeover_seconds".into()),
                    TAKEOVER_BUCKETS,
                )
            })
            .expect("buckets are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let d = Describe(r);
        let (counter, gauge, histogram) = (
            |name, help| d.counter(name, help),
            |name, help| d.gauge(name, help),
            |name, help| d.histogram(name, help),
        );

        r.describe_counter(
            "vitalgate_readings_rejected_total".into(),
            None,
            "Device payloads rejected, by reason.".into(),
        );
        let rejected_key = |reason: &'static str| {
            Key::from_parts(
                "vitalgate_readings_rejected_total",
                vec![Label::new("reason", reason)],
            )
        };
        let rejected = RejectReason::ALL
            .iter()
            .map(|reason| {
                (
                    *reason,
                    r.register_counter(&rejected_key(reason.as_str()), &META),
                )
            })
            .collect();

        r.describe_counter(
            "vitalgate_alarm_events_total".into(),
            None,
            "Alarm events made (journaled, then handed to dashboards), by priority and state (raised, acknowledged, cleared).".into(),
        );
        let mut alarm_events = Vec::new();
        for p in Priority::ALL {
            for s in [
                AlarmState::Raised,
                AlarmState::Acknowledged,
                AlarmState::Cleared,
            ] {
                let key = Key::from_parts(
                    "vitalgate_alarm_events_total",
                    vec![
                        Label::new("priority", p.as_str()),
                        Label::new("state", s.as_str()),
                    ],
                );
                alarm_events.push((p, s, r.register_counter(&key, &META)));
            }
        }

        Metrics {
            readings_ingested: counter(
                "vitalgate_readings_ingested_total",
                "Device readings accepted and applied to patient state.",
            ),
            readings_duplicate: counter(
                "vitalgate_readings_duplicate_total",
                "Redelivered readings (same chair, seq and ts) recognised and not applied again.",
            ),
            readings_late_values: counter(
                "vitalgate_readings_late_values_total",
                "Values older than the vital's latest value, ignored (out-of-order delivery).",
            ),
            device_clock_steps: counter(
                "vitalgate_device_clock_steps_total",
                "In-order readings whose device time was older than a stored value: the device clock stepped back.",
            ),
            rejected,
            alarm_events,
            ws_clients: gauge("vitalgate_ws_clients", "Connected WebSocket dashboards."),
            ws_slow_disconnects: counter(
                "vitalgate_ws_slow_disconnects_total",
                "Dashboards disconnected because their send queue filled (close code 4008).",
            ),
            ws_connections_total: counter(
                "vitalgate_ws_connections_total",
                "WebSocket dashboards accepted since start.",
            ),
            ws_refused_max_connections: {
                r.describe_counter(
                    "vitalgate_ws_refused_total".into(),
                    None,
                    "Dashboards and API calls refused or closed, by reason (max_connections: 503 before the upgrade; command_rate: closed with 1008; unauthorized: 401; origin: 403; scope: 403, an API call for chairs outside the token's sites; handshake_timeout: no complete request in http.handshake_timeout_ms, dropped).".into(),
                );
                r.register_counter(
                    &Key::from_parts(
                        "vitalgate_ws_refused_total",
                        vec![Label::new("reason", "max_connections")],
                    ),
                    &META,
                )
            },
            ws_closed_command_rate: r.register_counter(
                &Key::from_parts(
                    "vitalgate_ws_refused_total",
                    vec![Label::new("reason", "command_rate")],
                ),
                &META,
            ),
            ws_refused_auth: ["unauthorized", "origin", "scope", "handshake_timeout"]
                .into_iter()
                .map(|reason| {
                    let key = Key::from_parts(
                        "vitalgate_ws_refused_total",
                        vec![Label::new("reason", reason)],
                    );
                    (reason, r.register_counter(&key, &META))
                })
                .collect(),
            ws_commands_rejected: counter(
                "vitalgate_ws_commands_rejected_total",
                "Dashboard commands refused (malformed, unknown or failed).",
            ),
            mqtt_connected: gauge(
                "vitalgate_mqtt_connected",
                "1 while connected and subscribed to the broker.",
            ),
            mqtt_connect_attempts: counter(
                "vitalgate_mqtt_connect_attempts_total",
                "Connection attempts to the MQTT broker.",
            ),
            mqtt_connection_errors: counter(
                "vitalgate_mqtt_connection_errors_total",
                "MQTT connection failures and drops.",
            ),
            device_to_ingest: histogram(
                "vitalgate_device_to_ingest_seconds",
                "Device timestamp to gateway receipt (includes device clock offset).",
            ),
            ingest_to_ws_send: histogram(
                "vitalgate_ingest_to_ws_send_seconds",
                "Gateway receipt of a reading to its alarm frame written to a dashboard socket.",
            ),
            session_events: counter(
                "vitalgate_session_events_total",
                "Session changes (phase, limits, discharge readiness) handed to dashboards.",
            ),
            session_rejected: counter(
                "vitalgate_session_rejected_total",
                "Session messages, session commands and device status messages refused (malformed, stale, bad transition, unknown rule, bad status).",
            ),
            status_messages: counter(
                "vitalgate_device_status_total",
                "Device status messages (online/offline) received.",
            ),
            alarm_escalations: counter(
                "vitalgate_alarm_escalations_total",
                "Alarms re-sent escalated because nobody acknowledged them in time.",
            ),
            alarm_reminders: counter(
                "vitalgate_alarm_reminders_total",
                "Acknowledged alarms re-sent as reminders because they were still active.",
            ),
            audit_errors: counter(
                "vitalgate_audit_errors_total",
                "Audit trail writes that failed (the events were still delivered).",
            ),
            journal_commit: histogram(
                "vitalgate_journal_commit_seconds",
                "One journal commit (a transaction holding every event that arrived while the previous one ran).",
            ),
            ingest_to_release: histogram(
                "vitalgate_ingest_to_release_seconds",
                "Gateway receipt of a reading to its alarm released to the dashboards' queues, after the journal commit.",
            ),
            journal_commits: counter(
                "vitalgate_journal_commits_total",
                "Journal commits (each covers one or more events: group commit).",
            ),
            chairs: gauge(
                "vitalgate_chairs",
                "Chairs the gateway holds state for (updated every alarms.tick_ms).",
            ),
            chairs_forgotten: counter(
                "vitalgate_chairs_forgotten_total",
                "Idle chairs forgotten after ingest.forget_idle_chair_ms.",
            ),
            chairs_silent: gauge(
                "vitalgate_chairs_silent",
                "Chairs in a session (baseline, infusion, recovery) with nothing heard for technical.offline_ms (updated every alarms.tick_ms).",
            ),
            timers_last_tick: gauge(
                "vitalgate_timers_last_tick_seconds",
                "Gateway time of the alarm timers' last tick, seconds since the epoch: stale when the gateway hangs.",
            ),
            capture_dropped: counter(
                "vitalgate_capture_dropped_total",
                "Messages left out of the [capture] files because the disk fell behind (the gateway applied them).",
            ),
            recorder,
            handle,
        }
    }

    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        &self
            .rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .expect("every reason is registered")
            .1
    }

    /// `vitalgate_ws_refused_total{reason}` for a refusal by authentication
    /// (`unauthorized`, `origin`; these also count refused API calls) or by the
    /// token's sites (`scope`, API calls only: a dashboard is never refused for
    /// its scope, it only receives its sites' frames).
    pub fn ws_refused(&self, reason: &str) -> &Counter {
        &self
            .ws_refused_auth
            .iter()
            .find(|(r, _)| *r == reason)
            .expect("every authentication refusal reason is registered")
            .1
    }

    pub fn alarm_event(&self, priority: Priority, state: AlarmState) -> &Counter {
        &self
            .alarm_events
            .iter()
            .find(|(p, s, _)| *p == priority && *s == state)
            .expect("every priority and state is registered")
            .2
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Record a latency given as a `Duration`.
    pub fn observe(h: &Histogram, d: Duration) {
        h.record(d.as_secs_f64());
    }

    /// Cluster mode's metrics, registered on this gateway's recorder (only
    /// a gateway in cluster mode exports them).
    pub fn cluster(&self) -> ClusterMetrics {
        ClusterMetrics::on(&self.recorder)
    }

    #[doc(hidden)]
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Describes a metric by name and help text and registers its handle (a
/// histogram in seconds).
struct Describe<'a>(&'a PrometheusRecorder);

impl Describe<'_> {
    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.0.describe_counter(name.into(), None, help.into());
        self.0.register_counter(&Key::from_name(name), &META)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.0.describe_gauge(name.into(), None, help.into());
        self.0.register_gauge(&Key::from_name(name), &META)
    }

    fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.0
            .describe_histogram(name.into(), Some(Unit::Seconds), help.into());
        self.0.register_histogram(&Key::from_name(name), &META)
    }
}

/// Cluster mode's metrics (`docs/protocol.md`, `docs/cluster.md`).
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Partitions of the cluster's mapping (`cluster.partitions`).
    pub partitions: Gauge,
    /// Partitions whose lease this gateway holds.
    pub partitions_owned: Gauge,
    /// Partitions whose chairs this gateway's engine holds (restored, read).
    pub partitions_serving: Gauge,
    pub takeovers: Counter,
    pub leases_lost: Counter,
    pub partitions_given_back: Counter,
    pub takeover: Histogram,
    pub device_messages_pending: Gauge,
    pub events_unread: Gauge,
    pub audit_pending: Gauge,
    pub snapshots_written: Counter,
    pub snapshots_failed: Counter,
    pub chairs_from_snapshots: Counter,
    pub snapshots_unreadable: Counter,
    pub deliveries_missed: Counter,
}

impl ClusterMetrics {
    fn on(r: &PrometheusRecorder) -> ClusterMetrics {
        let d = Describe(r);
        let (counter, gauge, histogram) = (
            |name, help| d.counter(name, help),
            |name, help| d.gauge(name, help),
            |name, help| d.histogram(name, help),
        );
        ClusterMetrics {
            partitions: gauge(
                "vitalgate_cluster_partitions",
                "Partitions of the cluster's mapping (cluster.partitions): every one should be served by some gateway.",
            ),
            partitions_owned: gauge(
                "vitalgate_cluster_partitions_owned",
                "Partitions whose lease this gateway holds.",
            ),
            partitions_serving: gauge(
                "vitalgate_cluster_partitions_serving",
                "Partitions whose chairs this gateway's engine holds: taken, restored, their device messages read.",
            ),
            takeovers: counter(
                "vitalgate_cluster_takeovers_total",
                "Partitions taken (leases acquired).",
            ),
            leases_lost: counter(
                "vitalgate_cluster_leases_lost_total",
                "Leases lost without being given back: not renewed in time, or taken by another gateway.",
            ),
            partitions_given_back: counter(
                "vitalgate_cluster_partitions_given_back_total",
                "Partitions given back: to share them with a gateway that joined, or at a clean stop.",
            ),
            takeover: histogram(
                "vitalgate_cluster_takeover_seconds",
                "A partition taken: lease acquired to its chairs restored and its device messages read.",
            ),
            device_messages_pending: gauge(
                "vitalgate_cluster_device_messages_pending",
                "Device messages of the partitions this gateway owns not yet acknowledged: waiting in their consumers or being applied (read every 5 s).",
            ),
            events_unread: gauge(
                "vitalgate_cluster_events_unread",
                "Events in the events stream this gateway has not read yet: its dashboards are behind by this many (read every 5 s).",
            ),
            audit_pending: gauge(
                "vitalgate_cluster_audit_pending",
                "Events not yet written to PostgreSQL by the cluster's audit writers (read every 5 s; on gateways with cluster.audit_postgres).",
            ),
            snapshots_written: counter(
                "vitalgate_cluster_snapshots_written_total",
                "Chairs' snapshots stored (a chair's device messages are acknowledged once one reflecting them is).",
            ),
            snapshots_failed: counter(
                "vitalgate_cluster_snapshot_failures_total",
                "Chairs' snapshots not stored (lease lapsed, NATS unavailable, events not journaled): their device messages wait for the next round.",
            ),
            chairs_from_snapshots: counter(
                "vitalgate_cluster_chairs_from_snapshots_total",
                "Chairs of partitions taken that were taken back from their snapshots (the others start from their session and open alarms).",
            ),
            snapshots_unreadable: counter(
                "vitalgate_cluster_snapshots_unreadable_total",
                "Chairs' snapshots found at a takeover that could not be read (written by another version, or for another number of partitions): those chairs start from their session and open alarms.",
            ),
            deliveries_missed: counter(
                "vitalgate_cluster_deliveries_missed_total",
                "Gaps in a partition consumer's deliveries to this gateway: a device message NATS handed out did not arrive, so the partition's reader waited for it to be handed out again before reading on.",
            ),
        }
    }

    /// Handles that record nowhere (parts started without a gateway).
    pub fn detached() -> ClusterMetrics {
        ClusterMetrics {
            partitions: Gauge::noop(),
            partitions_owned: Gauge::noop(),
            partitions_serving: Gauge::noop(),
            takeovers: Counter::noop(),
            leases_lost: Counter::noop(),
            partitions_given_back: Counter::noop(),
            takeover: Histogram::noop(),
            device_messages_pending: Gauge::noop(),
            events_unread: Gauge::noop(),
            audit_pending: Gauge::noop(),
            snapshots_written: Counter::noop(),
            snapshots_failed: Counter::noop(),
            chairs_from_snapshots: Counter::noop(),
            snapshots_unreadable: Counter::noop(),
            deliveries_missed: Counter::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_is_bucketed_beyond_ten_seconds_and_latencies_below() {
        let metrics = Metrics::new();
        let cluster = metrics.cluster();
        cluster.takeover.record(25.0);
        Metrics::observe(&metrics.device_to_ingest, Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains("vitalgate_cluster_takeover_seconds_bucket{le=\"30\"} 1"),
            "{text}"
        );
        assert!(text.contains("vitalgate_cluster_takeover_seconds_bucket{le=\"20\"} 0"));
        assert!(
            text.contains("_bucket{le=\"0.00005\"}"),
            "latency buckets kept"
        );
    }
}
