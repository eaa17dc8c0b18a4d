//! The embedded MQTT broker (rumqttd), used when `mqtt.broker = "embedded"` so the
//! gateway runs on a machine with no broker installed.
//!
//! rumqttd runs on its own threads and has no stop call: it lives until the process
//! exits. That suits the binary; tests that start several gateways each get their own
//! broker on a free port.

use crate::config::EmbeddedBrokerConfig;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long the embedded broker may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "embedded MQTT broker cannot listen on {addr} (mqtt.embedded.bind): {source}; \
             choose another port or set mqtt.broker = \"external\""
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded MQTT broker failed to start: {0}")]
    Start(String),
}

/// Start the broker; returns the address devices (and the gateway) connect to.
pub fn start(config: &EmbeddedBrokerConfig) -> Result<SocketAddr, BrokerError> {
    // Probe the address first so a taken port is a clear startup error rather than a
    // failure on rumqttd's thread. Port 0 resolves to a free port here.
    let addr = {
        let probe = TcpListener::bind(config.bind).map_err(|source| BrokerError::Bind {
            addr: config.bind,
            source,
        })?;
        probe.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.bind,
            source,
        })?
    };
    let server = rumqttd::ServerSettings {
        name: "vitalgate-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: config.max_payload_bytes,
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let broker_config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 10 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(broker_config);
            let _ = started_tx.send(());
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    started_rx
        .recv()
        .map_err(|_| BrokerError::Start("broker thread exited during start".into()))?;
    // rumqttd binds on its own thread and reports failure only to its log: wait
    // until it accepts connections, so a broker that did not come up is a startup
    // error rather than a gateway that is never ready.
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(BrokerError::Start(format!(
                "not listening on {addr} after {} s (see the log with RUST_LOG=rumqttd=info)",
                LISTEN_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(addr)
}
