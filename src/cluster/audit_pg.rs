//! The cluster's audit trail in PostgreSQL: every event of the events stream,
//! written once, keyed by its stream sequence.
//!
//! A durable consumer on the events stream (shared by every gateway: each event
//! goes to one of them) inserts each event and acknowledges it after the
//! insert has committed. Each row holds the event's stream sequence and its id,
//! both unique: an event delivered again (its writer died between insert and
//! acknowledgement) is still written once, and so is one published again
//! after the stream's duplicate window (a replay from an old snapshot). A
//! sequence already written for another event (the stream was recreated) is an
//! error: the event is not acknowledged, and the consumer's lag shows it.
//!
//! The schema is versioned: [`PgAudit::connect`] applies the migrations this
//! build has and the database lacks, in order, under an advisory lock (gateways
//! starting together), and refuses a database migrated by a newer build.

use super::events::{AT_HEADER, CHAIR_HEADER, EVENTS_STREAM, ID_HEADER, KIND_HEADER};
use super::mirror::Mirror;
use super::ClusterError;
use crate::audit::{Stored, Trail, TrailError, TrailQuery};
use crate::core::{SessionChange, SessionEvent};
use crate::protocol;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use async_nats::jetstream::Context;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The migrations, by version; never edited once shipped, only appended to.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE events(
        seq BIGINT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        chair TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        body TEXT NOT NULL);
     CREATE INDEX events_kind_at ON events(kind, at_ms);
     CREATE INDEX events_kind_chair_at ON events(kind, chair, at_ms);",
)];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x7669_7461_6c67_6174; // "vitalgat"

/// The durable consumer writing the audit trail.
pub const AUDIT_CONSUMER: &str = "vitalgate_audit";

