//! The alarm core: readings, patient state, sessions, rules and alarms. No I/O
//! happens here, and time comes in as arguments, so everything below is unit- and
//! property-testable without sockets or clocks.

pub mod alarm;
pub mod alarm_id;
pub mod baseline;
pub mod chair_key;
pub mod condition;
pub mod event;
pub mod message;
pub mod patient;
pub mod reading;
pub mod rules;
pub mod session;
pub mod topic;
pub mod ward;

#[cfg(test)]
mod group_tests;

pub use alarm::{AckError, AlarmContext, AlarmEvent, AlarmState, Board, EscalationPolicy, RuleMet};
pub use condition::AlarmKind;
pub use event::{Event, RecordedAlarm, SessionChange, SessionEvent};
pub use patient::{Latest, PumpSample, Sample};
pub use reading::{decode, DecodeLimits, Pump, Reading, RejectReason, Rejection, Vital};
pub use rules::{
    CombinedRuleSpec, Direction, PartSpec, Priority, RelativeLimits, RuleSet, RuleSources,
    RuleSpec, SessionSpec, TechnicalSpec, TrendRuleSpec,
};
pub use session::{LimitOverride, Phase, Route, Session, SessionError, SessionUpdate};
pub use ward::{ChairView, Outcome, Ward, WardError};
