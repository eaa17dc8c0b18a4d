//! The system under test: a vitalgate this harness starts (with the embedded broker,
//! a private tuned Mosquitto, or an existing broker), or one already running.

use crate::cluster::Cluster;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the broker comes from when the harness starts the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The gateway's embedded broker.
    Embedded,
    /// A private Mosquitto started by the harness, tuned for load.
    Mosquitto,
    /// An existing broker.
    At(String, u16),
}

impl std::str::FromStr for Broker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Broker::Embedded),
            "mosquitto" => Ok(Broker::Mosquitto),
            other => {
                let (host, port) = other
                    .rsplit_once(':')
                    .ok_or("expected embedded, mosquitto or host:port")?;
                let port = port.parse().map_err(|_| format!("bad port in {other}"))?;
                Ok(Broker::At(host.to_string(), port))
            }
        }
    }
}

pub struct Target {
    /// The gateway's HTTP address (`/ws`, `/ready`, `/metrics`).
    pub http: SocketAddr,
    /// Where devices publish.
    pub broker: (String, u16),
    /// First topic level devices publish under.
    pub topic_prefix: String,
    /// The gateway process, for CPU and memory figures.
    pub pid: Option<u32>,
    gateway: Option<Child>,
    /// The audit trail of a gateway started here, removed when the target is
    /// dropped unless kept ([`Target::keep_audit`]).
    audit: Option<PathBuf>,
    mosquitto: Option<(Child, PathBuf)>,
    /// The gateway's MQTT client id, whose persistent session is removed afterwards
    /// from a shared broker.
    pub session_to_purge: Option<String>,
    /// With `--cluster`: the NATS cluster and its gateways.
    pub cluster: Option<Cluster>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Start a private Mosquitto with the settings the no-loss promise needs.
/// `loadtest/broker.sh` starts one with the same settings for the scripts: keep
/// them in step.
fn start_mosquitto() -> Result<(Child, PathBuf, u16)> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("vitalgate-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 1000\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"
        ),
    )?;
    let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    wait_listening(([127, 0, 0, 1], port).into(), "mosquitto")?;
    Ok((child, dir, port))
}

fn vitalgate_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("vitalgate");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "no vitalgate binary next to {}; build it (cargo build --release) or pass --vitalgate-bin",
        me.display()
    )
}

impl Target {
    /// Use a gateway that is already running.
    pub fn attach(
        http: SocketAddr,
        broker: Broker,
        prefix: String,
        pid: Option<u32>,
    ) -> Result<Target> {
        let Broker::At(host, port) = broker else {
            bail!("with --gateway, --broker must be the host:port devices publish to");
        };
        Ok(Target {
            http,
            broker: (host, port),
            topic_prefix: prefix,
            pid,
            gateway: None,
            audit: None,
            mosquitto: None,
            session_to_purge: None,
            cluster: None,
        })
    }

    /// Only a broker, for the floor measurement: a private Mosquitto, or an existing
    /// broker. `pid` is the private broker's, for its CPU and memory.
    pub fn broker_only(broker: Broker) -> Result<Target> {
        let (broker_addr, mosquitto, pid) = match broker {
            Broker::Embedded => bail!("--floor needs --broker mosquitto or --broker host:port"),
            Broker::Mosquitto => {
                let (child, dir, port) = start_mosquitto()?;
                let pid = child.id();
                (
                    ("127.0.0.1".to_string(), port),
                    Some((child, dir)),
                    Some(pid),
                )
            }
            Broker::At(host, port) => ((host, port), None, None),
        };
        Ok(Target {
            http: ([127, 0, 0, 1], 0).into(),
            broker: broker_addr,
            topic_prefix: format!("loadtest{}", std::process::id()),
            pid,
            gateway: None,
            audit: None,
            mosquitto,
            session_to_purge: None,
            cluster: None,
        })
    }

