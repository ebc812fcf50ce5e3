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
    /// Create the van's case store (once, when provisioning a van). Refuses if one exists.
    InitStore {
        /// The config file.
        #[arg(long, short, default_value = "/etc/medvan/agent.toml")]
        config: PathBuf,
    },
    /// Enrol this van with the hub using the one-time token the fleet manager gave you.
    Enrol {
        /// The config file.
        #[arg(long, short, default_value = "/etc/medvan/agent.toml")]
        config: PathBuf,
        /// The enrolment token (mvt1:...).
        #[arg(long)]
        token: String,
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

/// The process holds decrypted patient records and the store key in memory: no core dumps.
fn forbid_core_dumps() {
    // SAFETY: plain system calls with constant arguments; failure leaves the defaults.
    unsafe {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    forbid_core_dumps();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Enrol { config, token } => {
            let config = edge_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("Failed to start the runtime")?;
            runtime.block_on(edge_agent::enrol(&config, &token))?;
            println!(
                "enrolled; the identity is in {}",
                config.hub.as_ref().map(|h| h.identity_dir.display().to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Command::InitStore { config } => {
            let config = edge_agent::config::Config::load(&config)?;
            edge_agent::init_store(&config)?;
            println!("created an empty case store in {}", config.agent.data_dir.display());
            Ok(())
        }
        Command::VerifyAudit { config } => {
            let config = edge_agent::config::Config::load(&config)?;
            // Read-only: safe beside a running agent.
            let result = case_store::Store::verify_audit_at(&edge_agent::store_config(&config))
                .context("Failed to open the case store")?;
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
                let shutdown = shutdown_signal()?;
                let store = edge_agent::open_store(&config)?;
                let listener = tokio::net::TcpListener::bind(config.agent.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.agent.listen))?;
                tracing::info!(address = %listener.local_addr()?, van = %config.agent.van_id, "edge agent listening");
                edge_agent::serve(config, store, listener, shutdown).await?;
                tracing::info!("edge agent stopped cleanly");
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
