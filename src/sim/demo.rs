//! `vitalgate demo`: a gateway and a simulated ward, for trying the nurse station
//! without any device.
//!
//! Safety of the wiring:
//! - the gateway uses the embedded broker (forced, whatever the configuration says)
//!   unless a broker is named explicitly, so a demo never publishes simulated patients
//!   into a clinic's real broker by accident;
//! - with a named broker, the gateway's client id gets the process id appended when it
//!   is the default `vitalgate`, so the demo cannot take over the persistent MQTT
//!   session of a real gateway on that broker;
//! - the audit trail goes to a fresh temporary directory (removed at the end) unless
//!   `audit.path` was configured, so simulated alarms never land in the real trail;
//! - every simulated chair is on site `demo` and every reading says `"simulated":
//!   true`.

use super::publish::{Gate, PublishOptions, Simulator};
use super::{demo_ward, Scenario};
use crate::clock::now_ms;
use crate::config::BrokerMode;
use crate::ingest::BrokerAddr;
use crate::{App, Config, Gateway};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the gateway may take to subscribe before the demo gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Gateway(#[from] crate::Error),
    #[error("--broker must be host:port, got '{0}'")]
    BadBroker(String),
    #[error("cannot create the demo's audit directory {path}: {source}")]
    AuditDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway did not subscribe to the broker within {0:?}")]
    NotReady(Duration),
}

/// Options of `vitalgate demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed of the simulated ward: same seed, same ward.
    pub seed: u64,
    /// An external broker; `None`: the embedded one.
    pub broker: Option<BrokerAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 1,
            broker: None,
        }
    }
}

/// Parse `--broker host:port`.
pub fn parse_broker(s: &str) -> Result<BrokerAddr, DemoError> {
    let bad = || DemoError::BadBroker(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port: port.parse().map_err(|_| bad())?,
    })
}

/// A running demo: the gateway and the simulator publishing into its broker.
pub struct Demo {
    gateway: Gateway,
    simulator: Simulator,
    scenario: Arc<Scenario>,
    start_ms: u64,
    temp_dir: Option<PathBuf>,
}

impl Demo {
    /// Start the gateway with the demo's adjustments (see the module docs), wait until
    /// it is subscribed (readings sent before would be lost), then start the ward.
    pub async fn start(mut config: Config, opts: DemoOptions) -> Result<Demo, DemoError> {
        match &opts.broker {
            Some(b) => {
                config.mqtt.broker = BrokerMode::External;
                config.mqtt.host = b.host.clone();
                config.mqtt.port = b.port;
                if config.mqtt.client_id == Config::default().mqtt.client_id {
                    config.mqtt.client_id = format!("vitalgate-demo-{}", std::process::id());
                }
            }
            None => config.mqtt.broker = BrokerMode::Embedded,
        }
        let temp_dir = if config.audit.path == Config::default().audit.path {
            let dir = std::env::temp_dir().join(format!(
                "vitalgate-demo-{}-{}",
                std::process::id(),
                now_ms()
            ));
            let create = dir.clone();
            tokio::task::spawn_blocking(move || std::fs::create_dir_all(&create))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
                .map_err(|source| DemoError::AuditDir {
                    path: dir.clone(),
                    source,
                })?;
            config.audit.path = dir.join("vitalgate-demo-audit.sqlite3");
            Some(dir)
        } else {
            None
        };
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                remove_dir(temp_dir).await;
                return Err(e.into());
            }
        };
        let mut ready = gateway.app().health.watch_mqtt_subscribed();
        if !matches!(
            tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r)).await,
            Ok(Ok(_))
        ) {
            gateway.shutdown().await;
            remove_dir(temp_dir).await;
            return Err(DemoError::NotReady(READY_TIMEOUT));
        }
        let start_ms = now_ms();
        let scenario = Arc::new(demo_ward(start_ms, opts.seed));
        let b = gateway.broker();
        let simulator = Simulator::start(
            scenario.clone(),
            PublishOptions {
                gate: Some(Arc::new(WardGate(gateway.app().clone()))),
                ..PublishOptions::new(b.host.clone(), b.port)
            },
            CancellationToken::new(),
        );
        Ok(Demo {
            gateway,
            simulator,
            scenario,
            start_ms,
            temp_dir,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The ward being published (`demo_ward(start_ms(), seed)`).
    pub fn scenario(&self) -> &Arc<Scenario> {
        &self.scenario
    }

    /// Device time the ward started at.
    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// Stop the simulator, then the gateway (gracefully), then remove the temporary
    /// audit trail.
    pub async fn stop(self) {
        self.simulator.stop().await;
        self.gateway.shutdown().await;
        remove_dir(self.temp_dir).await;
    }
}

/// The demo's gateway says when it has applied a chair's reading, so a session
/// message is published only after the readings it must follow (see
/// [`super::publish`]).
struct WardGate(Arc<App>);

impl Gate for WardGate {
    fn reading_applied(&self, chair: &str, device_ms: u64) -> bool {
        self.0.engine.ward().chair(chair).is_some_and(|c| {
            c.latest.vitals.iter().flatten().any(|s| s.ts >= device_ms)
                || c.latest.pump.is_some_and(|p| p.ts >= device_ms)
        })
    }

    fn session_applied(&self, chair: &str, ts: u64) -> bool {
        self.0
            .engine
            .ward()
            .chair(chair)
            .is_some_and(|c| c.session.message_ts.is_some_and(|m| m >= ts))
    }
}

async fn remove_dir(dir: Option<PathBuf>) {
    if let Some(dir) = dir {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

/// Run the demo until `shutdown` completes: start it, announce the nurse station's
/// URL (stdout and log), wait, stop.
pub async fn run(
    config: Config,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let demo = Demo::start(config, opts).await?;
    let url = format!("http://{}/", demo.http_addr());
    println!("SIMULATED WARD (site \"demo\", not real patients): nurse station at {url}");
    tracing::warn!(%url, "SIMULATED WARD running: site \"demo\", simulated patients only");
    shutdown.await;
    tracing::info!("stopping the simulated ward");
    demo.stop().await;
    Ok(())
}
