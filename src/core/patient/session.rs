//! Session operations on one chair: phase changes (which swap the alarm profile),
//! per-patient limits, acknowledgements of latched alarms, discharge readiness,
//! restoring after a restart, and the context carried by every alarm.

use super::group::group_alarm;
use super::session_change::{check_override, Checked};
use super::{Effects, Member, PatientState, Transition};
use crate::core::alarm::AlarmContext;
use crate::core::alarm_id::AlarmSeed;
use crate::core::baseline::BaselineSampler;
use crate::core::condition::{Condition, ConditionState, Step};
use crate::core::event::{SessionChange, SessionEvent};
use crate::core::reading::Vital;
use crate::core::rules::RuleSet;
use crate::core::session::{LimitOverride, Phase, SessionError, SessionUpdate};
use std::sync::Arc;

impl PatientState {
    /// Apply a session message or command at gateway time `now_ms`.
    ///
    /// Messages are ordered by their own `ts` (the clinic system's clock), compared
    /// only with the `ts` of earlier messages: one already applied (a retained
    /// message redelivered) changes nothing, an older one is refused. Commands from
    /// dashboards carry no `ts` and apply when made. A phase change swaps the profile
    /// at once: conditions of rules that do not apply in the new phase end
    /// (`cleared`, reason `phase_change`), the others are judged again against the
    /// new limits. A new patient, or entering `baseline` or `idle`, starts a new
    /// session: nothing of the previous patient carries over.
    pub fn set_session(
        &mut self,
        rules: &RuleSet,
        update: &SessionUpdate,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
    ) -> Result<Effects, SessionError> {
        let Some(Checked {
            overrides,
            new_session,
            phase_changed,
        }) = self.check_session(rules, update)?
        else {
            return Ok(Effects::default());
        };
        // A session message taken, even one that changes nothing, confirms the
        // restored session: the next message steps from it. A station's command
        // (no `ts`) steps anyway, and says nothing of what the clinic system sent
        // while the gateway was down.
        if update.ts.is_some() {
            self.session.restored = false;
        }
        let s = &self.session;
        let details_changed = update.route.is_some_and(|r| r != s.route)
            || update
                .session_number
                .is_some_and(|n| Some(n) != s.session_number)
            || update
                .session_count
                .is_some_and(|n| Some(n) != s.session_count);
        let limits_changed = overrides.as_ref().is_some_and(|o| *o != s.overrides);
        if let Some(ts) = update.ts {
            self.session.message_ts = Some(ts);
        }
        if !phase_changed && !limits_changed && !details_changed {
            return Ok(Effects::default());
        }
        let previous = self.session.known.then_some(self.session.phase);
        let mut effects = Effects::default();
        if new_session {
            effects = self.end_patient_alarms(rules, now_ms, true);
            self.forget_patient_values(now_ms);
        }
        let ts = update.ts.unwrap_or(now_ms);
        let s = &mut self.session;
        s.known = true;
        s.by = update.by.as_deref().map(Arc::from);
        if phase_changed {
            if s.phase == Phase::Baseline && update.phase != Phase::Baseline && !new_session {
                if let Some(sampler) = self.sampler.take() {
                    s.baseline = sampler.finish(rules.session.baseline_min_samples);
                }
            }
            if new_session {
                s.baseline = [None; 6];
                s.overrides.clear();
                s.infusion_started = None;
                s.session_number = None;
                s.session_count = None;
                s.route = Default::default();
            }
            self.sampler = (update.phase == Phase::Baseline)
                .then(|| Box::new(BaselineSampler::new(rules.session.baseline_max_samples)));
            if update.phase == Phase::Infusion && s.infusion_started.is_none() {
                s.infusion_started = Some(ts);
            }
            s.phase = update.phase;
            s.phase_since = ts;
            s.applied_at = now_ms;
            s.discharge_ready = false;
            self.stable_since = None;
        }
        let s = &mut self.session;
        if update.patient.is_some() || update.phase == Phase::Idle {
            s.patient = update.patient.as_deref().map(Arc::from);
        }
        if update.session_number.is_some() {
            s.session_number = update.session_number;
        }
        if update.session_count.is_some() {
            s.session_count = update.session_count;
        }
        if let Some(route) = update.route {
            s.route = route;
        }
        if let Some(o) = overrides {
            s.overrides = o;
        }
        let change = if phase_changed {
            SessionChange::Phase
        } else if limits_changed {
            SessionChange::Limits
        } else {
            SessionChange::Details
        };
        effects
            .sessions
            .push((change, previous.filter(|_| phase_changed)));
        self.reevaluate(rules, now_ms, next_id, &mut effects);
        Ok(effects)
    }

