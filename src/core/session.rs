//! The infusion session of one chair: its phase, patient, course position, route,
//! personal baseline and per-patient limit changes.
//!
//! A session is set by a retained JSON message on `clinic/{site}/chair/{chair}/session`
//! or by a dashboard command; both decode into a [`SessionUpdate`]. Phases move
//! forward one step at a time (`idle` → `baseline` → `infusion` → `recovery` →
//! `discharged` → `idle`), so that a typo cannot jump a patient from `infusion`
//! straight to `discharged`, where physiological alarms stop.

use super::reading::Vital;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Where a chair is in an infusion session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// No session: the chair is empty or the clinic does not use sessions.
    #[default]
    Idle,
    /// The patient is in the chair; resting values are being taken.
    Baseline,
    /// The drug is running.
    Infusion,
    /// The infusion has ended; the patient is watched until fit to leave.
    Recovery,
    /// The patient has left; no physiological alarms.
    Discharged,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Idle,
        Phase::Baseline,
        Phase::Infusion,
        Phase::Recovery,
        Phase::Discharged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Baseline => "baseline",
            Phase::Infusion => "infusion",
            Phase::Recovery => "recovery",
            Phase::Discharged => "discharged",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether a session may move from `self` to `to`: one step forward, staying
    /// (to change limits), or back to `idle` from `baseline` (a session called off
    /// before the drug started) or from `discharged` (the chair is free again).
    pub fn may_become(self, to: Phase) -> bool {
        use Phase::*;
        self == to
            || matches!(
                (self, to),
                (Idle, Baseline)
                    | (Baseline, Infusion)
                    | (Infusion, Recovery)
                    | (Recovery, Discharged)
                    | (Discharged, Idle)
                    | (Baseline, Idle)
            )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of phases, as rules list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    /// Every phase with a patient possibly in the chair: all but `discharged`.
    pub const MONITORED: PhaseSet = PhaseSet(0b01111);

    pub fn of(phases: &[Phase]) -> PhaseSet {
        PhaseSet(phases.iter().fold(0, |acc, p| acc | p.bit()))
    }

    pub fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }
}

/// How the drug is given. Only `iv` has a pump; pump rules do not apply otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    #[default]
    Iv,
    Im,
    Sublingual,
    Intranasal,
}

/// A per-patient change of one rule's limits. `None` keeps the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
}

/// A session message or command: what the clinic says the chair is doing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionUpdate {
    pub phase: Phase,
    /// The patient's id in the clinic's system. Required in every phase but `idle`.
    #[serde(default)]
    pub patient: Option<String>,
    /// Which session of the course this is (k of `session_count`), from 1.
    #[serde(default)]
    pub session_number: Option<u16>,
    #[serde(default)]
    pub session_count: Option<u16>,
    #[serde(default)]
    pub route: Option<Route>,
    /// When the message was made, ms since the epoch on the clinic system's clock:
    /// required on the session topic, where messages are ordered by it (an older one
    /// cannot undo a newer change); absent for dashboard commands, which apply when
    /// made.
    #[serde(default)]
    pub ts: Option<u64>,
    /// Who set it.
    #[serde(default)]
    pub by: Option<String>,
    /// Per-patient limits by rule id. Replaces the chair's overrides when present.
    #[serde(default)]
    pub limits: Option<BTreeMap<String, LimitOverride>>,
}

/// Longest accepted patient id, `by` or rule id in a session message.
pub const MAX_SESSION_TEXT: usize = 128;

/// Why a session update was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session message: {0}")]
    Invalid(String),
    #[error("a chair in phase {from} cannot move to {to}: phases go idle, baseline, infusion, recovery, discharged, idle")]
    Transition { from: Phase, to: Phase },
    #[error("no rule has id '{0}'")]
    UnknownRule(String),
    #[error("older than the chair's current session state (ts {ts} < {current})")]
    Stale { ts: u64, current: u64 },
    #[error("{0}")]
    Limit(String),
}

impl SessionError {
    /// Machine-readable code for dashboards and the rejection metric.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Invalid(_) => "bad_session",
            SessionError::Transition { .. } => "bad_transition",
            SessionError::UnknownRule(_) => "unknown_rule",
            SessionError::Stale { .. } => "stale_session",
            SessionError::Limit(_) => "bad_limit",
        }
    }
}

impl SessionUpdate {
    /// Decode a session payload (JSON object).
    pub fn decode(payload: &[u8], max_bytes: usize) -> Result<SessionUpdate, SessionError> {
        if payload.len() > max_bytes {
            return Err(SessionError::Invalid(format!(
                "{} bytes, limit {max_bytes}",
                payload.len()
            )));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| SessionError::Invalid("payload is not UTF-8".into()))?;
        if !text.trim_start().starts_with('{') {
            return Err(SessionError::Invalid(
                "payload must be a JSON object".into(),
            ));
        }
        let update: SessionUpdate =
            serde_json::from_str(text).map_err(|e| SessionError::Invalid(e.to_string()))?;
        update.check()?;
        Ok(update)
    }

