//! The service: reach Docker, remember the healthy swarm, enrol every node.
//! It reacts to Docker's events; a slow tick is the safety net.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use glue_protocol::clock::unix_now;
use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::discovery::Event;
use crate::docker::{DockerApi, Snapshot};
use crate::enrol::NodeState;
use crate::enrol::{self, Confirmed, Enrolment, Failure, Hands};
use crate::host::{Host, System};
use crate::keys::{self, Sequence};
use crate::mdns::Mdns;
use crate::memory::{self, ManagerKeys, Memory, MemoryStore, NodeMemory, PinnedAgent, Role};
use crate::plan::Health;
use crate::ports::{Live, Ports, Signed, StateFile, Swarm, Tls};
use crate::recovery::Recoverer;
use crate::ssh::Ssh;
use crate::status::StatusReport;
use glue_protocol::{KeyError, SigningKey};

/// Longest a look at Docker, or a round of recovery, may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(20);

/// How often discovery and (when something is off) recovery look again.
const RECOVERY_ROUND: Duration = Duration::from_secs(2);

/// Nodes enrolled at the same time.
const PARALLEL_ENROLMENTS: usize = 4;

type Enrolled = (String, Result<Confirmed, Failure>);

type Events = Pin<
    Box<dyn Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> + Send>,
>;

/// Why one look at a healthy swarm stopped half-way; the next tick looks again.
#[derive(Debug, thiserror::Error)]
enum ObserveError {
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error("this manager's signing key: {0}")]
    Key(#[from] KeyError),
}

/// Per node, what the daemon knows between enrolments.
#[derive(Debug, Default)]
struct Track {
    busy: bool,
    next_at: u64,
    failures: u32,
    /// The registry the running enrolment works with.
    started_with: BTreeMap<String, ManagerKeys>,
    /// The registry the agent was last confirmed against.
    confirmed_for: Option<BTreeMap<String, ManagerKeys>>,
}

pub struct Daemon {
    cfg: Config,
    store: MemoryStore,
    memory: Memory,
    report: StatusReport,
    written_report: Option<StatusReport>,
    signing: glue_protocol::SigningKey,
    seq: Arc<Sequence>,
    recoverer: Recoverer,
    /// What mDNS hears, for the recoverer.
    heard: mpsc::Receiver<Event>,
    /// What the last look at Docker said, for the recovery.
    health: Health,
    /// The last round of recovery work could not reach Avahi (said once).
    avahi_down: bool,
    ssh: Ssh,
    ssh_pub: String,
    docker: Option<DockerApi>,
    hands: Option<Arc<Hands>>,
    events: Option<Events>,
    tracks: BTreeMap<String, Track>,
    pins: BTreeMap<String, PinnedAgent>,
    results: (mpsc::Sender<Enrolled>, mpsc::Receiver<Enrolled>),
    slots: Arc<Semaphore>,
    ready: bool,
    registered: bool,
    cleaned: bool,
}

/// This manager's SSH public key, made at first start.
fn ssh_key(cfg: &Config) -> anyhow::Result<String> {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comment = format!("swarm-glue manager on {host}");
    let (ssh_pub, made) = keys::ssh_key(&cfg.ssh_key_path(), &comment)?;
    if made {
        let path = cfg.ssh_key_path();
        tracing::info!("made this manager's SSH key ({})", path.display());
    }
    Ok(ssh_pub)
}

/// The recoverer on the real ports, and what mDNS hears for it.
fn recoverer(
    cfg: &Config,
    signing: &SigningKey,
    seq: &Arc<Sequence>,
) -> Result<(Recoverer, mpsc::Receiver<Event>), KeyError> {
    let host: Arc<dyn Host> = Arc::new(System);
    let (mdns, heard) = Mdns::new(cfg.agent_port);
    let agents = Signed {
        signing: SigningKey::from_pkcs8(signing.pkcs8())?,
        seq: seq.clone(),
        host: host.clone(),
    };
    let ports = Ports {
        host: host.clone(),
        discovery: Box::new(mdns),
        peers: Arc::new(Tls),
        agents: Arc::new(agents),
        store: Box::new(StateFile {
            path: cfg.recovery_path(),
            host,
        }),
    };
    Ok((Recoverer::new(ports, cfg.agent_port), heard))
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, state);
}

