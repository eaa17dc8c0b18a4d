//! One chair's patient state: the latest value of each vital, the pump, recently
//! seen message ids for de-duplication, the infusion session, and the state of every
//! alarm condition.
//!
//! Everything here is pure: time comes in as arguments (device `ts` for physiological
//! rules, gateway ms for technical ones and timers), so tests drive it with any clock.

mod clock;
mod due;
mod group;
mod measure;
mod session;
mod session_change;

pub use group::{Change, GroupChange, Member};

use super::alarm::PartValue;
use super::alarm_id::AlarmSeed;
use super::baseline::BaselineSampler;
use super::condition::{Check, Condition, ConditionState, Measure, Step};
use super::event::SessionChange;
use super::reading::{Pump, Reading, Vital};
use super::rules::RuleSet;
use super::session::{Phase, Session};
use clock::DeviceClock;
use due::{Due, Trend};
use serde::{Deserialize, Serialize};

/// How far before the device time up to which a chair was evaluated
/// elsewhere (see [`PatientState::evaluated_until`]) a reading may be and still
/// be taken for one handed out again: those are what the previous owner held
/// unacknowledged, seconds old. One older than this comes from a device clock
/// that stepped back, or another device in the chair, and is applied: it must
/// not silence the chair until its clock catches up.
pub const EVALUATED_REPEAT_WINDOW_MS: u64 = 60_000;

/// A vital's latest value and the device time it was measured at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub value: f64,
    pub ts: u64,
}

/// The pump's latest report and its device time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PumpSample {
    #[serde(flatten)]
    pub pump: Pump,
    pub ts: u64,
}

/// The latest known values of one chair, as dashboards see them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latest {
    pub vitals: [Option<Sample>; 6],
    pub pump: Option<PumpSample>,
    /// Gateway wall-clock time the last accepted reading arrived, ms since the epoch.
    pub received_at: u64,
}

impl Latest {
    pub fn get(&self, vital: Vital) -> Option<Sample> {
        self.vitals[vital.index()]
    }
}

/// How many recent `(seq, ts)` pairs a chair remembers to recognise redeliveries.
/// A QoS 1 redelivery repeats a message that was never acknowledged, so it is among
/// the most recent few; older repeats are dropped anyway by the per-vital time check.
pub const RECENT_IDS: usize = 32;

/// A `seq` this far below the latest means the device's counter restarted (a reboot),
/// not a late message: late deliveries come from the broker's in-flight window, which
/// is far smaller.
pub const SEQ_RESTART_GAP: u64 = 10_000;

/// A change of one alarm condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Index of the condition in the [`RuleSet`].
    pub condition: usize,
    pub step: Step,
    /// The value and limit that caused it.
    pub value: f64,
    pub limit: f64,
    /// Device time (`on_device_clock`) or gateway time (technical conditions,
    /// timers, acknowledgements, phase changes).
    pub ts: u64,
    /// `ts` is the device time of the reading behind the transition.
    pub on_device_clock: bool,
    /// Why a clear happened, when not by the value recovering.
    pub reason: Option<&'static str>,
    /// For combined conditions, every part.
    pub parts: Vec<PartValue>,
}

/// What one operation on a chair changed: alarm transitions and session changes,
/// in the order they happened (session changes first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effects {
    pub sessions: Vec<(SessionChange, Option<Phase>)>,
    pub transitions: Vec<Transition>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.transitions.is_empty()
    }
}

/// What applying one reading did.
// Returned by value once per reading and never stored: boxing would only add an
// allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Same `(seq, ts)` as a recent reading: a redelivery. Nothing was changed.
    Duplicate,
    Accepted {
        effects: Effects,
        /// Values older than the vital's latest, ignored (late, out-of-order delivery).
        late_values: usize,
        /// An in-order message carried a `ts` older than a stored value: the device
        /// clock stepped back.
        clock_stepped_back: bool,
        /// The chair's state after the reading.
        latest: Latest,
    },
}

