//! The agent's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use case_model::{OrgId, VanId};
use serde::Deserialize;

/// Everything the agent reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This van and where it keeps its data.
    pub agent: AgentConfig,
    /// The hub this van syncs with (used once sync lands).
    #[serde(default)]
    pub hub: Option<HubConfig>,
    /// The X-ray unit, if the van has one.
    #[serde(default)]
    pub xray: Option<XrayConfig>,
    /// Crew login: the PIN key and session timeouts.
    #[serde(default)]
    pub crew: crate::crew::CrewSettings,
    /// The GPS receiver, if the van has one.
    #[serde(default)]
    pub gps: Option<crate::gps::GpsConfig>,
    /// Video consults (the camera, the microphone and the hub's media server), if the van
    /// has them.
    #[serde(default)]
    pub calls: Option<crate::calls::CallConfig>,
}

/// The `[xray]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XrayConfig {
    /// The generator's serial port.
    pub serial_port: String,
    /// The flat panel: `usb` (the unit's own) or `simulated` (a hand phantom, for
    /// demonstrations and tests with `xray-sim` on the serial side).
    #[serde(default)]
    pub detector: DetectorKind,
    /// The simulated panel's size, columns by rows.
    #[serde(default = "default_sim_size")]
    pub simulated_size: [u16; 2],
}

/// Which flat panel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// The unit's panel on USB.
    #[default]
    Usb,
    /// A simulated panel.
    Simulated,
}

fn default_sim_size() -> [u16; 2] {
    [2500, 3000]
}

/// The `[agent]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This van's id (NEMSIS eResponse.13).
    pub van_id: VanId,
    /// The organisation the van belongs to.
    pub org_id: OrgId,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The store's key file (create one with `edge-agent gen-key`).
    pub key_file: PathBuf,
    /// Address of the local API for the touchscreen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest attachment accepted, in MiB.
    #[serde(default = "default_max_attachment_mib")]
    pub max_attachment_mib: u64,
}

/// The `[hub]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The hub's sync address, `host:port`.
    pub address: String,
    /// The name in the hub's certificate; defaults to the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Where enrolment keeps this van's identity: `ca.der`, `device.der`, `device.key`.
    pub identity_dir: PathBuf,
}

impl HubConfig {
    /// The name to expect in the hub's certificate.
    pub fn server_name(&self) -> String {
        match &self.server_name {
            Some(n) => n.clone(),
            None => self
                .address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_owned(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8710))
}

fn default_max_attachment_mib() -> u64 {
    256
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("Failed to read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("Config file {} is not valid", path.display()))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        if !config.agent.listen.ip().is_loopback() {
            // Until crew login lands, the API trusts the acting-user header, which is only
            // acceptable when nothing but the van's own screen can reach it.
            bail!(
                "agent.listen = {} is not a loopback address; the local API has no login yet, so it must listen on 127.0.0.1 or ::1",
                config.agent.listen
            );
        }
        if config.agent.max_attachment_mib == 0 || config.agent.max_attachment_mib > 1024 {
            bail!("agent.max_attachment_mib must be between 1 and 1024");
        }
        if let Some(x) = &config.xray
            && (x.simulated_size.contains(&0)
                || usize::from(x.simulated_size[0]) * usize::from(x.simulated_size[1])
                    > crate::xray::detector::MAX_PIXELS)
        {
            bail!("xray.simulated_size must be two numbers above 0, at most 4300 x 4300 pixels in all");
        }
        Ok(config)
    }
}

/// An example config, printed by `edge-agent example-config`.
pub const EXAMPLE: &str = r#"# Medvan edge agent configuration.
[agent]
van_id = "van-12"
org_id = "org-north"
data_dir = "/var/lib/medvan"
key_file = "/etc/medvan/store.key"
# The touchscreen API. Loopback only until crew login lands.
listen = "127.0.0.1:8710"
max_attachment_mib = 256

[hub]
address = "hub.example.org:4433"
# Filled by `edge-agent enrol --token ...`; readable by the agent only.
identity_dir = "/var/lib/medvan/identity"

# The X-ray unit: the generator's serial port and the flat panel ("usb" or "simulated").
[xray]
serial_port = "/dev/ttyXRAY0"
detector = "usb"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_bad_configs_say_why() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.agent.van_id.as_str(), "van-12");
        let err = Config::parse(&EXAMPLE.replace("127.0.0.1:8710", "0.0.0.0:8710")).unwrap_err();
        assert!(format!("{err:#}").contains("not a loopback address"), "{err:#}");
        let err = Config::parse(&EXAMPLE.replace("van_id", "vanid")).unwrap_err();
        assert!(format!("{err:#}").contains("vanid"), "{err:#}");
        assert_eq!(c.hub.as_ref().unwrap().server_name(), "hub.example.org");
        let err = Config::parse(&EXAMPLE.replace("\"van-12\"", "\"van 12\"")).unwrap_err();
        assert!(format!("{err:#}").contains("van id"), "{err:#}");
    }
}
