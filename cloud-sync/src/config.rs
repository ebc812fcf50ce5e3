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
}

/// The `[hub]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address of the hub's HTTP front door.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the hub keeps its embedded store (SQLite and files).
    pub data_dir: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8720))
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
        Ok(toml::from_str(text)?)
    }
}

/// An example config, printed by `medvan-hub example-config`.
pub const EXAMPLE: &str = r#"# Medvan hub configuration.
[hub]
listen = "127.0.0.1:8720"
data_dir = "/var/lib/medvan-hub"
"#;
