//! Durable audit trail of everything dashboards are shown, on embedded SQLite.
//!
//! Why the order matters: every alarm event, acknowledgement, session phase
//! change and limit change is appended here *before* it is sent to dashboards,
//! and [`Audit::append`] returns only after the transaction has committed. So
//! whatever a dashboard saw is in the file even if the process is killed the
//! next instant; the worst a crash can do is leave a record no dashboard saw.
//!
//! Why WAL + `synchronous`: in WAL mode a commit is one append to the `-wal`
//! file. With `synchronous=NORMAL` that write reaches the OS page cache before
//! commit returns, which survives `kill -9` (the kernel still owns the pages)
//! but not a power cut; checkpoints still fsync. `synchronous=FULL`
//! (`full_sync = true`) also fsyncs the WAL on every commit, which survives
//! power loss at the cost of one fsync per [`Audit::append`] call, hence the
//! slice API: batch records so that one fsync covers many of them.
//!
//! Why two connections: WAL lets readers run against the last commit while a
//! writer appends, so dashboard/history queries (reader) never wait for an
//! fsync on the alarm path (writer), and vice versa. Each sits behind its own
//! mutex because a `rusqlite::Connection` is not `Sync`. The in-memory store
//! used by tests has one connection serving both roles, since `:memory:`
//! databases are private to their connection and in-memory databases cannot
//! use WAL anyway (a shared-cache one would answer SQLITE_LOCKED, not wait).

mod preflight;
mod recovery;
mod trail;
pub use preflight::check_path;
pub use trail::{Trail, TrailError, TrailQuery};

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params_from_iter, Connection, OpenFlags, Row, ToSql};

/// A claimed checkpoint ([`Audit::claim_checkpoint`]). Dropped without being run
/// (a blocking task dropped at runtime shutdown, say), it gives the claim back.
pub struct Checkpoint(Arc<Audit>);

impl Checkpoint {
    pub fn run(self) -> Result<(), AuditError> {
        self.0.checkpoint_now()
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        self.0.checkpointing.store(false, Ordering::Release);
    }
}

/// The schema version this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// How long a connection waits for a lock held by another connection (or
/// another process, e.g. a backup tool) before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for appends, once the file is open. Appends run where alarms are
/// sequenced for dashboards: a writer outside the gateway must not stall alarm
/// delivery for seconds. A failed append is counted and the events still go out.
const APPEND_BUSY_TIMEOUT: Duration = Duration::from_millis(250);
const COLUMNS: &str = "seq, instance, kind, chair, at_ms, body";
/// WAL pages (frames) after which a checkpoint is due: SQLite's own automatic
/// threshold, about 4 MB.
const CHECKPOINT_AFTER_PAGES: u64 = 1000;
/// WAL pages at which an append checkpoints by itself, as SQLite's automatic
/// checkpoint would: a backstop should the checkpoints after delivery stop or
/// fall behind (about 40 MB).
const CHECKPOINT_BACKSTOP_PAGES: i32 = 10_000;

/// Every page an append changes is written to the WAL in the alarm's commit, so
/// the table has only what queries need (measured against the earlier three
/// indexes and AUTOINCREMENT: 5.4 → 3.4 WAL pages per one-record commit,
/// `publish_alarm_with_audit` 34–41 → 25–26 µs):
/// - `id` is the rowid, without AUTOINCREMENT (whose counter is one more page per
///   commit): rows are never deleted, so ids still only grow, in insertion order;
/// - `(kind, at_ms)` serves history by kind over a time range, `(kind, chair,
///   at_ms)` the same for one chair and the latest record per chair (its entries
///   carry the rowid). A query without a kind scans the table (the API always
///   gives one).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL, instance TEXT NOT NULL, kind TEXT NOT NULL,
    chair TEXT NOT NULL, at_ms INTEGER NOT NULL, body TEXT NOT NULL);";