/// Serialisable whole (cluster mode keeps snapshots of it): every field is
/// plain data on device or gateway wall-clock time, nothing tied to this process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatientState {
    latest: Latest,
    /// Gateway time each vital's latest value arrived.
    received: [u64; 6],
    recent: [(u64, u64); RECENT_IDS],
    recent_len: usize,
    recent_next: usize,
    /// The `seq` of the latest in-order message.
    last_seq: Option<u64>,
    conditions: Box<[ConditionState]>,
    session: Session,
    /// Collects baseline values, only while in the `baseline` phase.
    sampler: Option<Box<BaselineSampler>>,
    /// Trend history for vitals that trend rules watch.
    trends: [Option<Box<Trend>>; 6],
    /// The device announced it is offline (last will on the status topic).
    device_offline: bool,
    /// Gateway time the chair was last heard from (a reading or an online status).
    heard_at: u64,
    /// Gateway time the chair was first heard from: silence before it is not counted.
    first_heard: u64,
    /// In recovery, gateway time since which the chair has looked fit to leave.
    stable_since: Option<u64>,
    /// The device's clock against the gateway's, from its readings' `ts`.
    clock: DeviceClock,
    /// Gateway time the chair's patient last left (a new session): values measured
    /// before it are the previous patient's and are not taken (0: never).
    forgotten_at: u64,
    /// Per alarm group, what dashboards were last told of its alarm.
    shown: Box<[Option<group::Shown>]>,
    /// Device time up to which another gateway evaluated this chair's readings,
    /// until a reading after it is applied here (see [`PatientState::evaluated_until`]).
    evaluated_until: Option<u64>,
}

impl PatientState {
    pub fn new(rules: &RuleSet) -> Self {
        PatientState {
            latest: Latest::default(),
            received: [0; 6],
            recent: [(0, 0); RECENT_IDS],
            recent_len: 0,
            recent_next: 0,
            last_seq: None,
            conditions: vec![ConditionState::Normal; rules.len()].into_boxed_slice(),
            session: Session::default(),
            sampler: None,
            trends: Default::default(),
            device_offline: false,
            heard_at: 0,
            first_heard: 0,
            stable_since: None,
            clock: DeviceClock::default(),
            forgotten_at: 0,
            shown: vec![None; rules.group_count()].into_boxed_slice(),
            evaluated_until: None,
        }
    }

    /// Readings measured at or before device time `ts` were evaluated by the
    /// gateway this chair was restored from (their alarms are in what was
    /// restored): until a reading after `ts` is applied here, one at or before
    /// it is a redelivery and changes nothing. A restored chair does not know
    /// the device's message counter, so without this an old reading handed out
    /// again would be taken as the newest and raise again an alarm that had
    /// already ended. After the first newer reading, the counter orders them.
    /// A reading more than [`EVALUATED_REPEAT_WINDOW_MS`] before `ts` is not
    /// such a repeat: it is applied, and ends this. The chair counts as heard of
    /// at gateway time `now_ms`, so that it is not forgotten as idle before the
    /// repeats arrive.
    pub fn evaluated_until(&mut self, ts: u64, now_ms: u64) {
        if self.last_seq.is_none() {
            self.evaluated_until = Some(self.evaluated_until.map_or(ts, |t| t.max(ts)));
            if self.first_heard == 0 {
                self.first_heard = now_ms;
            }
        }
    }

    /// Device time `ts` of this chair's device on the gateway's clock.
    pub fn gateway_time_of(&self, ts: u64) -> u64 {
        self.clock.to_gateway(ts)
    }

    /// The device clock's estimated offset (`gateway − device`, ms), if known.
    pub fn clock_offset(&self) -> Option<i64> {
        self.clock.offset()
    }

    pub fn latest(&self) -> &Latest {
        &self.latest
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the chair can be forgotten at gateway time `now_ms`: no session in
    /// progress (idle or discharged), never named by a session message, every
    /// condition normal, and nothing heard for `idle_ms`.
    pub fn evictable(&self, now_ms: u64, idle_ms: u64) -> bool {
        matches!(self.session.phase, Phase::Idle | Phase::Discharged)
            // A chair a session message ever named keeps the time of the latest, so
            // an older retained message (e.g. redelivered after the broker lost the
            // gateway's session) cannot bring a past patient's session back.
            && self.session.message_ts.is_none()
            && self.conditions.iter().all(|c| *c == ConditionState::Normal)
            && self.silent_for(now_ms) >= idle_ms
    }

    /// Gateway ms nothing has been heard from the chair (a reading, a status),
    /// counted from when its current phase was applied (a restart too) or it was
    /// first heard of, whichever is later: as `device_offline` counts while it is
    /// not raised ([`Self::silent_since`]).
    pub fn silent_for(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.silent_since(self.heard_at, false))
    }

