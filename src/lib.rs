//! vitalgate: bedside vitals in over MQTT, alarm rules per patient, alarms and live
//! vitals out over WebSockets to nurse-station dashboards.
//!
//! The crate is a library with a thin binary: [`run`] is the whole gateway, and tests
//! start the same thing through [`Gateway::start`] to learn the bound addresses.
//!
//! Layout: [`core`] holds the alarm logic and does no I/O; [`ingest`] is the MQTT
//! edge, [`fanout`] the WebSocket edge and [`http`] the operations endpoints;
//! [`sim`] simulates a ward of bedside devices (`vitalgate demo`).

pub mod access;
pub mod app;
pub mod audit;
pub mod clock;
pub mod config;
pub mod core;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod replay;
pub mod service;
pub mod sim;
pub mod telemetry;

pub use app::App;
pub use config::Config;

use audit::Audit;
use config::{BrokerMode, ConfigError};
use ingest::capture::Capture;
use ingest::{broker, BrokerAddr, Ingest, IngestError, Topics};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Capture(#[from] ingest::capture::CaptureError),
    #[error("audit trail (audit.path): {0}")]
    Audit(String),
    #[error(transparent)]
    Auth(#[from] http::auth::KeyError),
    #[error("cannot listen on {addr} (http.bind): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    app: Arc<App>,
    http_addr: SocketAddr,
    broker: BrokerAddr,
    stop_ingest: CancellationToken,
    stop_http: CancellationToken,
    ingest: JoinHandle<()>,
    timers: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Validate the config, start the embedded broker if configured, bind the HTTP
    /// listener and start ingest. Returns once listeners are bound; `/ready` turns
    /// true when the broker subscription is confirmed.
    pub async fn start(config: Config) -> Result<Gateway, Error> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                source_name: "startup".into(),
                problems,
            }
            .into());
        }
        let rules = config.rule_set()?;
        let m = &config.mqtt;
        let topics =
            Topics::parse(&m.topic, &m.session_topic, &m.status_topic).map_err(|(key, e)| {
                ConfigError::Invalid {
                    source_name: "startup".into(),
                    problems: vec![(key.into(), e.to_string())],
                }
            })?;
        let audit = {
            let path = config.audit.path.clone();
            let full = config.audit.synchronous == config::AuditSync::Full;
            tokio::task::spawn_blocking(move || Audit::open(&path, full))
                .await
                .map_err(|e| Error::Audit(e.to_string()))?
                .map_err(|e| Error::Audit(e.to_string()))?
        };
        let broker = match config.mqtt.broker {
            BrokerMode::Embedded => {
                // Start-up waits (briefly) for the broker to listen: off the runtime.
                let embedded = config.mqtt.embedded.clone();
                let addr = tokio::task::spawn_blocking(move || broker::start(&embedded))
                    .await
                    .map_err(|e| broker::BrokerError::Start(e.to_string()))??;
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    addr.ip().to_string()
                };
                tracing::warn!(
                    %addr,
                    "embedded MQTT broker started: devices publish to mqtt://{addr}. For \
                     trying out only: it lives in this process and keeps nothing across a \
                     restart (sessions, queued readings, retained messages). Use an external \
                     broker for patients (mqtt.broker = \"external\", Mosquitto or EMQX; \
                     see docs/operations.md)"
                );
                BrokerAddr {
                    host,
                    port: addr.port(),
                }
            }
            BrokerMode::External => BrokerAddr {
                host: config.mqtt.host.clone(),
                port: config.mqtt.port,
            },
        };
        let options = ingest::mqtt::options(&config.mqtt, &broker)?;
        let listener =
            http::listen(config.http.bind, config.http.accept_backlog).map_err(|source| {
                Error::Bind {
                    addr: config.http.bind,
                    source,
                }
            })?;
        let http_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.http.bind,
            source,
        })?;

        let auth = http::auth::Authenticator::from_config(&config.auth)?;
        if !auth.enabled() {
            tracing::warn!(
                "auth.mode = \"none\": dashboards and the API are NOT AUTHENTICATED and anyone \
                 who can reach {} may acknowledge alarms and change sessions; for local \
                 demos only",
                config.http.bind
            );
        }
        let app = Arc::new(App::new(config, rules, topics, Arc::new(audit), auth));
        let capture = match app.config.capture.enabled {
            true => {
                let capture = Capture::start(
                    &app.config.capture,
                    app::now_ms(),
                    app.metrics.capture_dropped.clone(),
                )?;
                tracing::info!(
                    dir = %app.config.capture.dir.display(),
                    "capturing every applied message for `vitalgate replay` (the files hold patient ids)"
                );
                Some(capture)
            }
            false => None,
        };
        restore_sessions(&app).await;
        restore_open_alarms(&app).await;
        let stop_http = CancellationToken::new();
        let listener = http::deadline::HandshakeListener {
            inner: listener,
            deadline: Duration::from_millis(app.config.http.handshake_timeout_ms),
            timeouts: app.metrics.ws_refused("handshake_timeout").clone(),
        };
        let http = tokio::spawn(
            axum::serve(listener, http::router(app.clone()))
                .with_graceful_shutdown(stop_http.clone().cancelled_owned())
                .into_future(),
        );
        app.health.set_listening(true);

        let stop_ingest = CancellationToken::new();
        let ingest = Ingest::new(app.clone(), options).with_capture(capture);
        let ingest = tokio::spawn(ingest.run(stop_ingest.clone()));
        let timers = tokio::spawn(run_timers(app.clone(), stop_ingest.clone()));
        tracing::info!(
            broker = %format!("{}:{}", broker.host, broker.port),
            topics = %app.topics,
            client_id = %app.config.mqtt.client_id,
            dashboards = %format!("ws://{http_addr}/ws"),
            "vitalgate started; nurse station at http://{http_addr}/"
        );
        Ok(Gateway {
            app,
            http_addr,
            broker,
            stop_ingest,
            stop_http,
            ingest,
            timers,
            http,
        })
    }

    /// Where dashboards and operators connect.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The broker the gateway subscribes to (the embedded one, or the external one).
    pub fn broker(&self) -> &BrokerAddr {
        &self.broker
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Graceful stop: `/ready` goes 503 at once and new connections are refused;
    /// ingest disconnects from the broker keeping the session; every dashboard
    /// flushes the alarms already queued for it and is closed with 1001. Returns
    /// within `shutdown.grace_period_ms` plus `websocket.close_timeout_ms` (plus the
    /// MQTT disconnect bound); dashboards still draining then are dropped.
    pub async fn shutdown(self) {
        let grace = Duration::from_millis(self.app.config.shutdown.grace_period_ms);
        self.app.health.set_shutting_down();
        self.stop_http.cancel();
        self.stop_ingest.cancel();
        let _ = self.ingest.await;
        let _ = self.timers.await;
        self.app.close_dashboards.cancel();
        self.app.connections.close();
        if tokio::time::timeout(grace, self.app.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.app.connections.len(),
                "grace period over: dropping dashboards that did not drain"
            );
            self.app.force_close.cancel();
            let close_timeout = Duration::from_millis(self.app.config.websocket.close_timeout_ms);
            let _ = tokio::time::timeout(close_timeout, self.app.connections.wait()).await;
        }
        let http_stop = Duration::from_millis(self.app.config.shutdown.http_stop_timeout_ms);
        match tokio::time::timeout(http_stop, self.http).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error at shutdown"),
            Err(_) => tracing::warn!("HTTP server did not stop in time"),
            _ => {}
        }
        tracing::info!("vitalgate stopped");
    }
}

