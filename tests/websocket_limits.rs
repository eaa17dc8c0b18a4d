//! Keep-alive and size caps on dashboard connections.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket upgrade request for `/ws`, as a raw client sends it.
const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The close code of the first close frame in a server byte stream (after the HTTP
/// response), parsing unmasked server frames.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut at = start;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = bytes.get(at + header..at + header + len)?;
        if opcode == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        at += header + len;
    }
    None
}

/// A client that completes the handshake and then never answers pings is closed
/// with 4000 once the idle timeout passes.
#[tokio::test]
async fn silent_client_is_closed_with_4000() {
    let (mut c, prefix) = test_config();
    c.websocket.ping_interval_ms = 100;
    c.websocket.idle_timeout_ms = 300;
    let gw = TestGateway::start(c, prefix).await;
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut bytes))
        .await
        .expect("server closed the silent connection")
        .unwrap();
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    assert_eq!(close_code(&bytes), Some(4000));
    gw.stop().await;
}

/// A dashboard that answers pings stays connected past the idle timeout.
#[tokio::test]
async fn responsive_client_stays_connected() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.websocket.ping_interval_ms = 100;
    c.websocket.idle_timeout_ms = 300;
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    // Reading answers pings. Wait for an event well past the idle timeout: an alarm
    // published after the device has connected and several ping rounds have run.
    let dev = gw.device().await;
    for seq in 1..=6 {
        let spo2 = if seq % 2 == 1 { 80 } else { 99 };
        dev.publish(
            &gw.topic("n", "1"),
            &reading(seq, serde_json::json!({ "spo2": spo2 })),
        )
        .await;
        dash.next_of("alarm").await;
        // Let several ping intervals pass between readings, answering pings meanwhile.
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(150);
        while let Ok(Some(_)) =
            tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut dash.ws)).await
        {
        }
    }
    assert_eq!(gw.metric("vitalgate_ws_clients").await, 1.0);
    gw.stop().await;
}

/// A message over `websocket.max_message_bytes` is refused with 1009.
#[tokio::test]
async fn oversized_message_is_closed_with_1009() {
    let (mut c, prefix) = test_config();
    c.websocket.max_message_bytes = 1024;
    c.websocket.max_frame_bytes = 1024;
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let big = format!(r#"{{"type":"snapshot","pad":"{}"}}"#, "x".repeat(4096));
    dash.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(dash.closed().await, Some(1009));
    gw.stop().await;
}

/// A masked client frame (mask key zero, so the payload goes as it is).
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Send `frames` (an oversized message) and then a close frame without reading in
/// between, as a client streaming a large message does, while reading what the
/// gateway sends. The gateway must read up to the client's close before it closes
/// TCP: closing with input unread makes the kernel send a reset, and the client
/// never reads the 1009 (RFC 6455 §7.1.1). Returns the close code read.
async fn oversized_then_close(frames: Vec<u8>) -> Option<u16> {
    let (mut c, prefix) = test_config();
    c.websocket.max_message_bytes = 1024;
    c.websocket.max_frame_bytes = 1024;
    // Long, so that a gateway ending the close by its timeout instead of on the
    // client's close frame fails the deadline below.
    c.websocket.close_timeout_ms = 30_000;
    let gw = TestGateway::start(c, prefix).await;
    let s = TcpStream::connect(gw.http()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(UPGRADE).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut bytes = frames;
        bytes.extend(client_frame(0x8, true, &1000u16.to_be_bytes()));
        // The gateway may close once it has the close frame: a write error after
        // that is not the test's concern, what the reader saw is.
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut bytes))
        .await
        .expect("the gateway closed the connection well before its close timeout");
    assert!(
        read.is_ok(),
        "the connection must end cleanly, not with {read:?}"
    );
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    drop(writer.await);
    assert_eq!(gw.metric("vitalgate_ws_clients").await, 0.0);
    gw.stop().await;
    close_code(&bytes)
}

/// A message over the cap sent in fragments: the client reads 1009 and the
/// connection ends cleanly once the client has sent its close.
#[tokio::test]
async fn oversized_fragmented_message_closes_cleanly_with_1009() {
    let piece = vec![b'x'; 512];
    let mut frames = client_frame(0x1, false, &piece);
    for _ in 0..512 {
        frames.extend(client_frame(0x0, false, &piece));
    }
    frames.extend(client_frame(0x0, true, &piece));
    assert_eq!(oversized_then_close(frames).await, Some(1009));
}

/// One frame over `websocket.max_frame_bytes`: the same clean 1009.
#[tokio::test]
async fn oversized_frame_closes_cleanly_with_1009() {
    let frames = client_frame(0x1, true, &vec![b'x'; 256 * 1024]);
    assert_eq!(oversized_then_close(frames).await, Some(1009));
}

