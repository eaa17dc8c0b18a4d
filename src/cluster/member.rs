//! One gateway in cluster mode, assembled: its partitions' leases, their
//! readers, the engine journaling into the events stream, the mirror it
//! restores taken partitions from, and the loop that applies device messages.
//!
//! Start-up order, and why: the events stream and every partition's consumer
//! exist before anything is read (a device message nobody is interested in is
//! not kept, see [`super::streams`]); the mirror reads before any partition is
//! taken (a take restores from it); the engine's journal publishes under the
//! leases the ownership loop publishes.

use super::apply::{self, Applied, Partitions};
use super::feed::FeedError;
use super::intake::{self, ReadSettings};
use super::journal::StreamJournal;
use super::keeper::Keeper;
use super::lease::{LeaseTimes, Leases};
use super::mirror::Mirror;
use super::ownership::{self, Owned, OwnershipSettings};
use super::snapshots::Snapshots;
use super::{connect_client, events, once_answered, streams, unanswered, ClusterError};
use crate::core::DecodeLimits;
use crate::engine::{self, Engine, Journal, Outlet};
use crate::health::Health;
use crate::ingest::Devices;
use async_nats::jetstream::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How a gateway takes part in the cluster.
#[derive(Debug, Clone)]
pub struct MemberSettings {
    /// NATS servers to connect to (any of them: the client learns the others).
    pub servers: Vec<String>,
    /// This gateway's name, unique in the cluster: its leases carry it.
    pub name: String,
    /// Partitions of the shipped mapping (`deploy/nats/partitions.conf`).
    pub partitions: u32,
    pub lease: LeaseTimes,
    /// How often leases are renewed and shares reconsidered.
    pub round: Duration,
    /// Copies of every stream, bucket and durable consumer this gateway makes
    /// (3 on a 3-node cluster).
    pub replicas: usize,
    /// Device messages read ahead of the engine.
    pub read_ahead: usize,
    /// How often changed chairs' snapshots are stored.
    pub snapshot_every: Duration,
}

impl MemberSettings {
    /// The settings `[cluster]` gives.
    pub fn from_config(c: &crate::config::ClusterConfig) -> MemberSettings {
        MemberSettings {
            servers: c.servers.clone(),
            name: c.name.clone(),
            partitions: c.partitions,
            lease: LeaseTimes {
                ttl: Duration::from_millis(c.lease_ms),
                margin: Duration::from_millis(c.lease_margin_ms),
            },
            round: Duration::from_millis(c.round_ms),
            replicas: c.replicas,
            read_ahead: c.read_ahead,
            snapshot_every: Duration::from_millis(c.snapshot_ms),
        }
    }
}

/// What the device messages are checked against (as in single-node mode).
pub struct DeviceChecks {
    pub decode_limits: DecodeLimits,
    /// `session.max_message_bytes`.
    pub session_max_bytes: usize,
    pub health: Arc<Health>,
}

/// Where a member's output goes.
pub struct Outlets {
    /// The engine's: live vitals. Its events go to the events stream, and reach
    /// dashboards from there.
    pub engine: Arc<dyn Outlet>,
    /// This gateway's dashboards: every event read from the stream, and how
    /// many of the latest are kept for dashboards resuming with `since`.
    pub dashboards: Option<(Arc<dyn Outlet>, usize)>,
}

/// A running member.
pub struct Member {
    pub client: async_nats::Client,
    pub js: Context,
    /// The device path's handle (what `/ready` and `/metrics` read).
    pub devices: Arc<Devices>,
    /// The partitions held now.
    pub owned: watch::Receiver<Owned>,
    /// The partitions whose chairs the engine holds now: handed over and
    /// restored (commands for a chair wait for this).
    pub settled: watch::Receiver<std::collections::BTreeSet<u32>>,
    pub engine: Engine,
    pub mirror: Arc<Mirror>,
    stop: CancellationToken,
    leave: CancellationToken,
    ownership: tokio::task::JoinHandle<()>,
    engine_running: engine::Running,
}

