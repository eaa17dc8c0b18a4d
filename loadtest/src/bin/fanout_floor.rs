//! `vitalgate-fanout-floor`: the least a gateway can do between the broker and its
//! dashboards, a floor for vitalgate's fan-out on the same stack (tokio, rumqttc,
//! tungstenite). It subscribes as vitalgate does (QoS 1, TCP_NODELAY), raises and
//! clears the shipped SBP rules as vitalgate's `alarm` frames (no delay,
//! hysteresis 5 mmHg, once per episode, per chair, rule and side: the logic of
//! compare.sh's Node-RED flow), serialises each frame once, and hands it to every
//! dashboard through a bounded queue per connection whose writer task sends what
//! is queued with one flush.
//!
//! Nothing else: no audit trail, sessions, other vitals or rules, snapshot,
//! authentication, metrics, pings, reading what dashboards send, slow-consumer
//! closes (a full queue drops the frame) or graceful shutdown. What vitalgate
//! takes beyond this, on the same machine and harness, is its own.
//!
//! With `--direct` there is no queue or writer task: the task that takes the
//! readings frames each reading's alarms once as WebSocket bytes (server frames
//! are not masked, so every dashboard gets the same bytes) and writes them to
//! every socket itself, without waiting (`try_write`); a socket that cannot take
//! them whole is closed. A floor for a fan-out that wakes no task per dashboard.
//!
//! ```sh
//! vitalgate-fanout-floor --broker 127.0.0.1:1883 [--listen 127.0.0.1:0] [--topic-prefix clinic] [--direct]
//! ```
//! Prints `listening on HOST:PORT` once subscribed (dashboards connect to
//! `ws://HOST:PORT/ws`, any path), then serves until killed.

// The frame header the harness's dashboards write too (this binary has no
// library to share it through).
#[path = "../frame.rs"]
mod frame;

use futures_util::SinkExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames queued per dashboard before new ones are dropped.
const QUEUE_FRAMES: usize = 256;
/// Frames sent with one flush.
const BATCH_FRAMES: usize = 64;
/// The listener's backlog (vitalgate's `http.accept_backlog` default).
const BACKLOG: u32 = 4096;

/// One of the shipped SBP rules (config/vitalgate.toml).
struct Rule {
    id: &'static str,
    priority: &'static str,
    low: f64,
    high: f64,
}

const RULES: [Rule; 2] = [
    Rule {
        id: "sbp_warn",
        priority: "medium",
        low: 90.0,
        high: 140.0,
    },
    Rule {
        id: "sbp_critical",
        priority: "high",
        low: 60.0,
        high: 180.0,
    },
];
const HYSTERESIS: f64 = 5.0;
const SIDES: [&str; 2] = ["low", "high"];

/// Every connected dashboard: its queue, or with `--direct` its socket.
#[derive(Default)]
struct Dashboards {
    queued: Mutex<Vec<mpsc::Sender<Utf8Bytes>>>,
    direct: Mutex<Vec<Arc<tokio::net::TcpStream>>>,
}

/// One side's alarm of one chair, as the gateway presents it: one alarm per vital
/// and direction, holding the rules met.
#[derive(Default, Clone, Copy)]
struct SideAlarm {
    /// (id, raised ts) while open.
    open: Option<(u64, u64)>,
    /// Per rule, whether the alarm holds it.
    held: [bool; 2],
}

/// Open alarms per chair, per side.
type Open = HashMap<String, [SideAlarm; 2]>;

struct Args {
    broker: (String, u16),
    listen: SocketAddr,
    topic_prefix: String,
    direct: bool,
}

