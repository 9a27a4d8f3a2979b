//! Recording implementations of the ports, for tests of the recovery's
//! logic: each keeps what it was asked and answers what the test set. They
//! are shared (`Arc`) so a test keeps a handle on what it gave away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use glue_protocol::{AgentStatus, CommandBody, DockerdAddrs, Rewrite};
use tokio::sync::mpsc;

use super::{Agents, Discovery, Peers, Readdressing, Store, StoreError, Swarm, TellError};
use crate::agent_client::AgentError;
use crate::discovery::DiscoveryError;
use crate::docker::{DockerError, Held};
use crate::host::{Host, HostError};
use crate::identity::{Expected, IdentityError};
use crate::memory::Memory;
use crate::progress::RecoveryFile;
use crate::readdress::{ReaddressError, StepEnd};
use crate::ssh::{Remote, SshError};

/// A poisoned lock in a test double is the test's own panic: go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a recorded re-addressing ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    Done,
    NotNow(String),
    Fail(String),
    /// Never ends (a re-addressing under way).
    Hang,
}

/// The swarm: marks, tasks and the heartbeat period as the test sets them;
/// every change and re-addressing kept in order.
pub struct RecordingSwarm {
    pub marks: Mutex<BTreeMap<String, (Ipv4Addr, Ipv4Addr)>>,
    pub restarts: Mutex<BTreeSet<String>>,
    pub running: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// The dispatcher heartbeat period now, and what it was raised from.
    pub period: Mutex<(Duration, Option<Duration>)>,
    /// Docker does not answer.
    pub down: AtomicBool,
    /// How the next re-addressings end (then [`Script::Done`]), each saying
    /// its line first.
    pub scripts: Mutex<VecDeque<Script>>,
    pub readdressed: Mutex<Vec<Readdressing>>,
    /// "hold", "retouch", "release" as called.
    pub heartbeat_calls: Mutex<Vec<&'static str>>,
}

impl Default for RecordingSwarm {
    fn default() -> RecordingSwarm {
        RecordingSwarm {
            marks: Mutex::default(),
            restarts: Mutex::default(),
            running: Mutex::default(),
            period: Mutex::new((Duration::from_secs(5), None)),
            down: AtomicBool::new(false),
            scripts: Mutex::default(),
            readdressed: Mutex::default(),
            heartbeat_calls: Mutex::default(),
        }
    }
}

impl RecordingSwarm {
    fn answer(&self, call: &str) -> Result<(), DockerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DockerError::Unreachable {
                socket: "/run/docker.sock (recording)".into(),
                message: format!("{call}: connection refused"),
            });
        }
        Ok(())
    }

    pub fn heartbeat_calls(&self) -> Vec<&'static str> {
        lock(&self.heartbeat_calls).clone()
    }

    pub fn readdressed(&self) -> Vec<Readdressing> {
        lock(&self.readdressed).clone()
    }
}

#[async_trait]
impl Swarm for RecordingSwarm {
    async fn readdress_marks(&self) -> Result<BTreeMap<String, (Ipv4Addr, Ipv4Addr)>, DockerError> {
        self.answer("readdress marks")?;
        Ok(lock(&self.marks).clone())
    }

    async fn restart_marks(&self) -> Result<BTreeSet<String>, DockerError> {
        self.answer("restart marks")?;
        Ok(lock(&self.restarts).clone())
    }

    async fn running_tasks(&self) -> Result<BTreeMap<String, BTreeSet<String>>, DockerError> {
        self.answer("tasks")?;
        Ok(lock(&self.running).clone())
    }

    async fn hold_heartbeat(&self, raised: Duration, now_ms: u64) -> Result<Held, DockerError> {
        self.answer("hold heartbeat")?;
        lock(&self.heartbeat_calls).push("hold");
        let mut p = lock(&self.period);
        let was = p.0;
        let raised_from = (was != raised && p.1.is_none()).then_some(was);
        if raised_from.is_some() {
            *p = (raised, raised_from);
        }
        Ok(Held {
            raised_from,
            settled_ms: now_ms + was.as_millis() as u64 + 1000,
        })
    }

