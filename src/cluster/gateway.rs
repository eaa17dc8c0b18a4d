//! `vitalgate` in cluster mode (`[cluster] enabled = true`): one member of the
//! cluster with the HTTP edge of a single gateway around it.
//!
//! Devices publish to the NATS cluster's MQTT listeners, not to this process:
//! there is no broker here. Dashboards connect to any gateway
//! ([`super::dashboards`]), and get live vitals of every chair: each gateway
//! sends its chairs' on NATS ([`LIVE_PREFIX`]); `/ready` lists the partitions
//! held; `/api` reads the audit trail in PostgreSQL (`[cluster]
//! audit_postgres`; 503 on a gateway without it).

use super::audit_pg::{self, PgAudit, PgTrail};
use super::dashboards::{serve_commands, ClusterBackend};
use super::lag::{self, LagSources};
use super::member::{self, DeviceChecks, Member, MemberSettings, Outlets};
use super::ClusterError;
use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::engine::{self, Outlet, Sequenced};
use crate::health::{ClusterHealth, Health};
use crate::protocol::{self, Frame};
use crate::{core, fanout, http, telemetry, timers};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("audit trail (cluster.audit_postgres): {0}")]
    Audit(String),
    #[error(transparent)]
    Auth(#[from] http::auth::KeyError),
    #[error(transparent)]
    Bind(#[from] http::BindError),
}

/// Live vitals go from the chair's owner to every gateway on
/// `vitalgate.live.{site}.{chair}` (NATS core: not stored; a value missed is
/// replaced by the chair's next reading).
pub const LIVE_PREFIX: &str = "vitalgate.live";
/// Live vitals waiting for NATS; beyond it the newest are dropped (the chair's
/// next reading brings its values again).
const LIVE_QUEUE: usize = 4096;

/// The audit database at `url`. Unreachable now (PostgreSQL down, or slower
/// than the gateways to come back after a power cut), it is connected to at
/// its first use: alarms flow meanwhile, the audit writer catches up from the
/// events stream, and `/api` fails until then. A malformed `url`, or a server
/// that answers with a refusal, stops the start.
async fn audit_db(url: &str) -> Result<PgAudit, GatewayError> {
    match PgAudit::connect(url).await {
        Ok(audit) => Ok(audit),
        Err(audit_pg::PgAuditError::Sql(e)) if unreachable_now(&e) => {
            tracing::warn!(error = %e, "the audit database cannot be reached: alarms flow, and the audit trail is written once it can be");
            PgAudit::later(url).map_err(|e| GatewayError::Audit(e.to_string()))
        }
        // A refusal waiting cannot mend (a wrong password or database name,
        // no right to make the tables, a newer schema): the operator must act.
        Err(e) => Err(GatewayError::Audit(e.to_string())),
    }
}

/// Whether `e` says the server is not there or not taking connections yet (no
/// answer, starting up, shutting down, full), rather than refusing this gateway.
fn unreachable_now(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
        ]
        .contains(code),
    }
}

/// The engine's outlet in cluster mode: live vitals, to every gateway (its
/// events reach dashboards from the events stream).
struct LiveVitals(mpsc::Sender<(Arc<str>, Frame)>);

impl Outlet for LiveVitals {
    fn release(&self, _: &[Sequenced]) {}

    fn vitals(&self, chair: &Arc<str>, latest: &core::Latest, _: Instant) {
        let frame = protocol::vitals_frame(chair, latest, None);
        let _ = self.0.try_send((chair.clone(), frame));
    }
}

/// Send this gateway's chairs' live vitals to every gateway, until `stop`.
async fn send_live(
    client: async_nats::Client,
    mut vitals: mpsc::Receiver<(Arc<str>, Frame)>,
    stop: CancellationToken,
) {
    loop {
        let (chair, frame) = tokio::select! {
            _ = stop.cancelled() => return,
            next = vitals.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let (site, chair) = chair.split_once('/').unwrap_or((&chair, ""));
        let subject = format!("{LIVE_PREFIX}.{site}.{chair}");
        let body = bytes::Bytes::copy_from_slice(frame.as_str().as_bytes());
        if let Err(e) = client.publish(subject, body).await {
            tracing::debug!(error = %e, "live vitals not sent");
        }
    }
}

/// Take every gateway's live vitals into `live`, until `stop`.
async fn receive_live(
    client: async_nats::Client,
    live: Arc<fanout::LiveFeed>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, ClusterError> {
    let mut vitals = client
        .subscribe(format!("{LIVE_PREFIX}.>"))
        .await
        .map_err(|e| ClusterError::js("listening for live vitals", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                next = vitals.next() => match next {
                    Some(message) => message,
                    None => return,
                },
            };
            let key = message.subject.as_str().strip_prefix(LIVE_PREFIX);
            let chair = key
                .and_then(|k| k.strip_prefix('.'))
                .map(|k| k.replacen('.', "/", 1));
            let (Some(chair), Ok(text)) = (chair, String::from_utf8(message.payload.to_vec()))
            else {
                continue;
            };
            let chair: Arc<str> = Arc::from(chair);
            live.publish_frame(&chair, Frame::about(text, chair.clone()));
        }
    }))
}

