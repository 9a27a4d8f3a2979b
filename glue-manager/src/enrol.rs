//! Enrolling one node: SSH with this manager's key (through a key job if
//! needed), the agent installed and configured, then confirmed by a signed
//! status reply. Every step checks the node first, so running it again, or
//! after a crash half-way, ends in the same state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use glue_protocol::clock::unix_now;
use glue_protocol::{CommandBody, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

use crate::agent_client::{self, AgentError, Issuer};
use crate::docker::{short, DockerApi, JobState, KeyJob};
use crate::install::{self, Probe, Wanted};
use crate::keys::Sequence;
use crate::memory::{ManagerKeys, PinnedAgent};
use crate::ssh::{Remote, SshError};

/// Where enrolling a node stands, as status shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    #[default]
    Pending,
    Working,
    KeyJob,
    Confirmed,
    HostKeyChanged,
    Unreachable,
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Working => "installing",
            NodeState::KeyJob => "adding SSH key",
            NodeState::Confirmed => "agent confirmed",
            NodeState::HostKeyChanged => "HOST KEY CHANGED",
            NodeState::Unreachable => "unreachable",
            NodeState::Failed => "failed",
        }
    }
}

/// What every enrolment shares.
pub struct Hands {
    pub manager_id: String,
    pub signing: SigningKey,
    pub seq: Arc<Sequence>,
    pub ssh: Arc<dyn Remote>,
    pub docker: DockerApi,
    pub agent_port: u16,
    pub agent_dir: PathBuf,
    pub key_job_image: String,
    pub key_job_timeout: Duration,
    pub lock_lease: Duration,
}

#[derive(Debug, Clone)]
pub struct Enrolment {
    pub node_id: String,
    pub hostname: String,
    pub addr: IpAddr,
    pub cluster_id: String,
    pub registry: BTreeMap<String, ManagerKeys>,
    pub pinned: Option<PinnedAgent>,
    /// Only ask the pinned agent; enrol in full if that is not enough.
    pub quick: bool,
}

#[derive(Debug, Clone)]
pub struct Confirmed {
    pub agent: PinnedAgent,
    pub trusted_keys: usize,
    /// What had to change, for the log (empty when nothing did).
    pub changed: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub state: NodeState,
    pub message: String,
    /// Retry no sooner than the longest backoff (a human must act first).
    pub needs_human: bool,
    /// Another manager is doing this step: not a failure of this node.
    pub waiting: bool,
    pub ssh_ok: bool,
}

impl Failure {
    fn new(state: NodeState, message: impl Into<String>) -> Failure {
        Failure {
            state,
            message: message.into(),
            needs_human: false,
            waiting: false,
            ssh_ok: false,
        }
    }
}

