//! The `vitalgate` binary: parse the command line, set up logging, run.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use vitalgate::Config;

/// MQTT-to-WebSocket alarm gateway for ketamine infusion chairs.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file; keys not given keep the defaults of config/vitalgate.toml.
    /// VITALGATE_* environment variables override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn".into()),
        )
        .init();
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if cli.check {
        println!("configuration OK");
        return Ok(());
    }
    vitalgate::run(config, shutdown_signal())
        .await
        .context("vitalgate failed")?;
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
