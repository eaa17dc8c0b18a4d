//! Test harness: a real gateway on 127.0.0.1:0 against a real broker, a real MQTT
//! device client and real WebSocket dashboards. Everything waits on events with a
//! deadline; nothing sleeps to let things happen.

#![allow(dead_code)]

pub mod cluster_script;
pub mod nats;
pub mod pg;
pub mod pki;
pub mod publisher;

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vitalgate::config::BrokerMode;
use vitalgate::{Config, Gateway};

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The broker integration tests use: `MQTT_TEST_BROKER` (host:port) when set, or
/// else one private Mosquitto per test process on a free port (see
/// [`process_broker`]), so that `cargo test` neither needs nor disturbs a broker on
/// 1883.
pub fn test_broker() -> (String, u16) {
    match std::env::var("MQTT_TEST_BROKER") {
        Ok(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .expect("MQTT_TEST_BROKER is host:port");
            (
                host.to_string(),
                port.parse().expect("MQTT_TEST_BROKER port"),
            )
        }
        Err(_) => ("127.0.0.1".into(), process_broker()),
    }
}

/// The port of this test process's own Mosquitto, started on first use with the
/// settings the operations guide asks for. It lives as long as the process: it is
/// started under a shell that kills it when its standard input closes, which the
/// kernel does when the test process exits, however it exits.
fn process_broker() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    // The shell, holding the write end of its standard input open until exit.
    static LIFELINE: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);
    *PORT.get_or_init(|| {
        let bin = mosquitto_bin();
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("mosq-process"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, broker_conf(port, "", "persistence false\n")).unwrap();
        let shell = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#""$1" -c "$2" & broker=$!; read _; kill "$broker"; wait "$broker"; rm -rf "$3""#)
            .args(["sh", bin, conf.to_str().unwrap(), dir.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh starts");
        *LIFELINE.lock().unwrap() = Some(shell);
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the tests' own mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        port
    })
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports nothing listens on now. Each is held until all are
/// found: the kernel may hand out a port just released again, and two
/// listeners given one port would leave one of them dead.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A Mosquitto configuration the way the operations guide asks for load: a large
/// inflight window and queue (the defaults drop QoS 1 messages silently under
/// bursts) and TCP_NODELAY; `persistence` lines; `extra` lines last, for the
/// listener (the only one) or instead of a setting above (the last one counts).
fn broker_conf(port: u16, extra: &str, persistence: &str) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
         max_inflight_messages 1000\nmax_queued_messages 100000\nset_tcp_nodelay true\n{extra}\n"
    )
}

/// Mosquitto's binary; a missing one stops the tests with one line saying how to
/// install it.
pub fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("mosquitto is not installed; the integration tests start their own: apt-get install mosquitto")
        })
}

/// A name unique to this test run, for client ids and topic prefixes.
pub fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "vgt-{what}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A config for one test: external broker (the test broker), ephemeral HTTP port,
/// fresh client id and a topic prefix no other test uses.
pub fn test_config() -> (Config, String) {
    let mut c = Config::default();
    let (host, port) = test_broker();
    let prefix = unique("site");
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    c.mqtt.broker = BrokerMode::External;
    c.mqtt.host = host;
    c.mqtt.port = port;
    c.mqtt.client_id = unique("gw");
    c.mqtt.topic = format!("{prefix}/+/chair/+/vitals");
    c.mqtt.session_topic = format!("{prefix}/+/chair/+/session");
    c.mqtt.status_topic = format!("{prefix}/+/chair/+/status");
    c.audit.path = audit_path();
    c.mqtt.reconnect_initial_ms = 50;
    c.shutdown.grace_period_ms = 3_000;
    (c, prefix)
}

