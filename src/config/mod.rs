//! The gateway's configuration: one typed struct, loaded from TOML with environment
//! overrides (see [`load`]), validated before anything starts.
//!
//! Every field is documented in `config/vitalgate.toml`, which is also compiled in as
//! the defaults: a user file only needs the keys it changes.

mod cluster;
mod load;
mod validate;

pub use cluster::ClusterConfig;

pub use load::{ConfigError, Source};

use crate::core::{
    CombinedRuleSpec, EscalationPolicy, RuleSet, RuleSources, RuleSpec, SessionSpec, TechnicalSpec,
    TrendRuleSpec,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// MQTT's largest possible packet (the remaining-length field's maximum).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// The shipped configuration, which is also the defaults.
pub const DEFAULT_TOML: &str = include_str!("../../config/vitalgate.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub websocket: WebSocketConfig,
    pub shutdown: ShutdownConfig,
    /// Infusion sessions: baselines, discharge readiness.
    pub session: SessionSpec,
    /// Alarm lifecycle: timers, escalation, reminders.
    pub alarms: AlarmsConfig,
    /// Technical alarms: stale vitals, device offline, pump without SpO2.
    pub technical: TechnicalSpec,
    /// The durable audit trail.
    pub audit: AuditConfig,
    /// Who may use the dashboards' WebSocket and the API.
    pub auth: AuthConfig,
    /// Recording every applied message for `vitalgate replay`.
    pub capture: CaptureConfig,
    /// Cluster mode on NATS JetStream (off: a single gateway).
    pub cluster: ClusterConfig,
    /// Alarm limits. Replaces the default list as a whole when given.
    pub rules: Vec<RuleSpec>,
    /// Rules raised only while several limits are crossed at once. Replaces the
    /// default list as a whole when given.
    #[serde(default)]
    pub combined_rules: Vec<CombinedRuleSpec>,
    /// Rate-of-change rules. Replaces the default list as a whole when given.
    #[serde(default)]
    pub trend_rules: Vec<TrendRuleSpec>,
}

/// Per-priority durations, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerPriorityMs {
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

/// `[alarms]`: what happens to an alarm after it is raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// How often timed conditions (stale data, device offline), escalations,
    /// reminders and discharge readiness are evaluated, ms; 100-5000: a technical
    /// alarm is up to one tick late, and the service watchdog counts the gateway
    /// hung when its timers have not run for half of `WatchdogSec` (30 s in the
    /// shipped unit).
    pub tick_ms: u64,
    /// A raised alarm not acknowledged within this long is re-sent escalated, and
    /// again every this long up to `max_escalation_level`; 0 never escalates.
    pub escalate_after_ms: PerPriorityMs,
    pub max_escalation_level: u8,
    /// An acknowledged alarm still active after this long is re-sent as a reminder,
    /// and again every this long; 0 never reminds.
    pub reminder_ms: u64,
}

impl AlarmsConfig {
    pub fn escalation_policy(&self) -> EscalationPolicy {
        let e = &self.escalate_after_ms;
        EscalationPolicy {
            escalate_after_ms: [e.high, e.medium, e.low],
            max_level: self.max_escalation_level,
            reminder_ms: self.reminder_ms,
        }
    }
}

/// Whether dashboards and API clients must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: for local demos only (allowed on a loopback `http.bind`
    /// only, and logged loudly). Commands say who acts in their `by` field.
    None,
    /// Every `/ws` and `/api/...` request needs a JWT.
    Jwt,
}

/// The JWT signature algorithm, pinned: a token signed any other way (including
/// `alg: none`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// A secret from the configuration (a JWT key, the MQTT password). Its `Debug`
/// output is `"<redacted>"`, so that a configuration printed or logged for
/// diagnosis never shows it; [`Secret::expose`] gives the value to what needs it.
/// `Serialize` still writes the value (the gateway never serializes its
/// configuration), and rumqttc's `MqttOptions`, which gets the password, prints
/// it in its own `Debug`: never log those options.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the shared secret (its bytes, trailing newline
    /// removed). RS256 / ES256: the issuer's public key, PEM.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The same key given in the configuration itself (e.g. from an environment
    /// variable), instead of `key_file`.
    #[serde(default)]
    pub key: Option<Secret>,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Clock tolerance for `exp`, seconds.
    pub leeway_s: u64,
    /// Browser origins allowed to open `/ws` (exact match, e.g.
    /// `https://station.clinic.example`). Empty: not checked. A request whose
    /// `Origin` is not listed gets 403.
    pub allowed_origins: Vec<String>,
}