fn ssh_failure(e: SshError) -> Failure {
    match e {
        SshError::HostKeyChanged { .. } => Failure {
            needs_human: true,
            ..Failure::new(NodeState::HostKeyChanged, e.to_string())
        },
        SshError::Unreachable { .. } => Failure::new(NodeState::Unreachable, e.to_string()),
        _ => Failure::new(NodeState::Failed, e.to_string()),
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn enrol(hands: Arc<Hands>, enrolment: Enrolment) -> Result<Confirmed, Failure> {
    if enrolment.quick {
        if let Some(pinned) = &enrolment.pinned {
            if let Ok(done) = confirm(&hands, &enrolment, pinned.clone()).await {
                if done.trusted_keys >= enrolment.registry.len() {
                    return Ok(done);
                }
            }
        }
    }
    let mut changed = Vec::new();
    let probe = match probe(&hands, &enrolment).await {
        Ok(p) => p,
        Err(SshError::Denied { .. }) => {
            add_ssh_key(&hands, &enrolment).await?;
            changed.push("SSH key added by a swarm job".to_string());
            probe(&hands, &enrolment).await.map_err(ssh_failure)?
        }
        Err(e) => return Err(ssh_failure(e)),
    };
    let with_ssh = |mut f: Failure| {
        f.ssh_ok = true;
        f
    };
    let binary = install::debian_arch(&probe.arch)
        .and_then(|arch| std::fs::read(hands.agent_dir.join(arch).join("glue-node-agent")).ok());
    let expected = Wanted {
        node_id: enrolment.node_id.clone(),
        cluster_id: enrolment.cluster_id.clone(),
        binary,
        managers: enrolment
            .registry
            .iter()
            .map(|(id, k)| (id.clone(), k.signing_key))
            .collect(),
    };
    let plan = install::plan(&probe, &expected).map_err(|e| {
        with_ssh(Failure {
            needs_human: true,
            ..Failure::new(
                NodeState::Failed,
                format!(
                    "{}: {e} (looked in {})",
                    enrolment.hostname,
                    hands.agent_dir.display()
                ),
            )
        })
    })?;
    let mut agent_key = probe.agent_key;
    if !plan.is_empty() {
        agent_key = install_agent(&hands, &enrolment, &plan, expected.binary.as_deref())
            .await
            .map_err(with_ssh)?;
        changed.push(plan.summary());
    }
    let Some(key) = agent_key else {
        return Err(with_ssh(Failure::new(
            NodeState::Failed,
            format!(
                "{}: the agent is running but has no {}",
                enrolment.hostname,
                install::AGENT_PUB
            ),
        )));
    };
    let pinned = PinnedAgent {
        endpoint: SocketAddr::new(enrolment.addr, hands.agent_port),
        key,
        version: install::agent_version(),
    };
    let mut done = confirm(&hands, &enrolment, pinned).await.map_err(|e| {
        with_ssh(Failure::new(
            NodeState::Failed,
            format!("{}: {e}", enrolment.hostname),
        ))
    })?;
    done.changed = changed;
    Ok(done)
}

/// Carries out an install plan on the node over SSH (the binary uploaded
/// first if it must be); the agent key the node then reports.
async fn install_agent(
    hands: &Hands,
    enrolment: &Enrolment,
    plan: &install::InstallPlan,
    binary: Option<&[u8]>,
) -> Result<Option<PublicKey>, Failure> {
    let addr = enrolment.addr.to_string();
    if plan.copy_binary {
        let up = install::upload_path(&plan.bin_path, &hands.manager_id);
        hands
            .ssh
            .run(
                &enrolment.node_id,
                &addr,
                "uploading the agent",
                &format!("cat > '{up}'"),
                binary.unwrap_or_default(),
                INSTALL_TIMEOUT,
            )
            .await
            .map_err(ssh_failure)?;
    }
    let out = hands
        .ssh
        .run(
            &enrolment.node_id,
            &addr,
            "installing the agent",
            "sh -s",
            install::install_script(plan, &hands.manager_id).as_bytes(),
            INSTALL_TIMEOUT,
        )
        .await
        .map_err(ssh_failure)?;
    Ok(Probe::parse(&out).agent_key)
}

async fn probe(hands: &Hands, enrolment: &Enrolment) -> Result<Probe, SshError> {
    let out = hands
        .ssh
        .run(
            &enrolment.node_id,
            &enrolment.addr.to_string(),
            "probing",
            "sh -s",
            install::PROBE_SCRIPT.as_bytes(),
            PROBE_TIMEOUT,
        )
        .await?;
    Ok(Probe::parse(&out))
}

/// Asks the agent for its signed status with a signed command: proves that
/// the agent runs, holds the pinned key and trusts this manager.
async fn confirm(
    hands: &Hands,
    enrolment: &Enrolment,
    pinned: PinnedAgent,
) -> Result<Confirmed, AgentError> {
    let seq = hands.seq.next().map_err(|e| AgentError::Transport {
        endpoint: pinned.endpoint,
        message: e.to_string(),
    })?;
    let issuer = Issuer {
        key: &hands.signing,
        cluster: &enrolment.cluster_id,
        seq,
        now: unix_now(),
    };
    let status = agent_client::send(
        pinned.endpoint,
        pinned.key,
        &enrolment.node_id,
        &issuer,
        CommandBody::Status,
        AGENT_TIMEOUT,
    )
    .await?;
    Ok(Confirmed {
        agent: PinnedAgent {
            version: format!("glue-node-agent {}", status.agent_version),
            ..pinned
        },
        trusted_keys: status.trusted_keys,
        changed: Vec::new(),
    })
}

/// Runs the one-shot swarm job that adds every registered manager's SSH key
/// to root's authorized_keys on the node, under a swarm lock for that node.
async fn add_ssh_key(hands: &Hands, enrolment: &Enrolment) -> Result<(), Failure> {
    let purpose = format!("ssh-{}", short(&enrolment.node_id));
    let lease = match hands
        .docker
        .lock(&purpose, &hands.manager_id, hands.lock_lease, unix_now())
        .await
        .map_err(|e| Failure::new(NodeState::KeyJob, e.to_string()))?
    {
        Ok(l) => l,
        Err(held) => {
            return Err(Failure {
                waiting: true,
                ..Failure::new(
                    NodeState::KeyJob,
                    format!(
                        "another manager is adding SSH keys on {} ({held})",
                        enrolment.hostname
                    ),
                )
            })
        }
    };
    let result = run_key_job(hands, enrolment).await;
    if let Err(e) = hands.docker.unlock(lease).await {
        tracing::warn!("{e}");
    }
    result
}

async fn run_key_job(hands: &Hands, enrolment: &Enrolment) -> Result<(), Failure> {
    // Someone may have added our key while we waited for the lock.
    match probe(hands, enrolment).await {
        Ok(_) => return Ok(()),
        Err(SshError::Denied { .. }) => {}
        Err(e) => return Err(ssh_failure(e)),
    }
    let key_job = KeyJob {
        node: enrolment.node_id.clone(),
        issuer: hands.manager_id.clone(),
        image: hands.key_job_image.clone(),
        keys: enrolment
            .registry
            .iter()
            .map(|(id, k)| {
                format!(
                    "{} swarm-glue manager {id}",
                    crate::keys::ssh_key_material(&k.ssh_key)
                )
            })
            .collect(),
    };
    let name = key_job.name();
    let failure = |m: String| Failure::new(NodeState::KeyJob, m);
    hands
        .docker
        .start_key_job(&key_job)
        .await
        .map_err(|e| failure(e.to_string()))?;
    tracing::info!(node = %enrolment.node_id, job = %name, "SSH key job started on {}", enrolment.hostname);
    let deadline = tokio::time::Instant::now() + hands.key_job_timeout;
    let outcome = loop {
        match hands.docker.job_state(&name).await {
            Ok(JobState::Done) => break Ok(()),
            Ok(JobState::Failed(err)) => break Err(err),
            Ok(JobState::Waiting(why)) => {
                if tokio::time::Instant::now() >= deadline {
                    break Err(format!(
                        "not done after {}s ({why})",
                        hands.key_job_timeout.as_secs()
                    ));
                }
                // A node without the image never gets further: say so at once.
                if why.contains("No such image") || why.contains("not found") {
                    break Err(why);
                }
            }
            Err(e) => break Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Err(e) = hands.docker.remove_service(&name).await {
        tracing::warn!("{e}");
    }
    outcome.map_err(|err| {
        let mut f = failure(if err.contains("No such image") || err.contains("not found") {
            format!(
                "{}: the SSH key job cannot run: node lacks image {} ({err}); load it on that node (docker load) or set key_job_image in manager.toml to an image it has",
                enrolment.hostname, hands.key_job_image
            )
        } else {
            format!("{}: SSH key job {name} failed: {err}", enrolment.hostname)
        });
        f.needs_human = true;
        f
    })
}

/// Which address to reach a node at: its swarm address, or for a manager
/// that reports 0.0.0.0 there, the host of its raft address.
pub fn reach_addr(addr: &str, manager_addr: Option<&str>) -> Option<IpAddr> {
    let parsed = addr.parse::<IpAddr>().ok().filter(|a| !a.is_unspecified());
    parsed.or_else(|| {
        manager_addr
            .and_then(|m| m.parse::<SocketAddr>().ok())
            .map(|s| s.ip())
            .filter(|a| !a.is_unspecified())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::recording::RecordingRemote;
    use crate::ssh::SshError;

    /// Hands whose remote hosts are `remote` (Docker is not there).
    fn hands(remote: Arc<RecordingRemote>) -> Hands {
        let dir = std::env::temp_dir().join(format!("glue-enrol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A file, not a socket: nothing answers there.
        let socket = dir.join("no-docker.sock");
        std::fs::write(&socket, b"").expect("socket stand-in");
        Hands {
            manager_id: "m1".into(),
            signing: SigningKey::generate().expect("key"),
            seq: Arc::new(Sequence::open(&dir.join("seq")).expect("seq")),
            ssh: remote,
            docker: DockerApi::unconnected(&socket).expect("client"),
            agent_port: 7950,
            agent_dir: dir,
            key_job_image: "busybox".into(),
            key_job_timeout: Duration::from_secs(1),
            lock_lease: Duration::from_secs(1),
        }
    }

    fn enrolment() -> Enrolment {
        Enrolment {
            node_id: "w1id".into(),
            hostname: "w1".into(),
            addr: "10.0.1.4".parse().expect("ip"),
            cluster_id: "c".into(),
            registry: BTreeMap::new(),
            pinned: None,
            quick: false,
        }
    }

    #[tokio::test]
    async fn an_install_uploads_the_binary_then_runs_the_plan_and_reads_the_agent_key() {
        let remote = Arc::new(RecordingRemote::default());
        let key = SigningKey::generate().expect("key").public();
        remote.answer(
            "installing the agent",
            Ok(format!("arch x86_64\npub ed25519 {key}\n")),
        );
        let plan = install::InstallPlan {
            bin_path: "/usr/local/bin/glue-node-agent".into(),
            copy_binary: true,
            writes: BTreeMap::new(),
            restart: true,
        };
        let got = install_agent(&hands(remote.clone()), &enrolment(), &plan, Some(b"ELF"))
            .await
            .expect("installed");
        assert_eq!(got, Some(key));
        let runs = remote.runs();
        let what: Vec<&str> = runs.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(what, ["uploading the agent", "installing the agent"]);
        assert_eq!(runs[0].input, b"ELF");
        assert!(runs
            .iter()
            .all(|r| r.node == "w1id" && r.addr == "10.0.1.4"));
        assert_eq!(runs[1].remote, "sh -s");
    }

    #[tokio::test]
    async fn a_node_ssh_cannot_reach_fails_its_enrolment_naming_the_address() {
        let remote = Arc::new(RecordingRemote::default());
        let down = SshError::Unreachable {
            addr: "10.0.1.4".into(),
            message: "connection timed out".into(),
        };
        remote.answer("probing", Err(down));
        let e = enrol(Arc::new(hands(remote.clone())), enrolment())
            .await
            .expect_err("unreachable");
        assert!(!e.ssh_ok);
        assert!(e.message.contains("10.0.1.4"), "{}", e.message);
        // Nothing was installed.
        assert_eq!(remote.runs().len(), 1);
    }

    #[test]
    fn a_manager_that_reports_0_0_0_0_is_reached_at_its_raft_address() {
        assert_eq!(
            reach_addr("10.0.0.5", None),
            Some("10.0.0.5".parse().expect("ip"))
        );
        assert_eq!(
            reach_addr("0.0.0.0", Some("10.0.0.6:2377")),
            Some("10.0.0.6".parse().expect("ip"))
        );
        assert_eq!(reach_addr("", None), None);
    }
}