/// A gateway running in cluster mode.
pub struct ClusterGateway {
    app: Arc<App>,
    http_addr: SocketAddr,
    member: Member,
    stop: CancellationToken,
    stop_http: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    timers: JoinHandle<()>,
}

impl ClusterGateway {
    /// Validate the config, join the cluster, bind the HTTP listener. Returns
    /// once dashboards can be served: the mirror has read the events stream.
    pub async fn start(config: Config) -> Result<ClusterGateway, GatewayError> {
        let rules = config.checked()?;
        let (listener, http_addr) = http::bind(&config.http)?;
        let auth = http::auth::Authenticator::from_config(&config.auth)?;
        let settings = MemberSettings::from_config(&config.cluster);
        let metrics = Arc::new(telemetry::Metrics::new());
        let hub = Arc::new(fanout::Hub::new());
        // Other gateways' chairs' latest vitals too, for dashboards subscribing.
        let live = Arc::new(fanout::LiveFeed::keeping_remote(
            config.websocket.live_log_capacity,
            config.ingest.max_chairs,
        ));
        let health = Arc::new(Health::default());
        let parts = engine::Parts {
            instance: settings.name.clone(),
            // Session and limit events are named `{instance}-{seq}` in the events
            // stream and the PostgreSQL audit trail, which drop a name seen
            // before: `seq` must not start again at each run of this gateway.
            last_seq: engine::Parts::last_seq_at_start(crate::app::now_ms()),
            // Dashboards are served from the events stream, not the engine.
            replay_capacity: 0,
            ..engine::Parts::configured(
                &config,
                core::Ward::with_derived_alarm_ids(Arc::new(rules), config.ingest.max_chairs),
                metrics.clone(),
            )
        };
        let checks = DeviceChecks {
            decode_limits: config.decode_limits(),
            session_max_bytes: config.session.max_message_bytes,
            health: health.clone(),
        };
        let (to_nats, live_out) = mpsc::channel(LIVE_QUEUE);
        let outlets = Outlets {
            engine: Arc::new(LiveVitals(to_nats)),
            dashboards: Some((
                Arc::new(fanout::hub::Outlets {
                    hub: hub.clone(),
                    live: live.clone(),
                }),
                config.websocket.replay_capacity,
            )),
        };
        // Before any partition is taken: a gateway that cannot start gives
        // nothing up to the others' takeover.
        // Two connections: one writes, one answers `/api`.
        let audit = match config.cluster.audit_postgres.as_str() {
            "" => None,
            url => Some((audit_db(url).await?, Arc::new(audit_db(url).await?))),
        };
        let reader = audit.as_ref().map(|(_, reader)| reader.clone());
        let member =
            member::start(&settings, parts, checks, outlets, |j| Box::new(j), None).await?;
        let stop = CancellationToken::new();
        let joined = async {
            // Dashboards' snapshots hold everything stored before they connect.
            member.mirror.caught_up().await?;
            if let Some((audit, _)) = audit {
                let retry = settings.lease.ttl;
                audit_pg::start_writer(&member.js, audit, settings.replicas, retry, stop.clone())
                    .await?;
            }
            receive_live(member.client.clone(), live.clone(), stop.clone()).await?;
            Ok::<_, ClusterError>(())
        };
        if let Err(e) = joined.await {
            stop.cancel();
            member.stop().await;
            return Err(e.into());
        }
        serve_commands(
            member.client.clone(),
            fanout::EngineBackend {
                engine: member.engine.clone(),
                hub: hub.clone(),
            },
            member.settled.clone(),
            member.owned.clone(),
            stop.clone(),
        );
        tokio::spawn(send_live(member.client.clone(), live_out, stop.clone()));
        tokio::spawn(lag::report(
            LagSources {
                js: member.js.clone(),
                owned: member.owned.clone(),
                mirror: member.mirror.clone(),
                audit: reader.is_some(),
            },
            metrics.cluster(),
            stop.clone(),
        ));
        metrics.mqtt_connected.set(1.0);
        tokio::spawn(report_health(
            member.js.clone(),
            member.owned.clone(),
            health.clone(),
            metrics.mqtt_connected.clone(),
            settings.round,
            settings.lease.ttl,
            stop.clone(),
        ));
        let backend = Arc::new(ClusterBackend {
            client: member.client.clone(),
            mirror: member.mirror.clone(),
            hub: hub.clone(),
            partitions: settings.partitions,
            since_from_stream_max: config.cluster.since_from_stream_max,
        });
        let dashboards = Arc::new(fanout::Dashboards::new(
            member.engine.clone(),
            backend,
            hub,
            live,
            metrics,
            config.websocket.clone(),
        ));
        // The device path is up: the member reads its partitions (`report_health`
        // keeps this current).
        health.set_mqtt_subscribed(true);
        let trail = reader.map(|audit| {
            Arc::new(PgTrail {
                audit,
                mirror: member.mirror.clone(),
            }) as Arc<dyn crate::audit::Trail>
        });
        let app = Arc::new(App::new(config, dashboards, member.devices.clone(), trail));
        let stop_http = CancellationToken::new();
        let serving = http::serve(app.clone(), auth, listener, stop_http.clone());
        let timers = tokio::spawn(timers::run(app.clone(), stop.clone()));
        tracing::info!(
            gateway = %settings.name,
            nats = %settings.servers.join(","),
            dashboards = %format!("ws://{http_addr}/ws"),
            "vitalgate started in cluster mode; nurse station at http://{http_addr}/"
        );
        Ok(ClusterGateway {
            app,
            http_addr,
            member,
            stop,
            stop_http,
            http: serving,
            timers,
        })
    }