/// How hard the audit trail pushes each write to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// Survives the process being killed (WAL, synchronous=NORMAL).
    Normal,
    /// Also survives power loss, at one fsync per write (synchronous=FULL).
    Full,
}

/// `[audit]`: every alarm event, acknowledgement, phase change and limit change,
/// written before dashboards see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// SQLite file (created if missing; its directory must exist).
    pub path: PathBuf,
    pub synchronous: AuditSync,
    /// Most rows one `GET /api/...` query returns.
    pub max_query_rows: usize,
}

/// `[capture]`: every message the gateway applies, written to rotating JSON Lines
/// files that `vitalgate replay` reads. The files hold patient ids: owner-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Off by default.
    pub enabled: bool,
    /// Directory for the files (created `0700`; files are `0600`).
    pub dir: PathBuf,
    /// Start a new file once one reaches this many bytes.
    pub rotate_bytes: u64,
    /// Keep this many newest files, removing older ones (0: keep all).
    pub max_files: usize,
    /// Messages queued for the writer; beyond it they are left out of the capture
    /// (never out of the gateway) and counted.
    pub queue_capacity: usize,
}

/// `[http]`: the listener for `/ws`, `/live`, `/ready` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// A connection must send the headers of its first request within this long,
    /// or it is dropped (ms).
    pub handshake_timeout_ms: u64,
    /// Connections the kernel holds for the gateway to accept (`listen` backlog;
    /// the kernel caps it at `net.core.somaxconn`). Beyond it new connections' SYNs
    /// are dropped and retried by the client a second or more later.
    pub accept_backlog: u32,
}

/// Which MQTT broker the gateway subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// Start the built-in broker (`[mqtt.embedded]`) and subscribe to it.
    Embedded,
    /// Connect to `mqtt.host`:`mqtt.port` (Mosquitto, EMQX, ...).
    External,
}

/// `[mqtt]`: the ingest connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub broker: BrokerMode,
    /// External broker host (ignored in embedded mode).
    pub host: String,
    /// External broker port (ignored in embedded mode).
    pub port: u16,
    /// Stable client id: the broker keeps this session's subscription and unacknowledged
    /// messages while the gateway is away.
    pub client_id: String,
    /// Subscription filter for readings, with exactly two `+` levels: the site, then
    /// the chair.
    pub topic: String,
    /// Subscription filter for session messages (retained), same two levels.
    pub session_topic: String,
    /// Subscription filter for device status (online/offline, e.g. last wills).
    pub status_topic: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u16,
    /// TCP + MQTT connect timeout, seconds.
    pub connect_timeout_s: u64,
    /// Largest MQTT packet accepted from the broker. A larger one cannot be read: it
    /// breaks the connection and the broker redelivers it forever, stopping ingest.
    /// The default is MQTT's own maximum; bound memory with the broker's message
    /// size limit instead, set below this.
    pub max_packet_bytes: usize,
    /// Capacity of the client's request queue (subscriptions, the DISCONNECT;
    /// acknowledgements are written straight to the connection), and of the alarm
    /// engine's command queue (at least 1024).
    pub request_queue: usize,
    /// First reconnect delay, ms; doubles per failure (with jitter) up to the maximum.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay, ms.
    pub reconnect_max_ms: u64,
    pub embedded: EmbeddedBrokerConfig,
}

/// `[mqtt.tls]`: TLS to an external broker (rustls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require client certificates.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// `[mqtt.embedded]`: the built-in broker used when `mqtt.broker = "embedded"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Where devices connect. Port 0 picks a free port.
    pub bind: SocketAddr,
    pub max_connections: usize,
    /// Largest payload the broker accepts from a device.
    pub max_payload_bytes: usize,
    /// Unacknowledged QoS 1 messages per connection.
    pub max_inflight: usize,
}

/// `[ingest]`: decoding and validating device readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Larger payloads are rejected (`payload_too_large`).
    pub max_payload_bytes: usize,
    /// A device `ts` further ahead of the gateway clock is rejected (`future_timestamp`).
    pub max_future_skew_ms: u64,
    /// Most chairs tracked at once; readings for more are rejected (`chair_limit`).
    pub max_chairs: usize,
    /// A chair with no session in progress (idle or discharged), no alarm, and
    /// nothing heard for this long is forgotten (ms); 0 keeps every chair.
    pub forget_idle_chair_ms: u64,
    /// At most one log line per rejection reason per this interval, ms.
    pub reject_log_interval_ms: u64,
}

