use super::*;

pub(crate) fn event(id: u64, state: AlarmState) -> AlarmEvent {
    AlarmEvent {
        id,
        state,
        chair: Arc::from("north/1"),
        kind: AlarmKind::Physiological,
        vital: Some(Vital::Spo2),
        rule: Arc::from("spo2_low"),
        condition: Direction::Low,
        value: 88.0,
        limit: 90.0,
        priority: Priority::High,
        message: Arc::from("spo2 88 below 90"),
        latching: false,
        ts: 10,
        received_at: 11,
        raised_ts: 10,
        escalated: false,
        escalation_level: 0,
        reminder: false,
        reason: None,
        acknowledged_by: None,
        rules: Vec::new(),
        updated: false,
        previous_priority: None,
        context: AlarmContext::default(),
    }
}

#[test]
fn seq_increases_and_active_set_follows_the_lifecycle() {
    let mut b = Board::default();
    assert_eq!(b.record(&mut event(1, AlarmState::Raised)), 1);
    let mut ack = b.acknowledge(1, Arc::from("kim"), 20).unwrap();
    assert_eq!(ack.state, AlarmState::Acknowledged);
    assert_eq!(b.record(&mut ack), 2);
    assert!(matches!(
        b.acknowledge(1, Arc::from("lee"), 21),
        Err(AckError::AlreadyAcknowledged { .. })
    ));
    assert_eq!(b.active().count(), 1);
    let mut clear = event(1, AlarmState::Cleared);
    clear.raised_ts = 0;
    assert_eq!(b.record(&mut clear), 3);
    assert_eq!(clear.raised_ts, 10);
    assert_eq!(clear.acknowledged_by.as_deref(), Some("kim"));
    assert_eq!(b.active().count(), 0);
    assert_eq!(
        b.acknowledge(1, Arc::from("kim"), 22),
        Err(AckError::UnknownAlarm(1))
    );
}

fn policy() -> EscalationPolicy {
    EscalationPolicy {
        escalate_after_ms: [60_000, 120_000, 0],
        max_level: 2,
        reminder_ms: 300_000,
    }
}

/// Run the board's timer from `from` to `to` in 1 s steps, recording what is due;
/// returns (gateway time, escalation level or reminder) per re-send.
fn run(b: &mut Board, from: u64, to: u64) -> Vec<(u64, &'static str, u8)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        for mut e in b.due(now, &policy()) {
            b.record(&mut e);
            if e.reminder {
                b.reminded(e.id, now);
                out.push((now, "reminder", 0));
            } else {
                out.push((now, "escalated", e.escalation_level));
            }
        }
        now += 1_000;
    }
    out
}

#[test]
fn escalation_fires_on_time_up_to_the_max_level_and_stops_on_ack() {
    let mut b = Board::default();
    let mut raised = event(1, AlarmState::Raised);
    raised.received_at = 0;
    b.record(&mut raised);
    assert_eq!(
        run(&mut b, 0, 200_000),
        vec![(60_000, "escalated", 1), (120_000, "escalated", 2)]
    );
    let mut ack = b.acknowledge(1, Arc::from("kim"), 200_000).unwrap();
    assert_eq!(ack.escalation_level, 2);
    b.record(&mut ack);
    // Acknowledged: no more escalations; reminders every 5 min while active.
    assert_eq!(
        run(&mut b, 201_000, 900_000),
        vec![(500_000, "reminder", 0), (800_000, "reminder", 0)]
    );
    let mut clear = event(1, AlarmState::Cleared);
    b.record(&mut clear);
    assert!(run(&mut b, 901_000, 2_000_000).is_empty());
}

