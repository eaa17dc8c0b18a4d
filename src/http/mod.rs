//! The HTTP edge: `/ws` (dashboards), `/api/...` (the audit trail), `/live`,
//! `/ready` and `/metrics` (operations).

pub mod api;
pub mod auth;
pub mod deadline;

use crate::app::App;
use crate::fanout::ws;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/alarms", get(api::alarms))
        .route("/api/sessions/{*chair}", get(api::sessions))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// The process is up and serving HTTP.
async fn live() -> &'static str {
    "ok\n"
}

/// 200 when the broker is connected and subscribed, the listeners are bound and the
/// gateway is not shutting down; 503 otherwise, with each condition in the body.
async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let h = &app.health;
    let body = json!({
        "ready": h.is_ready(),
        "mqtt_subscribed": h.mqtt_subscribed(),
        "listening": h.listening(),
        "shutting_down": h.is_shutting_down(),
        // Informational: alarms still flow when the audit trail cannot be written,
        // so this does not make the gateway unready (see docs/operations.md).
        "audit_ok": app.hub.audit_ok(),
    });
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
