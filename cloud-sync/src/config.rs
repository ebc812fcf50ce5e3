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
    /// People and services allowed to call the case API, each by a bearer token.
    #[serde(default)]
    pub api_users: Vec<ApiUser>,
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

/// A caller of the case API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    /// The user id recorded on edits and in the audit log.
    pub user: String,
    /// The organisation whose cases the user may read and edit.
    pub org: String,
    /// SHA-256 of the user's bearer token, hex (`medvan-hub api-token` makes a pair).
    pub token_sha256: String,
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
        for u in &config.api_users {
            anyhow::ensure!(
                u.token_sha256.len() == 64 && u.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "[[api_users]] {}: token_sha256 must be 64 hex digits (the SHA-256 of the token, not the token)",
                u.user
            );
        }
        Ok(config)
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

# Callers of the case API (doctors' app, integrations), by bearer token.
# [[api_users]]
# user = "dr.ana@org-north"
# org = "org-north"
# token_sha256 = "<medvan-hub api-token prints a token and this line>"
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
        let err = Config::parse(
            "[hub]\ndata_dir = \"/x\"\n[[api_users]]\nuser = \"a\"\norg = \"o\"\ntoken_sha256 = \"secret\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}