/// `[websocket]`: dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Frames (alarms, replies) queued per connection; a client that lets it fill is
    /// disconnected as a slow consumer. Events arrive a journal commit at a time, and
    /// in a storm one commit can hold an alarm for every chair: keep it at least
    /// `ingest.max_chairs`.
    pub queue_capacity: usize,
    /// Alarm events kept for `?since=` replay.
    pub replay_capacity: usize,
    /// Chair updates kept for coalescing live vitals; a client further behind gets
    /// every chair's latest values instead.
    pub live_log_capacity: usize,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Most queued frames written to one dashboard with a single flush.
    pub write_batch_frames: usize,
    /// Per-connection read buffer.
    pub read_buffer_bytes: usize,
    /// Bytes buffered before a write is forced.
    pub write_buffer_bytes: usize,
    /// Most bytes buffered for one client's socket. A single frame must fit, so this
    /// bounds the largest snapshot (see [`snapshot_bound`]); a client that cannot take
    /// its frames is cut off by `queue_capacity`, not by this.
    pub max_write_buffer_bytes: usize,
    /// How often the server pings each client, ms.
    pub ping_interval_ms: u64,
    /// A client that sends nothing (not even a pong) for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// How long to try sending a close frame to a slow client before dropping it,
    /// and after a 1009 close how long to wait for the client's close frame, ms.
    pub close_timeout_ms: u64,
    /// Most dashboards connected at once; further upgrades are refused with 503.
    pub max_connections: usize,
    /// Commands (subscriptions, snapshots, malformed ones; never acknowledgements) a
    /// dashboard may send per second on average; a client over it is closed with 1008.
    pub commands_per_second: f64,
    /// Commands a dashboard may send in a burst above that rate.
    pub command_burst: u32,
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for dashboards to drain before closing them, ms.
    pub grace_period_ms: u64,
    /// How long the MQTT DISCONNECT (and the acknowledgements before it) may take, ms.
    pub mqtt_disconnect_timeout_ms: u64,
    /// How long the HTTP server may take to stop once dashboards are closed, ms.
    pub http_stop_timeout_ms: u64,
}

/// Bytes a snapshot can take at most: per chair about 2 KiB of vitals, pump and
/// session at the longest names, plus one active alarm with its context (at most
/// 1200 bytes, limit overrides included) for each of the `conditions` alarm
/// conditions; plus 1 MiB of framing and slack.
pub fn snapshot_bound(chairs: usize, conditions: usize) -> usize {
    chairs
        .saturating_mul(conditions.saturating_mul(1200).saturating_add(2048))
        .saturating_add(1 << 20)
}

impl Default for Config {
    /// The shipped `config/vitalgate.toml`.
    fn default() -> Self {
        Config::from_toml_str(DEFAULT_TOML, Source::Defaults)
            .expect("the shipped config/vitalgate.toml is valid")
    }
}

impl Config {
    /// Everything the alarm engine is compiled from.
    pub fn rule_sources(&self) -> RuleSources<'_> {
        RuleSources {
            rules: &self.rules,
            combined: &self.combined_rules,
            trends: &self.trend_rules,
            technical: &self.technical,
            session: &self.session,
        }
    }

    /// How many alarm conditions the rules define (a two-sided rule counts twice).
    pub fn condition_count(&self) -> usize {
        RuleSet::compile_all(self.rule_sources()).map_or(0, |r| r.len())
    }

    /// Validate, then compile the alarm rules: what a gateway checks before it
    /// starts anything.
    pub fn checked(&self) -> Result<RuleSet, ConfigError> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                source_name: "startup".into(),
                problems,
            });
        }
        self.rule_set()
    }

    /// What device messages are checked against (`ingest.*`).
    pub fn decode_limits(&self) -> crate::core::DecodeLimits {
        crate::core::DecodeLimits {
            max_payload_bytes: self.ingest.max_payload_bytes,
            max_future_skew_ms: self.ingest.max_future_skew_ms,
        }
    }

    /// The compiled alarm rules. Call after [`Config::validate`] found nothing.
    pub fn rule_set(&self) -> Result<RuleSet, ConfigError> {
        RuleSet::compile_all(self.rule_sources()).map_err(|errs| ConfigError::Invalid {
            source_name: "rules".into(),
            problems: errs.into_iter().map(|e| (e.key, e.message)).collect(),
        })
    }
}
