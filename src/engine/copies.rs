//! Copies of chairs' whole state, for cluster mode's snapshots: what a chair's
//! next owner takes back to carry on exactly where this engine was (a
//! condition's delay under way, a baseline being collected, trends), and how
//! it takes them back.
//!
//! A copy is made in order with the engine's commands and handed out only
//! after every event made before it is journaled: whoever takes it back finds
//! each event the copied state assumes already in the journal.

use super::restore::Restore;
use super::state::{Deferred, Pass, State};
use crate::core::alarm::Active;
use crate::core::patient::PatientState;
use crate::core::AlarmKind;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// One chair's whole state and its active alarms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChairCopy {
    pub chair: String,
    /// [`crate::core::RuleSet::fingerprint`] of the rules the state was made
    /// under: only an engine with the same rules can take it back.
    pub rules: u64,
    pub state: PatientState,
    pub alarms: Vec<Active>,
}

/// A copy could not be taken back.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the copy of {chair} was made under other alarm rules (fingerprint {found:x}, here {here:x})")]
    OtherRules {
        chair: String,
        found: u64,
        here: u64,
    },
    #[error("the copy of {0} does not hold one entry per condition of the rules it names")]
    Malformed(String),
    #[error(transparent)]
    Ward(#[from] crate::core::WardError),
}

/// Copies of `chairs` and of the changed chairs `changed_in` names (which are
/// no longer counted as changed). Chairs the engine does not hold are left out.
pub(super) fn take(
    state: &mut State,
    chairs: Vec<String>,
    changed_in: &dyn Fn(&str) -> bool,
) -> Vec<ChairCopy> {
    let set = state.changed.0.get_or_insert_with(HashSet::new);
    let mut wanted: HashSet<Arc<str>> = chairs.into_iter().map(Arc::from).collect();
    set.retain(|chair| {
        let take = changed_in(chair);
        if take {
            wanted.insert(chair.clone());
        }
        !take
    });
    let rules = state.ward.rules().fingerprint();
    let mut out: Vec<ChairCopy> = wanted
        .into_iter()
        .filter_map(|chair| {
            let patient = state.ward.state_of(&chair)?;
            Some(ChairCopy {
                chair: chair.to_string(),
                rules,
                state: patient,
                alarms: state.board.of_chair(&chair),
            })
        })
        .collect();
    out.sort_by(|a, b| a.chair.cmp(&b.chair));
    out
}

