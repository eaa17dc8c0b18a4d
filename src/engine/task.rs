//! The engine task: takes commands in batches, applies them to the state, and
//! hands what they made to the journal thread.

use super::copies;
use super::state::{Pass, State};
use super::{Command, Processed, Receipt, Reply};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The engine's way to the journal thread.
pub(super) struct Pipe {
    pub to_journal: mpsc::Sender<Vec<Pass>>,
    /// Batches sent to the journal and not yet wholly released: when none are, a
    /// batch with nothing to commit is released here, without a thread hop.
    pub in_flight: Arc<AtomicUsize>,
    pub receipts: mpsc::UnboundedSender<Receipt>,
    /// The journal withholds on failure ([`super::Journal::withholds_on_failure`]):
    /// then a batch goes to it in one hand-off. Its failure is told per commit,
    /// so a command's answer (a `Then`) split from the events before it into a
    /// commit with nothing to fail would be told they were journaled.
    pub withholds: bool,
}

impl Pipe {
    /// No batch is with the journal thread.
    fn journal_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Hand on what `batch` holds, leaving it empty; `needs_journal`: it holds
    /// a pass that [`Pass::needs_journal`]. Receipts released here leave the
    /// vector's room for the next batch: most batches are only receipts.
    async fn send(&self, batch: &mut Vec<Pass>, needs_journal: bool) {
        if !needs_journal && self.journal_idle() {
            for pass in batch.drain(..) {
                if let Pass::Receipt(reply, processed) = pass {
                    deliver_receipt(&self.receipts, reply, processed);
                }
            }
            return;
        }
        let batch = std::mem::take(batch);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.to_journal.send(batch).await.is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

pub(super) fn deliver_receipt(
    receipts: &mpsc::UnboundedSender<Receipt>,
    reply: Reply,
    processed: Processed,
) {
    match reply {
        Reply::Ticket(ticket) => drop(receipts.send(Receipt { ticket, processed })),
        Reply::Once(tx) => drop(tx.send(processed)),
    }
}

/// Most commands taken per wake-up.
const BATCH: usize = 256;

pub(super) async fn run(
    mut state: State,
    mut rx: mpsc::Receiver<Command>,
    pipe: Pipe,
    mut first: Vec<Pass>,
    stop: tokio_util::sync::CancellationToken,
) {
    if !first.is_empty() {
        let needs_journal = first.iter().any(Pass::needs_journal);
        pipe.send(&mut first, needs_journal).await;
    }
    let mut commands = Vec::with_capacity(BATCH);
    let mut out = Vec::new();
    let mut closing = false;
    // Made once: a new `cancelled()` per wake-up would register with the token
    // and leave it again each time.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let taken = if closing {
            rx.recv_many(&mut commands, BATCH).await
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut commands, BATCH) => n,
                _ = &mut stopped => {
                    // No new commands; those queued are still applied.
                    rx.close();
                    closing = true;
                    continue;
                }
            }
        };
        if taken == 0 {
            break;
        }
        let mut needs_journal = false;
        for command in commands.drain(..) {
            let before = out.len();
            let due = copies::due_after(&state, &command);
            state.apply(command, &mut out);
            if let Some(due) = due {
                copies::settle_due(&mut state, due, &mut out);
            }
            needs_journal = needs_journal || out[before..].iter().any(Pass::needs_journal);
            // What the journal must see goes to it at once when it is idle, not
            // after the rest of the batch, so that an alarm's commit need not wait
            // for the evaluation of every command behind it. While the journal is
            // busy, output gathers here and goes together (group commit either way).
            if needs_journal && !pipe.withholds && pipe.journal_idle() {
                pipe.send(&mut out, true).await;
                needs_journal = false;
            }
        }
        if !out.is_empty() {
            pipe.send(&mut out, needs_journal).await;
        }
    }
}
