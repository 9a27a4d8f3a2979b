//! The system `ssh` binary, with each node's host key pinned under its node
//! ID on first contact (trust on first use) and a changed key refused.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A shell command line run as root on a node, `input` on its stdin; its
/// stdout. Real: [`Ssh`]; for tests, `ports::recording::RecordingRemote`.
#[async_trait]
pub trait Remote: Send + Sync {
    async fn run(
        &self,
        node: &str,
        addr: &str,
        what: &str,
        remote: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<String, SshError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    #[error("the SSH host key of {node} at {addr} is not the one pinned in {pinned}: refused (if the node was reinstalled on purpose, remove that file)")]
    HostKeyChanged {
        node: String,
        addr: String,
        pinned: String,
    },
    #[error("root at {addr} does not accept this manager's SSH key")]
    Denied { addr: String },
    #[error("cannot reach {addr} over SSH: {message}")]
    Unreachable { addr: String, message: String },
    #[error("on {addr}: {what} failed: {message}")]
    Failed {
        addr: String,
        what: String,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Ssh {
    pub binary: PathBuf,
    pub key: PathBuf,
    pub known_hosts_dir: PathBuf,
    pub port: u16,
    pub connect_timeout_s: u64,
}

#[async_trait]
impl Remote for Ssh {
    /// Runs `remote` (a shell command line) as root on the node, feeding
    /// `input` to its stdin; returns its stdout.
    async fn run(
        &self,
        node: &str,
        addr: &str,
        what: &str,
        remote: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<String, SshError> {
        self.run_ssh(node, addr, what, remote, input, timeout).await
    }
}

impl Ssh {
    pub fn pinned_file(&self, node: &str) -> PathBuf {
        self.known_hosts_dir.join(node)
    }

    fn command(&self, node: &str, addr: &str, remote: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.key)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            // Trust on first use: an unknown key is pinned, a changed one refused.
            .args(["-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.pinned_file(node).display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            // Pinned by node ID, so a node that moves keeps its key.
            .arg("-o")
            .arg(format!("HostKeyAlias={node}"))
            .arg("-o")
            .arg(format!("ConnectTimeout={}", self.connect_timeout_s))
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("root@{addr}"))
            .arg("--")
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run_ssh(
        &self,
        node: &str,
        addr: &str,
        what: &str,
        remote: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<String, SshError> {
        if let Err(e) = std::fs::create_dir_all(&self.known_hosts_dir) {
            return Err(SshError::Failed {
                addr: addr.into(),
                what: what.into(),
                message: format!("{}: {e}", self.known_hosts_dir.display()),
            });
        }
        let mut child = self
            .command(node, addr, remote)
            .spawn()
            .map_err(|e| SshError::Failed {
                addr: addr.into(),
                what: what.into(),
                message: format!("cannot run {}: {e}", self.binary.display()),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A remote side that exits early closes the pipe; its exit says why.
            let _ = stdin.write_all(input).await;
        }
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(SshError::Failed {
                    addr: addr.into(),
                    what: what.into(),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(SshError::Unreachable {
                    addr: addr.into(),
                    message: format!("{what} took longer than {}s", timeout.as_secs()),
                })
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(classify(
            node,
            addr,
            what,
            out.status.code(),
            &stderr,
            &self.pinned_file(node).display().to_string(),
        ))
    }
}

/// What an ssh failure means, from its exit code (255 is ssh's own) and message.
pub fn classify(
    node: &str,
    addr: &str,
    what: &str,
    code: Option<i32>,
    stderr: &str,
    pinned: &str,
) -> SshError {
    if code == Some(255) {
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed")
        {
            return SshError::HostKeyChanged {
                node: node.into(),
                addr: addr.into(),
                pinned: pinned.into(),
            };
        }
        if stderr.contains("Permission denied") {
            return SshError::Denied { addr: addr.into() };
        }
        return SshError::Unreachable {
            addr: addr.into(),
            message: last_line(stderr),
        };
    }
    SshError::Failed {
        addr: addr.into(),
        what: what.into(),
        message: format!(
            "exit {}: {}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "by signal".into()),
            last_line(stderr)
        ),
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_told_apart() {
        let changed = "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n...\nHost key verification failed.";
        assert!(matches!(
            classify("n1", "10.0.0.5", "probe", Some(255), changed, "/p"),
            SshError::HostKeyChanged { .. }
        ));
        assert!(matches!(
            classify(
                "n1",
                "10.0.0.5",
                "probe",
                Some(255),
                "root@10.0.0.5: Permission denied (publickey).",
                "/p"
            ),
            SshError::Denied { .. }
        ));
        let e = classify(
            "n1",
            "10.0.0.5",
            "probe",
            Some(255),
            "ssh: connect to host 10.0.0.5 port 22: Connection refused",
            "/p",
        );
        assert!(matches!(e, SshError::Unreachable { .. }), "{e:?}");
        let e = classify(
            "n1",
            "10.0.0.5",
            "install",
            Some(3),
            "systemctl: not found\n",
            "/p",
        );
        assert_eq!(
            e.to_string(),
            "on 10.0.0.5: install failed: exit 3: systemctl: not found"
        );
    }

    #[test]
    fn a_changed_host_key_message_names_the_node_and_the_pinned_file() {
        let e = classify(
            "abc",
            "10.0.0.5",
            "probe",
            Some(255),
            "Host key verification failed.",
            "/var/lib/swarm-glue/ssh/known_hosts/abc",
        );
        let msg = e.to_string();
        assert!(
            msg.contains("abc") && msg.contains("10.0.0.5") && msg.contains("known_hosts/abc"),
            "{msg}"
        );
    }
}
