//! The side effects of a recovery, each behind a small trait: the swarm
//! (Docker on this manager, and the re-addressing it runs), discovery
//! (Avahi), the peers' identity (TLS on 2377), the agents (signed commands)
//! and the recovery's file. [`crate::host::Host`] is the fifth: this host's
//! addresses and clock. The real implementations here stay thin; the
//! recording ones in [`recording`] let tests drive whole recoveries in
//! milliseconds, without root.

#[cfg(test)]
pub mod recording;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use glue_protocol::{AgentStatus, CommandBody, SigningKey};
use tokio::sync::mpsc;

use crate::agent_client::{self, Issuer};
use crate::discovery::DiscoveryError;
use crate::docker::{DockerError, Held};
use crate::enrol::Hands;
use crate::host::Host;
use crate::identity::{self, Expected, IdentityError};
use crate::keys::Sequence;
use crate::memory::Memory;
use crate::progress::RecoveryFile;
use crate::readdress::{self, ReaddressError, StepEnd, Target};

/// Everything the recoverer acts through but the swarm,
/// which comes and goes with Docker and is handed to each round.
pub struct Ports {
    pub host: Arc<dyn Host>,
    pub discovery: Box<dyn Discovery>,
    pub peers: Arc<dyn Peers>,
    pub agents: Arc<dyn Agents>,
    pub store: Box<dyn Store>,
}

/// The swarm as a recovery reads and changes it.
#[async_trait]
pub trait Swarm: Send + Sync {
    /// Managers half-way through re-addressing: node → (old, new).
    async fn readdress_marks(&self) -> Result<BTreeMap<String, (Ipv4Addr, Ipv4Addr)>, DockerError>;
    /// Nodes restarted in place, their mark not yet cleared.
    async fn restart_marks(&self) -> Result<BTreeSet<String>, DockerError>;
    /// The services each node runs a task of.
    async fn running_tasks(&self) -> Result<BTreeMap<String, BTreeSet<String>>, DockerError>;
    async fn hold_heartbeat(&self, raised: Duration, now_ms: u64) -> Result<Held, DockerError>;
    /// Sets the raised period again for a new leader; true if it changed.
    async fn retouch_heartbeat(&self, raised: Duration) -> Result<bool, DockerError>;
    /// The period put back, if this call put it back.
    async fn release_heartbeat(&self, raised: Duration) -> Result<Option<Duration>, DockerError>;
    /// Carries out a re-addressing; its timeline lines go to `say`.
    async fn readdress(
        &self,
        work: Readdressing,
        say: mpsc::UnboundedSender<String>,
    ) -> Result<StepEnd, ReaddressError>;
}

/// A re-addressing to run (see [`crate::readdress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readdressing {
    /// Other nodes, one step: `managers` are every manager's current
    /// address, `map` every moved node's old → new address.
    Nodes {
        managers: BTreeMap<String, Ipv4Addr>,
        map: BTreeMap<Ipv4Addr, Ipv4Addr>,
        targets: Vec<Target>,
    },
    /// This host's own dockerd, restarted at `new` (it was at `old`).
    ThisHost {
        old: Ipv4Addr,
        new: Ipv4Addr,
        stale: Vec<String>,
    },
}

/// mDNS: this manager announced, the others browsed, hosts resolved.
/// What is heard arrives as [`crate::discovery::Event`]s on the channel the
/// implementation was made with.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// Connects if need be, browses, and announces this manager at `addrs`
    /// (again, when they changed or the name collided).
    async fn announce(
        &mut self,
        memory: &Memory,
        addrs: Vec<Ipv4Addr>,
    ) -> Result<(), DiscoveryError>;
    /// The daemon went away: start over at the next [`Discovery::announce`].
    fn lost(&mut self);
    /// Avahi's bus name changed owner; true if a round should run at once.
    fn owner_changed(&mut self, old: &str, new: &str) -> bool;
    /// Asks again for every browsed service (what a moved host says now).
    fn refresh(&self);
    /// `<hostname>.local` → its IPv4 address.
    async fn resolve(&self, hostname: &str) -> Result<Ipv4Addr, DiscoveryError>;
}

/// The managers' identity, where they claim to be.
#[async_trait]
pub trait Peers: Send + Sync {
    /// Proves that `addr`:2377 is the manager `exp` names.
    async fn prove(&self, addr: Ipv4Addr, exp: &Expected) -> Result<(), IdentityError>;
    /// Whether anything accepts a connection at `addr`:2377.
    async fn listens(&self, addr: Ipv4Addr) -> bool;
}

/// The agents, told signed commands and checked against their pinned keys.
#[async_trait]
pub trait Agents: Send + Sync {
    async fn tell(
        &self,
        memory: &Memory,
        node: &str,
        endpoint: SocketAddr,
        body: CommandBody,
    ) -> Result<AgentStatus, TellError>;
}

/// Where the recovery's progress and timeline are kept.
pub trait Store: Send + Sync {
    /// The file as saved; a corrupt one is set aside (named in the log) and
    /// read as no recovery: what is seen is planned again.
    fn load(&self) -> RecoveryFile;
    fn save(&self, file: &RecoveryFile) -> Result<(), StoreError>;
}

