//! The hub's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Everything the hub reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[hub]` table.
    pub hub: HubConfig,
    /// The `[storage]` table.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The `[identity]` table: tokens and sessions.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The `[front_door]` table: rate limits.
    #[serde(default)]
    pub front_door: crate::front_door::Limits,
    /// The `[[sso]]` tables: organisations' identity providers for single sign-on.
    #[serde(default)]
    pub sso: Vec<crate::identity::sso::SsoConfig>,
    /// The `[mail]` table: the relay the hub's mail (password reset links) goes through.
    #[serde(default)]
    pub mail: Option<crate::mail::MailConfig>,
    /// The `[consults]` table: consult routing.
    #[serde(default)]
    pub consults: crate::consults::ConsultConfig,
    /// The `[calls]` table: the media server for live calls (none without it).
    #[serde(default)]
    pub calls: Option<crate::calls::CallConfig>,
}

/// The `[identity]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The `iss` of access tokens; defaults to `hub.public_url`, else `medvan-hub`.
    pub issuer: Option<String>,
    /// The `aud` of access tokens.
    pub audience: String,
    /// How long an access token works, seconds.
    pub access_token_s: i64,
    /// A session unused this long ends, seconds.
    pub idle_timeout_s: i64,
    /// A session ends this long after its login, seconds.
    pub absolute_timeout_s: i64,
    /// The token signing key is replaced when this old, seconds.
    pub key_rotation_s: i64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        let d = crate::identity::Settings::default();
        IdentityConfig {
            issuer: None,
            audience: d.audience,
            access_token_s: d.access_lifetime_s,
            idle_timeout_s: d.idle_timeout_s,
            absolute_timeout_s: d.absolute_timeout_s,
            key_rotation_s: d.key_rotation_s,
        }
    }
}

/// The `[hub]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address of the hub's HTTP front door.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the vans' sync endpoint (QUIC, UDP).
    #[serde(default = "default_sync_listen")]
    pub sync_listen: SocketAddr,
    /// The DNS name vans dial; it goes into the hub's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Where the hub keeps its embedded store (SQLite and files).
    pub data_dir: PathBuf,
    /// The built doctor app (`cloud-sync/web/dist`, made by `npm run build` there); served
    /// at `/` when set.
    #[serde(default)]
    pub web_dir: Option<PathBuf>,
    /// The hub's address as its users reach it (`https://hub.example.org`), for the links it
    /// hands out (DICOMweb retrieve and bulk data URLs). Without it, links are built from
    /// each request's Host header.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The hub's key file (64 hex digits, mode 600): seals patient data and the CA key.
    pub key_file: Option<PathBuf>,
    /// How long device certificates last; vans renew them when a third is left.
    #[serde(default = "default_certificate_days")]
    pub certificate_days: u32,
}

