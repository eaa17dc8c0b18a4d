//! The journal thread: group commit, then release in order.

use super::state::Pass;
use super::task::deliver_receipt;
use super::{Outlet, Processed, Receipt, Sequenced};
use crate::audit::{Audit, Record};
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

/// Where events are made durable before anyone sees them. Called on the journal
/// thread only, so an implementation may block (a disk, a replicated stream).
pub trait Journal: Send + 'static {
    /// Write every record in one commit; return once they are as durable as the
    /// journal promises.
    fn commit(&mut self, records: &[Record<'_>]) -> Result<(), JournalError>;

    /// Housekeeping once a commit's events are released (the next commit waits).
    fn after_release(&mut self) {}

    /// What a failed commit does to what it held. `false` (the single-node
    /// journal): the events are released anyway, and device messages
    /// acknowledged, because a nurse seeing an alarm matters more than its
    /// record. `true` (a journal that is also how dashboards get events): the
    /// events are not released and each device message's outcome becomes
    /// [`Processed::Refused`] with code [`NOT_JOURNALED`], so that it is not
    /// acknowledged and comes again.
    fn withholds_on_failure(&self) -> bool {
        false
    }
}

/// The refusal code of a device message whose events a withholding journal
/// could not commit.
pub const NOT_JOURNALED: &str = "not_journaled";

/// The audit trail on SQLite (the single-node journal).
pub struct SqliteJournal {
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
}

impl Journal for SqliteJournal {
    fn commit(&mut self, records: &[Record<'_>]) -> Result<(), JournalError> {
        self.audit
            .append(records)
            .map_err(|e| JournalError(e.to_string()))
    }

    /// A checkpoint, when due, runs here: its fsync delays the next commit (which
    /// gathers whatever arrives meanwhile) instead of an alarm's.
    fn after_release(&mut self) {
        if let Some(checkpoint) = self.audit.claim_checkpoint() {
            if let Err(e) = checkpoint.run() {
                self.metrics.audit_errors.increment(1);
                tracing::warn!(error = %e, "audit trail checkpoint failed");
            }
        }
    }
}

/// What the journal thread releases to, and how it reports.
pub(super) struct Release {
    pub instance: Arc<str>,
    pub outlet: Arc<dyn Outlet>,
    pub receipts: mpsc::UnboundedSender<Receipt>,
    pub in_flight: Arc<AtomicUsize>,
    pub ok: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// Most engine batches one commit gathers: bounds a commit's size (and the
/// memory held while it runs) in a storm.
const MAX_GATHER: usize = 64;

/// Until the engine's sender is dropped: take every batch waiting, commit all of
/// their events in one transaction, release them in order.
pub(super) fn run(
    mut journal: Box<dyn Journal>,
    mut rx: mpsc::Receiver<Vec<Pass>>,
    release: Release,
) {
    let mut batches: Vec<Vec<Pass>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batches.push(first);
        while batches.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(batch) => batches.push(batch),
                Err(_) => break,
            }
        }
        let committed = commit(journal.as_mut(), &batches, &release);
        let withheld = !committed && journal.withholds_on_failure();
        for batch in batches.drain(..) {
            release.batch(batch, withheld);
        }
        journal.after_release();
    }
}

/// Commit every event of `batches`; whether that worked (nothing to commit
/// counts as done). A failure is counted and logged.
fn commit(journal: &mut dyn Journal, batches: &[Vec<Pass>], release: &Release) -> bool {
    let events = batches.iter().flatten().filter_map(|p| match p {
        Pass::Events(events) => Some(events),
        _ => None,
    });
    let records: Vec<Record<'_>> = events
        .flatten()
        .map(|s: &Sequenced| Record {
            seq: s.seq,
            instance: &release.instance,
            kind: s.kind,
            chair: &s.chair,
            at_ms: s.at_ms,
            body: s.frame.as_str(),
        })
        .collect();
    if records.is_empty() {
        return true;
    }
    let started = Instant::now();
    let result = journal.commit(&records);
    Metrics::observe(&release.metrics.journal_commit, started.elapsed());
    release.metrics.journal_commits.increment(1);
    release.ok.store(result.is_ok(), Ordering::Relaxed);
    match result {
        Ok(()) => true,
        Err(e) => {
            release.metrics.audit_errors.increment(1);
            if journal.withholds_on_failure() {
                tracing::error!(error = %e, events = records.len(), "journal commit failed; the device messages behind it are not acknowledged");
            } else {
                tracing::error!(error = %e, events = records.len(), "audit trail write failed; events delivered anyway");
            }
            false
        }
    }
}

impl Release {
    /// Release `batch` in order; `withheld`: its commit failed and the journal
    /// withholds (see [`Journal::withholds_on_failure`]).
    fn batch(&self, batch: Vec<Pass>, withheld: bool) {
        for pass in batch {
            match pass {
                Pass::Events(_) if withheld => {}
                Pass::Events(events) => {
                    for event in &events {
                        if let Some(at) = event.frame.ingested_at {
                            Metrics::observe(&self.metrics.ingest_to_release, at.elapsed());
                        }
                    }
                    self.outlet.release(&events)
                }
                Pass::Receipt(reply, _) if withheld => {
                    let refused = Processed::Refused {
                        code: NOT_JOURNALED,
                        detail: "its events could not be journaled".into(),
                    };
                    deliver_receipt(&self.receipts, reply, refused)
                }
                Pass::Receipt(reply, processed) => {
                    deliver_receipt(&self.receipts, reply, processed)
                }
                Pass::Then(then) => then(!withheld),
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
