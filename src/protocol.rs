//! The dashboard wire format (documented in `docs/protocol.md`): JSON text frames.
//! Server frames are serialised here once and shared by every connection.

use crate::core::chair_key::{is_simulated, site_of, valid_id, MAX_ID_LEN};
use crate::core::{
    AlarmEvent, ChairView, Latest, Session, SessionChange, SessionEvent, SessionUpdate, Vital,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A serialised server frame, cheap to clone (reference-counted bytes).
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// When the reading behind an alarm frame was received, to measure
    /// receipt → socket write. `None` for frames not caused by a reading.
    pub ingested_at: Option<Instant>,
    /// A `snapshot` frame (a connection allows one requested snapshot in flight).
    pub snapshot: bool,
    /// The chair an alarm or session frame is about: only dashboards whose scope
    /// includes its site receive it. `None`: for everyone in the connection.
    pub chair: Option<std::sync::Arc<str>>,
}

impl Frame {
    fn json<T: Serialize>(value: &T, ingested_at: Option<Instant>) -> Frame {
        let text = serde_json::to_string(value).expect("frames serialise to JSON");
        Frame {
            text: Utf8Bytes::from(text),
            ingested_at,
            snapshot: false,
            chair: None,
        }
    }

    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// An alarm or session frame about `chair`, from its JSON text.
    pub fn about(text: String, chair: std::sync::Arc<str>) -> Frame {
        Frame {
            text: Utf8Bytes::from(text),
            ingested_at: None,
            snapshot: false,
            chair: Some(chair),
        }
    }
}

/// An alarm or session frame's text (`{"type":"alarm","seq":N,...}` as
/// [`alarm_frame`] and [`session_frame`] write it) with `seq` in place of N;
/// `None` for any other text.
pub fn with_seq(text: &str, seq: u64) -> Option<String> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let (kind, rest) = rest.split_once('"')?;
    if kind != "alarm" && kind != "session" {
        return None;
    }
    let rest = rest.strip_prefix(r#","seq":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after = &rest[digits..];
    if digits == 0 || !(after.starts_with(',') || after.starts_with('}')) {
        return None;
    }
    Some(format!(r#"{{"type":"{kind}","seq":{seq}{after}"#))
}

/// An alarm or session event as JSON (a frame's fields without `type` and `seq`):
/// the event's fields, and `"simulated": true` for a chair of the simulated site
/// (said in the payload, not left to its name). What frames, snapshots and
/// `/api/sessions`' `current` write of an event.
#[derive(Serialize)]
pub struct EventJson<'a, E> {
    #[serde(flatten)]
    event: &'a E,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    simulated: bool,
}

impl<'a, E> EventJson<'a, E> {
    /// `event`, about chair `chair`.
    fn about(event: &'a E, chair: &str) -> Self {
        EventJson {
            event,
            simulated: is_simulated(chair),
        }
    }
}

impl<'a> EventJson<'a, SessionEvent> {
    pub fn session(event: &'a SessionEvent) -> Self {
        EventJson::about(event, &event.chair)
    }
}

impl<'a> EventJson<'a, AlarmEvent> {
    pub fn alarm(event: &'a AlarmEvent) -> Self {
        EventJson::about(event, &event.chair)
    }
}

/// `{"type":..,"seq":N, ...event}`: `type` and `seq` first, as [`with_seq`] reads them.
#[derive(Serialize)]
struct EventFrame<'a, E> {
    r#type: &'static str,
    seq: u64,
    #[serde(flatten)]
    event: EventJson<'a, E>,
}

/// `{"type":"alarm","seq":N, ...event}`.
pub fn alarm_frame(seq: u64, event: &AlarmEvent, ingested_at: Option<Instant>) -> Frame {
    Frame {
        chair: Some(event.chair.clone()),
        ..Frame::json(
            &EventFrame {
                r#type: "alarm",
                seq,
                event: EventJson::alarm(event),
            },
            ingested_at,
        )
    }
}

/// `{"type":"session","seq":N, ...event}`: a chair's session changed.
pub fn session_frame(seq: u64, event: &SessionEvent) -> Frame {
    Frame {
        chair: Some(event.chair.clone()),
        ..Frame::json(
            &EventFrame {
                r#type: "session",
                seq,
                event: EventJson::session(event),
            },
            None,
        )
    }
}

