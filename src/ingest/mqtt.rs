//! The MQTT session: connect, subscribe, receive, process, acknowledge, reconnect.
//!
//! Manual acknowledgements are the no-loss promise: a PUBACK goes out only after the
//! message has been settled (state applied by the engine, its events committed to
//! the journal and queued for every dashboard), in arrival order. Messages are
//! handed to the engine without waiting for the ones before them to settle, so a
//! slow journal commit delays acknowledgements, not the readings behind it. The broker keeps anything unacknowledged in our persistent
//! session (stable client id, `clean_session = false`, QoS 1) and redelivers it after
//! a reconnect or a gateway restart; redeliveries are recognised by the core.

use super::backoff::Backoff;
use super::capture::Capture;
use super::pipeline::{intake, Intake, Processed};
use super::settle::Settlement;
use super::Devices;
use crate::clock::now_ms;
use crate::config::{MqttConfig, TlsConfig};
use crate::engine::{Receipt, Reply};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("mqtt.tls.{key}: cannot read {path}: {message}")]
    TlsFile {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("mqtt.tls: {0}")]
    Tls(String),
}

/// Where the gateway's MQTT client connects.
#[derive(Debug, Clone)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

/// Build the client options from config.
pub fn options(config: &MqttConfig, broker: &BrokerAddr) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(&config.client_id, &broker.host, broker.port);
    o.set_keep_alive(Duration::from_secs(config.keep_alive_s.into()))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_request_channel_capacity(config.request_queue);
    if let Some(user) = &config.username {
        o.set_credentials(user, config.password.as_ref().map_or("", |p| p.expose()));
    }
    if let Some(tls) = &config.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(rustls_config(tls)?),
        )));
    }
    Ok(o)
}

