//! The parts of the cluster failure script: gateways as `vitalgate` processes
//! (so that they can be killed with SIGKILL and frozen with SIGSTOP), and
//! nurse-station dashboards that move to another gateway with their `since`
//! when theirs goes quiet.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use vitalgate::Config;

/// A gateway's config: cluster mode on `nats` as `name` with the shipped
/// lease and round, the shared test rules (SpO2 below 90 raises at once, 92
/// clears), HTTP on an ephemeral port, the audit trail in `audit`.
pub fn gateway_config(
    nats: &super::nats::NatsCluster,
    name: &str,
    audit: &super::pg::TestDb,
) -> Config {
    let (mut c, _) = super::test_config();
    super::simple_rules(&mut c);
    let k = &mut c.cluster;
    k.enabled = true;
    k.servers = nats.urls();
    k.name = name.to_string();
    k.partitions = super::nats::PARTITIONS;
    k.audit_postgres = audit.url();
    c
}

/// A `vitalgate` process in cluster mode. Killed on drop.
pub struct GatewayProcess {
    pub name: String,
    pub http: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl GatewayProcess {
    /// Start the binary with `config` (written into `dir` as `{name}.toml`), its
    /// log in `dir/{name}.log` (`RUST_LOG`, or else `vitalgate=info`); returns
    /// once its `/ready` answers 200.
    pub async fn start(mut config: Config, dir: &Path) -> GatewayProcess {
        let name = config.cluster.name.clone();
        let port = super::free_port();
        config.http.bind = format!("127.0.0.1:{port}").parse().unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            toml::to_string(&config).expect("a config serialises"),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "vitalgate=info".into()),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("vitalgate starts");
        let mut gateway = GatewayProcess {
            name,
            http: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some((200, _)) = super::try_http_get(gateway.http, "/ready").await {
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!(
                    "{} exited ({status}):\n{}",
                    gateway.name,
                    gateway.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                gateway.name,
                gateway.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partitions whose leases it holds, as its `/ready` says; `None` if it
    /// does not answer.
    pub async fn partitions(&self) -> Option<Vec<u64>> {
        let (_, body) = super::try_http_get(self.http, "/ready").await?;
        let ready: Value = serde_json::from_str(&body).ok()?;
        ready["cluster"]["partitions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
    }

    /// Wait until its `/ready` names every partition of the cluster.
    pub async fn holds_every_partition(&self) {
        super::eventually(
            || async {
                self.partitions()
                    .await
                    .is_some_and(|p| p.len() == super::nats::PARTITIONS as usize)
            },
            &format!("{} holds every partition", self.name),
        )
        .await
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP, or SIGCONT with `stopped = false`.
    pub fn freeze(&self, stopped: bool) {
        let signal = if stopped { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.freeze(false);
        }
        self.kill();
    }
}

/// What a dashboard received, as its nurse would have seen it.
#[derive(Debug, Default)]
pub struct Watched {
    /// The `seq` of its first snapshot: events after it are owed.
    pub first: Option<u64>,
    /// The `seq` of every alarm frame, in the order received.
    pub alarms: Vec<u64>,
    /// The `seq` of the last event frame (alarm or session) received.
    pub last: u64,
    /// What should never happen: a frame's `seq` not after the one before, a
    /// `missed`, a snapshot on resuming.
    pub wrong: Vec<String>,
    /// Each move to another gateway: (gateway index, time since start).
    pub moves: Vec<(usize, Duration)>,
}

/// A gateway that sends nothing for this long (live vitals of every chair
/// come several times a second) is taken for lost.
const SILENCE: Duration = Duration::from_secs(3);

/// A dashboard of every site on `gateways[first]`, subscribed to live vitals,
/// until `stop`: when its gateway closes, fails or goes quiet for [`SILENCE`],
/// it connects to the next one with `since` and `instance`.
pub fn dashboard(
    gateways: Vec<SocketAddr>,
    first: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Watched> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut watched = Watched::default();
        let mut instance: Option<String> = None;
        let mut at = first;
        while !stop.is_cancelled() {
            let query = match &instance {
                Some(instance) => format!("?since={}&instance={instance}", watched.last),
                None => String::new(),
            };
            let url = format!("ws://{}/ws{query}", gateways[at]);
            let connected = tokio::time::timeout(SILENCE, tokio_tungstenite::connect_async(url));
            let mut ws = match connected.await {
                Ok(Ok((ws, _))) => ws,
                _ => {
                    at = (at + 1) % gateways.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            watched.moves.push((at, started.elapsed()));
            let subscribe = Message::text(r#"{"type":"subscribe_vitals"}"#);
            if ws.send(subscribe).await.is_err() {
                continue;
            }
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return watched,
                    m = tokio::time::timeout(SILENCE, ws.next()) => m,
                };
                let text = match message {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                    Ok(Some(Ok(_))) => continue,
                };
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                take(&mut watched, &mut instance, &frame);
            }
            at = (at + 1) % gateways.len();
        }
        watched
    })
}

/// One frame into what a dashboard saw.
fn take(watched: &mut Watched, instance: &mut Option<String>, frame: &Value) {
    let seq = frame["seq"].as_u64();
    match frame["type"].as_str() {
        Some("snapshot") if instance.is_none() => {
            *instance = frame["instance"].as_str().map(String::from);
            watched.first = seq;
            watched.last = seq.unwrap_or_default();
        }
        Some("snapshot") | Some("missed") => watched
            .wrong
            .push(format!("on resuming after {}: {frame}", watched.last)),
        Some(kind @ ("alarm" | "session")) => {
            let seq = seq.unwrap_or_default();
            if seq <= watched.last {
                watched
                    .wrong
                    .push(format!("{kind} seq {seq} after seq {}", watched.last));
            }
            watched.last = watched.last.max(seq);
            if kind == "alarm" {
                watched.alarms.push(seq);
            }
        }
        _ => {}
    }
}
