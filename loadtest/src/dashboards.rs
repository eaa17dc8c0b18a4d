//! Simulated nurse-station dashboards over WebSockets, measuring what arrives.

use crate::devices::{Sent, SentLog};
use crate::ws::{Client, Message};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The largest message a dashboard takes (a snapshot of every chair included).
const MAX_MESSAGE: usize = 64 << 20;

/// FxHash's multiply-rotate, for the small integer keys a dashboard looks up on
/// every alarm frame: SipHash was 7 % of the harness's CPU per frame, and these
/// keys come from the gateway under test, not from an adversary.
#[derive(Default, Clone, Copy)]
pub struct Mix(u64);

impl Mix {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        // The table picks buckets by the low bits, which a multiply leaves to the
        // inputs' low bits alone: rotate the well-mixed high bits down.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.add(u64::from(b)));
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n))
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n))
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n))
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n)
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64)
    }
}

/// A set hashed with [`Mix`].
pub type FastSet<T> = HashSet<T, BuildHasherDefault<Mix>>;

/// Latency histogram in microseconds, 1 µs to 60 s (longer counts as 60 s), 3
/// significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// One dashboard's latencies of one kind, in microseconds. A histogram is
/// 136 KiB, written through when made: a dashboard makes the ones it expects
/// samples for before the run ([`Latencies::expected`]), and a kind it does not
/// expect (live vitals when not subscribed) costs nothing unless a sample comes.
#[derive(Default)]
pub struct Latencies(Option<Histogram<u64>>);

impl Latencies {
    /// Latencies made ready for samples, so the first one costs no allocation.
    pub fn expected() -> Latencies {
        Latencies(Some(histogram()))
    }

    /// Record `at − from`, between 1 µs and 60 s.
    pub fn record(&mut self, from: Instant, at: Instant) {
        let us = at.saturating_duration_since(from).as_micros() as u64;
        self.0
            .get_or_insert_with(histogram)
            .saturating_record(us.max(1));
    }

    /// Add these samples to `total`.
    pub fn add_to(&self, total: &mut Histogram<u64>) -> Result<(), hdrhistogram::AdditionError> {
        match &self.0 {
            Some(h) => total.add(h),
            None => Ok(()),
        }
    }
}

/// What one dashboard saw.
pub struct Seen {
    /// Breach episodes whose `raised` SBP alarm arrived: (chair, ts).
    pub breaches: FastSet<(u32, u64)>,
    /// `raised` SBP alarms of breach episodes, per rule: (chair, ts, index in `rules`).
    raised: FastSet<(u32, u64, usize)>,
    /// The rule names seen, each once.
    rules: Vec<Box<str>>,
    /// Alarm events received more than once (same id and state).
    pub duplicates: u64,
    /// Each storm breach's first `raised` alarm: (its reading's actual send,
    /// arrival). The storm's report needs the arrival instants themselves, which
    /// a histogram of latencies would lose.
    pub storm: Vec<(Instant, Instant)>,
    /// `raised` alarms of a storm breach after its first (whatever their id).
    pub storm_duplicates: u64,
    pub alarm_from_intended: Latencies,
    pub alarm_from_sent: Latencies,
    pub vitals_from_intended: Latencies,
    pub vitals_from_sent: Latencies,
    pub vitals_frames: u64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl Seen {
    /// Ready for alarm samples, and for live vitals if `vitals`.
    pub fn new(vitals: bool) -> Seen {
        let vitals = || {
            if vitals {
                Latencies::expected()
            } else {
                Latencies::default()
            }
        };
        Seen {
            breaches: FastSet::default(),
            raised: FastSet::default(),
            rules: Vec::new(),
            duplicates: 0,
            storm: Vec::new(),
            storm_duplicates: 0,
            alarm_from_intended: Latencies::expected(),
            alarm_from_sent: Latencies::expected(),
            vitals_from_intended: vitals(),
            vitals_from_sent: vitals(),
            vitals_frames: 0,
            error: None,
        }
    }
}

impl Seen {
    /// Note the first alarm of the breach `sent` at `at` (time it, and keep a
    /// storm's arrival); false if one was noted before.
    pub fn note_breach(&mut self, chair: u32, sent: &Sent, at: Instant) -> bool {
        if !self.breaches.insert((chair, sent.ts)) {
            self.storm_duplicates += u64::from(sent.storm);
            return false;
        }
        self.alarm_from_intended.record(sent.intended, at);
        self.alarm_from_sent.record(sent.actual, at);
        if sent.storm {
            self.storm.push((sent.actual, at));
        }
        true
    }

    /// Note a `raised` alarm of `rule` for the breach at (chair, ts): false if one
    /// was noted before.
    fn note_raised(&mut self, chair: u32, ts: u64, rule: &str) -> bool {
        let i = match self.rules.iter().position(|r| **r == *rule) {
            Some(i) => i,
            None => {
                self.rules.push(rule.into());
                self.rules.len() - 1
            }
        };
        self.raised.insert((chair, ts, i))
    }

