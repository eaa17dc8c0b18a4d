//! A scripted infusion session over Mosquitto with the shipped rules: baseline,
//! infusion with a blood-pressure surge and a desaturation, recovery, discharge
//! readiness. Asserts the exact events a dashboard receives, their context, and what
//! the audit API returns after a restart.

mod common;

use common::*;
use serde_json::{json, Value};

/// The shipped rules and technical alarms with test topics and a fresh audit file;
/// no escalation or reminders (their timing is tested in the core), and a short
/// discharge period so the test need not wait 15 minutes.
fn session_config() -> (vitalgate::Config, String) {
    let (mut c, prefix) = test_config();
    c.alarms.escalate_after_ms.high = 0;
    c.alarms.escalate_after_ms.medium = 0;
    c.alarms.escalate_after_ms.low = 0;
    c.alarms.reminder_ms = 0;
    c.session.discharge_stable_ms = 1_500;
    (c, prefix)
}

/// One line per event: `alarm <rule> <state>[ updated][ <reason>]` or
/// `session <change> <phase>`.
fn line(v: &Value) -> String {
    match v["type"].as_str() {
        Some("alarm") => {
            let mut s = format!(
                "alarm {} {}",
                v["rule"].as_str().unwrap(),
                v["state"].as_str().unwrap()
            );
            if v["updated"] == true {
                s.push_str(" updated");
            }
            if let Some(r) = v["reason"].as_str() {
                s.push(' ');
                s.push_str(r);
            }
            s
        }
        Some("session") => format!(
            "session {} {}",
            v["change"].as_str().unwrap(),
            v["phase"].as_str().unwrap()
        ),
        other => panic!("unexpected frame {other:?}: {v}"),
    }
}

/// The rules an alarm frame holds, highest priority first.
fn rules_of(v: &Value) -> Vec<&str> {
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect()
}

/// The next `n` alarm and session frames.
async fn events(dash: &mut Dashboard, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = dash.next().await;
        if v["type"] == "alarm" || v["type"] == "session" {
            out.push(v);
        }
    }
    out
}

struct Script<'a> {
    dev: &'a mut Device,
    topic: String,
    seq: u64,
}

impl Script<'_> {
    /// A full reading at device time `t`.
    async fn read(
        &mut self,
        t: u64,
        hr: f64,
        spo2: f64,
        sbp: f64,
        rr: f64,
        pump: Option<(f64, f64)>,
    ) {
        self.seq += 1;
        let mut v = json!({
            "seq": self.seq, "ts": t, "hr": hr, "spo2": spo2, "sbp": sbp, "dbp": 80, "rr": rr,
        });
        if let Some((rate, infused)) = pump {
            v["pump"] = json!({ "running": rate > 0.0, "rate_ml_h": rate, "infused_ml": infused });
        }
        self.dev.publish(&self.topic, &v).await;
        self.dev.wait_acked(1).await;
    }
}