    /// The alarm ids currently active on this chair.
    pub fn active_alarms(&self) -> impl Iterator<Item = u64> + '_ {
        self.conditions.iter().filter_map(ConditionState::alarm_id)
    }

    fn seen(&self, seq: u64, ts: u64) -> bool {
        self.recent[..self.recent_len].contains(&(seq, ts))
    }

    fn remember(&mut self, seq: u64, ts: u64) {
        self.recent[self.recent_next] = (seq, ts);
        self.recent_next = (self.recent_next + 1) % RECENT_IDS;
        self.recent_len = (self.recent_len + 1).min(RECENT_IDS);
    }

    /// Whether `seq` comes after the latest message this chair has sent: a higher
    /// counter, or one so much lower that the device's counter restarted.
    fn in_order(&self, seq: u64) -> bool {
        match self.last_seq {
            None => true,
            Some(last) => seq > last || last - seq > SEQ_RESTART_GAP,
        }
    }

    /// Apply a reading received at gateway time `received_at`.
    ///
    /// Message order comes from the device's `seq`, not its clock:
    /// - an exact `(seq, ts)` repeat of a recent message is a redelivery and changes
    ///   nothing;
    /// - a message after the latest one is applied in full, even when its `ts` is
    ///   older than the stored values (the device clock stepped back, e.g. an NTP
    ///   correction): the chair must not go silent until the clock catches up.
    ///   Pending alarm delays are shifted by the step, so the breach time already
    ///   counted is kept;
    /// - a message from before the latest one (a late, out-of-order delivery) only
    ///   updates vitals it carries a newer measurement of; older values are ignored
    ///   and counted, so a late message cannot overwrite newer state.
    pub fn apply(
        &mut self,
        rules: &RuleSet,
        reading: &Reading,
        received_at: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
    ) -> Applied {
        if self.seen(reading.seq, reading.ts) {
            return Applied::Duplicate;
        }
        match self.evaluated_until {
            Some(until)
                if reading.ts <= until && until - reading.ts <= EVALUATED_REPEAT_WINDOW_MS =>
            {
                return Applied::Duplicate
            }
            Some(_) => self.evaluated_until = None,
            None => {}
        }
        self.remember(reading.seq, reading.ts);
        self.clock.observe(reading.ts, received_at);
        let in_order = self.in_order(reading.seq);
        if in_order {
            self.last_seq = Some(reading.seq);
        }
        let mut late_values = 0;
        let mut clock_stepped_back = false;
        // Conditions to evaluate: those on the vitals this reading updated, and those
        // judged on every reading.
        let mut due = Due::new(rules.len());
        for &i in rules.every_reading() {
            due.insert(i);
        }
        // Measured before the chair's patient left: the previous patient's values.
        let previous_patient =
            self.forgotten_at > 0 && self.clock.to_gateway(reading.ts) < self.forgotten_at;
        for (vital, value) in reading.vitals() {
            if previous_patient {
                late_values += 1;
                continue;
            }
            let slot = &mut self.latest.vitals[vital.index()];
            if let Some(prev) = *slot {
                if reading.ts < prev.ts {
                    if !in_order {
                        late_values += 1;
                        continue;
                    }
                    clock_stepped_back = true;
                    let step = prev.ts - reading.ts;
                    for &i in rules.for_vital(vital) {
                        if let ConditionState::Pending { since } = &mut self.conditions[i] {
                            if !rules.condition(i).check.is_timed() {
                                *since = since.saturating_sub(step);
                            }
                        }
                    }
                    if let Some(t) = &mut self.trends[vital.index()] {
                        t.samples.clear();
                    }
                }
            }
            *slot = Some(Sample {
                value,
                ts: reading.ts,
            });
            self.received[vital.index()] = received_at;
            if let Some(sampler) = &mut self.sampler {
                sampler.add(vital, value);
            }
            let window = rules.trend_window(vital);
            if window > 0 {
                self.trends[vital.index()]
                    .get_or_insert_with(Box::default)
                    .push(reading.ts, value, window);
            }
            for &i in rules.for_vital(vital) {
                due.insert(i);
            }
        }
        if let Some(pump) = reading.pump {
            if previous_patient {
                late_values += 1;
            } else if in_order || self.latest.pump.is_none_or(|p| reading.ts >= p.ts) {
                self.latest.pump = Some(PumpSample {
                    pump,
                    ts: reading.ts,
                });
            } else {
                late_values += 1;
            }
        }
        self.latest.received_at = received_at;
        // Data is flowing: whatever the status topic last said, the device is online.
        self.device_offline = false;
        self.heard_at = received_at;
        if self.first_heard == 0 {
            self.first_heard = received_at;
        }
        let mut effects = Effects::default();
        for i in due.iter() {
            let ts = if rules.condition(i).check.is_timed() {
                received_at
            } else {
                reading.ts
            };
            self.evaluate(rules, i, ts, received_at, next_id, &mut effects);
        }
        self.check_discharge(rules, received_at, &mut effects);
        Applied::Accepted {
            effects,
            late_values,
            clock_stepped_back,
            latest: self.latest,
        }
    }

    /// Step condition `i` with its current measurement, if it applies.
    fn evaluate(
        &mut self,
        rules: &RuleSet,
        i: usize,
        ts: u64,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
        effects: &mut Effects,
    ) {
        let cond = rules.condition(i);
        if !cond.applies(&self.session) {
            return;
        }
        let Some(m) = self.measure(rules, i, now_ms) else {
            // Nothing to judge. With a value but no limit any more (a per-patient
            // limit removed from a rule whose other limits are relative to a baseline
            // the patient does not have), whatever the condition held ends. Without
            // a value (nothing measured yet, e.g. just after a restart), an alarm
            // stays as it is; only a breach building up is forgotten.
            let no_limit = matches!(&cond.check, Check::Threshold { vital, .. } if self.latest.get(*vital).is_some());
            if !no_limit {
                if let ConditionState::Pending { .. } = self.conditions[i] {
                    self.conditions[i] = ConditionState::Normal;
                }
                return;
            }
            let step = Condition::withdraw(&mut self.conditions[i]);
            self.record_end(
                rules,
                i,
                step,
                ts,
                !cond.check.is_timed(),
                "no_limit",
                effects,
            );
            return;
        };
        // A condition raising while another of its group holds an alarm joins that
        // alarm: one alarm per group (see `group`).
        let conditions = &self.conditions;
        let mut state = conditions[i];
        let seed = AlarmSeed {
            rule: &cond.rule,
            ts,
        };
        let mut id = || {
            group::group_alarm(conditions, rules, rules.group_of(i))
                .unwrap_or_else(|| next_id(seed))
        };
        let step = cond.step(&mut state, &m, ts, &mut id);
        self.conditions[i] = state;
        if step != Step::Nothing {
            let reason = match (step, cond.check.is_timed()) {
                (Step::Cleared { .. }, true) => Some("data_returned"),
                _ => None,
            };
            effects.transitions.push(Transition {
                condition: i,
                step,
                value: m.value,
                limit: m.limit,
                ts,
                on_device_clock: !cond.check.is_timed(),
                reason,
                parts: measure::parts(self, rules, cond),
            });
        }
    }

    /// Evaluate the timed conditions (stale data, device offline, pump without SpO2)
    /// and discharge readiness at gateway time `now_ms`. Called periodically.
    pub fn tick(
        &mut self,
        rules: &RuleSet,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
    ) -> Effects {
        let mut effects = Effects::default();
        for &i in rules.timed() {
            self.evaluate(rules, i, now_ms, now_ms, next_id, &mut effects);
        }
        self.check_discharge(rules, now_ms, &mut effects);
        effects
    }

    /// The device said it is online or offline (status topic, e.g. its last will).
    pub fn set_device_online(
        &mut self,
        rules: &RuleSet,
        online: bool,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
    ) -> Effects {
        self.device_offline = !online;
        if self.first_heard == 0 {
            self.first_heard = now_ms;
        }
        if online {
            // Count silence from now, not from before the device went away.
            self.heard_at = self.heard_at.max(now_ms);
        }
        let mut effects = Effects::default();
        for &i in rules.every_reading() {
            if matches!(rules.condition(i).check, Check::Offline { .. }) {
                self.evaluate(rules, i, now_ms, now_ms, next_id, &mut effects);
            }
        }
        effects
    }

    /// The measurement of condition `i` for this patient; `None` when there is
    /// nothing to compare.
    fn measure(&self, rules: &RuleSet, i: usize, now_ms: u64) -> Option<Measure> {
        measure::measure(self, rules, i, now_ms)
    }
}

#[cfg(test)]
mod engine_tests;

#[cfg(test)]
mod tests;
