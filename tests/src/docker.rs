//! The host's Docker, driven through its command-line client.
//!
//! The lab is test infrastructure that a person also drives by hand, so it
//! speaks the same `docker` commands a person would type; failures carry the
//! exact command and Docker's own message.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{LabError, Result};

#[derive(Debug, Clone)]
pub struct Docker {
    bin: PathBuf,
}

impl Default for Docker {
    fn default() -> Self {
        Self::new()
    }
}

impl Docker {
    /// Debian's client matches Debian's daemon; `LAB_DOCKER` overrides it.
    pub fn new() -> Self {
        let bin = std::env::var_os("LAB_DOCKER")
            .map(PathBuf::from)
            .or_else(|| {
                let debian = PathBuf::from("/usr/bin/docker");
                debian.exists().then_some(debian)
            })
            .unwrap_or_else(|| PathBuf::from("docker"));
        Docker { bin }
    }

    /// The client binary.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        self.run_with_input(args, None)
    }

    pub fn run_with_input<S: AsRef<str>>(
        &self,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<String> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            program: self.bin.display().to_string(),
            source,
        })?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(data).map_err(|e| {
                LabError::io(format!("writing stdin of `docker {}`", args.join(" ")), e)
            })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io(format!("waiting for `docker {}`", args.join(" ")), e))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("docker {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs a command inside a lab node.
    pub fn exec<S: AsRef<str>>(&self, container: &str, cmd: &[S]) -> Result<String> {
        let mut args = vec!["exec", container];
        args.extend(cmd.iter().map(AsRef::as_ref));
        self.run(&args)
    }

    /// Runs a shell script inside a lab node.
    pub fn sh(&self, container: &str, script: &str) -> Result<String> {
        self.run(&["exec", container, "sh", "-ec", script])
    }

    /// Runs a command inside a lab node, with `input` on its standard input.
    pub fn exec_with_input(&self, container: &str, cmd: &[&str], input: &[u8]) -> Result<String> {
        let mut args = vec!["exec", "-i", container];
        args.extend_from_slice(cmd);
        self.run_with_input(&args, Some(input))
    }

    /// The lab cannot work without root (iptables, network namespaces) and a daemon.
    pub fn check_host(&self) -> Result<()> {
        let uid = host(&["id", "-u"])?;
        if uid != "0" {
            return Err(LabError::Host(format!(
                "running as uid {uid}; run the lab and its tests as root (CI does)"
            )));
        }
        self.run(&["info", "--format", "{{.ServerVersion}}"])
            .map_err(|e| {
                LabError::Host(format!(
                    "no Docker daemon answers ({e}); `make deps` installs docker.io and starts dockerd"
                ))
            })
            .map(|_| ())
    }
}

/// Runs a program on the host (iptables, ip, tar) and returns its trimmed stdout.
pub fn host(args: &[&str]) -> Result<String> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty host command".into()))?;
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: (*program).to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
