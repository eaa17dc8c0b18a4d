//! The HTTP edge: `/` (the nurse station page), `/ws` (dashboards), `/api/...`
//! (the audit trail, the station's configuration), `/live`,
//! `/ready` and `/metrics` (operations).

pub mod api;
pub mod auth;
pub mod dashboards;
pub mod deadline;
pub mod station;
pub mod upgrade;

use crate::app::App;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bind the HTTP listener with an explicit accept backlog (`http.accept_backlog`).
///
/// Why not `TcpListener::bind`: it listens with a backlog of 128, and when more
/// connections than that arrive together (dashboards reconnecting after a restart)
/// the kernel drops the rest's handshakes; their clients retry a second or more
/// later, and a request that arrives past `http.handshake_timeout_ms` is dropped.
/// Measured: 128 of 256 dashboards connecting at once failed that way.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's bind does (not on Windows, where it would let another process
    // take the port): a restarted gateway can bind while old connections linger
    // in TIME_WAIT.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Linux silently caps the backlog: say so rather than let the setting do
    // nothing.
    if let Some(cap) = somaxconn().filter(|cap| *cap < backlog) {
        tracing::warn!(
            http.accept_backlog = backlog,
            net.core.somaxconn = cap,
            "the kernel caps the accept backlog below http.accept_backlog; raise net.core.somaxconn for reconnect storms"
        );
    }
    socket.listen(backlog)
}

/// The kernel's cap on listen backlogs (`net.core.somaxconn`), where it says.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// What the handlers take: the gateway, and who may use it.
#[derive(Clone)]
struct Http {
    app: Arc<App>,
    auth: Arc<auth::Authenticator>,
}

impl axum::extract::FromRef<Http> for Arc<App> {
    fn from_ref(http: &Http) -> Arc<App> {
        http.app.clone()
    }
}

impl axum::extract::FromRef<Http> for Arc<auth::Authenticator> {
    fn from_ref(http: &Http) -> Arc<auth::Authenticator> {
        http.auth.clone()
    }
}

/// The HTTP listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (http.bind): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The listener `http` configures, and the address it is bound to.
pub fn bind(
    http: &crate::config::HttpConfig,
) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let failed = |source| BindError {
        addr: http.bind,
        source,
    };
    let listener = listen(http.bind, http.accept_backlog).map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Serve `app` on `listener` until `stop` (then gracefully), each connection's
/// request headers within `http.handshake_timeout_ms`; `/ready` then reports
/// the listener bound.
pub fn serve(
    app: Arc<App>,
    auth: auth::Authenticator,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    use std::future::IntoFuture;
    let listener = deadline::HandshakeListener {
        inner: listener,
        deadline: std::time::Duration::from_millis(app.config.http.handshake_timeout_ms),
        timeouts: app.metrics.ws_refused("handshake_timeout").clone(),
    };
    let serving = tokio::spawn(
        axum::serve(listener, router(app.clone(), auth))
            .with_graceful_shutdown(stop.cancelled_owned())
            .into_future(),
    );
    app.health.set_listening(true);
    serving
}

/// Wait for [`serve`] to finish after its stop, at most
/// `shutdown.http_stop_timeout_ms`.
pub async fn stopped(app: &App, serving: tokio::task::JoinHandle<std::io::Result<()>>) {
    let limit = std::time::Duration::from_millis(app.config.shutdown.http_stop_timeout_ms);
    match tokio::time::timeout(limit, serving).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error at shutdown"),
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
        _ => {}
    }
}

pub fn router(app: Arc<App>, auth: auth::Authenticator) -> Router {
    Router::new()
        .route("/", get(station::index))
        .route("/station/{file}", get(station::asset))
        .route(
            "/api/station",
            get(station::station).fallback(api::method_not_allowed),
        )
        .route("/ws", get(dashboards::upgrade))
        .route(
            "/api/alarms",
            get(api::alarms).fallback(api::method_not_allowed),
        )
        .route(
            "/api/sessions/{*chair}",
            get(api::sessions).fallback(api::method_not_allowed),
        )
        .route("/api/{*rest}", any(api::not_found))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Http {
            app,
            auth: Arc::new(auth),
        })
}

/// The process is up and serving HTTP.
async fn live() -> &'static str {
    "ok\n"
}

/// 200 when the broker is connected and subscribed, the listeners are bound and the
/// gateway is not shutting down; 503 otherwise, with each condition in the body.
async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let h = &app.health;
    let mut body = json!({
        "ready": h.is_ready(),
        "mqtt_subscribed": h.mqtt_subscribed(),
        "listening": h.listening(),
        "shutting_down": h.is_shutting_down(),
        // Informational: alarms still flow when the audit trail cannot be written,
        // so this does not make the gateway unready (see docs/operations.md).
        "audit_ok": app.engine.journal_ok(),
    });
    if let Some(cluster) = h.cluster() {
        body["cluster"] = json!(cluster);
    }
    let status = if h.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// Linux behaviour: a full accept queue drops new SYNs (kernel 4.4 and later).
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Connections the listener completes while nobody accepts: at most its
    /// backlog (plus one), the rest wait for the client's SYN retry.
    async fn completed_without_accepting(backlog: u32, clients: usize) -> usize {
        let listener = listen("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..clients).map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            })
        });
        let mut completed = 0;
        let mut held = Vec::new();
        for c in connects.collect::<Vec<_>>() {
            if let Ok(Ok(stream)) = c.await.unwrap() {
                completed += 1;
                held.push(stream);
            }
        }
        drop(listener);
        completed
    }

    #[tokio::test]
    async fn the_backlog_holds_a_burst_of_connections_nobody_has_accepted_yet() {
        // The kernel caps the backlog at net.core.somaxconn (4096 on current Linux).
        let cap = somaxconn().map_or(4096, |c| c as usize);
        let expected = 512.min(cap + 1);
        assert!(completed_without_accepting(1024, 512).await >= expected);
        // The runtime's default would have completed about 128 of them.
        let small = completed_without_accepting(128, 512).await;
        assert!(small < 512, "{small}");
    }
}
