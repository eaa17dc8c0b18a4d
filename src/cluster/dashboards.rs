//! Dashboards in cluster mode: any gateway serves any dashboard.
//!
//! - **Events** come from the events stream through this gateway's
//!   [`Mirror`]: a snapshot of what the stream says (sessions, open alarms) at
//!   its `seq`, or the events after a `since`, then every later event of the
//!   dashboard's sites exactly once. `seq` is the stream's, the same on every
//!   gateway, so a dashboard resumes on another gateway with the `since` it had.
//! - **Commands** (acknowledge, session, limits) are taken by the gateway
//!   owning the chair's partition: each is a NATS request on
//!   `vitalgate.command.{partition}`, which every gateway listens to and only
//!   the partition's owner answers ([`serve_commands`]), after the events the
//!   command made are in the stream. With no owner (a takeover under way) the
//!   dashboard is told `no_owner` and may send it again.

use super::mirror::Mirror;
use super::ownership::Owned;
use super::partition_of;
use crate::access::SiteScope;
use crate::core::{LimitOverride, SessionUpdate};
use crate::fanout::backend::{Answer, Backend, EngineBackend, Refusal};
use crate::fanout::hub::{Hub, Start, Subscriber};
use crate::protocol::Frame;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Commands go to `vitalgate.command.{partition}`.
pub const COMMANDS_PREFIX: &str = "vitalgate.command";
/// Longest a dashboard's command waits for the owner's answer: longer than a
/// commit to the events stream takes while its leader moves (4-9 s).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(12);

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
                Err(e) => Err(Refusal::new(
                    "no_owner",
                    format!(
                        "no gateway holds this chair's partition right now ({e}); a takeover \
                         takes about the cluster's lease time: send it again"
                    ),
                )),
            }
        })
    }
}

impl Backend for ClusterBackend {
    fn subscribe(&self, start: Start, subscriber: Subscriber) -> Answer<Option<Vec<Frame>>> {
        let scope = subscriber.scope.clone();
        let hub = self.hub.clone();
        let mut first = None;
        self.mirror.subscribe(start, &scope, |initial| {
            hub.register(subscriber);
            first = Some(initial);
        });
        Box::pin(async move { first })
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

/// Answer the commands for the partitions this gateway owns (in `owned`) with
/// its engine (`local`), until `stop`. A command for a partition owned
/// elsewhere, or whose lease has lapsed here, is left to its owner.
pub async fn serve_commands(
    client: async_nats::Client,
    local: EngineBackend,
    owned: watch::Receiver<Owned>,
    partitions: u32,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, super::ClusterError> {
    let mut requests = client
        .subscribe(format!("{COMMANDS_PREFIX}.*"))
        .await
        .map_err(|e| super::ClusterError::js("listening for dashboards' commands", e))?;
    Ok(tokio::spawn(async move {
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
            let Ok(command) = serde_json::from_slice::<Routed>(&request.payload) else {
                tracing::warn!(subject = %request.subject, "an unreadable routed command");
                continue;
            };
            let partition = partition_of(command.chair(), partitions);
            let holds = owned
                .borrow()
                .get(&partition)
                .is_some_and(|until| tokio::time::Instant::now() < *until);
            if !holds {
                continue;
            }
            let (local, client) = (local.clone(), client.clone());
            tokio::spawn(async move {
                let answer = run(&local, command).await;
                let body = serde_json::to_vec(&answer).expect("an answer serialises");
                if let Err(e) = client.publish(reply_to, body.into()).await {
                    tracing::warn!(error = %e, "cannot answer a routed command");
                }
            });
        }
    }))
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
