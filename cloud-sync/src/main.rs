//! `medvan-hub`: the cloud side of Medvan.

use std::path::PathBuf;

use anyhow::Context;
use case_model::{CaseId, OrgId, UserId};
use clap::{Parser, Subcommand};
use sync_quic::identity::DeviceId;
use tracing_subscriber::EnvFilter;

/// The Medvan hub: where vans sync and doctors, dispatchers and admins work.
#[derive(Debug, Parser)]
#[command(name = "medvan-hub", version, about, long_about = None)]
struct Cli {
    /// The config file (see `medvan-hub example-config`).
    #[arg(long, short, global = true, default_value = "/etc/medvan/hub.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (HTTP front door and the vans' sync endpoint) until SIGTERM or Ctrl-C.
    Run,
    /// Create the key file and the fleet CA if missing; prints the CA's fingerprint.
    Init,
    /// Organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Vans: enrolment tokens and revocation.
    #[command(subcommand)]
    Van(VanCommand),
    /// Cases.
    #[command(subcommand)]
    Case(CaseCommand),
    /// Make a token for a caller of the case API; prints the token and its config entry.
    ApiToken {
        /// The user id recorded on their edits (e.g. dr.ana@org-north).
        user: String,
        /// Their organisation.
        org: String,
    },
    /// Walk the audit log's hash chain and report the first bad entry, if any.
    VerifyAudit,
    /// Print an example config file.
    ExampleConfig,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organisation.
    Create {
        /// Its id (letters, digits, '.', '_', '-').
        id: String,
        /// Its name, for people.
        #[arg(long)]
        name: String,
    },
    /// List organisations.
    List,
}

#[derive(Debug, Subcommand)]
enum VanCommand {
    /// Issue a one-time enrolment token for a van; give it to the van's installer.
    Token {
        /// The organisation.
        org: String,
        /// The van.
        van: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 72)]
        valid_hours: u32,
    },
    /// Revoke every certificate of a van (stolen, decommissioned). A running hub closes its
    /// connection within a second.
    Revoke {
        /// The organisation.
        org: String,
        /// The van.
        van: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaseCommand {
    /// Assign a case to a van of the case's organisation; the van receives it at its next sync.
    Assign {
        /// The organisation.
        org: String,
        /// The case id.
        case: String,
        /// The van.
        van: String,
    },
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

fn admin() -> UserId {
    let who = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    UserId::parse(&format!("cli:{who}")).unwrap_or_else(|_| UserId::parse("cli:unknown").expect("a valid user id"))
}

/// Records an administrative action in the audit log.
fn audit_admin(hub: &cloud_sync::fleet::Hub, action: &str, detail: String) -> anyhow::Result<()> {
    hub.storage.audit(&audit::Record {
        at: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        actor: admin().to_string(),
        action: action.into(),
        case_id: None,
        outcome: audit::Outcome::Allowed,
        detail,
    })?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // These need no config.
    match &cli.command {
        Command::ExampleConfig => {
            print!("{}", cloud_sync::config::EXAMPLE);
            return Ok(());
        }
        Command::ApiToken { user, org } => {
            UserId::parse(user)?;
            OrgId::parse(org)?;
            let mut secret = [0u8; 32];
            rand::fill(&mut secret);
            let token = format!("mvh_{}", hex::encode(secret));
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            println!("token (give it to the user; it is not stored): {token}");
            println!("\n[[api_users]]\nuser = \"{user}\"\norg = \"{org}\"\ntoken_sha256 = \"{digest}\"");
            return Ok(());
        }
        _ => {}
    }
    let config = cloud_sync::config::Config::load(&cli.config)?;
    match cli.command {
        Command::ExampleConfig | Command::ApiToken { .. } => unreachable!("handled above"),
        Command::Init => {
            let fp = cloud_sync::fleet::init(&config)?;
            println!("fleet CA fingerprint: {fp}");
            Ok(())
        }
        Command::VerifyAudit => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            match hub.storage.verify_audit()? {
                Ok(head) => {
                    println!("audit log intact: {} entries, head {}", head.size, head.head);
                    Ok(())
                }
                Err(e) => anyhow::bail!("the audit log is damaged: {e}"),
            }
        }
        Command::Org(OrgCommand::Create { id, name }) => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            let org = OrgId::parse(&id)?;
            hub.cases.create_org(&admin(), &org, &name)?;
            println!("created organisation {id}");
            Ok(())
        }
        Command::Org(OrgCommand::List) => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            for (id, name) in hub.storage.orgs()? {
                println!("{id}\t{name}");
            }
            Ok(())
        }
        Command::Van(VanCommand::Token { org, van, valid_hours }) => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            anyhow::ensure!(
                hub.storage.orgs()?.iter().any(|(id, _)| *id == org),
                "there is no organisation {org:?}; create it with `medvan-hub org create {org} --name ...`"
            );
            let device = DeviceId::new(&org, &van)?;
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(valid_hours.into());
            let token = hub.enroller.issue(device, expires.unix_timestamp())?;
            audit_admin(&hub, "van.token", format!("{org}/{van}, valid {valid_hours} h"))?;
            println!("{}", token.encode());
            Ok(())
        }
        Command::Van(VanCommand::Revoke { org, van }) => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            let device = DeviceId::new(&org, &van)?;
            let n = hub.storage.revoke_device(&device)?;
            audit_admin(&hub, "van.revoke", format!("{org}/{van}: {n} certificate(s)"))?;
            println!("revoked {n} certificate(s) of {org}/{van}");
            Ok(())
        }
        Command::Case(CaseCommand::Assign { org, case, van }) => {
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            let case = CaseId::parse(&case)?;
            hub.cases.assign(&admin(), &OrgId::parse(&org)?, case, &van)?;
            println!("assigned case {case} to {org}/{van}");
            Ok(())
        }
        Command::Run => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("Failed to start the runtime")?;
            runtime.block_on(async move {
                let shutdown = shutdown_signal()?;
                let hub = cloud_sync::fleet::Hub::open(&config)?;
                let state = cloud_sync::HubState::open(&config)?.with_cases(hub.cases.clone());
                let listener = tokio::net::TcpListener::bind(config.hub.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.hub.listen))?;
                let sync = hub.bind_sync(config.hub.sync_listen)?;
                tracing::info!(http = %listener.local_addr()?, sync = %sync.local_addr(), ca = %hub.ca.fingerprint(), "hub listening");
                let serving = {
                    let (hub, sync) = (hub.clone(), sync.clone());
                    tokio::spawn(async move { hub.serve_sync(sync).await })
                };
                cloud_sync::serve(state, listener, shutdown).await?;
                sync.close();
                serving.abort();
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
