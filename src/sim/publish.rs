//! Publishing a scenario over MQTT exactly as bedside devices would.
//!
//! One MQTT client per chair (client id `vitalgate-sim-{site}-{chair}-{pid}`, unique
//! per run), with a retained last will `offline` on the chair's status topic and a
//! retained `online` published on every connection. Everything at QoS 1. Each chair's
//! messages are sent when the wall clock reaches their `at_ms` (those in the past at
//! once, in order) until the stop token is cancelled; then the client disconnects
//! cleanly (so the broker does not send the will: the simulator stopped, the devices
//! did not fail).
//!
//! Ordering: MQTT orders a client's messages per topic only, and a broker may forward
//! different subscriptions' messages in any order (rumqttd keeps one log per filter,
//! and serves a paused subscriber one filter at a time). But a chair's session
//! message must not overtake the readings before it, nor be overtaken by those after
//! it: the gateway takes the baseline from readings that arrive in the `baseline`
//! phase. So around a retained message (session, status) the publisher waits until
//! everything before it is acknowledged by the broker and then, with a [`Gate`] (the
//! demo's, which reads the gateway's ward), until the gateway has applied the chair's
//! latest reading before the message and the session message itself before the next
//! reading. Without a gate (a gateway in another process) a settle time
//! ([`ORDER_SETTLE`]) stands in for the gateway's word: usually enough, not a
//! guarantee. Each wait is bounded by [`BARRIER_TIMEOUT`] (a timeout is logged), so a
//! lost acknowledgement does not stall a chair.
//!
//! Nothing here blocks a runtime worker: waits are timers and channel waits, and the
//! MQTT event loop of each chair runs in its own task, reconnecting with the gateway's
//! jittered exponential backoff.

use super::Scenario;
use crate::clock::now_ms;
use crate::ingest::backoff::Backoff;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for the broker to acknowledge what precedes a retained message.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);
/// Without a [`Gate`], the pause after a barrier, so the broker forwards what it
/// acknowledged before the next message of another topic (see the module docs).
pub const ORDER_SETTLE: Duration = Duration::from_millis(500);
/// How often a [`Gate`] is asked again while the gateway catches up.
const GATE_POLL: Duration = Duration::from_millis(10);

/// What the gateway has applied of a chair's messages: the word of a gateway in the
/// same process that a session message and the readings around it arrived in the
/// order they were sent (see the module docs).
pub trait Gate: Send + Sync {
    /// True once the gateway holds a reading of `chair` (`site/chair`) with device
    /// time `device_ms` or later.
    fn reading_applied(&self, chair: &str, device_ms: u64) -> bool;
    /// True once the gateway has applied a session message of `chair` with `ts` at
    /// least `ts`.
    fn session_applied(&self, chair: &str, ts: u64) -> bool;
}

/// What a barrier waits for from the gateway, besides the broker's acknowledgements.
#[derive(Clone, Copy)]
enum Applied {
    Nothing,
    Reading(u64),
    Session(u64),
}
/// Longest wait for the clean disconnect at stop.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how the simulated devices connect.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// The gateway's word on applied readings (in-process gateways only).
    pub gate: Option<Arc<dyn Gate>>,
}

impl std::fmt::Debug for dyn Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl PublishOptions {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        PublishOptions {
            host: host.into(),
            port,
            keep_alive: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            gate: None,
        }
    }
}

/// A running simulator: one publishing task and one MQTT event loop per chair.
pub struct Simulator {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Start publishing `scenario`. Stops when `stop` (or [`Simulator::stop`]) is
    /// cancelled.
    pub fn start(scenario: Arc<Scenario>, opts: PublishOptions, stop: CancellationToken) -> Self {
        let mut tasks = Vec::with_capacity(scenario.chairs.len() * 2);
        for i in 0..scenario.chairs.len() {
            let device = Device::connect(&scenario, i, &opts, stop.clone());
            tasks.push(device.events);
            tasks.push(tokio::spawn(publish_chair(
                scenario.clone(),
                i,
                device.client,
                device.issued,
                device.acked,
                opts.gate.clone(),
                stop.clone(),
            )));
        }
        tracing::info!(
            chairs = scenario.chairs.len(),
            broker = %format!("{}:{}", opts.host, opts.port),
            seed = scenario.seed,
            "simulator publishing"
        );
        Simulator { stop, tasks }
    }

    /// Stop publishing and disconnect every chair.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        tracing::info!("simulator stopped");
    }
}

