//! Dashboards in cluster mode: any gateway serves any dashboard.
//!
//! - **Events** come from the events stream through this gateway's
//!   [`Mirror`]: a snapshot of what the stream says (sessions, open alarms) at
//!   its `seq`, or the events after a `since`, then every later event of the
//!   dashboard's sites exactly once. `seq` is the stream's, the same on every
//!   gateway, so a dashboard resumes on another gateway with the `since` it had.
//!   A `since` older than the events the mirror keeps is served from the
//!   stream (up to `cluster.since_from_stream_max` events).
//! - **Commands** (acknowledge, session, limits) are taken by the gateway
//!   owning the chair's partition: each is a NATS request on
//!   `vitalgate.command.{partition}`, which only the gateway holding the
//!   partition's chairs listens to ([`serve_commands`]); it answers after the
//!   events the command made are in the stream (`not_journaled` if they could
//!   not be). With no owner (a takeover under way) the dashboard is told
//!   `no_owner` at once and may send it again; with no answer in time, `no_answer`
//!   (the command may or may not have been applied).

use super::feed::Feed;
use super::mirror::{Earlier, Mirror};
use super::ownership::Owned;
use super::partition_of;
use crate::access::SiteScope;
use crate::core::{LimitOverride, SessionUpdate};
use crate::fanout::backend::{Answer, Backend, EngineBackend, Refusal};
use crate::fanout::hub::{Hub, Start, Subscriber};
use crate::protocol::Frame;
use async_nats::RequestErrorKind;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Commands go to `vitalgate.command.{partition}`.
pub const COMMANDS_PREFIX: &str = "vitalgate.command";
/// Longest a dashboard's command waits for the owner's answer: longer than a
/// commit to the events stream takes while its leader moves (4-9 s).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(12);

/// Longest a dashboard resuming with a `since` this gateway has not read yet
/// waits for it (then it gets `missed` and a snapshot).
const SINCE_WAIT: Duration = Duration::from_secs(5);

/// Longest a dashboard resuming further back than this gateway keeps in memory
/// waits for its events from the stream (its turn included).
const STREAM_READ_LIMIT: Duration = Duration::from_secs(30);
/// Dashboards' reads from the stream at once, per gateway: each holds its
/// events in memory until they are sent.
const STREAM_READERS: usize = 2;

/// A command on its way to the chair's owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Routed {
    Ack {
        id: u64,
        chair: String,
        by: String,
        now_ms: u64,
        /// The dashboard's sites; absent: all.
        sites: Option<Vec<String>>,
    },
    Session {
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
    },
    Limit {
        chair: String,
        rule: String,
        limits: LimitOverride,
        by: String,
        now_ms: u64,
    },
}

impl Routed {
    fn chair(&self) -> &str {
        match self {
            Routed::Ack { chair, .. }
            | Routed::Session { chair, .. }
            | Routed::Limit { chair, .. } => chair,
        }
    }
}

/// What a dashboard's connection asks of a gateway in cluster mode.
pub struct ClusterBackend {
    pub client: async_nats::Client,
    pub mirror: Arc<Mirror>,
    pub hub: Arc<Hub>,
    pub partitions: u32,
    /// `cluster.since_from_stream_max`.
    pub since_from_stream_max: usize,
}

impl ClusterBackend {
    /// Send `command` to its chair's owner and wait for the answer.
    fn route(&self, command: Routed) -> Answer<Result<(), Refusal>> {
        let client = self.client.clone();
        let subject = format!(
            "{COMMANDS_PREFIX}.{}",
            partition_of(command.chair(), self.partitions)
        );
        Box::pin(async move {
            let body = serde_json::to_vec(&command).expect("a command serialises");
            let request = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(COMMAND_TIMEOUT));
            match client.send_request(subject, request).await {
                Ok(answer) => serde_json::from_slice::<Result<(), Refusal>>(&answer.payload)
                    .unwrap_or_else(|e| {
                        Err(Refusal::new(
                            "internal",
                            format!("the chair's gateway answered unreadably: {e}"),
                        ))
                    }),
                Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(Refusal::new(
                    "no_answer",
                    format!(
                        "the chair's gateway did not answer within {COMMAND_TIMEOUT:?}: the \
                         command may or may not have been applied; look before sending it again"
                    ),
                )),
                Err(e) => Err(no_owner(e)),
            }
        })
    }
}

