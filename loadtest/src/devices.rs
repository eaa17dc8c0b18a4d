//! Simulated chairs: open-loop publishers on several MQTT connections.
//!
//! Every reading has an *intended* send time on a fixed schedule (chair `g` of `N`
//! at phase `g/N` of the period). A publisher that falls behind sends late rather
//! than skipping, and latency is measured from the intended time as well as from the
//! actual send, so a stall shows in the figures instead of hiding (coordinated
//! omission).
//!
//! A storm ([`Plan::storm`]) is the exception the schedule makes on purpose: at the
//! storm instant each publisher sends a surge for every one of its chairs back to
//! back, all intended at that instant, so their latency counts from it.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a reading was meant to go out and when it did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub ts: u64,
    pub intended: Instant,
    pub actual: Instant,
    /// A chair's storm reading (its `intended` is the storm instant).
    pub storm: bool,
}

/// Readings per chair recent enough to match live-vitals frames against.
const RECENT_PER_CHAIR: usize = 256;

/// What was sent, for dashboards to match what they receive against.
pub struct SentLog {
    recent: Vec<Mutex<VecDeque<Sent>>>,
    /// Every breach episode and storm reading: (chair, ts) → when it was sent.
    pub breaches: Mutex<HashMap<(u32, u64), Sent>>,
}

impl SentLog {
    pub fn new(chairs: usize) -> Self {
        SentLog {
            recent: (0..chairs).map(|_| Mutex::new(VecDeque::new())).collect(),
            breaches: Mutex::new(HashMap::new()),
        }
    }

    pub fn reading(&self, chair: u32, ts: u64) -> Option<Sent> {
        let recent = self.recent.get(chair as usize)?.lock().unwrap();
        recent.iter().rev().find(|s| s.ts == ts).copied()
    }

    pub fn breach(&self, chair: u32, ts: u64) -> Option<Sent> {
        self.breaches.lock().unwrap().get(&(chair, ts)).copied()
    }
}

/// Counters shared with the progress line and the report.
#[derive(Default)]
pub struct DeviceStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Readings sent more than [`LATE`] after their intended time (storm readings,
    /// sent in a burst on purpose, are not counted here nor in `max_lag_us`).
    pub late: AtomicU64,
    pub max_lag_us: AtomicU64,
    pub breaches: AtomicU64,
    pub errors: AtomicU64,
}

/// A reading this late counts as the generator falling behind.
pub const LATE: Duration = Duration::from_millis(5);

pub struct Plan {
    pub chairs: usize,
    pub sites: usize,
    /// Readings per second per chair.
    pub rate: f64,
    /// Chance that a reading starts a breach episode.
    pub breach_probability: f64,
    pub topic_prefix: String,
    /// Sites are named `{site_prefix}0`, `{site_prefix}1`, ...
    pub site_prefix: String,
    pub start: Instant,
    /// Wall-clock ms since the epoch at `start`.
    pub start_ms: u64,
    pub until: Instant,
    /// The storm instant, if any: at least one period after `start` and before
    /// `until`, so that each chair publishes before it and each publisher reaches it.
    /// Breach episodes are off then (`breach_probability` 0).
    pub storm: Option<Instant>,
    /// Record every reading (needed to measure live vitals).
    pub record_all: bool,
}

pub fn chair_name(plan: &Plan, g: usize) -> (String, String) {
    (
        format!("{}{}", plan.site_prefix, g % plan.sites),
        format!("c{g}"),
    )
}

/// Drifting values of one simulated patient.
struct Patient {
    g: usize,
    topic: String,
    seq: u64,
    last_ts: u64,
    in_breach: bool,
    hr: f64,
    spo2: f64,
    sbp: f64,
    rr: f64,
    infused: f64,
}

impl Patient {
    fn drift(v: &mut f64, rng: &mut fastrand::Rng, lo: f64, hi: f64, step: f64) {
        *v = (*v + (rng.f64() - 0.5) * step).clamp(lo, hi);
    }

    /// The next payload; `breach` makes it an SBP surge (raises on every default
    /// SBP rule without delay), the reading after a breach recovers.
    fn next(&mut self, ts: u64, rng: &mut fastrand::Rng, breach: bool) -> String {
        self.seq += 1;
        Self::drift(&mut self.hr, rng, 65.0, 95.0, 2.0);
        Self::drift(&mut self.spo2, rng, 96.0, 99.0, 0.5);
        Self::drift(&mut self.sbp, rng, 110.0, 128.0, 2.0);
        Self::drift(&mut self.rr, rng, 12.0, 18.0, 0.5);
        self.infused += 0.01;
        let sbp = if breach { 192.0 } else { self.sbp };
        format!(
            r#"{{"seq":{},"ts":{ts},"hr":{:.0},"spo2":{:.0},"sbp":{sbp:.0},"dbp":78,"rr":{:.0},"pump":{{"running":true,"rate_ml_h":40.0,"infused_ml":{:.2}}}}}"#,
            self.seq, self.hr, self.spo2, self.rr, self.infused
        )
    }
}

