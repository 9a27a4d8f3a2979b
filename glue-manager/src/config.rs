//! /etc/swarm-glue/manager.toml. Every option has a default; the manager runs
//! without the file. `glue-manager --help` lists the options too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/swarm-glue/manager.toml";
/// The configuration file when `--config` is not given (the image sets it).
pub const CONFIG_ENV: &str = "SWARM_GLUE_CONFIG";
/// The default of `state_dir`.
pub const STATE_DIR_ENV: &str = "SWARM_GLUE_STATE_DIR";

/// The options, as shown by `--help`.
pub const OPTIONS_HELP: &str = "\
Options of the configuration file (TOML; every one has a default):
  state_dir = \"/var/lib/swarm-glue\"      keys, memory of the swarm, status
  docker_socket = \"/var/run/docker.sock\"
  agent_port = 7950                       where agents listen on every node
  agent_dir = \"/usr/lib/swarm-glue/agents\" holds <arch>/glue-node-agent (amd64, arm64, armhf)
  key_job_image = \"swarm-glue:<version>\"  image of the job that adds the SSH key on a node
                                          (needs /bin/sh; must be present on every node)
  ssh = \"ssh\"                             the OpenSSH client
  ssh_port = 22
  ssh_connect_timeout_s = 5
  tick_interval_s = 60                    safety-net reconcile when no event arrives
  agent_check_interval_s = 300            how often a confirmed agent is asked again
  retry_min_s = 5                         first retry after a node failed ...
  retry_max_s = 300                       ... doubling up to this
  lock_lease_s = 120                      a swarm lock not renewed expires after this
  key_job_timeout_s = 120                 a key job not done by then is removed
";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: PathBuf,
    pub docker_socket: PathBuf,
    pub agent_port: u16,
    pub agent_dir: PathBuf,
    pub key_job_image: String,
    pub ssh: PathBuf,
    pub ssh_port: u16,
    pub ssh_connect_timeout_s: u64,
    pub tick_interval_s: u64,
    pub agent_check_interval_s: u64,
    pub retry_min_s: u64,
    pub retry_max_s: u64,
    pub lock_lease_s: u64,
    pub key_job_timeout_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // The container image sets SWARM_GLUE_STATE_DIR=/mnt/data.
            state_dir: std::env::var_os(STATE_DIR_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/swarm-glue")),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            agent_port: glue_protocol::DEFAULT_AGENT_PORT,
            agent_dir: PathBuf::from("/usr/lib/swarm-glue/agents"),
            key_job_image: format!("swarm-glue:{}", env!("CARGO_PKG_VERSION")),
            ssh: PathBuf::from("ssh"),
            ssh_port: 22,
            ssh_connect_timeout_s: 5,
            tick_interval_s: 60,
            agent_check_interval_s: 300,
            retry_min_s: 5,
            retry_max_s: 300,
            lock_lease_s: 120,
            key_job_timeout_s: 120,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] glue_protocol::config::ConfigError),
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: InvalidSetting,
    },
}

/// A setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSetting {
    #[error("retry_min_s ({min}) must be at least 1 and at most retry_max_s ({max})")]
    RetryRange { min: u64, max: u64 },
    #[error("tick_interval_s must be at least 1 and lock_lease_s at least 10")]
    TickOrLease,
}

impl Config {
    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let cfg: Config = glue_protocol::config::load(path, explicit)?;
        cfg.check().map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        if self.retry_min_s == 0 || self.retry_max_s < self.retry_min_s {
            return Err(InvalidSetting::RetryRange {
                min: self.retry_min_s,
                max: self.retry_max_s,
            });
        }
        if self.tick_interval_s == 0 || self.lock_lease_s < 10 {
            return Err(InvalidSetting::TickOrLease);
        }
        Ok(())
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.state_dir.join("signing.key")
    }
    pub fn ssh_key_path(&self) -> PathBuf {
        self.state_dir.join("ssh").join("id_ed25519")
    }
    pub fn known_hosts_dir(&self) -> PathBuf {
        self.state_dir.join("ssh").join("known_hosts")
    }
    pub fn memory_path(&self) -> PathBuf {
        self.state_dir.join("memory.json")
    }
    pub fn status_path(&self) -> PathBuf {
        self.state_dir.join("status.json")
    }
    pub fn recovery_path(&self) -> PathBuf {
        self.state_dir.join("recovery.json")
    }
    pub fn seq_path(&self) -> PathBuf {
        self.state_dir.join("seq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_every_default() {
        let c: Config = toml::from_str("").expect("empty config");
        assert_eq!(c, Config::default());
        assert!(c.check().is_ok());
    }

    #[test]
    fn every_option_is_in_the_help_text() {
        let all = toml::to_string(&Config::default()).expect("toml");
        for line in all.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            assert!(
                OPTIONS_HELP.contains(&format!("  {key} = ")),
                "option {key} is missing from --help"
            );
        }
    }

    /// The packaged /etc/swarm-glue/manager.toml documents every option, each
    /// commented out at its default.
    #[test]
    fn the_packaged_file_shows_every_option_at_its_default() {
        let shipped = include_str!("../../packaging/manager.toml");
        let parsed: Config = toml::from_str(shipped).expect("the shipped file parses");
        assert_eq!(parsed, Config::default(), "every line is commented out");
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let all: Config = toml::from_str(&uncommented).expect("uncommented options parse");
        assert_eq!(all, Config::default(), "the values shown are the defaults");
        for line in toml::to_string(&Config::default()).expect("toml").lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            assert!(
                shipped.contains(&format!("\n#{key} = ")),
                "option {key} is missing from packaging/manager.toml"
            );
        }
    }

    #[test]
    fn an_unknown_option_is_an_error_that_names_it() {
        let err = toml::from_str::<Config>("agent_prot = 1").expect_err("unknown key");
        assert!(err.to_string().contains("agent_prot"), "{err}");
    }

    #[test]
    fn nonsense_retry_bounds_are_refused() {
        let c = Config {
            retry_min_s: 10,
            retry_max_s: 5,
            ..Config::default()
        };
        assert!(matches!(c.check(), Err(InvalidSetting::RetryRange { .. })));
    }
}
