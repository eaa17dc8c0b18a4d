//! The command line.

use crate::target::Broker;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Load-test vitalgate end to end.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Simulated chairs.
    #[arg(long, default_value_t = 50)]
    pub chairs: usize,
    /// Readings per second per chair (numerics; up to 500).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Sites the chairs are spread over (site0, site1, ...).
    #[arg(long, default_value_t = 4)]
    pub sites: usize,
    /// Dashboards.
    #[arg(long, default_value_t = 20)]
    pub dashboards: usize,
    /// Each dashboard takes live vitals for one site (round-robin) instead of every
    /// chair. Alarms go to every dashboard either way.
    #[arg(long)]
    pub per_site: bool,
    /// Dashboards also subscribe to live vitals.
    #[arg(long)]
    pub vitals: bool,
    /// How long to publish (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Mean time between breach episodes (SBP surges) per chair. Not with --storm,
    /// whose breaches are the only ones.
    #[arg(long, value_parser = parse_duration, default_value = "10s", conflicts_with = "storm")]
    pub breach_every: Duration,
    /// MQTT publisher connections the chairs are spread over.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Target a running gateway at this HTTP address (host:port) instead of starting one.
    #[arg(long)]
    pub gateway: Option<SocketAddr>,
    /// Broker: `embedded` (the gateway's own), `mosquitto` (a private Mosquitto tuned
    /// for load, started here), or host:port of an existing broker.
    #[arg(long, default_value = "embedded")]
    pub broker: Broker,
    /// First topic level devices publish under, with --gateway.
    #[arg(long, default_value = "clinic")]
    pub topic_prefix: String,
    /// With --gateway: the target sends no `snapshot` frame (it is not vitalgate, e.g.
    /// the Node-RED flow of compare.sh), so a dashboard is ready once its WebSocket
    /// to `ws://{gateway}/ws` is connected. Nothing else is asked of the target
    /// (not /ready, nor /metrics when dashboards fail).
    #[arg(long, requires = "gateway")]
    pub ready_on_connect: bool,
    /// WebSocket handshakes the dashboards have in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Process id of the --gateway, for its CPU and memory figures.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// The vitalgate binary to start (default: next to this one).
    #[arg(long)]
    pub vitalgate_bin: Option<PathBuf>,
    /// An extra environment variable for the gateway this harness starts, as
    /// KEY=VALUE (repeatable; e.g. VITALGATE_AUDIT__SYNCHRONOUS=full). Set after the
    /// harness's own settings, so it wins over them: overriding the ones the run
    /// depends on (VITALGATE_HTTP__BIND, VITALGATE_AUDIT__PATH, VITALGATE_MQTT__*)
    /// breaks the run. Given here rather than in the harness's environment (which
    /// the gateway inherits too), it is recorded in the report's command.
    /// Cluster mode: start a 3-node NATS cluster (JetStream and MQTT; NATS 2.10 or
    /// later, `NATS_SERVER` or `nats-server` on the PATH) and this many gateways in
    /// cluster mode on it. Publishers spread over the nodes' MQTT listeners,
    /// dashboards over the gateways.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16), conflicts_with_all = ["gateway", "floor"])]
    pub cluster: Option<u16>,
    #[arg(long = "gateway-env", value_name = "KEY=VALUE", value_parser = parse_env_var, conflicts_with_all = ["gateway", "floor"])]
    pub gateway_env: Vec<(String, String)>,
    /// After the last publish, wait at most this long for alarms in flight.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Fail (exit 2) if the alarm p99 from intended send exceeds this.
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,
    /// Fail (exit 2) if the alarm p99.9 from intended send exceeds this.
    #[arg(long, value_parser = parse_duration)]
    pub max_p999: Option<Duration>,
    /// Fail (exit 2) if the storm took longer than this: from its first publish
    /// until its last alarm reached every dashboard (a storm that lost an alarm
    /// never completes, and fails this too).
    #[arg(long, value_parser = parse_duration, requires = "storm")]
    pub max_storm: Option<Duration>,
    /// Rules every breach (an SBP surge to 192) must raise on every dashboard (held
    /// by the breach's one SBP alarm); each missing one counts as lost. The
    /// defaults are the shipped SBP rules.
    #[arg(long, value_delimiter = ',', default_value = "sbp_warn,sbp_critical")]
    pub expect_rules: Vec<String>,
    /// Measure the floor instead: the same publishers into the same broker, received
    /// by one bare MQTT subscriber (no gateway, no dashboards).
    #[arg(long)]
    pub floor: bool,
    /// Also connect this many dashboards that never read (not counted in the
    /// deliveries): the gateway must cut them off; how each ended is printed.
    #[arg(long, default_value_t = 0)]
    pub stuck: usize,
    /// Sites are named PREFIX0, PREFIX1, ...: a new prefix gives new chairs (soak).
    #[arg(long, default_value = "site")]
    pub site_prefix: String,
    /// Storm: every chair breaches at once (as after a broker reconnect). Until the
    /// storm instant (--storm-at) the chairs publish normal readings, so each chair
    /// exists with a baseline; at it, each publisher sends every one of its chairs a
    /// breach reading (the SBP surge of a breach episode) back to back, whatever the
    /// rate, and from then on every reading of every chair is a surge, so each
    /// chair's alarm stays raised to the end (and after it: with --gateway, use a new
    /// --site-prefix for the next storm). No other breach episodes.
    #[arg(long)]
    pub storm: bool,
    /// The storm instant, from the start of publishing (default: half --duration).
    /// At least one reading period (1/--rate) after the start, so every chair has
    /// published before it, and one before the end of --duration.
    #[arg(long, value_parser = parse_duration, requires = "storm")]
    pub storm_at: Option<Duration>,
    /// Random seed for values and breach episodes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in '{s}': use us, ms, s or m")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `KEY=VALUE` → (KEY, VALUE); the value may hold `=` and may be empty.
fn parse_env_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_env_takes_key_and_value() {
        assert_eq!(
            parse_env_var("VITALGATE_AUDIT__SYNCHRONOUS=full"),
            Ok(("VITALGATE_AUDIT__SYNCHRONOUS".into(), "full".into()))
        );
        assert_eq!(parse_env_var("K=a=b"), Ok(("K".into(), "a=b".into())));
        assert_eq!(parse_env_var("K="), Ok(("K".into(), String::new())));
        assert!(parse_env_var("K").is_err());
        assert!(parse_env_var("=v").is_err());
    }

    #[test]
    fn storm_flags_need_storm_and_exclude_breach_episodes() {
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["vitalgate-loadtest"].iter().chain(extra).copied())
        };
        assert!(parse(&["--storm", "--storm-at", "3s", "--max-storm", "1s"]).is_ok());
        assert!(parse(&["--storm-at", "3s"]).is_err());
        assert!(parse(&["--max-storm", "1s"]).is_err());
        assert!(parse(&["--storm", "--breach-every", "5s"]).is_err());
        let args = parse(&["--gateway-env", "A=1", "--gateway-env", "B=2"]).unwrap();
        assert_eq!(args.gateway_env.len(), 2);
    }
}