/// Start a member. `wrap` may replace the stream journal (tests of a failing
/// one); `applied` hears what became of each device message.
pub async fn start(
    settings: &MemberSettings,
    parts: engine::Parts,
    checks: DeviceChecks,
    outlets: Outlets,
    wrap: impl FnOnce(StreamJournal) -> Box<dyn Journal>,
    applied: Option<mpsc::UnboundedSender<Applied>>,
) -> Result<Member, ClusterError> {
    if !parts.ward.derives_alarm_ids() {
        // Without them, a partition's next owner evaluating a reading again
        // raises its alarm a second time under another id.
        return Err(ClusterError::Engine(
            "alarm ids derived from what raised them (Ward::with_derived_alarm_ids)",
        ));
    }
    let client = connect_client(&settings.servers, &settings.name).await?;
    let js = async_nats::jetstream::new(client.clone());
    let replicas = settings.replicas;
    once_answered("the events stream does not answer yet", unanswered, || {
        events::stream(&js, replicas)
    })
    .await?;
    let read = ReadSettings::for_leases(settings.lease, replicas);
    // The MQTT listener's stream appears once a first MQTT client connects to
    // the cluster: on a new cluster the gateway waits for its first device.
    once_answered(
        "cannot make the partitions' consumers yet (on a new cluster: no MQTT client has \
         connected to it, so its MQTT stream does not exist)",
        |e| !matches!(e, ClusterError::ConsumerSettings(_)),
        || streams::partition_consumers(&js, settings.partitions, replicas, read.ack_wait),
    )
    .await?;
    let stop = CancellationToken::new();
    let (to_dashboards, replay_capacity) = match outlets.dashboards {
        Some((outlet, capacity)) => (Some(outlet), capacity),
        None => (None, 0),
    };
    let leases = once_answered("the lease bucket does not answer yet", unanswered, || {
        Leases::open(&js, &settings.name, settings.lease, replicas)
    })
    .await?;
    let mirror = once_answered(
        "cannot read the events stream yet",
        |e: &FeedError| {
            matches!(
                e,
                FeedError::Read(_) | FeedError::Cluster(ClusterError::JetStream { .. })
            )
        },
        || Mirror::start(&js, stop.clone(), replay_capacity, to_dashboards.clone()),
    )
    .await
    .map(Arc::new)
    .map_err(|e| ClusterError::js("starting the mirror", e))?;
    let ownership = ownership::start(
        &js,
        leases,
        &settings.name,
        OwnershipSettings {
            partitions: settings.partitions,
            round: settings.round,
            replicas,
            released_after: read.due_after_stop(),
        },
        parts.metrics.cluster(),
        stop.clone(),
    )
    .await?;
    let journal = StreamJournal::new(
        js.clone(),
        tokio::runtime::Handle::current(),
        ownership.owned.clone(),
        settings.partitions,
    );
    let metrics = parts.metrics.clone();
    let (receipts, _) = mpsc::unbounded_channel();
    let (engine, engine_running) =
        Engine::start(parts, wrap(journal), outlets.engine, receipts, |_| {});
    let devices = Arc::new(Devices {
        engine: engine.clone(),
        topics: apply::topics(),
        decode_limits: checks.decode_limits,
        session_max_bytes: checks.session_max_bytes,
        metrics,
        health: checks.health,
    });
    let (to_apply, from_intake) = mpsc::channel(settings.read_ahead.max(1));
    let owned = ownership.owned;
    let leave = ownership.leave;
    let cluster_metrics = devices.metrics.cluster();
    cluster_metrics
        .partitions
        .set(f64::from(settings.partitions));
    intake::start(
        js.clone(),
        owned.clone(),
        read,
        to_apply,
        cluster_metrics.deliveries_missed.clone(),
        stop.clone(),
    );
    // Snapshots on a connection of their own: a round's burst of writes does
    // not queue ahead of events and pulls on the gateway's main connection.
    let snapshots_js = async_nats::jetstream::new(
        connect_client(&settings.servers, &format!("{}-snapshots", settings.name)).await?,
    );
    let keeper = Arc::new(Keeper::new(
        Arc::new(
            once_answered(
                "the snapshot bucket does not answer yet",
                unanswered,
                || {
                    Snapshots::open(
                        &snapshots_js,
                        replicas,
                        settings.partitions,
                        cluster_metrics.snapshots_unreadable.clone(),
                    )
                },
            )
            .await?,
        ),
        cluster_metrics,
    ));
    let partitions = Partitions {
        owned: owned.clone(),
        changes: ownership.changes,
        count: settings.partitions,
        restore_from: Some(mirror.clone()),
        let_go: Some(ownership.let_go),
        keeper: Some(keeper.clone()),
    };
    let (_, settled) = apply::start(
        devices.clone(),
        from_intake,
        partitions,
        applied,
        stop.clone(),
    );
    keeper.start(
        engine.clone(),
        settled.clone(),
        owned.clone(),
        settings.snapshot_every,
        stop.clone(),
    );
    Ok(Member {
        client,
        js,
        devices,
        settled,
        owned,
        engine,
        mirror,
        stop,
        leave,
        ownership: ownership.task,
        engine_running,
    })
}

impl Member {
    /// A clean stop: readers stop, every partition is given back and released
    /// once the device path has let it go (its chairs handed over, their events
    /// journaled, its unacknowledged messages due to the next owner), then the
    /// rest stops and the engine journals what it made.
    pub async fn stop(self) {
        self.leave.cancel();
        let _ = self.ownership.await;
        self.stop.cancel();
        self.engine.close();
        self.engine_running.finished().await;
    }
}
