use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A unique path in the temp dir; removes the database and its WAL/SHM files.
struct TempDb(PathBuf);

impl TempDb {
    fn new(tag: &str) -> TempDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "vitalgate-audit-{tag}-{}-{nanos}-{n}.db",
            std::process::id()
        );
        TempDb(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn rec<'a>(seq: u64, kind: &'a str, chair: &'a str, at_ms: u64, body: &'a str) -> Record<'a> {
    Record {
        seq,
        instance: "00112233aabbccdd",
        kind,
        chair,
        at_ms,
        body,
    }
}

/// Append alarm record `i` in a commit of its own, with a 700-byte body.
fn append_alarm(audit: &Audit, i: u64) {
    let body = "x".repeat(700);
    audit
        .append(&[rec(i, "alarm", "north/3", i, &body)])
        .unwrap();
}

fn seqs(rows: &[Stored]) -> Vec<u64> {
    rows.iter().map(|s| s.seq).collect()
}

/// Appended deliberately out of at_ms order, with two at_ms ties.
fn sample(audit: &Audit) {
    audit
        .append(&[
            rec(1, "alarm", "north/1", 100, r#"{"a":1}"#),
            rec(2, "alarm", "north/2", 300, r#"{"a":2}"#),
            rec(3, "session", "north/1", 200, r#"{"s":3}"#),
            rec(4, "alarm", "north/1", 200, r#"{"a":4}"#),
            rec(5, "limit", "south/7", 50, r#"{"l":5}"#),
            rec(6, "alarm", "north/1", 400, r#"{"a":6}"#),
            rec(7, "alarm", "north/2", 300, r#"{"a":7}"#),
        ])
        .unwrap();
}

#[test]
fn query_filters_orders_and_limits() {
    let audit = Audit::in_memory().unwrap();
    sample(&audit);
    // All, by at_ms then insertion order (3 before 4, 2 before 7).
    let all = audit.query(None, None, None, None, 100).unwrap();
    assert_eq!(seqs(&all), [5, 1, 3, 4, 2, 7, 6]);
    let alarms = audit.query(Some("alarm"), None, None, None, 100).unwrap();
    assert_eq!(seqs(&alarms), [1, 4, 2, 7, 6]);
    let north1 = audit.query(None, Some("north/1"), None, None, 100).unwrap();
    assert_eq!(seqs(&north1), [1, 3, 4, 6]);
    let both = audit.query(Some("alarm"), Some("north/1"), None, None, 100);
    assert_eq!(seqs(&both.unwrap()), [1, 4, 6]);
    // Inclusive bounds on both ends, and each bound alone.
    let window = audit.query(None, None, Some(200), Some(300), 100).unwrap();
    assert_eq!(seqs(&window), [3, 4, 2, 7]);
    assert_eq!(
        seqs(&audit.query(None, None, Some(300), None, 100).unwrap()),
        [2, 7, 6]
    );
    assert_eq!(
        seqs(&audit.query(None, None, None, Some(100), 100).unwrap()),
        [5, 1]
    );
    assert!(audit
        .query(None, None, Some(301), Some(399), 100)
        .unwrap()
        .is_empty());
    // Limit keeps the oldest; huge bounds and limits are clamped, not errors.
    assert_eq!(
        seqs(&audit.query(None, None, None, None, 3).unwrap()),
        [5, 1, 3]
    );
    assert!(audit.query(None, None, None, None, 0).unwrap().is_empty());
    let huge = audit.query(None, None, Some(0), Some(u64::MAX), usize::MAX);
    assert_eq!(huge.unwrap().len(), 7);
    assert!(audit
        .query(Some("nope"), None, None, None, 10)
        .unwrap()
        .is_empty());
    // Every field round-trips exactly.
    assert_eq!(
        all[0],
        Stored {
            seq: 5,
            instance: "00112233aabbccdd".into(),
            kind: "limit".into(),
            chair: "south/7".into(),
            at_ms: 50,
            body: r#"{"l":5}"#.into(),
        }
    );
}

#[test]
fn latest_per_chair_picks_newest_insert_per_chair() {
    let audit = Audit::in_memory().unwrap();
    sample(&audit);
    // A new instance restarts seq and its clock stepped back: still newest.
    audit
        .append(&[Record {
            instance: "ffffffffffffffff",
            ..rec(1, "alarm", "north/2", 250, "{}")
        }])
        .unwrap();
    let latest = audit.latest_per_chair("alarm").unwrap();
    let got: Vec<_> = latest
        .iter()
        .map(|s| (s.chair.as_str(), s.seq, s.at_ms))
        .collect();
    assert_eq!(got, [("north/1", 6, 400), ("north/2", 1, 250)]);
    assert_eq!(latest[1].instance, "ffffffffffffffff");
    let sessions = audit.latest_per_chair("session").unwrap();
    assert_eq!(seqs(&sessions), [3]);
    assert!(audit.latest_per_chair("nope").unwrap().is_empty());
}

#[test]
fn empty_append_is_noop_and_bad_batch_stores_nothing() {
    let audit = Audit::in_memory().unwrap();
    audit.append(&[]).unwrap();
    let big = u64::MAX;
    let err = audit
        .append(&[
            rec(1, "alarm", "n/1", 1, "{}"),
            rec(2, "alarm", "n/1", big, "{}"),
        ])
        .unwrap_err();
    assert!(
        matches!(err, AuditError::OutOfRange { field: "at_ms", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at_ms"), "{err}");
    assert!(audit.query(None, None, None, None, 10).unwrap().is_empty());
    // The connection is still usable after the rolled-back batch.
    audit.append(&[rec(3, "alarm", "n/1", 1, "{}")]).unwrap();
    assert_eq!(seqs(&audit.query(None, None, None, None, 10).unwrap()), [3]);
}

#[test]
fn a_transaction_left_open_is_rolled_back_by_the_next_append() {
    let db = TempDb::new("left-open");
    let audit = Audit::open(&db.0, false).unwrap();
    // As a panic between BEGIN and COMMIT would leave the writer.
    lock(&audit.writer)
        .execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO events(seq, instance, kind, chair, at_ms, body)
             VALUES (1, 'i', 'alarm', 'n/1', 1, '{}');",
        )
        .unwrap();
    audit.append(&[rec(2, "alarm", "n/1", 2, "{}")]).unwrap();
    assert_eq!(seqs(&audit.query(None, None, None, None, 10).unwrap()), [2]);
}

#[test]
fn thousand_records_in_one_append() {
    let db = TempDb::new("bulk");
    let audit = Audit::open(&db.0, false).unwrap();
    let chairs: Vec<String> = (0..10).map(|c| format!("north/{c}")).collect();
    let bodies: Vec<String> = (0..1000).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    let recs: Vec<Record<'_>> = (0..1000)
        .map(|i| {
            rec(
                i as u64,
                "alarm",
                &chairs[i % 10],
                1_000 + i as u64,
                &bodies[i],
            )
        })
        .collect();
    audit.append(&recs).unwrap();
    let all = audit.query(None, None, None, None, 5000).unwrap();
    assert_eq!(all.len(), 1000);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, s)| s.seq == i as u64 && s.body == bodies[i]));
    let latest = audit.latest_per_chair("alarm").unwrap();
    assert_eq!(seqs(&latest), (990..1000).collect::<Vec<_>>());
}

#[test]
fn file_survives_reopen_with_wal_and_chosen_sync() {
    let db = TempDb::new("reopen");
    for (round, full) in [(0u64, false), (1, true)] {
        let audit = Audit::open(&db.0, full).unwrap();
        {
            let w = lock(&audit.writer);
            let mode: String = w
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = w
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, if full { 2 } else { 1 }, "FULL=2, NORMAL=1");
        }
        audit
            .append(&[rec(round, "alarm", "north/3", round, "{}")])
            .unwrap();
        // The separate reader sees the writer's commit at once.
        let rows = audit.query(None, None, None, None, 10).unwrap();
        assert_eq!(rows.len() as u64, round + 1);
        // The reader refuses writes.
        let r = audit.reader();
        assert!(r.execute("DELETE FROM events", []).is_err());
    }
    let audit = Audit::open(&db.0, false).unwrap();
    assert_eq!(
        seqs(&audit.query(None, None, None, None, 10).unwrap()),
        [0, 1]
    );
}

#[test]
fn missing_directory_error_names_path() {
    let dir = TempDb::new("nodir");
    let path = dir.0.join("audit.db");
    let err = Audit::open(&path, false).err().expect("must fail");
    assert!(matches!(err, AuditError::NoDirectory { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("directory"), "{msg}");
    assert!(!dir.0.exists(), "must not create the directory");
}

#[test]
fn garbage_file_error_names_path() {
    let db = TempDb::new("garbage");
    std::fs::write(&db.0, vec![b'x'; 4096]).unwrap();
    let err = Audit::open(&db.0, false).err().expect("must fail");
    assert!(matches!(err, AuditError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&db.0.display().to_string()),
        "{err}"
    );
}

#[test]
fn newer_schema_version_is_refused() {
    let db = TempDb::new("newer");
    drop(Audit::open(&db.0, false).unwrap());
    let conn = Connection::open(&db.0).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = Audit::open(&db.0, false).err().expect("must refuse");
    match &err {
        AuditError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(err.to_string().contains("schema version 2"), "{err}");
}

#[test]
fn poisoned_lock_does_not_panic_callers() {
    let audit = Arc::new(Audit::in_memory().unwrap());
    let a = Arc::clone(&audit);
    let joined = std::thread::spawn(move || {
        let _guard = lock(&a.writer);
        panic!("poison the writer lock on purpose");
    })
    .join();
    assert!(joined.is_err());
    assert!(audit.writer.is_poisoned());
    audit.append(&[rec(1, "alarm", "n/1", 1, "{}")]).unwrap();
    assert_eq!(audit.query(None, None, None, None, 10).unwrap().len(), 1);
}

#[test]
fn audit_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Audit>();
    check::<AuditError>();
}

/// Under steady appends (an alarm storm) the WAL is checkpointed and reset, not
/// left to grow: 20,000 one-event commits of about 700 bytes each (14 MB written)
/// leave a WAL within a few MB (1000 pages of 4 KiB between checkpoints).
#[test]
fn wal_stays_bounded_under_steady_appends() {
    let db = TempDb::new("wal");
    let audit = std::sync::Arc::new(Audit::open(&db.0, false).unwrap());
    let mut checkpoints = 0;
    for i in 0..20_000u64 {
        append_alarm(&audit, i);
        // As the hub does after delivering each batch.
        if let Some(checkpoint) = audit.claim_checkpoint() {
            checkpoint.run().unwrap();
            checkpoints += 1;
        }
    }
    assert!(checkpoints >= 2, "{checkpoints} checkpoints");
    let mut wal = db.0.clone().into_os_string();
    wal.push("-wal");
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(size <= 8 << 20, "WAL is {size} bytes");
}

#[test]
fn appends_never_checkpoint_by_themselves() {
    // A checkpoint's fsync inside an append would delay the alarm being appended:
    // below the backstop, appends leave the WAL to grow until the caller
    // checkpoints.
    let db = TempDb::new("nockpt");
    let audit = std::sync::Arc::new(Audit::open(&db.0, false).unwrap());
    for i in 0..1_500u64 {
        append_alarm(&audit, i);
    }
    let before = audit.wal_pages();
    assert!(
        before > 1_000,
        "WAL has {before} pages: something checkpointed"
    );
    let claim = audit.claim_checkpoint().expect("due");
    assert!(audit.claim_checkpoint().is_none(), "claimed twice");
    drop(claim);
    // A claim dropped unrun gives itself back.
    let claim = audit.claim_checkpoint().expect("given back");
    claim.run().unwrap();
    append_alarm(&audit, 9_000);
    let after = audit.wal_pages();
    assert!(after < 20, "WAL did not start over: {after} pages");
    assert!(audit.claim_checkpoint().is_none(), "due again at once");
    assert_eq!(
        audit.query(None, None, None, None, 20_000).unwrap().len(),
        1_501
    );
}

#[test]
fn an_append_checkpoints_by_itself_when_nobody_else_does() {
    // The backstop: with no caller checkpointing, the WAL still starts over
    // once it reaches CHECKPOINT_BACKSTOP_PAGES.
    let db = TempDb::new("backstop");
    let audit = Audit::open(&db.0, false).unwrap();
    let mut most = 0;
    for i in 0..6_000u64 {
        append_alarm(&audit, i);
        most = most.max(audit.wal_pages());
    }
    assert!(most >= 10_000, "WAL peaked at {most} pages");
    assert!(audit.wal_pages() < most, "WAL never started over");
}

/// The index names of the `events` table.
fn indexes(path: &Path) -> Vec<String> {
    index_names(&Connection::open(path).unwrap()).unwrap()
}

/// SQLite's schema version: it changes with every change to the schema.
fn schema_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.pragma_query_value(None, "schema_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn a_file_from_an_earlier_build_gets_the_new_indexes_and_keeps_its_rows() {
    let db = TempDb::new("earlier");
    // What builds before the index change created (schema version 1).
    let conn = Connection::open(&db.0).unwrap();
    conn.execute_batch(
        "CREATE TABLE events(
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             seq INTEGER NOT NULL, instance TEXT NOT NULL, kind TEXT NOT NULL,
             chair TEXT NOT NULL, at_ms INTEGER NOT NULL, body TEXT NOT NULL);
         CREATE INDEX events_chair_at ON events(chair, at_ms);
         CREATE INDEX events_kind_at ON events(kind, at_ms);
         CREATE INDEX events_kind_chair_id ON events(kind, chair, id);
         INSERT INTO events(seq, instance, kind, chair, at_ms, body)
             VALUES (1, 'i', 'alarm', 'north/1', 100, '{}'), (2, 'i', 'alarm', 'north/2', 150, '{}');
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let audit = Audit::open(&db.0, false).unwrap();
    assert_eq!(indexes(&db.0), ["events_kind_at", "events_kind_chair_at"]);
    audit
        .append(&[rec(3, "alarm", "north/1", 200, "{}")])
        .unwrap();
    let north1 = audit.query(Some("alarm"), Some("north/1"), None, None, 10);
    assert_eq!(seqs(&north1.unwrap()), [1, 3]);
    let latest = audit.latest_per_chair("alarm").unwrap();
    assert_eq!(seqs(&latest), [3, 2]);
    // Opening again changes nothing.
    drop(audit);
    let before = schema_version(&db.0);
    drop(Audit::open(&db.0, false).unwrap());
    assert_eq!(schema_version(&db.0), before);
}

#[test]
fn an_open_with_nothing_to_change_does_not_wait_for_another_writer() {
    let db = TempDb::new("locked");
    drop(Audit::open(&db.0, false).unwrap());
    // Another process holds the write lock (an archiving job, a backup tool).
    let other = Connection::open(&db.0).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let audit = Audit::open(&db.0, false).unwrap();
    assert!(
        started.elapsed() < BUSY_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    assert!(audit.query(None, None, None, None, 10).unwrap().is_empty());
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn the_api_queries_and_the_latest_per_chair_use_an_index() {
    let db = TempDb::new("plans");
    let audit = Audit::open(&db.0, false).unwrap();
    sample(&audit);
    assert_eq!(indexes(&db.0), ["events_kind_at", "events_kind_chair_at"]);
    // No AUTOINCREMENT: its counter table would be one more page per append.
    let conn = Connection::open(&db.0).unwrap();
    let counters: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counters, 0);
    // The shapes `Audit::query` builds when a kind is given (as the API always
    // does), and `latest_per_chair`'s inner query.
    for sql in [
        query_sql([BY_KIND, FROM, TO].into_iter()),
        query_sql([BY_KIND, BY_CHAIR, FROM].into_iter()),
        query_sql([BY_KIND, BY_CHAIR].into_iter()),
        LATEST_IDS.to_string(),
    ] {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(
                params_from_iter([1; 4].iter().take(sql.matches('?').count())),
                |r| r.get(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Found through an index, already in the order asked for: no table
        // scan, no sorting afterwards.
        assert!(
            plan.iter()
                .any(|step| step.contains("USING") && step.contains("INDEX")),
            "{sql}: {plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN") || step.contains("TEMP B-TREE")),
            "{sql}: {plan:?}"
        );
    }
}