/// One chair's latest values, as in `snapshot.chairs[]` and `vitals` frames.
#[derive(Serialize)]
pub struct ChairJson<'a> {
    pub chair: &'a str,
    pub site: &'a str,
    pub received_at: u64,
    pub vitals: BTreeMap<Vital, crate::core::Sample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pump: Option<crate::core::PumpSample>,
    /// In snapshots: the chair's session (as in a `session` frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionEvent>,
    /// A chair of the simulated site.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

impl<'a> ChairJson<'a> {
    pub fn new(chair: &'a str, latest: &Latest) -> Self {
        ChairJson {
            chair,
            site: site_of(chair),
            received_at: latest.received_at,
            vitals: Vital::ALL
                .iter()
                .filter_map(|v| latest.get(*v).map(|s| (*v, s)))
                .collect(),
            pump: latest.pump,
            session: None,
            simulated: is_simulated(chair),
        }
    }

    /// With the chair's session, for snapshots.
    pub fn with_session(
        chair: &'a std::sync::Arc<str>,
        latest: &Latest,
        session: &Session,
    ) -> Self {
        ChairJson {
            session: Some(SessionEvent::new(
                chair.clone(),
                SessionChange::Phase,
                session,
                session.applied_at,
            )),
            ..ChairJson::new(chair, latest)
        }
    }
}

#[derive(Serialize)]
struct VitalsFrame<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    chair: ChairJson<'a>,
}

/// `{"type":"vitals", ...chair}`: a chair's latest values for live-vitals subscribers.
pub fn vitals_frame(chair: &str, latest: &Latest, ingested_at: Option<Instant>) -> Frame {
    Frame::json(
        &VitalsFrame {
            r#type: "vitals",
            chair: ChairJson::new(chair, latest),
        },
        ingested_at,
    )
}

/// The `chairs` array of a snapshot, rendered once and outside the hub lock (it is
/// the large part: O(chairs)).
#[derive(Debug, Clone)]
pub struct RenderedChairs(String);

pub fn render_chairs(chairs: &[ChairView]) -> RenderedChairs {
    let list: Vec<ChairJson<'_>> = chairs
        .iter()
        .map(|c| ChairJson::with_session(&c.chair, &c.latest, &c.session))
        .collect();
    render_chair_list(&list)
}

/// `chairs` rendered once, for a snapshot.
pub fn render_chair_list(chairs: &[ChairJson<'_>]) -> RenderedChairs {
    RenderedChairs(serde_json::to_string(chairs).expect("chairs serialise to JSON"))
}

/// `{"type":"snapshot"}`: every known chair and every active alarm, as of alarm `seq`.
pub fn snapshot_frame<'a>(
    instance: &str,
    seq: u64,
    chairs: &RenderedChairs,
    alarms: impl Iterator<Item = &'a AlarmEvent>,
) -> Frame {
    let alarms: Vec<EventJson<'_, AlarmEvent>> = alarms.map(EventJson::alarm).collect();
    let alarms = serde_json::to_string(&alarms).expect("alarms serialise to JSON");
    let instance = serde_json::to_string(instance).expect("a string serialises");
    let text = format!(
        r#"{{"type":"snapshot","instance":{instance},"seq":{seq},"chairs":{},"alarms":{alarms}}}"#,
        chairs.0
    );
    Frame {
        text: Utf8Bytes::from(text),
        ingested_at: None,
        snapshot: true,
        chair: None,
    }
}

#[derive(Serialize)]
struct MissedFrame<'a> {
    r#type: &'static str,
    instance: &'a str,
    since: u64,
    oldest_available: u64,
    latest: u64,
    message: &'static str,
}

/// `{"type":"missed"}`: the events after `since` are no longer all held; a snapshot follows.
pub fn missed_frame(instance: &str, since: u64, oldest_available: u64, latest: u64) -> Frame {
    Frame::json(
        &MissedFrame {
            r#type: "missed",
            instance,
            since,
            oldest_available,
            latest,
            message: "alarm events after `since` are no longer held (or the gateway restarted); \
                      discard local state and use the snapshot that follows",
        },
        None,
    )
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    r#type: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// `{"type":"error"}`: a command was refused.
pub fn error_frame(code: &str, message: &str, id: Option<u64>) -> Frame {
    Frame::json(
        &ErrorFrame {
            r#type: "error",
            code,
            message,
            id,
        },
        None,
    )
}

#[derive(Serialize)]
struct SubscribedFrame<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
}

