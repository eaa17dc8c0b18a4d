//! The audit API: what happened, from the durable audit trail.
//!
//! - `GET /api/alarms?chair=&from=&to=&limit=`: alarm events (raised, acknowledged,
//!   escalated, reminders, cleared), oldest first;
//! - `GET /api/sessions/{site}/{chair}?from=&to=&limit=`: the chair's current session
//!   and its recorded session changes (phases, limits, discharge readiness).
//!
//! Bodies are the frames exactly as dashboards received them, so what a nurse saw and
//! what the audit shows cannot drift apart.

use crate::app::App;
use crate::audit::{Audit, Stored, Trail, TrailError, TrailQuery};
use crate::core::{SessionChange, SessionEvent};
use crate::engine::Engine;
use crate::http::auth::{AuthError, Authenticator, Identity};
use crate::protocol::EventJson;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct AlarmQuery {
    /// `{site}/{chair}`; all chairs when absent.
    pub chair: Option<String>,
    /// Gateway time bounds, ms since the epoch, inclusive.
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// At most this many rows (capped by `audit.max_query_rows`).
    pub limit: Option<usize>,
    /// The client's token, where it cannot send `Authorization`.
    pub access_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub limit: Option<usize>,
    pub access_token: Option<String>,
}

/// Who asks, as every `/api` call checks it; a refusal is counted. Answer it with
/// [`refusal`].
pub(super) fn authenticated(
    app: &App,
    auth: &Authenticator,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Identity, AuthError> {
    auth.check(headers, token).inspect_err(|e| {
        app.metrics.ws_refused(e.reason()).increment(1);
    })
}

/// The answer to a refused `/api` call: its status, and the reason as JSON.
pub(super) fn refusal(e: AuthError) -> Response {
    error(e.status(), &e.to_string())
}

/// Any authenticated client may read the audit trail of the chairs within its
/// sites; a client limited to some sites must name the chair. `Some(refusal)`
/// otherwise.
fn refused(
    app: &App,
    auth: &Authenticator,
    headers: &HeaderMap,
    token: Option<&str>,
    chair: Option<&str>,
) -> Option<Response> {
    let identity = match authenticated(app, auth, headers, token) {
        Ok(identity) => identity,
        Err(e) => return Some(refusal(e)),
    };
    let scope = &identity.scope;
    let why = match chair {
        Some(chair) if !scope.allows_chair(chair) => "that chair is outside your token's sites",
        None if !scope.is_all() => {
            "a token limited to some sites must ask for one chair (?chair=site/chair)"
        }
        _ => return None,
    };
    app.metrics.ws_refused("scope").increment(1);
    Some(error(StatusCode::FORBIDDEN, why))
}

/// 400 for parameters no chair or time range can match: a chair that is not a
/// `{site}/{chair}` key (`?chair=north`) would otherwise answer an empty list, as if
/// nothing had happened there.
fn malformed(chair: Option<&str>, from: Option<u64>, to: Option<u64>) -> Option<Response> {
    if let Some(chair) = chair.filter(|c| !crate::core::chair_key::is_chair_key(c)) {
        let message = format!(
            "`chair` must be a {{site}}/{{chair}} key (names of 1-{} letters, digits, '_', '-' or '.'), not {chair:?}",
            crate::core::chair_key::MAX_ID_LEN
        );
        return Some(error(StatusCode::BAD_REQUEST, &message));
    }
    match (from, to) {
        (Some(from), Some(to)) if from > to => {
            Some(error(StatusCode::BAD_REQUEST, "`from` is after `to`"))
        }
        _ => None,
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// An `/api` query string. One that does not parse (`from=abc`, a repeated key)
/// is refused with 400 and the same `{"error": ...}` body as every other refusal
/// here, not axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(ApiQuery(q)),
            Err(rejection) => Err(error(StatusCode::BAD_REQUEST, &rejection.body_text())),
        }
    }
}

/// Any other path under `/api`: 404 with the same body as every refusal here.
pub async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: /api/alarms, /api/sessions/{site}/{chair} and /api/station are",
    )
}

/// A method other than GET (or HEAD) on an `/api` endpoint: 405 with the same
/// body as every refusal here, and the methods it takes.
pub async fn method_not_allowed() -> Response {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint only reads: use GET",
    );
    response.headers_mut().insert(
        axum::http::header::ALLOW,
        axum::http::HeaderValue::from_static("GET,HEAD"),
    );
    response
}

