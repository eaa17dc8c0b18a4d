//! The gateway as a separate process, killed without warning.

mod common;

use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct GatewayProcess {
    child: Child,
    http: std::net::SocketAddr,
}

impl GatewayProcess {
    /// Start the `vitalgate` binary against the test broker and wait until ready.
    /// A gateway that exits while starting is started again on another port when
    /// it could not listen (the free port was taken in between by a parallel
    /// test's process), and otherwise fails the test with what it logged.
    async fn start(client_id: &str, prefix: &str, audit: &std::path::Path) -> GatewayProcess {
        for _ in 0..3 {
            let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{}.log", unique("gwproc-log")));
            let mut gw = Self::spawn(client_id, prefix, audit, &log);
            match gw.ready().await {
                Ok(()) => return gw,
                Err(status) => {
                    let logged = std::fs::read_to_string(&log).unwrap_or_default();
                    if !logged.contains("cannot listen") {
                        panic!("gateway process exited while starting ({status}):\n{logged}");
                    }
                }
            }
        }
        panic!("gateway process could not listen on three free ports");
    }

    fn spawn(
        client_id: &str,
        prefix: &str,
        audit: &std::path::Path,
        log: &std::path::Path,
    ) -> GatewayProcess {
        let (host, port) = test_broker();
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
            .env("VITALGATE_HTTP__BIND", http.to_string())
            .env("VITALGATE_MQTT__BROKER", "external")
            .env("VITALGATE_MQTT__HOST", &host)
            .env("VITALGATE_MQTT__PORT", port.to_string())
            .env("VITALGATE_MQTT__CLIENT_ID", client_id)
            .env(
                "VITALGATE_MQTT__TOPIC",
                format!("{prefix}/+/chair/+/vitals"),
            )
            .env(
                "VITALGATE_MQTT__SESSION_TOPIC",
                format!("{prefix}/+/chair/+/session"),
            )
            .env(
                "VITALGATE_MQTT__STATUS_TOPIC",
                format!("{prefix}/+/chair/+/status"),
            )
            .env("VITALGATE_AUDIT__PATH", audit)
            .env("VITALGATE_MQTT__RECONNECT_INITIAL_MS", "50")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("a log file for the gateway"))
            .spawn()
            .expect("the vitalgate binary starts");
        GatewayProcess { child, http }
    }

    /// Wait until `/ready` says 200; the process's exit status if it exits first.
    async fn ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if try_http_get(self.http, "/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
            {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "gateway process not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL the gateway, then devices keep publishing; restarted with the same client
/// id, it processes every reading published while it was down, once each, and
/// dashboards see the latest values.
#[tokio::test]
async fn readings_published_while_the_gateway_was_killed_are_processed_after_restart() {
    let client_id = unique("gwproc");
    let prefix = unique("site");
    let topic = format!("{prefix}/north/chair/1/vitals");
    let audit = audit_path();
    let mut first = GatewayProcess::start(&client_id, &prefix, &audit).await;
    first.child.kill().unwrap(); // SIGKILL: no goodbye, the broker keeps the session
    first.child.wait().unwrap();

    let (host, port) = test_broker();
    let mut dev = Device::connect(&host, port).await;
    for seq in 1..=20u64 {
        let spo2 = if seq == 15 { 78 } else { 97 };
        dev.publish(
            &topic,
            &reading(seq, json!({ "spo2": spo2, "hr": 60 + seq })),
        )
        .await;
    }
    dev.wait_acked(20).await; // all held by the broker for the dead gateway

    let second = GatewayProcess::start(&client_id, &prefix, &audit).await;
    eventually(
        || async { metric(second.http, "vitalgate_readings_ingested_total").await >= 20.0 },
        "every reading processed",
    )
    .await;
    assert_eq!(
        metric(second.http, "vitalgate_readings_ingested_total").await,
        20.0,
        "each reading exactly once"
    );
    // (With the default rules one low SpO2 reading raises nothing: both SpO2 rules
    // have a delay. The state shows the last reading won.)
    let mut dash = Dashboard::connect(second.http, "").await;
    let snap = dash.next_of("snapshot").await;
    assert_eq!(snap["chairs"][0]["vitals"]["hr"]["value"], 80.0);
    assert_eq!(snap["chairs"][0]["vitals"]["spo2"]["value"], 97.0);
    assert_eq!(
        metric(second.http, "vitalgate_readings_duplicate_total").await,
        0.0
    );
    drop(second);
    purge_session(&host, port, &client_id).await;
}

/// Every alarm event a dashboard saw is in the audit trail, even when the gateway is
/// killed the moment after: events are written before they are sent.
#[tokio::test]
async fn nothing_a_dashboard_saw_is_missing_from_the_audit_after_a_kill() {
    let client_id = unique("gwaudit");
    let prefix = unique("site");
    let audit = audit_path();
    let mut gw = GatewayProcess::start(&client_id, &prefix, &audit).await;
    let mut dash = Dashboard::connect(gw.http, "").await;
    dash.next_of("snapshot").await;
    let (host, port) = test_broker();
    let dev = Device::connect(&host, port).await;
    // SBP 190: over both shipped SBP limits, no delay: one SBP alarm holding both.
    dev.publish(
        &format!("{prefix}/north/chair/2/vitals"),
        &reading(1, json!({ "sbp": 190 })),
    )
    .await;
    let mut saw = vec![dash.next_of("alarm").await];
    assert_eq!(
        saw[0]["rules"].as_array().map(Vec::len),
        Some(2),
        "{}",
        saw[0]
    );
    dash.send(json!({ "type": "ack", "id": saw[0]["id"], "by": "nurse.kim" }))
        .await;
    saw.push(dash.next_of("alarm").await);
    assert_eq!(saw[1]["state"], "acknowledged");
    gw.child.kill().unwrap(); // SIGKILL right after the last frame arrived
    gw.child.wait().unwrap();

    let stored = vitalgate::audit::Audit::open(&audit, false)
        .unwrap()
        .query(Some("alarm"), Some("north/2"), None, None, 100)
        .unwrap();
    let stored: Vec<serde_json::Value> = stored
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(
        stored, saw,
        "the audit holds exactly the frames the dashboard saw"
    );
    purge_session(&host, port, &client_id).await;
}

/// Readings the broker has already sent to the gateway but the gateway has not
/// acknowledged when it dies are redelivered to the restarted gateway and
/// processed: the gateway is frozen (SIGSTOP) while readings arrive in its socket,
/// then killed (SIGKILL) without ever acknowledging them.
#[tokio::test]
async fn readings_in_flight_at_the_kill_are_redelivered_and_processed() {
    let client_id = unique("gwflight");
    let prefix = unique("site");
    let audit = audit_path();
    let mut gw = GatewayProcess::start(&client_id, &prefix, &audit).await;
    let (host, port) = test_broker();
    let mut dev = Device::connect(&host, port).await;
    let topic = format!("{prefix}/north/chair/3/vitals");
    let signal = |name: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    };
    signal("STOP", gw.child.id());
    // `kill` returns once the signal is queued; the process stops when one of its
    // threads takes it, and until then the others go on (acknowledging readings).
    stopped(gw.child.id()).await;
    // Accepted by the broker and sent on to the frozen gateway (within the
    // broker's in-flight window), never acknowledged by it.
    for seq in 1..=5u64 {
        let sbp = if seq == 3 { 195 } else { 120 };
        dev.publish(&topic, &reading(seq, json!({ "sbp": sbp })))
            .await;
    }
    dev.wait_acked(5).await;
    signal("KILL", gw.child.id());
    gw.child.wait().unwrap();

    let back = GatewayProcess::start(&client_id, &prefix, &audit).await;
    eventually(
        || async { metric(back.http, "vitalgate_readings_ingested_total").await >= 5.0 },
        "the readings in flight processed",
    )
    .await;
    assert_eq!(
        metric(back.http, "vitalgate_readings_ingested_total").await,
        5.0
    );
    // The surge in the middle raised its SBP alarm once (both limits met: one
    // alarm at the higher priority) and cleared it. A reading is counted when the
    // engine applies it, before its events' commit: wait for the journal.
    let states = || {
        let stored = vitalgate::audit::Audit::open(&audit, false)
            .unwrap()
            .query(Some("alarm"), Some("north/3"), None, None, 100)
            .unwrap();
        stored
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                format!(
                    "{} {}",
                    v["rule"].as_str().unwrap(),
                    v["state"].as_str().unwrap()
                )
            })
            .collect::<Vec<String>>()
    };
    eventually(
        || async { states().len() >= 2 },
        "the surge's alarm events in the audit trail",
    )
    .await;
    let states = states();
    assert_eq!(states, vec!["sbp_critical raised", "sbp_critical cleared"]);
    drop(back);
    purge_session(&host, port, &client_id).await;
}

/// Wait until every thread of `pid` is stopped (state `T` in `/proc`).
async fn stopped(pid: u32) {
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses and
                // may itself hold any character.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        })
    };
    eventually(|| async { all_stopped() }, "the gateway process stopped").await;
}
