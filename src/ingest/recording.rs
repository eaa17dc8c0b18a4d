//! The recording format's line: one MQTT message as the scenario library stores it
//! and as a gateway's `[capture]` writes it (JSON Lines; `vitalgate replay` reads
//! both, see `replay::record`).

use serde::{Deserialize, Serialize};

/// One recorded MQTT message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the message was sent (the scenario library: device time; a capture: the
    /// gateway's receipt time), ms since the epoch.
    pub at_ms: u64,
    pub topic: String,
    pub payload: String,
    #[serde(default)]
    pub retain: bool,
    /// When it reached the gateway, where later than `at_ms` (a device that buffered
    /// through an outage delivers a burst of old readings at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
}

impl Record {
    /// The gateway's clock when the message arrived.
    pub fn delivered_at(&self) -> u64 {
        self.delivered_ms.unwrap_or(self.at_ms).max(self.at_ms)
    }
}
