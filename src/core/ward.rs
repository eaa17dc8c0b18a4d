//! The ward: every chair's patient state in a concurrent map, and the rules they share.
//!
//! Each operation takes one chair's map guard, changes that chair and builds the
//! events it caused while holding it; no guard is ever held across an `.await` or
//! while another key is touched.

use super::alarm::{AlarmContext, AlarmEvent, AlarmState, RuleMet};
use super::condition::Check;
use super::event::{Event, SessionEvent};
use super::patient::{Applied, Change, Effects, GroupChange, Latest, PatientState};
use super::reading::{Reading, Vital};
use super::rules::{Direction, RuleSet};
use super::session::{LimitOverride, Session, SessionError, SessionUpdate};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl WardError {
    /// Machine-readable code for dashboards and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            WardError::ChairLimit(_) => "chair_limit",
            WardError::UnknownChair(_) => "unknown_chair",
            WardError::Session(e) => e.code(),
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
    last_alarm_id: AtomicU64,
}

/// How a vital is named to people.
fn label(v: Vital) -> &'static str {
    match v {
        Vital::Hr => "HR",
        Vital::Spo2 => "SpO2",
        Vital::Sbp => "SBP",
        Vital::Dbp => "DBP",
        Vital::Rr => "RR",
        Vital::Etco2 => "EtCO2",
    }
}

fn side(d: Direction) -> &'static str {
    match d {
        Direction::Low => "below",
        Direction::High => "above",
    }
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
            last_alarm_id: AtomicU64::new(last_alarm_id),
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
            last_alarm_id: AtomicU64::new(0),
        }
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
        f: impl FnOnce(&Arc<str>, &mut PatientState, &mut dyn FnMut() -> u64) -> T,
    ) -> Result<T, WardError> {
        let mut next_id = || self.last_alarm_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(mut state) = self.patients.get_mut(chair) {
            let key = state.key().clone();
            return Ok(f(&key, state.value_mut(), &mut next_id));
        }
        if !create {
            return Err(WardError::UnknownChair(chair.to_string()));
        }
        if self.patients.len() >= self.max_chairs {
            return Err(WardError::ChairLimit(self.max_chairs));
        }
        let key: Arc<str> = Arc::from(chair);
        let mut entry = self
            .patients
            .entry(key.clone())
            .or_insert_with(|| PatientState::new(&self.rules));
        Ok(f(&key, entry.value_mut(), &mut next_id))
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
        self.with_chair(chair, true, |key, state, next_id| {
            let effects = state.set_session(&self.rules, update, now_ms, next_id)?;
            Ok(self.events(key, state, effects, now_ms))
        })?
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
        let mut next_id = || self.last_alarm_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut out = Vec::new();
        // `retain` keeping every chair: it takes each shard's lock once, where
        // `iter_mut` also allocates a shared guard per shard, on every tick (in a
        // replay, as often as readings arrive).
        self.patients.retain(|key, state| {
            let effects = state.tick(&self.rules, now_ms, &mut next_id);
            if !effects.is_empty() {
                out.extend(self.events(key, state, effects, now_ms));
            }
            true
        });
        out
    }

    /// Chairs with a patient in them (baseline, infusion, recovery) from which
    /// nothing has been heard for `silent_ms` of gateway time (or ever): for the
    /// operator, beside each chair's own `device_offline` alarm.
    pub fn silent_in_session(&self, now_ms: u64, silent_ms: u64) -> usize {
        self.patients
            .iter()
            .filter(|p| {
                matches!(
                    p.session().phase,
                    super::Phase::Baseline | super::Phase::Infusion | super::Phase::Recovery
                ) && now_ms.saturating_sub(p.latest().received_at) > silent_ms
            })
            .count()
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
        let message = match &c.check {
            Check::Threshold { vital, .. } => {
                format!("{} {} {} {}", label(*vital), value, side(direction), limit)
            }
            Check::Combined { .. } => {
                let parts: Vec<String> = context
                    .parts
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {} {} {}",
                            label(p.vital),
                            p.value,
                            side(p.condition),
                            p.limit
                        )
                    })
                    .collect();
                format!("{}: {}", c.rule, parts.join(" and "))
            }
            Check::Trend {
                vital,
                by,
                window_ms,
                ..
            } => {
                let window = if window_ms % 60_000 == 0 {
                    format!("{} min", window_ms / 60_000)
                } else {
                    format!("{} s", window_ms / 1_000)
                };
                let moved = match direction {
                    Direction::High => "rose",
                    Direction::Low => "fell",
                };
                format!(
                    "{} {moved} more than {by} in {window} (now {})",
                    label(*vital),
                    value
                )
            }
            Check::Stale { vital, .. } => format!("{} stale {} s", label(*vital), value),
            Check::Offline { .. } => format!("Device offline ({} s without data)", value),
            Check::PumpWithoutSpo2 { .. } => {
                format!("Pump running without live SpO2 ({} s)", value)
            }
        };
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
mod tests {
    use super::*;
    use crate::core::reading::Vital;
    use crate::core::rules::{Priority, RuleSpec};

