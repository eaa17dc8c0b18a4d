//! Slow dashboards, the embedded broker, graceful shutdown and startup errors.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use vitalgate::config::BrokerMode;
use vitalgate::Gateway;

/// A dashboard that never reads is cut off with 4008 once its queue fills, while a
/// dashboard that reads receives every alarm, in order, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_dashboard_is_cut_off_and_fast_one_gets_every_alarm() {
    // A private broker sized for the burst: the stock Mosquitto queue (1000) would
    // drop part of it silently.
    let broker = PrivateBroker::start().await;
    let (mut c, prefix) = test_config();
    c.mqtt.host = "127.0.0.1".into();
    c.mqtt.port = broker.port;
    simple_rules(&mut c);
    c.websocket.queue_capacity = 256;
    let gw = TestGateway::start(c, prefix).await;

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.http()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (slow, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", gw.http()), stream)
        .await
        .unwrap();

    let mut fast = gw.dashboard().await;
    fast.next_of("snapshot").await;
    let dev = gw.device().await;
    let topic = gw.topic("north", "1");
    const EVENTS: u64 = 20_000;
    let first = {
        dev.publish(&topic, &reading(1, json!({"spo2": 80}))).await;
        fast.next_of("alarm").await["seq"].as_u64().unwrap()
    };
    // Alternate breach and recovery: one alarm event per reading. Published in
    // chunks smaller than the queue, each received by the fast dashboard before the
    // next, so the fast one can never fall a queue behind; the slow one falls
    // further behind with every chunk.
    const CHUNK: u64 = 200;
    let mut seq = 1;
    let mut expected = first + 1;
    while seq < EVENTS {
        for _ in 0..CHUNK {
            seq += 1;
            let spo2 = if seq % 2 == 0 { 99 } else { 80 };
            dev.publish(&topic, &reading(seq, json!({ "spo2": spo2 })))
                .await;
        }
        for _ in 0..CHUNK {
            let a = fast.next_of("alarm").await;
            assert_eq!(
                a["seq"].as_u64().unwrap(),
                expected,
                "fast dashboard saw a gap"
            );
            expected += 1;
        }
    }
    assert_eq!(gw.metric("vitalgate_ws_slow_disconnects_total").await, 1.0);
    // Cut off at once: the hub no longer holds it, only the fast one.
    assert_eq!(gw.gateway.app().dashboards.hub.subscriber_count(), 1);

    // The slow client finds its connection closed after whatever was buffered.
    let mut slow = Dashboard { ws: slow };
    let code = slow.closed().await;
    assert!(code.is_none() || code == Some(4008), "close code {code:?}");
    gw.stop().await;
    drop(broker);
}

/// The README's default: no external broker needed.
#[tokio::test]
async fn embedded_broker_works_end_to_end() {
    let mut c = vitalgate::Config::default();
    assert_eq!(c.mqtt.broker, BrokerMode::Embedded);
    simple_rules(&mut c);
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    c.mqtt.embedded.bind = "127.0.0.1:0".parse().unwrap();
    c.mqtt.client_id = unique("gw");
    c.audit.path = audit_path();
    let gw = TestGateway::start(c, "clinic".into()).await;
    assert_ne!(gw.gateway.broker().port, 1883);
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("demo", "1"), &reading(1, json!({"spo2": 83})))
        .await;
    let alarm = dash.next_of("alarm").await;
    assert_eq!(alarm["chair"], "demo/1");
    assert_eq!(alarm["state"], "raised");
    gw.stop().await;
}

/// SIGTERM path: queued alarms are delivered, then close 1001; new connections and
/// readiness are refused at once.
#[tokio::test]
async fn graceful_shutdown_flushes_and_closes_with_1001() {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let client_id = c.mqtt.client_id.clone();
    let gw = TestGateway::start(c, prefix).await;
    let http = gw.http();
    assert_eq!(http_get(http, "/ready").await.0, 200);
    assert_eq!(http_get(http, "/live").await.0, 200);
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 80})))
        .await;
    dash.next_of("alarm").await;

    let broker = gw.gateway.broker().clone();
    let stop = tokio::spawn(gw.gateway.shutdown());
    assert_eq!(dash.closed().await, Some(1001));
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("shutdown within the grace period")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "listener closed"
    );
    purge_session(&broker.host, broker.port, &client_id).await;
}

