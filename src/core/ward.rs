//! The ward: every chair's patient state in a concurrent map, and the rules they share.
//!
//! Each operation takes one chair's map guard, changes that chair and builds the
//! events it caused while holding it; no guard is ever held across an `.await` or
//! while another key is touched.

use super::alarm::{AlarmContext, AlarmEvent, AlarmState, RuleMet};
use super::alarm_id::{AlarmIds, AlarmSeed};
use super::event::{Event, SessionEvent};
use super::message;
use super::patient::{Applied, Change, Effects, GroupChange, Latest, PatientState};
use super::reading::Reading;
use super::rules::RuleSet;
use super::session::{LimitOverride, Session, SessionError, SessionUpdate};
use dashmap::DashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// An operation on a chair was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WardError {
    #[error("the ward already tracks its maximum of {0} chairs")]
    ChairLimit(usize),
    #[error("no chair '{0}' is known")]
    UnknownChair(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the gateway is shutting down; send it again to the gateway you reconnect to")]
    ShuttingDown,
    #[error("the change could not be stored (cluster mode: the chair's partition changed hands); send it again")]
    NotJournaled,
}

impl WardError {
    /// Machine-readable code for dashboards and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            WardError::ChairLimit(_) => "chair_limit",
            WardError::UnknownChair(_) => "unknown_chair",
            WardError::Session(e) => e.code(),
            WardError::ShuttingDown => "shutting_down",
            WardError::NotJournaled => "not_journaled",
        }
    }
}

/// What applying a reading produced.
// Returned by value once per reading and never stored: boxing would only add an
// allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A redelivered reading: nothing changed, nothing to send.
    Duplicate,
    Accepted {
        /// The chair's key, shared with its map entry.
        chair: Arc<str>,
        /// Events to hand to the fan-out, in order.
        events: Vec<Event>,
        /// Values older than the vital's latest, ignored.
        late_values: usize,
        /// The device clock stepped back (see [`PatientState::apply`]).
        clock_stepped_back: bool,
        /// The chair's state after the reading, for live vitals.
        latest: Latest,
    },
}

/// One chair, its latest values and its session, for snapshots.
#[derive(Debug, Clone)]
pub struct ChairView {
    pub chair: Arc<str>,
    pub latest: Latest,
    pub session: Session,
}

impl ChairView {
    fn of(chair: &Arc<str>, state: &PatientState) -> ChairView {
        ChairView {
            chair: chair.clone(),
            latest: *state.latest(),
            session: state.session().clone(),
        }
    }
}

pub struct Ward {
    patients: DashMap<Arc<str>, PatientState>,
    rules: Arc<RuleSet>,
    max_chairs: usize,
    alarm_ids: AlarmIds,
}

impl Ward {
    /// A ward whose first alarm gets id 1.
    pub fn new(rules: Arc<RuleSet>, max_chairs: usize) -> Self {
        Self::with_alarm_ids_after(rules, max_chairs, 0)
    }

    /// A ward whose alarm ids start after `last_alarm_id`. The gateway starts them
    /// after its start time in microseconds, so an id from an earlier run (held by a
    /// dashboard that has not caught up) never names a different patient's alarm.
    pub fn with_alarm_ids_after(
        rules: Arc<RuleSet>,
        max_chairs: usize,
        last_alarm_id: u64,
    ) -> Self {
        Ward {
            patients: DashMap::new(),
            rules,
            max_chairs,
            alarm_ids: AlarmIds::After(AtomicU64::new(last_alarm_id)),
        }
    }

    /// A ward whose alarm ids are derived from what raised them (cluster mode:
    /// see [`super::alarm_id`]), so that a reading evaluated again by another
    /// gateway raises its alarm under the same id.
    pub fn with_derived_alarm_ids(rules: Arc<RuleSet>, max_chairs: usize) -> Self {
        Ward {
            patients: DashMap::new(),
            rules,
            max_chairs,
            alarm_ids: AlarmIds::Derived,
        }
    }

    /// A ward used from one thread only (a replay): the chair map in dashmap's
    /// fewest shards (two), so the timer tick takes two locks instead of one per
    /// shard (a tick per second of recording is about one per reading there). No
    /// alarm-id offset, no chair limit.
    pub fn single_threaded(rules: Arc<RuleSet>) -> Self {
        Ward {
            patients: DashMap::with_shard_amount(2),
            rules,
            max_chairs: usize::MAX,
            alarm_ids: AlarmIds::After(AtomicU64::new(0)),
        }
    }

