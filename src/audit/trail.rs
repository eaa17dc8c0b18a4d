//! What `/api` reads: the audit trail, wherever it is kept (the SQLite file of
//! a single gateway, or PostgreSQL in cluster mode), and each chair's session
//! now (from whoever knows it: the engine, or the cluster's events stream).

use super::Stored;
use crate::core::SessionEvent;
use futures_util::future::BoxFuture;

/// A question to the audit trail.
#[derive(Debug, Clone)]
pub struct TrailQuery {
    /// "alarm" | "session".
    pub kind: &'static str,
    /// `{site}/{chair}`; every chair when `None`.
    pub chair: Option<String>,
    /// Gateway time bounds, ms since the epoch, inclusive.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// At most this many rows.
    pub limit: usize,
}

/// Why the audit trail could not answer (logged; callers are told only that
/// it failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrailError(pub String);

pub trait Trail: Send + Sync + 'static {
    /// The events `query` asks for, by gateway time (then as journaled),
    /// oldest first.
    fn query(&self, query: TrailQuery) -> BoxFuture<'static, Result<Vec<Stored>, TrailError>>;

    /// `chair`'s session now, if anything is known of it.
    fn current_session(&self, chair: &str) -> Option<SessionEvent>;
}
