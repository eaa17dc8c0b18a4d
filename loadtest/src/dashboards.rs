//! Simulated nurse-station dashboards over WebSockets, measuring what arrives.

use crate::devices::SentLog;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Latency histogram in microseconds, 1 µs to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What one dashboard saw.
pub struct Seen {
    /// Breach episodes whose `raised` SBP alarm arrived: (chair, ts).
    pub breaches: HashSet<(u32, u64)>,
    /// `raised` SBP alarms of breach episodes, per rule: (chair, ts, rule).
    pub raised: HashSet<(u32, u64, String)>,
    /// Alarm events received more than once (same id and state).
    pub duplicates: u64,
    pub alarm_from_intended: Histogram<u64>,
    pub alarm_from_sent: Histogram<u64>,
    pub vitals_from_intended: Histogram<u64>,
    pub vitals_from_sent: Histogram<u64>,
    pub vitals_frames: u64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl Seen {
    pub fn new() -> Seen {
        Seen {
            breaches: HashSet::new(),
            raised: HashSet::new(),
            duplicates: 0,
            alarm_from_intended: histogram(),
            alarm_from_sent: histogram(),
            vitals_from_intended: histogram(),
            vitals_from_sent: histogram(),
            vitals_frames: 0,
            error: None,
        }
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

fn record(h: &mut Histogram<u64>, from: Instant, at: Instant) {
    let us = at.saturating_duration_since(from).as_micros() as u64;
    h.saturating_record(us.max(1));
}

/// Connect a dashboard as a browser would, but cheaply: Nagle off (its acks and
/// pongs go out at once) and a 16 KiB read buffer instead of tungstenite's 128 KiB,
/// so ten thousand dashboards fit in the harness without measuring its page faults.
/// A failure says which step failed and when: the TCP connection (a full accept
/// queue shows as a slow one) or the WebSocket handshake after it.
async fn connect(
    http: SocketAddr,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(http).await.map_err(|e| {
        format!(
            "TCP connect: {e} after {:.3} s",
            started.elapsed().as_secs_f64()
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let connected = started.elapsed();
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    match tokio_tungstenite::client_async_with_config(
        format!("ws://{http}/ws"),
        stream,
        Some(config),
    )
    .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(format!(
            "{e} ({:.3} s after the TCP connection, which took {:.3} s)",
            (started.elapsed() - connected).as_secs_f64(),
            connected.as_secs_f64()
        )),
    }
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
            Ok(Some(Ok(Message::Close(Some(c))))) => return format!("closed with {}", c.code),
            Ok(Some(Ok(Message::Close(None)))) => return "closed".into(),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return "dropped by the gateway".into(),
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
    /// Permits for WebSocket handshakes in progress, shared by every dashboard.
    pub connecting: Arc<tokio::sync::Semaphore>,
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
    let mut seen = Seen::new();
    // Held until the dashboard is ready (its snapshot received), so the gateway
    // serves a bounded number of handshakes and snapshots at a time.
    let mut connecting = Some(setup.connecting.acquire().await);
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
        let _ = ws.send(Message::text(cmd)).await;
    }
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let mut events: HashSet<(u64, u8)> = HashSet::new();
    let mut announced = setup.ready_on_connect;
    if announced {
        drop(connecting.take());
        let _ = ready.send(()).await;
    }
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            msg = ws.next() => msg,
        };
        let at = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                seen.error = Some(format!("closed by the gateway: {c:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                seen.error = Some(format!("connection error: {e}"));
                break;
            }
            None => {
                seen.error = Some("connection ended".into());
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        match frame.r#type {
            "snapshot" if !announced => {
                announced = true;
                drop(connecting.take());
                let _ = ready.send(()).await;
            }
            "alarm" if frame.escalated || frame.reminder => {
                // A re-send of an alarm already counted (nobody acknowledges here).
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
                            // Each SBP rule raises once per breach; a second raise
                            // for the same breach and rule, whatever its id, is a
                            // duplicate.
                            if seen
                                .raised
                                .insert((chair, frame.ts, frame.rule.to_string()))
                            {
                                stats.breach_deliveries.fetch_add(1, Ordering::Relaxed);
                            } else {
                                seen.duplicates += 1;
                            }
                            // Time the first alarm of the breach.
                            if seen.breaches.insert((chair, frame.ts)) {
                                record(&mut seen.alarm_from_intended, sent.intended, at);
                                record(&mut seen.alarm_from_sent, sent.actual, at);
                            }
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
                        record(&mut seen.vitals_from_intended, sent.intended, at);
                        record(&mut seen.vitals_from_sent, sent.actual, at);
                    }
                }
            }
            _ => {}
        }
    }
    if !announced {
        let _ = ready.send(()).await;
    }
    let _ = ws.close(None).await;
    seen
}
