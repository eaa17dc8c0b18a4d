//! `--cluster N`: vitalgate's cluster mode under load. A 3-node NATS cluster
//! with JetStream and MQTT, started here on free ports with the shipped
//! partition mapping (`deploy/nats/partitions.conf`), and N gateways in
//! cluster mode on it. Devices publish to the nodes' MQTT listeners (the
//! publishers spread over them), dashboards connect to the gateways (spread
//! over them), each dashboard getting every alarm as in single-node mode.
//!
//! NATS 2.10 or later: `NATS_SERVER`, or `nats-server` on the PATH (README).

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped mapping of device subjects to partitions.
const PARTITIONS_CONF: &str = include_str!("../../deploy/nats/partitions.conf");
/// Its partitions (`partition(16, ...)`), as `cluster.partitions` ships.
const PARTITIONS: usize = 16;

/// A NATS cluster and the gateways on it, stopped on drop.
pub struct Cluster {
    /// Each gateway's HTTP address.
    pub http: Vec<SocketAddr>,
    /// Each node's MQTT port.
    pub mqtt: Vec<u16>,
    /// The gateways' process ids.
    pub gateway_pids: Vec<u32>,
    /// The NATS nodes' process ids.
    pub nats_pids: Vec<u32>,
    gateways: Vec<Child>,
    nodes: Vec<Child>,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nats_bin() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl Cluster {
    /// Start three NATS nodes, wait until their JetStream is up, make the MQTT
    /// listener's stream (a first MQTT client), then `gateways` gateways from
    /// `bin`, each with `env` and its cluster settings, one after the other,
    /// each until `/ready` answers 200.
    pub async fn start(gateways: usize, bin: PathBuf, env: &[(String, String)]) -> Result<Cluster> {
        let run = std::process::id();
        let dir = std::env::temp_dir().join(format!("vitalgate-loadtest-cluster-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("partitions.conf"), PARTITIONS_CONF)?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cluster = Cluster {
            http: Vec::new(),
            mqtt: Vec::new(),
            gateway_pids: Vec::new(),
            nats_pids: Vec::new(),
            gateways: Vec::new(),
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        let mut clients = Vec::new();
        let mut monitors = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (client, mqtt, monitor) = (free_port()?, free_port()?, free_port()?);
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}\n\
                     mqtt {{ listen: 127.0.0.1:{mqtt} }}\n\
                     cluster {{ name: vitalgate-loadtest, listen: 127.0.0.1:{route}, routes: [{route_list}] }}\n\
                     include ./partitions.conf\n",
                    dir.join(format!("store-{name}")).display()
                ),
            )?;
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let child = Command::new(nats_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting nats-server (NATS_SERVER, or nats-server 2.10+ on the PATH)")?;
            cluster.nats_pids.push(child.id());
            cluster.nodes.push(child);
            cluster.mqtt.push(mqtt);
            clients.push(client);
            monitors.push(monitor);
        }
        for monitor in &monitors {
            wait_healthy(([127, 0, 0, 1], *monitor).into()).await?;
        }
        // NATS's MQTT listener makes its stream when a first client connects; a
        // gateway waits for it.
        first_mqtt_client(cluster.mqtt[0]).await?;
        let servers = clients
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(",");
        for g in 0..gateways {
            let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let log = std::fs::File::create(dir.join(format!("gw-{g}.log")))?;
            let mut cmd = Command::new(&bin);
            cmd.env("VITALGATE_HTTP__BIND", http.to_string())
                .env(
                    "VITALGATE_AUDIT__PATH",
                    dir.join(format!("gw-{g}-unused.sqlite3")),
                )
                .env("VITALGATE_CLUSTER__ENABLED", "true")
                .env("VITALGATE_CLUSTER__SERVERS", format!("[{servers}]"))
                .env("VITALGATE_CLUSTER__NAME", format!("loadtest-gw-{g}"))
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(log);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            cluster.gateway_pids.push(child.id());
            let ready = wait_ready(http, &mut child).await;
            cluster.gateways.push(child);
            ready.with_context(|| {
                format!(
                    "gateway {g}; its log: {}",
                    dir.join(format!("gw-{g}.log")).display()
                )
            })?;
            cluster.http.push(http);
        }
        cluster.wait_shared().await?;
        Ok(cluster)
    }

    /// Until every partition is held and none of the gateways holds more than
    /// its share: the first gateway up takes them all and gives them back one
    /// a round as the others join, each pausing its chairs' alarms until its
    /// lease's deadline (docs/cluster.md); a run measured during that would
    /// measure the rebalancing.
    async fn wait_shared(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut held = Vec::new();
            for http in &self.http {
                held.push(partitions_held(*http).await);
            }
            let total: usize = held.iter().map(|h| h.len()).sum();
            let all: std::collections::BTreeSet<u64> = held.iter().flatten().copied().collect();
            let share = all.len().div_ceil(self.http.len().max(1));
            let shared =
                total == all.len() && held.iter().all(|h| !h.is_empty() && h.len() <= share);
            // The partition count is the shipped mapping's: every one must be held.
            if shared && all.len() == PARTITIONS {
                let counts: Vec<usize> = held.iter().map(Vec::len).collect();
                eprintln!("cluster: partitions held per gateway {counts:?}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the gateways did not share the partitions out within 180 s: {held:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stop the gateways (SIGTERM: they give their partitions back), then NATS.
    pub fn stop(&mut self) {
        for child in &self.gateways {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for mut child in self.gateways.drain(..) {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for mut child in self.nodes.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The partitions the gateway at `http` says (`/ready`) it holds.
async fn partitions_held(http: SocketAddr) -> Vec<u64> {
    let Ok((_, body)) = crate::http_get(http, "/ready").await else {
        return Vec::new();
    };
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|ready| {
            ready["cluster"]["partitions"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        })
        .unwrap_or_default()
}

/// Until a node's monitoring says it and its JetStream are up.
async fn wait_healthy(monitor: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = crate::http_get(monitor, "/healthz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("NATS at {monitor} was not healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until the gateway's `/ready` answers 200 (it first waits for the cluster's
/// streams, then for its mirror to read the events stream).
async fn wait_ready(http: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("vitalgate exited during start-up: {status}");
        }
        if let Ok((200, _)) = crate::http_get(http, "/ready").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("vitalgate at {http} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect one MQTT client and leave.
async fn first_mqtt_client(port: u16) -> Result<()> {
    let options = rumqttc::MqttOptions::new(
        format!("vitalgate-loadtest-first-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)) {
                        return Err(anyhow::anyhow!("NATS's MQTT listener refused: {e}"));
                    }
                }
            }
        }
    })
    .await
    .context("NATS's MQTT listener did not accept a client within 30 s")?;
    let _ = client.disconnect().await;
    connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_count_is_the_shipped_mappings() {
        assert!(PARTITIONS_CONF.contains(&format!("{{{{partition({PARTITIONS},")));
    }
}
