use super::*;
use crate::core::alarm::tests::event;
use crate::core::reading::Vital;
use crate::core::rules::{Priority, RuleSpec};
use crate::core::{AlarmState, EscalationPolicy, RuleSet};
use std::sync::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// What the engine let out, in the order it did.
#[derive(Debug, PartialEq)]
enum Out {
    /// An event released (after its commit): its `seq`.
    Event(u64),
    /// A chair's live values.
    Vitals(String),
}

struct Recorder(UnboundedSender<Out>);

impl Outlet for Recorder {
    fn release(&self, events: &[Sequenced]) {
        for e in events {
            let _ = self.0.send(Out::Event(e.seq));
        }
    }
    fn vitals(&self, chair: &Arc<str>, _: &crate::core::Latest, _: Instant) {
        let _ = self.0.send(Out::Vitals(chair.to_string()));
    }
}

/// A journal whose commits wait while the test holds `gate`, and which records
/// how many records each commit held. `failing`: every commit fails, and the
/// journal withholds on failure when it says `true`.
struct Gated {
    gate: Arc<tokio::sync::Mutex<()>>,
    commits: Arc<Mutex<Vec<usize>>>,
    failing: Option<bool>,
}

impl Journal for Gated {
    fn commit(&mut self, records: &[crate::audit::Record<'_>]) -> Result<(), JournalError> {
        drop(self.gate.blocking_lock());
        self.commits.lock().unwrap().push(records.len());
        match self.failing {
            Some(_) => Err(JournalError("the test's journal fails".into())),
            None => Ok(()),
        }
    }

    fn withholds_on_failure(&self) -> bool {
        self.failing == Some(true)
    }
}

struct Rig {
    engine: Engine,
    out: UnboundedReceiver<Out>,
    gate: Arc<tokio::sync::Mutex<()>>,
    commits: Arc<Mutex<Vec<usize>>>,
    _running: Running,
}

fn rules() -> RuleSet {
    RuleSet::compile(&[RuleSpec {
        id: "spo2_low".into(),
        vital: Vital::Spo2,
        low: Some(90.0),
        priority: Priority::High,
        hysteresis: 1.0,
        ..RuleSpec::default()
    }])
    .unwrap()
}

/// The tests' engine parts around `ward`: high-priority alarms escalate every
/// minute, no reminders, nothing forgotten.
pub(super) fn parts(ward: Ward, replay_capacity: usize) -> Parts {
    Parts {
        ward,
        last_seq: 0,
        instance: "test".into(),
        replay_capacity,
        commands: 1024,
        escalation: EscalationPolicy {
            escalate_after_ms: [60_000, 0, 0],
            max_level: 5,
            reminder_ms: 0,
        },
        forget_idle_chair_ms: 0,
        silent_ms: 60_000,
        metrics: Arc::new(Metrics::new()),
    }
}

fn rig_with(replay_capacity: usize, restore: impl FnOnce(&mut Restore<'_>)) -> Rig {
    rig_journal(replay_capacity, None, restore)
}

fn rig_journal(
    replay_capacity: usize,
    failing: Option<bool>,
    restore: impl FnOnce(&mut Restore<'_>),
) -> Rig {
    let (tx, out) = unbounded_channel();
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let commits = Arc::new(Mutex::new(Vec::new()));
    let (receipts, _) = unbounded_channel();
    let (engine, running) = Engine::start(
        parts(Ward::new(Arc::new(rules()), 1000), replay_capacity),
        Box::new(Gated {
            gate: gate.clone(),
            commits: commits.clone(),
            failing,
        }),
        Arc::new(Recorder(tx)),
        receipts,
        restore,
    );
    Rig {
        engine,
        out,
        gate,
        commits,
        _running: running,
    }
}

fn rig() -> Rig {
    rig_with(100, |_| {})
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

impl Rig {
    /// Hand the engine a reading; its outcome arrives on the returned receiver.
    async fn reading(&self, chair: &str, r: Reading) -> oneshot::Receiver<Processed> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Reading {
            chair: chair.into(),
            reading: r,
            received: Instant::now(),
            now_ms: 5_000,
            reply: Reply::Once(tx),
        };
        self.engine.send(command).await.unwrap();
        rx
    }

    async fn next(&mut self) -> Out {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.out.recv())
            .await
            .expect("the engine let something out")
            .unwrap()
    }

    /// A snapshot, ordered with the events before it.
    async fn snapshot(&self) -> serde_json::Value {
        let (tx, rx) = oneshot::channel();
        let command = Command::Snapshot {
            scope: SiteScope::all(),
            then: Box::new(move |frame| drop(tx.send(frame))),
        };
        self.engine.send(command).await.unwrap();
        serde_json::from_str(rx.await.unwrap().as_str()).unwrap()
    }

    /// The frames a dashboard starting at `start` receives first.
    async fn first_frames(&self, start: Start) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Subscribe {
            start,
            scope: SiteScope::all(),
            then: Box::new(move |frames| drop(tx.send(frames))),
        };
        self.engine.send(command).await.unwrap();
        rx.await
            .unwrap()
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                format!("{}:{}", v["type"].as_str().unwrap(), v["seq"])
            })
            .collect()
    }
}