/// `{"type":"vitals_subscribed"}` / `{"type":"vitals_unsubscribed"}`.
pub fn subscribed_frame(subscribed: bool, site: Option<&str>) -> Frame {
    Frame::json(
        &SubscribedFrame {
            r#type: if subscribed {
                "vitals_subscribed"
            } else {
                "vitals_unsubscribed"
            },
            site,
        },
        None,
    )
}

/// A command from a dashboard. Unknown fields are refused (`bad_command`): a
/// misspelt `hgih` in `set_limit` would otherwise put the configured limit back,
/// and a misspelt `site` in `subscribe_vitals` subscribe to every site.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Acknowledge alarm `id` on behalf of `by` (with authentication: the token's
    /// user, whatever `by` says).
    Ack {
        id: u64,
        #[serde(default)]
        by: String,
    },
    /// Start live vitals for every chair, or one site's.
    SubscribeVitals {
        #[serde(default)]
        site: Option<String>,
    },
    UnsubscribeVitals {},
    /// Ask for a fresh snapshot.
    Snapshot {},
    /// Set a chair's session on behalf of `by`: the fields of a session message
    /// (parsed by [`Command::parse`], which refuses unknown fields as the session
    /// topic does; a dashboard's `ts` is ignored: a command applies when made).
    #[serde(skip_deserializing)]
    SetSession {
        chair: String,
        by: String,
        session: SessionUpdate,
    },
    /// Change one rule's limits for the patient in `chair` (both absent: back to the
    /// configured limits).
    SetLimit {
        chair: String,
        rule: String,
        #[serde(default)]
        by: String,
        #[serde(default)]
        low: Option<f64>,
        #[serde(default)]
        high: Option<f64>,
    },
}

/// Every command's `type`.
const COMMAND_TYPES: [&str; 6] = [
    "ack",
    "set_session",
    "set_limit",
    "snapshot",
    "subscribe_vitals",
    "unsubscribe_vitals",
];

/// Longest accepted `by` in an acknowledgement.
pub const MAX_ACK_BY: usize = 128;

impl Command {
    /// Parse and check a command. The error is `(code, message)` for an error frame.
    pub fn parse(text: &str) -> Result<Command, (&'static str, String)> {
        let bad = |e: serde_json::Error| ("bad_command", e.to_string());
        let value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
        let cmd = match value.get("type").and_then(|t| t.as_str()) {
            Some("set_session") => Command::set_session(value)?,
            // serde's own message would list the variants it parses, which leaves
            // out `set_session` (parsed apart).
            Some(other) if !COMMAND_TYPES.contains(&other) => {
                return Err((
                    "bad_command",
                    format!(
                        "unknown command type `{other}`: one of {}",
                        COMMAND_TYPES.join(", ")
                    ),
                ))
            }
            _ => serde_json::from_value(value).map_err(bad)?,
        };
        if let Command::SubscribeVitals { site: Some(site) } = &cmd {
            if !valid_id(site) {
                return Err((
                    "bad_command",
                    format!(
                        "`site` must be a site name (1-{MAX_ID_LEN} letters, digits, '_', '-' or '.'), not {site:?}"
                    ),
                ));
            }
        }
        let by = match &cmd {
            Command::Ack { by, .. }
            | Command::SetSession { by, .. }
            | Command::SetLimit { by, .. } => Some(by),
            _ => None,
        };
        // Empty is allowed here: with authentication the token names who acts;
        // without, the reader refuses a command that does not say.
        if by.is_some_and(|by| by.len() > MAX_ACK_BY) {
            return Err((
                "bad_command",
                format!("`by` must name who does it, 1-{MAX_ACK_BY} bytes"),
            ));
        }
        // What a session message would be refused for, a session command is
        // refused for with the same code.
        if let Command::SetSession { session, .. } = &cmd {
            session.check().map_err(|e| (e.code(), e.to_string()))?;
        }
        Ok(cmd)
    }

