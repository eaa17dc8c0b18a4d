//! The reading half of a dashboard connection: commands in (acknowledge, live
//! vitals, snapshot, session and limit changes), each answered through the
//! connection's own queue, so a reply is ordered with the alarms around it.

use super::backend::Refusal;
use super::live::Scope;
use super::protocol::{self, Command, Frame};
use super::signals::{Disconnect, Signals};
use super::socket::Socket;
use super::Dashboards;
use crate::access::{Identity, Permission};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Commands a client may still send: a token bucket refilled at
/// `websocket.commands_per_second` up to `websocket.command_burst`.
struct CommandBudget {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: std::time::Instant,
}

impl CommandBudget {
    fn new(rate: f64, burst: u32) -> Self {
        CommandBudget {
            tokens: burst as f64,
            rate,
            burst: burst as f64,
            last: std::time::Instant::now(),
        }
    }

    /// Spend one command; false when the client is over its budget.
    fn spend(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A chair key named in a command must look like one from a topic: `{site}/{chair}`.
fn check_chair(chair: &str) -> Result<(), crate::core::WardError> {
    if crate::core::chair_key::is_chair_key(chair) {
        Ok(())
    } else {
        Err(crate::core::WardError::UnknownChair(chair.to_string()))
    }
}

/// The reading half: commands from the dashboard.
pub(super) struct Reader {
    pub(super) dashboards: Arc<Dashboards>,
    /// The connection's queue, for replies.
    pub(super) tx: mpsc::Sender<Frame>,
    /// The connection's id in the hub.
    pub(super) id: u64,
    pub(super) scope_tx: watch::Sender<Option<Scope>>,
    pub(super) signals: Arc<Signals>,
    /// Who is connected: what they may do, and who acts for the audit trail.
    pub(super) identity: Identity,
}

impl Reader {
    /// Runs until the client goes, breaks the protocol or must be closed. Hands
    /// back its half of the socket when a message was over the size caps, for the
    /// closing handshake; `None` otherwise.
    pub(super) async fn run(self, mut stream: SplitStream<Socket>) -> Option<SplitStream<Socket>> {
        let dashboards = &self.dashboards;
        let ws = &dashboards.config;
        let mut budget = CommandBudget::new(ws.commands_per_second, ws.command_burst);
        while let Some(msg) = stream.next().await {
            self.signals
                .last_seen
                .store(dashboards.uptime_ms(), Ordering::Relaxed);
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Binary(_)) => {
                    if !budget.spend() {
                        self.over_rate();
                        break;
                    }
                    self.refuse(
                        "bad_command",
                        "binary frames are not supported; send JSON text",
                        None,
                    );
                    continue;
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => break,
                Err(WsError::Capacity(_)) => {
                    self.signals.end(Disconnect::TOO_BIG);
                    return Some(stream);
                }
                Err(_) => {
                    self.signals.end(Disconnect::PROTOCOL_ERROR);
                    break;
                }
            };
            if self.identity.expired(crate::clock::now_ms()) {
                // The writer closes with 4001 at expiry; a writer stuck on a client
                // that does not read must not leave its commands working.
                self.signals.end(Disconnect::TOKEN_EXPIRED);
                break;
            }
            let command = Command::parse(text.as_str());
            // Acknowledgements are never metered: after an alarm storm a nurse must be
            // able to acknowledge every alarm. Everything else spends the budget.
            if !matches!(command, Ok(Command::Ack { .. })) && !budget.spend() {
                self.over_rate();
                break;
            }
            match command {
                Ok(
                    command @ (Command::Ack { .. }
                    | Command::SetSession { .. }
                    | Command::SetLimit { .. }
                    | Command::Snapshot {}),
                ) => {
                    // Boxed: a command's wait for the engine is rare in a
                    // connection's life; inline, its state would make every
                    // connection's reader task larger.
                    Box::pin(self.to_engine(command)).await;
                }
                Ok(Command::SubscribeVitals { site }) => {
                    let scope = &self.identity.scope;
                    let live = match site {
                        Some(site) if scope.allows_site(&site) => Some(Scope::Site(site)),
                        None if scope.is_all() => Some(Scope::All),
                        None => Some(match scope.single() {
                            Some(s) => Scope::Site(s.to_string()),
                            None => {
                                Scope::Sites(scope.sites().into_iter().map(String::from).collect())
                            }
                        }),
                        Some(_) => None,
                    };
                    match live {
                        Some(live) => {
                            self.scope_tx.send_replace(Some(live));
                        }
                        None => self.refuse(
                            "forbidden",
                            "live vitals: that site is not one of your token's sites",
                            None,
                        ),
                    }
                }
                Ok(Command::UnsubscribeVitals {}) => {
                    self.scope_tx.send_replace(None);
                }
                Err((code, message)) => {
                    // A `set_session` whose session fields are refused is counted
                    // as a refused session message, as when the engine refuses it.
                    if code != "bad_command" {
                        self.dashboards.metrics.session_rejected.increment(1);
                    }
                    self.refuse(code, &message, None)
                }
            }
        }
        self.signals.end(Disconnect::GONE);
        None
    }

    /// A command the engine answers: acknowledge, session, limit, snapshot. One
    /// the engine can no longer take (the gateway is shutting down) is refused
    /// with `shutting_down`.
    async fn to_engine(&self, command: Command) {
        let dashboards = &self.dashboards;
        match command {
            Command::Ack { id, by } => {
                let Some(by) = self.actor(Permission::Acknowledge, &by, Some(id)) else {
                    return;
                };
                let now = crate::clock::now_ms();
                let scope = self.identity.scope.clone();
                if let Err(e) = dashboards.backend.acknowledge(id, by, now, scope).await {
                    self.refuse(&e.code, &e.message, Some(id));
                }
            }
            Command::SetSession {
                chair,
                by,
                mut session,
            } => {
                let Some(by) = self.actor(Permission::SetSession, &by, None) else {
                    return;
                };
                // Limits in a session command replace the chair's limits, as
                // `set_limit` changes them: a clinician's to do.
                if session.limits.is_some() && self.actor(Permission::SetLimit, &by, None).is_none()
                {
                    return;
                }
                if !self.in_scope(&chair) {
                    return;
                }
                session.by = Some(by);
                let now = crate::clock::now_ms();
                let result = match check_chair(&chair) {
                    Ok(()) => dashboards.backend.set_session(chair, session, now).await,
                    Err(e) => Err(e.into()),
                };
                self.answer(result);
            }
            Command::SetLimit {
                chair,
                rule,
                by,
                low,
                high,
            } => {
                let Some(by) = self.actor(Permission::SetLimit, &by, None) else {
                    return;
                };
                if !self.in_scope(&chair) {
                    return;
                }
                let limits = crate::core::LimitOverride { low, high };
                let now = crate::clock::now_ms();
                let result = dashboards
                    .backend
                    .set_limit(chair, rule, limits, by, now)
                    .await;
                self.answer(result);
            }
            Command::Snapshot {} => {
                // One requested snapshot in flight per connection: a client that
                // asks again and again without reading cannot pile them up.
                if self.signals.snapshot_pending.swap(true, Ordering::SeqCst) {
                    self.refuse(
                        "snapshot_pending",
                        "a snapshot is already on its way; read it first",
                        None,
                    );
                } else {
                    let scope = self.identity.scope.clone();
                    if !dashboards.backend.snapshot(self.id, scope).await {
                        // The gateway is shutting down: the connection stays for
                        // the alarms queued for it, then closes with 1001.
                        self.signals.snapshot_pending.store(false, Ordering::SeqCst);
                        self.refuse(
                            "shutting_down",
                            "the gateway is shutting down: ask the gateway you reconnect to",
                            None,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Who acts for a command needing `p`: the token's user, or without
    /// authentication the command's `by`. `None` (and the client told why) when the
    /// client may not, or did not say who it is.
    fn actor(&self, p: Permission, by: &str, id: Option<u64>) -> Option<String> {
        if !self.identity.may(p) {
            self.refuse(
                "forbidden",
                "your token's roles do not allow this (acknowledge and sessions: nurse or clinician; limits: clinician)",
                id,
            );
            return None;
        }
        let actor = self.identity.actor(by);
        if actor.trim().is_empty() {
            self.refuse("bad_command", "`by` must name who does it", id);
            return None;
        }
        Some(actor.to_string())
    }

    /// Whether `chair` is within the client's sites; if not, the client is told.
    fn in_scope(&self, chair: &str) -> bool {
        let ok = self.identity.scope.allows_chair(chair);
        if !ok {
            self.refuse(
                "forbidden",
                "that chair is outside your token's sites",
                None,
            );
        }
        ok
    }

    /// Tell the client why a session or limit command was refused, if it was (what
    /// it changed reaches every dashboard as events).
    fn answer(&self, result: Result<(), Refusal>) {
        if let Err(e) = result {
            self.dashboards.metrics.session_rejected.increment(1);
            self.refuse(&e.code, &e.message, None);
        }
    }

    /// The client exceeded its command budget: count it and ask for a 1008 close.
    fn over_rate(&self) {
        self.dashboards.metrics.ws_closed_command_rate.increment(1);
        self.signals.end(Disconnect::POLICY);
    }

    /// Count a refused command and tell the client why.
    fn refuse(&self, code: &str, message: &str, id: Option<u64>) {
        self.dashboards.metrics.ws_commands_rejected.increment(1);
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send(protocol::error_frame(code, message, id))
        {
            self.signals.cut_off.cut();
        }
    }
}