    /// Whether a `raised` alarm of `rule` arrived for the breach at (chair, ts).
    pub fn was_raised(&self, chair: u32, ts: u64, rule: &str) -> bool {
        self.rules
            .iter()
            .position(|r| **r == *rule)
            .is_some_and(|i| self.raised.contains(&(chair, ts, i)))
    }
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct DashboardStats {
    pub alarms: AtomicU64,
    /// Breach episodes seen, summed over dashboards.
    pub breach_deliveries: AtomicU64,
    pub vitals: AtomicU64,
    pub connected: AtomicU64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    r#type: &'a str,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    state: &'a str,
    #[serde(default)]
    chair: &'a str,
    #[serde(default)]
    vital: &'a str,
    #[serde(default)]
    rule: &'a str,
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    vitals: Option<VitalsTs>,
    /// Re-sends of an alarm (escalation, reminder): not new events.
    #[serde(default)]
    escalated: bool,
    #[serde(default)]
    reminder: bool,
    /// A change of an open alarm (rules joined or left it): not a new event.
    #[serde(default)]
    updated: bool,
    /// Every rule the alarm holds (one alarm per vital and direction).
    #[serde(default, borrow)]
    rules: Vec<RuleHeld<'a>>,
}

#[derive(Deserialize)]
struct RuleHeld<'a> {
    rule: &'a str,
}

#[derive(Deserialize)]
struct VitalsTs {
    hr: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    ts: u64,
}

/// `site3/c17` → 17.
fn chair_index(chair: &str) -> Option<u32> {
    chair.rsplit_once("/c")?.1.parse().ok()
}

/// Connect a dashboard as a browser would, but cheaply: Nagle off (its pongs go
/// out at once) and the harness's own client ([`crate::ws`]), which reads into a
/// 4 KiB buffer it never zeroes: ten thousand dashboards fit in the harness, and
/// each frame costs it as little CPU as we could make it, CPU the gateway under
/// test would otherwise lose.
/// A failure says which step failed and when: the TCP connection (a full accept
/// queue shows as a slow one; so does this task waiting for a worker thread of
/// the harness after the connection completed) or the WebSocket handshake after it.
async fn connect(http: SocketAddr) -> Result<Client, String> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(http).await.map_err(|e| {
        format!(
            "TCP connect: {e} after {:.3} s",
            started.elapsed().as_secs_f64()
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let connected = started.elapsed();
    Client::handshake(tcp, &http.to_string(), "/ws", MAX_MESSAGE)
        .await
        .map_err(|e| {
            format!(
                "{e} ({:.3} s after the TCP connection, which took {:.3} s)",
                (started.elapsed() - connected).as_secs_f64(),
                connected.as_secs_f64()
            )
        })
}

/// A dashboard that stops reading once connected (a frozen browser tab): the
/// gateway must cut it off as a slow consumer without anyone else noticing. After
/// `stop`, reads what the socket holds to see how the connection ended.
pub async fn stuck(http: SocketAddr, mut stop: watch::Receiver<bool>) -> String {
    let Ok(mut ws) = connect(http).await else {
        return "could not connect".into();
    };
    let _ = stop.wait_for(|s| *s).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Ok(Message::Close(Some((code, _))))) => return format!("closed with {code}"),
            Ok(Ok(Message::Close(None))) => return "closed".into(),
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return "dropped by the gateway".into(),
            Err(_) => return "still open".into(),
        }
    }
}

