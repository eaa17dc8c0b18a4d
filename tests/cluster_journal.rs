//! The engine journaling into the events stream, and dashboards reading it: two
//! engines (two gateways' partitions) on a 3-node NATS cluster, feeds opened
//! through other nodes.

mod common;

use common::nats::{stream_engine, NatsCluster, PARTITIONS};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vitalgate::access::SiteScope;
use vitalgate::cluster::feed::{Feed, StreamEvent};
use vitalgate::cluster::journal::StreamJournal;
use vitalgate::cluster::ownership::Owned;
use vitalgate::cluster::{self, events};
use vitalgate::core::{Reading, Vital};
use vitalgate::engine::{Command, Engine, Journal, Processed, Reply};

fn spo2(seq: u64, value: f64) -> Reading {
    let mut values = [None; 6];
    values[Vital::Spo2.index()] = Some(value);
    Reading {
        seq,
        ts: 1_700_000_000_000 + 1_000 * seq,
        values,
        pump: None,
    }
}

/// Hand `engine` a reading of `chair` and wait for its outcome (after its commit).
async fn apply(engine: &Engine, chair: &str, reading: Reading) -> Processed {
    let (reply, outcome) = oneshot::channel();
    engine
        .send(Command::Reading {
            chair: chair.into(),
            reading,
            received: std::time::Instant::now(),
            now_ms: 1_700_000_000_000,
            reply: Reply::Once(reply),
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), outcome)
        .await
        .expect("the reading's commit finished")
        .unwrap()
}

/// Leases on `partitions` valid for a while.
fn leases(partitions: impl IntoIterator<Item = u32>) -> Owned {
    let until = Instant::now() + Duration::from_secs(600);
    partitions.into_iter().map(|p| (p, until)).collect()
}

/// `n` events from `feed`, or a failure after 30 s.
async fn take(feed: &mut Feed, n: usize) -> Vec<StreamEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events after 30 s", got.len()));
        got.push(next.expect("a well-formed event"));
    }
    got
}

/// The alarm's (chair, state) and the frame's own `seq`, checked against the
/// stream's.
fn read(event: &StreamEvent) -> (String, String) {
    let frame: serde_json::Value = serde_json::from_str(event.frame.as_str()).unwrap();
    assert_eq!(frame["seq"].as_u64(), Some(event.seq), "{frame}");
    assert_eq!(frame["type"], "alarm");
    assert_eq!(event.kind, "alarm");
    (
        frame["chair"].as_str().unwrap().to_string(),
        frame["state"].as_str().unwrap().to_string(),
    )
}