    /// Change one rule's per-patient limits on behalf of `by` (both `None`: back to
    /// the configured limits).
    pub fn set_limit(
        &mut self,
        rules: &RuleSet,
        rule: &str,
        o: LimitOverride,
        by: &str,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
    ) -> Result<Effects, SessionError> {
        check_override(rules, rule, &o)?;
        let key: Arc<str> = Arc::from(rule);
        if o.low.is_some() || o.high.is_some() {
            self.session.overrides.insert(key, o);
        } else {
            self.session.overrides.remove(&key);
        }
        self.session.by = Some(Arc::from(by));
        let mut effects = Effects::default();
        effects.sessions.push((SessionChange::Limits, None));
        self.reevaluate(rules, now_ms, next_id, &mut effects);
        Ok(effects)
    }

    /// Alarm `alarm_id` was acknowledged: a latched alarm whose condition has ended
    /// clears now (reason `acknowledged`).
    pub fn acknowledged(&mut self, rules: &RuleSet, alarm_id: u64, now_ms: u64) -> Effects {
        let mut effects = Effects::default();
        // Every condition holding the alarm: the rules of one group share its id.
        let holding: Vec<usize> = (0..self.conditions.len())
            .filter(|&i| self.conditions[i].alarm_id() == Some(alarm_id))
            .collect();
        if holding.is_empty() {
            return effects;
        }
        self.group_acknowledged(alarm_id);
        for i in holding {
            let step = Condition::acknowledge(&mut self.conditions[i]);
            self.record_end(rules, i, step, now_ms, false, "acknowledged", &mut effects);
        }
        self.check_discharge(rules, now_ms, &mut effects);
        effects
    }

    /// Restore a session recorded before a restart (the latest session event of the
    /// audit trail). Alarm states are not restored: conditions start afresh.
    pub fn restore(&mut self, rules: &RuleSet, e: &SessionEvent, now_ms: u64) {
        let mut baseline = [None; 6];
        for (v, b) in &e.baseline {
            baseline[v.index()] = Some(*b);
        }
        let s = &mut self.session;
        s.phase = e.phase;
        s.patient = e.patient.clone();
        s.session_number = e.session_number;
        s.session_count = e.session_count;
        s.route = e.route;
        s.phase_since = e.phase_since;
        s.infusion_started = e.infusion_started;
        s.applied_at = now_ms;
        s.message_ts = e.message_ts;
        s.baseline = baseline;
        s.overrides = e.limits.clone();
        s.by = e.by.clone();
        s.discharge_ready = false;
        s.known = true;
        s.restored = true;
        if let Some(offset) = e.clock_offset_ms {
            self.clock.seed(offset);
        }
        // A baseline phase interrupted by the restart starts collecting again.
        self.sampler = (e.phase == Phase::Baseline)
            .then(|| Box::new(BaselineSampler::new(rules.session.baseline_max_samples)));
    }

    /// Whether this state can be held under `rules`: one entry per condition
    /// and per group, counters within their arrays (a state read back from a
    /// snapshot is checked before it is used).
    pub fn fits(&self, rules: &RuleSet) -> bool {
        self.conditions.len() == rules.len()
            && self.shown.len() == rules.group_count()
            && self.recent_len <= super::RECENT_IDS
            && self.recent_next < super::RECENT_IDS
    }

    /// Whether this chair's session is the one `e` records (a snapshot taken
    /// after the event), rather than older.
    fn session_is(&self, e: &SessionEvent) -> bool {
        let s = &self.session;
        s.phase == e.phase
            && s.patient == e.patient
            && s.session_number == e.session_number
            && s.route == e.route
            && s.phase_since == e.phase_since
            && s.infusion_started == e.infusion_started
            && s.message_ts == e.message_ts
            && s.overrides == e.limits
    }

    /// [`PatientState::restore`] on a chair taken from a snapshot: only if `e`
    /// is newer than the snapshot's session, and a baseline being collected
    /// since the same moment keeps what it has collected.
    pub fn restore_after_snapshot(&mut self, rules: &RuleSet, e: &SessionEvent, now_ms: u64) {
        if self.session_is(e) {
            return;
        }
        let same_baseline =
            self.session.phase == Phase::Baseline && self.session.phase_since == e.phase_since;
        if self.session_began_since(e) {
            // The journal holds the end of the previous patient's alarms. Their
            // readings are forgotten from the journaled change on (at the
            // latest): the new patient's, handed out again, are applied.
            self.end_patient_alarms(rules, now_ms, false);
            self.forget_patient_values(e.at);
        }
        let sampler = self.sampler.take();
        self.restore(rules, e, now_ms);
        if same_baseline && e.phase == Phase::Baseline {
            self.sampler = sampler;
        }
    }

