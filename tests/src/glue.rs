//! swarm-glue on lab nodes, installed the way users install it: on managers
//! the Debian package with `apt install ./swarm-glue_….deb` (default), or the
//! container image started with the documented `docker run` line; workers get
//! only what a manager installs over SSH. Also what managers and agents report.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};
use crate::lab::Lab;

/// How the lab puts glue-manager on its managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// `apt install ./swarm-glue_<version>_amd64.deb`, run by systemd.
    Deb,
    /// The image, loaded into the node's dockerd and started with the
    /// original tool's `docker run` line.
    Container,
}

impl Install {
    /// `LAB_GLUE_INSTALL=container` picks the image; the package otherwise.
    pub fn from_env() -> Install {
        match std::env::var("LAB_GLUE_INSTALL").as_deref() {
            Ok("container") => Install::Container,
            _ => Install::Deb,
        }
    }
}

/// The container's name on a manager.
pub const CONTAINER: &str = "swarm-glue";

/// The documented way to run the image on a manager (README), unchanged.
pub fn docker_run_line(image: &str) -> String {
    format!(
        "docker run -d --name {CONTAINER} -v /var/run/docker.sock:/var/run/docker.sock -v /var/run/dbus:/var/run/dbus -v /run/avahi-daemon:/run/avahi-daemon -v /var/run/systemd:/var/run/systemd --hostname \"$(hostname -s)\" -v swarm-glue:/mnt/data --network host --restart unless-stopped {image}"
    )
}

/// What `make packages` and `make image` built.
#[derive(Debug, Clone)]
pub struct Artefacts {
    /// The amd64 package.
    pub deb: PathBuf,
    /// The image tag on this machine's dockerd.
    pub image: String,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The image `make image` tags.
pub fn image_tag() -> String {
    format!("swarm-glue:{VERSION}")
}

/// A shell test, true on a node where glue-manager is the package (else it
/// runs as the container).
const PACKAGED: &str = "[ -x /usr/bin/glue-manager ]";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

impl Artefacts {
    /// `SWARM_GLUE_DEB`, else `<target>/debian/swarm-glue_<version>_amd64.deb`;
    /// the image `swarm-glue:<version>`.
    pub fn locate() -> Result<Artefacts> {
        let deb = match std::env::var_os("SWARM_GLUE_DEB") {
            Some(d) => existing(PathBuf::from(d))?,
            None => Self::deb_of_version(VERSION)?,
        };
        Ok(Artefacts {
            deb,
            image: image_tag(),
        })
    }

