//! What a dashboard's connection asks of the gateway: its events (first frames,
//! then every later event of its sites exactly once, in `seq` order) and what
//! its commands do. A single gateway answers from its engine
//! ([`EngineBackend`]); in cluster mode the events come from the cluster's
//! events stream and commands go to the gateway owning the chair (the cluster
//! module's `dashboards`).

use super::hub::{Hub, Start, Subscriber};
use super::protocol::Frame;
use crate::access::SiteScope;
use crate::core::{AckError, LimitOverride, SessionUpdate, WardError};
use crate::engine::{Command, Engine};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A command's answer, once its events are released.
pub type Answer<T> = BoxFuture<'static, T>;

/// A command refused: what the dashboard is told (an `error` frame).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<AckError> for Refusal {
    fn from(e: AckError) -> Refusal {
        Refusal::new(e.code(), e.to_string())
    }
}

impl From<WardError> for Refusal {
    fn from(e: WardError) -> Refusal {
        Refusal::new(e.code(), e.to_string())
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Start `subscriber` at `start`: the frames it gets first (a snapshot, or
    /// the events after `since`); every later event of its scope then reaches
    /// its queue exactly once. `None` while the gateway shuts down.
    fn subscribe(&self, start: Start, subscriber: Subscriber) -> Answer<Option<Vec<Frame>>>;

    /// Stop delivering to subscriber `id`.
    fn unsubscribe(&self, id: u64);

    /// Queue a snapshot of `scope` for subscriber `id`, in order with its
    /// events. False while the gateway shuts down.
    fn snapshot(&self, id: u64, scope: SiteScope) -> Answer<bool>;

    /// Acknowledge alarm `id` for `by`, within `scope`.
    fn acknowledge(
        &self,
        id: u64,
        by: String,
        now_ms: u64,
        scope: SiteScope,
    ) -> Answer<Result<(), Refusal>>;

    /// Change `chair`'s session.
    fn set_session(
        &self,
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
    ) -> Answer<Result<(), Refusal>>;

    /// Change one rule's limits for `chair`.
    fn set_limit(
        &self,
        chair: String,
        rule: String,
        limits: LimitOverride,
        by: String,
        now_ms: u64,
    ) -> Answer<Result<(), Refusal>>;
}

/// A single gateway: the engine holds every chair; the hub delivers what its
/// journal thread releases. (In cluster mode, what runs the commands routed to
/// the gateway owning a chair.)
#[derive(Clone)]
pub struct EngineBackend {
    pub engine: Engine,
    pub hub: Arc<Hub>,
}

impl EngineBackend {
    /// A change to the ward: answered once its events are released.
    fn change(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), WardError>>) -> Command + Send + 'static,
    ) -> Answer<Result<(), Refusal>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            engine
                .ask(command)
                .await
                .unwrap_or(Err(WardError::ShuttingDown))?;
            Ok(())
        })
    }
}

impl Backend for EngineBackend {
    fn subscribe(&self, start: Start, subscriber: Subscriber) -> Answer<Option<Vec<Frame>>> {
        let (engine, hub) = (self.engine.clone(), self.hub.clone());
        Box::pin(async move {
            // Registered with the hub by the engine's journal thread, in order
            // with events: every event after the first frames reaches the queue
            // exactly once.
            let (first_tx, first_rx) = oneshot::channel();
            let subscribe = Command::Subscribe {
                start,
                scope: subscriber.scope.clone(),
                then: Box::new(move |initial| {
                    hub.register(subscriber);
                    let _ = first_tx.send(initial);
                }),
            };
            engine.send(subscribe).await.ok()?;
            first_rx.await.ok()
        })
    }

    fn unsubscribe(&self, id: u64) {
        self.hub.unsubscribe(id);
    }

    fn snapshot(&self, id: u64, scope: SiteScope) -> Answer<bool> {
        let (engine, hub) = (self.engine.clone(), self.hub.clone());
        Box::pin(async move {
            let command = Command::Snapshot {
                scope,
                then: Box::new(move |frame| hub.deliver_to(id, &frame)),
            };
            engine.send(command).await.is_ok()
        })
    }

    fn acknowledge(
        &self,
        id: u64,
        by: String,
        now_ms: u64,
        scope: SiteScope,
    ) -> Answer<Result<(), Refusal>> {
        let engine = self.engine.clone();
        Box::pin(async move { Ok(engine.acknowledge(id, by, now_ms, scope).await?) })
    }

    fn set_session(
        &self,
        chair: String,
        update: SessionUpdate,
        now_ms: u64,
    ) -> Answer<Result<(), Refusal>> {
        self.change(move |reply| Command::SetSession {
            chair,
            update,
            now_ms,
            reply,
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
        self.change(move |reply| Command::SetLimit {
            chair,
            rule,
            limits,
            by,
            now_ms,
            reply,
        })
    }
}
