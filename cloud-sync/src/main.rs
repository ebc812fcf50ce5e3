//! `medvan-hub`: the cloud side of Medvan.

use std::path::PathBuf;

use anyhow::Context;
use case_model::{CaseId, OrgId, UserId};
use clap::{Parser, Subcommand};
use cloud_sync::identity::roles::Role;
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
    /// Accounts: the first administrator of an organisation, password links, disabling.
    #[command(subcommand)]
    User(UserCommand),
    /// Walk the audit log's hash chain and report the first bad entry, if any.
    VerifyAudit,
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
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
enum AuditCommand {
    /// Print the log as JSON lines: Elastic Common Schema documents (for Filebeat) or FHIR
    /// R4 AuditEvent resources (NDJSON). Each carries its entry's chain hashes. With --van,
    /// that van's log as the hub holds it (checked against the van's signed heads on arrival).
    Export {
        /// `ecs` or `fhir`.
        #[arg(long, default_value = "ecs")]
        format: String,
        /// Only entries after this position (the last one a previous export printed).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// A van's log as the hub holds it (`ORG/VAN`), instead of the hub's own.
        #[arg(long)]
        van: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account. Prints a single-use link token for its first password (valid 72
    /// hours; redeemed at POST /api/v1/auth/password/reset), unless --password-stdin.
    Add {
        /// The organisation.
        org: String,
        /// The user name (letters, digits, '.', '_', '-', ':', '@').
        username: String,
        /// A role: paramedic, doctor, dispatcher, billing_clerk, admin, fleet_manager, patient
        /// (repeat for several). Doctors and admins must enrol an authenticator app.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Their e-mail address, for password reset links.
        #[arg(long)]
        email: Option<String>,
        /// Read the first password from standard input instead of printing a link token.
        #[arg(long, conflicts_with = "sso")]
        password_stdin: bool,
        /// The user logs in through the organisation's identity provider ([[sso]]): no
        /// password; their first single sign-on binds the account to them.
        #[arg(long)]
        sso: bool,
    },
    /// Print a single-use password reset link token (valid 30 minutes).
    ResetLink {
        /// The organisation.
        org: String,
        /// The user name.
        username: String,
    },
    /// Disable an account and end its logins.
    Disable {
        /// The organisation.
        org: String,
        /// The user name.
        username: String,
    },
    /// List an organisation's accounts.
    List {
        /// The organisation.
        org: String,
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
    // This needs no config.
    if let Command::ExampleConfig = &cli.command {
        print!("{}", cloud_sync::config::EXAMPLE);
        return Ok(());
    }
    let config = cloud_sync::config::Config::load(&cli.config)?;
    match cli.command {
        Command::ExampleConfig => unreachable!("handled above"),
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
        Command::User(cmd) => user_command(&config, cmd),
        Command::Audit(AuditCommand::Export { format, after, van }) => {
            let fhir = match format.as_str() {
                "ecs" => false,
                "fhir" => true,
                other => anyhow::bail!("--format {other:?} is not known; use ecs or fhir"),
            };
            let hub = cloud_sync::fleet::Hub::open(&config)?;
            let van = van
                .map(|v| {
                    let (org, van) = v.split_once('/').context("--van takes ORG/VAN, for example org-north/van-12")?;
                    Ok::<_, anyhow::Error>(DeviceId::new(org, van)?)
                })
                .transpose()?;
            let source = van.as_ref().map_or("medvan-hub".to_owned(), |d| format!("edge-agent {}/{}", d.org, d.van));
            // Recorded before anything is shown.
            audit_admin(&hub, "audit.export", format!("log={source} format={format} after={after}"))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut next = after;
            loop {
                let page = match &van {
                    Some(d) => hub.storage.van_audit_entries(&d.org, &d.van, next, 1000)?,
                    None => hub.storage.audit_entries(next, 1000)?,
                };
                let Some(last) = page.last() else { break };
                next = last.seq;
                for e in &page {
                    let doc =
                        if fhir { audit::export::fhir_audit_event(e, &source) } else { audit::export::ecs(e, &source) };
                    std::io::Write::write_all(&mut out, format!("{doc}\n").as_bytes())?;
                }
            }
            std::io::Write::flush(&mut out)?;
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
                let state = cloud_sync::HubState::open(&config)?.with_hub(&hub);
                let listener = tokio::net::TcpListener::bind(config.hub.listen)
                    .await
                    .with_context(|| format!("Failed to listen on {}", config.hub.listen))?;
                let sync = hub.bind_sync(config.hub.sync_listen)?;
                tracing::info!(http = %listener.local_addr()?, sync = %sync.local_addr(), ca = %hub.ca.fingerprint(), "hub listening");
                let serving = {
                    let (hub, sync) = (hub.clone(), sync.clone());
                    tokio::spawn(async move { hub.serve_sync(sync).await })
                };
                // Signing keys rotate when due, and keys other hub processes made are picked up.
                let keys = {
                    let identity = hub.identity.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
                            let id = identity.clone();
                            match tokio::task::spawn_blocking(move || id.maintain_keys(now_s())).await {
                                Ok(Err(e)) => tracing::error!(error = %e, "could not maintain the signing keys"),
                                Err(e) => tracing::error!(error = %e, "signing key maintenance failed"),
                                Ok(Ok(())) => {}
                            }
                        }
                    })
                };
                cloud_sync::serve(state, listener, shutdown).await?;
                sync.close();
                serving.abort();
                keys.abort();
                tracing::info!("hub stopped cleanly");
                Ok(())
            })
        }
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn user_command(config: &cloud_sync::config::Config, cmd: UserCommand) -> anyhow::Result<()> {
    let hub = cloud_sync::fleet::Hub::open(config)?;
    let id = &hub.identity;
    let actor = admin();
    match cmd {
        UserCommand::Add { org, username, roles, email, password_stdin, sso } => {
            let roles = roles
                .iter()
                .map(|r| {
                    Role::parse(r).with_context(|| {
                        let all: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                        format!("{r:?} is not a role; use one of {}", all.join(", "))
                    })
                })
                .collect::<anyhow::Result<Vec<Role>>>()?;
            let (org, user) = (OrgId::parse(&org)?, UserId::parse(&username)?);
            if sso {
                id.add_sso_user(actor.as_str(), &org, &user, &roles, email, now_s())?;
                println!("created {user} in {org}; they log in through the organisation's identity provider");
                return Ok(());
            }
            let token = id.add_user(actor.as_str(), &org, &user, &roles, email, now_s())?;
            if password_stdin {
                let mut password = String::new();
                std::io::stdin().read_line(&mut password).context("Failed to read the password from stdin")?;
                id.redeem_reset(&token, password.trim_end_matches(['\r', '\n']), now_s())?;
                println!("created {user} in {org} with the password given");
            } else {
                println!("created {user} in {org}; first-password link token (valid 72 h, shown once):\n{token}");
            }
            if roles.iter().any(|r| r.needs_mfa()) {
                println!("{user} must enrol an authenticator app at first login.");
            }
            Ok(())
        }
        UserCommand::ResetLink { org, username } => {
            let token = id.reset_link(
                actor.as_str(),
                &OrgId::parse(&org)?,
                &UserId::parse(&username)?,
                now_s(),
                cloud_sync::identity::RESET_LINK_S,
            )?;
            println!("{token}");
            Ok(())
        }
        UserCommand::Disable { org, username } => {
            id.disable_user(actor.as_str(), &OrgId::parse(&org)?, &UserId::parse(&username)?, now_s())?;
            println!("disabled {username} in {org}; their logins are ended");
            Ok(())
        }
        UserCommand::List { org } => {
            for u in id.users(&OrgId::parse(&org)?)? {
                let roles: Vec<&str> = u.roles.iter().map(|r| r.name()).collect();
                println!(
                    "{}\t{}\t{}{}",
                    u.username,
                    roles.join(","),
                    if u.mfa_enrolled { "mfa" } else { "no-mfa" },
                    if u.disabled { "\tdisabled" } else { "" }
                );
            }
            Ok(())
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
