//! Who may do what: the identity of a client, its roles and the sites it may see.
//! Both edges use it (the WebSocket fan-out and the HTTP API); how an identity is
//! established (JWT verification) is the HTTP edge's business (`http::auth`).

use std::sync::Arc;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Acknowledge alarms.
    Acknowledge,
    /// Set a chair's session (phase, patient, ...).
    SetSession,
    /// Change a patient's limits.
    SetLimit,
}

/// The sites a client may see: all, or a list (from the token's `sites` claim).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteScope(Option<Arc<[String]>>);

impl SiteScope {
    /// Every site.
    pub fn all() -> SiteScope {
        SiteScope(None)
    }

    /// These sites only.
    pub fn only(sites: Vec<String>) -> SiteScope {
        SiteScope(Some(sites.into()))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    pub fn allows_site(&self, site: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.iter().any(|x| x == site))
    }

    /// Whether the chair `{site}/{chair}` is in scope.
    pub fn allows_chair(&self, chair: &str) -> bool {
        self.allows_site(crate::core::chair_key::site_of(chair))
    }

    /// The sites, `["*"]` for all (as a token's `sites` claim says it).
    pub fn sites(&self) -> Vec<&str> {
        match self.0.as_deref() {
            None => vec!["*"],
            Some(sites) => sites.iter().map(String::as_str).collect(),
        }
    }

    /// The one site of a single-site scope.
    pub fn single(&self) -> Option<&str> {
        match self.0.as_deref() {
            Some([one]) => Some(one),
            _ => None,
        }
    }
}

/// An authenticated (or, with `auth.mode = "none"`, anonymous) client.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`; `None` without authentication.
    pub user: Option<Arc<str>>,
    roles: Vec<String>,
    /// Token expiry plus the configured leeway, seconds since the epoch; `None`
    /// without authentication.
    pub expires_at: Option<u64>,
    /// The sites whose chairs this client may see and act on.
    pub scope: SiteScope,
}

impl Identity {
    /// A client without authentication (`auth.mode = "none"`): anyone, every site.
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            roles: Vec::new(),
            expires_at: None,
            scope: SiteScope::all(),
        }
    }

    /// A verified token's user, roles, expiry (seconds since the epoch, leeway
    /// included) and sites.
    pub fn authenticated(
        user: Arc<str>,
        roles: Vec<String>,
        expires_at: u64,
        scope: SiteScope,
    ) -> Identity {
        Identity {
            user: Some(user),
            roles,
            expires_at: Some(expires_at),
            scope,
        }
    }

    /// Whether this client may do `p`. Without authentication everyone may.
    pub fn may(&self, p: Permission) -> bool {
        if self.user.is_none() {
            return true;
        }
        let has = |r: &str| self.roles.iter().any(|x| x == r);
        match p {
            Permission::Acknowledge | Permission::SetSession => has("nurse") || has("clinician"),
            Permission::SetLimit => has("clinician"),
        }
    }

    /// The token's roles (none without authentication, where everyone may act).
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// Whether the token has expired at gateway time `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at
            .is_some_and(|exp| now_ms >= exp.saturating_mul(1_000))
    }

    /// Who acts: the token's subject, or (without authentication) what the command
    /// says.
    pub fn actor<'a>(&'a self, claimed: &'a str) -> &'a str {
        self.user.as_deref().unwrap_or(claimed)
    }
}
