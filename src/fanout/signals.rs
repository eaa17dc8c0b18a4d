//! What the two halves of one dashboard connection (reader and writer) tell each
//! other, and the close codes a connection ends with.

use super::hub::CutOff;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// Close codes sent to dashboards (documented in `docs/protocol.md`).
pub mod close_code {
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Nothing received from the client, not even a pong, within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The client did not read fast enough and its send queue filled.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client sent a frame or message over the size caps.
    pub const TOO_BIG: u16 = 1009;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client's token expired.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client sent commands faster than `websocket.commands_per_second` allows.
    pub const POLICY: u16 = 1008;
}

/// What the reader and writer halves of one connection tell each other.
pub(super) struct Signals {
    /// Cut by the hub (or a reply that found the queue full): cut off as slow.
    /// Its `wake` token is also cancelled by the reader (the client has gone) and
    /// by the gateway's shutdown (it is a child of `Dashboards::close`).
    pub(super) cut_off: CutOff,
    /// Set by the reader when the client has gone or broke the protocol (with
    /// `cut_off.wake` cancelled after it: the writer reads it once woken).
    pub(super) gone: AtomicBool,
    /// Uptime ms of the last frame received, pongs included.
    pub(super) last_seen: AtomicU64,
    /// Close code the reader asks the writer to send (0: none).
    pub(super) close_with: AtomicU16,
    /// A requested snapshot is queued and not yet written.
    pub(super) snapshot_pending: AtomicBool,
}

impl Signals {
    /// A connection's signals: nothing raised yet, woken by `shutdown` too.
    pub(super) fn new(shutdown: &CancellationToken, now_ms: u64) -> Signals {
        Signals {
            cut_off: CutOff {
                slow: CancellationToken::new(),
                wake: shutdown.child_token(),
            },
            gone: AtomicBool::new(false),
            last_seen: AtomicU64::new(now_ms),
            close_with: AtomicU16::new(0),
            snapshot_pending: AtomicBool::new(false),
        }
    }

    /// The client has gone away or broke the protocol: the writer stops.
    pub(super) fn client_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
        self.cut_off.wake.cancel();
    }
}
