//! Dashboard authentication: JWTs checked before the upgrade, roles for commands,
//! the token's user recorded as who acted, expiry mid-connection, Origin allowlist,
//! the API behind the same check, and the "none" mode refused off loopback.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use vitalgate::config::{AuthMode, JwtAlgorithm};

const SECRET: &str = "a-test-secret-of-more-than-32-bytes-0123456789";

fn token(sub: &str, roles: &[&str], exp_in_s: i64, extra: Value) -> String {
    let exp = (now_ms() / 1000) as i64 + exp_in_s;
    let mut claims =
        json!({ "sub": sub, "aud": "vitalgate", "exp": exp, "roles": roles, "sites": ["*"] });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Open `/ws` with optional bearer header and Origin; the HTTP status on refusal.
async fn open(
    gw: &TestGateway,
    query: &str,
    bearer: Option<&str>,
    origin: Option<&str>,
) -> Result<Dashboard, u16> {
    let mut req = format!("ws://{}/ws{query}", gw.http())
        .into_client_request()
        .unwrap();
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Dashboard { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

async fn jwt_gateway() -> TestGateway {
    jwt_gateway_with(|_| {}).await
}

async fn jwt_gateway_with(tweak: impl FnOnce(&mut vitalgate::Config)) -> TestGateway {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    let key = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("jwt-secret"));
    std::fs::write(&key, format!("{SECRET}\n")).unwrap();
    c.auth.mode = AuthMode::Jwt;
    c.auth.algorithm = JwtAlgorithm::HS256;
    c.auth.key_file = Some(key);
    c.auth.allowed_origins = vec!["https://station.clinic.example".into()];
    tweak(&mut c);
    TestGateway::start(c, prefix).await
}

#[tokio::test]
async fn a_configured_issuer_must_be_named_by_the_token() {
    let gw =
        jwt_gateway_with(|c| c.auth.issuer = Some("https://login.clinic.example".into())).await;
    let without = token("ana", &["viewer"], 600, json!({}));
    assert_eq!(
        open(&gw, "", Some(&without), None).await.err(),
        Some(401),
        "a token leaving `iss` out does not pass the pin"
    );
    let wrong = token(
        "ana",
        &["viewer"],
        600,
        json!({ "iss": "https://evil.example" }),
    );
    assert_eq!(open(&gw, "", Some(&wrong), None).await.err(), Some(401));
    let right = token(
        "ana",
        &["viewer"],
        600,
        json!({ "iss": "https://login.clinic.example" }),
    );
    open(&gw, "", Some(&right), None)
        .await
        .unwrap()
        .next_of("snapshot")
        .await;
    assert_eq!(
        http_get(gw.http(), &format!("/api/alarms?access_token={without}"))
            .await
            .0,
        401
    );
    gw.stop().await;
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let gw = jwt_gateway().await;
    let viewer = token("ana", &["viewer"], 600, json!({}));
    assert_eq!(open(&gw, "", None, None).await.err(), Some(401), "no token");
    let forged = {
        let (head_payload, _) = viewer.rsplit_once('.').unwrap();
        format!("{head_payload}.AAAA")
    };
    assert_eq!(
        open(&gw, "", Some(&forged), None).await.err(),
        Some(401),
        "bad signature"
    );
    // alg: none, no signature.
    let payload = viewer.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        open(&gw, "", Some(&none), None).await.err(),
        Some(401),
        "alg none"
    );
    let expired = token("ana", &["viewer"], -120, json!({}));
    assert_eq!(
        open(&gw, "", Some(&expired), None).await.err(),
        Some(401),
        "expired"
    );
    let later = token(
        "ana",
        &["viewer"],
        600,
        json!({ "nbf": now_ms() / 1000 + 86_400 }),
    );
    assert_eq!(
        open(&gw, "", Some(&later), None).await.err(),
        Some(401),
        "not before"
    );
    let wrong_aud = token("ana", &["viewer"], 600, json!({ "aud": "someone-else" }));
    assert_eq!(
        open(&gw, "", Some(&wrong_aud), None).await.err(),
        Some(401),
        "audience"
    );
    let no_sites = {
        let exp = (now_ms() / 1000) as i64 + 600;
        encode(
            &Header::default(),
            &json!({ "sub": "ana", "aud": "vitalgate", "exp": exp, "roles": ["viewer"] }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        open(&gw, "", Some(&no_sites), None).await.err(),
        Some(401),
        "no sites claim"
    );
    assert_eq!(
        open(&gw, "", Some(&viewer), Some("https://evil.example"))
            .await
            .err(),
        Some(403),
        "origin"
    );
    // Accepted: header, or query parameter for browsers; an allowed origin.
    let mut dash = open(
        &gw,
        "",
        Some(&viewer),
        Some("https://station.clinic.example"),
    )
    .await
    .unwrap();
    dash.next_of("snapshot").await;
    let mut dash = open(&gw, &format!("?access_token={viewer}"), None, None)
        .await
        .unwrap();
    dash.next_of("snapshot").await;
    assert_eq!(
        gw.metric("vitalgate_ws_refused_total{reason=\"unauthorized\"}")
            .await,
        7.0
    );
    assert_eq!(
        gw.metric("vitalgate_ws_refused_total{reason=\"origin\"}")
            .await,
        1.0
    );
    // The API sits behind the same check.
    assert_eq!(http_get(gw.http(), "/api/alarms").await.0, 401);
    assert_eq!(
        http_get(gw.http(), &format!("/api/alarms?access_token={viewer}"))
            .await
            .0,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn roles_decide_who_acts_and_the_token_names_them() {
    let gw = jwt_gateway().await;
    let viewer = token("ana", &["viewer"], 600, json!({}));
    let nurse = token("nurse.kim", &["nurse"], 600, json!({}));
    let mut watcher = open(&gw, "", Some(&viewer), None).await.unwrap();
    watcher.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({ "spo2": 84 })))
        .await;
    let alarm = watcher.next_of("alarm").await;

    // A viewer sees alarms but may not acknowledge or change anything.
    watcher
        .send(json!({ "type": "ack", "id": alarm["id"], "by": "ana" }))
        .await;
    let refused = watcher.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].clone()),
        (Some("forbidden"), alarm["id"].clone())
    );
    watcher
        .send(json!({ "type": "set_session", "chair": "north/1", "phase": "baseline", "patient": "P" }))
        .await;
    assert_eq!(watcher.next_of("error").await["code"], "forbidden");
    // A nurse may; the audit names the token's user, whatever `by` claims.
    let mut station = open(&gw, "", Some(&nurse), None).await.unwrap();
    station.next_of("snapshot").await;
    station
        .send(json!({ "type": "ack", "id": alarm["id"], "by": "somebody-else" }))
        .await;
    let acked = watcher.next_of("alarm").await;
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "nurse.kim");
    // Changing limits needs a clinician, also inside a session command.
    station
        .send(json!({ "type": "set_limit", "chair": "north/1", "rule": "spo2_low", "low": 88 }))
        .await;
    assert_eq!(station.next_of("error").await["code"], "forbidden");
    station
        .send(
            json!({ "type": "set_session", "chair": "north/1", "phase": "baseline",
                      "patient": "P", "limits": { "spo2_low": { "low": 70 } } }),
        )
        .await;
    assert_eq!(station.next_of("error").await["code"], "forbidden");
    // Nothing changed: the same session without limits is taken (a session event).
    station
        .send(json!({ "type": "set_session", "chair": "north/1", "phase": "baseline", "patient": "P" }))
        .await;
    let session = watcher.next_of("session").await;
    assert_eq!(session["phase"], "baseline");
    assert_eq!(session["limits"], json!({}), "{session}");
    gw.stop().await;
}