/// `[body, body, ...]` from stored frames, without re-parsing them.
fn array(rows: &[Stored]) -> String {
    let mut out = String::with_capacity(rows.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&r.body);
    }
    out.push(']');
    out
}

async fn query(
    app: &Arc<App>,
    kind: &'static str,
    chair: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
) -> Result<(Vec<Stored>, bool), Response> {
    if limit == Some(0) {
        return Err(error(StatusCode::BAD_REQUEST, "`limit` must be at least 1"));
    }
    let max = app.config.audit.max_query_rows;
    let limit = limit.unwrap_or(max).min(max);
    let Some(trail) = app.trail.clone() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster mode without cluster.audit_postgres: this gateway has no audit trail \
             to read (docs/cluster.md); ask a gateway that writes it",
        ));
    };
    // One more than asked for tells whether the answer was cut short.
    let asked = TrailQuery {
        kind,
        chair,
        from_ms: from,
        to_ms: to,
        limit: limit + 1,
    };
    let mut rows = trail.query(asked).await.map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit trail query failed",
        )
    })?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, truncated))
}

/// A single gateway's audit trail: the SQLite file its journal writes, read
/// off the runtime's workers; the sessions now from its engine.
pub struct LocalTrail {
    pub audit: Arc<Audit>,
    pub engine: Engine,
}

impl Trail for LocalTrail {
    fn query(&self, q: TrailQuery) -> BoxFuture<'static, Result<Vec<Stored>, TrailError>> {
        let audit = self.audit.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                audit.query(
                    Some(q.kind),
                    q.chair.as_deref(),
                    q.from_ms,
                    q.to_ms,
                    q.limit,
                )
            })
            .await
            .map_err(|e| TrailError(e.to_string()))?
            .map_err(|e| TrailError(e.to_string()))
        })
    }

    fn current_session(&self, chair: &str) -> Option<SessionEvent> {
        self.engine.ward().chair(chair).map(|c| {
            SessionEvent::new(
                c.chair,
                SessionChange::Phase,
                &c.session,
                c.session.applied_at,
            )
        })
    }
}

pub async fn alarms(
    State(app): State<Arc<App>>,
    State(auth): State<Arc<Authenticator>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> Response {
    if let Some(refusal) = refused(
        &app,
        &auth,
        &headers,
        q.access_token.as_deref(),
        q.chair.as_deref(),
    ) {
        return refusal;
    }
    if let Some(refusal) = malformed(q.chair.as_deref(), q.from, q.to) {
        return refusal;
    }
    match query(&app, "alarm", q.chair, q.from, q.to, q.limit).await {
        Ok((rows, truncated)) => json(
            StatusCode::OK,
            format!(
                r#"{{"alarms":{},"count":{},"truncated":{truncated}}}"#,
                array(&rows),
                rows.len()
            ),
        ),
        Err(response) => response,
    }
}

pub async fn sessions(
    State(app): State<Arc<App>>,
    State(auth): State<Arc<Authenticator>>,
    headers: HeaderMap,
    Path(chair): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Response {
    if let Some(refusal) = refused(
        &app,
        &auth,
        &headers,
        q.access_token.as_deref(),
        Some(&chair),
    ) {
        return refusal;
    }
    if let Some(refusal) = malformed(Some(&chair), q.from, q.to) {
        return refusal;
    }
    let current = app
        .trail
        .as_ref()
        .and_then(|trail| trail.current_session(&chair));
    let (rows, truncated) =
        match query(&app, "session", Some(chair.clone()), q.from, q.to, q.limit).await {
            Ok(r) => r,
            Err(response) => return response,
        };
    if current.is_none() && rows.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "no such chair in the ward or the audit trail",
        );
    }
    let current = serde_json::to_string(&current.as_ref().map(EventJson::session))
        .expect("a session serialises");
    json(
        StatusCode::OK,
        format!(
            r#"{{"chair":{},"current":{current},"events":{},"count":{},"truncated":{truncated}}}"#,
            serde_json::to_string(&chair).expect("a string serialises"),
            array(&rows),
            rows.len()
        ),
    )
}