#[derive(Debug, thiserror::Error)]
pub enum PgAuditError {
    #[error("PostgreSQL: {}", in_words(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("the audit database is at schema version {found}; this build knows up to {known} (migrated by a newer vitalgate?)")]
    NewerSchema { found: i32, known: i32 },
    #[error("event {seq} lacks header {header}")]
    Header { seq: u64, header: &'static str },
    #[error("a delivered event without its stream sequence")]
    NoSequence,
    #[error("sequence {seq} is already audited for event {stored:?}, not {event_id:?} (was the events stream recreated?)")]
    SequenceTaken {
        seq: u64,
        stored: String,
        event_id: String,
    },
    #[error("event {seq}: {what} out of range")]
    OutOfRange { seq: u64, what: &'static str },
}

/// What the server said (its message and code), or why it could not be asked:
/// `tokio_postgres::Error` alone says only "db error".
fn in_words(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    /// The event's deterministic id.
    pub event_id: String,
    pub kind: String,
    pub chair: String,
    pub at_ms: u64,
    pub body: String,
}

/// The audit database. Its connection is made again when it was lost (the
/// server restarted, the backend was ended): the call that finds it closed
/// reconnects, so a writer's next retry goes through once the server is back.
pub struct PgAudit {
    url: String,
    /// Taken for each call (a clone of the `Arc`), never held across one;
    /// `None` until a first connection was made.
    client: std::sync::Mutex<Option<Arc<Client>>>,
    /// The schema was brought up to date on some connection.
    migrated: std::sync::atomic::AtomicBool,
    /// One reconnection at a time.
    reconnecting: tokio::sync::Mutex<()>,
}

/// How long making a connection may take when `url` does not say
/// (`connect_timeout`): a server that does not answer must not hold a call
/// (nor a gateway's start) for the system's TCP timeout.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl PgAudit {
    /// Connect (`url` as libpq takes it, e.g. `host=127.0.0.1 user=vitalgate
    /// dbname=vitalgate`) and bring the schema up to date.
    pub async fn connect(url: &str) -> Result<PgAudit, PgAuditError> {
        let audit = PgAudit::later(url)?;
        audit.client().await?;
        Ok(audit)
    }

    /// [`PgAudit::connect`] at its first use, not now (the server may be down
    /// now): `url` is checked now.
    pub fn later(url: &str) -> Result<PgAudit, PgAuditError> {
        url.parse::<tokio_postgres::Config>()?;
        Ok(PgAudit {
            url: url.to_string(),
            client: std::sync::Mutex::new(None),
            migrated: std::sync::atomic::AtomicBool::new(false),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection, made (again) if there is none open, with the schema
    /// brought up to date on the first.
    async fn client(&self) -> Result<Arc<Client>, PgAuditError> {
        let open_one = || {
            self.client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|c| !c.is_closed())
        };
        if let Some(client) = open_one() {
            return Ok(client);
        }
        let _one = self.reconnecting.lock().await;
        if let Some(client) = open_one() {
            return Ok(client);
        }
        if self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            tracing::warn!("the audit database's connection was lost; connecting again");
        }
        let mut fresh = open(&self.url).await?;
        if !self.migrated.load(std::sync::atomic::Ordering::Acquire) {
            migrate(&mut fresh).await?;
            self.migrated
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let fresh = Arc::new(fresh);
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// The schema version the database is at.
    pub async fn version(&self) -> Result<i32, PgAuditError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Write `row` unless it is there already (same sequence or same event id);
    /// whether it was new. A sequence held by another event is an error.
    pub async fn insert(&self, row: &AuditRow) -> Result<bool, PgAuditError> {
        let seq = i64::try_from(row.seq).map_err(|_| PgAuditError::OutOfRange {
            seq: row.seq,
            what: "seq",
        })?;
        let at = i64::try_from(row.at_ms).map_err(|_| PgAuditError::OutOfRange {
            seq: row.seq,
            what: "at_ms",
        })?;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO events(seq, event_id, kind, chair, at_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&seq, &row.event_id, &row.kind, &row.chair, &at, &row.body],
            )
            .await?;
        if n == 1 {
            return Ok(true);
        }
        let stored = client
            .query_opt("SELECT event_id FROM events WHERE seq = $1", &[&seq])
            .await?;
        match stored.map(|r| r.get::<_, String>(0)) {
            Some(stored) if stored != row.event_id => Err(PgAuditError::SequenceTaken {
                seq: row.seq,
                stored,
                event_id: row.event_id.clone(),
            }),
            _ => Ok(false),
        }
    }

    /// The events of `kind` (of one chair when given) from `from_ms` on, by
    /// gateway time, at most `limit`.
    pub async fn history(
        &self,
        kind: &'static str,
        chair: Option<&str>,
        from_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, PgAuditError> {
        self.query(&TrailQuery {
            kind,
            chair: chair.map(String::from),
            from_ms: Some(from_ms),
            to_ms: None,
            limit,
        })
        .await
    }

    /// The events `q` asks for, by gateway time (then stream sequence).
    pub async fn query(&self, q: &TrailQuery) -> Result<Vec<AuditRow>, PgAuditError> {
        // A bound beyond i64::MAX can be clamped: no stored value exceeds it.
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (from, to) = (q.from_ms.map(clamp), q.to_ms.map(clamp));
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, event_id, kind, chair, at_ms, body FROM events
                 WHERE kind = $1 AND ($2::TEXT IS NULL OR chair = $2)
                   AND ($3::BIGINT IS NULL OR at_ms >= $3)
                   AND ($4::BIGINT IS NULL OR at_ms <= $4)
                 ORDER BY at_ms, seq LIMIT $5",
                &[&q.kind, &q.chair, &from, &to, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                seq: r.get::<_, i64>(0) as u64,
                event_id: r.get(1),
                kind: r.get(2),
                chair: r.get(3),
                at_ms: r.get::<_, i64>(4) as u64,
                body: r.get(5),
            })
            .collect())
    }
}

/// `/api` in cluster mode: the audit trail from PostgreSQL (on a connection
/// of its own: a slow query never holds up the writer), each chair's session
/// now from the events stream's mirror.
pub struct PgTrail {
    pub audit: Arc<PgAudit>,
    pub mirror: Arc<Mirror>,
}

impl Trail for PgTrail {
    fn query(&self, q: TrailQuery) -> BoxFuture<'static, Result<Vec<Stored>, TrailError>> {
        let (audit, instance) = (self.audit.clone(), self.mirror.instance().to_string());
        Box::pin(async move {
            let rows = audit
                .query(&q)
                .await
                .map_err(|e| TrailError(e.to_string()))?;
            Ok(rows
                .into_iter()
                .map(|row| Stored {
                    // Numbered as dashboards received it: by the stream.
                    body: protocol::with_seq(&row.body, row.seq).unwrap_or(row.body),
                    seq: row.seq,
                    instance: instance.clone(),
                    kind: row.kind,
                    chair: row.chair,
                    at_ms: row.at_ms,
                })
                .collect())
        })
    }

    /// As a single gateway says it: the session as a phase event.
    fn current_session(&self, chair: &str) -> Option<SessionEvent> {
        let mut session = self.mirror.chairs(|c| c == chair).sessions.pop()?;
        session.change = SessionChange::Phase;
        session.previous = None;
        Some(session)
    }
}

/// A connection, its I/O driven by a task of its own.
async fn open(url: &str) -> Result<Client, PgAuditError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

async fn migrate(client: &mut Client) -> Result<(), PgAuditError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations(
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if found > known {
        return Err(PgAuditError::NewerSchema { found, known });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations(version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "audit database migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// Write every event of the events stream into `audit` until `stop`: pull,
/// insert, then acknowledge. An event that cannot be written is not
/// acknowledged (it comes again after `retry`).
pub async fn start_writer(
    js: &Context,
    audit: PgAudit,
    replicas: usize,
    retry: Duration,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    // Not waited for, unlike the streams before the partitions are taken: the
    // gateway holds partitions by now, and one that cannot start must give them
    // back (the start fails and the member stops) rather than hold them unserved.
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| ClusterError::js("finding the events stream", e))?;
    let consumer = stream
        .get_or_create_consumer(
            AUDIT_CONSUMER,
            pull::Config {
                durable_name: Some(AUDIT_CONSUMER.into()),
                description: Some("vitalgate: the PostgreSQL audit trail".into()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: retry,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ClusterError::js("creating the audit consumer", e))?;
    Ok(tokio::spawn(async move {
        while !stop.is_cancelled() {
            let batch = consumer
                .fetch()
                .max_messages(256)
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let Ok(mut batch) = batch else {
                tokio::time::sleep(retry / 4).await;
                continue;
            };
            while let Some(Ok(message)) = batch.next().await {
                let row = match row_of(&message) {
                    Ok(row) => row,
                    Err(e) => {
                        // Not an event this build can audit: it would come back
                        // forever. Said loudly, and taken off the consumer.
                        tracing::error!(error = %e, "malformed event left out of the audit trail");
                        let _ = message.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                match audit.insert(&row).await {
                    Ok(_) => {
                        let _ = message.ack().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit event not written; it will come again")
                    }
                }
            }
        }
    }))
}

fn row_of(message: &async_nats::jetstream::Message) -> Result<AuditRow, PgAuditError> {
    let seq = message
        .info()
        .map(|i| i.stream_sequence)
        .map_err(|_| PgAuditError::NoSequence)?;
    let header = |name: &'static str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .ok_or(PgAuditError::Header { seq, header: name })
    };
    Ok(AuditRow {
        seq,
        event_id: header(ID_HEADER)?,
        kind: header(KIND_HEADER)?,
        chair: header(CHAIR_HEADER)?,
        at_ms: header(AT_HEADER)?
            .parse()
            .map_err(|_| PgAuditError::OutOfRange { seq, what: "at_ms" })?,
        body: String::from_utf8_lossy(&message.payload).into_owned(),
    })
}