impl Daemon {
    pub fn new(cfg: Config) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", cfg.state_dir.display()))?;
        let (signing, made) = keys::signing_key(&cfg.signing_key_path())?;
        if made {
            tracing::info!(key = %signing.public().short(), "made this manager's signing key");
        }
        let ssh_pub = ssh_key(&cfg)?;
        let seq = Sequence::open(&cfg.seq_path())?;
        let store = MemoryStore::new(cfg.memory_path());
        let mut report = StatusReport {
            pid: std::process::id(),
            version: glue_protocol::PROGRAM_VERSION.to_string(),
            state: "starting".into(),
            signing_key: signing.public().to_base64(),
            ..StatusReport::default()
        };
        let memory = match store.load() {
            Ok((m, memory::Loaded::CorruptMovedTo(aside, why))) => {
                let msg = format!(
                    "the memory file {} was corrupt ({why}); moved to {} and rebuilt from the live swarm",
                    store.path().display(),
                    aside.display()
                );
                tracing::error!("{msg}");
                report.push_error(unix_now(), msg);
                m
            }
            Ok((m, _)) => m,
            Err(e) => return Err(e.into()),
        };
        let pins = memory
            .nodes
            .iter()
            .filter_map(|(id, n)| n.agent.clone().map(|a| (id.clone(), a)))
            .collect();
        let ssh = Ssh {
            binary: cfg.ssh.clone(),
            key: cfg.ssh_key_path(),
            known_hosts_dir: cfg.known_hosts_dir(),
            port: cfg.ssh_port,
            connect_timeout_s: cfg.ssh_connect_timeout_s,
        };
        let seq = Arc::new(seq);
        let (recoverer, heard) = recoverer(&cfg, &signing, &seq)?;
        Ok(Daemon {
            store,
            memory,
            report,
            written_report: None,
            signing,
            seq,
            recoverer,
            heard,
            health: Health::DockerDown,
            avahi_down: false,
            ssh,
            ssh_pub,
            docker: None,
            hands: None,
            events: None,
            tracks: BTreeMap::new(),
            pins,
            results: mpsc::channel(64),
            slots: Arc::new(Semaphore::new(PARALLEL_ENROLMENTS)),
            ready: false,
            registered: false,
            cleaned: false,
            cfg,
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let alive = spawn_watchdog();
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.tick_interval_s));
        let mut recover_tick = tokio::time::interval(RECOVERY_ROUND);
        recover_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.set_state("waiting for Docker".into());
        // An absolute deadline: the recovery rounds must not keep pushing a
        // look that is due further away.
        let mut look_at = tokio::time::Instant::now();
        let readdress_done = self.recoverer.readdress_done();
        loop {
            let mut look = false;
            let mut recover = false;
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => look = true,
                _ = tokio::time::sleep_until(look_at) => look = true,
                ev = next_event(&mut self.events) => match ev {
                    Some(Ok(_)) => look = true,
                    Some(Err(e)) => self.lost_docker(format!("event stream: {e}")),
                    None => self.lost_docker("event stream ended (dockerd restarted?)".into()),
                },
                _ = recover_tick.tick() => recover = true,
                _ = readdress_done.notified() => recover = true,
                Some(heard) = self.heard.recv() => {
                    recover = self.recoverer.hear(&self.memory, heard);
                }
                Some((node, result)) = self.results.1.recv() => {
                    self.finished(node, result);
                    look = true;
                }
            }
            // While a recovery is under way every round looks at Docker
            // afresh: roles and recorded addresses change under it. The
            // round goes first: announcing a new address must not wait for
            // a swarm without leader to answer.
            if recover && self.recoverer.phase() != crate::plan::Phase::Idle {
                look = true;
            }
            if recover && look {
                self.recover_bounded().await;
                recover = false;
            }
            if look {
                self.look_at_docker_bounded().await;
                look_at = tokio::time::Instant::now() + self.next_due();
            }
            alive.store(unix_now(), std::sync::atomic::Ordering::Relaxed);
            if recover {
                self.recover_bounded().await;
            }
            self.write_report();
            alive.store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopping; agents keep what they have in force");
        Ok(())
    }

    /// A look at Docker, bounded: a swarm without quorum can leave writes
    /// hanging; that says the swarm is stuck, not that Docker is gone.
    async fn look_at_docker_bounded(&mut self) {
        if tokio::time::timeout(LOOK_TIMEOUT, self.look_at_docker())
            .await
            .is_err()
        {
            self.health = Health::NoLeader;
            self.set_state(format!(
                "the swarm did not answer within {}s",
                LOOK_TIMEOUT.as_secs()
            ));
        }
    }

    /// How long until something is due: Docker to retry, a node to enrol.
    fn next_due(&self) -> Duration {
        if self.docker.is_none() {
            return Duration::from_secs(2);
        }
        let now = unix_now();
        let next = self
            .tracks
            .values()
            .filter(|t| !t.busy)
            .map(|t| t.next_at)
            .min()
            .unwrap_or(u64::MAX);
        Duration::from_secs(next.saturating_sub(now).clamp(1, self.cfg.tick_interval_s))
    }

    fn set_state(&mut self, state: String) {
        if self.report.state != state {
            tracing::info!("{state}");
            notify(&[sd_notify::NotifyState::Status(&state)]);
            self.report.state = state;
        }
    }

    fn error(&mut self, message: String) {
        tracing::error!("{message}");
        self.report.push_error(unix_now(), message);
    }

    async fn recover_bounded(&mut self) {
        if tokio::time::timeout(LOOK_TIMEOUT, self.recover())
            .await
            .is_err()
        {
            tracing::warn!(
                "a recovery round took longer than {}s",
                LOOK_TIMEOUT.as_secs()
            );
        }
    }

    /// Discovery, and recovery when something is off.
    async fn recover(&mut self) {
        if self.memory.cluster_id.is_empty() {
            return;
        }
        match self.recoverer.discover(&self.memory).await {
            Ok(()) => self.avahi_down = false,
            Err(e) => {
                self.recoverer.avahi_lost();
                if !self.avahi_down {
                    self.error(format!(
                        "mDNS discovery unavailable (is avahi-daemon running?): {e}"
                    ));
                    self.avahi_down = true;
                }
            }
        }
        let mut health = self.health.clone();
        if matches!(health, Health::Healthy { .. }) && self.recoverer.quorum_in_doubt(&self.memory)
        {
            let committed = match &self.docker {
                Some(d) => d.quorum(&self.memory.node_id).await,
                None => false,
            };
            if !committed {
                health = Health::NoLeader;
            }
        }
        let lines = self
            .recoverer
            .step(&self.memory, health, self.swarm())
            .await;
        if !lines.is_empty() || self.recoverer.phase() != crate::plan::Phase::Idle {
            let mut state = format!("recovery: {:?}", self.recoverer.phase()).to_lowercase();
            let waiting = &self.recoverer.file.waiting;
            if !waiting.is_empty() {
                state = format!("{state}, waiting for {}", waiting.join(", "));
            }
            self.set_state(state);
        }
        self.report.recovery = self.recoverer.file.clone();
    }

    /// The swarm as the recovery acts on it, while Docker answers.
    fn swarm(&self) -> Option<Arc<dyn Swarm>> {
        let hands = self.hands.clone()?;
        Some(Arc::new(Live(hands)))
    }

    fn lost_docker(&mut self, why: String) {
        if self.docker.take().is_some() {
            self.error(format!("lost Docker: {why}"));
        }
        self.events = None;
        self.hands = None;
        self.health = Health::DockerDown;
        self.registered = false;
    }

    async fn connect(&mut self) -> bool {
        match DockerApi::connect(&self.cfg.docker_socket).await {
            Ok(d) => {
                self.report.docker = format!("connected to {}, API {}", d.socket(), d.api_version);
                tracing::info!("{}", self.report.docker);
                self.events = Some(Box::pin(d.events()));
                self.docker = Some(d);
                if !self.ready {
                    notify(&[sd_notify::NotifyState::Ready]);
                    self.ready = true;
                }
                true
            }
            Err(e) => {
                let line = format!("waiting for Docker: {e}");
                self.report.docker = e.to_string();
                self.set_state(line);
                false
            }
        }
    }

    /// Observes the swarm and starts what is due.
    async fn look_at_docker(&mut self) {
        if self.docker.is_none() && !self.connect().await {
            return;
        }
        let Some(docker) = self.docker.clone() else {
            return;
        };
        let snap = match docker.snapshot().await {
            Ok(s) => s,
            Err(e) => return self.lost_docker(e.to_string()),
        };
        self.health = health_of(&snap);
        self.recoverer.not_ready = snap
            .nodes
            .iter()
            .filter(|n| n.state != "ready")
            .map(|n| n.id.clone())
            .collect();
        self.recoverer.down = snap
            .nodes
            .iter()
            .filter(|n| n.state == "down")
            .map(|n| n.id.clone())
            .collect();
        // Docker 20.10 can report "error" for a manager whose swarm runs fine
        // (seen after a promotion: reachable, listed by the leader, `docker
        // info` says "Swarm: error" with no message until dockerd restarts).
        // A node that lists the swarm's nodes is in it.
        let in_swarm = snap.local_state == "active"
            || (snap.local_state == "error" && snap.control_available && !snap.nodes.is_empty());
        if !in_swarm {
            return self.set_state(format!(
                "this node is not part of a swarm (state {:?}); waiting",
                snap.local_state
            ));
        }
        if !snap.control_available {
            let why = if snap.error.is_empty() {
                "this node is not a manager; glue-manager belongs on managers".to_string()
            } else {
                format!(
                    "the swarm does not answer ({}); keeping the memory of {} nodes",
                    snap.error,
                    self.memory.nodes.len()
                )
            };
            return self.set_state(why);
        }
        if let Err(e) = self.observe_healthy(&docker, &snap).await {
            self.error(e.to_string());
        }
    }

    async fn observe_healthy(
        &mut self,
        docker: &DockerApi,
        snap: &Snapshot,
    ) -> Result<(), ObserveError> {
        let mine = ManagerKeys {
            signing_key: self.signing.public(),
            ssh_key: self.ssh_pub.clone(),
        };
        if !self.registered {
            if docker.register(&snap.node_id, &mine).await? {
                tracing::info!(key = %mine.signing_key.short(), "registered this manager's keys in the swarm");
            }
            self.registered = true;
        }
        if !self.cleaned {
            // Whatever an earlier run of this manager left half-done.
            for job in docker.my_key_jobs(&snap.node_id).await? {
                tracing::info!(job = %job, "removing a key job left by an earlier run");
                docker.remove_service(&job).await?;
            }
            let released = docker.release_locks_of(&snap.node_id).await?;
            if released > 0 {
                tracing::info!("released {released} swarm lock(s) left by an earlier run");
            }
            self.cleaned = true;
        }
        let managers: BTreeSet<&str> = snap
            .nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .map(|n| n.id.as_str())
            .collect();
        let mut registry = docker.registry().await?;
        // Only managers' keys are trusted; a demoted node's entry is ignored.
        registry.retain(|id, _| managers.contains(id.as_str()));
        if registry.get(&snap.node_id) != Some(&mine) {
            // Our entry vanished or is stale: publish it again next time.
            self.registered = false;
        }
        self.report.node_id = snap.node_id.clone();
        if self.hands.is_none() {
            self.hands = Some(Arc::new(self.make_hands(docker.clone(), &snap.node_id)?));
        }
        if self.recoverer.phase() != crate::plan::Phase::Idle {
            // While a recovery is under way the memory follows the addresses
            // Docker records (a re-addressed manager is dialled at its new
            // one if the hosts move again), but a manager demoted to be
            // re-addressed stays a manager in it; enrolments wait.
            self.report.managers = registry.keys().cloned().collect();
            self.remember(snap, &registry, true);
            return Ok(());
        }
        self.remember(snap, &registry, false);
        self.report.managers = registry.keys().cloned().collect();
        self.start_due(snap, &registry);
        let confirmed = self
            .report
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Confirmed)
            .count();
        self.set_state(format!(
            "swarm healthy: {} nodes, {} agents confirmed, {} managers registered",
            snap.nodes.len(),
            confirmed,
            registry.len()
        ));
        Ok(())
    }

    fn make_hands(&mut self, docker: DockerApi, manager_id: &str) -> Result<Hands, KeyError> {
        Ok(Hands {
            manager_id: manager_id.to_string(),
            signing: glue_protocol::SigningKey::from_pkcs8(self.signing.pkcs8())?,
            seq: self.seq.clone(),
            ssh: Arc::new(self.ssh.clone()),
            docker,
            agent_port: self.cfg.agent_port,
            agent_dir: self.cfg.agent_dir.clone(),
            key_job_image: self.cfg.key_job_image.clone(),
            key_job_timeout: Duration::from_secs(self.cfg.key_job_timeout_s),
            lock_lease: Duration::from_secs(self.cfg.lock_lease_s),
        })
    }

    /// Persists what the healthy swarm looks like, if anything changed.
    fn remember(
        &mut self,
        snap: &Snapshot,
        registry: &BTreeMap<String, ManagerKeys>,
        recovering: bool,
    ) {
        let mut next = Memory {
            format: memory::FORMAT,
            cluster_id: snap.cluster_id.clone(),
            node_id: snap.node_id.clone(),
            root_ca_pem: snap.root_ca_pem.clone(),
            nodes: BTreeMap::new(),
            managers: registry.clone(),
            changed_at: unix_now(),
        };
        for n in &snap.nodes {
            let mut role = n.role;
            let mut manager_addr = n.manager_addr.clone();
            if let Some(was) = self.memory.nodes.get(&n.id) {
                if recovering && was.role == Role::Manager && n.role == Role::Worker {
                    role = Role::Manager;
                    manager_addr = was.manager_addr.clone();
                    if let Some(keys) = self.memory.managers.get(&n.id) {
                        next.managers.insert(n.id.clone(), keys.clone());
                    }
                }
            }
            next.nodes.insert(
                n.id.clone(),
                NodeMemory {
                    hostname: n.hostname.clone(),
                    role,
                    availability: n.availability.clone(),
                    addr: n.addr.clone(),
                    manager_addr,
                    arch: n.arch.clone(),
                    agent: self.pins.get(&n.id).cloned(),
                },
            );
        }
        if next.same_as(&self.memory) {
            return;
        }
        match self.store.save(&next) {
            Ok(()) => {
                if self.memory.cluster_id.is_empty() {
                    tracing::info!(
                        cluster = %next.cluster_id,
                        "remembering the swarm: {} nodes, {} managers registered ({})",
                        next.nodes.len(),
                        next.managers.len(),
                        self.store.path().display()
                    );
                }
                self.memory = next;
            }
            Err(e) => self.error(format!("cannot save the memory of the swarm: {e}")),
        }
    }

    fn start_due(&mut self, snap: &Snapshot, registry: &BTreeMap<String, ManagerKeys>) {
        let now = unix_now();
        let present: BTreeSet<&str> = snap.nodes.iter().map(|n| n.id.as_str()).collect();
        self.tracks.retain(|id, _| present.contains(id.as_str()));
        self.report
            .nodes
            .retain(|id, _| present.contains(id.as_str()));
        let Some(hands) = self.hands.clone() else {
            return;
        };
        for n in &snap.nodes {
            let track = self.tracks.entry(n.id.clone()).or_default();
            let report = self.report.nodes.entry(n.id.clone()).or_default();
            report.hostname = n.hostname.clone();
            report.role = Some(n.role);
            report.addr = n.addr.clone();
            let registry_changed = track.confirmed_for.as_ref().is_some_and(|r| r != registry);
            if track.busy || (track.next_at > now && !registry_changed) {
                continue;
            }
            let Some(addr) = enrol::reach_addr(&n.addr, n.manager_addr.as_deref()) else {
                report.state = NodeState::Unreachable;
                report.last_error = Some(format!(
                    "the swarm reports no usable address ({:?})",
                    n.addr
                ));
                continue;
            };
            if n.state == "down" {
                report.state = NodeState::Unreachable;
                report.last_error = Some("the swarm reports the node down".into());
                track.next_at = now + self.cfg.retry_min_s;
                continue;
            }
            let job = Enrolment {
                node_id: n.id.clone(),
                hostname: n.hostname.clone(),
                addr,
                cluster_id: snap.cluster_id.clone(),
                registry: registry.clone(),
                pinned: self.pins.get(&n.id).cloned(),
                quick: track.confirmed_for.is_some() && !registry_changed,
            };
            track.busy = true;
            track.started_with = registry.clone();
            track.confirmed_for = None;
            if report.state != NodeState::Confirmed {
                report.state = NodeState::Working;
            }
            let hands = hands.clone();
            let slots = self.slots.clone();
            let tx = self.results.0.clone();
            let id = n.id.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let result = enrol::enrol(hands, job).await;
                let _ = tx.send((id, result)).await;
            });
        }
    }

    fn finished(&mut self, node: String, result: Result<Confirmed, Failure>) {
        let now = unix_now();
        let Some(track) = self.tracks.get_mut(&node) else {
            return;
        };
        track.busy = false;
        let report = self.report.nodes.entry(node.clone()).or_default();
        let name = format!("{} ({})", report.hostname, crate::docker::short(&node));
        match result {
            Ok(done) => {
                if !done.changed.is_empty() || report.state != NodeState::Confirmed {
                    tracing::info!(
                        node = %node,
                        agent_key = %done.agent.key.short(),
                        "node {name}: {}agent confirmed, trusts {} manager keys",
                        if done.changed.is_empty() { String::new() } else { format!("{}; ", done.changed.join("; ")) },
                        done.trusted_keys
                    );
                }
                track.failures = 0;
                track.next_at = now + self.cfg.agent_check_interval_s;
                track.confirmed_for = Some(std::mem::take(&mut track.started_with));
                report.state = NodeState::Confirmed;
                report.ssh_ok = true;
                report.agent_version = done.agent.version.clone();
                report.agent_key = done.agent.key.short();
                report.trusted_keys = Some(done.trusted_keys);
                report.confirmed_at = Some(now);
                report.last_error = None;
                report.next_try_at = None;
                if self.pins.get(&node) != Some(&done.agent) {
                    self.pins.insert(node.clone(), done.agent.clone());
                    if let Some(n) = self.memory.nodes.get_mut(&node) {
                        n.agent = Some(done.agent);
                        self.memory.changed_at = now;
                        if let Err(e) = self.store.save(&self.memory) {
                            let msg = format!("cannot save the memory of the swarm: {e}");
                            self.error(msg);
                        }
                    }
                }
            }
            Err(f) => {
                track.failures += 1;
                let backoff = if f.needs_human {
                    self.cfg.retry_max_s
                } else if f.waiting {
                    // Another manager is on it: look again soon, no escalation.
                    track.failures -= 1;
                    self.cfg.retry_min_s
                } else {
                    (self.cfg.retry_min_s << (track.failures - 1).min(16)).min(self.cfg.retry_max_s)
                };
                track.next_at = now + backoff;
                report.state = f.state;
                report.ssh_ok = f.ssh_ok;
                report.next_try_at = Some(track.next_at);
                let repeated = report.last_error.as_ref() == Some(&f.message);
                report.last_error = Some(f.message.clone());
                let msg = format!("node {name}: {}", f.message);
                if f.waiting {
                    tracing::info!("{msg}; looking again in {backoff}s");
                } else if !repeated {
                    self.error(msg);
                }
            }
        }
    }

    fn write_report(&mut self) {
        if self.written_report.as_ref() == Some(&self.report) {
            return;
        }
        self.report.updated_at = unix_now();
        let path = self.cfg.status_path();
        match serde_json::to_vec_pretty(&self.report) {
            Ok(bytes) => {
                if let Err(e) = glue_protocol::files::write_atomic(&path, &bytes) {
                    tracing::warn!("cannot write {}: {e}", path.display());
                }
            }
            Err(e) => tracing::warn!("cannot encode the status report: {e}"),
        }
        self.written_report = Some(self.report.clone());
    }
}