/// An MQTT connection of this harness: clean session, TCP_NODELAY, 10 s keep-alive;
/// `tune` adjusts the options further.
pub fn connect(
    name: &str,
    broker: (String, u16),
    tune: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(
        format!("vitalgate-loadtest-{}-{name}", std::process::id()),
        broker.0,
        broker.1,
    );
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 16, 1 << 16);
    tune(&mut o);
    let (client, mut events) = AsyncClient::new(o, 10_000);
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (client, events)
}

/// What a reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    /// The surge that starts a breach episode: logged as a breach.
    Episode,
    /// A chair's surge at the storm instant: logged as a breach.
    Storm,
    /// A surge after the chair's storm reading: holds its alarm raised, no new breach.
    Held,
}

/// What every reading of one publisher goes through.
struct Out<'a> {
    client: &'a AsyncClient,
    plan: &'a Plan,
    log: &'a SentLog,
    stats: &'a DeviceStats,
}

impl Out<'_> {
    /// Send `p`'s next reading, meant for `intended`, and log it.
    async fn send(&self, p: &mut Patient, intended: Instant, kind: Kind, rng: &mut fastrand::Rng) {
        let offset_ms = intended.duration_since(self.plan.start).as_millis() as u64;
        let ts = (self.plan.start_ms + offset_ms).max(p.last_ts + 1);
        p.last_ts = ts;
        let payload = p.next(ts, rng, kind != Kind::Normal);
        p.in_breach = kind != Kind::Normal;
        let actual = Instant::now();
        let sent = Sent {
            ts,
            intended,
            actual,
            storm: kind == Kind::Storm,
        };
        if matches!(kind, Kind::Episode | Kind::Storm) {
            self.log
                .breaches
                .lock()
                .unwrap()
                .insert((p.g as u32, ts), sent);
            self.stats.breaches.fetch_add(1, Ordering::Relaxed);
        }
        if self.plan.record_all {
            let mut recent = self.log.recent[p.g].lock().unwrap();
            if recent.len() >= RECENT_PER_CHAIR {
                recent.pop_front();
            }
            recent.push_back(sent);
        }
        if kind != Kind::Storm {
            let lag = actual.saturating_duration_since(intended);
            if lag > LATE {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .max_lag_us
                .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        }
        if self
            .client
            .publish(&p.topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// One publisher connection driving `chairs` (global indices, in phase order).
pub async fn publish(
    id: usize,
    broker: (String, u16),
    chairs: Vec<usize>,
    plan: Arc<Plan>,
    log: Arc<SentLog>,
    stats: Arc<DeviceStats>,
    seed: u64,
) {
    let (client, mut events) = connect(&format!("dev{id}"), broker, |o| {
        o.set_inflight(1000);
    });
    let ack_stats = stats.clone();
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closing_seen = closing.clone();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    ack_stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) if closing_seen.load(Ordering::Relaxed) => break,
                Err(_) => {
                    ack_stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });

    let mut rng = fastrand::Rng::with_seed(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut patients: Vec<Patient> = chairs
        .iter()
        .map(|&g| {
            let (site, chair) = chair_name(&plan, g);
            Patient {
                g,
                topic: format!("{}/{site}/chair/{chair}/vitals", plan.topic_prefix),
                seq: 0,
                last_ts: 0,
                in_breach: false,
                hr: 80.0,
                spo2: 98.0,
                sbp: 120.0,
                rr: 14.0,
                infused: 0.0,
            }
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let phase = |g: usize| period.mul_f64(g as f64 / plan.chairs as f64);
    let out = Out {
        client: &client,
        plan: &plan,
        log: &log,
        stats: &stats,
    };
    // The storm instant until this publisher has sent its storm readings.
    let mut storm = plan.storm;
    'rounds: for round in 0u32.. {
        for i in 0..patients.len() {
            let intended = plan.start + period * round + phase(patients[i].g);
            if let Some(at) = storm.filter(|&at| intended >= at) {
                storm = None;
                tokio::time::sleep_until(at.into()).await;
                for p in patients.iter_mut() {
                    out.send(p, at, Kind::Storm, &mut rng).await;
                }
            }
            if intended >= plan.until {
                break 'rounds;
            }
            let now = Instant::now();
            if intended > now {
                tokio::time::sleep_until(intended.into()).await;
            }
            let p = &mut patients[i];
            // No episode on a chair's last reading: it would have no recovery, and
            // its alarms would stay raised after the run.
            let last = intended + period >= plan.until;
            let kind = if plan.storm.is_some() && storm.is_none() {
                Kind::Held
            } else if !p.in_breach && !last && rng.f64() < plan.breach_probability {
                Kind::Episode
            } else {
                Kind::Normal
            };
            out.send(p, intended, kind, &mut rng).await;
        }
    }
    // Let outstanding publishes be acknowledged before the connection goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.acked.load(Ordering::Relaxed) < stats.sent.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closing.store(true, Ordering::Relaxed);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
}
