//! The WebSocket edge: alarm events and live vitals out to nurse-station dashboards.

pub mod backend;
mod edge;
pub mod hub;
pub mod live;
pub use crate::protocol;
mod reader;
pub mod signals;
pub mod socket;
pub mod ws;

pub use backend::{Backend, EngineBackend};
pub use edge::Dashboards;
pub use hub::{CutOff, Hub, Start};
pub use live::{LiveFeed, Scope};
pub use protocol::Frame;
