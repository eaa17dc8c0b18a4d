//! What the benches share: a realistic alarm event.

use std::sync::Arc;
use vitalgate::core::{
    AlarmContext, AlarmEvent, AlarmKind, AlarmState, Direction, Phase, Priority, RuleMet, Vital,
};

/// Gateway time of the benches' events (ms since the epoch).
pub const NOW: u64 = 1_764_000_000_000;

/// An SpO2 alarm raised mid-infusion, with the context a dashboard shows: the
/// critical limit met, and the warning limit with it.
pub fn event() -> AlarmEvent {
    AlarmEvent {
        id: 17,
        state: AlarmState::Raised,
        chair: Arc::from("north/7"),
        kind: AlarmKind::Physiological,
        vital: Some(Vital::Spo2),
        rule: Arc::from("spo2_critical"),
        condition: Direction::Low,
        value: 84.0,
        limit: 86.0,
        priority: Priority::High,
        message: Arc::from("SpO2 84 below 86"),
        latching: false,
        ts: NOW,
        received_at: NOW + 3,
        raised_ts: NOW,
        escalated: false,
        escalation_level: 0,
        reminder: false,
        reason: None,
        acknowledged_by: None,
        rules: vec![
            RuleMet {
                rule: Arc::from("spo2_critical"),
                priority: Priority::High,
                value: 84.0,
                limit: 86.0,
            },
            RuleMet {
                rule: Arc::from("spo2_warn"),
                priority: Priority::Medium,
                value: 84.0,
                limit: 95.0,
            },
        ],
        updated: false,
        previous_priority: None,
        context: AlarmContext {
            phase: Phase::Infusion,
            patient: Some(Arc::from("P-1042")),
            session_number: Some(2),
            session_count: Some(6),
            infusion_minute: Some(31.5),
            baseline: Some(98.0),
            ..AlarmContext::default()
        },
    }
}