/// Read records from the audit trail at start-up, off the runtime. `None` (logged,
/// naming `what`) if they cannot be read: the gateway starts without them.
async fn read_audit(
    app: &Arc<App>,
    what: &str,
    read: impl FnOnce(&Audit) -> Result<Vec<audit::Stored>, audit::AuditError> + Send + 'static,
) -> Option<Vec<audit::Stored>> {
    let audit = app.audit.clone();
    match tokio::task::spawn_blocking(move || read(&audit)).await {
        Ok(Ok(records)) => Some(records),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read {what} from the audit trail");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "reading {what} from the audit trail failed");
            None
        }
    }
}

/// Restore every chair's session from the audit trail: a restarted gateway knows
/// each chair's phase, patient, baseline and limits before the first message
/// arrives (a persistent MQTT session does not resend retained messages).
async fn restore_sessions(app: &Arc<App>) {
    let Some(records) = read_audit(app, "sessions (chairs start idle)", |a| {
        a.latest_per_chair("session")
    })
    .await
    else {
        return;
    };
    let now = app::now_ms();
    let mut restored = 0;
    for r in records {
        match serde_json::from_str::<core::SessionEvent>(&r.body) {
            // Idle chairs too: their last message time keeps an old retained message
            // for a previous patient from bringing that session back.
            Ok(e) => match app.ward.restore(&e, now) {
                Ok(()) => restored += 1,
                Err(err) => tracing::warn!(chair = %r.chair, error = %err, "session not restored"),
            },
            Err(err) => tracing::warn!(chair = %r.chair, error = %err, "unreadable session record"),
        }
    }
    if restored > 0 {
        tracing::info!(chairs = restored, "sessions restored from the audit trail");
    }
}

