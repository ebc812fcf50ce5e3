//! `edge-agent`: the Medvan daemon that runs in each van.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The Medvan edge agent: keeps the van's cases, offline, encrypted, and never loses an
/// acknowledged edit.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: open the store and serve the touchscreen API until SIGTERM or Ctrl-C.
    Run {
        /// The config file (see `edge-agent example-config`).
        #[arg(long, short, default_value = "/etc/medvan/agent.toml")]
        config: PathBuf,
    },
    /// Create a new random store key file (mode 0600). Never overwrites one.
    GenKey {
        /// Where to write the key.
        path: PathBuf,
    },
    /// Check the audit log's hash chain and print its head.
    VerifyAudit {
        /// The config file.
        #[arg(long, short, default_value = "/etc/medvan/agent.toml")]
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
            eprintln!("edge-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ExampleConfig => {
            print!("{}", edge_agent::config::EXAMPLE);
            Ok(())
        }
        Command::GenKey { path } => {
            case_store::generate_key_file(&path)
                .with_context(|| format!("Failed to create key file {}", path.display()))?;
            println!(
                "wrote a new key to {}; keep a copy somewhere safe: without it the van's data cannot be read",
                path.display()
            );
            Ok(())
        }
        Command::VerifyAudit { config } => {
            let config = edge_agent::config::Config::load(&config)?;
            let store = edge_agent::open_store(&config)?;
            let result = store.verify_audit();
            store.close();
            let head = result.context("The audit log failed verification")?;
            println!("audit log intact: {} entries, head {}", head.size, head.head);
            Ok(())
        }
        Command::Run { config } => {
            let config = edge_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("Failed to start the runtime")?;
            runtime.block_on(async move {
                let store = edge_agent::open_store(&config)?;
                let listener = tokio::net::TcpListener::bind(config.agent.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.agent.listen))?;
                tracing::info!(address = %listener.local_addr()?, van = %config.agent.van_id, "edge agent listening");
                edge_agent::serve(config, store, listener, shutdown_signal()).await?;
                tracing::info!("edge agent stopped cleanly");
                Ok(())
            })
        }
    }
}

/// Resolves on SIGTERM (systemd stopping the unit) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests and closing the store");
}