/// The indexes, brought up to date when a file is opened without them. Files
/// written by earlier builds (same schema version: the rows are the same) had
/// `(chair, at_ms)` and `(kind, chair, id)` instead of `(kind, chair, at_ms)`;
/// the first open replaces them, once, taking as long as indexing the file's
/// rows (and WAL space for the new index). An earlier build can still use the
/// file (its queries are answered without its own indexes), which is why the
/// indexes are not a schema version of their own.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_kind_at ON events(kind, at_ms);
CREATE INDEX IF NOT EXISTS events_kind_chair_at ON events(kind, chair, at_ms);
DROP INDEX IF EXISTS events_chair_at;
DROP INDEX IF EXISTS events_kind_chair_id;";
/// What [`INDEXES`] leaves, as [`index_names`] lists them.
const INDEX_NAMES: [&str; 2] = ["events_kind_at", "events_kind_chair_at"];

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: its parent directory does not exist")]
    NoDirectory { path: String },
    #[error("audit database {path} is not an SQLite database")]
    NotADatabase { path: String },
    #[error("audit database {path}: its directory {dir} does not take new files (SQLite writes its -wal and -shm files there): {source}")]
    DirectoryUnwritable {
        path: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit database {path} cannot be opened for writing: {source}")]
    Unwritable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open audit database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit database {path}: journal_mode is {mode:?}, not WAL (unsupported filesystem?)")]
    NotWal { path: String, mode: String },
    #[error("audit database {path} has schema version {found}; this build supports up to {supported} (written by a newer vitalgate?)")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("audit record field {field} = {value} does not fit SQLite's signed 64-bit integer")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("audit database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One record: the JSON text exactly as dashboards received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    /// Gateway-wide event sequence number; unique within one `instance` only.
    pub seq: u64,
    /// Gateway run id (16 hex chars).
    pub instance: &'a str,
    /// "alarm" | "session" | "limit" (free text, indexed).
    pub kind: &'a str,
    /// "{site}/{chair}", e.g. "north/3".
    pub chair: &'a str,
    /// Gateway wall-clock ms since the epoch of the event.
    pub at_ms: u64,
    /// The JSON text.
    pub body: &'a str,
}

/// A stored record returned by queries.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stored {
    pub seq: u64,
    pub instance: String,
    pub kind: String,
    pub chair: String,
    pub at_ms: u64,
    pub body: String,
}

/// The audit store: a writer connection and (for files) a separate reader.
///
/// Checkpoints (copying the WAL back into the database, with an fsync) are not
/// left to SQLite's automatic ones, which run inside the commit that crosses the
/// threshold: that commit is an alarm on its way to dashboards, and the fsync
/// measured as the whole p99.9 of alarm latency at clinic scale. Instead the
/// caller, once an append has committed, takes [`Audit::claim_checkpoint`] and
/// runs it on a thread of its own while the events are delivered. It runs on
/// the writer connection, never beside an append (an append that comes while it
/// runs waits for it): a checkpoint on another connection cannot reset the WAL
/// while appends go on, and the file then grows without bound under steady load
/// (measured). Should those checkpoints stop, an append checkpoints by itself
/// at `CHECKPOINT_BACKSTOP_PAGES`.
pub struct Audit {
    writer: Mutex<Connection>,
    /// `None` for the in-memory store, whose one connection serves both roles.
    reader: Option<Mutex<Connection>>,
    /// Pages in the WAL after the last commit (SQLite's WAL hook).
    wal_pages: Arc<AtomicU64>,
    /// The WAL size at which the next checkpoint is due.
    checkpoint_at: AtomicU64,
    /// A checkpoint is claimed and not yet finished.
    checkpointing: AtomicBool,
}

