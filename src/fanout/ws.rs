//! `GET /ws`: one dashboard connection.
//!
//! Each connection is two halves. The reader parses commands (acknowledge, live
//! vitals, snapshot). The writer owns the socket's sending side and, in priority
//! order, reacts to: being cut off as slow, the client going away, gateway shutdown,
//! queued alarm frames, live-vitals changes and the ping timer. Alarm frames come
//! from a bounded queue filled by the [`Hub`](super::Hub); live vitals are pulled
//! from the [`LiveFeed`](super::LiveFeed) only when the writer is free, so they
//! coalesce instead of queueing.

use super::hub::{Start, Subscriber};
use super::live::Scope;
use super::protocol::{self, Frame};
use super::reader::Reader;
use super::signals::{Disconnect, Signals};
use super::socket::{self, Socket};
use super::Dashboards;
use crate::access::Identity;
use crate::telemetry::Metrics;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

struct Conn {
    dashboards: Arc<Dashboards>,
    sink: SplitSink<Socket, Message>,
    signals: Arc<Signals>,
    stops: Stops,
}

/// What ends or interrupts a connection's writes, each awaited through one future
/// made when the connection starts. Making and dropping these on every frame (a
/// mutex and a waiter-list update each) was a measurable share of the CPU a
/// delivery costs with a thousand dashboards; a finished one stays finished.
///
/// While nothing has happened, the writer polls only `wake` (and the expiry
/// timer): every reason to stop cancels it. With a future per reason (three
/// tokens around each wait, two around each write; each poll takes its token's
/// mutex), token polls were about 8 % of the gateway's CPU in a profile with a
/// thousand dashboards; with one, the gateway's CPU per write measured about 4 %
/// lower, a difference not yet significant over eight runs (measured at 54fcaf1:
/// `git show 63039d1:docs/benchmarks.md`, "One stop token per writer").
struct Stops {
    /// Cut off as slow, the client gone, or the gateway shutting down
    /// ([`CutOff::wake`]). The rest are polled only once it has fired.
    wake: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Cut off as slow ([`CutOff::slow`]): abandons a write under way.
    slow: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The shutdown grace ran out: stop writing at once.
    force: Pin<Box<WaitForCancellationFutureOwned>>,
    /// When the client's token expires: the connection closes then (4001).
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stops {
    /// The stops over `signals`, the gateway's grace token `force_close` and the
    /// token's expiry.
    fn new(
        signals: &Signals,
        force_close: &CancellationToken,
        expires: Option<tokio::time::Instant>,
    ) -> Stops {
        Stops {
            wake: Box::pin(signals.cut_off.wake.clone().cancelled_owned()),
            slow: Box::pin(signals.cut_off.slow.clone().cancelled_owned()),
            // A child of the gateway-wide token: each connection then polls a
            // token of its own instead of contending for the shared one's lock.
            force: Box::pin(force_close.child_token().cancelled_owned()),
            expires: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Run a socket write unless the connection is cut off as slow, the shutdown
    /// grace runs out or the token expires first. The client going away or the
    /// gateway shutting down does not abandon a write under way.
    async fn guard(
        &mut self,
        write: impl std::future::Future<Output = Result<(), WsError>>,
    ) -> Result<(), Disconnect> {
        let mut write = std::pin::pin!(write);
        tokio::select! {
            biased;
            _ = &mut self.wake => {}
            _ = expired(&mut self.expires) => return Err(Disconnect::TOKEN_EXPIRED),
            r = &mut write => return r.map_err(write_failed),
        }
        tokio::select! {
            biased;
            _ = &mut self.slow => Err(Disconnect::SLOW_CONSUMER),
            _ = &mut self.force => Err(Disconnect::DROPPED),
            _ = expired(&mut self.expires) => Err(Disconnect::TOKEN_EXPIRED),
            r = write => r.map_err(write_failed),
        }
    }
}

/// A live-vitals subscription held by the writer.
struct Live {
    scope: Scope,
    changes: watch::Receiver<u64>,
    version: u64,
}

/// Serve one dashboard on an upgraded `socket` (the HTTP edge authenticated it as
/// `identity`), from `start`, until it ends.
pub async fn serve(socket: Socket, start: Start, dashboards: Arc<Dashboards>, identity: Identity) {
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(dashboards.config.queue_capacity);
    let signals = Arc::new(Signals::new(&dashboards.close, dashboards.uptime_ms()));
    let id = dashboards.hub.next_id();
    let subscriber = Subscriber {
        id,
        tx: tx.clone(),
        cut_off: signals.cut_off.clone(),
        scope: identity.scope.clone(),
    };
    let Some(initial) = dashboards.backend.subscribe(start, subscriber).await else {
        return; // shutting down
    };
    dashboards.metrics.ws_clients.increment(1.0);
    dashboards.metrics.ws_connections_total.increment(1);

    let (scope_tx, scope_rx) = watch::channel(None);
    let expires_at = identity.expires_at;
    let reader = Reader {
        dashboards: dashboards.clone(),
        tx,
        id,
        scope_tx,
        signals: signals.clone(),
        identity,
    };
    let mut reader = tokio::spawn(reader.run(stream));
    let expires = expires_at.map(|exp_s| {
        let left = exp_s
            .saturating_mul(1_000)
            .saturating_sub(crate::clock::now_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
    let mut conn = Conn {
        stops: Stops::new(&signals, &dashboards.force_close, expires),
        dashboards: dashboards.clone(),
        sink,
        signals: signals.clone(),
    };
    let mut live = None;
    let end = conn.write_loop(initial, rx, scope_rx, &mut live).await;
    if end == Disconnect::SLOW_CONSUMER {
        dashboards.metrics.ws_slow_disconnects.increment(1);
    }
    if end == Disconnect::TOO_BIG {
        // Boxed: the reunited socket and the discard's read buffer would
        // otherwise be part of every connection's task, about 8 KiB each for
        // an ending that is rare.
        Box::pin(async {
            conn.close(end).await;
            // The reader has ended (it asked for this close) and hands back its
            // half: read the client's close before closing TCP (`fanout::socket`).
            if let Ok(Some(stream)) = (&mut reader).await {
                if let Ok(mut whole) = conn.sink.reunite(stream) {
                    let timeout = Duration::from_millis(dashboards.config.close_timeout_ms);
                    socket::discard_until_close(&mut whole, timeout).await;
                }
            }
        })
        .await
    } else if end.code != 0 {
        conn.close(end).await;
    }
    if live.is_some() {
        dashboards.live.unsubscribe();
    }
    reader.abort();
    dashboards.backend.unsubscribe(id);
    dashboards.metrics.ws_clients.decrement(1.0);
}

impl Conn {
    /// Runs until the connection ends, and says why: the caller closes with it.
    async fn write_loop(
        &mut self,
        initial: Vec<Frame>,
        mut rx: mpsc::Receiver<Frame>,
        mut scope_rx: watch::Receiver<Option<Scope>>,
        live: &mut Option<Live>,
    ) -> Disconnect {
        if let Err(end) = self
            .send_all(initial.into_iter().map(|f| f.text).collect())
            .await
        {
            return end;
        }
        let ws = &self.dashboards.config;
        let idle_timeout = ws.idle_timeout_ms;
        let mut ping = tokio::time::interval(Duration::from_millis(ws.ping_interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut self.stops.wake => {
                    if self.signals.cut_off.slow.is_cancelled() {
                        return Disconnect::SLOW_CONSUMER;
                    }
                    if let Some(why) = self.signals.ending() {
                        return why;
                    }
                    // The gateway is shutting down (`wake` is a child of
                    // `Dashboards::close`): deliver everything already
                    // queued, then say goodbye.
                    while let Ok(frame) = rx.try_recv() {
                        if let Err(end) = self.send_frame(frame).await {
                            return end;
                        }
                    }
                    return Disconnect::GOING_AWAY;
                }
                _ = expired(&mut self.stops.expires) => return Disconnect::TOKEN_EXPIRED,
                frame = rx.recv() => match frame {
                    Some(frame) => self.send_queued(frame, &mut rx).await,
                    None => return Disconnect::GONE,
                },
                changed = scope_rx.changed() => {
                    if changed.is_err() {
                        return Disconnect::GONE;
                    }
                    let scope = scope_rx.borrow_and_update().clone();
                    self.set_scope(scope, live).await
                }
                _ = live_changed(live) => self.send_live(live).await,
                _ = ping.tick() => {
                    let silent = self.dashboards.uptime_ms().saturating_sub(self.signals.last_seen.load(Ordering::Relaxed));
                    if silent > idle_timeout {
                        return Disconnect::IDLE_TIMEOUT;
                    }
                    self.send(Message::Ping(Default::default())).await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send(&mut self, msg: Message) -> Result<(), Disconnect> {
        self.stops.guard(self.sink.send(msg)).await
    }

    /// Send `texts` as text messages with one flush, so a burst costs one socket
    /// write, not one per message.
    async fn send_all(&mut self, texts: Vec<Utf8Bytes>) -> Result<(), Disconnect> {
        let sink = &mut self.sink;
        self.stops
            .guard(async {
                for text in texts {
                    sink.feed(Message::Text(text)).await?;
                }
                sink.flush().await
            })
            .await
    }

    /// Send a queued frame, recording receipt → write latency for alarm frames.
    async fn send_frame(&mut self, frame: Frame) -> Result<(), Disconnect> {
        let ingested_at = frame.ingested_at;
        self.send(Message::Text(frame.text)).await?;
        if let Some(at) = ingested_at {
            Metrics::observe(&self.dashboards.metrics.ingest_to_ws_send, at.elapsed());
        }
        Ok(())
    }

    /// Send `first` and whatever else is already queued (up to
    /// `websocket.write_batch_frames`) with
    /// one flush, so a burst costs one write, not one per frame.
    async fn send_queued(
        &mut self,
        first: Frame,
        rx: &mut mpsc::Receiver<Frame>,
    ) -> Result<(), Disconnect> {
        let mut batch = vec![first];
        while batch.len() < self.dashboards.config.write_batch_frames {
            match rx.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        self.send_all(batch.iter().map(|f| f.text.clone()).collect())
            .await?;
        for frame in &batch {
            if let Some(at) = frame.ingested_at {
                Metrics::observe(&self.dashboards.metrics.ingest_to_ws_send, at.elapsed());
            }
            if frame.snapshot {
                self.signals.snapshot_pending.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    async fn set_scope(
        &mut self,
        scope: Option<Scope>,
        live: &mut Option<Live>,
    ) -> Result<(), Disconnect> {
        if live.is_some() {
            self.dashboards.live.unsubscribe();
            *live = None;
        }
        let site = match &scope {
            Some(Scope::Site(s)) => Some(s.as_str()),
            _ => None,
        };
        let ack = protocol::subscribed_frame(scope.is_some(), site);
        self.send(Message::Text(ack.text)).await?;
        if let Some(scope) = scope {
            let (changes, batch) = self
                .dashboards
                .live
                .subscribe(&scope, self.dashboards.engine.ward());
            *live = Some(Live {
                scope,
                changes,
                version: batch.version,
            });
            self.send_all(batch.frames.into_iter().map(|f| f.text).collect())
                .await?;
        }
        Ok(())
    }

    async fn send_live(&mut self, live: &mut Option<Live>) -> Result<(), Disconnect> {
        let Some(l) = live.as_mut() else {
            return Ok(());
        };
        l.changes.borrow_and_update();
        let batch = match self.dashboards.live.since(l.version, &l.scope) {
            Some(batch) => batch,
            // Fell off the log: every chair's current values instead.
            None => self
                .dashboards
                .live
                .subscribe_again(&l.scope, self.dashboards.engine.ward()),
        };
        l.version = batch.version;
        self.send_all(batch.frames.into_iter().map(|f| f.text).collect())
            .await
    }

    /// Best-effort close frame, bounded by `close_timeout_ms`.
    async fn close(&mut self, why: Disconnect) {
        let frame = Message::Close(Some(CloseFrame {
            code: CloseCode::from(why.code),
            reason: Utf8Bytes::from_static(why.reason),
        }));
        let timeout = Duration::from_millis(self.dashboards.config.close_timeout_ms);
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.sink.send(frame).await;
            let _ = self.sink.close().await;
        })
        .await;
    }
}

fn write_failed(e: WsError) -> Disconnect {
    tracing::debug!(error = %e, "dashboard write failed; closing");
    Disconnect::GONE
}

/// Completes when the token expires, or never.
async fn expired(at: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match at {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

async fn live_changed(live: &mut Option<Live>) {
    match live {
        Some(l) => {
            if l.changes.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
