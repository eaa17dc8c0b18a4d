//! The gateway's wall clock. Everything that needs "now" takes it from here (the
//! core takes time as arguments), so the whole gateway reads one clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Gateway wall-clock time, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