impl Audit {
    /// Open or create the file (its parent directory must exist), switch it to
    /// WAL with `synchronous=NORMAL` (or `FULL` when `full_sync`), and create
    /// the schema if missing. A file with a newer schema version is refused
    /// rather than written to, so an older build cannot damage it.
    pub fn open(path: &Path, full_sync: bool) -> Result<Audit, AuditError> {
        let name = path.display().to_string();
        preflight::directory_exists(path, &name)?;
        let open_err = |source| AuditError::Open {
            path: name.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(path, flags).map_err(open_err)?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::NotWal { path: name, mode });
        }
        let sync = if full_sync { "FULL" } else { "NORMAL" };
        writer
            .pragma_update(None, "synchronous", sync)
            .map_err(open_err)?;
        init_schema(&writer, &name)?;
        writer.busy_timeout(APPEND_BUSY_TIMEOUT).map_err(open_err)?;
        // Checkpoints are run by the caller after delivery (see [`Audit`]), not
        // inside an append; cap what is left on disk after each one.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        // After the pragma, which installs a hook of its own.
        let wal_pages = Arc::new(AtomicU64::new(0));
        let pages = wal_pages.clone();
        writer
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, n: i32| {
                pages.store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                if n >= CHECKPOINT_BACKSTOP_PAGES {
                    // What SQLite's own hook does; its outcome is not the
                    // commit's (which has happened), so it is not reported.
                    let _ = wal.checkpoint();
                }
                Ok(())
            }))
            .map_err(open_err)?;
        writer
            .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(open_err)?;
        // query_only rather than SQLITE_OPEN_READONLY: a read-only connection
        // cannot create the WAL index (-shm) itself.
        let reader = Connection::open_with_flags(path, flags).map_err(open_err)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(open_err)?;
        reader.set_prepared_statement_cache_capacity(32);
        Ok(Audit {
            writer: Mutex::new(writer),
            reader: Some(Mutex::new(reader)),
            wal_pages,
            checkpoint_at: AtomicU64::new(CHECKPOINT_AFTER_PAGES),
            checkpointing: AtomicBool::new(false),
        })
    }

    /// An in-memory store for tests: one connection, nothing survives a drop.
    pub fn in_memory() -> Result<Audit, AuditError> {
        let conn = Connection::open_in_memory()?;
        conn.set_prepared_statement_cache_capacity(32);
        init_schema(&conn, ":memory:")?;
        Ok(Audit {
            writer: Mutex::new(conn),
            reader: None,
            wal_pages: Arc::new(AtomicU64::new(0)),
            checkpoint_at: AtomicU64::new(CHECKPOINT_AFTER_PAGES),
            checkpointing: AtomicBool::new(false),
        })
    }

    /// Append records in ONE transaction; returns only after commit, so the
    /// caller may then show them to dashboards. Empty slice: no-op. On any
    /// error nothing of the batch is stored.
    ///
    /// `BEGIN IMMEDIATE` and `COMMIT` are cached statements like the insert:
    /// rusqlite's `Transaction` parses both on every commit, and this runs once
    /// per alarm.
    pub fn append(&self, records: &[Record<'_>]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let conn = lock(&self.writer);
        if !conn.is_autocommit() {
            // Left open by an append that panicked or could not roll back.
            conn.execute_batch("ROLLBACK")?;
        }
        // IMMEDIATE takes the write lock up front, so waiting for another
        // writer happens under busy_timeout instead of failing mid-batch.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let written = insert_all(&conn, records).and_then(|()| {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        });
        if written.is_err() && !conn.is_autocommit() {
            // What a failed COMMIT leaves open (SQLITE_BUSY) is undone too; should
            // the rollback fail, the next append rolls back first.
            let _ = conn.execute_batch("ROLLBACK");
        }
        written
    }

    /// A checkpoint, when one is due and none is under way: run it with
    /// [`Checkpoint::run`], off the async workers (it waits for a disk flush).
    pub fn claim_checkpoint(self: &Arc<Self>) -> Option<Checkpoint> {
        let due =
            self.wal_pages.load(Ordering::Relaxed) >= self.checkpoint_at.load(Ordering::Relaxed);
        (due && self
            .checkpointing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok())
        .then(|| Checkpoint(self.clone()))
    }

    /// Copy the WAL into the database (PASSIVE: it never waits for the reader),
    /// so that the next append starts the WAL over.
    fn checkpoint_now(&self) -> Result<(), AuditError> {
        let result = lock(&self.writer).query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        // All copied: the next append starts the WAL over, and the hook then
        // reports a small count. Otherwise (a reader still uses old pages, or
        // another process was checkpointing: busy, -1) try again after another
        // threshold's worth, not on every append.
        let next = match result {
            Ok((0, log, copied)) if log >= 0 && copied >= log => CHECKPOINT_AFTER_PAGES,
            _ => self.wal_pages.load(Ordering::Relaxed) + CHECKPOINT_AFTER_PAGES,
        };
        self.checkpoint_at.store(next, Ordering::Relaxed);
        result?;
        Ok(())
    }

    /// Pages in the WAL after the last commit.
    #[cfg(test)]
    pub(crate) fn wal_pages(&self) -> u64 {
        self.wal_pages.load(Ordering::Relaxed)
    }

    /// Records of `kind` (None = all kinds), optionally for one chair, with
    /// `at_ms` in `[from_ms, to_ms]` (each bound optional, inclusive), ordered
    /// by `at_ms` then insertion order, at most `limit` rows, oldest first.
    pub fn query(
        &self,
        kind: Option<&str>,
        chair: Option<&str>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, AuditError> {
        // A bound beyond i64::MAX can be clamped: no stored value exceeds it.
        let given: [(&str, Option<Box<dyn ToSql + '_>>); 4] = [
            (BY_KIND, kind.map(|k| Box::new(k) as Box<dyn ToSql>)),
            (BY_CHAIR, chair.map(|c| Box::new(c) as Box<dyn ToSql>)),
            (
                FROM,
                from_ms.map(|v| Box::new(clamp_i64(v)) as Box<dyn ToSql>),
            ),
            (TO, to_ms.map(|v| Box::new(clamp_i64(v)) as Box<dyn ToSql>)),
        ];
        let sql = query_sql(given.iter().filter(|(_, v)| v.is_some()).map(|(c, _)| *c));
        let mut args: Vec<Box<dyn ToSql + '_>> = given.into_iter().filter_map(|(_, v)| v).collect();
        args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        lock(self.reader.as_ref().unwrap_or(&self.writer))
    }
}

/// A panic while a connection was held leaves nothing half-done (an open
/// transaction is rolled back when dropped, or by the next append), so a
/// poisoned lock is usable.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn init_schema(conn: &Connection, path: &str) -> Result<(), AuditError> {
    let open_err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(AuditError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Nothing to change (every open but a file's first under this build): no
    // write lock taken, so a backup or an archiving job writing to the file
    // does not keep the gateway from starting.
    let indexes = index_names(conn).map_err(open_err)?;
    if found == SCHEMA_VERSION && indexes == INDEX_NAMES {
        return Ok(());
    }
    // One transaction: a crash here leaves the previous version and no half
    // schema.
    let upgrade = found == SCHEMA_VERSION;
    let version = if upgrade {
        String::new()
    } else {
        format!("{SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};")
    };
    if upgrade {
        tracing::info!(
            path,
            found = ?indexes,
            "audit trail: replacing the indexes of a file from an earlier build, once (about 1 s per million rows)"
        );
    }
    let started = std::time::Instant::now();
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {version} {INDEXES} COMMIT;"))
        .map_err(open_err)?;
    if upgrade {
        tracing::info!(
            path,
            ms = started.elapsed().as_millis() as u64,
            "audit trail: indexes replaced"
        );
    }
    Ok(())
}

/// The conditions [`Audit::query`] can put in its SQL, one per filter given.
const BY_KIND: &str = "kind = ?";
const BY_CHAIR: &str = "chair = ?";
const FROM: &str = "at_ms >= ?";
const TO: &str = "at_ms <= ?";

/// The id of the newest record of kind `?1` for every chair.
const LATEST_IDS: &str = "SELECT max(id) FROM events WHERE kind = ?1 GROUP BY chair";

/// [`Audit::query`]'s SQL for `conditions`, then a `?` for the limit. Only the
/// filters actually given go into it, so SQLite can use the indexes
/// (`?1 IS NULL OR ...` would defeat them): at most 16 shapes, all kept in the
/// statement cache.
fn query_sql<'a>(conditions: impl Iterator<Item = &'a str>) -> String {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE 1");
    for c in conditions {
        sql.push_str(" AND ");
        sql.push_str(c);
    }
    sql.push_str(" ORDER BY at_ms, id LIMIT ?");
    sql
}

/// The names of the `events` table's indexes, sorted.
fn index_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name",
    )?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names.collect()
}

/// Insert `records` in the transaction `conn` has open.
fn insert_all(conn: &Connection, records: &[Record<'_>]) -> Result<(), AuditError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO events(seq, instance, kind, chair, at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in records {
        let seq = to_i64("seq", r.seq)?;
        let at_ms = to_i64("at_ms", r.at_ms)?;
        insert.execute((seq, r.instance, r.kind, r.chair, at_ms, r.body))?;
    }
    Ok(())
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, AuditError> {
    i64::try_from(value).map_err(|_| AuditError::OutOfRange { field, value })
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stored(row: &Row<'_>) -> rusqlite::Result<Stored> {
    // rusqlite reads u64 only with its `fallible_uint` feature; a negative
    // value (written by someone else) becomes IntegralValueOutOfRange.
    let get_u64 = |idx: usize| {
        let v: i64 = row.get(idx)?;
        u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
    };
    Ok(Stored {
        seq: get_u64(0)?,
        instance: row.get(1)?,
        kind: row.get(2)?,
        chair: row.get(3)?,
        at_ms: get_u64(4)?,
        body: row.get(5)?,
    })
}

#[cfg(test)]
mod tests;
