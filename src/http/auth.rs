//! Who is asking: JWT verification for `/ws` and `/api/...`, before anything else
//! happens (before the WebSocket upgrade, before a query runs).
//!
//! The algorithm is pinned by configuration (a token claiming any other, `none`
//! included, is refused), `exp` and `aud` are always checked, `iss` when configured.
//! The token's `sub` is who acts: it replaces whatever a command names in `by`, so
//! the audit trail records the authenticated user.

pub use crate::access::{Identity, Permission, SiteScope};
use crate::config::{AuthConfig, AuthMode, JwtAlgorithm};
use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

/// Why a request was refused before it was served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer, or ?access_token=)")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("origin {0} is not allowed")]
    Origin(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Origin(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `reason` label of `vitalgate_ws_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Origin(_) => "origin",
            _ => "unauthorized",
        }
    }
}

/// Reading the key failed.
#[derive(Debug, thiserror::Error)]
#[error("auth.key_file {path}: {message}")]
pub struct KeyError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
    /// The sites the user may see: `["*"]` for all. Required: a token that does
    /// not say is refused rather than shown everything.
    sites: Vec<String>,
}

/// Checks every request against `[auth]`.
pub struct Authenticator {
    verify: Option<(DecodingKey, Validation)>,
    allowed_origins: Vec<String>,
    /// The clock tolerance accepted at the upgrade also extends the connection.
    leeway_s: u64,
}

impl Authenticator {
    /// Read the key and pin the validation rules. Call after config validation.
    pub fn from_config(c: &AuthConfig) -> Result<Authenticator, KeyError> {
        let inline = std::path::PathBuf::from("(auth.key)");
        let key_source = c.key_file.as_ref().or(c.key.as_ref().map(|_| &inline));
        let verify = match (c.mode, key_source) {
            (AuthMode::None, _) => None,
            (AuthMode::Jwt, None) => {
                return Err(KeyError {
                    path: String::new(),
                    message: "auth.mode = \"jwt\" needs auth.key_file or auth.key".into(),
                })
            }
            (AuthMode::Jwt, Some(path)) => {
                let err = |message: String| KeyError {
                    path: path.display().to_string(),
                    message,
                };
                let bytes = match &c.key {
                    Some(inline) => inline.expose().as_bytes().to_vec(),
                    None => std::fs::read(path).map_err(|e| err(e.to_string()))?,
                };
                let (key, alg) = match c.algorithm {
                    JwtAlgorithm::HS256 => {
                        let secret = bytes.trim_ascii_end();
                        if secret.len() < 32 {
                            return Err(err("an HS256 secret must be at least 32 bytes".into()));
                        }
                        (DecodingKey::from_secret(secret), Algorithm::HS256)
                    }
                    JwtAlgorithm::RS256 => (
                        DecodingKey::from_rsa_pem(&bytes).map_err(|e| err(e.to_string()))?,
                        Algorithm::RS256,
                    ),
                    JwtAlgorithm::ES256 => (
                        DecodingKey::from_ec_pem(&bytes).map_err(|e| err(e.to_string()))?,
                        Algorithm::ES256,
                    ),
                };
                let mut v = Validation::new(alg);
                v.set_audience(&[&c.audience]);
                v.set_required_spec_claims(&["exp", "aud", "sub"]);
                if let Some(iss) = &c.issuer {
                    v.set_issuer(&[iss]);
                    // jsonwebtoken checks `iss` only when the token has one: a token
                    // leaving it out would pass the pin.
                    v.set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
                }
                v.validate_nbf = true;
                v.leeway = c.leeway_s;
                Some((key, v))
            }
        };
        Ok(Authenticator {
            verify,
            allowed_origins: c.allowed_origins.clone(),
            leeway_s: c.leeway_s,
        })
    }

    pub fn enabled(&self) -> bool {
        self.verify.is_some()
    }

    /// Check a request's origin and token (from `Authorization: Bearer`, else the
    /// `access_token` query parameter).
    pub fn check(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if !self.allowed_origins.is_empty() {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("(not text)");
                if !self.allowed_origins.iter().any(|o| o == origin) {
                    return Err(AuthError::Origin(origin.to_string()));
                }
            }
        }
        let Some((key, validation)) = &self.verify else {
            return Ok(Identity::anonymous());
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 6750).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .or(query_token)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.sub.trim().is_empty() || c.sub.len() > 128 {
            return Err(AuthError::Invalid(
                "`sub` must name the user, 1-128 bytes".into(),
            ));
        }
        let scope = if c.sites.iter().any(|s| s == "*") {
            SiteScope::all()
        } else {
            SiteScope::only(c.sites)
        };
        Ok(Identity::authenticated(
            Arc::from(c.sub),
            c.roles,
            c.exp.saturating_add(self.leeway_s),
            scope,
        ))
    }
}
