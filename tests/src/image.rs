//! The two images of the lab, made from Debian packages on this machine:
//! the node image (a booting Debian with dockerd, avahi, sshd) and the tiny
//! workload image that test services run inside the nodes' own dockerd.
//! Nothing is pulled from a registry.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::docker::{host, Docker};
use crate::error::{LabError, Result};

/// The recipe of the node image; its hash is the image tag, so editing it rebuilds.
const NODE_RECIPE: &str = include_str!("../image/node-rootfs.sh");
const NODE_REPO: &str = "swarm-glue-lab/node";
const LOCK_PATH: &str = "/var/lock/swarm-glue-lab-image.lock";

/// The image test services run, inside every node.
pub const WORKLOAD_IMAGE: &str = "lab-workload:1";
const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, Clone)]
pub struct NodeImage {
    pub tag: String,
    /// Set when this call had to build the image: how long the cold build took.
    pub built_in: Option<Duration>,
}

pub fn node_image_tag() -> String {
    let digest = Sha256::digest(NODE_RECIPE.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{NODE_REPO}:{hex}")
}

fn image_exists(docker: &Docker, tag: &str) -> bool {
    docker
        .run(&["image", "inspect", "--format", "{{.Id}}", tag])
        .is_ok()
}

/// Returns the node image for the current recipe, building it once if needed.
/// Concurrent labs wait for one another on a lock file instead of building twice.
pub fn ensure_node_image(docker: &Docker, force_rebuild: bool) -> Result<NodeImage> {
    let tag = node_image_tag();
    if !force_rebuild && image_exists(docker, &tag) {
        return Ok(NodeImage {
            tag,
            built_in: None,
        });
    }
    let lock =
        File::create(LOCK_PATH).map_err(|e| LabError::io(format!("creating {LOCK_PATH}"), e))?;
    lock.lock()
        .map_err(|e| LabError::io(format!("locking {LOCK_PATH}"), e))?;
    if !force_rebuild && image_exists(docker, &tag) {
        return Ok(NodeImage {
            tag,
            built_in: None,
        });
    }
    let started = Instant::now();
    build_node_image(docker, &tag)?;
    let built_in = started.elapsed();
    remove_old_node_images(docker, &tag);
    Ok(NodeImage {
        tag,
        built_in: Some(built_in),
    })
}

fn build_node_image(docker: &Docker, tag: &str) -> Result<()> {
    for tool in ["debootstrap", "chroot", "tar"] {
        if host(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            return Err(LabError::Host(format!(
                "`{tool}` is needed to build the node image; `make deps` installs it"
            )));
        }
    }
    // A build killed earlier (we hold the lock: none is running) left its
    // work directories behind, a few hundred MB each.
    let _ = host(&[
        "sh",
        "-c",
        "rm -rf --one-file-system /var/tmp/lab-image.* /var/tmp/lab-rootfs.*",
    ]);
    let work = TempDir::new("lab-image")?;
    let recipe = work.path().join("node-rootfs.sh");
    std::fs::write(&recipe, NODE_RECIPE)
        .map_err(|e| LabError::io(format!("writing {}", recipe.display()), e))?;
    let tarball = work.path().join("rootfs.tar");
    eprintln!("lab: building node image {tag} with debootstrap (about a minute, once)");
    let out = Command::new("bash")
        .arg(&recipe)
        .arg(&tarball)
        .output()
        .map_err(|source| LabError::Spawn {
            program: "bash".into(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(LabError::Command {
            command: format!("bash {} {}", recipe.display(), tarball.display()),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let tar = tarball.display().to_string();
    docker.run(&[
        "import",
        "--change",
        r#"CMD ["/sbin/init"]"#,
        "--change",
        "ENV container=docker",
        "--message",
        "swarm-glue lab node (tests/image/node-rootfs.sh)",
        &tar,
        tag,
    ])?;
    Ok(())
}

/// Older recipes' images only take disk space; ones still used by a lab stay.
fn remove_old_node_images(docker: &Docker, keep: &str) {
    let Ok(list) = docker.run(&["images", "--format", "{{.Repository}}:{{.Tag}}", NODE_REPO])
    else {
        return;
    };
    for tag in list.lines().filter(|t| *t != keep) {
        let _ = docker.run(&["rmi", tag]);
    }
}

/// A tarball holding only Debian's busybox-static: enough for `sleep` and `sh`.
pub fn workload_tarball() -> Result<Vec<u8>> {
    if !Path::new(BUSYBOX).exists() {
        return Err(LabError::Host(format!(
            "{BUSYBOX} is missing; `make deps` installs busybox-static"
        )));
    }
    let work = TempDir::new("lab-workload")?;
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin)
        .map_err(|e| LabError::io(format!("creating {}", bin.display()), e))?;
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .map_err(|e| LabError::io(format!("copying {BUSYBOX}"), e))?;
    for applet in ["sh", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| LabError::io(format!("linking {applet}"), e))?;
    }
    let root = work.path().display().to_string();
    let out = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            &root,
            "-cf",
            "-",
            "bin",
        ])
        .output()
        .map_err(|source| LabError::Spawn {
            program: "tar".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("tar -C {root} -cf - bin"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(out.stdout)
}

/// A directory under /var/tmp removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let path = host(&["mktemp", "-d", &format!("/var/tmp/{prefix}.XXXXXX")])?;
        Ok(TempDir(PathBuf::from(path)))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
