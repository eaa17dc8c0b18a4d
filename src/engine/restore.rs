//! What start-up may do to the engine's state before it runs: take back the
//! sessions and open alarms the audit trail holds.

use super::state::{Pass, State};
use crate::core::{AlarmEvent, AlarmState, Event, SessionEvent, WardError};

/// What restoring at start-up may do to the engine's state, before it runs.
pub struct Restore<'a> {
    pub(super) state: &'a mut State,
    pub(super) closed: Vec<Event>,
}

impl Restore<'_> {
    /// A chair's session recorded before the restart.
    pub fn session(&mut self, event: &SessionEvent, now_ms: u64) -> Result<(), WardError> {
        self.state.ward.restore(event, now_ms)
    }

    /// Readings of `chair` measured at or before device time `ts` were already
    /// evaluated, by this gateway's previous run or by the gateway the chair is
    /// taken over from: one handed out again changes nothing. `now_ms`: gateway
    /// time.
    pub fn evaluated_until(&mut self, chair: &str, ts: u64, now_ms: u64) -> Result<(), WardError> {
        self.state.ward.restore_evaluated_until(chair, ts, now_ms)
    }

    /// An alarm open when the previous run stopped: taken back without a new
    /// event when a rule of its chair still matches, otherwise closed with
    /// `reason: "not_restored"` so that the record is complete. True if taken back.
    pub fn alarm(&mut self, event: AlarmEvent, now_ms: u64) -> bool {
        let taken = self.state.ward.restore_alarm(&event);
        self.settle_alarm(event, taken, now_ms)
    }

    /// On the board: taken back (`taken`: its conditions are), or closed.
    pub(super) fn settle_alarm(&mut self, mut event: AlarmEvent, taken: bool, now_ms: u64) -> bool {
        if taken {
            let policy = &self.state.policy;
            let at = event.received_at;
            let acknowledged = (event.state == AlarmState::Acknowledged).then_some(at);
            // An unacknowledged alarm's latest event is its raise or its last
            // escalation: count the next escalation from the raise.
            let raised_at = match acknowledged {
                Some(_) => at,
                None => at.saturating_sub(
                    policy
                        .after_ms(event.priority)
                        .saturating_mul(u64::from(event.escalation_level)),
                ),
            };
            self.state.board.restore(event, raised_at, acknowledged);
            true
        } else {
            // A `cleared` event as any other: no rules held, not an update.
            event.state = AlarmState::Cleared;
            event.reason = Some("not_restored");
            // A cleared event's line says the alarm ended: its rule may be gone, so
            // the raise's line is kept and said to have ended (at a restart, or at
            // a cluster takeover).
            event.message = format!("{}: alarm ended, not taken back", event.message).into();
            event.rules.clear();
            event.updated = false;
            event.previous_priority = None;
            event.escalated = false;
            event.reminder = false;
            event.ts = now_ms;
            event.received_at = now_ms;
            self.closed.push(Event::Alarm(event));
            false
        }
    }
}

/// Run `restore` on `state`; the events it makes, sequenced.
pub(super) fn run(state: &mut State, restore: impl FnOnce(&mut Restore<'_>)) -> Vec<Pass> {
    let mut r = Restore {
        state,
        closed: Vec::new(),
    };
    restore(&mut r);
    let closed = std::mem::take(&mut r.closed);
    let mut out = Vec::new();
    state.sequence(closed, None, &mut out);
    out
}

/// [`run`] for a [`super::Command::Restore`] (the state holds it as a plain
/// function, which keeps this module out of the state's dependencies).
pub(super) fn run_boxed(state: &mut State, restore: super::RestoreFn) -> Vec<Pass> {
    run(state, restore)
}
