//! The shipped Mosquitto configuration (deploy/mosquitto/) run as shipped, with test
//! certificates and passwords: its paths and ports moved into a temporary directory,
//! devices added with its own `add-device.sh`. A device publishes only its own
//! chair's readings; another chair's are refused and never reach the gateway, and
//! so are anonymous clients and a device's session messages.

mod common;

use common::pki::Pki;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mosquitto");

/// Mosquitto running deploy/mosquitto/vitalgate.conf.
struct ShippedBroker {
    child: Child,
    dir: PathBuf,
    tls_port: u16,
    local_port: u16,
    _pki: Pki,
}

impl Drop for ShippedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Debian 12's /etc/mosquitto/mosquitto.conf as the `mosquitto` package installs it,
/// with its directories moved into `dir` (the pid file and log file left out).
fn debian_main_conf(dir: &Path) -> String {
    format!(
        "# Place your local configuration in /etc/mosquitto/conf.d/\n\
         persistence true\n\
         persistence_location {data}/\n\
         include_dir {confd}\n",
        data = dir.join("data").display(),
        confd = dir.join("conf.d").display(),
    )
}

impl ShippedBroker {
    async fn start() -> ShippedBroker {
        let dir = std::env::temp_dir().join(unique("deploy-mosq"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let pki = Pki::new();
        for (from, to) in [
            ("ca.pem", "ca.pem"),
            ("server.pem", "server.pem"),
            ("server.key", "server.key"),
        ] {
            std::fs::copy(pki.path(from), dir.join(to)).unwrap();
        }
        std::fs::copy(Path::new(DEPLOY).join("acl"), dir.join("acl")).unwrap();
        // Devices as the install recipe adds them, then the gateway and the clinic
        // system's users.
        for (site, chair, password) in [("north", "7", "pw-7"), ("north", "8", "pw-8")] {
            run(Command::new(Path::new(DEPLOY).join("add-device.sh"))
                .args([site, chair, password])
                .env("MOSQUITTO_DEVICES_DIR", &dir));
        }
        for (user, password) in [("vitalgate", "pw-gw"), ("clinic-system", "pw-clinic")] {
            run(Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(dir.join("passwd"))
                .args([user, password]));
        }
        let (tls_port, local_port) = (free_port(), free_port());
        let shipped = std::fs::read_to_string(Path::new(DEPLOY).join("vitalgate.conf")).unwrap();
        let here = format!("{}/", dir.display());
        let conf = shipped
            .replace("/etc/mosquitto/vitalgate/", &here)
            .replace("listener 8883", &format!("listener {tls_port}"))
            .replace(
                "listener 1883 127.0.0.1",
                &format!("listener {local_port} 127.0.0.1"),
            );
        assert_ne!(conf, shipped, "the shipped paths and ports were moved");
        // Run as the test's user: the shipped file relies on Debian's `mosquitto`
        // user owning /var/lib/mosquitto, which a temporary directory is not.
        let conf = format!("{conf}\nuser root\n");
        // Installed as the recipe says: conf.d/vitalgate.conf, included by Debian's
        // own mosquitto.conf (as the package ships it, its paths moved here).
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/vitalgate.conf"), conf).unwrap();
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, debian_main_conf(&dir)).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto starts (apt-get install mosquitto mosquitto-clients)");
        for port in [tls_port, local_port] {
            eventually(
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                },
                "the shipped mosquitto listens",
            )
            .await;
        }
        ShippedBroker {
            child,
            dir,
            tls_port,
            local_port,
            _pki: pki,
        }
    }