#[tokio::test]
async fn a_slow_commit_holds_alarms_and_receipts_but_not_live_vitals() {
    let mut rig = rig();
    let gate = rig.gate.clone();
    let held = gate.lock().await;
    let mut alarm = rig.reading("n/1", spo2(1, 85.0)).await;
    assert_eq!(rig.next().await, Out::Vitals("n/1".into()));
    // While that commit waits, readings behind it are applied and shown live.
    let mut later = Vec::new();
    for seq in 1..=5 {
        later.push(rig.reading("n/2", spo2(seq, 97.0)).await);
        assert_eq!(rig.next().await, Out::Vitals("n/2".into()));
    }
    // Nothing is released, nor acknowledged to the broker, before the commit.
    assert!(rig.out.try_recv().is_err());
    assert!(alarm.try_recv().is_err());
    assert!(later.iter_mut().all(|r| r.try_recv().is_err()));
    drop(held);
    assert_eq!(
        alarm.await.unwrap(),
        Processed::Accepted { alarm_events: 1 }
    );
    assert_eq!(rig.next().await, Out::Event(1));
    for r in later {
        assert_eq!(r.await.unwrap(), Processed::Accepted { alarm_events: 0 });
    }
}

#[tokio::test]
async fn events_that_gather_during_a_commit_share_the_next_one() {
    let mut rig = rig();
    let gate = rig.gate.clone();
    let held = gate.lock().await;
    let first = rig.reading("n/0", spo2(1, 85.0)).await;
    rig.next().await;
    let mut storm = Vec::new();
    for chair in 1..=50 {
        storm.push(rig.reading(&format!("n/{chair}"), spo2(1, 85.0)).await);
        rig.next().await;
    }
    drop(held);
    first.await.unwrap();
    for r in storm {
        assert_eq!(r.await.unwrap(), Processed::Accepted { alarm_events: 1 });
    }
    let commits = rig.commits.lock().unwrap().clone();
    assert_eq!(commits.iter().sum::<usize>(), 51, "{commits:?}");
    assert!(commits.len() <= 5, "one commit per few events: {commits:?}");
}

#[tokio::test]
async fn a_subscription_comes_after_the_events_its_snapshot_holds() {
    let mut rig = rig();
    let gate = rig.gate.clone();
    let held = gate.lock().await;
    rig.reading("n/1", spo2(1, 85.0)).await;
    rig.next().await;
    let (tx, subscribed) = oneshot::channel();
    let command = Command::Subscribe {
        start: Start::Snapshot,
        scope: SiteScope::all(),
        then: Box::new(move |frames| drop(tx.send(frames))),
    };
    rig.engine.send(command).await.unwrap();
    // The second alarm is made after the subscription: it is not in the snapshot.
    rig.reading("n/2", spo2(1, 85.0)).await;
    rig.next().await;
    drop(held);
    let snapshot = subscribed.await.unwrap();
    let v: serde_json::Value = serde_json::from_str(snapshot[0].as_str()).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["alarms"].as_array().unwrap().len(), 1);
    assert_eq!(rig.next().await, Out::Event(1));
    assert_eq!(rig.next().await, Out::Event(2));
}