/// Wait until `check` holds, asking again every 20 ms; fail naming `what` after
/// [`DEADLINE`].
pub async fn eventually<F, Fut>(mut check: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh audit trail file for one gateway (kept in the build's temp dir).
pub fn audit_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.sqlite3", unique("audit")))
}

/// Rules that make alarms easy to script: SpO2 below 90 raises at once (high),
/// clears at 92 or above. No other rule and no technical alarm.
pub fn simple_rules(c: &mut Config) {
    c.rules = vec![vitalgate::core::RuleSpec {
        id: "spo2_low".into(),
        vital: vitalgate::core::Vital::Spo2,
        low: Some(90.0),
        priority: vitalgate::core::Priority::High,
        hysteresis: 2.0,
        ..Default::default()
    }];
    c.combined_rules.clear();
    c.trend_rules.clear();
    c.technical = vitalgate::core::TechnicalSpec::default();
}

/// [`test_config`] with [`simple_rules`], pointed at a private broker.
pub fn config_for(broker: &PrivateBroker) -> (Config, String) {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.mqtt.host = "127.0.0.1".into();
    c.mqtt.port = broker.port;
    (c, prefix)
}

/// The usual start of a test: a gateway with [`simple_rules`] (then `tweak`), a
/// dashboard that has received its snapshot, and a device.
pub async fn setup(tweak: impl FnOnce(&mut Config)) -> (TestGateway, Dashboard, Device) {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    tweak(&mut c);
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let dev = gw.device().await;
    (gw, dash, dev)
}

pub struct TestGateway {
    pub gateway: Gateway,
    pub prefix: String,
    /// The session to remove from a shared broker at [`TestGateway::stop`].
    pub client_id: String,
    pub external: bool,
}

impl TestGateway {
    pub async fn start(config: Config, prefix: String) -> TestGateway {
        TestGateway::start_with_journal(config, prefix, |j| j).await
    }

    /// [`TestGateway::start`] with the journal `wrap` makes of the SQLite one.
    pub async fn start_with_journal(
        config: Config,
        prefix: String,
        wrap: impl FnOnce(Box<dyn vitalgate::engine::Journal>) -> Box<dyn vitalgate::engine::Journal>,
    ) -> TestGateway {
        let client_id = config.mqtt.client_id.clone();
        let external = config.mqtt.broker == BrokerMode::External;
        let gateway = Gateway::start_with_journal(config, wrap)
            .await
            .expect("gateway starts");
        let mut ready = gateway.app().health.watch_mqtt_subscribed();
        tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
            .await
            .expect("gateway subscribed to the broker in time")
            .unwrap();
        TestGateway {
            gateway,
            prefix,
            client_id,
            external,
        }
    }

    pub fn http(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    pub fn topic(&self, site: &str, chair: &str) -> String {
        format!("{}/{site}/chair/{chair}/vitals", self.prefix)
    }

    pub fn session_topic(&self, site: &str, chair: &str) -> String {
        format!("{}/{site}/chair/{chair}/session", self.prefix)
    }

    pub fn status_topic(&self, site: &str, chair: &str) -> String {
        format!("{}/{site}/chair/{chair}/status", self.prefix)
    }

    pub async fn dashboard(&self) -> Dashboard {
        Dashboard::connect(self.http(), "").await
    }

    /// A device client connected to the gateway's broker.
    pub async fn device(&self) -> Device {
        let b = self.gateway.broker();
        Device::connect(&b.host, b.port).await
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric(self.http(), name_and_labels).await
    }

    /// Stop gracefully, then remove the persistent session the gateway left on the
    /// shared broker so test runs do not accumulate sessions.
    pub async fn stop(self) {
        let b = self.gateway.broker().clone();
        self.gateway.shutdown().await;
        if self.external {
            purge_session(&b.host, b.port, &self.client_id).await;
        }
    }
}

/// Connect once with `clean_session = true` to drop a persistent session.
pub async fn purge_session(host: &str, port: u16, client_id: &str) {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(o, 10);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A simulated bedside device publishing QoS 1 over a real MQTT connection.
pub struct Device {
    pub client: AsyncClient,
    puback: mpsc::UnboundedReceiver<()>,
}

impl Device {
    pub async fn connect(host: &str, port: u16) -> Device {
        let mut o = MqttOptions::new(unique("dev"), host, port);
        o.set_clean_session(true)
            .set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut events) = AsyncClient::new(o, 1000);
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
        let (ack_tx, puback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = conn_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(DEADLINE, conn_rx.recv())
            .await
            .expect("device connected");
        Device { client, puback }
    }

    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publish a retained message (session and status topics).
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .unwrap();
    }

    pub async fn publish(&self, topic: &str, payload: &Value) {
        self.publish_raw(topic, payload.to_string()).await
    }

    /// Wait until the broker has acknowledged `n` more publishes.
    pub async fn wait_acked(&mut self, n: usize) {
        self.wait_acked_within(n, DEADLINE).await
    }

    /// [`Device::wait_acked`], each acknowledgement within `limit` (a NATS
    /// listener waits for its stream, whose leader may be moving).
    pub async fn wait_acked_within(&mut self, n: usize, limit: Duration) {
        for _ in 0..n {
            tokio::time::timeout(limit, self.puback.recv())
                .await
                .expect("broker acknowledged the publish");
        }
    }
}

/// A reading payload with `seq`, `ts` = now and the given vitals.
pub fn reading(seq: u64, vitals: Value) -> Value {
    let mut v = json!({ "seq": seq, "ts": now_ms() });
    for (k, x) in vitals.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A nurse-station dashboard over a real WebSocket.
pub struct Dashboard {
    pub ws: Ws,
}

impl Dashboard {
    pub async fn connect(http: SocketAddr, query: &str) -> Dashboard {
        let url = format!("ws://{http}/ws{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        Dashboard { ws }
    }

    /// The next JSON text frame (pings are answered by the client library).
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline")
                .expect("connection open")
                .expect("frame reads");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of `type`, skipping others (e.g. live vitals).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The first alarm this new connection learns of: the first active alarm in its
    /// snapshot, or else the next alarm frame (for an alarm raised while connecting).
    pub async fn first_alarm(&mut self) -> Value {
        let snap = self.next_of("snapshot").await;
        match snap["alarms"].as_array().and_then(|a| a.first()) {
            Some(a) => a.clone(),
            None => self.next_of("alarm").await,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Read until the server closes; returns the close code, if a close frame came.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("closed within the deadline")
            {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// `GET path` over a plain TCP connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("GET {path} from {addr} failed"))
}

/// `GET path`, or `None` if the connection failed or the answer was not HTTP.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (status, _, body) = try_http_call(addr, "GET", path).await?;
    Some((status, body))
}

/// `method path` with no body: status, head (lower-cased) and body.
pub async fn http_call(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    try_http_call(addr, method, path)
        .await
        .unwrap_or_else(|| panic!("{method} {path} from {addr} failed"))
}

async fn try_http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// A metric's value from `/metrics`, e.g. `vitalgate_readings_rejected_total{reason="no_vitals"}`.
pub async fn metric(addr: SocketAddr, name_and_labels: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found in:\n{body}"))
}

/// The metric names in `text` (`vitalgate_...`), as PromQL or /metrics writes them.
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("vitalgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not the middle of a longer word (a file name like deploy/vitalgate_x).
        let before = rest[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric name `/metrics` at `addr` exposes (a histogram's with its
/// `_bucket`, `_sum` and `_count` series).
pub async fn exposed_metrics(addr: SocketAddr) -> std::collections::BTreeSet<String> {
    let (_, exposition) = http_get(addr, "/metrics").await;
    let mut exposed = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        exposed.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exposed.insert(format!("{name}{suffix}"));
            }
        }
    }
    exposed
}

/// Every metric the deployment kit's `files` (paths under `deploy/`: alert
/// rules, Grafana boards) query is one `/metrics` at `addr` exposes, each file
/// querying at least `at_least`; each board (`.json`) has at least 8 panels. A
/// renamed metric would leave an alert quiet or a panel empty.
pub async fn assert_deploy_queries_exposed(addr: SocketAddr, files: &[&str], at_least: usize) {
    let exposed = exposed_metrics(addr).await;
    assert!(exposed.len() > 20, "{exposed:?}");
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in files {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let queried = metric_names(&text);
        assert!(queried.len() >= at_least, "{file} queries {queried:?}");
        let missing: Vec<&String> = queried.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, which /metrics does not expose"
        );
        if file.ends_with(".json") {
            let board: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(board["panels"].as_array().unwrap().len() >= 8, "{file}");
        }
    }
}

/// A private Mosquitto on a free port, configured the way the operations guide asks
/// for load: large inflight window and queue (the defaults drop QoS 1 messages
/// silently under bursts) and TCP_NODELAY. Killed on drop.
pub struct PrivateBroker {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
    conf: std::path::PathBuf,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        Self::start_with(false).await
    }

    /// With `persistence`, sessions and queued messages are saved on a clean stop and
    /// loaded again on start.
    pub async fn start_with(persistence: bool) -> PrivateBroker {
        Self::start_config(persistence, "").await
    }

    /// With `extra` lines added to the configuration (e.g. TLS settings; see
    /// `broker_conf`).
    pub async fn start_config(persistence: bool, extra: &str) -> PrivateBroker {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("mosq"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let persistence = if persistence {
            // Mosquitto started as root drops to the `mosquitto` user unless told
            // otherwise, and could then not write its state into our directory.
            format!(
                "persistence true\npersistence_location {}/\nuser root\n",
                dir.display()
            )
        } else {
            "persistence false\n".to_string()
        };
        std::fs::write(&conf, broker_conf(port, extra, &persistence)).unwrap();
        let child = Self::spawn(&conf, port).await;
        PrivateBroker {
            port,
            child,
            dir,
            conf,
        }
    }

    async fn spawn(conf: &std::path::Path, port: u16) -> std::process::Child {
        let child = std::process::Command::new(mosquitto_bin())
            .arg("-c")
            .arg(conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "private mosquitto did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// Kill the broker (it keeps nothing: persistence is off) and start it again on
    /// the same port.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.conf, self.port).await;
    }

    /// Stop the broker cleanly (SIGTERM: it saves its state when persistence is on).
    pub fn stop(&mut self) {
        self.signal("TERM");
        let _ = self.child.wait();
    }

    /// Start it again on the same port after [`PrivateBroker::stop`].
    pub async fn start_again(&mut self) {
        self.child = Self::spawn(&self.conf, self.port).await;
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`STOP`, `CONT`, `TERM`) to the broker process.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether alarm frame `a` holds `rule`: as its own (highest) rule, or among the
/// rules of its vital and direction it lists.
#[allow(dead_code)]
pub fn holds_rule(a: &serde_json::Value, rule: &str) -> bool {
    a["rule"] == rule
        || a["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["rule"] == rule))
}
