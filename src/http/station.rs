//! The nurse station: the page at `GET /`, its assets under `/station/`, and
//! `GET /api/station`, what the page needs to know beyond the WebSocket frames.
//!
//! The assets are compiled into the binary (`include_str!` of `web/`), so the page
//! that `cargo run` serves is exactly the repository's files, with no build step and
//! nothing fetched from elsewhere: clinic networks are often closed. The
//! Content-Security-Policy makes that a property the browser enforces: the page may
//! load and connect to its own origin only.

use crate::access::{Identity, Permission};
use crate::app::App;
use crate::http::auth::Authenticator;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One compiled-in file: name under `/station/`, content type, body.
type Asset = (&'static str, &'static str, &'static str);

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the page. `index.html` is served at `/`.
const ASSETS: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    ("main.js", JS, include_str!("../../web/main.js")),
    ("ward.js", JS, include_str!("../../web/ward.js")),
    ("connection.js", JS, include_str!("../../web/connection.js")),
    ("tiles.js", JS, include_str!("../../web/tiles.js")),
    ("header.js", JS, include_str!("../../web/header.js")),
    ("audio.js", JS, include_str!("../../web/audio.js")),
    ("controls.js", JS, include_str!("../../web/controls.js")),
    ("history.js", JS, include_str!("../../web/history.js")),
    ("outage.js", JS, include_str!("../../web/outage.js")),
    ("signin.js", JS, include_str!("../../web/signin.js")),
    ("format.js", JS, include_str!("../../web/format.js")),
];

/// Same origin only: scripts, styles, images and connections (`'self'` covers the
/// page's own `ws:`/`wss:` origin). No inline scripts or styles (the page sets
/// styles through the CSSOM only, which the policy allows).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn serve(asset: &Asset) -> Response {
    let (_, content_type, body) = *asset;
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A gateway upgrade must reach every station at its next load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`: the nurse station.
pub async fn index() -> Response {
    serve(&ASSETS[0])
}

/// `GET /station/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct StationQuery {
    /// The client's token, where it cannot send `Authorization`.
    pub access_token: Option<String>,
}

/// What the signed-in client may do, as the gateway will judge its commands.
#[derive(Serialize)]
struct May {
    ack: bool,
    set_session: bool,
    set_limit: bool,
}

#[derive(Serialize)]
struct Me<'a> {
    /// The token's `sub`; null without authentication (commands name `by`).
    user: Option<&'a str>,
    roles: &'a [String],
    /// `["*"]` for every site.
    sites: Vec<&'a str>,
    /// Token expiry plus `auth.leeway_s`, seconds since the epoch (when the
    /// gateway closes the connection with 4001).
    expires_at: Option<u64>,
    may: May,
}

fn me(identity: &Identity) -> Me<'_> {
    Me {
        user: identity.user.as_deref(),
        roles: identity.roles(),
        sites: identity.scope.sites(),
        expires_at: identity.expires_at,
        may: May {
            ack: identity.may(Permission::Acknowledge),
            set_session: identity.may(Permission::SetSession),
            set_limit: identity.may(Permission::SetLimit),
        },
    }
}

/// `GET /api/station`: the signed-in client and the alarm configuration a station
/// shows (limits for the limit editor, stale allowances, discharge band). Checked
/// as every `/api` call is: 401 tells the page that it must sign in.
pub async fn station(
    State(app): State<Arc<App>>,
    State(auth): State<Arc<Authenticator>>,
    headers: HeaderMap,
    super::api::ApiQuery(q): super::api::ApiQuery<StationQuery>,
) -> Response {
    let identity = match super::api::authenticated(&app, &auth, &headers, q.access_token.as_deref())
    {
        Ok(identity) => identity,
        Err(e) => return super::api::refusal(e),
    };
    let c = &app.config;
    let body = serde_json::json!({
        "auth": if auth.enabled() { "jwt" } else { "none" },
        "version": env!("CARGO_PKG_VERSION"),
        "now": crate::clock::now_ms(),
        "me": me(&identity),
        "rules": c.rules,
        "combined_rules": c.combined_rules,
        "trend_rules": c.trend_rules,
        "technical": c.technical,
        "discharge": {
            "band": c.session.discharge_band,
            "stable_ms": c.session.discharge_stable_ms,
        },
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        // An `import ... from "./x.js"` the table lacks would leave the station blank.
        for (name, _, body) in ASSETS {
            for line in body.lines() {
                let Some(rest) = line.split(" from \"./").nth(1) else {
                    continue;
                };
                let file = rest.split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == file),
                    "{name} imports {file}, which is not served"
                );
            }
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, _, body) in ASSETS {
            for scheme in ["http://", "https://", "//fonts.", "cdn"] {
                assert!(
                    !body.contains(scheme),
                    "{name} refers to {scheme}: the station must work on a closed network"
                );
            }
        }
    }
}