fn rustls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, IngestError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let file_err = |key: &'static str, path: &std::path::Path| {
        let path = path.display().to_string();
        move |e: rustls_pki_types::pem::Error| IngestError::TlsFile {
            key,
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&tls.ca_file).map_err(file_err("ca_file", &tls.ca_file))?
    {
        let cert = cert.map_err(file_err("ca_file", &tls.ca_file))?;
        roots
            .add(cert)
            .map_err(|e| IngestError::Tls(format!("ca_file: {e}")))?;
    }
    if roots.is_empty() {
        return Err(IngestError::TlsFile {
            key: "ca_file",
            path: tls.ca_file.display().to_string(),
            message: "no certificates found".into(),
        });
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| IngestError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(file_err("client_cert_file", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(file_err("client_cert_file", cert))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(file_err("client_key_file", key))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| IngestError::Tls(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The ingest task. Runs until `stop` is cancelled, then disconnects cleanly so the
/// broker keeps the session.
pub struct Ingest {
    app: Arc<Devices>,
    /// `mqtt.client_id`, for the log.
    client_id: String,
    /// `shutdown.mqtt_disconnect_timeout_ms`.
    disconnect_timeout: Duration,
    client: AsyncClient,
    events: EventLoop,
    backoff: Backoff,
    /// Messages received and not yet acknowledged, and their receipts.
    settlement: Settlement,
    /// Whether this process has subscribed on the current broker session.
    subscribed: bool,
}

impl Ingest {
    pub fn new(
        app: Arc<Devices>,
        config: &crate::config::Config,
        options: MqttOptions,
        receipts: tokio::sync::mpsc::UnboundedReceiver<Receipt>,
    ) -> Self {
        let c = &config.mqtt;
        let (client, mut events) = AsyncClient::new(options, c.request_queue);
        // Acknowledgements are written by `Settlement::acknowledge`; the subscription
        // and the DISCONNECT are queued by this task, which then polls again.
        events.set_requests_from_owner(true);
        // Nagle plus delayed ACK adds ~40 ms tails to PUBACKs on loopback.
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(c.connect_timeout_s);
        events.set_network_options(net);
        let backoff = Backoff::new(
            Duration::from_millis(c.reconnect_initial_ms),
            Duration::from_millis(c.reconnect_max_ms),
        );
        let settlement = Settlement::new(
            receipts,
            Duration::from_millis(config.ingest.reject_log_interval_ms),
        );
        Ingest {
            app,
            client_id: c.client_id.clone(),
            disconnect_timeout: Duration::from_millis(config.shutdown.mqtt_disconnect_timeout_ms),
            client,
            events,
            backoff,
            settlement,
            subscribed: false,
        }
    }

    /// Record every applied message to `capture`.
    pub fn with_capture(mut self, capture: Option<Capture>) -> Self {
        self.settlement.set_capture(capture);
        self
    }

    pub async fn run(mut self, stop: CancellationToken) {
        self.app.metrics.mqtt_connect_attempts.increment(1);
        // Polled on every turn of the loop (several per message): a oneshot's poll
        // is a few atomic operations, where a `cancelled()` future's takes the
        // token's lock twice. It completes (with an error) when `stop` is cancelled.
        let (cancelled, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            stop.cancelled().await;
            drop(cancelled);
        });
        loop {
            self.settlement.acknowledge(&mut self.events);
            let event = tokio::select! {
                biased;
                _ = &mut stopped => break,
                // Receipts come only for messages not yet settled; one left over from
                // a lost connection waits for the next message (it then settles nothing).
                Some(receipt) = self.settlement.receipts.recv(), if self.settlement.unsettled() > 0 => {
                    self.settlement.on_receipt(receipt);
                    continue;
                }
                event = self.events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => self.on_publish(publish).await,
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.on_connack(ack.session_present, ack.code)
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = ack.return_codes.iter().all(|c| {
                        matches!(
                            c,
                            SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)
                        )
                    });
                    if granted {
                        self.subscribed = true;
                        self.set_ready(true);
                        tracing::info!(filters = %self.app.topics, "subscribed (QoS 1)");
                    } else {
                        tracing::error!(
                            filters = %self.app.topics,
                            codes = ?ack.return_codes,
                            "broker refused the QoS 1 subscription; not ready"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.set_ready(false);
                    // Those the broker sent on the lost connection come again.
                    self.settlement.forget();
                    self.app.metrics.mqtt_connection_errors.increment(1);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed");
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    self.app.metrics.mqtt_connect_attempts.increment(1);
                }
            }
        }
        self.disconnect().await;
        if let Some(capture) = self.settlement.take_capture() {
            // Everything applied is on disk before the gateway reports it stopped.
            let _ = tokio::task::spawn_blocking(move || capture.finish()).await;
        }
    }

    fn set_ready(&self, ready: bool) {
        self.app.health.set_mqtt_subscribed(ready);
        self.app
            .metrics
            .mqtt_connected
            .set(if ready { 1.0 } else { 0.0 });
    }

    fn on_connack(&mut self, session_present: bool, code: ConnectReturnCode) {
        if code != ConnectReturnCode::Success {
            tracing::error!(?code, "broker refused the connection");
            return;
        }
        self.backoff.reset();
        tracing::info!(session_present, client_id = %self.client_id, "connected to MQTT broker");
        if session_present && self.subscribed {
            self.set_ready(true);
            return;
        }
        // No session (first start, or the broker lost it): subscribe again.
        self.subscribed = false;
        let filters = self
            .app
            .topics
            .filters()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "could not queue the subscription");
        }
    }

    async fn on_publish(&mut self, publish: Publish) {
        let now = now_ms();
        let reply = Reply::Ticket(self.settlement.next_ticket());
        let outcome = match intake(
            &self.app,
            &publish.topic,
            &publish.payload,
            Instant::now(),
            now,
            reply,
        ) {
            Intake::Done(processed) => Some(processed),
            // Waits only while the engine's queue is full: backpressure to the broker.
            Intake::Engine(command) => match self.app.engine.send(command).await {
                Ok(()) => None,
                Err(_) => Some(Processed::stopped()),
            },
        };
        self.settlement.received(publish, now, outcome);
    }

    /// Send DISCONNECT (the broker keeps the session) and let the event loop write
    /// the remaining acknowledgements and the DISCONNECT, within a short bound.
    async fn disconnect(&mut self) {
        self.set_ready(false);
        let bound = self.disconnect_timeout;
        // The messages handed to the engine settle first, so that they are
        // acknowledged rather than sent again after the restart.
        let settled = async {
            while self.settlement.unsettled() > 0 {
                match self.settlement.receipts.recv().await {
                    Some(receipt) => self.settlement.on_receipt(receipt),
                    None => break,
                }
            }
        };
        if tokio::time::timeout(bound, settled).await.is_err() {
            tracing::warn!(
                unsettled = self.settlement.unsettled(),
                "messages still unsettled at shutdown: the broker sends them again"
            );
        }
        self.settlement.acknowledge(&mut self.events);
        let _ = self.client.try_disconnect();
        let drain = async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(bound, drain).await.is_err() {
            tracing::warn!(
                timeout_ms = bound.as_millis() as u64,
                "MQTT disconnect did not complete in time"
            );
        }
        tracing::info!("disconnected from MQTT broker (session kept)");
    }
}