    async fn retouch_heartbeat(&self, _raised: Duration) -> Result<bool, DockerError> {
        self.answer("retouch heartbeat")?;
        lock(&self.heartbeat_calls).push("retouch");
        Ok(true)
    }

    async fn release_heartbeat(&self, _raised: Duration) -> Result<Option<Duration>, DockerError> {
        self.answer("release heartbeat")?;
        lock(&self.heartbeat_calls).push("release");
        let mut p = lock(&self.period);
        Ok(p.1.take().inspect(|was| p.0 = *was))
    }

    async fn readdress(
        &self,
        work: Readdressing,
        say: mpsc::UnboundedSender<String>,
    ) -> Result<StepEnd, ReaddressError> {
        let script = lock(&self.scripts).pop_front().unwrap_or(Script::Done);
        let _ = say.send(format!("recorded: {}", describe(&work)));
        lock(&self.readdressed).push(work);
        match script {
            Script::Done => Ok(StepEnd::Done),
            Script::NotNow(why) => Ok(StepEnd::NotNow(why)),
            Script::Fail(message) => Err(ReaddressError::Docker(DockerError::Call {
                what: "demoting (recording)".into(),
                message,
            })),
            Script::Hang => std::future::pending().await,
        }
    }
}

/// One line for a recorded re-addressing: "m2 10.0.1.2→10.0.2.2".
pub fn describe(work: &Readdressing) -> String {
    match work {
        Readdressing::Nodes { targets, .. } => targets
            .iter()
            .map(|t| format!("{} {}→{}", t.hostname, t.from, t.to))
            .collect::<Vec<_>>()
            .join(", "),
        Readdressing::ThisHost { old, new, .. } => format!("this host {old}→{new}"),
    }
}

/// mDNS: the names the test makes resolvable; announcements kept.
#[derive(Default)]
pub struct RecordingDiscovery {
    pub names: Mutex<BTreeMap<String, Ipv4Addr>>,
    pub announced: Mutex<Vec<Vec<Ipv4Addr>>>,
    pub refreshes: AtomicUsize,
    /// avahi-daemon is not running.
    pub down: AtomicBool,
}

impl RecordingDiscovery {
    pub fn name(&self, hostname: &str, addr: Ipv4Addr) {
        lock(&self.names).insert(hostname.to_string(), addr);
    }
}

#[async_trait]
impl Discovery for Arc<RecordingDiscovery> {
    async fn announce(
        &mut self,
        _memory: &Memory,
        addrs: Vec<Ipv4Addr>,
    ) -> Result<(), DiscoveryError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DiscoveryError::Avahi("not running (recording)".into()));
        }
        let mut announced = lock(&self.announced);
        if announced.last() != Some(&addrs) {
            announced.push(addrs);
        }
        Ok(())
    }

    fn lost(&mut self) {}

    fn owner_changed(&mut self, _old: &str, new: &str) -> bool {
        !new.is_empty()
    }

    fn refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
    }

    async fn resolve(&self, hostname: &str) -> Result<Ipv4Addr, DiscoveryError> {
        lock(&self.names)
            .get(hostname)
            .copied()
            .ok_or_else(|| DiscoveryError::Avahi(format!("{hostname}.local: timeout (recording)")))
    }
}

/// The managers where they are: who answers on 2377 at each address.
#[derive(Default)]
pub struct RecordingPeers {
    pub at: Mutex<BTreeMap<Ipv4Addr, String>>,
    /// Every proof asked for: (node, address).
    pub proofs: Mutex<Vec<(String, Ipv4Addr)>>,
}

impl RecordingPeers {
    pub fn place(&self, node: &str, addr: Ipv4Addr) {
        let mut at = lock(&self.at);
        at.retain(|_, n| n != node);
        at.insert(addr, node.to_string());
    }

