//! swarm-glue on lab nodes: glue-manager installed on managers the way a
//! user would (binary, unit, config; issue 6 turns this into `apt install` of
//! the package), and what the manager and agents report.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};
use crate::lab::Lab;

/// The manager's unit, as shipped.
const MANAGER_UNIT: &str = include_str!("../../systemd/glue-manager.service");

/// The built programs the lab installs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub manager: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// `SWARM_GLUE_BIN_DIR`, else the release build of this workspace.
    pub fn locate() -> Result<Binaries> {
        let dir = match std::env::var_os("SWARM_GLUE_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
                target.join("release")
            }
        };
        let b = Binaries {
            manager: dir.join("glue-manager"),
            agent: dir.join("glue-node-agent"),
        };
        for p in [&b.manager, &b.agent] {
            if !p.is_file() {
                return Err(LabError::Invalid(format!(
                    "{} is missing: build it first with `cargo build --release -p glue-manager -p glue-node-agent` (make test does), or set SWARM_GLUE_BIN_DIR",
                    p.display()
                )));
            }
        }
        Ok(b)
    }
}

/// A manager configuration for the lab: the key job uses the workload image
/// every lab node has, and checks come quicker than the defaults.
pub fn lab_manager_config(extra: &str) -> String {
    format!(
        "key_job_image = \"{}\"\nagent_check_interval_s = 20\nretry_min_s = 2\nretry_max_s = 30\n{extra}",
        crate::image::WORKLOAD_IMAGE
    )
}

/// Installs glue-manager on `node` (not started): the binary, the agent
/// binaries it installs on other nodes, the unit and `config`.
pub fn install_manager(lab: &Lab, node: &str, bins: &Binaries, config: &str) -> Result<()> {
    let container = &lab.node(node)?.container;
    let docker = lab.docker();
    docker.exec(
        container,
        &[
            "mkdir",
            "-p",
            "/usr/lib/swarm-glue/agents/amd64",
            "/etc/swarm-glue",
        ],
    )?;
    docker.run(&[
        "cp",
        &bins.manager.display().to_string(),
        &format!("{container}:/usr/bin/glue-manager"),
    ])?;
    docker.run(&[
        "cp",
        &bins.agent.display().to_string(),
        &format!("{container}:/usr/lib/swarm-glue/agents/amd64/glue-node-agent"),
    ])?;
    docker.exec_with_input(
        container,
        &["sh", "-c", "cat > /etc/systemd/system/glue-manager.service"],
        MANAGER_UNIT.as_bytes(),
    )?;
    docker.exec_with_input(
        container,
        &["sh", "-c", "cat > /etc/swarm-glue/manager.toml"],
        config.as_bytes(),
    )?;
    docker.exec(container, &["systemctl", "daemon-reload"])?;
    Ok(())
}

/// Enables and (re)starts glue-manager: a running one picks up a new binary.
pub fn start_manager(lab: &Lab, node: &str) -> Result<()> {
    lab.exec(
        node,
        &["systemctl", "enable", "--quiet", "glue-manager.service"],
    )?;
    lab.exec(node, &["systemctl", "restart", "glue-manager.service"])
        .map(|_| ())
}

/// The manager's report (`glue-manager status --json`); `None` before its first.
pub fn manager_report(lab: &Lab, node: &str) -> Result<Option<serde_json::Value>> {
    let out = lab.exec(node, &["glue-manager", "status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
        LabError::Invalid(format!("{node}: glue-manager status --json: {e}: {out}"))
    })?;
    Ok(if v.is_null() { None } else { Some(v) })
}

/// What `glue-node-agent status` on `node` says, and the manager keys its
/// trust directory holds (file contents).
pub fn agent_trust(lab: &Lab, node: &str) -> Result<Vec<String>> {
    let out = lab.sh(
        node,
        "cat /etc/swarm-glue/trusted-managers/*.pub 2>/dev/null | awk '{print $2}' | sort",
    )?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

/// The public signing key of the glue-manager on `node` (base64), from its report.
pub fn manager_signing_key(lab: &Lab, node: &str) -> Result<String> {
    manager_report(lab, node)?
        .and_then(|r| r["signing_key"].as_str().map(str::to_string))
        .ok_or_else(|| LabError::Invalid(format!("{node}: glue-manager has not reported yet")))
}