/// A client that breaks the WebSocket protocol (here an unmasked frame, which RFC
/// 6455 forbids a client) is closed with 1002 and counted out.
#[tokio::test]
async fn a_protocol_violation_is_closed_with_1002() {
    let (c, prefix) = test_config();
    let gw = TestGateway::start(c, prefix).await;
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    // A text frame "hi" without the mask bit.
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut bytes))
        .await
        .expect("the gateway closed the connection");
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    assert_eq!(close_code(&bytes), Some(1002));
    eventually(
        || async { gw.metric("vitalgate_ws_clients").await == 0.0 },
        "the connection is counted out",
    )
    .await;
    gw.stop().await;
}

/// Past `websocket.max_connections`, upgrades are refused with 503 and counted, the
/// dashboards already connected keep receiving alarms, and a freed place is reused.
#[tokio::test]
async fn connections_over_the_limit_are_refused_and_existing_ones_unaffected() {
    let (gw, mut first, dev) = setup(|c| c.websocket.max_connections = 2).await;
    let mut second = gw.dashboard().await;
    second.next_of("snapshot").await;
    let url = format!("ws://{}/ws", gw.http());
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| ())),
    }
    let m = "vitalgate_ws_refused_total{reason=\"max_connections\"}";
    assert_eq!(gw.metric(m).await, 1.0);

    dev.publish(
        &gw.topic("north", "1"),
        &reading(1, serde_json::json!({"spo2": 80})),
    )
    .await;
    assert_eq!(first.next_of("alarm").await["state"], "raised");
    assert_eq!(second.next_of("alarm").await["state"], "raised");

    // One leaves: its place is freed once the server has closed it.
    second.ws.close(None).await.unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            let _ = futures_util::StreamExt::next(&mut ws).await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed place was not reused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

/// A dashboard that floods commands is closed with 1008 and counted.
#[tokio::test]
async fn command_flood_is_closed_with_1008() {
    let (gw, mut dash, _dev) = setup(|c| {
        c.websocket.commands_per_second = 1.0;
        c.websocket.command_burst = 5;
    })
    .await;
    for _ in 0..20 {
        let cmd = Message::text(r#"{"type":"unsubscribe_vitals"}"#);
        if dash.ws.send(cmd).await.is_err() {
            break;
        }
    }
    assert_eq!(dash.closed().await, Some(1008));
    let m = "vitalgate_ws_refused_total{reason=\"command_rate\"}";
    assert_eq!(gw.metric(m).await, 1.0);
    gw.stop().await;
}

/// Acknowledgements are not metered: a station acknowledging many alarms at once
/// after a storm stays connected.
#[tokio::test]
async fn acknowledging_many_alarms_at_once_is_not_rate_limited() {
    let (gw, mut dash, dev) = setup(|c| {
        c.websocket.commands_per_second = 1.0;
        c.websocket.command_burst = 2;
    })
    .await;
    let mut ids = Vec::new();
    for chair in 0..20 {
        dev.publish(
            &gw.topic("storm", &chair.to_string()),
            &reading(1, serde_json::json!({"spo2": 80})),
        )
        .await;
        ids.push(dash.next_of("alarm").await["id"].clone());
    }
    for id in &ids {
        dash.send(serde_json::json!({"type": "ack", "id": id, "by": "nurse.kim"}))
            .await;
    }
    for _ in &ids {
        assert_eq!(dash.next_of("alarm").await["state"], "acknowledged");
    }
    let m = "vitalgate_ws_refused_total{reason=\"command_rate\"}";
    assert_eq!(gw.metric(m).await, 0.0);
    gw.stop().await;
}

/// A connection that sends nothing, or trickles an incomplete request, is dropped
/// after `http.handshake_timeout_ms`; a dashboard connected before keeps working
/// long past it.
#[tokio::test]
async fn connections_that_never_finish_their_request_are_dropped() {
    let (gw, mut dash, dev) = setup(|c| c.http.handshake_timeout_ms = 300).await;
    let mut silent = TcpStream::connect(gw.http()).await.unwrap();
    let mut trickle = TcpStream::connect(gw.http()).await.unwrap();
    trickle
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A complete request, then nothing on the kept-alive connection.
    let mut kept = TcpStream::connect(gw.http()).await.unwrap();
    kept.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for conn in [&mut silent, &mut trickle, &mut kept] {
        let mut buf = Vec::new();
        // Closed by the gateway (EOF or reset), well before the test's deadline.
        let read = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "connection still open");
    }
    assert_eq!(
        gw.metric("vitalgate_ws_refused_total{reason=\"handshake_timeout\"}")
            .await,
        3.0
    );
    // The dashboard, connected before both, outlived the deadline.
    dev.publish(
        &gw.topic("north", "1"),
        &reading(1, serde_json::json!({ "spo2": 80 })),
    )
    .await;
    assert_eq!(dash.next_of("alarm").await["state"], "raised");
    gw.stop().await;
}
