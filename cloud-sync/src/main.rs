//! `medvan-hub`: the cloud side of Medvan.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The Medvan hub: where vans sync and doctors, dispatchers and admins work.
#[derive(Debug, Parser)]
#[command(name = "medvan-hub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub until SIGTERM or Ctrl-C.
    Run {
        /// The config file (see `medvan-hub example-config`).
        #[arg(long, short, default_value = "/etc/medvan/hub.toml")]
        config: PathBuf,
    },
    /// Print an example config file.
    ExampleConfig,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medvan-hub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ExampleConfig => {
            print!("{}", cloud_sync::config::EXAMPLE);
            Ok(())
        }
        Command::Run { config } => {
            let config = cloud_sync::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("Failed to start the runtime")?;
            runtime.block_on(async move {
                let shutdown = shutdown_signal()?;
                let state = cloud_sync::HubState::open(&config)?;
                let listener = tokio::net::TcpListener::bind(config.hub.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.hub.listen))?;
                tracing::info!(address = %listener.local_addr()?, "hub listening");
                cloud_sync::serve(state, listener, shutdown).await?;
                tracing::info!("hub stopped cleanly");
                Ok(())
            })
        }
    }
}

/// Registers for SIGTERM (systemd stopping the unit) and Ctrl-C now, before the service
/// announces itself, and returns a future that resolves on either: a signal that arrives
/// during start-up is not lost and never kills the process uncleanly.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("Failed to listen for SIGTERM")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("Failed to listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down: finishing requests and closing");
    })
}
