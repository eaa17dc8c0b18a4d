//! The MQTT edge: devices' readings, session messages and status in.

pub mod backoff;
pub mod broker;
pub mod capture;
pub mod mqtt;
pub mod pipeline;
pub mod recording;

/// Topics are named in the core (configuration validates them too).
pub use crate::core::topic::{self, TopicKind, TopicPattern, Topics};
pub use mqtt::{BrokerAddr, Ingest, IngestError};
pub use pipeline::{process, Processed};