impl Restore<'_> {
    /// Take a chair back from its copy: its state and active alarms as its
    /// previous owner held them, without an event. What happened after the
    /// copy was made comes after: events from the journal (see
    /// [`Restore::session_after_copy`], [`Restore::alarm_after_copy`]), then
    /// the device messages the previous owner had not yet copied.
    pub fn chair(&mut self, copy: ChairCopy) -> Result<(), CopyError> {
        let here = self.state.ward.rules().fingerprint();
        if copy.rules != here {
            return Err(CopyError::OtherRules {
                chair: copy.chair,
                found: copy.rules,
                here,
            });
        }
        if !copy.state.fits(self.state.ward.rules()) {
            return Err(CopyError::Malformed(copy.chair));
        }
        self.state.ward.take_back(&copy.chair, copy.state)?;
        self.state.board.forget(|c| c == copy.chair);
        for alarm in copy.alarms {
            self.state.board.take_back(alarm);
        }
        Ok(())
    }

    /// The chair's latest session event from the journal, over its copy: taken
    /// only if newer than the copy's session (a dashboard's change made after
    /// the copy).
    pub fn session_after_copy(&mut self, event: &crate::core::SessionEvent, now_ms: u64) {
        self.state.ward.restore_after_snapshot(event, now_ms);
    }

    /// An alarm the journal says is open (`open`: all of the chair's that
    /// it says are), over a chair taken back from its copy: acknowledged or
    /// escalated after the copy was made, it is so here too. Raised after it:
    /// a physiological alarm waits for the readings handed out again to reach
    /// the one that raised it ([`due`]), which raise it again under the same
    /// id (the events stream drops the repeat) before it takes what the
    /// journal says; taken back at once, a reading measured before the raise
    /// would end it. A technical one (its id from gateway time, so not raised
    /// again under it) is taken back as at start-up, unless its rules hold an
    /// alarm the journal has closed since (a vital that went back and forth):
    /// then the readings handed out again end that one first.
    pub fn alarm_after_copy(
        &mut self,
        event: crate::core::AlarmEvent,
        open: &HashSet<u64>,
        now_ms: u64,
    ) {
        let Some(held) = self.state.board.get(event.id).cloned() else {
            if event.kind == AlarmKind::Physiological {
                self.state
                    .after_copy
                    .0
                    .entry(event.chair.clone())
                    .or_default()
                    .push(Deferred {
                        event,
                        since_ms: now_ms,
                    });
            } else if self.state.ward.restore_alarm_after_snapshot(&event) {
                self.settle_alarm(event, true, now_ms);
            } else if !self
                .state
                .board
                .of_chair(&event.chair)
                .iter()
                .any(|a| !open.contains(&a.event.id))
            {
                self.settle_alarm(event, false, now_ms);
            }
            return;
        };
        self.as_journaled(held, event, now_ms);
    }

    /// `held` takes what the journal says of it (`event`): acknowledged or
    /// escalated since, without a new event.
    fn as_journaled(&mut self, mut held: Active, event: crate::core::AlarmEvent, now_ms: u64) {
        if event.acknowledged_by.is_some() && held.acknowledged_at.is_none() {
            held.acknowledged_at = Some(event.received_at);
            held.event = event.clone();
            self.state.board.take_back(held);
            // A latched alarm whose condition had ended cleared then.
            let cleared = self.state.ward.acknowledged(&event.chair, event.id, now_ms);
            self.closed.extend(cleared);
        } else if event.escalation_level > held.event.escalation_level || event.reminder {
            if event.reminder {
                held.reminded_at = Some(event.received_at);
            }
            held.event.escalation_level = held.event.escalation_level.max(event.escalation_level);
            self.state.board.take_back(held);
        }
    }

    /// A [`Deferred`] alarm whose raise the readings handed out again have
    /// reached: raised again by them, it takes what the journal says of it;
    /// if they did not raise it (or never came), it is taken back as at
    /// start-up.
    fn deferred_due(&mut self, event: crate::core::AlarmEvent, now_ms: u64) {
        match self.state.board.get(event.id).cloned() {
            Some(held) => self.as_journaled(held, event, now_ms),
            None => {
                let taken = self.state.ward.restore_alarm_after_snapshot(&event);
                self.settle_alarm(event, taken, now_ms);
            }
        }
    }

    /// The alarms of a chair taken back from its copy that the journal no
    /// longer has open (`open`: those it has). A latched one (acknowledged
    /// after the copy, its clear journaled) ends here too, silently, as does
    /// one none of whose rules apply to the chair's session now (ended by a
    /// session change). Any other ended with a reading, which is handed out
    /// again and ends it again: until then it is held acknowledged, so that
    /// it neither escalates nor reminds.
    pub fn closed_after_copy(&mut self, chair: &str, open: &HashSet<u64>, now_ms: u64) {
        for mut alarm in self.state.board.of_chair(chair) {
            let id = alarm.event.id;
            if open.contains(&id) {
                continue;
            }
            if self.state.ward.end_silently(chair, id) {
                self.state.board.drop_alarm(id);
            } else if alarm.acknowledged_at.is_none() {
                alarm.acknowledged_at = Some(now_ms);
                alarm.reminded_at = Some(now_ms);
                self.state.board.take_back(alarm);
                let cleared = self.state.ward.acknowledged(chair, id, now_ms);
                self.closed.extend(cleared);
            }
        }
    }
}

/// How long (gateway time) a [`Deferred`] alarm waits for the reading that
/// raised it before it is taken back without it. That reading is handed out
/// again with the partition's other unacknowledged messages, first, as soon
/// as the partition is read: this only bounds a reading that never comes.
const DEFERRED_WAIT_MS: u64 = 30_000;

/// When deferred alarms may be due: after a reading of a chair holding some
/// (measured at `ts`), or at a tick.
pub(super) enum Due {
    Reading { chair: String, ts: u64, now_ms: u64 },
    Tick { now_ms: u64 },
}

/// Whether `command`, once applied, may make deferred alarms due.
pub(super) fn due_after(state: &State, command: &super::Command) -> Option<Due> {
    if state.after_copy.0.is_empty() {
        return None;
    }
    match command {
        super::Command::Reading {
            chair,
            reading,
            now_ms,
            ..
        } if state.after_copy.0.contains_key(chair.as_str()) => Some(Due::Reading {
            chair: chair.clone(),
            ts: reading.ts,
            now_ms: *now_ms,
        }),
        super::Command::Tick { now_ms, .. } => Some(Due::Tick { now_ms: *now_ms }),
        _ => None,
    }
}

/// Settle the deferred alarms `due` makes due: those of the chair raised at
/// or before the reading's device time, or, at a tick, those that waited
/// [`DEFERRED_WAIT_MS`].
pub(super) fn settle_due(state: &mut State, due: Due, out: &mut Vec<Pass>) {
    let mut ready = Vec::new();
    let now_ms = match due {
        Due::Reading { chair, ts, now_ms } => {
            if let Some(waiting) = state.after_copy.0.get_mut(chair.as_str()) {
                ready.extend(waiting.extract_if(.., |d| d.event.ts <= ts));
            }
            now_ms
        }
        Due::Tick { now_ms } => {
            for waiting in state.after_copy.0.values_mut() {
                ready.extend(waiting.extract_if(.., |d| d.since_ms + DEFERRED_WAIT_MS <= now_ms));
            }
            now_ms
        }
    };
    state.after_copy.0.retain(|_, waiting| !waiting.is_empty());
    if ready.is_empty() {
        return;
    }
    out.extend(super::restore::run(state, move |r| {
        for deferred in ready {
            r.deferred_due(deferred.event, now_ms);
        }
    }));
}