/// Where the hub's data lives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite and local files under `data_dir` (the embedded default).
    #[default]
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The `[storage]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub backend: Backend,
    /// For `postgres`: a libpq connection string or URL.
    pub postgres_url: Option<String>,
    /// For `postgres`: the schema holding the hub's tables.
    pub postgres_schema: Option<String>,
    /// For `postgres`: connections to open.
    pub postgres_connections: Option<usize>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8720))
}

fn default_sync_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8721))
}

fn default_server_name() -> String {
    "hub.medvan.local".into()
}

fn default_certificate_days() -> u32 {
    90
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("Failed to read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("Config file {} is not valid", path.display()))
    }

    /// Parses config text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        if config.storage.backend == Backend::Postgres {
            anyhow::ensure!(
                config.storage.postgres_url.is_some(),
                "[storage] backend = \"postgres\" needs postgres_url (for example \"host=127.0.0.1 user=medvan dbname=medvan\")"
            );
        }
        anyhow::ensure!(config.hub.certificate_days >= 3, "[hub] certificate_days must be at least 3");
        let i = &config.identity;
        anyhow::ensure!(
            (30..=3600).contains(&i.access_token_s),
            "[identity] access_token_s must be between 30 and 3600 (short-lived tokens; refresh tokens renew them)"
        );
        anyhow::ensure!(
            60 <= i.idle_timeout_s && i.idle_timeout_s <= i.absolute_timeout_s,
            "[identity] idle_timeout_s must be at least 60 and at most absolute_timeout_s"
        );
        anyhow::ensure!(
            i.key_rotation_s >= 2 * i.access_token_s,
            "[identity] key_rotation_s must be at least twice access_token_s"
        );
        let f = &config.front_door;
        anyhow::ensure!(
            f.per_address_per_s > 0.0 && f.per_user_per_s > 0.0 && f.logins_per_address_per_min > 0.0,
            "[front_door] rates must be above 0"
        );
        Ok(config)
    }

    /// How tokens and sessions are made.
    pub fn identity_settings(&self) -> crate::identity::Settings {
        let i = &self.identity;
        crate::identity::Settings {
            issuer: i
                .issuer
                .clone()
                .or_else(|| self.hub.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()))
                .unwrap_or_else(|| "medvan-hub".into()),
            audience: i.audience.clone(),
            access_lifetime_s: i.access_token_s,
            idle_timeout_s: i.idle_timeout_s,
            absolute_timeout_s: i.absolute_timeout_s,
            key_rotation_s: i.key_rotation_s,
        }
    }

    /// The key file: configured, or `hub.key` in the data directory.
    pub fn key_file(&self) -> PathBuf {
        self.hub.key_file.clone().unwrap_or_else(|| self.hub.data_dir.join("hub.key"))
    }
}

/// An example config, printed by `medvan-hub example-config`.
pub const EXAMPLE: &str = r#"# Medvan hub configuration.
[hub]
# The HTTP front door (health, OpenAPI, the case API).
listen = "127.0.0.1:8720"
# The vans' sync endpoint: QUIC over UDP, mutual TLS with the fleet CA.
sync_listen = "0.0.0.0:8721"
# The name vans dial; it goes into the hub's certificate.
server_name = "hub.medvan.example"
data_dir = "/var/lib/medvan-hub"
# Seals patient data and the fleet CA key; created by `medvan-hub init`. Keep it mode 600.
key_file = "/etc/medvan/hub.key"
# Device certificates last this long; vans renew them when a third is left.
certificate_days = 90

[storage]
# "sqlite" (SQLite and files under data_dir) or "postgres".
backend = "sqlite"
# postgres_url = "host=127.0.0.1 user=medvan dbname=medvan"
# postgres_schema = "medvan"
# postgres_connections = 8

[identity]
# Access tokens (JWTs, EdDSA) live this long; refresh tokens renew them.
access_token_s = 300
# A login unused for this long ends; every login ends after absolute_timeout_s.
idle_timeout_s = 900
absolute_timeout_s = 43200
# issuer = "https://hub.medvan.example"   (default: hub.public_url)

[front_door]
# Requests a second (average, and at once) per client address and per user; 429 beyond.
per_address_per_s = 50.0
per_address_burst = 200
per_user_per_s = 20.0
per_user_burst = 100
# Login, refresh, enrolment and reset attempts a minute per address.
logins_per_address_per_min = 20.0
# Behind a reverse proxy that sets X-Forwarded-For:
# trust_forwarded_for = true

# Single sign-on: an organisation's users log in through its OpenID provider (authorization
# code flow with PKCE). Register the hub there as a client with the redirect URI
# <hub.public_url>/api/v1/auth/sso/<org>/callback. The provider's claim `username_claim`
# names the hub user; an account added for SSO (`user add --sso`) is bound to the person at
# the provider by its first login, any other account by an administrator.
# [[sso]]
# org = "org-north"
# name = "St Mary's Hospital"
# issuer = "https://login.stmary.example"
# client_id = "medvan-hub"
# client_secret_file = "/etc/medvan/sso-org-north.secret"
# username_claim = "preferred_username"
# scopes = ["profile"]
# ca_file = "/etc/medvan/stmary-ca.pem"   (default: the system's CAs)

# Mail: password reset links go to the address on the account through this relay.
# [mail]
# relay = "smtp.hospital.example:587"
# tls = "starttls"            # or "implicit" (port 465); "none" only for a relay on this machine
# from = "Medvan <noreply@hospital.example>"
# username = "medvan-hub"
# password_file = "/etc/medvan/smtp.secret"
# ca_file = "/etc/medvan/relay-ca.pem"   (default: the system's CAs)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_postgres_needs_a_url() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.storage.backend, Backend::Sqlite);
        let err = Config::parse("[hub]\ndata_dir = \"/x\"\n[storage]\nbackend = \"postgres\"\n").unwrap_err();
        assert!(err.to_string().contains("postgres_url"), "{err}");
        let err = Config::parse("[hub]\ndata_dir = \"/x\"\n[identity]\naccess_token_s = 86400\n").unwrap_err();
        assert!(err.to_string().contains("access_token_s"), "{err}");
    }
}