    /// `mosquitto_pub` over the TLS listener, MQTT 5 (so a refused publish says why).
    fn publish(&self, user: Option<(&str, &str)>, topic: &str, payload: &str) -> Output {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "localhost", "-V", "mqttv5", "-q", "1"])
            .args(["-p", &self.tls_port.to_string()])
            .arg("--cafile")
            .arg(self.dir.join("ca.pem"))
            .args(["-t", topic, "-m", payload]);
        if let Some((u, p)) = user {
            cmd.args(["-u", u, "-P", p]);
        }
        cmd.output()
            .expect("mosquitto_pub runs (apt-get install mosquitto-clients)")
    }
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_device_publishes_its_own_chair_only() {
    let broker = ShippedBroker::start().await;
    let (mut c, _) = test_config();
    simple_rules(&mut c);
    c.mqtt.port = broker.local_port;
    c.mqtt.topic = "clinic/+/chair/+/vitals".into();
    c.mqtt.session_topic = "clinic/+/chair/+/session".into();
    c.mqtt.status_topic = "clinic/+/chair/+/status".into();
    c.mqtt.username = Some("vitalgate".into());
    c.mqtt.password = Some(serde_json::from_value(json!("pw-gw")).unwrap());
    let gw = TestGateway::start(c, String::new()).await;
    let mut dash = Dashboard::connect(gw.http(), "").await;
    dash.next_of("snapshot").await;
    let device = Some(("device-north-7", "pw-7"));
    let low = |seq: u64| json!({ "seq": seq, "ts": now_ms(), "spo2": 80 }).to_string();

    // Chair 7's device on chair 8's topic, and on its own chair's session topic:
    // refused by the broker.
    for topic in [
        "clinic/north/chair/8/vitals",
        "clinic/north/chair/7/session",
    ] {
        let out = broker.publish(device, topic, &low(1));
        assert!(
            said(&out).contains("Not authorized"),
            "{topic}: {}",
            said(&out)
        );
    }
    // No credentials: refused at the connection.
    let out = broker.publish(None, "clinic/north/chair/7/vitals", &low(1));
    assert!(!out.status.success(), "anonymous: {}", said(&out));
    // Its own chair: accepted, and the gateway raises the alarm.
    let out = broker.publish(device, "clinic/north/chair/7/vitals", &low(2));
    assert!(out.status.success(), "{}", said(&out));
    let alarm = dash.next_of("alarm").await;
    assert_eq!(alarm["chair"], "north/7", "{alarm}");
    assert_eq!(
        gw.metric("vitalgate_readings_ingested_total").await,
        1.0,
        "chair 8's reading never reached the gateway"
    );
    // The clinic system sets sessions.
    let session = json!({ "phase": "baseline", "patient": "P-1", "ts": now_ms() }).to_string();
    let out = broker.publish(
        Some(("clinic-system", "pw-clinic")),
        "clinic/north/chair/7/session",
        &session,
    );
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(dash.next_of("session").await["phase"], "baseline");
    gw.stop().await;
}

/// Every metric the Grafana dashboard and the alert rules query is one that
/// `/metrics` exposes (a renamed metric would leave a panel or an alert silently
/// empty).
#[tokio::test]
async fn the_dashboard_and_the_alert_rules_query_metrics_that_exist() {
    let (gw, _dash, _dev) = setup(|_| {}).await;
    assert_deploy_queries_exposed(
        gw.http(),
        &[
            "grafana/vitalgate-dashboard.json",
            "prometheus/vitalgate-rules.yml",
        ],
        1,
    )
    .await;
    gw.stop().await;
}

/// The systemd unit as shipped passes `systemd-analyze verify` (with ExecStart
/// pointed at this build), and asks for what the gateway provides.
#[test]
fn the_systemd_unit_verifies() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/vitalgate.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "User=vitalgate",
    ] {
        assert!(shipped.contains(line), "{line}");
    }
    let dir = std::env::temp_dir().join(unique("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("vitalgate.service");
    std::fs::write(
        &unit,
        shipped.replace("/usr/local/bin/vitalgate", env!("CARGO_BIN_EXE_vitalgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let said = said(&out);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Two chairs whose names make one broker user (a '-' in a site or chair name)
/// are refused, not given one password and the first one's topics; adding the same
/// chair again (a new password) is allowed.
#[test]
fn add_device_refuses_a_user_name_another_chair_has() {
    let dir = std::env::temp_dir().join(unique("deploy-add"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(Path::new(DEPLOY).join("acl"), dir.join("acl")).unwrap();
    let add = |site: &str, chair: &str, password: &str| {
        Command::new(Path::new(DEPLOY).join("add-device.sh"))
            .args([site, chair, password])
            .env("MOSQUITTO_DEVICES_DIR", &dir)
            .output()
            .unwrap()
    };
    assert!(add("a-b", "1", "pw-1").status.success());
    let clash = add("a", "b-1", "pw-2");
    assert!(!clash.status.success());
    let said = String::from_utf8_lossy(&clash.stderr);
    assert!(
        said.contains("device-a-b-1 already belongs to another chair"),
        "{said}"
    );
    assert!(add("a-b", "1", "pw-3").status.success(), "a new password");
    // A name that differs by a '.' (a regular expression's any character) is
    // another user, not a clash.
    assert!(add("a.b", "1", "pw-4").status.success());
    let acl = std::fs::read_to_string(dir.join("acl")).unwrap();
    assert_eq!(acl.matches("user device-a-b-1\n").count(), 1, "{acl}");
    assert_eq!(acl.matches("user device-a.b-1\n").count(), 1, "{acl}");
    assert!(!acl.contains("clinic/a/chair/b-1"), "{acl}");
    std::fs::remove_dir_all(&dir).unwrap();
}
