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
                let state = cloud_sync::HubState::open(&config)?;
                let listener = tokio::net::TcpListener::bind(config.hub.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.hub.listen))?;
                tracing::info!(address = %listener.local_addr()?, "hub listening");
                cloud_sync::serve(state, listener, shutdown_signal()).await?;
                tracing::info!("hub stopped cleanly");
                Ok(())
            })
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
