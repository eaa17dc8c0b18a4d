//! `vitalgate-loadtest`: drives vitalgate with simulated chairs (MQTT, open loop,
//! fixed rate) and dashboards (WebSocket), and measures end to end: device publish →
//! alarm on every dashboard, and → live-vitals update, from each reading's intended
//! send time (coordinated-omission corrected) and from its actual send. With
//! `--storm`, also how long an alarm storm takes to reach every dashboard ([`storm`]).
//!
//! Exit status: 0 all delivered and within the SLOs given, 1 something was lost or
//! duplicated, 2 an SLO was missed, 3 the run could not be set up.

mod args;
mod cluster;
mod dashboards;
mod devices;
mod floor;
mod frame;
mod report;
mod storm;
mod target;
mod ws;

use anyhow::{bail, Context, Result};
use args::Args;
use clap::Parser;
use dashboards::{DashboardStats, Seen};
use devices::{DeviceStats, Plan, SentLog};
use report::{Latency, Report};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use target::{ProcSampler, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Settings for a gateway this harness starts: room for every simulated chair, a
/// write buffer that holds their snapshot (the shipped rules have 31 alarm
/// conditions; 40 leaves slack, at 1200 bytes each plus 2 KiB of vitals and session
/// per chair, capped at the gateway's largest accepted buffer: past about 6,800
/// chairs the gateway itself refuses the setting), and a queue per dashboard that
/// holds an alarm from every chair.
fn gateway_env(chairs: usize) -> Vec<(String, String)> {
    /// `websocket.max_write_buffer_bytes`' upper bound (src/config/validate.rs).
    const MAX_WRITE_BUFFER_BYTES: usize = 256 << 20;
    let chairs = chairs.max(1000);
    vec![
        ("VITALGATE_INGEST__MAX_CHAIRS".into(), chairs.to_string()),
        (
            "VITALGATE_WEBSOCKET__MAX_WRITE_BUFFER_BYTES".into(),
            (chairs * (40 * 1200 + 2048) + (1 << 20))
                .min(MAX_WRITE_BUFFER_BYTES)
                .to_string(),
        ),
        // As config/vitalgate.toml asks: a storm (every chair alarming at once)
        // must fit each dashboard's queue.
        (
            "VITALGATE_WEBSOCKET__QUEUE_CAPACITY".into(),
            chairs.max(1024).to_string(),
        ),
    ]
}

/// When dashboards failed, why the gateway says it refused or dropped them: its
/// non-zero `vitalgate_ws_refused_total` and `vitalgate_ws_slow_disconnects_total`
/// (a refusal the gateway did not count was not the gateway's).
async fn gateway_refusals(http: SocketAddr) {
    // A gateway that accepts and never answers must not hang the report.
    match tokio::time::timeout(Duration::from_secs(5), http_get(http, "/metrics")).await {
        Ok(Ok((200, body))) => {
            let counted: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.starts_with("vitalgate_ws_refused_total")
                        || l.starts_with("vitalgate_ws_slow_disconnects_total")
                })
                .filter(|l| !l.ends_with(" 0"))
                .collect();
            if counted.is_empty() {
                eprintln!("gateway: no refusal or slow disconnect counted");
            }
            for line in counted {
                eprintln!("gateway: {line}");
            }
        }
        other => eprintln!("gateway: /metrics unavailable: {other:?}"),
    }
}