    /// End alarm `id` without an event, if every condition holding it (if any)
    /// is latched (acknowledged since) or no longer applies to the session (a
    /// session change since): a chair taken from a snapshot made before the
    /// alarm's end, which is journaled already. False, and nothing changed,
    /// otherwise.
    pub fn end_silently(&mut self, rules: &RuleSet, id: u64) -> bool {
        let holding: Vec<usize> = (0..self.conditions.len())
            .filter(|&i| self.conditions[i].alarm_id() == Some(id))
            .collect();
        // An alarm no condition holds any more (ended with its patient's
        // session) has ended too.
        let ended = holding.iter().all(|&i| {
            matches!(self.conditions[i], ConditionState::Latched { .. })
                || !rules.condition(i).applies(&self.session)
        });
        if ended {
            for i in holding {
                self.conditions[i] = ConditionState::Normal;
            }
            self.forget_shown(id);
        }
        ended
    }

    /// [`PatientState::restore_alarm`] on a chair taken from a snapshot older
    /// than the alarm: the alarm's conditions may still be waiting out their
    /// delay there, as they were when the snapshot was taken.
    pub fn restore_alarm_after_snapshot(
        &mut self,
        rules: &RuleSet,
        e: &crate::core::AlarmEvent,
    ) -> bool {
        for i in 0..rules.len() {
            let c = rules.condition(i);
            let held = *c.rule == *e.rule || e.rules.iter().any(|r| *r.rule == *c.rule);
            if held
                && c.check.direction() == e.condition
                && matches!(self.conditions[i], ConditionState::Pending { .. })
            {
                self.conditions[i] = ConditionState::Normal;
            }
        }
        self.restore_alarm(rules, e)
    }

    /// Take back an alarm that was open when the previous run stopped: the
    /// conditions of every rule it held are active again under the same id
    /// (acknowledged or not), so it clears, latches or escalates as if there had
    /// been no restart. False when none of its rules matches a condition of this
    /// chair's current profile (rules changed, or the phase), or its group already
    /// holds another alarm.
    pub fn restore_alarm(&mut self, rules: &RuleSet, e: &crate::core::AlarmEvent) -> bool {
        // Only for the same patient and session: an alarm whose end never reached
        // the audit trail must not be pinned on whoever is in the chair now.
        let s = &self.session;
        if e.context.patient != s.patient || e.context.session_number != s.session_number {
            return false;
        }
        // Recorded before alarms were grouped, an event names its one rule only.
        let held: Vec<(&str, f64, f64)> = if e.rules.is_empty() {
            vec![(&*e.rule, e.value, e.limit)]
        } else {
            e.rules
                .iter()
                .map(|r| (&*r.rule, r.value, r.limit))
                .collect()
        };
        let mut group = None;
        let mut members = Vec::new();
        for (rule, value, limit) in held {
            let found = (0..rules.len()).find(|&i| {
                let c = rules.condition(i);
                *c.rule == *rule
                    && c.check.direction() == e.condition
                    && c.check.kind() == e.kind
                    && c.applies(&self.session)
            });
            let Some(i) = found else { continue };
            let g = rules.group_of(i);
            if *group.get_or_insert(g) != g
                || self.conditions[i] != ConditionState::Normal
                || group_alarm(&self.conditions, rules, g).is_some()
            {
                continue;
            }
            members.push(Member {
                condition: i,
                value,
                limit,
            });
        }
        let Some(g) = group.filter(|_| !members.is_empty()) else {
            return false;
        };
        let acknowledged = e.acknowledged_by.is_some();
        for m in &members {
            self.conditions[m.condition] = ConditionState::Active {
                alarm_id: e.id,
                acknowledged,
            };
        }
        self.group_restored(rules, g, e, members);
        true
    }