fn args() -> Result<Args, String> {
    let mut broker = None;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut topic_prefix = "clinic".to_string();
    let mut direct = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--direct" {
            direct = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--broker" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or("--broker is host:port".to_string())?;
                let port = port.parse().map_err(|_| "--broker port".to_string())?;
                broker = Some((host.to_string(), port));
            }
            "--listen" => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--topic-prefix" => topic_prefix = value,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(Args {
        broker: broker.ok_or("--broker host:port is required")?,
        listen,
        topic_prefix,
        direct,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vitalgate-fanout-floor: {e}");
            return std::process::ExitCode::from(3);
        }
    };
    // On a worker thread, as vitalgate's ingest is: `main` itself runs outside the
    // runtime's workers, which would give the floor a third thread.
    match tokio::spawn(serve(args))
        .await
        .expect("serve does not panic")
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitalgate-fanout-floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(BACKLOG)?;
    let addr = listener.local_addr()?;
    let dashboards = Arc::new(Dashboards::default());
    tokio::spawn(accept(listener, dashboards.clone(), args.direct));

    let mut o = MqttOptions::new(
        format!("vitalgate-fanout-floor-{}", std::process::id()),
        args.broker.0,
        args.broker.1,
    );
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 16, 1 << 16);
    let (client, mut events) = AsyncClient::new(o, 10_000);
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    let topics = format!("{}/+/chair/+/vitals", args.topic_prefix);

    let mut ids = now_us();
    let mut open = Open::new();
    let mut announced = false;
    loop {
        match events.poll().await {
            // A clean session: subscribe on every connection, the first and after
            // a reconnect.
            Ok(Event::Incoming(Packet::ConnAck(_))) => client
                .try_subscribe(topics.as_str(), QoS::AtLeastOnce)
                .map_err(std::io::Error::other)?,
            Ok(Event::Incoming(Packet::SubAck(_))) if !announced => {
                announced = true;
                println!("listening on {addr}");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let frames = alarms(&mut open, &mut ids, &p.topic, &p.payload);
                if frames.is_empty() {
                    continue;
                }
                if args.direct {
                    write_all_direct(&dashboards, &frames);
                } else {
                    fan_out(&dashboards, &frames);
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("vitalgate-fanout-floor: broker: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Queue `frames` to every dashboard; a full queue drops them, a closed one
/// leaves the list.
fn fan_out(dashboards: &Dashboards, frames: &[Utf8Bytes]) {
    dashboards.queued.lock().unwrap().retain(|tx| {
        for f in frames {
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(f.clone()) {
                return false;
            }
        }
        true
    });
}

/// Frame `frames` once as WebSocket text messages and write the bytes to every
/// dashboard without waiting; a socket that does not take them whole is closed
/// (on loopback, only one whose reader has stopped).
fn write_all_direct(dashboards: &Dashboards, frames: &[Utf8Bytes]) {
    let mut wire = Vec::new();
    for f in frames {
        push_text_frame(&mut wire, f.as_bytes());
    }
    dashboards
        .direct
        .lock()
        .unwrap()
        .retain(|tcp| matches!(tcp.try_write(&wire), Ok(n) if n == wire.len()));
}

/// Append `payload` as one unmasked WebSocket text frame (RFC 6455 §5.2).
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame::push_header(out, 0x1, false, payload.len());
    out.extend_from_slice(payload);
}

async fn accept(listener: tokio::net::TcpListener, dashboards: Arc<Dashboards>, direct: bool) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let dashboards = dashboards.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            if direct {
                // The handshake's response is flushed: the socket is the fan-out's.
                dashboards
                    .direct
                    .lock()
                    .unwrap()
                    .push(Arc::new(ws.into_inner()));
                return;
            }
            let (tx, mut rx) = mpsc::channel(QUEUE_FRAMES);
            dashboards.queued.lock().unwrap().push(tx);
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH_FRAMES {
                    match rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                let mut sent = Ok(());
                for f in batch {
                    sent = ws.feed(Message::Text(f)).await;
                    if sent.is_err() {
                        break;
                    }
                }
                if sent.is_err() || ws.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The alarm frames one reading raises or clears.
fn alarms(open: &mut Open, ids: &mut u64, topic: &str, payload: &[u8]) -> Vec<Utf8Bytes> {
    // {prefix}/{site}/chair/{chair}/vitals
    let levels: Vec<&str> = topic.split('/').collect();
    let (Some(site), Some(chair)) = (levels.get(1), levels.get(3)) else {
        return Vec::new();
    };
    let Ok(reading) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Vec::new();
    };
    let (Some(ts), Some(value)) = (reading["ts"].as_u64(), reading["sbp"].as_f64()) else {
        return Vec::new();
    };
    let key = format!("{site}/{chair}");
    let chair_open = open.entry(key.clone()).or_default();
    let mut frames = Vec::new();
    for (s, side) in SIDES.iter().enumerate() {
        let high = s == 1;
        let alarm = &mut chair_open[s];
        let before = alarm.held;
        for (r, rule) in RULES.iter().enumerate() {
            let limit = if high { rule.high } else { rule.low };
            let breached = (high && value > limit) || (!high && value < limit);
            let recovered =
                (high && value <= limit - HYSTERESIS) || (!high && value >= limit + HYSTERESIS);
            if !alarm.held[r] && breached {
                alarm.held[r] = true;
            } else if alarm.held[r] && recovered {
                alarm.held[r] = false;
            }
        }
        if alarm.held == before {
            continue;
        }
        // Highest priority first: sbp_critical, then sbp_warn.
        let top_of = |held: [bool; 2]| (0..RULES.len()).rev().find(|&r| held[r]);
        let (state, id, raised_ts, top, updated) = match (alarm.open, top_of(alarm.held)) {
            (None, Some(top)) => {
                *ids += 1;
                alarm.open = Some((*ids, ts));
                ("raised", *ids, ts, top, false)
            }
            (Some((id, raised)), None) => {
                alarm.open = None;
                ("cleared", id, raised, top_of(before).unwrap_or(0), false)
            }
            (Some((id, raised)), Some(top)) => ("raised", id, raised, top, true),
            (None, None) => continue,
        };
        *ids += 1;
        let rule = &RULES[top];
        let limit = if high { rule.high } else { rule.low };
        let rules: Vec<serde_json::Value> = (0..RULES.len())
            .rev()
            .filter(|&r| state != "cleared" && alarm.held[r])
            .map(|r| {
                let l = if high { RULES[r].high } else { RULES[r].low };
                serde_json::json!({"rule": RULES[r].id, "priority": RULES[r].priority, "value": value, "limit": l})
            })
            .collect();
        let mut frame = serde_json::json!({
            "type": "alarm",
            "seq": *ids,
            "id": id,
            "state": state,
            "chair": key,
            "kind": "physiological",
            "vital": "sbp",
            "rule": rule.id,
            "condition": side,
            "value": value,
            "limit": limit,
            "priority": rule.priority,
            "message": format!("SBP {value} {} {limit}", if high { "above" } else { "below" }),
            "latching": false,
            "ts": ts,
            "received_at": now_us() / 1000,
            "raised_ts": raised_ts,
            "escalated": false,
            "escalation_level": 0,
            "reminder": false,
            "context": {"phase": "idle", "route": "iv"},
        });
        if !rules.is_empty() {
            frame["rules"] = rules.into();
        }
        if updated {
            frame["updated"] = true.into();
            if let Some(prev) = top_of(before) {
                if prev != top {
                    frame["previous_priority"] = RULES[prev].priority.into();
                }
            }
        }
        frames.push(Utf8Bytes::from(frame.to_string()));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_carry_their_length_in_the_shortest_form() {
        for (len, header) in [
            (5, vec![0x81, 5]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = vec![b'x'; len];
            let mut out = Vec::new();
            push_text_frame(&mut out, &payload);
            assert_eq!(out[..header.len()], header[..], "length {len}");
            assert_eq!(&out[header.len()..], &payload[..]);
        }
    }

    #[test]
    fn a_surge_raises_one_alarm_holding_both_rules_and_clears_it_after_the_hysteresis() {
        let (mut open, mut ids) = (Open::new(), 0);
        // The (rule, side, state, rules held) of the frames a reading of `sbp` at
        // `ts` gives.
        let mut step = |sbp: u32, ts: u64| -> Vec<(String, String, String, usize)> {
            let payload = format!(r#"{{"seq":1,"ts":{ts},"hr":80,"sbp":{sbp},"dbp":78}}"#);
            alarms(
                &mut open,
                &mut ids,
                "clinic/site0/chair/c3/vitals",
                payload.as_bytes(),
            )
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                assert_eq!((&v["chair"], &v["ts"]), (&"site0/c3".into(), &ts.into()));
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                let held = v["rules"].as_array().map_or(0, Vec::len);
                (s("rule"), s("condition"), s("state"), held)
            })
            .collect()
        };
        let t = |r: &str, s: &str, n| ("sbp_".to_string() + r, "high".into(), s.to_string(), n);
        assert!(step(120, 1).is_empty());
        assert_eq!(step(192, 2), [t("critical", "raised", 2)]);
        // Still above: nothing new.
        assert!(step(190, 3).is_empty());
        // Below the critical limit but not by the hysteresis: nothing.
        assert!(step(177, 4).is_empty());
        // The critical rule leaves: the same alarm, now medium.
        assert_eq!(step(150, 5), [t("warn", "raised", 1)]);
        assert_eq!(step(120, 6), [t("warn", "cleared", 0)]);
    }
}