#[tokio::test]
async fn ready_reports_not_ready_without_a_broker() {
    let (mut c, prefix) = test_config();
    // Nothing listens here: the gateway starts, retries with backoff, and is not ready.
    c.mqtt.port = free_port();
    let _ = prefix;
    let gw = Gateway::start(c).await.unwrap();
    let (status, body) = http_get(gw.http_addr(), "/ready").await;
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mqtt_subscribed"], false);
    assert_eq!(v["listening"], true);
    gw.shutdown().await;
}

#[test]
fn binary_refuses_a_config_with_an_unknown_key_naming_key_and_file() {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("site.toml");
    std::fs::write(&path, "[mqtt]\nclientid = \"x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mqtt.clientid"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .arg("--check")
        .env("VITALGATE_WEBSOCKET__QUEUE_CAPACITY", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("websocket.queue_capacity"), "{stderr}");
    assert!(
        stderr.contains("VITALGATE_WEBSOCKET__QUEUE_CAPACITY"),
        "{stderr}"
    );

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/vitalgate.toml"
        ))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--check` reads what the gateway would read at start: a missing JWT key, TLS CA
/// file or audit directory fails it, naming the file.
#[test]
fn check_reads_the_files_the_gateway_needs() {
    for (var, value, named) in [
        (
            "VITALGATE_AUTH__KEY_FILE",
            "/nonexistent/jwt.key",
            "/nonexistent/jwt.key",
        ),
        (
            "VITALGATE_MQTT__TLS__CA_FILE",
            "/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        (
            "VITALGATE_AUDIT__PATH",
            "/nonexistent/a.sqlite3",
            "/nonexistent/a.sqlite3",
        ),
        // A directory that takes no new files (procfs, even for root).
        (
            "VITALGATE_AUDIT__PATH",
            "/proc/a.sqlite3",
            "does not take new files",
        ),
    ] {
        let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"));
        check.arg("--check").env(var, value);
        if var.starts_with("VITALGATE_AUTH") {
            check
                .env("VITALGATE_AUTH__MODE", "jwt")
                .env("VITALGATE_AUTH__AUDIENCE", "station");
        }
        if var.starts_with("VITALGATE_MQTT") {
            check.env("VITALGATE_MQTT__BROKER", "external");
        }
        let out = check.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: {stderr}");
        assert!(stderr.contains(named), "{var}: {stderr}");
    }
}

/// A start-up error names each cause once: the module errors end their message
/// with their source's, which the binary does not repeat.
#[test]
fn a_startup_error_says_each_cause_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["--config", "/nonexistent/vitalgate.toml", "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("/nonexistent/vitalgate.toml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// TLS settings are checked before anything starts: an unreadable CA file is a
/// startup error naming the key and the file.
#[tokio::test]
async fn unreadable_tls_ca_file_stops_startup_with_a_clear_error() {
    // External broker: the file is read at start-up. Embedded: TLS is refused outright.
    for (broker, names) in [
        (
            BrokerMode::External,
            &["mqtt.tls.ca_file", "/nonexistent/ca.pem"][..],
        ),
        (BrokerMode::Embedded, &["mqtt.tls"][..]),
    ] {
        let (mut c, _) = test_config();
        c.mqtt.broker = broker;
        c.mqtt.tls = Some(vitalgate::config::TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            client_cert_file: None,
            client_key_file: None,
        });
        let err = Gateway::start(c)
            .await
            .err()
            .expect("startup refused")
            .to_string();
        for name in names {
            assert!(err.contains(name), "{err}");
        }
    }
}

/// SIGTERM with hundreds of dashboards connected: each receives the alarm already
/// queued for it, then close 1001, and the gateway stops within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_with_hundreds_of_dashboards_delivers_queued_alarms() {
    let (gw, mut watcher, dev) = setup(|c| c.shutdown.grace_period_ms = 5_000).await;
    let mut dashboards = Vec::new();
    for _ in 0..200 {
        let mut d = gw.dashboard().await;
        d.next_of("snapshot").await;
        dashboards.push(d);
    }
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({"spo2": 79})))
        .await;
    // Once one dashboard has it, the hub has queued it for every dashboard.
    let alarm = watcher.next_of("alarm").await;

    let started = std::time::Instant::now();
    let broker = gw.gateway.broker().clone();
    let client_id = gw.gateway.app().config.mqtt.client_id.clone();
    let stop = tokio::spawn(gw.gateway.shutdown());
    for d in dashboards.iter_mut() {
        let got = d.next_of("alarm").await;
        assert_eq!(got["id"], alarm["id"]);
        assert_eq!(d.closed().await, Some(1001));
    }
    stop.await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    purge_session(&broker.host, broker.port, &client_id).await;
}

/// A configuration error is printed as it is (naming the key and where it came from)
/// and nothing else, even with `RUST_BACKTRACE` set in the operator's environment.
#[test]
fn a_configuration_error_prints_the_error_and_no_backtrace() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .arg("--check")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env("VITALGATE_MQTT__PORT", "not-a-port")
        .output()
        .expect("vitalgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mqtt.port"), "{stderr}");
    assert!(stderr.contains("VITALGATE_MQTT__PORT"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

/// Under systemd (`Type=notify`, `WatchdogSec`): READY=1 once listening, the broker
/// state as STATUS, WATCHDOG=1 pings while the alarm timers tick, STOPPING=1 at a
/// graceful stop. The service manager's socket is the test's.
/// The gateway binary (embedded broker) started as a service manager would, with
/// `watchdog_usec` if given, and the manager's socket it notifies (reads time out
/// after `read_timeout_s`). Returns the socket, the process and the directory to
/// remove.
fn under_service_manager(
    watchdog_usec: Option<&str>,
    read_timeout_s: u64,
) -> (
    std::os::unix::net::UnixDatagram,
    std::process::Child,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(unique("notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(read_timeout_s)))
        .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vitalgate"));
    if let Some(usec) = watchdog_usec {
        command.env("WATCHDOG_USEC", usec);
    }
    let child = command
        .env("NOTIFY_SOCKET", &path)
        .env("VITALGATE_HTTP__BIND", "127.0.0.1:0")
        .env("VITALGATE_MQTT__EMBEDDED__BIND", "127.0.0.1:0")
        .env("VITALGATE_MQTT__CLIENT_ID", unique("notify-gw"))
        .env("VITALGATE_AUDIT__PATH", audit_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (socket, child, dir)
}

#[test]
fn the_service_manager_hears_ready_watchdog_and_stopping() {
    let (socket, mut child, dir) = under_service_manager(Some("2000000"), 15);
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    // READY, the status, and two watchdog pings (every 0.5 s for a 2 s watchdog).
    while heard
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        let n = socket.recv(&mut buf).expect("a notification within 15 s");
        heard.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(heard[0].contains("READY=1"), "{heard:?}");
    assert!(heard.iter().any(|m| m.contains("STATUS=")), "{heard:?}");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING within 15 s");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// The service manager's STATUS follows the broker subscription at once, not at the
/// next watchdog round (7.5 s for the shipped unit): `systemctl status` right after
/// `systemctl start` says "subscribed".
#[test]
fn the_status_says_subscribed_as_soon_as_it_is() {
    // Without a watchdog the status round is every 5 s: well over the 3 s allowed.
    let (socket, mut child, dir) = under_service_manager(None, 3);
    let mut buf = [0u8; 512];
    let mut heard = Vec::new();
    let subscribed = loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.contains("STATUS=subscribed to the broker") {
                    break true;
                }
                heard.push(m);
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    assert!(subscribed, "no 'subscribed' status within 3 s: {heard:?}");
}

/// A soft open-file limit below what `websocket.max_connections` allows (a shell's
/// or systemd's default 1024 against 10,000 dashboards) is raised at start, toward
/// the hard limit: otherwise `accept` fails before anyone is refused with a 503.
#[test]
fn a_low_open_file_limit_is_raised_at_start() {
    use std::io::BufRead;
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < 1256) {
        return; // this machine cannot give what the test asks for
    }
    let audit = audit_path();
    let mut child = std::process::Command::new("sh")
        .args(["-c", r#"ulimit -Sn 512 && exec "$0""#])
        .arg(env!("CARGO_BIN_EXE_vitalgate"))
        .env("VITALGATE_WEBSOCKET__MAX_CONNECTIONS", "1000")
        .env("VITALGATE_HTTP__BIND", "127.0.0.1:0")
        .env("VITALGATE_MQTT__BROKER", "external")
        .env("VITALGATE_MQTT__PORT", free_port().to_string())
        .env("VITALGATE_AUDIT__PATH", &audit)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let done = line.contains("vitalgate started");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let raised = seen
        .iter()
        .find(|l| l.contains("raised the open-file limit"))
        .unwrap_or_else(|| panic!("no line says the limit was raised:\n{}", seen.join("\n")));
    assert!(raised.contains("from=512 to=1256"), "{raised}");
}