proptest::proptest! {
    /// For any escalation period and acknowledgement time: escalations come
    /// exactly at the period's multiples until acknowledged (up to the maximum
    /// level) and never after; reminders only after the acknowledgement, every
    /// reminder period, and none once the alarm clears.
    #[test]
    fn escalations_and_reminders_fire_on_time_and_stop(
        after_s in 1u64..120,
        max_level in 0u8..5,
        ack_s in 0u64..600,
        reminder_s in 1u64..300,
        clear_s in 0u64..900,
    ) {
        let policy = EscalationPolicy {
            escalate_after_ms: [after_s * 1_000, 0, 0],
            max_level,
            reminder_ms: reminder_s * 1_000,
        };
        let mut b = Board::default();
        let mut raised = event(1, AlarmState::Raised);
        raised.received_at = 0;
        b.record(&mut raised);
        let clear_s = ack_s + clear_s;
        let mut escalations = Vec::new();
        let mut reminders = Vec::new();
        for sec in 0..=(clear_s + 600) {
            let now = sec * 1_000;
            if sec == ack_s {
                let mut ack = b.acknowledge(1, Arc::from("kim"), now).unwrap();
                b.record(&mut ack);
            }
            if sec == clear_s {
                b.record(&mut event(1, AlarmState::Cleared));
            }
            for mut e in b.due(now, &policy) {
                b.record(&mut e);
                if e.reminder {
                    b.reminded(e.id, now);
                    reminders.push(sec);
                } else {
                    escalations.push((sec, e.escalation_level));
                }
            }
        }
        let expected_escalations: Vec<(u64, u8)> = (1..=max_level)
            .map(|level| (after_s * u64::from(level), level))
            .filter(|(sec, _)| *sec < ack_s)
            .collect();
        proptest::prop_assert_eq!(escalations, expected_escalations);
        let expected_reminders: Vec<u64> = (1..)
            .map(|k| ack_s + k * reminder_s)
            .take_while(|sec| *sec < clear_s)
            .collect();
        proptest::prop_assert_eq!(reminders, expected_reminders);
    }
}

#[test]
fn a_restored_alarm_long_unacknowledged_escalates_once_to_the_level_due() {
    let mut b = Board::default();
    let mut raised = event(1, AlarmState::Raised);
    raised.received_at = 0;
    // Open when the previous run stopped, raised 150 s before this run's timer.
    b.restore(raised, 0, None);
    assert_eq!(
        run(&mut b, 150_000, 300_000),
        vec![(150_000, "escalated", 2)]
    );
}

proptest::proptest! {
    /// However far apart the timer runs (a restart, a stalled tick), an
    /// unacknowledged alarm is re-sent at most once per run, at the level due
    /// then, and always carries that level afterwards.
    #[test]
    fn escalation_catches_up_in_one_event(
        after_s in 1u64..120,
        max_level in 0u8..5,
        steps_s in proptest::collection::vec(1u64..400, 1..20),
    ) {
        let policy = EscalationPolicy {
            escalate_after_ms: [after_s * 1_000, 0, 0],
            max_level,
            reminder_ms: 0,
        };
        let mut b = Board::default();
        let mut raised = event(1, AlarmState::Raised);
        raised.received_at = 0;
        b.record(&mut raised);
        let mut now_s = 0;
        for step in steps_s {
            now_s += step;
            let due = b.due(now_s * 1_000, &policy);
            proptest::prop_assert!(due.len() <= 1);
            let level_due = (now_s / after_s).min(u64::from(max_level)) as u8;
            let before = b.active().next().unwrap().escalation_level;
            proptest::prop_assert_eq!(due.len(), usize::from(level_due > before));
            for mut e in due {
                proptest::prop_assert!(e.escalated);
                b.record(&mut e);
            }
            proptest::prop_assert_eq!(b.active().next().unwrap().escalation_level, level_due);
        }
    }
}

#[test]
fn low_priority_never_escalates() {
    let mut b = Board::default();
    let mut raised = event(1, AlarmState::Raised);
    raised.priority = Priority::Low;
    raised.received_at = 0;
    b.record(&mut raised);
    assert!(run(&mut b, 0, 1_000_000).is_empty());
}