    /// Where dashboards and operators connect.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Graceful stop: `/ready` goes 503, partitions are given back (once their
    /// leases' deadlines have passed, so no two gateways act for one), then
    /// dashboards flush and close as in single-node mode.
    pub async fn shutdown(self) {
        self.app.health.set_shutting_down();
        self.stop_http.cancel();
        self.stop.cancel();
        let _ = self.timers.await;
        self.member.stop().await;
        let c = &self.app.config;
        let grace = Duration::from_millis(c.shutdown.grace_period_ms);
        let close_timeout = Duration::from_millis(c.websocket.close_timeout_ms);
        self.app.dashboards.close_all(grace, close_timeout).await;
        http::stopped(&self.app, self.http).await;
        tracing::info!("vitalgate stopped");
    }
}

/// Keep `/ready`'s cluster part current: the partitions held, and whether the
/// events stream answers (asked every `round`). In cluster mode the stream is
/// the device path, as the broker subscription is for a single gateway: `/ready`'s
/// `mqtt_subscribed` and `vitalgate_mqtt_connected` say whether it answered
/// within the last `lease` (`cluster.lease_ms`), so that a gateway cut off from
/// NATS is not ready and its alert fires, while a stream leader moving after a
/// NATS node is lost (4-9 s, which the lease outlasts) does not take every
/// gateway out of a load balancer at once.
async fn report_health(
    js: async_nats::jetstream::Context,
    mut owned: tokio::sync::watch::Receiver<super::ownership::Owned>,
    health: Arc<Health>,
    connected: metrics::Gauge,
    round: Duration,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(round);
    // Start-up reached the stream before this runs.
    let mut reachable = true;
    let mut answered = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let asked = tokio::time::timeout(round, js.get_stream(super::events::EVENTS_STREAM));
                reachable = matches!(asked.await, Ok(Ok(_)));
                if reachable {
                    answered = tokio::time::Instant::now();
                }
                let up = answered.elapsed() < lease;
                health.set_mqtt_subscribed(up);
                connected.set(if up { 1.0 } else { 0.0 });
            }
            changed = owned.changed() => if changed.is_err() { return },
        }
        let partitions = owned.borrow().keys().copied().collect();
        health.set_cluster(ClusterHealth {
            partitions,
            stream_reachable: reachable,
        });
    }
}