/// Two gateways' engines, each owning half the partitions, raise and clear an
/// alarm on each of their chairs. A dashboard reading through a third node gets
/// every event once, in the stream's order, numbered by it; one limited to a
/// site gets that site's only; one reconnecting with `since` gets exactly the
/// rest.
#[tokio::test]
async fn two_gateways_journal_into_one_stream_that_any_dashboard_reads_in_order() {
    let nats = NatsCluster::start(3).await;
    let (js_a, js_b, js_c) = (
        through(&nats, 0).await,
        through(&nats, 1).await,
        through(&nats, 2).await,
    );
    events::stream(&js_a, 3).await.unwrap();

    let chairs: Vec<String> = ["north", "south"]
        .iter()
        .flat_map(|site| (1..=8).map(move |c| format!("{site}/{c}")))
        .collect();
    let of_a = |chair: &String| cluster::partition_of(chair, PARTITIONS).is_multiple_of(2);
    let (_a_owns, owned_a) =
        watch::channel(leases((0..PARTITIONS).filter(|p| p.is_multiple_of(2))));
    let (_b_owns, owned_b) = watch::channel(leases((0..PARTITIONS).filter(|p| p % 2 == 1)));
    let (a, _a_running) = stream_engine(&js_a, "gateway-a", owned_a);
    let (b, _b_running) = stream_engine(&js_b, "gateway-b", owned_b);
    let mut everything = Feed::open(&js_c, SiteScope::all(), 0).await.unwrap();
    let mut north = Feed::open(&js_a, SiteScope::only(vec!["north".into()]), 0)
        .await
        .unwrap();

    for chair in &chairs {
        let owner = if of_a(chair) { &a } else { &b };
        for (seq, value) in [(1, 85.0), (2, 97.0)] {
            assert_eq!(
                apply(owner, chair, spo2(seq, value)).await,
                Processed::Accepted { alarm_events: 1 },
                "{chair} reading {seq}"
            );
        }
    }
    assert!(a.journal_ok() && b.journal_ok());
    assert!(
        chairs.iter().any(of_a) && !chairs.iter().all(of_a),
        "both gateways have chairs"
    );

    let all = take(&mut everything, chairs.len() * 2).await;
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in stream order: {seqs:?}"
    );
    let mut seen = HashSet::new();
    for event in &all {
        let (chair, state) = read(event);
        assert!(
            seen.insert((chair.clone(), state.clone())),
            "{chair} {state} twice"
        );
    }
    for chair in &chairs {
        for state in ["raised", "cleared"] {
            assert!(
                seen.contains(&(chair.clone(), state.to_string())),
                "{chair} {state} missing"
            );
        }
    }

    let north_events = take(&mut north, 16).await;
    let expected: Vec<u64> = all
        .iter()
        .filter(|e| read(e).0.starts_with("north/"))
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        north_events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        expected
    );

    // A dashboard that had seen up to the tenth event reconnects elsewhere.
    let since = all[9].seq;
    let mut again = Feed::open(&js_b, SiteScope::all(), since).await.unwrap();
    let rest = take(&mut again, all.len() - 10).await;
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        seqs[10..].to_vec()
    );
    assert_eq!(rest[0].frame.as_str(), all[10].frame.as_str());
}