/// Take back the alarms that were open (raised or acknowledged, not cleared) when
/// the previous run stopped, so that one nobody acknowledged is not lost in a
/// restart: a latched alarm stays until acknowledged, an unacknowledged one keeps
/// escalating. One that no longer matches a rule of its chair's profile (rules
/// changed) is closed with `reason: "not_restored"`, so the record is complete.
async fn restore_open_alarms(app: &Arc<App>) {
    let Some(open) = read_audit(app, "open alarms", Audit::open_alarms).await else {
        return;
    };
    let now = app::now_ms();
    let (mut restored, mut closed) = (0, Vec::new());
    for r in open {
        let mut event = match serde_json::from_str::<core::AlarmEvent>(&r.body) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(chair = %r.chair, error = %err, "unreadable alarm record");
                continue;
            }
        };
        if app.ward.restore_alarm(&event) {
            restored += 1;
            app.hub
                .restore_alarm(event, &app.config.alarms.escalation_policy());
        } else {
            event.state = core::AlarmState::Cleared;
            event.reason = Some("not_restored");
            event.escalated = false;
            event.reminder = false;
            event.ts = now;
            event.received_at = now;
            closed.push(core::Event::Alarm(event));
        }
    }
    if restored > 0 || !closed.is_empty() {
        tracing::warn!(
            restored,
            closed = closed.len(),
            "alarms open at the last stop taken back"
        );
    }
    app.hub.publish(closed, None);
}

/// Every `alarms.tick_ms`: judge timed conditions (stale data, device offline, pump
/// without SpO2, discharge readiness), send due escalations and reminders, and forget
/// chairs idle for `ingest.forget_idle_chair_ms`.
async fn run_timers(app: Arc<App>, stop: CancellationToken) {
    let policy = app.config.alarms.escalation_policy();
    let mut tick = tokio::time::interval(Duration::from_millis(app.config.alarms.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = app::now_ms();
        let _order = app.in_order();
        let events = app.ward.tick(now);
        app.hub.publish(events, None);
        app.hub.escalate(now, &policy);
        let forgotten = app
            .ward
            .evict_idle(now, app.config.ingest.forget_idle_chair_ms);
        app.metrics.chairs_forgotten.increment(forgotten as u64);
        app.metrics.chairs.set(app.ward.chair_count() as f64);
        // The default allowance when the offline check is off: a minute of silence.
        let silent_ms = match app.config.technical.offline_ms {
            0 => 60_000,
            ms => ms,
        };
        app.metrics
            .chairs_silent
            .set(app.ward.silent_in_session(now, silent_ms) as f64);
        app.health.ticked(now);
        app.metrics.timers_last_tick.set(now as f64 / 1000.0);
    }
}

/// Run the gateway until `shutdown` completes, then stop gracefully. Under systemd
/// (`Type=notify`), readiness and the watchdog are reported ([`service`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let gateway = Gateway::start(config).await?;
    let stop_service = CancellationToken::new();
    let service = tokio::spawn(service::run(gateway.app().clone(), stop_service.clone()));
    shutdown.await;
    tracing::info!("shutting down");
    stop_service.cancel();
    let _ = service.await;
    gateway.shutdown().await;
    Ok(())
}
