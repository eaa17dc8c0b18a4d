//! The MQTT edge: devices' readings, session messages and status in.

pub mod backoff;
pub mod broker;
pub mod capture;
pub mod mqtt;
pub mod pipeline;
pub mod recording;
mod settle;

/// Topics are named in the core (configuration validates them too).
pub use crate::core::topic::{self, TopicKind, TopicPattern, Topics};
pub use mqtt::{BrokerAddr, Ingest, IngestError};
pub use pipeline::{process, Processed};

use crate::core::DecodeLimits;
use crate::engine::Engine;
use crate::health::Health;
use crate::telemetry::Metrics;
use std::sync::Arc;

/// What the MQTT edge needs of the gateway: where device messages go, what they
/// are checked against, and where it reports.
pub struct Devices {
    pub engine: Engine,
    pub topics: Topics,
    pub decode_limits: DecodeLimits,
    /// `session.max_message_bytes`.
    pub session_max_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}
