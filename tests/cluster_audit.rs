//! The cluster's events stream and its PostgreSQL audit trail, against a real
//! NATS and the machine's PostgreSQL (127.0.0.1:5432, a database of the test's
//! own): an event published twice is stored once, and every event is written
//! once even when a writer died between writing and acknowledging.

mod common;

use common::nats::NatsCluster;
use common::pg::{admin, TestDb};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitalgate::cluster::audit_pg::{AuditRow, PgAudit};
use vitalgate::cluster::events::{self, Event, Published};

fn body(i: u64) -> String {
    format!(
        "{{\"type\":\"alarm\",\"id\":{i},\"chair\":\"north/{}\"}}",
        i % 7
    )
}

#[tokio::test]
async fn every_event_is_audited_once() {
    let nats = NatsCluster::start(1).await;
    let js = vitalgate::cluster::connect(&nats.urls(), "audit-test")
        .await
        .unwrap();
    events::stream(&js, 1).await.unwrap();
    let lease = Instant::now() + Duration::from_secs(60);
    for i in 0..100u64 {
        let chair = format!("north/{}", i % 7);
        let event = Event {
            id: &format!("north/{}:{i}", i % 7),
            kind: "alarm",
            chair: &chair,
            at_ms: 1_000 + i,
            body: &body(i),
        };
        assert_eq!(
            events::publish(&js, &event, lease).await.unwrap(),
            Published::Stored(i + 1)
        );
        if i % 10 == 0 {
            // A takeover evaluating the same device message again.
            assert_eq!(
                events::publish(&js, &event, lease).await.unwrap(),
                Published::Repeat(i + 1)
            );
        }
    }
    // A lapsed lease publishes nothing.
    let late = Event {
        id: "late",
        kind: "alarm",
        chair: "north/1",
        at_ms: 0,
        body: "{}",
    };
    assert!(events::publish(&js, &late, Instant::now()).await.is_err());

    let db = TestDb::create().await;
    let audit = PgAudit::connect(&db.url()).await.unwrap();
    assert_eq!(audit.version().await.unwrap(), 1);
    // A writer that died after writing events 5 and 6 but before acknowledging
    // them: they come again and are not written twice.
    for seq in [5u64, 6] {
        let i = seq - 1;
        let row = AuditRow {
            seq,
            event_id: format!("north/{}:{i}", i % 7),
            kind: "alarm".into(),
            chair: format!("north/{}", i % 7),
            at_ms: 1_000 + i,
            body: body(i),
        };
        assert!(audit.insert(&row).await.unwrap());
    }
    let stop = CancellationToken::new();
    let writer = vitalgate::cluster::audit_pg::start_writer(
        &js,
        audit,
        1,
        Duration::from_secs(2),
        stop.clone(),
    )
    .await
    .unwrap();

    let reader = PgAudit::connect(&db.url()).await.unwrap();
    common::eventually(
        || async {
            reader
                .history("alarm", None, 0, 1000)
                .await
                .is_ok_and(|rows| rows.len() == 100)
        },
        "100 events audited",
    )
    .await;
    stop.cancel();
    writer.await.unwrap();
    let rows = reader.history("alarm", None, 0, 1000).await.unwrap();
    for (i, row) in rows.iter().enumerate() {
        let i = i as u64;
        assert_eq!(row.seq, i + 1);
        assert_eq!(row.event_id, format!("north/{}:{i}", i % 7));
        assert_eq!(row.chair, format!("north/{}", i % 7));
        assert_eq!(row.at_ms, 1_000 + i);
        assert_eq!(row.body, body(i));
    }
    // The same event published again after the stream's duplicate window
    // (a replay from an old snapshot) under a new sequence: still one row.
    let again = AuditRow {
        seq: 500,
        ..rows[3].clone()
    };
    assert!(!reader.insert(&again).await.unwrap());
    // A sequence already audited for another event: refused, not overwritten.
    let other = AuditRow {
        event_id: "someone-else".into(),
        ..rows[3].clone()
    };
    let err = reader.insert(&other).await.err().unwrap();
    assert!(err.to_string().contains("recreated"), "{err}");
    let one_chair = reader
        .history("alarm", Some("north/3"), 1_050, 1000)
        .await
        .unwrap();
    assert!(one_chair
        .iter()
        .all(|r| r.chair == "north/3" && r.at_ms >= 1_050));
    assert_eq!(one_chair.len(), (50..100).filter(|i| i % 7 == 3).count());
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_build_is_refused() {
    let db = TestDb::create().await;
    let audit = PgAudit::connect(&db.url()).await.unwrap();
    // Connecting again applies nothing twice.
    PgAudit::connect(&db.url()).await.unwrap();
    assert_eq!(audit.version().await.unwrap(), 1);
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("INSERT INTO schema_migrations(version) VALUES (99)")
        .await
        .unwrap();
    let err = PgAudit::connect(&db.url()).await.err().unwrap();
    assert!(err.to_string().contains("newer vitalgate"), "{err}");
}

/// The writer's database connection is ended (a PostgreSQL restart, an
/// operator ending backends): events that fail meanwhile come again, the next
/// call connects again, and every event is audited once.
#[tokio::test]
async fn the_audit_goes_on_after_its_database_connection_is_lost() {
    let nats = NatsCluster::start(1).await;
    let js = vitalgate::cluster::connect(&nats.urls(), "audit-test")
        .await
        .unwrap();
    events::stream(&js, 1).await.unwrap();
    let db = TestDb::create().await;
    let stop = CancellationToken::new();
    let writer = vitalgate::cluster::audit_pg::start_writer(
        &js,
        PgAudit::connect(&db.url()).await.unwrap(),
        1,
        Duration::from_secs(1),
        stop.clone(),
    )
    .await
    .unwrap();
    let reader = PgAudit::connect(&db.url()).await.unwrap();
    let audited = |n: usize| {
        let reader = &reader;
        move || async move {
            reader
                .history("alarm", None, 0, 1000)
                .await
                .is_ok_and(|rows| rows.len() == n)
        }
    };
    publish_range(&js, 0..20).await;
    common::eventually(audited(20), "the first 20 events audited").await;

    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    ))
    .await;
    publish_range(&js, 20..40).await;
    common::eventually(
        audited(40),
        "40 events audited after the connection was lost",
    )
    .await;
    stop.cancel();
    writer.await.unwrap();
    let rows = reader.history("alarm", None, 0, 1000).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
}

/// Publish events `range` (ids and bodies as in [`body`]).
async fn publish_range(js: &async_nats::jetstream::Context, range: std::ops::Range<u64>) {
    let lease = Instant::now() + Duration::from_secs(60);
    for i in range {
        let chair = format!("north/{}", i % 7);
        let event = Event {
            id: &format!("{chair}:{i}"),
            kind: "alarm",
            chair: &chair,
            at_ms: 1_000 + i,
            body: &body(i),
        };
        events::publish(js, &event, lease).await.unwrap();
    }
}
