//! /etc/swarm-glue/agent.toml. Every option has a default; the agent runs
//! without the file (it then refuses commands until it is enrolled).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::rules::Ports;

pub const DEFAULT_PATH: &str = "/etc/swarm-glue/agent.toml";
pub use glue_protocol::DEFAULT_AGENT_PORT as DEFAULT_PORT;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's swarm node ID (written by the installing manager).
    pub node_id: String,
    /// The swarm's cluster ID (written by the installing manager).
    pub cluster_id: String,
    /// Where the agent listens; all addresses, since managers reach it at new ones.
    pub listen: SocketAddr,
    /// Keys and persisted state.
    pub state_dir: PathBuf,
    /// One `*.pub` file per trusted manager key.
    pub trust_dir: PathBuf,
    /// How often the rules are checked and repaired if something flushed them.
    pub reassert_interval_s: u64,
    /// The swarm's ports that rewrites apply to.
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// The Docker socket, read (`GET /info`) for the addresses dockerd holds.
    pub docker_socket: PathBuf,
    /// Where dockerd keeps its network namespaces (under its exec root): the
    /// overlay tunnels the agent opens to moved peers.
    pub docker_netns_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        let ports = Ports::default();
        Config {
            node_id: String::new(),
            cluster_id: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            state_dir: PathBuf::from("/var/lib/swarm-glue-agent"),
            trust_dir: PathBuf::from("/etc/swarm-glue/trusted-managers"),
            reassert_interval_s: 10,
            tcp_ports: ports.tcp,
            udp_ports: ports.udp,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            docker_netns_dir: PathBuf::from("/var/run/docker/netns"),
        }
    }
}

pub use glue_protocol::config::ConfigError;

impl Config {
    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        glue_protocol::config::load(path, explicit)
    }

    pub fn ports(&self) -> Ports {
        Ports {
            tcp: self.tcp_ports.clone(),
            udp: self.udp_ports.clone(),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("agent.key")
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.state_dir.join("agent.pub")
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_every_default() {
        let c: Config = toml::from_str("").expect("empty config");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.port(), DEFAULT_PORT);
    }

    #[test]
    fn an_unknown_option_is_an_error_that_names_it() {
        let err = toml::from_str::<Config>("listen_port = 1").expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");
    }
}