    pub fn proofs(&self) -> Vec<(String, Ipv4Addr)> {
        lock(&self.proofs).clone()
    }
}

#[async_trait]
impl Peers for RecordingPeers {
    async fn prove(&self, addr: Ipv4Addr, exp: &Expected) -> Result<(), IdentityError> {
        lock(&self.proofs).push((exp.node.clone(), addr));
        let at = SocketAddr::from((addr, 2377));
        match lock(&self.at).get(&addr) {
            Some(node) if *node == exp.node => Ok(()),
            Some(node) => Err(IdentityError::NotThatManager {
                addr: at,
                node: exp.node.clone(),
                cluster: exp.cluster.clone(),
                reason: format!("its certificate names {node}"),
            }),
            None => Err(IdentityError::Unreachable {
                addr: at,
                message: "connection refused (recording)".into(),
            }),
        }
    }

    async fn listens(&self, addr: Ipv4Addr) -> bool {
        lock(&self.at).contains_key(&addr)
    }
}

/// One node's agent as the recording holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimAgent {
    pub node: String,
    /// Where it answers (a manager's own agent also on 127.0.0.1).
    pub addrs: Vec<Ipv4Addr>,
    pub generation: u64,
    pub rewrites: Vec<Rewrite>,
    pub dockerd: Option<DockerdAddrs>,
    /// Takes no command (down, or its port blocked).
    pub silent: bool,
}

/// The agents where they answer; they take sets the way the real agent
/// does (a set must supersede the one in force and name it).
#[derive(Default)]
pub struct RecordingAgents {
    pub agents: Mutex<Vec<SimAgent>>,
    /// Every command: (node, endpoint, command name).
    pub told: Mutex<Vec<(String, SocketAddr, &'static str)>>,
}

impl RecordingAgents {
    /// Makes `node`'s agent answer at `addrs` (and only there).
    pub fn place(&self, node: &str, addrs: &[Ipv4Addr]) {
        let mut agents = lock(&self.agents);
        match agents.iter_mut().find(|a| a.node == node) {
            Some(a) => a.addrs = addrs.to_vec(),
            None => agents.push(SimAgent {
                node: node.to_string(),
                addrs: addrs.to_vec(),
                ..SimAgent::default()
            }),
        }
    }

    /// Changes `node`'s agent.
    pub fn with(&self, node: &str, change: impl FnOnce(&mut SimAgent)) {
        if let Some(a) = lock(&self.agents).iter_mut().find(|a| a.node == node) {
            change(a);
        }
    }

    pub fn agent(&self, node: &str) -> Option<SimAgent> {
        lock(&self.agents).iter().find(|a| a.node == node).cloned()
    }