    fn ward(max_chairs: usize) -> Ward {
        let rules = RuleSet::compile(&[RuleSpec {
            id: "spo2_low".into(),
            vital: Vital::Spo2,
            low: Some(90.0),
            priority: Priority::High,
            hysteresis: 1.0,
            ..RuleSpec::default()
        }])
        .unwrap();
        Ward::new(Arc::new(rules), max_chairs)
    }

    fn spo2(seq: u64, v: f64) -> Reading {
        let mut values = [None; 6];
        values[Vital::Spo2.index()] = Some(v);
        Reading {
            seq,
            ts: 1_000 * seq,
            values,
            pump: None,
        }
    }

    /// Patient `P` in `phase`, as a session message sent at `ts`.
    fn session(phase: crate::core::Phase, ts: u64) -> SessionUpdate {
        SessionUpdate {
            phase,
            patient: Some("P".into()),
            session_number: None,
            session_count: None,
            route: None,
            ts: Some(ts),
            by: None,
            limits: None,
        }
    }

    fn events(o: Outcome) -> Vec<AlarmEvent> {
        match o {
            Outcome::Accepted { events, .. } => events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Alarm(a) => Some(a),
                    Event::Session(_) => None,
                })
                .collect(),
            Outcome::Duplicate => vec![],
        }
    }

    #[test]
    fn chairs_are_independent_and_ids_are_gateway_wide() {
        let w = ward(10);
        let a = events(w.apply("n/1", &spo2(1, 85.0), 5).unwrap());
        let b = events(w.apply("n/2", &spo2(1, 85.0), 6).unwrap());
        assert_eq!((a[0].id, b[0].id), (1, 2));
        assert_eq!(&*b[0].chair, "n/2");
        let c = events(w.apply("n/1", &spo2(2, 95.0), 7).unwrap());
        assert_eq!(c[0].state, AlarmState::Cleared);
        assert_eq!(c[0].id, 1);
        assert_eq!(w.chairs().len(), 2);
    }

    #[test]
    fn idle_chairs_are_forgotten_but_not_with_an_alarm_or_a_session() {
        let w = ward(10);
        w.apply("n/1", &spo2(1, 97.0), 1_000).unwrap();
        w.apply("n/2", &spo2(1, 80.0), 1_000).unwrap(); // alarm raised
        w.apply("n/3", &spo2(1, 97.0), 1_000).unwrap();
        w.set_session("n/3", &session(crate::core::Phase::Baseline, 1), 1_000)
            .unwrap();
        let idle = SessionUpdate {
            patient: None,
            ..session(crate::core::Phase::Idle, 1)
        };
        w.set_session("n/4", &idle, 1_000).unwrap();
        assert_eq!(w.evict_idle(60_999, 60_000), 0);
        assert_eq!(w.evict_idle(61_000, 60_000), 1);
        let left: Vec<String> = w.chairs().iter().map(|c| c.chair.to_string()).collect();
        assert_eq!(
            left,
            vec!["n/2", "n/3", "n/4"],
            "n/4 was named by a session message"
        );
        assert_eq!(w.evict_idle(u64::MAX, 0), 0, "0 keeps every chair");
    }

    #[test]
    fn chair_limit_is_enforced_for_new_chairs_only() {
        let w = ward(1);
        w.apply("n/1", &spo2(1, 95.0), 1).unwrap();
        assert_eq!(
            w.apply("n/2", &spo2(1, 95.0), 1),
            Err(WardError::ChairLimit(1))
        );
        assert!(w.apply("n/1", &spo2(2, 95.0), 1).is_ok());
    }

    /// A reading delivered late keeps the minute of the infusion it was measured at,
    /// whatever the device's clock offset: 35.5, not the 48 it arrived at.
    #[test]
    fn a_late_reading_keeps_its_minute_of_the_infusion() {
        const MIN: u64 = 60_000;
        let w = ward(10);
        let start = 1_780_000_000_000;
        let behind = 10 * MIN; // the device's clock
        let baseline = session(crate::core::Phase::Baseline, start - 10 * MIN);
        w.set_session("n/1", &baseline, start - 10 * MIN).unwrap();
        let infusion = session(crate::core::Phase::Infusion, start);
        w.set_session("n/1", &infusion, start).unwrap();
        let at = |seq: u64, v| Reading {
            ts: start - behind + seq * 1_000,
            ..spo2(seq, v)
        };
        // 35 minutes delivered within 40 ms of being measured.
        for seq in 1..=35 * 60 {
            let r = at(seq, 97.0);
            w.apply("n/1", &r, r.ts + behind + 40).unwrap();
        }
        // The next 13 minutes buffered, delivered together at minute 48.
        let delivered = start + 48 * MIN;
        let mut raised = vec![];
        for seq in 35 * 60 + 1..=48 * 60 {
            let v = if seq == 35 * 60 + 30 { 80.0 } else { 97.0 };
            raised.extend(events(w.apply("n/1", &at(seq, v), delivered).unwrap()));
        }
        assert_eq!(raised[0].state, AlarmState::Raised);
        assert_eq!(raised[0].context.infusion_minute, Some(35.5));
    }
}