#[tokio::test]
async fn scripted_infusion_session_gives_the_expected_alarms_and_audit() {
    let (config, prefix) = session_config();
    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    let session_topic = gw.session_topic("north", "1");
    // Device time: the readings were taken over the last hour (the device clock is
    // what orders them and times delays and trends); session messages carry the
    // clinic system's time, now.
    let t0 = now_ms() - 3_600_000;
    let min = 60_000u64;
    let mut seen: Vec<Value> = Vec::new();

    // Baseline: resting values, pump stopped.
    let baseline = json!({
        "phase": "baseline", "patient": "P-7", "session_number": 1, "session_count": 6,
        "route": "iv", "ts": now_ms(), "by": "nurse.kim"
    });
    dev.publish_retained(&session_topic, baseline.to_string())
        .await;
    seen.extend(events(&mut dash, 1).await);
    let mut s = Script {
        dev: &mut dev,
        topic: gw.topic("north", "1"),
        seq: 0,
    };
    for (i, sbp) in [128.0, 126.0, 250.0, 129.0, 128.0].iter().enumerate() {
        // One cuff artefact (250): the median ignores it.
        s.read(
            t0 + (i as u64 + 1) * min,
            72.0,
            98.0,
            *sbp,
            14.0,
            Some((0.0, 0.0)),
        )
        .await;
    }
    // The artefact raises what any monitor would in the baseline phase: one SBP
    // high alarm (the high limit, with the not-fit-to-start advisory), cleared on
    // the next cuff cycle; it does not move the baseline.
    seen.extend(events(&mut dash, 2).await);

    // Infusion: 40 minutes at 40 ml/h.
    let start = t0 + 5 * min;
    let infusion = json!({
        "phase": "infusion", "patient": "P-7", "session_number": 1, "session_count": 6,
        "route": "iv", "ts": now_ms(), "by": "nurse.kim"
    });
    s.dev
        .publish_retained(&session_topic, infusion.to_string())
        .await;
    seen.extend(events(&mut dash, 1).await);
    for m in [1u64, 10, 20, 29] {
        s.read(
            start + m * min,
            80.0,
            98.0,
            132.0,
            14.0,
            Some((40.0, m as f64 * 0.6)),
        )
        .await;
    }
    // Minute 30: blood-pressure surge to 175: four rules met, one alarm.
    s.read(
        start + 30 * min,
        84.0,
        98.0,
        175.0,
        14.0,
        Some((40.0, 18.0)),
    )
    .await;
    seen.extend(events(&mut dash, 1).await);
    // Minute 31: 150, under this patient's medium limit (baseline 128 + 30) by its
    // hysteresis: the medium limit and the rise leave the alarm (one update), the
    // two latching rules hold it; minute 32: 130.
    s.read(
        start + 31 * min,
        82.0,
        98.0,
        150.0,
        14.0,
        Some((40.0, 18.6)),
    )
    .await;
    seen.extend(events(&mut dash, 1).await);
    s.read(
        start + 32 * min,
        80.0,
        98.0,
        130.0,
        14.0,
        Some((40.0, 19.2)),
    )
    .await;
    // The latched surge alarm stays until a nurse acknowledges it: one
    // acknowledgement for both of its latched rules.
    let id = seen
        .iter()
        .find(|v| v["rule"] == "sbp_early_session" && v["state"] == "raised")
        .unwrap()["id"]
        .clone();
    dash.send(json!({ "type": "ack", "id": id, "by": "nurse.kim" }))
        .await;
    seen.extend(events(&mut dash, 2).await);
    // Minute 35: desaturation with a slow respiratory rate, 20 s long.
    let desat = start + 35 * min;
    for (k, sec) in [0u64, 5, 10, 15].iter().enumerate() {
        s.read(
            desat + sec * 1_000,
            84.0,
            93.0,
            130.0,
            8.0,
            Some((40.0, 21.0)),
        )
        .await;
        if k > 0 {
            seen.extend(events(&mut dash, 1).await);
        }
    }
    s.read(desat + 20_000, 80.0, 98.0, 130.0, 14.0, Some((40.0, 21.1)))
        .await;
    seen.extend(events(&mut dash, 3).await);

    // Recovery, back near baseline: ready for discharge after the stable period.
    let recovery = json!({
        "phase": "recovery", "patient": "P-7", "session_number": 1, "session_count": 6,
        "route": "iv", "ts": now_ms(), "by": "nurse.kim"
    });
    s.dev
        .publish_retained(&session_topic, recovery.to_string())
        .await;
    seen.extend(events(&mut dash, 1).await);
    s.read(start + 45 * min, 76.0, 98.0, 135.0, 14.0, Some((0.0, 24.0)))
        .await;
    seen.extend(events(&mut dash, 1).await);

    // Nothing else is on its way: a requested snapshot comes next, with no alarm
    // active.
    dash.send(json!({ "type": "snapshot" })).await;
    let snap = dash.next().await;
    assert_eq!(snap["type"], "snapshot", "an unexpected event: {snap}");
    assert_eq!(snap["alarms"], json!([]));
    assert_eq!(snap["chairs"][0]["session"]["discharge_ready"], true);

    let lines: Vec<String> = seen.iter().map(line).collect();
    assert_eq!(
        lines,
        vec![
            "session phase baseline",
            "alarm sbp_critical raised",
            "alarm sbp_critical cleared",
            "session phase infusion",
            "alarm sbp_early_session raised",
            "alarm sbp_early_session raised updated",
            "alarm sbp_early_session acknowledged",
            "alarm sbp_early_session cleared acknowledged",
            "alarm respiratory_depression raised",
            "alarm rr_warn raised",
            "alarm spo2_warn raised",
            "alarm spo2_warn cleared",
            "alarm rr_warn cleared",
            "alarm respiratory_depression cleared",
            "session phase recovery",
            "session discharge_ready recovery",
        ]
    );

    // The baseline is the median, artefact ignored, and is sent with the infusion.
    let artefact = &seen[1];
    assert_eq!(rules_of(artefact), ["sbp_critical", "sbp_not_fit_to_start"]);
    let infusion_frame = &seen[3];
    assert_eq!(infusion_frame["previous"], "baseline");
    assert_eq!(
        infusion_frame["baseline"],
        json!({ "hr": 72.0, "spo2": 98.0, "sbp": 128.0, "dbp": 80.0, "rr": 14.0 })
    );
    // Each alarm carries its context: the surge alarm, for one, at the priority of
    // its highest rule (early session), with every rule it meets.
    let early = &seen[4];
    assert_eq!(
        rules_of(early),
        [
            "sbp_early_session",
            "sbp_warn",
            "sbp_over_baseline",
            "sbp_rising"
        ]
    );
    assert_eq!(early["priority"], "high");
    assert_eq!(early["kind"], "physiological");
    assert_eq!(early["limit"], 160.0);
    assert_eq!(early["value"], 175.0);
    assert_eq!(early["latching"], true);
    let ctx = &early["context"];
    assert_eq!(ctx["phase"], "infusion");
    assert_eq!(ctx["patient"], "P-7");
    assert_eq!(ctx["session_number"], 1);
    // Minutes into the infusion count on the gateway clock from the session
    // message (here: moments ago; the core tests check 30 minutes in).
    let minute = ctx["infusion_minute"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&minute), "{minute}");
    assert_eq!(
        ctx["pump"],
        json!({ "running": true, "rate_ml_h": 40.0, "infused_ml": 18.0 })
    );
    assert_eq!(ctx["baseline"], 128.0);
    // The baseline-relative limit: the stricter of 128 + 40 and 128 x 1.3.
    assert_eq!(early["rules"][2]["limit"], 166.4);
    // The medium limit widened to this patient's baseline + 30.
    assert_eq!(early["rules"][1]["limit"], 158.0);
    // At 150 the medium limit and the rise have left it; the latched rules hold it,
    // still high, with the same id.
    let update = &seen[5];
    assert_eq!(update["id"], early["id"]);
    assert_eq!(rules_of(update), ["sbp_early_session", "sbp_over_baseline"]);
    assert_eq!(update["priority"], "high");
    assert_eq!(update.get("previous_priority"), None);
    // The combined alarm names both parts.
    let resp = &seen[8];
    assert_eq!(resp["priority"], "high");
    assert_eq!(resp["context"]["parts"][0]["vital"], "rr");
    assert_eq!(resp["context"]["parts"][1]["limit"], 95.0);
    assert_eq!(seen[7]["acknowledged_by"], "nurse.kim");
    assert_eq!(seen.last().unwrap()["discharge_ready"], true);

    // Restart: the audit shows every alarm event the dashboard saw, in order, and
    // the chair's session is restored.
    let saw: Vec<(u64, u64, String)> = seen
        .iter()
        .filter(|v| v["type"] == "alarm")
        .map(|v| {
            (
                v["seq"].as_u64().unwrap(),
                v["id"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    gw.stop().await;
    let gw = TestGateway::start(config, prefix).await;
    let (status, body) = http_get(gw.http(), "/api/alarms?chair=north/1").await;
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).unwrap();
    let stored: Vec<(u64, u64, String)> = audit["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["seq"].as_u64().unwrap(),
                v["id"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(stored, saw);
    let (status, body) = http_get(gw.http(), "/api/sessions/north/1").await;
    assert_eq!(status, 200, "{body}");
    let sessions: Value = serde_json::from_str(&body).unwrap();
    let changes: Vec<String> = sessions["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(line)
        .collect();
    assert_eq!(
        changes,
        vec![
            "session phase baseline",
            "session phase infusion",
            "session phase recovery",
            "session discharge_ready recovery"
        ]
    );
    assert_eq!(sessions["current"]["phase"], "recovery");
    assert_eq!(sessions["current"]["patient"], "P-7");
    assert_eq!(sessions["current"]["baseline"]["sbp"], 128.0);
    // What cannot name a chair or a time range is refused, not answered with nothing.
    for (bad, expected) in [
        ("/api/alarms?chair=north", 400),
        ("/api/alarms?chair=north/1/x", 400),
        ("/api/alarms?chair=a%20b/1", 400),
        ("/api/alarms?chair=north/1&from=5&to=4", 400),
        ("/api/alarms?from=abc", 400),
        ("/api/alarms?limit=-1", 400),
        ("/api/alarms?limit=0", 400),
        ("/api/alarms?from=1&from=2", 400),
        ("/api/sessions/north/1?to=x", 400),
        ("/api/sessions/north", 400),
        ("/api/station?access_token=a&access_token=b", 400),
        ("/api/sessions", 404),
        ("/api/chairs", 404),
        ("/api/sessions/north/99", 404),
    ] {
        let (status, body) = http_get(gw.http(), bad).await;
        assert_eq!(status, expected, "{bad}: {body}");
        // Every refusal is the same JSON shape, saying what is wrong.
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{bad}: {e}: {body}"));
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {body}"
        );
    }
    // The endpoints only read: another method is refused the same way, naming GET.
    for (method, path) in [
        ("POST", "/api/alarms"),
        ("DELETE", "/api/alarms?chair=north/1"),
        ("PUT", "/api/sessions/north/1"),
        ("POST", "/api/station"),
    ] {
        let (status, head, body) = http_call(gw.http(), method, path).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(
            head.contains("\r\nallow: get,head"),
            "{method} {path}: {head}"
        );
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
        assert!(error["error"].as_str().is_some_and(|m| m.contains("GET")));
    }
    // The retained message is the clinic's; clear it so the shared broker keeps nothing.
    let dev = gw.device().await;
    dev.publish_retained(&session_topic, Vec::new()).await;
    gw.stop().await;
}

/// The next frame that is not a live-vitals update.
async fn next_event(dash: &mut Dashboard) -> Value {
    loop {
        let v = dash.next().await;
        if v["type"] != "vitals" {
            return v;
        }
    }
}

/// [`simple_rules`] (whose one rule is high priority) with timers every 100 ms and
/// high-priority alarms escalated every `after_ms`, up to `max_level`.
fn escalating(after_ms: u64, max_level: u8) -> (vitalgate::config::Config, String) {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.alarms.tick_ms = 100;
    c.alarms.escalate_after_ms.high = after_ms;
    c.alarms.max_escalation_level = max_level;
    (c, prefix)
}

#[tokio::test]
async fn dashboard_commands_technical_alarms_escalation_and_reminders() {
    let (mut c, prefix) = escalating(400, 1);
    c.alarms.reminder_ms = 400;
    c.technical
        .stale_ms
        .insert(vitalgate::core::Vital::Spo2, 1_000);
    c.technical.offline_ms = 60_000;
    let gw = TestGateway::start(c, prefix).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    let topic = gw.topic("east", "4");

    // A dashboard starts the session; a jump straight to discharged is refused.
    for phase in ["baseline", "infusion"] {
        dash.send(json!({
            "type": "set_session", "chair": "east/4", "phase": phase, "patient": "P-9",
            "by": "nurse.ana"
        }))
        .await;
        let v = next_event(&mut dash).await;
        assert_eq!(
            (v["type"].as_str(), v["phase"].as_str()),
            (Some("session"), Some(phase))
        );
        assert_eq!(v["by"], "nurse.ana");
    }
    dash.send(json!({
        "type": "set_session", "chair": "east/4", "phase": "discharged", "patient": "P-9",
        "by": "nurse.ana"
    }))
    .await;
    let v = next_event(&mut dash).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_transition"))
    );
    // A session without its patient: refused as the session topic would.
    dash.send(json!({
        "type": "set_session", "chair": "east/4", "phase": "recovery", "by": "nurse.ana"
    }))
    .await;
    let v = next_event(&mut dash).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_session"))
    );
    assert_eq!(gw.metric("vitalgate_session_rejected_total").await, 2.0);

    // A per-patient limit, recorded with who set it.
    dash.send(json!({
        "type": "set_limit", "chair": "east/4", "rule": "spo2_low", "low": 92, "by": "dr.li"
    }))
    .await;
    let v = next_event(&mut dash).await;
    assert_eq!(
        (v["change"].as_str(), v["by"].as_str()),
        (Some("limits"), Some("dr.li"))
    );
    assert_eq!(v["limits"]["spo2_low"]["low"], 92.0);

    // SpO2 91: under the patient's limit of 92 (the configured 90 would not raise).
    dev.publish(&topic, &reading(1, json!({ "spo2": 91 })))
        .await;
    let raised = next_event(&mut dash).await;
    assert_eq!(
        (raised["rule"].as_str(), raised["state"].as_str()),
        (Some("spo2_low"), Some("raised"))
    );
    assert_eq!(raised["limit"], 92.0);
    // Not acknowledged within 400 ms: re-sent escalated, once (max level 1).
    let esc = next_event(&mut dash).await;
    assert_eq!(
        (esc["id"].clone(), esc["state"].as_str()),
        (raised["id"].clone(), Some("raised"))
    );
    assert_eq!(
        (esc["escalated"].as_bool(), esc["escalation_level"].as_u64()),
        (Some(true), Some(1))
    );
    dash.send(json!({ "type": "ack", "id": raised["id"], "by": "nurse.ana" }))
        .await;
    let ack = next_event(&mut dash).await;
    assert_eq!(ack["state"], "acknowledged");
    // Acknowledged and still active 400 ms later: a reminder.
    let reminder = next_event(&mut dash).await;
    assert_eq!(
        (reminder["state"].as_str(), reminder["reminder"].as_bool()),
        (Some("acknowledged"), Some(true))
    );

    // No SpO2 for over a second during the infusion: a technical alarm. (Reminders
    // of the SpO2 alarm may come in between.)
    let stale = loop {
        let v = next_event(&mut dash).await;
        if v["rule"] == "spo2_stale" {
            break v;
        }
        assert_eq!(v["reminder"], true, "{v}");
    };
    assert_eq!(
        (stale["kind"].as_str(), stale["state"].as_str()),
        (Some("technical"), Some("raised"))
    );
    assert!(
        stale["message"].as_str().unwrap().starts_with("SpO2 stale"),
        "{stale}"
    );
    // Data returns: the stale alarm clears; SpO2 97 clears the physiological one.
    dev.publish(&topic, &reading(2, json!({ "spo2": 97 })))
        .await;
    let mut cleared = Vec::new();
    while cleared.len() < 2 {
        let v = next_event(&mut dash).await;
        if v["state"] == "cleared" {
            cleared.push((
                v["rule"].as_str().unwrap().to_string(),
                v["reason"].as_str().map(String::from),
            ));
        }
    }
    cleared.sort();
    assert_eq!(
        cleared,
        vec![
            ("spo2_low".to_string(), None),
            ("spo2_stale".to_string(), Some("data_returned".to_string()))
        ]
    );

    // The device's last will: offline at once; online clears it.
    let status = gw.status_topic("east", "4");
    dev.publish_retained(&status, "offline").await;
    let off = loop {
        let v = next_event(&mut dash).await;
        if v["rule"] == "device_offline" {
            break v;
        }
    };
    assert_eq!(
        (off["kind"].as_str(), off["state"].as_str()),
        (Some("technical"), Some("raised"))
    );
    dev.publish_retained(&status, "online").await;
    let on = loop {
        let v = next_event(&mut dash).await;
        if v["rule"] == "device_offline" {
            break v;
        }
    };
    assert_eq!(on["state"], "cleared");
    // A status that is neither online nor offline is refused and counted.
    dev.publish_retained(&status, "sleeping").await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while gw.metric("vitalgate_session_rejected_total").await < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "bad status not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    dev.publish_retained(&status, Vec::new()).await;
    dev.wait_acked(6).await;
    assert!(gw.metric("vitalgate_alarm_escalations_total").await >= 1.0);
    gw.stop().await;
}

/// An alarm open when the gateway stops is taken back at the next start: a latched
/// alarm nobody acknowledged is still there, under the same id, until someone does;
/// one that no longer matches a rule is closed so the record is complete.
#[tokio::test]
async fn open_alarms_survive_a_restart() {
    let (mut config, prefix) = test_config();
    simple_rules(&mut config);
    config.rules[0].latching = true;
    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    dev.publish(&gw.topic("west", "1"), &reading(1, json!({ "spo2": 85 })))
        .await;
    let raised = dash.next_of("alarm").await;
    dev.publish(&gw.topic("west", "2"), &reading(1, json!({ "spo2": 84 })))
        .await;
    let other = dash.next_of("alarm").await;
    dev.wait_acked(2).await;
    gw.stop().await;

    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    let snap = dash.next_of("snapshot").await;
    let ids: Vec<&Value> = snap["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["id"])
        .collect();
    assert_eq!(ids, vec![&raised["id"], &other["id"]]);
    // The value recovers: the latched alarm stays. Acknowledged, it clears.
    let dev = gw.device().await;
    dev.publish(&gw.topic("west", "1"), &reading(2, json!({ "spo2": 97 })))
        .await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while gw.metric("vitalgate_readings_ingested_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reading not processed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    dash.send(json!({ "type": "ack", "id": raised["id"], "by": "nurse.kim" }))
        .await;
    let ack = dash.next_of("alarm").await;
    assert_eq!(
        (ack["id"].clone(), ack["state"].as_str()),
        (raised["id"].clone(), Some("acknowledged"))
    );
    let cleared = dash.next_of("alarm").await;
    assert_eq!(
        (cleared["state"].as_str(), cleared["reason"].as_str()),
        (Some("cleared"), Some("acknowledged"))
    );
    gw.stop().await;

    // The rule is renamed: the other chair's open alarm is closed at start-up.
    config.rules[0].id = "spo2_low_v2".into();
    let gw = TestGateway::start(config, prefix).await;
    let (_, body) = http_get(gw.http(), "/api/alarms?chair=west/2").await;
    let audit: Value = serde_json::from_str(&body).unwrap();
    let last = audit["alarms"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], other["id"]);
    assert_eq!(
        (last["state"].as_str(), last["reason"].as_str()),
        (Some("cleared"), Some("not_restored"))
    );
    assert_eq!(last.get("rules"), None, "a cleared event holds no rules");
    // Its line says it ended, not the breach it was raised on.
    assert_eq!(
        last["message"].as_str().unwrap(),
        format!(
            "{}: alarm ended, not taken back",
            other["message"].as_str().unwrap()
        )
    );
    let mut dash = gw.dashboard().await;
    assert_eq!(dash.next_of("snapshot").await["alarms"], json!([]));
    gw.stop().await;
}

/// The escalation levels of alarm `id` in `rows` of the audit trail, in order.
fn escalation_levels(rows: &[Value], id: &Value) -> Vec<u64> {
    rows.iter()
        .filter(|a| a["id"] == *id && a["escalated"] == true)
        .map(|a| a["escalation_level"].as_u64().unwrap())
        .collect()
}

/// An alarm nobody acknowledged, open when the gateway stopped, is re-sent at the
/// next start once, at the level due by then, not once per level a tick apart.
#[tokio::test]
async fn a_restored_alarm_escalates_once_to_the_level_due() {
    let (config, prefix) = escalating(1_000, 3);
    let gw = TestGateway::start(config.clone(), prefix.clone()).await;
    let mut dash = gw.dashboard().await;
    dash.next_of("snapshot").await;
    let mut dev = gw.device().await;
    dev.publish(&gw.topic("west", "1"), &reading(1, json!({ "spo2": 85 })))
        .await;
    let raised = dash.next_of("alarm").await;
    let raised_at = std::time::Instant::now();
    dev.wait_acked(1).await;
    gw.stop().await;
    // What the first run escalated (normally nothing: it stopped within the first
    // period), read from the file itself.
    let stored = vitalgate::audit::Audit::open(&config.audit.path, false)
        .unwrap()
        .query(Some("alarm"), Some("west/1"), None, None, 100)
        .unwrap();
    let rows: Vec<Value> = stored
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let before = escalation_levels(&rows, &raised["id"]);
    // Restarted once all three periods are due.
    tokio::time::sleep_until((raised_at + std::time::Duration::from_millis(3_300)).into()).await;

    let gw = TestGateway::start(config, prefix).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, body) = http_get(gw.http(), "/api/alarms?chair=west/1").await;
        let audit: Value = serde_json::from_str(&body).unwrap();
        let levels = escalation_levels(audit["alarms"].as_array().unwrap(), &raised["id"]);
        if levels.last() == Some(&3) {
            assert_eq!(
                &levels[before.len()..],
                &[3],
                "after the restart, one re-send at level 3 (before it: {before:?})"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no escalation: {levels:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.stop().await;
}
