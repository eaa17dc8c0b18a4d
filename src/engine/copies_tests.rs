//! Chairs copied from one engine and taken back by another, as cluster mode's
//! takeover does: the chair carries on where the first engine left it, and
//! what the journal says happened after the copy holds.

use super::*;
use crate::core::reading::Vital;
use crate::core::rules::{Priority, RuleSpec};
use crate::core::{AlarmEvent, AlarmState, RuleSet};
use std::collections::HashSet;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

struct Commits;

impl Journal for Commits {
    fn commit(&mut self, _: &[crate::audit::Record<'_>]) -> Result<(), JournalError> {
        Ok(())
    }
}

/// Every alarm frame released, as JSON.
struct Alarms(UnboundedSender<serde_json::Value>);

impl Outlet for Alarms {
    fn release(&self, events: &[Sequenced]) {
        for e in events.iter().filter(|e| e.kind == "alarm") {
            let _ = self.0.send(serde_json::from_str(e.frame.as_str()).unwrap());
        }
    }
    fn vitals(&self, _: &Arc<str>, _: &crate::core::Latest, _: Instant) {}
}

/// SpO2 below 90 for `delay_ms` of device time raises (high); back at 91 clears.
fn rules(delay_ms: u64) -> RuleSet {
    rules_named("spo2_low", delay_ms)
}

fn rules_named(id: &str, delay_ms: u64) -> RuleSet {
    RuleSet::compile(&[RuleSpec {
        id: id.into(),
        vital: Vital::Spo2,
        low: Some(90.0),
        priority: Priority::High,
        hysteresis: 1.0,
        delay_ms,
        ..RuleSpec::default()
    }])
    .unwrap()
}

struct Side {
    engine: Engine,
    alarms: UnboundedReceiver<serde_json::Value>,
    _running: Running,
}

fn side(rules: RuleSet, restore: impl FnOnce(&mut Restore<'_>)) -> Side {
    let (tx, alarms) = unbounded_channel();
    let (receipts, _) = unbounded_channel();
    let (engine, running) = Engine::start(
        super::tests::parts(Ward::with_derived_alarm_ids(Arc::new(rules), 1000), 100),
        Box::new(Commits),
        Arc::new(Alarms(tx)),
        receipts,
        restore,
    );
    Side {
        engine,
        alarms,
        _running: running,
    }
}

const CHAIR: &str = "north/1";

impl Side {
    /// SpO2 `v` measured at device time `seq` seconds.
    async fn spo2(&self, seq: u64, v: f64) -> Processed {
        let mut values = [None; 6];
        values[Vital::Spo2.index()] = Some(v);
        let reading = Reading {
            seq,
            ts: 1_000 * seq,
            values,
            pump: None,
        };
        let (tx, rx) = oneshot::channel();
        let command = Command::Reading {
            chair: CHAIR.into(),
            reading,
            received: Instant::now(),
            now_ms: 100_000,
            reply: Reply::Once(tx),
        };
        self.engine.send(command).await.unwrap();
        rx.await.unwrap()
    }

    async fn copy(&self) -> ChairCopy {
        let mut copies = self
            .engine
            .ask(|reply| Command::Copies {
                chairs: vec![CHAIR.into()],
                changed_in: Box::new(|_| false),
                reply,
            })
            .await
            .filter(|(journaled, _)| *journaled)
            .expect("copies after the commit")
            .1;
        assert_eq!(copies.len(), 1);
        copies.remove(0)
    }

    /// Every alarm frame released since last asked: (state, alarm id).
    fn frames(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Ok(frame) = self.alarms.try_recv() {
            let state = frame["state"].as_str().unwrap().to_string();
            out.push((state, frame["id"].as_u64().unwrap()));
        }
        out
    }

    fn raised(&mut self) -> Vec<u64> {
        let mut ts = Vec::new();
        while let Ok(frame) = self.alarms.try_recv() {
            if frame["state"] == "raised" {
                ts.push(frame["ts"].as_u64().unwrap());
            }
        }
        ts
    }
}

/// The alarm event a copy holds, acknowledged by `by` as the journal records it.
fn acknowledged(copy: &ChairCopy, by: &str) -> AlarmEvent {
    let mut event = copy.alarms[0].event.clone();
    event.state = AlarmState::Acknowledged;
    event.acknowledged_by = Some(Arc::from(by));
    event
}

#[tokio::test]
async fn a_chair_taken_back_carries_on_a_delay_under_way() {
    let first = side(rules(4_000), |_| {});
    for seq in 1..=3 {
        first.spo2(seq, 85.0).await;
    }
    let copy = first.copy().await;
    // Serialised and read back, as NATS holds it.
    let copy: ChairCopy = serde_json::from_slice(&serde_json::to_vec(&copy).unwrap()).unwrap();
    let mut next = side(rules(4_000), move |r| r.chair(copy).unwrap());
    next.spo2(4, 85.0).await;
    assert!(next.raised().is_empty(), "3 s of the 4 s delay");
    next.spo2(5, 85.0).await;
    tokio::task::yield_now().await;
    next.engine.flushed().await;
    assert_eq!(
        next.raised(),
        vec![5_000],
        "raised 4 s after the breach began on the first engine"
    );
}

#[tokio::test]
async fn an_alarm_raised_after_the_copy_is_taken_back_once() {
    let mut first = side(rules(0), |_| {});
    first.spo2(1, 97.0).await;
    let before = first.copy().await;
    first.spo2(2, 85.0).await;
    first.engine.flushed().await;
    assert_eq!(first.raised(), vec![2_000]);
    let raised = first.copy().await.alarms[0].event.clone();
    let id = raised.id;
    let mut next = side(rules(0), move |r| {
        r.chair(before).unwrap();
        let open = [raised.id].into();
        r.alarm_after_copy(raised, &open, 100_000);
    });
    // The reading that raised it, handed out again, raises it again under
    // the same id (the events stream drops the repeat).
    assert_eq!(
        next.spo2(2, 85.0).await,
        Processed::Accepted { alarm_events: 1 }
    );
    let copy = next.copy().await;
    assert_eq!(copy.alarms.len(), 1);
    assert_eq!(copy.alarms[0].event.id, id);
    // And it ends as it would have on the first engine.
    assert_eq!(
        next.spo2(3, 95.0).await,
        Processed::Accepted { alarm_events: 1 }
    );
    next.engine.flushed().await;
    assert_eq!(next.raised(), vec![2_000]);
}

/// A reading measured between the copy and the raise, handed out again first,
/// does not end the alarm the journal holds: the alarm is taken back when the
/// readings reach its raise, acknowledged as the journal says, and nothing
/// ends it (the failure script once saw such a reading clear it, then the
/// breach's end clear it a second time).
#[tokio::test]
async fn a_reading_before_an_alarm_raised_after_the_copy_does_not_end_it() {
    let mut first = side(rules(0), |_| {});
    first.spo2(1, 97.0).await;
    let before = first.copy().await;
    first.spo2(2, 97.0).await;
    first.spo2(3, 85.0).await;
    first.engine.flushed().await;
    assert_eq!(first.raised(), vec![3_000]);
    let raised = first.copy().await;
    let ack = acknowledged(&raised, "nurse.kim");
    let id = ack.id;
    let mut next = side(rules(0), move |r| {
        r.chair(before).unwrap();
        let open = [ack.id].into();
        r.alarm_after_copy(ack, &open, 100_000);
    });
    for (seq, spo2) in [(2, 97.0), (3, 85.0), (4, 86.0)] {
        next.spo2(seq, spo2).await;
    }
    next.engine.flushed().await;
    assert_eq!(
        next.frames(),
        vec![("raised".to_string(), id)],
        "raised again under its id, never ended"
    );
    let copy = next.copy().await;
    assert_eq!(copy.alarms.len(), 1);
    assert_eq!(
        copy.alarms[0].event.acknowledged_by.as_deref(),
        Some("nurse.kim"),
        "acknowledged as journaled"
    );
}

/// An alarm journaled after the copy whose reading never comes again is
/// taken back after the wait, at a tick.
#[tokio::test]
async fn an_alarm_raised_after_the_copy_whose_reading_never_comes_is_taken_back_at_last() {
    let first = side(rules(0), |_| {});
    first.spo2(1, 97.0).await;
    let before = first.copy().await;
    first.spo2(2, 85.0).await;
    let raised = first.copy().await.alarms[0].event.clone();
    let next = side(rules(0), move |r| {
        r.chair(before).unwrap();
        let open = [raised.id].into();
        r.alarm_after_copy(raised, &open, 100_000);
    });
    let tick = |now_ms| {
        next.engine
            .ask(move |reply| Command::Tick { now_ms, reply })
    };
    tick(100_000 + 29_000).await.unwrap();
    assert!(
        next.copy().await.alarms.is_empty(),
        "still waiting for its reading"
    );
    tick(100_000 + 30_000).await.unwrap();
    assert_eq!(next.copy().await.alarms.len(), 1, "taken back");
}

#[tokio::test]
async fn an_acknowledgement_journaled_after_the_copy_holds() {
    let first = side(rules(0), |_| {});
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    assert_eq!(copy.alarms[0].acknowledged_at, None);
    let ack = acknowledged(&copy, "nurse.kim");
    let next = side(rules(0), move |r| {
        r.chair(copy).unwrap();
        let open = [ack.id].into();
        r.alarm_after_copy(ack, &open, 100_000);
    });
    let taken = next.copy().await;
    assert!(taken.alarms[0].acknowledged_at.is_some());
    assert_eq!(
        taken.alarms[0].event.acknowledged_by.as_deref(),
        Some("nurse.kim")
    );
    // Acknowledged again from a dashboard: refused as already done.
    let id = taken.alarms[0].event.id;
    let again = next
        .engine
        .acknowledge(id, "nurse.lee".into(), 100_000, SiteScope::all())
        .await;
    assert!(
        matches!(again, Err(AckError::AlreadyAcknowledged { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_copy_made_under_other_rules_is_refused() {
    let first = side(rules(0), |_| {});
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    let (tx, rx) = std::sync::mpsc::channel();
    // A limit or delay changed reads the copy (one condition per rule, as
    // before); another list of rules does not.
    let _next = side(rules_named("spo2_below_90", 0), move |r| {
        let _ = tx.send(r.chair(copy).map_err(|e| e.to_string()));
    });
    let refused = rx.recv().unwrap();
    assert!(
        matches!(&refused, Err(e) if e.contains("other alarm rules")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_escalation_journaled_after_the_copy_is_not_sent_again() {
    let first = side(rules(0), |_| {});
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    let mut escalated = copy.alarms[0].event.clone();
    escalated.escalated = true;
    escalated.escalation_level = 2;
    let open = [escalated.id].into();
    let next = side(rules(0), move |r| {
        r.chair(copy).unwrap();
        r.alarm_after_copy(escalated, &open, 100_000);
    });
    assert_eq!(next.copy().await.alarms[0].event.escalation_level, 2);
}

#[tokio::test]
async fn an_alarm_the_journal_closed_after_the_copy_waits_acknowledged_for_its_end() {
    let first = side(rules(0), |_| {});
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    // The journal has it closed (a reading after the copy ended it).
    let next = side(rules(0), move |r| {
        r.chair(copy).unwrap();
        r.closed_after_copy(CHAIR, &HashSet::new(), 100_000);
    });
    let taken = next.copy().await;
    assert!(
        taken.alarms[0].acknowledged_at.is_some(),
        "no escalation while it waits"
    );
    // The reading that ended it, handed out again, ends it here.
    assert_eq!(
        next.spo2(2, 95.0).await,
        Processed::Accepted { alarm_events: 1 }
    );
    assert!(next.copy().await.alarms.is_empty());
}

/// The session event the journal holds of `copy`'s session, made at `at_ms`.
fn journaled_session(copy: &ChairCopy, at_ms: u64) -> crate::core::SessionEvent {
    crate::core::SessionEvent::new(
        Arc::from(CHAIR),
        crate::core::SessionChange::Phase,
        copy.state.session(),
        at_ms,
    )
}

async fn set_phase(side: &Side, phase: crate::core::Phase, now_ms: u64) {
    set_session_of(side, phase, "P-1", now_ms).await
}

async fn set_session_of(side: &Side, phase: crate::core::Phase, patient: &str, now_ms: u64) {
    let update = crate::core::SessionUpdate {
        phase,
        patient: Some(patient.into()),
        session_number: None,
        session_count: None,
        route: None,
        ts: None,
        by: None,
        limits: None,
    };
    side.engine
        .ask(|reply| Command::SetSession {
            chair: CHAIR.into(),
            update,
            now_ms,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_alarm_ended_by_a_session_change_after_the_copy_ends_silently() {
    let infusion_only = || {
        RuleSet::compile(&[RuleSpec {
            id: "spo2_low".into(),
            vital: Vital::Spo2,
            low: Some(90.0),
            priority: Priority::High,
            phases: vec![crate::core::Phase::Infusion],
            ..RuleSpec::default()
        }])
        .unwrap()
    };
    let mut first = side(infusion_only(), |_| {});
    set_phase(&first, crate::core::Phase::Baseline, 90_000).await;
    set_phase(&first, crate::core::Phase::Infusion, 91_000).await;
    first.spo2(1, 85.0).await;
    first.engine.flushed().await;
    assert_eq!(first.raised(), vec![1_000]);
    let copy = first.copy().await;
    // After the copy, recovery: the rule no longer applies, the alarm ends.
    set_phase(&first, crate::core::Phase::Recovery, 95_000).await;
    let after = first.copy().await;
    assert!(after.alarms.is_empty());
    let session = journaled_session(&after, 95_000);
    let next = side(infusion_only(), move |r| {
        r.chair(copy).unwrap();
        r.session_after_copy(&session, 100_000);
        r.closed_after_copy(CHAIR, &HashSet::new(), 100_000);
    });
    let taken = next.copy().await;
    assert_eq!(taken.state.session().phase, crate::core::Phase::Recovery);
    assert!(taken.alarms.is_empty(), "{:?}", taken.alarms);
    assert_eq!(taken.state.active_alarms().count(), 0);
}

/// In the interval after the copy, the alarm in it ended and the vital
/// breached again, and a nurse acknowledged the new alarm: the readings handed
/// out again end the first and raise the second under their ids, and the
/// second is acknowledged, as journaled.
#[tokio::test]
async fn an_acknowledgement_of_an_alarm_raised_again_after_the_copy_holds() {
    let mut first = side(rules(0), |_| {});
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    let ended = copy.alarms[0].event.id;
    first.spo2(2, 95.0).await;
    first.spo2(3, 85.0).await;
    first.engine.flushed().await;
    assert_eq!(first.raised(), vec![1_000, 3_000]);
    let again = first.copy().await;
    let ack = acknowledged(&again, "nurse.kim");
    let (id, open) = (ack.id, [ack.id].into());
    let mut next = side(rules(0), move |r| {
        r.chair(copy).unwrap();
        r.alarm_after_copy(ack, &open, 100_000);
        r.closed_after_copy(CHAIR, &open, 100_000);
    });
    next.spo2(2, 95.0).await;
    next.spo2(3, 85.0).await;
    next.engine.flushed().await;
    assert_eq!(
        next.frames(),
        vec![("cleared".to_string(), ended), ("raised".to_string(), id)],
        "the same events as on the first engine, under the same ids"
    );
    let taken = next.copy().await;
    assert_eq!(taken.alarms.len(), 1);
    assert_eq!(
        taken.alarms[0].event.acknowledged_by.as_deref(),
        Some("nurse.kim")
    );
}

/// After the copy, another patient sat down: the first patient's alarm ended
/// with their session (journaled). Taken back, the chair holds nothing of it,
/// and the new patient's reading measured after the change, handed out again,
/// raises an alarm of its own.
#[tokio::test]
async fn an_alarm_ended_with_its_patients_session_after_the_copy_stays_ended() {
    let first = side(rules(0), |_| {});
    set_phase(&first, crate::core::Phase::Baseline, 90_000).await;
    first.spo2(1, 85.0).await;
    let copy = first.copy().await;
    assert_eq!(copy.alarms.len(), 1);
    // The change at gateway time 99,000; the reading below is measured after
    // it (about 100,000 on the gateway's clock) and handed out again at the
    // takeover, at 105,000.
    set_session_of(&first, crate::core::Phase::Baseline, "P-2", 99_000).await;
    let after = first.copy().await;
    assert!(after.alarms.is_empty());
    let session = journaled_session(&after, 99_000);
    let mut next = side(rules(0), move |r| {
        r.chair(copy).unwrap();
        r.session_after_copy(&session, 105_000);
        r.closed_after_copy(CHAIR, &HashSet::new(), 105_000);
    });
    let taken = next.copy().await;
    assert!(taken.alarms.is_empty(), "{:?}", taken.alarms);
    assert_eq!(taken.state.active_alarms().count(), 0);
    assert_eq!(taken.state.latest().get(Vital::Spo2), None);
    next.spo2(2, 84.0).await;
    next.engine.flushed().await;
    let frames = next.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, "raised");
}