    /// Withdraw conditions that no longer apply; judge the others again.
    ///
    /// An alarm raised here is raised by the change at gateway time `now_ms`,
    /// not by the latest sample (whose time it still reports): its id is seeded
    /// with `now_ms`, so that a limit narrowed, widened and narrowed again on
    /// one sample raises a new alarm each time rather than one that the events
    /// stream would take for a repeat.
    fn reevaluate(
        &mut self,
        rules: &RuleSet,
        now_ms: u64,
        next_id: &mut dyn FnMut(AlarmSeed<'_>) -> u64,
        effects: &mut Effects,
    ) {
        let mut next_id = |seed: AlarmSeed<'_>| next_id(AlarmSeed { ts: now_ms, ..seed });
        let next_id = &mut next_id;
        for i in 0..rules.len() {
            let cond = rules.condition(i);
            if cond.applies(&self.session) {
                let ts = if cond.check.is_timed() {
                    now_ms
                } else {
                    cond.check
                        .vital()
                        .and_then(|v| self.latest.get(v))
                        .map_or(now_ms, |s| s.ts)
                };
                self.evaluate(rules, i, ts, now_ms, next_id, effects);
            } else if self.conditions[i] != ConditionState::Normal {
                let step = Condition::withdraw(&mut self.conditions[i]);
                self.record_end(rules, i, step, now_ms, false, "phase_change", effects);
            }
        }
        self.check_discharge(rules, now_ms, effects);
    }

    /// Record the end of condition `i`'s alarm for `reason` (not the value
    /// recovering), if `step` ended one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_end(
        &self,
        rules: &RuleSet,
        i: usize,
        step: Step,
        ts: u64,
        on_device_clock: bool,
        reason: &'static str,
        effects: &mut Effects,
    ) {
        if let Step::Cleared { .. } = step {
            let (value, limit) = self.report(rules, i, ts);
            effects.transitions.push(Transition {
                condition: i,
                step,
                value,
                limit,
                ts,
                on_device_clock,
                reason: Some(reason),
                parts: Vec::new(),
            });
        }
    }

    /// Value and limit to report for condition `i` outside a measurement.
    pub(super) fn report(&self, rules: &RuleSet, i: usize, now_ms: u64) -> (f64, f64) {
        let cond = rules.condition(i);
        match self.measure(rules, i, now_ms) {
            Some(m) => (m.value, m.limit),
            None => (
                cond.check
                    .vital()
                    .and_then(|v| self.latest.get(v))
                    .map_or(0.0, |s| s.value),
                0.0,
            ),
        }
    }

    /// In recovery: ready for discharge once every judged vital has stayed within
    /// its band around the baseline, with no alarm active, for the configured time.
    /// A judged vital counts only while its value is current (see
    /// [`discharge_allowance`]): an old value says nothing about the patient now.
    pub(super) fn check_discharge(&mut self, rules: &RuleSet, now_ms: u64, effects: &mut Effects) {
        let policy = &rules.session;
        let fit =
            self.session.phase == Phase::Recovery && self.active_alarms().next().is_none() && {
                let mut judged = 0;
                let all_in_band = policy.discharge_band.iter().all(|(vital, band)| {
                    let Some(base) = self.session.baseline_of(*vital) else {
                        return true;
                    };
                    judged += 1;
                    let allowance = discharge_allowance(rules, *vital);
                    self.latest.get(*vital).is_some_and(|s| {
                        (s.value - base).abs() <= *band
                            && now_ms.saturating_sub(self.received[vital.index()]) <= allowance
                    })
                });
                all_in_band && judged > 0
            };
        if fit {
            let since = *self.stable_since.get_or_insert(now_ms);
            if !self.session.discharge_ready
                && now_ms.saturating_sub(since) >= policy.discharge_stable_ms
            {
                self.session.discharge_ready = true;
                effects.sessions.push((SessionChange::DischargeReady, None));
            }
        } else {
            self.stable_since = None;
            if self.session.discharge_ready {
                self.session.discharge_ready = false;
                effects.sessions.push((SessionChange::DischargeReady, None));
            }
        }
    }

    /// What an alarm of condition `i` carries as context at gateway time `now_ms`.
    pub fn context(&self, rules: &RuleSet, i: usize, now_ms: u64) -> AlarmContext {
        let s = &self.session;
        AlarmContext {
            phase: s.phase,
            patient: s.patient.clone(),
            session_number: s.session_number,
            session_count: s.session_count,
            route: s.route,
            infusion_minute: s.infusion_minute(now_ms),
            pump: self.latest.pump.map(|p| p.pump),
            baseline: rules
                .condition(i)
                .check
                .vital()
                .and_then(|v| s.baseline_of(v)),
            parts: Vec::new(),
        }
    }
}

/// How old a vital's value may be, ms, and still count toward discharge readiness,
/// as the station judges a value stale: its stale allowance; without one (DBP and
/// EtCO2 in the shipped rules), DBP SBP's (one cuff measurement), any other HR's
/// (continuous monitoring); with neither, the stable time itself (a value older
/// than that was not seen during it).
fn discharge_allowance(rules: &RuleSet, vital: Vital) -> u64 {
    let own = rules.stale_ms(vital);
    let paired = match vital {
        Vital::Dbp => rules.stale_ms(Vital::Sbp),
        _ => rules.stale_ms(Vital::Hr),
    };
    [own, paired]
        .into_iter()
        .find(|&ms| ms > 0)
        .unwrap_or(rules.session.discharge_stable_ms)
}
