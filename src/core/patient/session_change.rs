//! What a session update would change and why it may be refused, and the end
//! of the previous patient's session when it starts a new one.

use super::{Effects, PatientState};
use crate::core::condition::{Condition, ConditionState};
use crate::core::event::SessionEvent;
use crate::core::rules::{Direction, RuleSet};
use crate::core::session::{LimitOverride, Phase, SessionError, SessionUpdate};
use std::sync::Arc;

impl PatientState {
    /// The refusals of [`PatientState::set_session`], and what `update` would
    /// change; `None`: nothing (a message already applied, or an older one
    /// repeating the current phase and patient).
    pub(super) fn check_session(
        &self,
        rules: &RuleSet,
        update: &SessionUpdate,
    ) -> Result<Option<Checked>, SessionError> {
        let s = &self.session;
        let same_patient = update.patient.as_deref() == s.patient.as_deref();
        if let (Some(ts), Some(last)) = (update.ts, s.message_ts) {
            if ts == last {
                return Ok(None);
            }
            if ts < last {
                if update.phase == s.phase && same_patient {
                    return Ok(None);
                }
                return Err(SessionError::Stale { ts, current: last });
            }
        }
        // A restored chair's first newer message may set any phase: changes may
        // have come while the gateway was down. A dashboard's command (no `ts`)
        // is made on what the station shows, the restored phase: it steps.
        let restored_exception = s.restored && update.ts.is_some();
        if s.known && !restored_exception && !s.phase.may_become(update.phase) {
            return Err(SessionError::Transition {
                from: s.phase,
                to: update.phase,
            });
        }
        let overrides = match &update.limits {
            Some(limits) => {
                let mut out = std::collections::BTreeMap::new();
                for (rule, o) in limits {
                    check_override(rules, rule, o)?;
                    if o.low.is_some() || o.high.is_some() {
                        out.insert(Arc::from(rule.as_str()), *o);
                    }
                }
                Some(out)
            }
            None => None,
        };
        Ok(Some(Checked {
            overrides,
            new_session: self.starts_new_session(update.phase, update.patient.as_deref()),
            phase_changed: !s.known || update.phase != s.phase || !same_patient,
        }))
    }

    /// Whether `phase` for `patient` starts a new session: the chair's session
    /// was known, and another patient sits in it, or it enters `idle` or
    /// `baseline`. Nothing of the previous patient carries over.
    pub(super) fn starts_new_session(&self, phase: Phase, patient: Option<&str>) -> bool {
        let s = &self.session;
        s.known
            && (patient != s.patient.as_deref()
                || (phase == Phase::Idle && s.phase != Phase::Idle)
                || (phase == Phase::Baseline && s.phase != Phase::Baseline))
    }

    /// The first half of [`PatientState::set_session`] for `update`, when it
    /// starts a new session: the previous patient's alarms end, while the
    /// session (and the last values) are still theirs, so that each event's
    /// context names them. The refusals are `set_session`'s; what it then does
    /// finds no alarm of the previous patient left, and forgets their values.
    pub fn end_previous_patient(
        &mut self,
        rules: &RuleSet,
        update: &SessionUpdate,
        now_ms: u64,
    ) -> Result<Effects, SessionError> {
        match self.check_session(rules, update)? {
            Some(c) if c.new_session => Ok(self.end_patient_alarms(rules, now_ms, true)),
            _ => Ok(Effects::default()),
        }
    }

    /// Whether the journal's session `e`, taken over this chair's copy, began
    /// after the copy's: another patient, `idle` or `baseline` entered since,
    /// or the same patient's baseline or infusion begun again (a whole new
    /// session in between: the copies are made every half second or so, so
    /// this is for completeness).
    pub(super) fn session_began_since(&self, e: &SessionEvent) -> bool {
        let s = &self.session;
        self.starts_new_session(e.phase, e.patient.as_deref())
            || (s.known
                && ((e.phase == Phase::Baseline
                    && s.phase == Phase::Baseline
                    && e.phase_since != s.phase_since)
                    || (s.infusion_started.is_some() && e.infusion_started != s.infusion_started)))
    }

    /// The alarms judged on the previous patient's values end with them, reason
    /// `new_session` (`record`; or silently, when their end is journaled
    /// already): an empty chair must not keep escalating an alarm about someone
    /// who has left. Technical conditions are the device's, and stay.
    pub(super) fn end_patient_alarms(
        &mut self,
        rules: &RuleSet,
        now_ms: u64,
        record: bool,
    ) -> Effects {
        let mut effects = Effects::default();
        for i in 0..rules.len() {
            if rules.condition(i).check.is_timed() || self.conditions[i] == ConditionState::Normal {
                continue;
            }
            let held = self.conditions[i].alarm_id();
            let step = Condition::withdraw(&mut self.conditions[i]);
            if record {
                self.record_end(rules, i, step, now_ms, false, "new_session", &mut effects);
            } else if let Some(id) = held {
                self.forget_shown(id);
            }
        }
        effects
    }

    /// The patient left (or another one sat down) at gateway time `at_ms`: their
    /// last values are not the chair's now, and must not be judged against the
    /// limits of the next phase (an empty chair alarming on the last cuff
    /// reading), nor come back with a late delivery (one measured before
    /// `at_ms`).
    pub(super) fn forget_patient_values(&mut self, at_ms: u64) {
        self.latest.vitals = [None; 6];
        self.latest.pump = None;
        self.trends = Default::default();
        // Never back: a reading before an earlier change is the earlier patient's.
        self.forgotten_at = self.forgotten_at.max(at_ms);
    }
}

/// A per-patient limit must name a threshold rule with that side, within what the
/// vital can be.
pub(super) fn check_override(
    rules: &RuleSet,
    rule: &str,
    o: &LimitOverride,
) -> Result<(), SessionError> {
    let conditions = rules.threshold_conditions(rule);
    if conditions.is_empty() {
        return Err(SessionError::UnknownRule(rule.to_string()));
    }
    let sides: Vec<(Direction, crate::core::reading::Vital)> = conditions
        .iter()
        .filter_map(|&i| match &rules.condition(i).check {
            crate::core::condition::Check::Threshold {
                vital, direction, ..
            } => Some((*direction, *vital)),
            _ => None,
        })
        .collect();
    for (direction, value, name) in [
        (Direction::Low, o.low, "low"),
        (Direction::High, o.high, "high"),
    ] {
        let Some(x) = value else { continue };
        let Some((_, vital)) = sides.iter().find(|(d, _)| *d == direction) else {
            return Err(SessionError::Limit(format!(
                "rule '{rule}' has no {name} limit to change"
            )));
        };
        let (lo, hi) = vital.possible_range();
        if !x.is_finite() || x < lo || x > hi {
            return Err(SessionError::Limit(format!(
                "{rule}.{name} = {x} is outside what {vital} can be ({lo}..={hi})"
            )));
        }
    }
    if let (Some(l), Some(h)) = (o.low, o.high) {
        if l >= h {
            return Err(SessionError::Limit(format!(
                "{rule}: low ({l}) must be less than high ({h})"
            )));
        }
    }
    Ok(())
}

/// What a session update passed its checks with.
pub(super) struct Checked {
    pub overrides: Option<std::collections::BTreeMap<Arc<str>, LimitOverride>>,
    pub new_session: bool,
    pub phase_changed: bool,
}