#[tokio::test]
async fn since_replays_held_events_or_says_missed() {
    let mut rig = rig_with(3, |_| {});
    for chair in 1..=5 {
        rig.reading(&format!("n/{chair}"), spo2(1, 85.0))
            .await
            .await
            .unwrap();
    }
    while let Ok(out) = rig.out.try_recv() {
        drop(out);
    }
    let since = |since, instance: Option<&str>| Start::Since {
        since,
        instance: instance.map(String::from),
    };
    assert_eq!(
        rig.first_frames(since(3, None)).await,
        vec!["alarm:4", "alarm:5"]
    );
    assert_eq!(
        rig.first_frames(since(2, Some("test"))).await,
        vec!["alarm:3", "alarm:4", "alarm:5"]
    );
    assert!(rig.first_frames(since(5, None)).await.is_empty());
    let missed = vec!["missed:null", "snapshot:5"];
    assert_eq!(rig.first_frames(since(1, None)).await, missed);
    assert_eq!(rig.first_frames(since(9, None)).await, missed);
    assert_eq!(rig.first_frames(since(3, Some("other"))).await, missed);
}

#[tokio::test]
async fn a_restored_alarm_escalates_on_time_from_its_original_raise() {
    // Raised at 0, escalated to level 1 at 60 s; the gateway restarts.
    let mut e = event(7, AlarmState::Raised);
    e.escalated = true;
    e.escalation_level = 1;
    e.received_at = 60_000;
    e.chair = Arc::from("north/1");
    let mut rig = rig_with(100, move |r| {
        assert!(r.alarm(e, 100_000), "the chair's rule still matches");
    });
    let engine = rig.engine.clone();
    let tick = |now_ms| {
        let engine = engine.clone();
        async move {
            engine
                .ask(|reply| Command::Tick { now_ms, reply })
                .await
                .unwrap()
        }
    };
    tick(119_000).await;
    assert_eq!(rig.snapshot().await["seq"], 0, "not due before 120 s");
    tick(120_000).await;
    let snapshot = rig.snapshot().await;
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["alarms"][0]["escalation_level"], 2);
    assert_eq!(rig.next().await, Out::Event(1));
}

/// A failed commit: the single-node journal's events are released and the
/// device message settled as applied; a withholding journal's are not, the
/// message is refused as not journaled (so that it is not acknowledged), and a
/// dashboard's command is answered `not_journaled`.
#[tokio::test]
async fn a_failed_commit_releases_or_withholds_as_the_journal_says() {
    let mut released = rig_journal(100, Some(false), |_| {});
    let outcome = released.reading("n/1", spo2(1, 85.0)).await;
    assert_eq!(released.next().await, Out::Vitals("n/1".into()));
    assert_eq!(
        outcome.await.unwrap(),
        Processed::Accepted { alarm_events: 1 }
    );
    assert_eq!(released.next().await, Out::Event(1));
    assert!(!released.engine.journal_ok());

    let mut withheld = rig_journal(100, Some(true), |_| {});
    let outcome = withheld.reading("n/1", spo2(1, 85.0)).await;
    assert_eq!(withheld.next().await, Out::Vitals("n/1".into()));
    match outcome.await.unwrap() {
        Processed::Refused { code, .. } => assert_eq!(code, NOT_JOURNALED),
        other => panic!("{other:?}"),
    }
    assert!(withheld.engine.flushed().await);
    assert!(withheld.out.try_recv().is_err(), "nothing released");
    assert!(!withheld.engine.journal_ok());

    // A nurse's acknowledgement whose event is withheld is not answered as
    // done: nobody else would ever see it.
    for (rig, answer) in [
        (&released, Ok(())),
        (&withheld, Err(crate::core::AckError::NotJournaled)),
    ] {
        let scope = crate::access::SiteScope::all();
        let ack = rig.engine.acknowledge(1, "nurse.kim".into(), 2_000, scope);
        assert_eq!(ack.await, answer);
    }
}