/// A token for some sites sees and acts on those sites' chairs only: live events,
/// replays, snapshots, acknowledgements, session commands, live vitals and the API.
#[tokio::test]
async fn a_dashboard_never_receives_or_touches_chairs_outside_its_sites() {
    let gw = jwt_gateway().await;
    let north = token("nurse.kim", &["nurse"], 600, json!({ "sites": ["north"] }));
    let everyone = token("charge", &["nurse"], 600, json!({}));
    let mut all = open(&gw, "", Some(&everyone), None).await.unwrap();
    all.next_of("snapshot").await;
    let mut dash = open(&gw, "", Some(&north), None).await.unwrap();
    dash.next_of("snapshot").await;
    let dev = gw.device().await;
    dev.publish(&gw.topic("south", "1"), &reading(1, json!({ "spo2": 80 })))
        .await;
    let south_alarm = all.next_of("alarm").await;
    assert_eq!(south_alarm["chair"], "south/1");
    dev.publish(&gw.topic("north", "1"), &reading(1, json!({ "spo2": 81 })))
        .await;
    assert_eq!(all.next_of("alarm").await["chair"], "north/1");
    // The north dashboard: the north alarm, and nothing of the south one before
    // the snapshot it asks for next, which holds only north.
    assert_eq!(dash.next_of("alarm").await["chair"], "north/1");
    dash.send(json!({ "type": "snapshot" })).await;
    let snap = dash.next().await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    let chairs: Vec<&str> = snap["chairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chair"].as_str().unwrap())
        .collect();
    assert_eq!(chairs, vec!["north/1"]);
    assert_eq!(snap["alarms"].as_array().unwrap().len(), 1);
    // Nor can it act on the south chair, or learn anything of its alarm: once
    // acknowledged by someone else, it is still unknown (not "already acknowledged
    // by ...").
    all.send(json!({ "type": "ack", "id": south_alarm["id"] }))
        .await;
    assert_eq!(all.next_of("alarm").await["state"], "acknowledged");
    dash.send(json!({ "type": "ack", "id": south_alarm["id"] }))
        .await;
    let refused = dash.next_of("error").await;
    assert_eq!(refused["code"], "unknown_alarm", "{refused}");
    assert!(!refused["message"].as_str().unwrap().contains("charge"));
    dash.send(json!({ "type": "set_limit", "chair": "south/1", "rule": "spo2_low", "low": 85 }))
        .await;
    assert_eq!(dash.next_of("error").await["code"], "forbidden");
    dash.send(
        json!({ "type": "set_session", "chair": "south/1", "phase": "baseline", "patient": "P" }),
    )
    .await;
    assert_eq!(dash.next_of("error").await["code"], "forbidden");
    dash.send(json!({ "type": "subscribe_vitals", "site": "south" }))
        .await;
    assert_eq!(dash.next_of("error").await["code"], "forbidden");
    dash.send(json!({ "type": "subscribe_vitals" })).await;
    assert_eq!(dash.next_of("vitals_subscribed").await["site"], "north");
    // A new connection's first snapshot, with both chairs known: north only.
    let mut fresh = open(&gw, "", Some(&north), None).await.unwrap();
    let first = fresh.next_of("snapshot").await;
    assert_eq!(first["chairs"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["alarms"][0]["chair"], "north/1");
    // A replay from before both alarms holds only the north one.
    let since = south_alarm["seq"].as_u64().unwrap() - 1;
    let mut again = open(&gw, &format!("?since={since}"), Some(&north), None)
        .await
        .unwrap();
    let replayed = again.next().await;
    assert_eq!(
        (replayed["type"].as_str(), replayed["chair"].as_str()),
        (Some("alarm"), Some("north/1"))
    );
    // The API: one chair at a time, within the sites.
    let api = |q: &str| format!("/api/alarms?access_token={north}{q}");
    assert_eq!(http_get(gw.http(), &api("")).await.0, 403);
    assert_eq!(http_get(gw.http(), &api("&chair=south/1")).await.0, 403);
    assert_eq!(http_get(gw.http(), &api("&chair=north/1")).await.0, 200);
    let sessions = format!("/api/sessions/south/1?access_token={north}");
    assert_eq!(http_get(gw.http(), &sessions).await.0, 403);
    // Each refusal counted, and nothing else under that reason.
    assert_eq!(
        gw.metric(r#"vitalgate_ws_refused_total{reason="scope"}"#)
            .await,
        3.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    // No clock leeway here: the connection ends at `exp` (with leeway, at exp plus
    // the leeway, the same tolerance the upgrade accepted).
    let gw = jwt_gateway_with(|c| c.auth.leeway_s = 0).await;
    // Expires in 2 s.
    let short = token("ana", &["viewer"], 2, json!({}));
    let mut dash = open(&gw, "", Some(&short), None).await.unwrap();
    dash.next_of("snapshot").await;
    assert_eq!(dash.closed().await, Some(4001));
    gw.stop().await;
}

#[test]
fn no_authentication_is_refused_off_loopback() {
    let mut c = vitalgate::Config::default();
    assert_eq!(c.auth.mode, AuthMode::None);
    assert!(c.validate().is_empty());
    c.http.bind = "0.0.0.0:8080".parse().unwrap();
    let problems = c.validate();
    assert!(
        problems.iter().any(|(key, _)| key == "auth.mode"),
        "{problems:?}"
    );
    c.auth.mode = AuthMode::Jwt;
    let problems = c.validate();
    assert!(
        problems.iter().any(|(key, _)| key == "auth.key_file"),
        "{problems:?}"
    );
}

/// A token for several sites gets live vitals for all of them, and none of the others.
#[tokio::test]
async fn live_vitals_for_a_token_of_several_sites_cover_each_of_them() {
    let gw = jwt_gateway().await;
    let two = token(
        "pat",
        &["nurse"],
        600,
        json!({ "sites": ["north", "east"] }),
    );
    let mut dash = open(&gw, "", Some(&two), None).await.unwrap();
    dash.next_of("snapshot").await;
    dash.send(json!({ "type": "subscribe_vitals" })).await;
    let subscribed = dash.next_of("vitals_subscribed").await;
    assert!(subscribed.get("site").is_none(), "{subscribed}");
    let dev = gw.device().await;
    for (seq, site) in [(1, "south"), (2, "north"), (3, "east")] {
        dev.publish(
            &gw.topic(site, "1"),
            &reading(seq, json!({ "hr": 70 + seq })),
        )
        .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let v = dash.next_of("vitals").await;
        seen.push(v["chair"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, vec!["east/1", "north/1"]);
    gw.stop().await;
}

/// `/api/station` tells a station who it is and what it may do, behind the same
/// check as every API call; the page itself needs no token (it holds no data).
#[tokio::test]
async fn the_station_learns_who_it_is_and_what_it_may_do() {
    let gw = jwt_gateway().await;
    assert_eq!(http_get(gw.http(), "/api/station").await.0, 401);
    let (status, page) = http_get(gw.http(), "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("nurse station"), "{page}");
    for (who, roles, ack, limit) in [
        ("vic", ["viewer"], false, false),
        ("kim", ["nurse"], true, false),
        ("lee", ["clinician"], true, true),
    ] {
        let t = token(who, &roles, 600, json!({ "sites": ["north"] }));
        let (status, body) = http_get(gw.http(), &format!("/api/station?access_token={t}")).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["auth"], "jwt");
        assert_eq!(v["me"]["user"], who);
        assert_eq!(v["me"]["sites"], json!(["north"]));
        assert_eq!(v["me"]["may"]["ack"], ack, "{who}");
        assert_eq!(v["me"]["may"]["set_session"], ack, "{who}");
        assert_eq!(v["me"]["may"]["set_limit"], limit, "{who}");
        assert!(v["rules"].as_array().is_some_and(|r| !r.is_empty()));
        assert!(v["now"].as_u64().unwrap() > 1_700_000_000_000);
    }
    gw.stop().await;
}
