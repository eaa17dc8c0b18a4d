//! The `vitalgate` binary: parse the command line, set up logging, run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vitalgate::sim::demo::{self, DemoOptions};
use vitalgate::Config;

/// MQTT-to-WebSocket alarm gateway for ketamine infusion chairs.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file; keys not given keep the defaults of config/vitalgate.toml.
    /// VITALGATE_* environment variables override both.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a SIMULATED ward of 12 chairs on site "demo" (embedded
    /// broker, temporary audit trail) and print the nurse station's URL.
    Demo {
        /// Seed of the simulated ward: same seed, same ward.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Use this MQTT broker instead of the embedded one.
        #[arg(long, value_name = "HOST:PORT", value_parser = demo::parse_broker)]
        broker: Option<vitalgate::ingest::BrokerAddr>,
    },
    /// Write the library of SIMULATED, annotated infusion sessions (the files of
    /// scenarios/ in this repository) into DIR.
    Scenarios {
        #[arg(default_value = "scenarios", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Replay recorded sessions through the alarm engine with this configuration, on
    /// the recordings' own time, and report the alarms per rule and priority (and,
    /// for annotated recordings such as scenarios/, true events detected or missed).
    Replay {
        /// Recordings: JSON Lines files of MQTT messages, or directories of them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Compare with this configuration (the defaults overlaid by this file; no
        /// environment variables), side by side.
        #[arg(long, value_name = "FILE")]
        compare: Option<PathBuf>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write a chart of alarms per chair-hour by rule (SVG) to this file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}

/// Errors are printed as what they say (a configuration error names the key and the
/// file or variable it came from) and nothing else: no backtrace, even with
/// `RUST_BACKTRACE` set, which an operator may have for other reasons. Exit code 1.
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gateway()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", described(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, each once: the module errors already end their message with
/// their source's (so that a log line of one says it all), which `{:#}` would
/// append a second time.
fn described(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

async fn gateway() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn".into()),
        )
        .init();
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if cli.check {
        vitalgate::preflight(&config)?;
        println!("configuration OK");
        return Ok(());
    }
    if matches!(cli.command, None | Some(Command::Demo { .. })) {
        vitalgate::open_files::raise_for(&config);
    }
    match cli.command {
        None => vitalgate::run(config, shutdown_signal())
            .await
            .context("vitalgate failed")?,
        Some(Command::Demo { seed, broker }) => {
            demo::run(config, DemoOptions { seed, broker }, shutdown_signal())
                .await
                .context("vitalgate demo failed")?
        }
        Some(Command::Scenarios { dir }) => {
            let written = tokio::task::spawn_blocking(move || vitalgate::sim::library::write(&dir))
                .await
                .context("writing the library stopped")?
                .context("cannot write the scenario library")?;
            println!("wrote {} files of simulated sessions", written.len());
        }
        Some(Command::Replay {
            paths,
            compare,
            json,
            svg,
        }) => {
            let name = cli.config.as_ref().map_or_else(
                || "shipped defaults".to_string(),
                |p| p.display().to_string(),
            );
            // CPU-bound from start to end: off the runtime's workers.
            tokio::task::spawn_blocking(move || replay(config, name, paths, compare, json, svg))
                .await
                .context("replay stopped")??
        }
    }
    Ok(())
}

fn replay(
    config: Config,
    name: String,
    paths: Vec<PathBuf>,
    compare: Option<PathBuf>,
    json: bool,
    svg: Option<PathBuf>,
) -> anyhow::Result<()> {
    use vitalgate::replay::{self, render::Comparison};
    let a = replay::replay(&config, &name, &paths)?;
    let b = match &compare {
        Some(path) => {
            let other = Config::load(Some(path), std::iter::empty())?;
            Some(replay::replay(&other, &path.display().to_string(), &paths)?)
        }
        None => None,
    };
    let comparison = Comparison::new(&a, b.as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", comparison.table());
    }
    if let Some(path) = svg {
        std::fs::write(&path, comparison.svg())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
