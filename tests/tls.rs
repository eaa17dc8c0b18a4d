//! MQTT over TLS to a Mosquitto with a TLS listener, using certificates made at test
//! time: the right CA, hostname and client certificate connect; a wrong CA, a wrong
//! hostname or a missing client certificate are refused.

mod common;

use common::pki::Pki;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use vitalgate::config::TlsConfig;
use vitalgate::Gateway;

/// Start a gateway over TLS; true once subscribed, false once a connection attempt
/// has failed while it still is not.
async fn connects(
    pki: &Pki,
    host: &str,
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> bool {
    let (mut c, prefix) = test_config();
    simple_rules(&mut c);
    c.mqtt.host = host.into();
    c.mqtt.port = port;
    c.mqtt.tls = Some(TlsConfig {
        ca_file: ca.into(),
        client_cert_file: client.map(|(c, _)| c.into()),
        client_key_file: client.map(|(_, k)| k.into()),
    });
    let gw = Gateway::start(c).await.expect("TLS settings are readable");
    let mut subscribed = gw.app().health.watch_mqtt_subscribed();
    let deadline = Instant::now() + DEADLINE;
    let ok = loop {
        if *subscribed.borrow() {
            break true;
        }
        if metric(gw.http_addr(), "vitalgate_mqtt_connection_errors_total").await >= 1.0 {
            break *subscribed.borrow();
        }
        assert!(Instant::now() < deadline, "neither connected nor refused");
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(50), subscribed.changed()).await;
    };
    if ok {
        // Prove the TLS session carries readings end to end.
        let gw = TestGateway {
            gateway: gw,
            prefix,
            client_id: String::new(),
            external: false,
        };
        let mut dash = gw.dashboard().await;
        dash.next_of("snapshot").await;
        let alarm = publish_over_tls(&gw, "localhost", port, pki).await;
        assert_eq!(dash.next_of("alarm").await["value"], alarm);
        gw.gateway.shutdown().await;
    } else {
        gw.shutdown().await;
    }
    ok
}

/// Publish one breach as a device connected over TLS with the test PKI; returns the
/// SpO2 value sent.
async fn publish_over_tls(gw: &TestGateway, host: &str, port: u16, pki: &Pki) -> f64 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(pki.path("client.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("client.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let mut o = rumqttc::MqttOptions::new(unique("tlsdev"), host, port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
    client
        .publish(
            gw.topic("north", "1"),
            rumqttc::QoS::AtLeastOnce,
            false,
            reading(1, json!({"spo2": 81})).to_string(),
        )
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("TLS device connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledged the TLS publish");
    81.0
}

#[tokio::test]
async fn tls_with_ca_hostname_and_client_certificate_checks() {
    let pki = Pki::new();
    let tls = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        pki.path("ca.pem").display(),
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    );
    let broker = PrivateBroker::start_config(false, &tls).await;
    let (ca, other) = (pki.path("ca.pem"), pki.path("other-ca.pem"));
    let client = (pki.path("client.pem"), pki.path("client.key"));
    let client = Some((client.0.as_path(), client.1.as_path()));

    let port = broker.port;
    assert!(
        connects(&pki, "localhost", port, &ca, client).await,
        "the right CA, name and client certificate"
    );
    assert!(
        !connects(&pki, "localhost", port, &other, client).await,
        "a CA that did not sign the broker"
    );
    assert!(
        !connects(&pki, "127.0.0.1", port, &ca, client).await,
        "a name the certificate does not carry"
    );
    assert!(
        !connects(&pki, "localhost", port, &ca, None).await,
        "no client certificate"
    );
}