    /// `set_session`: `chair` and `by` (refused as `bad_command`), then exactly
    /// the fields of a session message (refused as a session message would be,
    /// `bad_session`).
    fn set_session(value: serde_json::Value) -> Result<Command, (&'static str, String)> {
        use serde::de::Error;
        let bad = |e: serde_json::Error| ("bad_command", e.to_string());
        let serde_json::Value::Object(mut fields) = value else {
            return Err(bad(serde_json::Error::custom("a command is a JSON object")));
        };
        fields.remove("type");
        let text = |v: Option<serde_json::Value>, name: &str| match v {
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(_) => Err(serde_json::Error::custom(format!(
                "`{name}` must be a string"
            ))),
        };
        let chair = text(fields.remove("chair"), "chair")
            .map_err(bad)?
            .ok_or_else(|| bad(serde_json::Error::missing_field("chair")))?;
        let by = text(fields.remove("by"), "by")
            .map_err(bad)?
            .unwrap_or_default();
        let mut session: SessionUpdate = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| ("bad_session", e.to_string()))?;
        session.ts = None;
        Ok(Command::SetSession { chair, by, session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_reject() {
        assert_eq!(
            Command::parse(r#"{"type":"ack","id":3,"by":"kim"}"#),
            Ok(Command::Ack {
                id: 3,
                by: "kim".into()
            })
        );
        assert_eq!(
            Command::parse(r#"{"type":"subscribe_vitals","site":"north"}"#),
            Ok(Command::SubscribeVitals {
                site: Some("north".into())
            })
        );
        assert!(Command::parse(&format!(
            r#"{{"type":"ack","id":3,"by":"{}"}}"#,
            "x".repeat(129)
        ))
        .is_err());
        assert!(Command::parse(r#"{"type":"ack","id":"x","by":"kim"}"#).is_err());
        for misspelt in [
            r#"{"type":"set_limit","chair":"north/7","rule":"sbp_critical","hgih":170,"by":"dr.lee"}"#,
            r#"{"type":"subscribe_vitals","sties":"north"}"#,
            r#"{"type":"ack","id":3,"by":"kim","idd":4}"#,
            r#"{"type":"snapshot","x":1}"#,
        ] {
            let refused = Command::parse(misspelt).unwrap_err();
            assert_eq!(refused.0, "bad_command", "{misspelt}");
            assert!(
                refused.1.contains("unknown field"),
                "{misspelt}: {}",
                refused.1
            );
        }
        assert!(Command::parse(
            r#"{"type":"set_limit","chair":"north/7","rule":"sbp_critical","high":170,"by":"dr.lee"}"#
        )
        .is_ok());
        assert_eq!(
            Command::parse(r#"{"type":"snapshot"}"#),
            Ok(Command::Snapshot {})
        );
        assert_eq!(
            Command::parse(r#"{"type":"unsubscribe_vitals"}"#),
            Ok(Command::UnsubscribeVitals {})
        );
        let refused = |text: &str| {
            Command::parse(text)
                .err()
                .map(|(code, message)| format!("{code}: {message}"))
        };
        assert_eq!(
            refused(r#"{"type":"reboot"}"#).as_deref(),
            Some("bad_command: unknown command type `reboot`: one of ack, set_session, set_limit, snapshot, subscribe_vitals, unsubscribe_vitals")
        );
        assert!(refused(r#"{"type":"subscribe_vitals","site":"../etc"}"#)
            .is_some_and(|e| e.starts_with("bad_command: `site` must be a site name")));
        assert!(refused(r#"{"type":"subscribe_vitals","site":"north"}"#).is_none());
        match Command::parse(
            r#"{"type":"set_session","chair":"n/1","phase":"baseline","patient":"P","ts":5}"#,
        ) {
            Ok(Command::SetSession { chair, session, .. }) => {
                assert_eq!(chair, "n/1");
                assert_eq!(session.ts, None, "a dashboard's ts is ignored");
            }
            other => panic!("{other:?}"),
        }
        // The session's own fields are refused with the session topic's code; the
        // command's (`chair`, `by`) with `bad_command`.
        let code = |text: &str| Command::parse(text).map(|_| ()).map_err(|(code, _)| code);
        for bad_session in [
            r#"{"type":"set_session","chair":"n/1","phase":"baseline","patient":"P","limts":{}}"#,
            r#"{"type":"set_session","chair":"n/1","phase":"lunch","patient":"P"}"#,
            r#"{"type":"set_session","chair":"n/1","phase":"baseline"}"#,
            r#"{"type":"set_session","chair":"n/1","phase":"baseline","patient":" "}"#,
        ] {
            assert_eq!(code(bad_session), Err("bad_session"), "{bad_session}");
        }
        for bad_command in [
            r#"{"type":"set_session","phase":"baseline","patient":"P"}"#,
            r#"{"type":"set_session","chair":7,"phase":"baseline","patient":"P"}"#,
            r#"["set_session"]"#,
        ] {
            assert_eq!(code(bad_command), Err("bad_command"), "{bad_command}");
        }
        assert!(Command::parse("not json").is_err());
    }

    #[test]
    fn an_event_frame_is_renumbered_and_nothing_else_is() {
        let alarm = r#"{"type":"alarm","seq":17,"id":4,"chair":"north/2","message":"seq 17"}"#;
        let renumbered = with_seq(alarm, 90_210).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(alarm).unwrap();
        expected["seq"] = 90_210.into();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&renumbered).unwrap(),
            expected
        );
        assert!(renumbered.starts_with(r#"{"type":"alarm","seq":90210,"id":4"#));
        assert_eq!(
            with_seq(r#"{"type":"session","seq":3}"#, 4).as_deref(),
            Some(r#"{"type":"session","seq":4}"#)
        );
        for other in [
            r#"{"type":"snapshot","seq":3}"#,
            r#"{"type":"alarm","seq":"3"}"#,
            r#"{"type":"alarm","seq":3x}"#,
            r#"{"type":"alarm","id":3}"#,
            r#"{"seq":3,"type":"alarm"}"#,
            "",
        ] {
            assert_eq!(with_seq(other, 1), None, "{other}");
        }
    }

    #[test]
    fn frames_about_a_simulated_chair_say_so() {
        let json = |f: &Frame| serde_json::from_str::<serde_json::Value>(f.as_str()).unwrap();
        let mut e = crate::core::alarm::tests::event(1, crate::core::AlarmState::Raised);
        for (chair, simulated) in [("demo/3", Some(true)), ("north/3", None)] {
            e.chair = chair.into();
            let frame = alarm_frame(5, &e, None);
            assert!(with_seq(frame.as_str(), 6).is_some(), "type and seq first");
            let alarm = json(&frame);
            assert_eq!(alarm["simulated"].as_bool(), simulated, "{alarm}");
            let chairs = render_chair_list(&[ChairJson::new(chair, &Latest::default())]);
            let snapshot = json(&snapshot_frame("i", 5, &chairs, [&e].into_iter()));
            assert_eq!(snapshot["alarms"][0]["simulated"].as_bool(), simulated);
            assert_eq!(snapshot["chairs"][0]["simulated"].as_bool(), simulated);
            let vitals = json(&vitals_frame(chair, &Latest::default(), None));
            assert_eq!(vitals["simulated"].as_bool(), simulated);
            let session = SessionEvent::new(
                chair.into(),
                SessionChange::Phase,
                &crate::core::Session::default(),
                1,
            );
            assert_eq!(
                json(&session_frame(6, &session))["simulated"].as_bool(),
                simulated
            );
            let current: serde_json::Value = serde_json::from_str(
                &serde_json::to_string(&EventJson::session(&session)).unwrap(),
            )
            .unwrap();
            assert_eq!(current["simulated"].as_bool(), simulated);
            assert_eq!(current["chair"], chair);
        }
    }

    proptest::proptest! {
        #[test]
        fn renumbering_never_panics(s in ".{0,64}", seq in 0u64..) {
            let _ = with_seq(&s, seq);
            let _ = with_seq(&format!(r#"{{"type":"alarm","seq":{s}"#), seq);
        }

        #[test]
        fn command_parser_never_panics(s in ".{0,256}") {
            let _ = Command::parse(&s);
        }
    }
}
