//! The MQTT edge: devices' readings, session messages and status in.

pub mod backoff;
pub mod broker;
pub mod capture;
pub mod mqtt;
pub mod pipeline;
pub mod topic;

pub use mqtt::{BrokerAddr, Ingest, IngestError};
pub use pipeline::{process, Processed};
pub use topic::{TopicKind, TopicPattern, Topics};