impl Drop for Simulator {
    /// Dropped without [`Simulator::stop`] (an error path): the chairs' tasks end
    /// rather than wait for ever.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One chair's MQTT connection.
struct Device {
    client: AsyncClient,
    /// Publishes handed to the client (the publisher's and the `online` ones).
    issued: Arc<AtomicU64>,
    /// Acknowledgements received (raised to `issued` when a new session drops the
    /// unacknowledged ones).
    acked: watch::Receiver<u64>,
    events: JoinHandle<()>,
}

impl Device {
    fn connect(
        scenario: &Scenario,
        i: usize,
        opts: &PublishOptions,
        stop: CancellationToken,
    ) -> Self {
        let chair = &scenario.chairs[i];
        let id = format!(
            "vitalgate-sim-{}-{}-{}",
            chair.site,
            chair.chair,
            std::process::id()
        );
        let status = chair.topic("status");
        let mut o = MqttOptions::new(id, &opts.host, opts.port);
        o.set_keep_alive(opts.keep_alive)
            .set_clean_session(true)
            .set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
        let (client, mut events) = AsyncClient::new(o, 256);
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let issued = Arc::new(AtomicU64::new(0));
        let (acked_tx, acked) = watch::channel(0u64);
        let mut backoff = Backoff::new(opts.reconnect_initial, opts.reconnect_max);
        let (loop_client, loop_issued, key) = (client.clone(), issued.clone(), chair.key());
        let events = tokio::spawn(async move {
            let mut failing = false;
            loop {
                let event = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        failing = false;
                        if !ack.session_present {
                            // Unacknowledged publishes of the old connection are gone.
                            let n = loop_issued.load(Ordering::SeqCst);
                            acked_tx.send_modify(|a| *a = (*a).max(n));
                        }
                        loop_issued.fetch_add(1, Ordering::SeqCst);
                        if loop_client
                            .try_publish(&status, QoS::AtLeastOnce, true, "online")
                            .is_err()
                        {
                            loop_issued.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked_tx.send_modify(|a| *a += 1),
                    Ok(_) => {}
                    Err(e) => {
                        let delay = backoff.next_delay();
                        if !failing {
                            tracing::warn!(chair = %key, error = %e, retry_in_ms = delay.as_millis() as u64, "simulated device cannot reach the broker");
                        }
                        failing = true;
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            // Clean DISCONNECT: the broker discards the will.
            let _ = loop_client.try_disconnect();
            let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
                loop {
                    match events.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        });
        Device {
            client,
            issued,
            acked,
            events,
        }
    }
}

/// What a retained message waits for: the broker's acknowledgement of every publish
/// issued so far and, before it is sent, the gateway's application of the chair's
/// latest reading (or [`ORDER_SETTLE`] without a gate). Bounded by
/// [`BARRIER_TIMEOUT`]. False when stopped.
struct Barrier<'a> {
    issued: &'a AtomicU64,
    acked: watch::Receiver<u64>,
    gate: Option<&'a dyn Gate>,
    chair: String,
    stop: &'a CancellationToken,
}

impl Barrier<'_> {
    async fn wait(&mut self, applied: Applied) -> bool {
        let target = self.issued.load(Ordering::SeqCst);
        let acked = &mut self.acked;
        let (gate, chair) = (self.gate, &self.chair);
        let done = |gate: &dyn Gate| match applied {
            Applied::Nothing => true,
            Applied::Reading(ms) => gate.reading_applied(chair, ms),
            Applied::Session(ts) => gate.session_applied(chair, ts),
        };
        tokio::select! {
            _ = self.stop.cancelled() => false,
            r = tokio::time::timeout(BARRIER_TIMEOUT, async {
                let _ = acked.wait_for(|a| *a >= target).await;
                match gate {
                    Some(gate) => {
                        while !done(gate) {
                            tokio::time::sleep(GATE_POLL).await;
                        }
                    }
                    None => tokio::time::sleep(ORDER_SETTLE).await,
                }
            }) => {
                if r.is_err() {
                    tracing::warn!(chair = %self.chair, "simulator: ordering wait timed out; the gateway may see this chair's messages out of order");
                }
                true
            }
        }
    }
}

/// Send chair `i`'s messages in order, each when the wall clock reaches its `at_ms`.
async fn publish_chair(
    scenario: Arc<Scenario>,
    i: usize,
    client: AsyncClient,
    issued: Arc<AtomicU64>,
    acked: watch::Receiver<u64>,
    gate: Option<Arc<dyn Gate>>,
    stop: CancellationToken,
) {
    let vitals = scenario.chairs[i].topic("vitals");
    let session = scenario.chairs[i].topic("session");
    let mut barrier = Barrier {
        issued: &issued,
        acked,
        gate: gate.as_deref(),
        chair: scenario.chairs[i].key(),
        stop: &stop,
    };
    // Device time of the latest reading sent and not yet seen applied.
    let mut reading_ms = None;
    for m in scenario.chair_stream(i) {
        let wait = m.at_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
        if m.retain {
            let before = reading_ms.take().map_or(Applied::Nothing, Applied::Reading);
            if !barrier.wait(before).await {
                return;
            }
        } else if m.topic == vitals {
            reading_ms = Some(m.at_ms);
        }
        // A session message's `ts` is its `at_ms`.
        let after = if m.topic == session && !m.payload.is_empty() {
            Applied::Session(m.at_ms)
        } else {
            Applied::Nothing
        };
        issued.fetch_add(1, Ordering::SeqCst);
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload) => r,
        };
        if sent.is_err() {
            // The event loop is gone: only at stop.
            return;
        }
        if m.retain && !barrier.wait(after).await {
            return;
        }
    }
    stop.cancelled().await;
}
