//! vitalgate: bedside vitals in over MQTT, alarm rules per patient, alarms and live
//! vitals out over WebSockets to nurse-station dashboards.
//!
//! The crate is a library with a thin binary: [`run`] is the whole gateway, and tests
//! start the same thing through [`Gateway::start`] to learn the bound addresses.
//!
//! Layout: [`core`] holds the alarm logic and does no I/O; [`engine`] owns the
//! alarm state built from it and the journal, behind one channel of commands;
//! [`ingest`] is the MQTT edge, [`fanout`] the WebSocket edge and [`http`] the
//! operations endpoints;
//! [`sim`] simulates a ward of bedside devices (`vitalgate demo`).

pub mod access;
pub mod app;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod engine;
pub mod fanout;
pub mod health;
pub mod http;
pub mod ingest;
pub mod open_files;
pub mod protocol;
mod recovery;
pub mod replay;
pub mod service;
pub mod sim;
pub mod telemetry;
pub mod timers;

pub use app::App;
pub use config::Config;

use audit::Audit;
use config::{BrokerMode, ConfigError};
use ingest::capture::Capture;
use ingest::{broker, BrokerAddr, Ingest, IngestError, Topics};
use std::future::Future;
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
    #[error(transparent)]
    Bind(#[from] http::BindError),
    #[error(transparent)]
    Cluster(#[from] cluster::gateway::GatewayError),
}

/// What `--check` looks at beyond the configuration's own validity (which
/// [`Config::load`] has checked): the files the gateway reads when it starts
/// (the JWT key, the MQTT TLS files) and the audit trail's directory and file.
/// Nothing is connected to or bound, and nothing is left created or changed (a
/// probe file tries the audit directory, then is removed).
pub fn preflight(config: &Config) -> Result<(), Error> {
    http::auth::Authenticator::from_config(&config.auth)?;
    if config.mqtt.tls.is_some() {
        let addr = BrokerAddr {
            host: config.mqtt.host.clone(),
            port: config.mqtt.port,
        };
        ingest::mqtt::options(&config.mqtt, &addr)?;
    }
    if !config.cluster.enabled {
        audit::check_path(&config.audit.path).map_err(|e| Error::Audit(e.to_string()))?;
    }
    Ok(())
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
    engine: engine::Running,
    http: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Validate the config, start the embedded broker if configured, bind the HTTP
    /// listener and start ingest. Returns once listeners are bound; `/ready` turns
    /// true when the broker subscription is confirmed.
    pub async fn start(config: Config) -> Result<Gateway, Error> {
        Gateway::start_with_journal(config, |journal| journal).await
    }

    /// [`Gateway::start`] with the journal as `wrap` makes it of the SQLite one:
    /// for tests and measurements of what a slow or failing journal does.
    pub async fn start_with_journal(
        config: Config,
        wrap: impl FnOnce(Box<dyn engine::Journal>) -> Box<dyn engine::Journal>,
    ) -> Result<Gateway, Error> {
        let rules = config.checked()?;
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
        let (listener, http_addr) = http::bind(&config.http)?;

        if config.websocket.queue_capacity < config.ingest.max_chairs {
            tracing::warn!(
                queue_capacity = config.websocket.queue_capacity,
                max_chairs = config.ingest.max_chairs,
                "websocket.queue_capacity is below ingest.max_chairs: when every chair alarms \
                 at once (a storm, as after a broker reconnect) one journal commit can release \
                 more alarms than a dashboard's queue holds, and dashboards are cut off as slow \
                 (4008) and must reconnect; raise websocket.queue_capacity"
            );
        }
        let auth = http::auth::Authenticator::from_config(&config.auth)?;
        if !auth.enabled() {
            tracing::warn!(
                "auth.mode = \"none\": dashboards and the API are NOT AUTHENTICATED and anyone \
                 who can reach {} may acknowledge alarms and change sessions; for local \
                 demos only",
                config.http.bind
            );
        }
        let audit = Arc::new(audit);
        let metrics = Arc::new(telemetry::Metrics::new());
        let hub = Arc::new(fanout::Hub::new());
        let live = Arc::new(fanout::LiveFeed::new(config.websocket.live_log_capacity));
        let (receipts_tx, receipts) = tokio::sync::mpsc::unbounded_channel();
        let restored = recovery::Restored::read(&audit).await;
        let now = app::now_ms();
        let (engine, engine_running) = engine::Engine::start(
            engine::Parts {
                // A client resuming with a `since` from an earlier run is always
                // told it missed events, with or without `instance`.
                last_seq: engine::Parts::last_seq_at_start(now),
                instance: format!("{:016x}", fastrand::u64(..)),
                ..engine::Parts::configured(
                    &config,
                    core::Ward::with_alarm_ids_after(
                        Arc::new(rules),
                        config.ingest.max_chairs,
                        now.saturating_mul(1_000),
                    ),
                    metrics.clone(),
                )
            },
            wrap(Box::new(engine::SqliteJournal {
                audit: audit.clone(),
                metrics: metrics.clone(),
            })),
            Arc::new(fanout::hub::Outlets {
                hub: hub.clone(),
                live: live.clone(),
            }),
            receipts_tx,
            |r| restored.apply(r, now),
        );
        // What restoring closed is in the audit trail before anyone is served.
        engine.flushed().await;
        let dashboards = Arc::new(fanout::Dashboards::new(
            engine.clone(),
            Arc::new(fanout::EngineBackend {
                engine: engine.clone(),
                hub: hub.clone(),
            }),
            hub,
            live,
            metrics.clone(),
            config.websocket.clone(),
        ));
        let devices = Arc::new(ingest::Devices {
            engine,
            topics,
            decode_limits: config.decode_limits(),
            session_max_bytes: config.session.max_message_bytes,
            metrics,
            health: Arc::new(health::Health::default()),
        });
        let trail = http::api::LocalTrail {
            audit,
            engine: devices.engine.clone(),
        };
        let app = Arc::new(App::new(config, dashboards, devices, Some(Arc::new(trail))));
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
        let stop_http = CancellationToken::new();
        let http = http::serve(app.clone(), auth, listener, stop_http.clone());

        let stop_ingest = CancellationToken::new();
        let ingest =
            Ingest::new(app.devices.clone(), &app.config, options, receipts).with_capture(capture);
        let ingest = tokio::spawn(ingest.run(stop_ingest.clone()));
        let timers = tokio::spawn(timers::run(app.clone(), stop_ingest.clone()));
        tracing::info!(
            broker = %format!("{}:{}", broker.host, broker.port),
            topics = %app.devices.topics,
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
            engine: engine_running,
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
        // Every event already made is journaled and queued for dashboards before
        // they are told to flush and close.
        self.app.engine.close();
        self.engine.finished().await;
        let close_timeout = Duration::from_millis(self.app.config.websocket.close_timeout_ms);
        self.app.dashboards.close_all(grace, close_timeout).await;
        http::stopped(&self.app, self.http).await;
        tracing::info!("vitalgate stopped");
    }
}

/// Run the gateway until `shutdown` completes, then stop gracefully. Under systemd
/// (`Type=notify`), readiness and the watchdog are reported ([`service`]).
/// `[cluster] enabled = true` runs cluster mode ([`cluster::gateway`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    if config.cluster.enabled {
        let gateway = cluster::gateway::ClusterGateway::start(config).await?;
        serve_until(gateway.app().clone(), shutdown).await;
        gateway.shutdown().await;
    } else {
        let gateway = Gateway::start(config).await?;
        serve_until(gateway.app().clone(), shutdown).await;
        gateway.shutdown().await;
    }
    Ok(())
}

/// Report to systemd ([`service`]) until `shutdown` completes.
async fn serve_until(app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let stop_service = CancellationToken::new();
    let service = tokio::spawn(service::run(app, stop_service.clone()));
    shutdown.await;
    tracing::info!("shutting down");
    stop_service.cancel();
    let _ = service.await;
}
