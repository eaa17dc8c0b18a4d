//! The run's results: a table for people, JSON for machines, and the verdict.

use crate::storm::StormReport;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
    /// Fewer than 10/(1-q) samples make that percentile an estimate at best.
    pub enough_for_p999: bool,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            p9999_ms: ms(0.9999),
            max_ms: h.max() as f64 / 1000.0,
            enough_for_p999: h.len() >= 10_000,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date_unix_s: u64,
    pub command: String,
    pub chairs: usize,
    pub dashboards: usize,
    /// The bare-subscriber floor rather than the gateway.
    pub floor: bool,
    pub per_site: bool,
    pub rate_per_chair_hz: f64,
    pub target_readings_per_s: f64,
    pub duration_s: f64,
    pub readings_sent: u64,
    pub readings_acked_by_broker: u64,
    pub achieved_readings_per_s: f64,
    pub sent_late: u64,
    pub max_send_lag_ms: f64,
    pub publish_errors: u64,
    pub breaches: u64,
    /// Breach deliveries owed: each expected rule's alarm of each breach to each
    /// dashboard (each breach reading once to the floor's subscriber).
    pub breach_deliveries_expected: u64,
    pub breach_deliveries_received: u64,
    pub breach_deliveries_lost: u64,
    pub duplicate_alarm_events: u64,
    pub dashboards_failed: Vec<String>,
    /// Device publish (intended send time) → `raised` alarm on a dashboard.
    pub alarm_latency_from_intended: Latency,
    /// Device publish (actual send: handed to the MQTT client, so queueing in the
    /// publisher's own client counts too) → `raised` alarm on a dashboard.
    pub alarm_latency_from_sent: Latency,
    pub vitals_frames: u64,
    pub vitals_latency_from_intended: Latency,
    pub vitals_latency_from_sent: Latency,
    /// Of every gateway together (with --cluster: summed, RSS too).
    pub gateway_cpu_percent: Option<f64>,
    pub gateway_max_rss_mib: Option<f64>,
    /// With --cluster: the gateways started on the NATS cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_gateways: Option<usize>,
    /// With --cluster: the three NATS nodes' CPU together (of one core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_cpu_percent: Option<f64>,
    /// This harness's own CPU over the same interval (of one core): publishers,
    /// dashboards and bookkeeping, on the machine the gateway runs on.
    pub harness_cpu_percent: Option<f64>,
    /// With --storm: the storm's own figures (its alarms are also those above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
    pub slo_failures: Vec<String>,
}

impl Report {
    pub fn lost_anything(&self) -> bool {
        self.breach_deliveries_lost > 0
            || self.duplicate_alarm_events > 0
            || !self.dashboards_failed.is_empty()
            || self.readings_acked_by_broker < self.readings_sent
            || self
                .storm
                .as_ref()
                .is_some_and(|s| s.alarms_lost > 0 || s.alarms_duplicated > 0)
    }

    pub fn print(&self) {
        println!();
        println!(
            "vitalgate-loadtest: {} chairs × {} Hz = {:.0} readings/s target, {} dashboards{}, {:.1} s",
            self.chairs,
            self.rate_per_chair_hz,
            self.target_readings_per_s,
            self.dashboards,
            if self.per_site { " (live vitals: one site each)" } else { "" },
            self.duration_s
        );
        println!(
            "sent {} readings ({:.0}/s achieved), broker acked {}, {} sent >5 ms late (max lag {:.1} ms), {} publish errors",
            self.readings_sent,
            self.achieved_readings_per_s,
            self.readings_acked_by_broker,
            self.sent_late,
            self.max_send_lag_ms,
            self.publish_errors
        );
        println!(
            "breaches {}: deliveries expected {}, received {}, LOST {}, duplicate alarm events {}",
            self.breaches,
            self.breach_deliveries_expected,
            self.breach_deliveries_received,
            self.breach_deliveries_lost,
            self.duplicate_alarm_events
        );
        for d in &self.dashboards_failed {
            println!("dashboard failed: {d}");
        }
        println!();
        println!(
            "{:<36} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "latency (ms)", "samples", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        let (from_intended, from_sent) = if self.floor {
            (
                "FLOOR (bare subscriber), intended",
                "FLOOR (bare subscriber), sent",
            )
        } else {
            ("alarm, from intended send", "alarm, from actual send")
        };
        for (name, l) in [
            (from_intended, &self.alarm_latency_from_intended),
            (from_sent, &self.alarm_latency_from_sent),
            (
                "live vitals, from intended send",
                &self.vitals_latency_from_intended,
            ),
            (
                "live vitals, from actual send",
                &self.vitals_latency_from_sent,
            ),
        ] {
            if l.samples == 0 {
                continue;
            }
            println!(
                "{:<36} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8.3}",
                name, l.samples, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.p9999_ms, l.max_ms
            );
        }
        if let Some(storm) = &self.storm {
            storm.print();
        }
        if let (Some(cpu), Some(rss)) = (self.gateway_cpu_percent, self.gateway_max_rss_mib) {
            println!();
            let who = match (self.floor, self.cluster_gateways) {
                (true, _) => "broker".to_string(),
                (false, None) => "gateway".to_string(),
                (false, Some(n)) => format!("{n} gateway(s) together"),
            };
            println!("{who}: {cpu:.0} % CPU (of one core), max RSS {rss:.1} MiB");
        }
        if let Some(cpu) = self.nats_cpu_percent {
            println!("NATS cluster (3 nodes): {cpu:.0} % CPU (of one core)");
        }
        if let Some(cpu) = self.harness_cpu_percent {
            println!("harness: {cpu:.0} % CPU (of one core)");
        }
        for f in &self.slo_failures {
            println!("SLO MISSED: {f}");
        }
    }
}