impl Backend for ClusterBackend {
    fn subscribe(&self, start: Start, subscriber: Subscriber) -> Answer<Option<Vec<Frame>>> {
        let (mirror, hub) = (self.mirror.clone(), self.hub.clone());
        let (client, max) = (self.client.clone(), self.since_from_stream_max);
        Box::pin(async move {
            let scope = subscriber.scope.clone();
            let mut earlier = None;
            if let Start::Since { since, instance } = &start {
                if instance.as_deref().is_none_or(|i| i == mirror.instance()) {
                    // A dashboard coming from a gateway that had read further: its
                    // `since` is served exactly once this one has read as far.
                    mirror.reached(*since, SINCE_WAIT).await;
                    if !mirror.can_replay(*since) {
                        earlier = from_stream(client, &mirror, &scope, *since, max).await;
                    }
                }
            }
            let mut first = None;
            let then = |initial| {
                hub.register(subscriber);
                first = Some(initial);
            };
            match earlier {
                Some(earlier) => mirror.subscribe_after(earlier, &scope, then),
                None => mirror.subscribe(start, &scope, then),
            }
            first
        })
    }

    fn unsubscribe(&self, id: u64) {
        self.hub.unsubscribe(id);
    }

    fn snapshot(&self, id: u64, scope: SiteScope) -> Answer<bool> {
        let hub = self.hub.clone();
        self.mirror
            .snapshot(&scope, |frame| hub.deliver_to(id, &frame));
        Box::pin(async { true })
    }

    fn acknowledge(
        &self,
        id: u64,
        by: String,
        now_ms: u64,
        scope: SiteScope,
    ) -> Answer<Result<(), Refusal>> {
        let Some(chair) = self.mirror.chair_of_alarm(id) else {
            return Box::pin(async move { Err(crate::core::AckError::UnknownAlarm(id).into()) });
        };
        let sites =
            (!scope.is_all()).then(|| scope.sites().into_iter().map(String::from).collect());
        self.route(Routed::Ack {
            id,
            chair,
            by,
            now_ms,
            sites,
        })
    }

    fn set_session(
        &self,
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
    ) -> Answer<Result<(), Refusal>> {
        self.route(Routed::Session {
            chair,
            update,
            now_ms,
        })
    }

    fn set_limit(
        &self,
        chair: String,
        rule: String,
        limits: LimitOverride,
        by: String,
        now_ms: u64,
    ) -> Answer<Result<(), Refusal>> {
        self.route(Routed::Limit {
            chair,
            rule,
            limits,
            by,
            now_ms,
        })
    }
}

/// Answer the commands for the partitions whose chairs this gateway's engine
/// holds (`settled`: handed over and restored) with that engine (`local`),
/// until `stop`: one subscription per such partition, so that a command for a
/// partition nobody holds is told so at once (NATS answers "no responders").
/// A command arriving once the lease has lapsed here (`owned`) is refused with
/// `no_owner`.
pub fn serve_commands(
    client: async_nats::Client,
    local: EngineBackend,
    mut settled: watch::Receiver<BTreeSet<u32>>,
    owned: watch::Receiver<Owned>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving: BTreeMap<u32, CancellationToken> = BTreeMap::new();
        loop {
            let now: BTreeSet<u32> = settled.borrow_and_update().clone();
            serving.retain(|p, token| {
                let keep = now.contains(p);
                if !keep {
                    token.cancel();
                }
                keep
            });
            for p in now {
                if serving.contains_key(&p) {
                    continue;
                }
                match client.subscribe(format!("{COMMANDS_PREFIX}.{p}")).await {
                    Ok(requests) => {
                        let token = stop.child_token();
                        let partition = Partition {
                            number: p,
                            local: local.clone(),
                            client: client.clone(),
                            owned: owned.clone(),
                        };
                        tokio::spawn(partition.serve(requests, token.clone()));
                        serving.insert(p, token);
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "cannot take commands"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = settled.changed() => if changed.is_err() { return },
            }
        }
    })
}