    /// Checks types cannot express.
    pub fn check(&self) -> Result<(), SessionError> {
        let bad = |m: String| Err(SessionError::Invalid(m));
        let text_ok = |s: &str| !s.trim().is_empty() && s.len() <= MAX_SESSION_TEXT;
        match &self.patient {
            Some(p) if !text_ok(p) => {
                return bad(format!("`patient` must be 1-{MAX_SESSION_TEXT} bytes"))
            }
            None if self.phase != Phase::Idle => {
                return bad(format!("`patient` is required in phase {}", self.phase))
            }
            _ => {}
        }
        if self.by.as_deref().is_some_and(|b| !text_ok(b)) {
            return bad(format!("`by` must be 1-{MAX_SESSION_TEXT} bytes"));
        }
        match (self.session_number, self.session_count) {
            (Some(0), _) | (_, Some(0)) => return bad("session numbers start at 1".into()),
            (Some(k), Some(n)) if k > n => {
                return bad(format!("session_number {k} is above session_count {n}"))
            }
            _ => {}
        }
        for (rule, o) in self.limits.iter().flatten() {
            if rule.len() > MAX_SESSION_TEXT {
                return bad("a rule id in `limits` is too long".into());
            }
            if o.low.is_some_and(|x| !x.is_finite()) || o.high.is_some_and(|x| !x.is_finite()) {
                return bad(format!("limits.{rule}: limits must be numbers"));
            }
        }
        Ok(())
    }
}

/// A personal baseline: one robust value per vital, from the `baseline` phase.
pub type Baseline = [Option<f64>; 6];

/// One chair's session as the gateway holds it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Session {
    pub phase: Phase,
    pub patient: Option<Arc<str>>,
    pub session_number: Option<u16>,
    pub session_count: Option<u16>,
    pub route: Route,
    /// When the current phase began (message `ts`, or arrival), ms since the epoch.
    pub phase_since: u64,
    /// When the infusion began, for "minutes into the infusion".
    pub infusion_started: Option<u64>,
    /// Gateway time the current phase was applied here: silence is counted from
    /// here, not from before the gateway knew of the session.
    pub applied_at: u64,
    /// `ts` of the latest session message applied (the clinic system's clock), to
    /// order messages among themselves.
    pub message_ts: Option<u64>,
    pub baseline: Baseline,
    /// Per-patient limits by rule id.
    pub overrides: BTreeMap<Arc<str>, LimitOverride>,
    /// Who made the latest change.
    pub by: Option<Arc<str>>,
    /// In recovery, vitals have stayed in the baseline band long enough.
    pub discharge_ready: bool,
    /// Set by a message or restored: false for a chair never told its session, which
    /// may therefore enter any phase (a gateway restarting mid-session).
    pub known: bool,
    /// Restored from the audit trail and not changed since: the gateway may have
    /// missed phase changes while it was down, so the next newer message may set any
    /// phase.
    pub restored: bool,
}

impl Session {
    pub fn baseline_of(&self, vital: Vital) -> Option<f64> {
        self.baseline[vital.index()]
    }

    /// Minutes since the infusion began, at gateway time `now_ms`.
    pub fn infusion_minute(&self, now_ms: u64) -> Option<f64> {
        match self.phase {
            Phase::Infusion | Phase::Recovery => self
                .infusion_started
                .map(|t| (now_ms.saturating_sub(t) as f64 / 60_000.0 * 10.0).round() / 10.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_one_step_forward() {
        use Phase::*;
        assert!(Idle.may_become(Baseline));
        assert!(Baseline.may_become(Infusion));
        assert!(Recovery.may_become(Discharged));
        assert!(Discharged.may_become(Idle));
        assert!(Infusion.may_become(Infusion));
        assert!(!Infusion.may_become(Discharged));
        assert!(!Infusion.may_become(Idle));
        assert!(!Idle.may_become(Infusion));
        assert!(!Recovery.may_become(Infusion));
    }

    #[test]
    fn session_messages_decode_and_check() {
        let u = SessionUpdate::decode(
            br#"{"phase":"infusion","patient":"P-1","session_number":2,"session_count":6,
                "route":"iv","ts":1764000000000,"by":"kim","limits":{"sbp_critical":{"high":170}}}"#,
            4096,
        )
        .unwrap();
        assert_eq!(u.phase, Phase::Infusion);
        assert_eq!(u.limits.unwrap()["sbp_critical"].high, Some(170.0));
        let err = |p: &[u8]| SessionUpdate::decode(p, 4096).unwrap_err().code();
        assert_eq!(err(br#"{"phase":"infusion"}"#), "bad_session");
        assert_eq!(err(br#"{"phase":"lunch","patient":"P"}"#), "bad_session");
        assert_eq!(
            err(br#"{"phase":"baseline","patient":"P","session_number":7,"session_count":6}"#),
            "bad_session"
        );
        assert_eq!(err(br#"["idle"]"#), "bad_session");
        assert_eq!(err(br#"{"phase":"idle","extra":1}"#), "bad_session");
        assert!(SessionUpdate::decode(br#"{"phase":"idle"}"#, 4096).is_ok());
        assert!(SessionUpdate::decode(&[b' '; 5000], 4096).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = SessionUpdate::decode(&bytes, 4096);
        }
    }
}
