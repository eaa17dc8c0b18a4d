//! Checks that types cannot express, run before anything starts.

use super::*;

impl Config {
    /// Semantic checks that types cannot express. Returns every problem found.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs: Vec<(String, String)> = Vec::new();
        fn check_in(errs: &mut Vec<(String, String)>, ok: bool, key: &str, msg: &str) {
            if !ok {
                errs.push((key.to_string(), msg.to_string()));
            }
        }
        macro_rules! check {
            ($ok:expr, $key:expr, $msg:expr $(,)?) => {
                check_in(&mut errs, $ok, $key, $msg)
            };
        }
        let m = &self.mqtt;
        check!(
            !m.client_id.is_empty() && m.client_id.len() <= 64,
            "mqtt.client_id",
            "must be 1-64 bytes",
        );
        let mut filters = std::collections::HashSet::new();
        for (key, filter) in [
            ("mqtt.topic", &m.topic),
            ("mqtt.session_topic", &m.session_topic),
            ("mqtt.status_topic", &m.status_topic),
        ] {
            if let Err(e) = crate::core::topic::TopicPattern::parse(filter) {
                errs.push((key.into(), e.to_string()));
            }
            if !filters.insert(filter) {
                errs.push((
                    key.into(),
                    "must differ from the other topic filters".into(),
                ));
            }
        }
        check!(!m.host.is_empty(), "mqtt.host", "must not be empty");
        check!(
            m.keep_alive_s >= 1,
            "mqtt.keep_alive_s",
            "must be at least 1"
        );
        check!(
            m.connect_timeout_s >= 1,
            "mqtt.connect_timeout_s",
            "must be at least 1",
        );
        check!(
            m.request_queue >= 16,
            "mqtt.request_queue",
            "must be at least 16",
        );
        check!(
            m.reconnect_initial_ms >= 1 && m.reconnect_initial_ms <= m.reconnect_max_ms,
            "mqtt.reconnect_initial_ms",
            "must be at least 1 and at most mqtt.reconnect_max_ms",
        );
        check!(
            m.max_packet_bytes <= MQTT_MAX_PACKET_BYTES,
            "mqtt.max_packet_bytes",
            "must not exceed MQTT's maximum packet size, 268435455",
        );
        check!(
            m.max_packet_bytes > self.ingest.max_payload_bytes,
            "mqtt.max_packet_bytes",
            "must exceed ingest.max_payload_bytes, so oversized payloads are rejected and acknowledged instead of breaking the connection",
        );
        check!(
            m.password.is_none() || m.username.is_some(),
            "mqtt.password",
            "needs mqtt.username",
        );
        check!(
            m.tls.is_none() || m.broker == BrokerMode::External,
            "mqtt.tls",
            "applies only to an external broker (mqtt.broker = \"external\"); the embedded broker is plain TCP",
        );
        if let Some(tls) = &m.tls {
            check!(
                tls.client_cert_file.is_some() == tls.client_key_file.is_some(),
                "mqtt.tls.client_cert_file",
                "client_cert_file and client_key_file go together",
            );
        }
        let e = &m.embedded;
        check!(
            m.broker != BrokerMode::Embedded || e.max_payload_bytes < m.max_packet_bytes,
            "mqtt.embedded.max_payload_bytes",
            "must be below mqtt.max_packet_bytes, or a device could send a message the gateway cannot receive",
        );
        check!(
            e.max_connections >= 1,
            "mqtt.embedded.max_connections",
            "must be at least 1",
        );
        check!(
            e.max_inflight >= 1 && e.max_inflight <= u16::MAX as usize,
            "mqtt.embedded.max_inflight",
            "must be 1-65535",
        );
        check!(
            e.max_payload_bytes >= 1,
            "mqtt.embedded.max_payload_bytes",
            "must be at least 1",
        );
        let sd = &self.shutdown;
        check!(
            sd.mqtt_disconnect_timeout_ms >= 1,
            "shutdown.mqtt_disconnect_timeout_ms",
            "must be at least 1",
        );
        check!(
            sd.http_stop_timeout_ms >= 1,
            "shutdown.http_stop_timeout_ms",
            "must be at least 1",
        );
        let i = &self.ingest;
        check!(
            i.max_payload_bytes >= 64,
            "ingest.max_payload_bytes",
            "must be at least 64",
        );
        check!(i.max_chairs >= 1, "ingest.max_chairs", "must be at least 1");
        check!(
            i.forget_idle_chair_ms == 0 || i.forget_idle_chair_ms >= 1_000,
            "ingest.forget_idle_chair_ms",
            "must be 0 (never) or at least 1000",
        );
        let w = &self.websocket;
        for (key, v, lo, hi) in [
            ("websocket.queue_capacity", w.queue_capacity, 16, 1 << 20),
            ("websocket.replay_capacity", w.replay_capacity, 1, 1 << 24),
            (
                "websocket.live_log_capacity",
                w.live_log_capacity,
                16,
                1 << 24,
            ),
            (
                "websocket.max_message_bytes",
                w.max_message_bytes,
                256,
                16 << 20,
            ),
            (
                "websocket.max_frame_bytes",
                w.max_frame_bytes,
                256,
                16 << 20,
            ),
            (
                "websocket.write_batch_frames",
                w.write_batch_frames,
                1,
                4096,
            ),
            (
                "websocket.read_buffer_bytes",
                w.read_buffer_bytes,
                512,
                1 << 20,
            ),
            (
                "websocket.write_buffer_bytes",
                w.write_buffer_bytes,
                0,
                1 << 20,
            ),
            (
                "websocket.max_write_buffer_bytes",
                w.max_write_buffer_bytes,
                w.write_buffer_bytes + 1,
                256 << 20,
            ),
        ] {
            if v < lo || v > hi {
                errs.push((key.into(), format!("{v} is outside {lo}..={hi}")));
            }
        }
        check!(
            w.max_write_buffer_bytes >= snapshot_bound(self.ingest.max_chairs, self.condition_count()),
            "websocket.max_write_buffer_bytes",
            "must hold a snapshot of ingest.max_chairs chairs with every alarm condition active (see config/vitalgate.toml), or no dashboard could receive one",
        );
        check!(
            w.max_frame_bytes <= w.max_message_bytes,
            "websocket.max_frame_bytes",
            "must not exceed websocket.max_message_bytes",
        );
        check!(
            w.ping_interval_ms >= 100 && w.ping_interval_ms < w.idle_timeout_ms,
            "websocket.ping_interval_ms",
            "must be at least 100 and less than websocket.idle_timeout_ms",
        );
        check!(
            w.close_timeout_ms >= 1,
            "websocket.close_timeout_ms",
            "must be at least 1",
        );
        check!(
            w.max_connections >= 1,
            "websocket.max_connections",
            "must be at least 1",
        );
        check!(
            w.commands_per_second.is_finite() && w.commands_per_second > 0.0,
            "websocket.commands_per_second",
            "must be above 0",
        );
        check!(
            w.command_burst >= 1,
            "websocket.command_burst",
            "must be at least 1",
        );
        if let Err(rule_errs) = RuleSet::compile_all(self.rule_sources()) {
            errs.extend(rule_errs.into_iter().map(|e| (e.key, e.message)));
        }
        let a = &self.alarms;
        check!(
            (100..=5_000).contains(&a.tick_ms),
            "alarms.tick_ms",
            "must be 100-5000 (a technical alarm is up to one tick late, and the systemd \
             watchdog counts the gateway hung when its timers have not run for half of \
             WatchdogSec)",
        );
        for (key, ms) in [
            ("alarms.escalate_after_ms.high", a.escalate_after_ms.high),
            (
                "alarms.escalate_after_ms.medium",
                a.escalate_after_ms.medium,
            ),
            ("alarms.escalate_after_ms.low", a.escalate_after_ms.low),
            ("alarms.reminder_ms", a.reminder_ms),
        ] {
            check!(
                ms == 0 || ms >= a.tick_ms,
                key,
                "must be 0 (never) or at least alarms.tick_ms",
            );
        }
        check!(
            a.max_escalation_level <= 10,
            "alarms.max_escalation_level",
            "must be 0-10",
        );
        check!(
            !self.audit.path.as_os_str().is_empty(),
            "audit.path",
            "must name a file",
        );
        check!(
            (1..=1_000_000).contains(&self.audit.max_query_rows),
            "audit.max_query_rows",
            "must be 1-1000000",
        );
        check!(
            (100..=60_000).contains(&self.http.handshake_timeout_ms),
            "http.handshake_timeout_ms",
            "must be 100-60000",
        );
        check!(
            (1..=65_535).contains(&self.http.accept_backlog),
            "http.accept_backlog",
            "must be 1-65535",
        );
        let a = &self.auth;
        check!(
            a.mode != AuthMode::None || self.http.bind.ip().is_loopback(),
            "auth.mode",
            "\"none\" (no authentication) is allowed only with a loopback http.bind (127.0.0.1 or ::1); set auth.mode = \"jwt\" to serve dashboards on the network",
        );
        check!(
            a.mode != AuthMode::Jwt || a.key_file.is_some() != a.key.is_some(),
            "auth.key_file",
            "auth.mode = \"jwt\" needs the key to verify tokens with: auth.key_file or auth.key (one of them)",
        );
        check!(!a.audience.is_empty(), "auth.audience", "must not be empty",);
        check!(a.leeway_s <= 300, "auth.leeway_s", "must be 0-300");
        let c = &self.capture;
        check!(
            c.queue_capacity >= 1,
            "capture.queue_capacity",
            "must be at least 1 (0 would leave almost every message out of the capture)",
        );
        // A file holds at least a few of the largest messages (16 KiB by default).
        check!(
            c.rotate_bytes >= 1 << 20,
            "capture.rotate_bytes",
            "must be at least 1048576 (1 MiB): smaller makes a file every few messages",
        );
        errs.extend(self.cluster.problems());
        errs
    }
}
