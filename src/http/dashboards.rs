//! `GET /ws`: a dashboard's request to connect, authenticated and admitted (within
//! `websocket.max_connections`) before the WebSocket upgrade; the connection itself
//! is the fan-out's ([`ws::serve`]).

use super::auth::Authenticator;
use super::upgrade::WebSocketRequest;
use crate::app::App;
use crate::fanout::socket::Watched;
use crate::fanout::{ws, Dashboards, Start};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The query of `GET /ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Resume after this alarm `seq`.
    pub since: Option<u64>,
    /// The `instance` the client's `since` belongs to.
    pub instance: Option<String>,
    /// The client's token, for browsers that cannot set `Authorization`.
    pub access_token: Option<String>,
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    State(auth): State<Arc<Authenticator>>,
    Query(query): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    request: WebSocketRequest,
) -> Response {
    let identity = match auth.check(&headers, query.access_token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            app.metrics.ws_refused(e.reason()).increment(1);
            return (e.status(), format!("{e}\n")).into_response();
        }
    };
    if app.health.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down\n",
        )
            .into_response();
    }
    let Some(slot) = Slot::reserve(&app.dashboards) else {
        app.metrics.ws_refused_max_connections.increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboards connected (websocket.max_connections)\n",
        )
            .into_response();
    };
    let c = &app.config.websocket;
    let config = WebSocketConfig::default()
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_write_buffer_size(c.max_write_buffer_bytes)
        .max_message_size(Some(c.max_message_bytes))
        .max_frame_size(Some(c.max_frame_bytes));
    let dashboards = app.dashboards.clone();
    request.accept(move |io| {
        let connection = async move {
            let socket =
                WebSocketStream::from_raw_socket(Watched::new(io), Role::Server, Some(config))
                    .await;
            let start = match query.since {
                Some(since) => Start::Since {
                    since,
                    instance: query.instance,
                },
                None => Start::Snapshot,
            };
            ws::serve(socket, start, dashboards, identity).await;
        };
        let tracked = slot.0.connections.track_future(connection);
        async move {
            tracked.await;
            drop(slot);
        }
    })
}

/// One of `websocket.max_connections` places, held from the upgrade request until
/// the connection ends (or the upgrade fails and the callback holding it is dropped).
struct Slot(Arc<Dashboards>);

impl Slot {
    fn reserve(dashboards: &Arc<Dashboards>) -> Option<Slot> {
        // Compare-and-swap, so a refused request never holds a place even briefly.
        let max = dashboards.config.max_connections;
        dashboards
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(dashboards.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
    }
}