/// The kinds of a hand-off to the journal, in order.
fn kinds(batch: Vec<state::Pass>) -> Vec<String> {
    batch
        .iter()
        .map(|p| match p {
            state::Pass::Events(e) => format!("events:{}", e.len()),
            state::Pass::Receipt(..) => "receipt".into(),
            state::Pass::Then(_) => "then".into(),
        })
        .collect()
}

/// Three readings queued before the engine task first runs (a breach, a normal
/// one, a breach), applied with no journal thread, so that nothing is released
/// and the journal stays busy after the first hand-off: the hand-offs it got.
async fn hand_offs(withholds: bool) -> Vec<Vec<String>> {
    let (outlet, _out) = unbounded_channel();
    let (receipts, _receipts) = unbounded_channel();
    let state = state::State::new(
        parts(Ward::new(Arc::new(rules()), 1000), 100),
        Arc::new(Recorder(outlet)),
        restore::run_boxed,
        copies::take,
    );
    let (tx, rx) = mpsc::channel(16);
    for (chair, spo2_now) in [("n/1", 85.0), ("n/2", 97.0), ("n/3", 85.0)] {
        let (reply, _) = oneshot::channel();
        let command = Command::Reading {
            chair: chair.into(),
            reading: spo2(1, spo2_now),
            received: Instant::now(),
            now_ms: 5_000,
            reply: Reply::Once(reply),
        };
        tx.send(command).await.unwrap();
    }
    drop(tx);
    let (to_journal, mut journal) = mpsc::channel(16);
    let pipe = task::Pipe {
        to_journal,
        in_flight: Arc::new(AtomicUsize::new(0)),
        receipts,
        withholds,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    task::run(state, rx, pipe, Vec::new(), stop).await;
    let mut got = Vec::new();
    while let Some(batch) = journal.recv().await {
        got.push(kinds(batch));
    }
    got
}

#[tokio::test]
async fn events_go_to_an_idle_journal_before_the_rest_of_the_batch() {
    // The first alarm goes at once, alone; the rest gather while it is busy.
    assert_eq!(
        hand_offs(false).await,
        [
            vec!["events:1", "receipt"],
            vec!["receipt", "events:1", "receipt"]
        ]
    );
    // A journal that withholds on failure gets the batch in one hand-off.
    assert_eq!(
        hand_offs(true).await,
        [vec![
            "events:1", "receipt", "receipt", "events:1", "receipt"
        ]]
    );
}

#[tokio::test]
async fn a_full_command_queue_makes_the_sender_wait_and_keeps_the_order() {
    // A queue of one: from the second command on, `send` finds it full and waits
    // for the engine (this runtime has one thread: the engine runs only then).
    let mut parts = parts(Ward::new(Arc::new(rules()), 1000), 100);
    parts.commands = 1;
    let journal = Gated {
        gate: Default::default(),
        commits: Default::default(),
        failing: None,
    };
    let (tx, mut out) = unbounded_channel();
    let (receipts, _) = unbounded_channel();
    let (engine, _running) = Engine::start(
        parts,
        Box::new(journal),
        Arc::new(Recorder(tx)),
        receipts,
        |_| {},
    );
    let mut replies = Vec::new();
    for chair in 0..20 {
        let (reply, rx) = oneshot::channel();
        let command = Command::Reading {
            chair: format!("n/{chair}"),
            reading: spo2(1, 97.0),
            received: Instant::now(),
            now_ms: 5_000,
            reply: Reply::Once(reply),
        };
        engine.send(command).await.unwrap();
        replies.push(rx);
    }
    for chair in 0..20 {
        assert_eq!(out.recv().await, Some(Out::Vitals(format!("n/{chair}"))));
    }
    for reply in replies {
        assert_eq!(reply.await, Ok(Processed::Accepted { alarm_events: 0 }));
    }
}