    /// The amd64 package of `version` that `make packages` built (the upgrade
    /// test's newer one too).
    pub fn deb_of_version(version: &str) -> Result<PathBuf> {
        existing(
            target_dir()
                .join("debian")
                .join(format!("swarm-glue_{version}_amd64.deb")),
        )
    }
}

fn existing(deb: PathBuf) -> Result<PathBuf> {
    if deb.is_file() {
        Ok(deb)
    } else {
        Err(LabError::Invalid(format!(
            "{} is missing: `make packages` builds it (make test does); SWARM_GLUE_DEB may name the amd64 package instead",
            deb.display()
        )))
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

/// Copies a file of this machine into a lab node.
fn copy_in(lab: &Lab, node: &str, from: &Path, to: &str) -> Result<()> {
    let container = &lab.node(node)?.container;
    lab.docker()
        .run(&[
            "cp",
            &from.display().to_string(),
            &format!("{container}:{to}"),
        ])
        .map(|_| ())
}

/// Installs the package on `node` with apt, as an admin would, from the file
/// (the lab has no mirror: every dependency is already in the node image).
/// With `start` false, a policy-rc.d keeps the services from starting (the
/// Debian way to install without starting); they are enabled either way.
pub fn apt_install(lab: &Lab, node: &str, deb: &Path, start: bool) -> Result<String> {
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "swarm-glue.deb".into());
    let inside = format!("/var/tmp/{name}");
    copy_in(lab, node, deb, &inside)?;
    let policy = if start {
        ""
    } else {
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; "
    };
    lab.sh(
        node,
        &format!(
            "{policy}DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {inside}; rm -f {inside}"
        ),
    )
}

/// Installs glue-manager on `node`, not started: `config` goes to where that
/// install reads it (/etc/swarm-glue/manager.toml, kept by dpkg as the
/// admin's; or manager.toml in the image's data volume).
pub fn install_manager(
    lab: &Lab,
    node: &str,
    art: &Artefacts,
    how: Install,
    config: &str,
) -> Result<()> {
    let container = lab.node(node)?.container.clone();
    let docker = lab.docker();
    match how {
        Install::Deb => {
            docker.exec(&container, &["mkdir", "-p", "/etc/swarm-glue"])?;
            docker.exec_with_input(
                &container,
                &["sh", "-c", "cat > /etc/swarm-glue/manager.toml"],
                config.as_bytes(),
            )?;
            apt_install(lab, node, &art.deb, false)?;
        }
        Install::Container => {
            let bin = docker.bin().display().to_string();
            crate::docker::host(&[
                "bash",
                "-c",
                &format!(
                    "set -o pipefail; {bin} save {} | {bin} exec -i {container} docker load -q",
                    art.image
                ),
            ])
            .map_err(|e| {
                LabError::Invalid(format!(
                    "loading {} into {node}: {e} (`make image` builds it)",
                    art.image
                ))
            })?;
            lab.sh(node, "docker volume create swarm-glue >/dev/null")?;
            docker.exec_with_input(
                &container,
                &[
                    "sh",
                    "-c",
                    "cat > /var/lib/docker/volumes/swarm-glue/_data/manager.toml",
                ],
                config.as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// Whether `node` runs glue-manager as the container (else the package).
fn in_container(lab: &Lab, node: &str) -> Result<bool> {
    Ok(lab
        .sh(
            node,
            &format!("if {PACKAGED}; then echo deb; else echo container; fi"),
        )?
        .trim()
        == "container")
}

/// Enables and (re)starts glue-manager: the unit, or the container with the
/// documented `docker run` line (restarted if it exists).
pub fn start_manager(lab: &Lab, node: &str) -> Result<()> {
    if in_container(lab, node)? {
        let image = image_tag();
        return lab
            .sh(
                node,
                &format!(
                    "if docker container inspect {CONTAINER} >/dev/null 2>&1; then docker restart {CONTAINER}; else {}; fi >/dev/null",
                    docker_run_line(&image)
                ),
            )
            .map(|_| ());
    }
    lab.exec(
        node,
        &["systemctl", "enable", "--quiet", "glue-manager.service"],
    )?;
    lab.exec(node, &["systemctl", "restart", "glue-manager.service"])
        .map(|_| ())
}

/// glue-manager's log on `node`: its unit's journal, or (container) what it
/// wrote to the host's journal through the mounted /run/systemd.
pub fn manager_journal(lab: &Lab, node: &str) -> String {
    lab.sh(
        node,
        &format!("if {PACKAGED}; then journalctl -u glue-manager -o cat --no-pager; else journalctl -t glue-manager -o cat --no-pager; fi"),
    )
    .unwrap_or_default()
}

/// The manager's report (`glue-manager status --json`); `None` before its first.
pub fn manager_report(lab: &Lab, node: &str) -> Result<Option<serde_json::Value>> {
    // The image's report is read from its volume: while the node's dockerd
    // restarts (re-addressing), `docker exec` cannot reach the container.
    let out = lab.sh(
        node,
        &format!(
            "if {PACKAGED}; then glue-manager status --json; \
             else f=/var/lib/docker/volumes/swarm-glue/_data/status.json; \
             if [ -f $f ]; then cat $f; else echo null; fi; fi"
        ),
    )?;
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