/// Why a command to an agent got no trusted answer.
#[derive(Debug, thiserror::Error)]
pub enum TellError {
    #[error("no agent key pinned for node {node} (at {endpoint})")]
    NoKey { node: String, endpoint: SocketAddr },
    #[error(transparent)]
    Sequence(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Agent(#[from] agent_client::AgentError),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("encoding the recovery state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("saving the recovery state: {0}")]
    Write(#[from] glue_protocol::files::WriteError),
}

const RAFT_PORT: u16 = 2377;
const PROOF_TIMEOUT: Duration = Duration::from_secs(2);
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The real swarm: Docker on this manager, SSH to the others.
pub struct Live(pub Arc<Hands>);

#[async_trait]
impl Swarm for Live {
    async fn readdress_marks(&self) -> Result<BTreeMap<String, (Ipv4Addr, Ipv4Addr)>, DockerError> {
        self.0.docker.readdress_marks().await
    }

    async fn restart_marks(&self) -> Result<BTreeSet<String>, DockerError> {
        self.0.docker.restart_marks().await
    }

    async fn running_tasks(&self) -> Result<BTreeMap<String, BTreeSet<String>>, DockerError> {
        self.0.docker.running_tasks().await
    }

    async fn hold_heartbeat(&self, raised: Duration, now_ms: u64) -> Result<Held, DockerError> {
        self.0.docker.hold_heartbeat(raised, now_ms).await
    }

    async fn retouch_heartbeat(&self, raised: Duration) -> Result<bool, DockerError> {
        self.0.docker.retouch_heartbeat(raised).await
    }

    async fn release_heartbeat(&self, raised: Duration) -> Result<Option<Duration>, DockerError> {
        self.0.docker.release_heartbeat(raised).await
    }

    async fn readdress(
        &self,
        work: Readdressing,
        say: mpsc::UnboundedSender<String>,
    ) -> Result<StepEnd, ReaddressError> {
        let hands = self.0.clone();
        {
            match work {
                Readdressing::Nodes {
                    managers,
                    map,
                    targets,
                } => {
                    let bearings = readdress::Bearings {
                        hands,
                        managers,
                        map,
                        say,
                    };
                    readdress::run(&bearings, &targets).await
                }
                Readdressing::ThisHost { old, new, stale } => {
                    readdress::restart_self(&hands, old, new, &stale, &say).await
                }
            }
        }
    }
}

/// The real peers: a TLS handshake checked against the swarm's root CA.
pub struct Tls;

#[async_trait]
impl Peers for Tls {
    async fn prove(&self, addr: Ipv4Addr, exp: &Expected) -> Result<(), IdentityError> {
        let at = SocketAddr::from((addr, RAFT_PORT));
        identity::prove_manager(at, exp, PROOF_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn listens(&self, addr: Ipv4Addr) -> bool {
        let connect = tokio::net::TcpStream::connect((addr, RAFT_PORT));
        matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        )
    }
}

/// The real agents: commands signed with this manager's key, numbered by
/// its persisted sequence.
pub struct Signed {
    pub signing: SigningKey,
    pub seq: Arc<Sequence>,
    pub host: Arc<dyn Host>,
}

#[async_trait]
impl Agents for Signed {
    async fn tell(
        &self,
        memory: &Memory,
        node: &str,
        endpoint: SocketAddr,
        body: CommandBody,
    ) -> Result<AgentStatus, TellError> {
        let key = memory
            .nodes
            .get(node)
            .and_then(|n| n.agent.as_ref())
            .map(|a| a.key)
            .ok_or_else(|| TellError::NoKey {
                node: node.to_string(),
                endpoint,
            })?;
        let issuer = Issuer {
            key: &self.signing,
            cluster: &memory.cluster_id,
            seq: self.seq.next()?,
            now: self.host.now_ms() / 1000,
        };
        Ok(agent_client::send(endpoint, key, node, &issuer, body, AGENT_TIMEOUT).await?)
    }
}

/// The recovery's file on disk, written atomically.
pub struct StateFile {
    pub path: PathBuf,
    pub host: Arc<dyn Host>,
}

impl Store for StateFile {
    fn load(&self) -> RecoveryFile {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return RecoveryFile::default(),
            Err(e) => {
                let path = self.path.display();
                tracing::error!("cannot read {path} ({e}); starting from what is seen");
                return RecoveryFile::default();
            }
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // The damaged file is kept for a person to look at.
            let path = &self.path;
            let aside = path.with_extension(format!("corrupt-{}", self.host.now_ms() / 1000));
            let moved = std::fs::rename(path, &aside);
            tracing::error!(
                "{} is corrupt ({e}); {}; starting from what is seen",
                path.display(),
                match moved {
                    Ok(()) => format!("moved to {}", aside.display()),
                    Err(m) => format!("could not move it aside: {m}"),
                }
            );
            RecoveryFile::default()
        })
    }

    fn save(&self, file: &RecoveryFile) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(file)?;
        Ok(glue_protocol::files::write_atomic(&self.path, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::recording::RecordingHost;

    fn state_file(name: &str) -> (StateFile, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("swarm-glue-ports-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let host = Arc::new(RecordingHost::new(&[], 1_700_000_000_000));
        let path = dir.join("recovery.json");
        (StateFile { path, host }, dir)
    }

    #[test]
    fn a_saved_recovery_file_loads_back() {
        let (store, dir) = state_file("saved");
        let mut file = RecoveryFile::default();
        file.record(5, "detect".into());
        file.recovery.started_ms = Some(5);
        store.save(&file).expect("save");
        assert_eq!(store.load(), file);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_recovery_file_is_set_aside_and_read_as_no_recovery() {
        let (store, dir) = state_file("corrupt");
        std::fs::write(&store.path, b"{\"recovery\": ").expect("write");
        assert_eq!(store.load(), RecoveryFile::default());
        let aside = dir.join("recovery.corrupt-1700000000");
        assert_eq!(
            std::fs::read(&aside).expect("set aside"),
            b"{\"recovery\": "
        );
        assert!(!store.path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