    pub fn told(&self) -> Vec<(String, SocketAddr, &'static str)> {
        lock(&self.told).clone()
    }
}

/// A set-rewrites the agent takes: it supersedes the set in force and names it.
fn supersedes(
    agent: &SimAgent,
    generation: u64,
    rewrites: &[Rewrite],
    replaces: Option<u64>,
) -> bool {
    replaces.is_none_or(|r| r == agent.generation)
        && (generation > agent.generation
            || (generation == agent.generation && rewrites == agent.rewrites))
}

#[async_trait]
impl Agents for RecordingAgents {
    async fn tell(
        &self,
        memory: &Memory,
        node: &str,
        endpoint: SocketAddr,
        body: CommandBody,
    ) -> Result<AgentStatus, TellError> {
        if memory
            .nodes
            .get(node)
            .and_then(|n| n.agent.as_ref())
            .is_none()
        {
            return Err(TellError::NoKey {
                node: node.to_string(),
                endpoint,
            });
        }
        lock(&self.told).push((node.to_string(), endpoint, body.name()));
        let transport = |message: &str| AgentError::Transport {
            endpoint,
            message: message.to_string(),
        };
        let mut agents = lock(&self.agents);
        let ip = endpoint.ip();
        let agent = match agents.iter_mut().find(|a| a.addrs.iter().any(|x| *x == ip)) {
            Some(a) if a.silent => return Err(transport("timed out (recording)").into()),
            // Another node's key signs the answer: not the pinned one.
            Some(a) if a.node != node => {
                return Err(AgentError::BadReply {
                    endpoint,
                    pinned: node.to_string(),
                    message: format!("signed by {}'s key", a.node),
                }
                .into())
            }
            Some(a) => a,
            None => return Err(transport("connection refused (recording)").into()),
        };
        if let CommandBody::SetRewrites {
            generation,
            mut rewrites,
            replaces,
        } = body
        {
            rewrites.sort();
            if !supersedes(agent, generation, &rewrites, replaces) {
                return Err(AgentError::Refused {
                    endpoint,
                    command: "set-rewrites",
                    code: "stale-generation".into(),
                    reason: format!("generation {generation} over {}", agent.generation),
                }
                .into());
            }
            agent.generation = generation;
            agent.rewrites = rewrites;
        }
        Ok(AgentStatus {
            agent_version: "recording".into(),
            generation: agent.generation,
            rewrites: agent.rewrites.clone(),
            in_force: true,
            trusted_keys: 1,
            dockerd: agent.dockerd.clone(),
        })
    }
}

/// The recovery file, kept in memory; every save counted.
#[derive(Default)]
pub struct RecordingStore {
    pub file: Mutex<RecoveryFile>,
    pub saves: AtomicUsize,
}

impl Store for Arc<RecordingStore> {
    fn load(&self) -> RecoveryFile {
        lock(&self.file).clone()
    }

    fn save(&self, file: &RecoveryFile) -> Result<(), StoreError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        *lock(&self.file) = file.clone();
        Ok(())
    }
}

/// A host for tests: the addresses (or the failure) the test sets, and a
/// clock that moves only when told.
pub struct RecordingHost {
    addrs: Mutex<Result<Vec<Ipv4Addr>, HostError>>,
    now_ms: AtomicU64,
}

impl RecordingHost {
    pub fn new(addrs: &[Ipv4Addr], now_ms: u64) -> RecordingHost {
        RecordingHost {
            addrs: Mutex::new(Ok(addrs.to_vec())),
            now_ms: AtomicU64::new(now_ms),
        }
    }

    pub fn set_addrs(&self, addrs: Result<Vec<Ipv4Addr>, HostError>) {
        if let Ok(mut a) = self.addrs.lock() {
            *a = addrs;
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Host for RecordingHost {
    fn addrs(&self) -> Result<Vec<Ipv4Addr>, HostError> {
        self.addrs
            .lock()
            .map_err(|_| HostError("test host lock poisoned".into()))?
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// One command run on a node over the recording remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRun {
    pub node: String,
    pub addr: String,
    pub what: String,
    pub remote: String,
    pub input: Vec<u8>,
}

/// Remote hosts: each command kept; answered by what it is (`what`), as
/// the test set it, else with empty output.
#[derive(Default)]
pub struct RecordingRemote {
    pub answers: Mutex<BTreeMap<String, Result<String, SshError>>>,
    pub runs: Mutex<Vec<RemoteRun>>,
}

impl RecordingRemote {
    pub fn answer(&self, what: &str, answer: Result<String, SshError>) {
        lock(&self.answers).insert(what.to_string(), answer);
    }

    pub fn runs(&self) -> Vec<RemoteRun> {
        lock(&self.runs).clone()
    }
}

#[async_trait]
impl Remote for RecordingRemote {
    async fn run(
        &self,
        node: &str,
        addr: &str,
        what: &str,
        remote: &str,
        input: &[u8],
        _timeout: Duration,
    ) -> Result<String, SshError> {
        lock(&self.runs).push(RemoteRun {
            node: node.to_string(),
            addr: addr.to_string(),
            what: what.to_string(),
            remote: remote.to_string(),
            input: input.to_vec(),
        });
        lock(&self.answers)
            .get(what)
            .cloned()
            .unwrap_or_else(|| Ok(String::new()))
    }
}
