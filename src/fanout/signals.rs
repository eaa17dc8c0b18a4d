//! What the two halves of one dashboard connection (reader and writer) tell each
//! other, and the close codes a connection ends with.

use super::hub::CutOff;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::OnceLock;
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

/// Why a connection ends: the close frame it is sent, if any. The one way every
/// part of a connection (reader, writer, hub) says why it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code (`close_code`); 0: the connection is dropped without one
    /// (the client has gone, or the shutdown grace ran out).
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    const fn new(code: u16, reason: &'static str) -> Disconnect {
        Disconnect { code, reason }
    }
    pub const GONE: Disconnect = Disconnect::new(0, "the client has gone");
    pub const DROPPED: Disconnect = Disconnect::new(0, "shutdown grace over");
    pub const GOING_AWAY: Disconnect =
        Disconnect::new(close_code::GOING_AWAY, "gateway shutting down");
    pub const IDLE_TIMEOUT: Disconnect =
        Disconnect::new(close_code::IDLE_TIMEOUT, "idle timeout: no pong");
    pub const SLOW_CONSUMER: Disconnect =
        Disconnect::new(close_code::SLOW_CONSUMER, "slow consumer: send queue full");
    pub const TOO_BIG: Disconnect = Disconnect::new(close_code::TOO_BIG, "message too big");
    pub const PROTOCOL_ERROR: Disconnect =
        Disconnect::new(close_code::PROTOCOL_ERROR, "protocol error");
    pub const TOKEN_EXPIRED: Disconnect =
        Disconnect::new(close_code::TOKEN_EXPIRED, "token expired");
    pub const POLICY: Disconnect =
        Disconnect::new(close_code::POLICY, "command rate limit exceeded");
}

/// What the reader and writer halves of one connection tell each other.
pub(super) struct Signals {
    /// Cut by the hub (or a reply that found the queue full): cut off as slow.
    /// Its `wake` token is also cancelled by the reader (the client has gone) and
    /// by the gateway's shutdown (it is a child of `Dashboards::close`).
    pub(super) cut_off: CutOff,
    /// Why the reader ended the connection (the first reason wins), with
    /// `cut_off.wake` cancelled after it: the writer reads it once woken.
    ending: OnceLock<Disconnect>,
    /// Uptime ms of the last frame received, pongs included.
    pub(super) last_seen: AtomicU64,
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
            ending: OnceLock::new(),
            last_seen: AtomicU64::new(now_ms),
            snapshot_pending: AtomicBool::new(false),
        }
    }

    /// End the connection for `why` (unless it is already ending for another
    /// reason): the writer stops and closes with it.
    pub(super) fn end(&self, why: Disconnect) {
        let _ = self.ending.set(why);
        self.cut_off.wake.cancel();
    }

    /// Why the connection is ending, if the reader said so.
    pub(super) fn ending(&self) -> Option<Disconnect> {
        self.ending.get().copied()
    }
}