/// How a dashboard connects.
pub struct Setup {
    /// Take live vitals of this site only (`None`: every chair).
    pub site: Option<String>,
    /// Subscribe to live vitals.
    pub vitals: bool,
    /// The target sends no `snapshot`: the dashboard is ready once connected.
    pub ready_on_connect: bool,
    /// This dashboard's permit to connect (one of `--connect-concurrency`), held
    /// until it is ready. Taken before the task is spawned, so thousands of
    /// dashboards are never thousands of tasks queued at once in front of the ones
    /// halfway through their handshake.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Connect, take the snapshot (unless `ready_on_connect`), optionally subscribe to
/// live vitals, then record until `stop` turns true.
pub async fn watch_alarms(
    http: SocketAddr,
    setup: Setup,
    log: Arc<SentLog>,
    stats: Arc<DashboardStats>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::new(setup.vitals);
    // Held until the dashboard is ready (its snapshot received), so the gateway
    // serves a bounded number of handshakes and snapshots at a time.
    let mut connecting = Some(setup.permit);
    let mut ws = match connect(http).await {
        Ok(ok) => ok,
        Err(e) => {
            seen.error = Some(format!("connect: {e}"));
            let _ = ready.send(()).await;
            return seen;
        }
    };
    if setup.vitals {
        let cmd = match &setup.site {
            Some(s) => format!(r#"{{"type":"subscribe_vitals","site":"{s}"}}"#),
            None => r#"{"type":"subscribe_vitals"}"#.to_string(),
        };
        let _ = ws.send_text(&cmd).await;
    }
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let mut events: FastSet<(u64, u8)> = FastSet::default();
    let mut announced = setup.ready_on_connect;
    if announced {
        drop(connecting.take());
        let _ = ready.send(()).await;
    }
    // Made once: a watch future made per frame registers with (and leaves) the
    // channel's waiter list that every dashboard shares.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stopped => break,
            msg = ws.next() => msg,
        };
        let at = Instant::now();
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(close)) => {
                seen.error = Some(match close {
                    Some((code, reason)) => format!("closed by the gateway: {code} {reason:?}"),
                    None => "closed by the gateway, without a code".into(),
                });
                break;
            }
            Ok(Message::Binary(_)) => continue,
            Err(e) => {
                seen.error = Some(format!("connection error: {e}"));
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            continue;
        };
        match frame.r#type {
            "snapshot" if !announced => {
                announced = true;
                drop(connecting.take());
                let _ = ready.send(()).await;
            }
            "alarm" if frame.escalated || frame.reminder || frame.updated => {
                // A re-send or a change of an alarm already counted (nobody
                // acknowledges here).
                stats.alarms.fetch_add(1, Ordering::Relaxed);
            }
            "alarm" => {
                stats.alarms.fetch_add(1, Ordering::Relaxed);
                let state = match frame.state {
                    "raised" => 0,
                    "acknowledged" => 1,
                    _ => 2,
                };
                if !events.insert((frame.id, state)) {
                    seen.duplicates += 1;
                }
                if state == 0 && frame.vital == "sbp" {
                    if let Some(chair) = chair_index(frame.chair) {
                        if let Some(sent) = log.breach(chair, frame.ts) {
                            // The breach's one SBP alarm holds every SBP rule it
                            // meets; each rule is raised once per breach: a second
                            // raise for the same breach and rule, whatever its id,
                            // is a duplicate.
                            // (A frame without `rules` names its one rule.)
                            let own = frame.rules.is_empty().then_some(frame.rule);
                            for rule in frame.rules.iter().map(|r| r.rule).chain(own) {
                                if seen.note_raised(chair, frame.ts, rule) {
                                    stats.breach_deliveries.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    seen.duplicates += 1;
                                }
                            }
                            seen.note_breach(chair, &sent, at);
                        }
                    }
                }
            }
            "vitals" => {
                stats.vitals.fetch_add(1, Ordering::Relaxed);
                seen.vitals_frames += 1;
                let stamp = frame.vitals.and_then(|v| v.hr).map(|s| s.ts);
                if let (Some(chair), Some(ts)) = (chair_index(frame.chair), stamp) {
                    if let Some(sent) = log.reading(chair, ts) {
                        seen.vitals_from_intended.record(sent.intended, at);
                        seen.vitals_from_sent.record(sent.actual, at);
                    }
                }
            }
            _ => {}
        }
    }
    if !announced {
        let _ = ready.send(()).await;
    }
    ws.close().await;
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_alarms_are_told_apart_by_breach_and_rule() {
        let mut seen = Seen::new(false);
        assert!(seen.note_raised(3, 1_000, "sbp_warn"));
        assert!(seen.note_raised(3, 1_000, "sbp_critical"));
        assert!(seen.note_raised(4, 1_000, "sbp_warn"));
        assert!(!seen.note_raised(3, 1_000, "sbp_warn"), "a duplicate");
        assert!(seen.was_raised(3, 1_000, "sbp_critical"));
        assert!(!seen.was_raised(3, 1_001, "sbp_warn"));
        assert!(!seen.was_raised(4, 1_000, "sbp_critical"));
        assert!(!seen.was_raised(3, 1_000, "spo2_low"), "a rule never seen");
    }

    #[test]
    fn latencies_keep_their_values_through_the_total() {
        let t0 = Instant::now();
        let mut l = Latencies::default();
        for ms in [1, 10, 250, 70_000] {
            l.record(t0, t0 + Duration::from_millis(ms));
        }
        let mut total = histogram();
        l.add_to(&mut total).unwrap();
        Latencies::default().add_to(&mut total).unwrap();
        assert_eq!(total.len(), 4);
        let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
        assert!((ms(0.25) - 1.0).abs() < 0.01, "{}", ms(0.25));
        assert!((ms(0.5) - 10.0).abs() < 0.01, "{}", ms(0.5));
        assert!((ms(0.75) - 250.0).abs() < 0.25, "{}", ms(0.75));
        // Past 60 s counts as 60 s.
        assert!((ms(1.0) - 60_000.0).abs() < 60.0, "{}", ms(1.0));
    }
}