/// `GET path` over plain TCP: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json.clone();
    match run(args).await {
        Ok(report) => {
            report.print();
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("report serialises");
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::from(3);
                }
            }
            if report.lost_anything() {
                println!("FAILED: alarms were lost or duplicated");
                ExitCode::from(1)
            } else if !report.slo_failures.is_empty() {
                ExitCode::from(2)
            } else {
                println!("OK: every breach reached every dashboard in scope exactly once");
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vitalgate-loadtest: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn run(args: Args) -> Result<Report> {
    if args.chairs == 0 || args.sites == 0 || args.publishers == 0 {
        bail!("--chairs, --sites and --publishers must be at least 1");
    }
    if !(args.rate > 0.0 && args.rate <= 500.0) {
        bail!("--rate must be above 0 and at most 500 readings/s per chair");
    }
    let storm_at = args
        .storm
        .then(|| storm::instant(args.storm_at, args.duration, args.rate))
        .transpose()?;
    let dashboards_n = if args.floor { 1 } else { args.dashboards };
    let mut target = match args.gateway {
        _ if args.floor => Target::broker_only(args.broker.clone())?,
        Some(http) => Target::attach(
            http,
            args.broker.clone(),
            args.topic_prefix.clone(),
            args.gateway_pid,
        )?,
        None if args.cluster.is_some() => Target::start_cluster(
            args.cluster.unwrap_or(1).into(),
            args.vitalgate_bin.clone(),
            &[gateway_env(args.chairs), args.gateway_env.clone()].concat(),
        )
        .await
        .context("starting the cluster")?,
        None => Target::start(
            args.broker.clone(),
            args.vitalgate_bin.clone(),
            &[gateway_env(args.chairs), args.gateway_env.clone()].concat(),
        )
        .await
        .context("starting the gateway")?,
    };
    eprintln!(
        "target: gateway http://{}, broker {}:{}, topics {}/+/chair/+/vitals",
        target.http, target.broker.0, target.broker.1, target.topic_prefix
    );

    let log = Arc::new(SentLog::new(args.chairs));
    let dash_stats = Arc::new(DashboardStats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(dashboards_n.max(1));
    let mut dashboards = Vec::new();
    if args.floor {
        dashboards.push(tokio::spawn(floor::subscribe(
            target.broker.clone(),
            target.topic_prefix.clone(),
            log.clone(),
            dash_stats.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    // Thousands of dashboards connect a bounded number at a time, as a clinic's
    // would trickle in: all at once, handshakes queue past the gateway's header
    // deadline (`http.handshake_timeout_ms`) and the run measures a connect storm.
    // A dashboard gives its permit back once ready (or failed) and never waits
    // for this loop, so taking permits here cannot stall.
    let connecting = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    for i in (0..args.dashboards).filter(|_| !args.floor) {
        let permit =
            tokio::time::timeout(Duration::from_secs(60), connecting.clone().acquire_owned())
                .await
                .context("dashboards did not connect: none ready within 60 s")?
                .context("connect permits closed")?;
        let site = args
            .per_site
            .then(|| format!("{}{}", args.site_prefix, i % args.sites));
        let setup = dashboards::Setup {
            site,
            vitals: args.vitals,
            ready_on_connect: args.ready_on_connect,
            permit,
        };
        dashboards.push(tokio::spawn(dashboards::watch_alarms(
            target.dashboard_http(i),
            setup,
            log.clone(),
            dash_stats.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    for _ in 0..dashboards_n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("dashboards did not all connect within 60 s")?;
    }

    let stuck: Vec<_> = (0..if args.floor { 0 } else { args.stuck })
        .map(|_| tokio::spawn(dashboards::stuck(target.http, stop_rx.clone())))
        .collect();
    let mut gateways: Vec<ProcSampler> = target
        .gateway_pids()
        .into_iter()
        .filter_map(ProcSampler::start)
        .collect();
    let mut nats: Vec<ProcSampler> = target
        .cluster
        .as_ref()
        .map(|c| c.nats_pids.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(ProcSampler::start)
        .collect();
    // The harness's own share of the machine it shares with what it measures.
    let mut own = ProcSampler::start(std::process::id());
    let start = Instant::now() + Duration::from_millis(200);
    let start_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64 + 200;
    let plan = Arc::new(Plan {
        chairs: args.chairs,
        sites: args.sites,
        rate: args.rate,
        breach_probability: if args.storm {
            0.0
        } else {
            (1.0 / (args.rate * args.breach_every.as_secs_f64())).min(0.5)
        },
        topic_prefix: target.topic_prefix.clone(),
        site_prefix: args.site_prefix.clone(),
        start,
        start_ms,
        until: start + args.duration,
        storm: storm_at.map(|at| start + at),
        record_all: args.vitals,
    });
    let dev_stats = Arc::new(DeviceStats::default());
    let mut publishers = Vec::new();
    for id in 0..args.publishers {
        let chairs: Vec<usize> = (0..args.chairs)
            .filter(|g| g % args.publishers == id)
            .collect();
        if chairs.is_empty() {
            continue;
        }
        publishers.push(tokio::spawn(devices::publish(
            id,
            target.broker_for(id),
            chairs,
            plan.clone(),
            log.clone(),
            dev_stats.clone(),
            args.seed,
        )));
    }

    // Progress, once a second, until the publishers are done.
    let progress = {
        let dev = dev_stats.clone();
        let dash = dash_stats.clone();
        let pid = target.pid;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let sent = dev.sent.load(Ordering::Relaxed);
                let rss = pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
                    })
                    .unwrap_or_else(|| "?".into());
                let late = dev.late.load(Ordering::Relaxed);
                eprintln!(
                    "t={:>5.1}s sent {:>7}/s acked {:>9} late {:>6}{} breaches {:>6} alarms rx {:>8} vitals rx {:>9} gateway RSS {}",
                    start.elapsed().as_secs_f64(),
                    sent - last,
                    dev.acked.load(Ordering::Relaxed),
                    late,
                    if late > 0 { " BEHIND SCHEDULE" } else { "" },
                    dev.breaches.load(Ordering::Relaxed),
                    dash.alarms.load(Ordering::Relaxed),
                    dash.vitals.load(Ordering::Relaxed),
                    rss
                );
                last = sent;
            }
        })
    };
    for p in publishers {
        p.await?;
    }
    let elapsed = start.elapsed();

    // Wait for the deliveries still owed (or the drain time), then stop dashboards.
    let breaches: Vec<(u32, u64)> = log.breaches.lock().unwrap().keys().copied().collect();
    // Alarms go to every dashboard (a site scope applies to live vitals only), so
    // every breach is owed to every dashboard.
    // The floor receives each breach reading once; a dashboard each expected rule's
    // alarm once.
    let per_breach = if args.floor {
        1
    } else {
        args.expect_rules.len() as u64
    };
    let expected = breaches.len() as u64 * dashboards_n as u64 * per_breach;
    let drain_until = Instant::now() + args.drain;
    while dash_stats.breach_deliveries.load(Ordering::Relaxed) < expected
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in gateways.iter_mut().chain(nats.iter_mut()) {
        s.sample();
    }
    if let Some(s) = own.as_mut() {
        s.sample();
    }
    let sum = |of: &[ProcSampler], f: &dyn Fn(&ProcSampler) -> f64| {
        (!of.is_empty()).then(|| of.iter().map(f).sum::<f64>())
    };
    let cpu = sum(&gateways, &|s| s.cpu_percent());
    let rss = sum(&gateways, &|s| s.max_rss_kib as f64 / 1024.0);
    let nats_cpu = sum(&nats, &|s| s.cpu_percent());
    progress.abort();
    stop_tx.send_replace(true);
    let mut seen: Vec<Seen> = Vec::new();
    for d in dashboards {
        seen.push(d.await?);
    }
    if !stuck.is_empty() {
        let mut ends: std::collections::BTreeMap<String, usize> = Default::default();
        for s in stuck {
            *ends.entry(s.await?).or_default() += 1;
        }
        eprintln!("stuck dashboards (never reading): {ends:?}");
    }
    if !args.floor && !args.ready_on_connect && seen.iter().any(|s| s.error.is_some()) {
        gateway_refusals(target.http).await;
    }
    target.stop();
    if let Some(client_id) = target.session_to_purge.take() {
        purge_session(&target.broker, &client_id).await;
    }

    let mut alarm_i = dashboards::histogram();
    let mut alarm_s = dashboards::histogram();
    let mut vit_i = dashboards::histogram();
    let mut vit_s = dashboards::histogram();
    let mut received = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    let mut vitals_frames = 0;
    let mut failed = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        s.alarm_from_intended.add_to(&mut alarm_i)?;
        s.alarm_from_sent.add_to(&mut alarm_s)?;
        s.vitals_from_intended.add_to(&mut vit_i)?;
        s.vitals_from_sent.add_to(&mut vit_s)?;
        duplicates += s.duplicates;
        vitals_frames += s.vitals_frames;
        if let Some(e) = &s.error {
            failed.push(format!("dashboard {i}: {e}"));
        }
        for &(chair, ts) in &breaches {
            if args.floor {
                if s.breaches.contains(&(chair, ts)) {
                    received += 1;
                } else {
                    lost += 1;
                }
                continue;
            }
            for rule in &args.expect_rules {
                if s.was_raised(chair, ts, rule) {
                    received += 1;
                } else {
                    lost += 1;
                }
            }
        }
    }
    let storm = storm_at.map(|at| storm::tally(at, &log, &seen, &args.expect_rules, args.floor));
    let sent = dev_stats.sent.load(Ordering::Relaxed);
    let alarm_intended = Latency::of(&alarm_i);
    let mut slo_failures = Vec::new();
    for (name, limit, got) in [
        ("p99", args.max_p99, alarm_intended.p99_ms),
        ("p99.9", args.max_p999, alarm_intended.p999_ms),
    ] {
        if let Some(limit) = limit {
            let limit_ms = limit.as_secs_f64() * 1000.0;
            if got > limit_ms {
                slo_failures.push(format!(
                    "alarm {name} {got:.3} ms > {limit_ms:.3} ms (from intended send)"
                ));
            }
        }
    }
    if let (Some(storm), Some(limit)) = (&storm, args.max_storm) {
        slo_failures.extend(storm.missed(limit));
    }
    let report = Report {
        date_unix_s: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        chairs: args.chairs,
        dashboards: dashboards_n,
        floor: args.floor,
        per_site: args.per_site,
        rate_per_chair_hz: args.rate,
        target_readings_per_s: args.rate * args.chairs as f64,
        duration_s: elapsed.as_secs_f64(),
        readings_sent: sent,
        readings_acked_by_broker: dev_stats.acked.load(Ordering::Relaxed),
        achieved_readings_per_s: sent as f64 / elapsed.as_secs_f64(),
        sent_late: dev_stats.late.load(Ordering::Relaxed),
        max_send_lag_ms: dev_stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        publish_errors: dev_stats.errors.load(Ordering::Relaxed),
        breaches: breaches.len() as u64,
        breach_deliveries_expected: expected,
        breach_deliveries_received: received,
        breach_deliveries_lost: lost,
        duplicate_alarm_events: duplicates,
        dashboards_failed: failed,
        alarm_latency_from_intended: alarm_intended,
        alarm_latency_from_sent: Latency::of(&alarm_s),
        vitals_frames,
        vitals_latency_from_intended: Latency::of(&vit_i),
        vitals_latency_from_sent: Latency::of(&vit_s),
        gateway_cpu_percent: cpu,
        gateway_max_rss_mib: rss,
        cluster_gateways: args.cluster.map(usize::from),
        nats_cpu_percent: nats_cpu,
        harness_cpu_percent: own.as_ref().map(|s| s.cpu_percent()),
        storm,
        slo_failures,
    };
    if report.lost_anything() {
        // What the gateway recorded of a run that lost something.
        if let Some(path) = target.keep_audit() {
            eprintln!("gateway audit trail kept: {}", path.display());
        }
    }
    Ok(report)
}

/// Remove the gateway's persistent session from a shared broker.
async fn purge_session(broker: &(String, u16), client_id: &str) {
    let mut o = rumqttc::MqttOptions::new(client_id, &broker.0, broker.1);
    o.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