    /// Start a gateway (and a broker, if asked) and wait until it is ready.
    pub async fn start(
        broker: Broker,
        bin: Option<PathBuf>,
        extra_env: &[(String, String)],
    ) -> Result<Target> {
        let bin = vitalgate_binary(bin)?;
        let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let run = std::process::id();
        let client_id = format!("vitalgate-loadtest-{run}");
        // An audit trail of its own in the temp dir, removed on drop. One left by
        // an earlier run with the same process id (killed before it could remove
        // it) would bring back that run's sessions and alarms: start afresh.
        let audit = std::env::temp_dir().join(format!("vitalgate-loadtest-{run}-audit.sqlite3"));
        remove_audit(&audit);
        let mut cmd = Command::new(&bin);
        cmd.env("VITALGATE_HTTP__BIND", http.to_string())
            .env("VITALGATE_AUDIT__PATH", &audit)
            .env("VITALGATE_MQTT__CLIENT_ID", &client_id)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut mosquitto = None;
        let mut session_to_purge = None;
        let (broker_addr, prefix) = match broker {
            Broker::Embedded => {
                let port = free_port()?;
                cmd.env("VITALGATE_MQTT__BROKER", "embedded").env(
                    "VITALGATE_MQTT__EMBEDDED__BIND",
                    format!("127.0.0.1:{port}"),
                );
                (("127.0.0.1".to_string(), port), "clinic".to_string())
            }
            Broker::Mosquitto => {
                let (child, dir, port) = start_mosquitto()?;
                mosquitto = Some((child, dir));
                cmd.env("VITALGATE_MQTT__BROKER", "external")
                    .env("VITALGATE_MQTT__HOST", "127.0.0.1")
                    .env("VITALGATE_MQTT__PORT", port.to_string());
                (("127.0.0.1".to_string(), port), "clinic".to_string())
            }
            Broker::At(host, port) => {
                // A shared broker: a topic prefix of our own, and our session removed after.
                let prefix = format!("loadtest{run}");
                cmd.env("VITALGATE_MQTT__BROKER", "external")
                    .env("VITALGATE_MQTT__HOST", &host)
                    .env("VITALGATE_MQTT__PORT", port.to_string())
                    .env(
                        "VITALGATE_MQTT__TOPIC",
                        format!("{prefix}/+/chair/+/vitals"),
                    );
                session_to_purge = Some(client_id.clone());
                ((host, port), prefix)
            }
        };
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut target = Target {
            http,
            broker: broker_addr,
            topic_prefix: prefix,
            pid: Some(pid),
            gateway: Some(child),
            audit: Some(audit),
            mosquitto,
            session_to_purge,
            cluster: None,
        };
        target.wait_ready().await?;
        Ok(target)
    }

    /// Start a NATS cluster and `gateways` gateways in cluster mode on it
    /// ([`Cluster`]).
    pub async fn start_cluster(
        gateways: usize,
        bin: Option<PathBuf>,
        extra_env: &[(String, String)],
    ) -> Result<Target> {
        let cluster = Cluster::start(gateways, vitalgate_binary(bin)?, extra_env).await?;
        Ok(Target {
            http: cluster.http[0],
            broker: ("127.0.0.1".into(), cluster.mqtt[0]),
            // The cluster's device topics (the shipped NATS mapping's).
            topic_prefix: "clinic".into(),
            pid: None,
            gateway: None,
            audit: None,
            mosquitto: None,
            session_to_purge: None,
            cluster: Some(cluster),
        })
    }

    /// Where dashboard `i` connects: gateway `i mod N` of a cluster.
    pub fn dashboard_http(&self, i: usize) -> SocketAddr {
        match &self.cluster {
            Some(c) => c.http[i % c.http.len()],
            None => self.http,
        }
    }

    /// Where publisher `i` publishes: NATS node `i mod 3` of a cluster.
    pub fn broker_for(&self, i: usize) -> (String, u16) {
        match &self.cluster {
            Some(c) => ("127.0.0.1".into(), c.mqtt[i % c.mqtt.len()]),
            None => self.broker.clone(),
        }
    }

    /// The gateway processes (for CPU and memory).
    pub fn gateway_pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(c) => c.gateway_pids.clone(),
            None => self.pid.into_iter().collect(),
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.gateway.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("vitalgate exited during start-up: {status}");
                }
            }
            if matches!(crate::http_get(self.http, "/ready").await, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("vitalgate at {} was not ready within 30 s", self.http);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop what the harness started: SIGTERM to the gateway (it drains and exits),
    /// then the private broker.
    pub fn stop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            cluster.stop();
        }
        if let Some(mut child) = self.gateway.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((mut child, dir)) = self.mosquitto.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Keep the gateway's audit trail after the run (a run that lost something):
    /// its path, if the harness started the gateway.
    pub fn keep_audit(&mut self) -> Option<PathBuf> {
        self.audit.take()
    }
}

/// Remove an audit trail file with its WAL and shared-memory files.
fn remove_audit(audit: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = audit.to_path_buf().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
        if let Some(audit) = self.audit.take() {
            remove_audit(&audit);
        }
    }
}

/// CPU and memory of a process, from /proc.
pub struct ProcSampler {
    pid: u32,
    ticks_per_s: f64,
    start_ticks: u64,
    start: Instant,
    pub max_rss_kib: u64,
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl ProcSampler {
    pub fn start(pid: u32) -> Option<ProcSampler> {
        let ticks_per_s = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Some(ProcSampler {
            pid,
            ticks_per_s,
            start_ticks: cpu_ticks(pid)?,
            start: Instant::now(),
            max_rss_kib: rss_kib(pid)?,
        })
    }

    /// Record the current RSS; returns it in KiB.
    pub fn sample(&mut self) -> u64 {
        let rss = rss_kib(self.pid).unwrap_or(0);
        self.max_rss_kib = self.max_rss_kib.max(rss);
        rss
    }

    /// CPU use since `start`, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        let ticks = cpu_ticks(self.pid).unwrap_or(self.start_ticks) - self.start_ticks;
        100.0 * ticks as f64 / self.ticks_per_s / self.start.elapsed().as_secs_f64()
    }
}
