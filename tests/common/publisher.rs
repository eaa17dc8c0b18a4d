//! An MQTT 3.1.1 device that records which of its publishes were acknowledged:
//! what a broker acknowledged is what it promised to keep, so it is what a
//! test of "nothing acknowledged is lost" counts.
#![allow(dead_code)]

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// rumqttc reuses a packet id once it is acknowledged, so an acknowledgement is
/// matched to the publish holding that id at the time. Publishes are numbered
/// from 0 in the order they were made.
pub struct Publisher {
    client: AsyncClient,
    acked: tokio::sync::mpsc::UnboundedReceiver<usize>,
    payload_seqs: Vec<u64>,
    acked_indexes: HashSet<usize>,
}

impl Publisher {
    /// Connected to the MQTT listener on `port` (a clean session, up to 500
    /// publishes awaiting acknowledgement). It does not reconnect: what it sent
    /// before its node went is what a test checks.
    pub async fn connect(port: u16) -> Publisher {
        Publisher::start(port, None).await
    }

    /// Connected to the MQTT listener on `port` with a session kept by the
    /// broker, as a device that cares for its readings runs: when an
    /// acknowledgement is `overdue`, it reconnects and sends again what was not
    /// acknowledged (MQTT 3.1.1 resends only on a reconnection).
    pub async fn connect_resending(port: u16, overdue: Duration) -> Publisher {
        Publisher::start(port, Some(overdue)).await
    }

    async fn start(port: u16, overdue: Option<Duration>) -> Publisher {
        let mut o = MqttOptions::new(super::unique("dev"), "127.0.0.1", port);
        o.set_clean_session(overdue.is_none()).set_inflight(500);
        let (client, mut events) = AsyncClient::new(o, 10_000);
        let (ack_tx, acked) = tokio::sync::mpsc::unbounded_channel();
        let (up_tx, mut up) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut sent = 0usize;
            // Publish index and when it was (last) sent, by packet id.
            let mut holding: HashMap<u16, (usize, Instant)> = HashMap::new();
            let mut reconnects = 0u32;
            loop {
                if let Some(overdue) = overdue {
                    let late = holding.values().any(|(_, at)| at.elapsed() > overdue);
                    if late && events.network.is_some() {
                        // Unacknowledged publishes back to the queue, then a
                        // new connection: the next poll resends them.
                        events.clean();
                        events.network = None;
                        reconnects += 1;
                        println!("device: acknowledgements overdue, reconnecting ({reconnects})");
                        for held in holding.values_mut() {
                            held.1 = Instant::now();
                        }
                    }
                }
                let event = match overdue {
                    Some(_) => {
                        match tokio::time::timeout(Duration::from_millis(250), events.poll()).await
                        {
                            Ok(event) => event,
                            Err(_) => continue,
                        }
                    }
                    None => events.poll().await,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(());
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => match holding.get_mut(&pkid) {
                        // Sent again after a reconnection.
                        Some(held) => held.1 = Instant::now(),
                        None => {
                            holding.insert(pkid, (sent, Instant::now()));
                            sent += 1;
                        }
                    },
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some((index, _)) = holding.remove(&ack.pkid) {
                            let _ = ack_tx.send(index);
                        }
                    }
                    Ok(_) => {}
                    Err(_) if overdue.is_some() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(super::DEADLINE, up.recv())
            .await
            .expect("connected to the MQTT listener");
        Publisher {
            client,
            acked,
            payload_seqs: Vec::new(),
            acked_indexes: HashSet::new(),
        }
    }

    /// Publish `payload` (a reading with a `seq`) at QoS 1; its index is the
    /// number of publishes before it.
    pub async fn publish(&mut self, topic: &str, payload: String) -> usize {
        let seq = serde_json::from_str::<serde_json::Value>(&payload).unwrap()["seq"]
            .as_u64()
            .unwrap();
        self.payload_seqs.push(seq);
        let _ = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await;
        self.payload_seqs.len() - 1
    }

    fn collect(&mut self) {
        while let Ok(i) = self.acked.try_recv() {
            self.acked_indexes.insert(i);
        }
    }

    /// Wait until `n` publishes are acknowledged, failing after `limit`.
    pub async fn wait_acks(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.acked_indexes.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} acks",
                self.acked_indexes.len()
            );
            if let Ok(Some(i)) =
                tokio::time::timeout(Duration::from_millis(50), self.acked.recv()).await
            {
                self.acked_indexes.insert(i);
            }
        }
    }

    /// Wait until every publish is acknowledged, failing after `limit`.
    pub async fn all_acked(&mut self, limit: Duration) {
        let n = self.payload_seqs.len();
        self.wait_acks(n, limit).await;
    }

    /// Wait up to `limit` for every publish's acknowledgement; the indexes of
    /// those acknowledged by then.
    pub async fn acked_within(&mut self, limit: Duration) -> HashSet<usize> {
        let deadline = Instant::now() + limit;
        while self.acked_indexes.len() < self.payload_seqs.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.acked.recv()).await {
                Ok(Some(i)) => {
                    self.acked_indexes.insert(i);
                }
                _ => break,
            }
        }
        self.collect();
        self.acked_indexes.clone()
    }

    /// The payload `seq` of every acknowledged publish, sorted.
    pub fn acked_payload_seqs(&mut self) -> Vec<u64> {
        self.collect();
        let mut seqs: Vec<u64> = self
            .acked_indexes
            .iter()
            .map(|&i| self.payload_seqs[i])
            .collect();
        seqs.sort_unstable();
        seqs
    }
}
