//! The alarm core: readings, patient state, rules and alarms. No I/O happens here, so
//! everything below is unit- and property-testable without sockets or clocks.

pub mod alarm;
pub mod patient;
pub mod reading;
pub mod rules;
pub mod ward;

pub use alarm::{AckError, AlarmEvent, AlarmState, Board};
pub use patient::{Latest, PumpSample, Sample};
pub use reading::{decode, DecodeLimits, Pump, Reading, RejectReason, Rejection, Vital};
pub use rules::{Direction, Priority, RuleSet, RuleSpec};
pub use ward::{ChairView, Outcome, Ward, WardError};