/// The commands of one partition, as its owner takes them.
struct Partition {
    number: u32,
    local: EngineBackend,
    client: async_nats::Client,
    owned: watch::Receiver<Owned>,
}

impl Partition {
    async fn serve(self, mut requests: async_nats::Subscriber, stop: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let request = tokio::select! {
                _ = stop.cancelled() => return,
                request = requests.next() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let Some(reply_to) = request.reply.clone() else {
                continue;
            };
            let this = this.clone();
            tokio::spawn(async move {
                let answer = match serde_json::from_slice::<Routed>(&request.payload) {
                    Ok(_) if !this.holds() => Err(no_owner("its lease here has lapsed")),
                    Ok(command) => run(&this.local, command).await,
                    Err(e) => Err(Refusal::new("bad_command", format!("unreadable: {e}"))),
                };
                let body = serde_json::to_vec(&answer).expect("an answer serialises");
                if let Err(e) = this.client.publish(reply_to, body.into()).await {
                    tracing::warn!(error = %e, "cannot answer a routed command");
                }
            });
        }
    }

    /// Whether this gateway's lease on the partition holds now.
    fn holds(&self) -> bool {
        self.owned
            .borrow()
            .get(&self.number)
            .is_some_and(|until| tokio::time::Instant::now() < *until)
    }
}

/// The events of `scope` after `since` up to the last one `mirror` has read,
/// from the events stream: `None` if `since` is not before that, if that is
/// more than `max` events, if the stream no longer holds them all, or if they
/// cannot be read within [`STREAM_READ_LIMIT`] (the dashboard then gets
/// `missed` and a snapshot). At most [`STREAM_READERS`] such reads run at once
/// per gateway (dashboards of a lost gateway all come at once).
async fn from_stream(
    client: async_nats::Client,
    mirror: &Mirror,
    scope: &SiteScope,
    since: u64,
    max: usize,
) -> Option<Earlier> {
    static READERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STREAM_READERS);
    let upto = mirror.read_up_to();
    if since >= upto || upto - since > max as u64 {
        return None;
    }
    let js = async_nats::jetstream::new(client);
    let read = async {
        let _turn = READERS.acquire().await.ok()?;
        // Every sequence is read (and checked), out-of-scope ones skipped
        // here: a single site's subject would not show where `upto` is.
        let mut feed = Feed::open_every_site(&js, scope.clone(), since)
            .await
            .ok()?;
        match feed.read_until(upto).await {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::info!(since, upto, error = %e, "a dashboard's missed events are not all in the stream");
                None
            }
        }
    };
    match tokio::time::timeout(STREAM_READ_LIMIT, read).await {
        Ok(Some(events)) => Some(Earlier {
            asked: since,
            upto,
            frames: events.into_iter().map(|e| e.frame).collect(),
        }),
        Ok(None) => None,
        Err(_) => {
            tracing::warn!(
                since,
                upto,
                "a dashboard's missed events not read from the stream in time"
            );
            None
        }
    }
}

fn no_owner(why: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        "no_owner",
        format!(
            "no gateway holds this chair's partition right now ({why}); a takeover takes \
             about the cluster's lease time: send it again"
        ),
    )
}

/// Run a routed command on this gateway's engine; its answer, once its events
/// are journaled.
async fn run(local: &EngineBackend, command: Routed) -> Result<(), Refusal> {
    match command {
        Routed::Ack {
            id,
            by,
            now_ms,
            sites,
            ..
        } => {
            let scope = sites.map_or_else(SiteScope::all, SiteScope::only);
            local.acknowledge(id, by, now_ms, scope).await
        }
        Routed::Session {
            chair,
            update,
            now_ms,
        } => local.set_session(chair, update, now_ms).await,
        Routed::Limit {
            chair,
            rule,
            limits,
            by,
            now_ms,
        } => local.set_limit(chair, rule, limits, by, now_ms).await,
    }
}