    /// Whether alarm ids are derived from what raised them (see
    /// [`Ward::with_derived_alarm_ids`]).
    pub fn derives_alarm_ids(&self) -> bool {
        matches!(self.alarm_ids, AlarmIds::Derived)
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn chair_count(&self) -> usize {
        self.patients.len()
    }

    /// Run `f` on `chair`'s state, creating it if `create` and the chair limit
    /// allows. Returns the chair's shared key with `f`'s result.
    fn with_chair<T>(
        &self,
        chair: &str,
        create: bool,
        f: impl FnOnce(&Arc<str>, &mut PatientState, &mut dyn FnMut(AlarmSeed<'_>) -> u64) -> T,
    ) -> Result<T, WardError> {
        let mut next_id = |seed: AlarmSeed<'_>| self.alarm_ids.next(chair, seed);
        if let Some(mut state) = self.patients.get_mut(chair) {
            let key = state.key().clone();
            return Ok(f(&key, state.value_mut(), &mut next_id));
        }
        if !create {
            return Err(WardError::UnknownChair(chair.to_string()));
        }
        let key = self.admit(chair)?;
        let mut entry = self
            .patients
            .entry(key.clone())
            .or_insert_with(|| PatientState::new(&self.rules));
        Ok(f(&key, entry.value_mut(), &mut next_id))
    }

    /// As [`Ward::with_chair`] creating, for a change that may be refused: a chair
    /// the ward does not know enters it only with `f`'s success, so a refused
    /// message leaves no empty chair (shown to every station, counted toward
    /// `max_chairs`).
    fn with_chair_if<T>(
        &self,
        chair: &str,
        f: impl FnOnce(
            &Arc<str>,
            &mut PatientState,
            &mut dyn FnMut(AlarmSeed<'_>) -> u64,
        ) -> Result<T, WardError>,
    ) -> Result<T, WardError> {
        if self.patients.contains_key(chair) {
            return self.with_chair(chair, false, f)?;
        }
        let key = self.admit(chair)?;
        let mut state = PatientState::new(&self.rules);
        let mut next_id = |seed: AlarmSeed<'_>| self.alarm_ids.next(chair, seed);
        let out = f(&key, &mut state, &mut next_id)?;
        // Only the engine writes the ward: nothing can have added the chair since.
        self.patients.entry(key).or_insert(state);
        Ok(out)
    }

    /// A new chair's shared key, if the chair limit allows one more.
    fn admit(&self, chair: &str) -> Result<Arc<str>, WardError> {
        if self.patients.len() >= self.max_chairs {
            return Err(WardError::ChairLimit(self.max_chairs));
        }
        Ok(Arc::from(chair))
    }

    /// Apply a reading to `chair`'s state and build the events it caused.
    pub fn apply(
        &self,
        chair: &str,
        reading: &Reading,
        received_at: u64,
    ) -> Result<Outcome, WardError> {
        self.with_chair(chair, true, |key, state, next_id| {
            match state.apply(&self.rules, reading, received_at, next_id) {
                Applied::Duplicate => Outcome::Duplicate,
                Applied::Accepted {
                    effects,
                    late_values,
                    clock_stepped_back,
                    latest,
                } => Outcome::Accepted {
                    chair: key.clone(),
                    events: self.events(key, state, effects, received_at),
                    late_values,
                    clock_stepped_back,
                    latest,
                },
            }
        })
    }

    /// Apply a session message or command to `chair`.
    pub fn set_session(
        &self,
        chair: &str,
        update: &SessionUpdate,
        now_ms: u64,
    ) -> Result<Vec<Event>, WardError> {
        self.with_chair_if(chair, |key, state, next_id| {
            // A new session: the previous patient's alarms end first, under
            // their session, then the new one begins.
            let ended = state.end_previous_patient(&self.rules, update, now_ms)?;
            let mut out = self.events(key, state, ended, now_ms);
            let effects = state.set_session(&self.rules, update, now_ms, next_id)?;
            out.extend(self.events(key, state, effects, now_ms));
            Ok(out)
        })
    }

    /// Change one rule's limits for the patient in `chair`.
    pub fn set_limit(
        &self,
        chair: &str,
        rule: &str,
        limits: LimitOverride,
        by: &str,
        now_ms: u64,
    ) -> Result<Vec<Event>, WardError> {
        self.with_chair(chair, false, |key, state, next_id| {
            let effects = state.set_limit(&self.rules, rule, limits, by, now_ms, next_id)?;
            Ok(self.events(key, state, effects, now_ms))
        })?
    }

    /// The device at `chair` said it is online or offline.
    pub fn set_device_online(
        &self,
        chair: &str,
        online: bool,
        now_ms: u64,
    ) -> Result<Vec<Event>, WardError> {
        self.with_chair(chair, true, |key, state, next_id| {
            let effects = state.set_device_online(&self.rules, online, now_ms, next_id);
            self.events(key, state, effects, now_ms)
        })
    }

    /// Alarm `alarm_id` of `chair` was acknowledged (latched alarms may clear).
    pub fn acknowledged(&self, chair: &str, alarm_id: u64, now_ms: u64) -> Vec<Event> {
        self.with_chair(chair, false, |key, state, _| {
            let effects = state.acknowledged(&self.rules, alarm_id, now_ms);
            self.events(key, state, effects, now_ms)
        })
        .unwrap_or_default()
    }

    /// Restore a chair's session recorded before a restart.
    pub fn restore(&self, event: &SessionEvent, now_ms: u64) -> Result<(), WardError> {
        self.with_chair(&event.chair, true, |_, state, _| {
            state.restore(&self.rules, event, now_ms)
        })
    }

    /// Readings of `chair` at or before device time `ts` were evaluated by the
    /// gateway it is restored from (see [`PatientState::evaluated_until`]).
    pub fn restore_evaluated_until(
        &self,
        chair: &str,
        ts: u64,
        now_ms: u64,
    ) -> Result<(), WardError> {
        self.with_chair(chair, true, |_, state, _| state.evaluated_until(ts, now_ms))
    }

    /// A copy of `chair`'s whole state (cluster mode keeps it as a snapshot).
    pub fn state_of(&self, chair: &str) -> Option<PatientState> {
        self.patients.get(chair).map(|s| s.value().clone())
    }

    /// Put `state` in as `chair`'s, replacing what was there (cluster mode: a
    /// snapshot of the chair taken over from its previous owner).
    pub fn take_back(&self, chair: &str, state: PatientState) -> Result<(), WardError> {
        self.with_chair(chair, true, |_, s, _| *s = state)
    }

    /// [`Ward::restore`] over a chair taken back from a snapshot (see
    /// [`PatientState::restore_after_snapshot`]).
    pub fn restore_after_snapshot(&self, event: &SessionEvent, now_ms: u64) {
        let _ = self.with_chair(&event.chair, false, |_, state, _| {
            state.restore_after_snapshot(&self.rules, event, now_ms)
        });
    }

    /// [`Ward::restore_alarm`] over a chair taken back from a snapshot (see
    /// [`PatientState::restore_alarm_after_snapshot`]).
    pub fn restore_alarm_after_snapshot(&self, event: &AlarmEvent) -> bool {
        self.with_chair(&event.chair, false, |_, state, _| {
            state.restore_alarm_after_snapshot(&self.rules, event)
        })
        .unwrap_or(false)
    }

    /// End alarm `id` of `chair` without an event, if it has ended (see
    /// [`PatientState::end_silently`]).
    pub fn end_silently(&self, chair: &str, id: u64) -> bool {
        self.with_chair(chair, false, |_, state, _| {
            state.end_silently(&self.rules, id)
        })
        .unwrap_or(false)
    }

    /// Take back an alarm open when the previous run stopped (see
    /// [`PatientState::restore_alarm`]). False if no matching condition is there (or
    /// the chair limit is reached).
    pub fn restore_alarm(&self, event: &AlarmEvent) -> bool {
        self.with_chair(&event.chair, true, |_, state, _| {
            state.restore_alarm(&self.rules, event)
        })
        .unwrap_or(false)
    }

    /// Judge every chair's timed conditions at gateway time `now_ms`.
    pub fn tick(&self, now_ms: u64) -> Vec<Event> {
        let mut out = Vec::new();
        // `retain` keeping every chair: it takes each shard's lock once, where
        // `iter_mut` also allocates a shared guard per shard, on every tick (in a
        // replay, as often as readings arrive).
        self.patients.retain(|key, state| {
            let effects = state.tick(&self.rules, now_ms, &mut |seed| {
                self.alarm_ids.next(key, seed)
            });
            if !effects.is_empty() {
                out.extend(self.events(key, state, effects, now_ms));
            }
            true
        });
        out
    }

    /// Chairs with a patient in them (baseline, infusion, recovery) from which
    /// nothing has been heard for more than `silent_ms` of gateway time, counted as
    /// the `device_offline` alarm counts silence ([`PatientState::silent_for`]):
    /// for the operator, beside each chair's own alarm.
    pub fn silent_in_session(&self, now_ms: u64, silent_ms: u64) -> usize {
        self.patients
            .iter()
            .filter(|p| {
                matches!(
                    p.session().phase,
                    super::Phase::Baseline | super::Phase::Infusion | super::Phase::Recovery
                ) && p.silent_for(now_ms) > silent_ms
            })
            .count()
    }

    /// Drop every chair `which` names, whatever its state: another owner carries
    /// on with it (cluster mode). How many went.
    pub fn forget(&self, which: impl Fn(&str) -> bool) -> usize {
        let before = self.patients.len();
        self.patients.retain(|chair, _| !which(chair));
        before.saturating_sub(self.patients.len())
    }

    /// Forget chairs that have been idle (or discharged), with nothing raised or
    /// building up, and silent for `idle_ms` of gateway time: the map would otherwise
    /// keep every chair ever seen. Chairs a session message named are kept (their
    /// last message time guards against stale retained messages). Returns how many
    /// were forgotten; a chair comes back with its next message.
    pub fn evict_idle(&self, now_ms: u64, idle_ms: u64) -> usize {
        if idle_ms == 0 {
            return 0;
        }
        let before = self.patients.len();
        self.patients.retain(|_, p| !p.evictable(now_ms, idle_ms));
        before.saturating_sub(self.patients.len())
    }

    /// Turn a chair's effects into events: session changes, then the changes of
    /// the alarms people see (one per group touched), with their context.
    fn events(
        &self,
        chair: &Arc<str>,
        state: &mut PatientState,
        effects: Effects,
        now_ms: u64,
    ) -> Vec<Event> {
        let mut out = Vec::with_capacity(effects.sessions.len() + effects.transitions.len());
        for (change, previous) in effects.sessions {
            let mut e = SessionEvent::new(chair.clone(), change, state.session(), now_ms);
            e.previous = previous;
            e.clock_offset_ms = state.clock_offset();
            out.push(Event::Session(e));
        }
        if effects.transitions.is_empty() {
            return out;
        }
        for g in state.present(&self.rules, effects.transitions) {
            // The session's times come from the clinic system or the gateway: a
            // physiological change is placed when it was measured (its reading's
            // device time on the gateway's clock), so a reading delivered late keeps
            // its minute of the infusion; technical ones happen at gateway time.
            let t = &g.cause;
            let at = if t.on_device_clock {
                state.gateway_time_of(t.ts)
            } else {
                now_ms
            };
            let mut context = state.context(&self.rules, g.top, at);
            if g.cause.condition == g.top {
                context.parts = t.parts.clone();
            }
            out.push(Event::Alarm(self.alarm_event(chair, &g, context, now_ms)));
        }
        out
    }

    fn alarm_event(
        &self,
        chair: &Arc<str>,
        g: &GroupChange,
        context: AlarmContext,
        now_ms: u64,
    ) -> AlarmEvent {
        let c = self.rules.condition(g.top);
        let t = &g.cause;
        // The top rule's own value and limit while the alarm is open; at a clear, the
        // transition that ended it.
        let (value, limit) = match (g.change, g.members.first()) {
            (Change::Cleared, _) | (_, None) => (t.value, t.limit),
            (_, Some(m)) => (m.value, m.limit),
        };
        let state = match g.change {
            Change::Cleared => AlarmState::Cleared,
            _ if g.acknowledged => AlarmState::Acknowledged,
            _ => AlarmState::Raised,
        };
        let direction = c.check.direction();
        let ended = matches!(g.change, Change::Cleared);
        let message = message::alarm(&c.check, &c.rule, value, limit, &context.parts, ended);
        let rules = g
            .members
            .iter()
            .map(|m| {
                let c = self.rules.condition(m.condition);
                RuleMet {
                    rule: c.rule.clone(),
                    priority: c.priority,
                    value: m.value,
                    limit: m.limit,
                }
            })
            .collect();
        let previous_priority = match g.change {
            Change::Updated { previous } if previous != c.priority => Some(previous),
            _ => None,
        };
        AlarmEvent {
            id: g.id,
            state,
            chair: chair.clone(),
            kind: c.check.kind(),
            vital: c.check.vital(),
            rule: c.rule.clone(),
            condition: direction,
            value,
            limit,
            priority: c.priority,
            message: Arc::from(message),
            latching: c.latching,
            ts: t.ts,
            received_at: now_ms,
            raised_ts: g.raised_ts,
            escalated: false,
            escalation_level: 0,
            reminder: false,
            reason: match g.change {
                Change::Cleared => t.reason,
                _ => None,
            },
            acknowledged_by: None,
            rules,
            updated: matches!(g.change, Change::Updated { .. }),
            previous_priority,
            context,
        }
    }

    /// One chair with its latest values and session.
    pub fn chair(&self, chair: &str) -> Option<ChairView> {
        self.patients
            .get(chair)
            .map(|e| ChairView::of(e.key(), e.value()))
    }

    /// Every chair with its latest values and session, ordered by chair key.
    pub fn chairs(&self) -> Vec<ChairView> {
        let mut all: Vec<ChairView> = self
            .patients
            .iter()
            .map(|e| ChairView::of(e.key(), e.value()))
            .collect();
        all.sort_by(|a, b| a.chair.cmp(&b.chair));
        all
    }
}

#[cfg(test)]
#[path = "ward_tests.rs"]
mod tests;