/// Nothing is journaled for a partition this gateway does not own, or whose
/// lease has lapsed; the failed commit shows on `journal_ok`. A commit retried
/// with the same events, or the same reading evaluated by another gateway, is
/// stored once.
#[tokio::test]
async fn events_are_journaled_under_a_live_lease_only_and_once() {
    let nats = NatsCluster::start(3).await;
    let js = cluster::connect(&nats.urls(), &common::unique("gw"))
        .await
        .unwrap();
    let stream = events::stream(&js, 3).await.unwrap();
    let chair = "north/7";
    let partition = cluster::partition_of(chair, PARTITIONS);

    let others = leases((0..PARTITIONS).filter(|p| *p != partition));
    let (owns, owned) = watch::channel(others);
    let (engine, _running) = stream_engine(&js, "gateway-a", owned.clone());
    // The engine applies the reading; the journal refuses to publish its alarm.
    apply(&engine, chair, spo2(1, 85.0)).await;
    assert!(!engine.journal_ok(), "a refused commit shows");

    let lapsed: Owned = BTreeMap::from([(partition, Instant::now())]);
    owns.send_replace(lapsed);
    apply(&engine, chair, spo2(2, 97.0)).await;
    assert!(!engine.journal_ok());
    assert_eq!(
        messages(&stream).await,
        0,
        "nothing stored without a live lease"
    );

    owns.send_replace(leases([partition]));
    assert_eq!(
        apply(&engine, chair, spo2(3, 80.0)).await,
        Processed::Accepted { alarm_events: 1 }
    );
    assert!(engine.journal_ok());
    assert_eq!(messages(&stream).await, 1);

    // The partition's next owner evaluates the same reading again (its
    // acknowledgement was lost with the previous owner): the same alarm under
    // the same id, dropped by the stream as a repeat.
    let (next_owner, _next_running) = stream_engine(&js, "gateway-b", owned.clone());
    assert_eq!(
        apply(&next_owner, chair, spo2(3, 80.0)).await,
        Processed::Accepted { alarm_events: 1 }
    );
    assert!(next_owner.journal_ok());
    assert_eq!(messages(&stream).await, 1, "one alarm, stored once");

    // The same commit twice (a retry after a lost confirmation): stored once.
    let mut journal = StreamJournal::new(
        js.clone(),
        tokio::runtime::Handle::current(),
        owned,
        PARTITIONS,
    );
    tokio::task::spawn_blocking(move || {
        let record = || vitalgate::audit::Record {
            seq: 99,
            instance: "gateway-z",
            kind: "alarm",
            chair,
            at_ms: 1,
            body: r#"{"type":"alarm","seq":99,"chair":"north/7","state":"raised"}"#,
        };
        journal.commit(&[record()]).unwrap();
        journal.commit(&[record()]).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(messages(&stream).await, 2);
}

/// A gateway's connection through node `i` only.
async fn through(nats: &NatsCluster, i: usize) -> async_nats::jetstream::Context {
    cluster::connect(&[nats.nodes[i].url()], &common::unique("gw"))
        .await
        .unwrap()
}

async fn messages(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    let mut stream = stream.clone();
    stream.info().await.unwrap().state.messages
}

/// A dashboard's feed goes on, without a gap or a repeat, when the NATS node
/// holding its consumer is killed.
#[tokio::test]
async fn a_feed_goes_on_after_its_node_is_lost() {
    let mut nats = NatsCluster::start(3).await;
    let js = cluster::connect(&nats.urls(), &common::unique("gw"))
        .await
        .unwrap();
    let stream = events::stream(&js, 3).await.unwrap();
    let (_owns, owned) = watch::channel(leases(0..PARTITIONS));
    let (a, _running) = stream_engine(&js, "gateway-a", owned);
    let mut feed = Feed::open(&js, SiteScope::all(), 0).await.unwrap();

    let chairs: Vec<String> = (1..=10).map(|c| format!("north/{c}")).collect();
    for chair in &chairs {
        apply(&a, chair, spo2(1, 85.0)).await;
    }
    let before = take(&mut feed, chairs.len()).await;
    let node = consumer_node(&stream).await;
    nats.kill(node);
    let killed_at = Instant::now();
    for chair in &chairs {
        assert_eq!(
            apply(&a, chair, spo2(2, 97.0)).await,
            Processed::Accepted { alarm_events: 1 }
        );
    }
    let applied = killed_at.elapsed();
    let after = take(&mut feed, chairs.len()).await;
    println!("journaled {applied:?} after the kill");
    println!(
        "the feed delivered the last event {:?} after its consumer's node (n{}) was killed",
        killed_at.elapsed(),
        node + 1
    );
    let seqs: Vec<u64> = before.iter().chain(&after).map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(after.iter().all(|e| read(e).1 == "cleared"));
    let cleared: HashSet<String> = after.iter().map(|e| read(e).0).collect();
    assert_eq!(cleared.len(), chairs.len(), "each chair's clear once");

    // New feeds open while the node is lost: NATS places about a third of new
    // one-replica consumers on the lost node and never answers for them (each
    // such open failed on the client's request timeout before they were asked
    // for again).
    let opening = Instant::now();
    for _ in 0..10 {
        let mut late = tokio::time::timeout(
            Duration::from_secs(60),
            Feed::open(&js, SiteScope::all(), 0),
        )
        .await
        .expect("a feed opens within 60 s with a node lost")
        .expect("a feed opens with a node lost");
        assert_eq!(take(&mut late, 1).await[0].seq, seqs[0]);
    }
    println!(
        "10 feeds opened in {:?} with a node lost",
        opening.elapsed()
    );
}

/// The index (in `nodes`) of the node holding the events stream's one consumer.
async fn consumer_node(stream: &async_nats::jetstream::stream::Stream) -> usize {
    use futures_util::TryStreamExt;
    let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap();
    assert_eq!(consumers.len(), 1, "one dashboard, one consumer");
    let leader = consumers[0]
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the consumer's node");
    leader[1..].parse::<usize>().unwrap() - 1
}