async fn next_event(
    events: &mut Option<Events>,
) -> Option<Result<bollard::models::EventMessage, bollard::errors::Error>> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The swarm's health as the recovery sees it.
fn health_of(snap: &Snapshot) -> Health {
    if !snap.control_available || snap.nodes.is_empty() {
        return Health::NoLeader;
    }
    let leader = snap.nodes.iter().find(|n| n.leader).map(|n| n.id.clone());
    let Some(leader) = leader else {
        return Health::NoLeader;
    };
    let recorded = snap
        .nodes
        .iter()
        .filter_map(|n| {
            let host = n.manager_addr.as_deref()?.rsplit_once(':')?.0;
            Some((n.id.clone(), host.parse().ok()?))
        })
        .collect();
    Health::Healthy { leader, recorded }
}

/// Feeds systemd's watchdog while the main loop comes round (it stores the
/// time of each round in what this returns); a round is bounded by two
/// LOOK_TIMEOUTs, so a loop silent for longer is stuck.
fn spawn_watchdog() -> Arc<std::sync::atomic::AtomicU64> {
    let alive = Arc::new(std::sync::atomic::AtomicU64::new(unix_now()));
    let seen = alive.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            let last = seen.load(std::sync::atomic::Ordering::Relaxed);
            if unix_now().saturating_sub(last) <= 3 * LOOK_TIMEOUT.as_secs() {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
    alive
}
