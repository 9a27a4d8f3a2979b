//! Carrying out a recovery: observe (local addresses, Docker, proven peers,
//! agents), plan (see [`crate::plan`]), act (signed rewrite sets to agents),
//! and keep the timeline. Discovery runs all the time; the rest only when
//! something is off, so a healthy swarm costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use glue_protocol::{AgentStatus, CommandBody, Rewrite};
use tokio::sync::mpsc;

use crate::discovery::{ignored_interface, DiscoveryError, Event, Heard};
use crate::host::Host;
use crate::identity;
use crate::memory::{Memory, Role};
use crate::plan::{self, Action, AgentSeen, Health, HeartbeatMove, Observation, Phase, Recovery};
use crate::ports::{Agents, Discovery, Peers, Ports, Readdressing, Store, Swarm, TellError};
use crate::progress::RecoveryFile;
use crate::readdress::{self, ReaddressError, StepEnd};

/// How long a round waits for Avahi to resolve a worker's name. A worker
/// that did not move is never resolved, and every round waits this long
/// before reading its agent where it was: short, or the rules reach the
/// workers too late (docs/recovery.md, "Measured: behind the constants").
/// One that misses it is read where it was; the next round asks again.
const WORKER_RESOLVE: Duration = Duration::from_millis(800);
/// How long a round waits for Avahi to resolve a manager's name.
const MANAGER_RESOLVE: Duration = Duration::from_secs(2);

pub struct Recoverer {
    /// This host's addresses and clock.
    host: Arc<dyn Host>,
    discovery: Box<dyn Discovery>,
    peers: Arc<dyn Peers>,
    agents: Arc<dyn Agents>,
    store: Box<dyn Store>,
    /// Its addresses as last read: what a failed read stands for.
    last_local: std::sync::Mutex<Vec<Ipv4Addr>>,
    pub file: RecoveryFile,
    heard: BTreeMap<String, Heard>,
    /// Addresses claimed for a manager and not proven yet, with who claimed
    /// them. Claims are kept apart: Avahi re-announces a host's old record
    /// after a move, and that stale claim must not undo a proven new one.
    candidates: BTreeMap<String, BTreeMap<Ipv4Addr, Candidate>>,
    /// Senders of refused claims already logged (a claim is heard again at
    /// every round; it is logged once per sender and address).
    warned: std::collections::BTreeSet<(IpAddr, String)>,
    proven: BTreeMap<String, Ipv4Addr>,
    /// What each proven address stood on when it was proven (kept and
    /// dropped with it).
    proof_basis: BTreeMap<String, Basis>,
    agent_port: u16,
    /// The re-addressing under way (this manager coordinates it): the node's
    /// name and the task.
    readdressing: Option<(
        String,
        tokio::task::JoinHandle<Result<StepEnd, ReaddressError>>,
    )>,
    /// Told when that task ends, so the next round need not wait its turn.
    readdress_done: Arc<tokio::sync::Notify>,
    say_tx: mpsc::UnboundedSender<String>,
    say_rx: mpsc::UnboundedReceiver<String>,
    /// Why re-addressing last had to wait (said once, not every round).
    not_now: String,
    /// This host's agent did not answer last round (said once).
    agent_silent: bool,
    /// What this manager knows of the dispatcher heartbeat.
    heartbeat: plan::Heartbeat,
    /// Nodes Docker does not see ready, from the daemon's last look.
    pub not_ready: BTreeSet<String>,
    /// Nodes Docker declared down, from the same look.
    pub down: BTreeSet<String>,
}

/// What a proof stood on when it was made: the node's remembered address
/// (Docker's record) and whether this host had moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Basis {
    remembered: Option<Ipv4Addr>,
    mine_moved: bool,
}

/// Proofs that no longer hold: made before Docker recorded the node at
/// another address than the proven one, or before this host moved. A proof
/// is never made again while it stands, so a stale one would turn into a
/// rule from the peer's new address back to its dead old one
/// (docs/recovery.md, "Measured: behind the constants").
fn stale_proofs(
    proven: &BTreeMap<String, Ipv4Addr>,
    basis: &BTreeMap<String, Basis>,
    memory: &Memory,
    mine_moved: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (node, addr) in proven {
        let Some(b) = basis.get(node) else {
            continue;
        };
        let remembered = plan::remembered_addr(memory, node);
        if remembered != b.remembered && remembered != Some(*addr) {
            let at = remembered.map_or("nowhere".to_string(), |a| a.to_string());
            out.push((
                node.clone(),
                format!("Docker has recorded it at {at} since"),
            ));
        } else if mine_moved && !b.mine_moved {
            out.push((node.clone(), "made before this host moved".to_string()));
        }
    }
    out
}

/// A claimed address waiting for its proof.
#[derive(Debug, Clone)]
struct Candidate {
    sender: IpAddr,
    failures: u32,
    next_try: std::time::Instant,
}

/// A claim that failed this often is dropped (it comes back if announced again).
const MAX_PROOF_FAILURES: u32 = 5;
const PROOF_RETRY: Duration = Duration::from_secs(4);

fn hostname_of(memory: &Memory, node: &str) -> String {
    memory
        .nodes
        .get(node)
        .map_or_else(|| node.to_string(), |n| n.hostname.clone())
}

/// A rewrite set to push to one agent.
struct Push {
    node: String,
    endpoint: SocketAddr,
    generation: u64,
    rewrites: Vec<Rewrite>,
    replaces: u64,
}

/// Pushes every set at once; the nodes clean-up waits for, and why each.
async fn push_sets(
    agents: &dyn Agents,
    memory: &Memory,
    p: &plan::Plan,
    pushes: &[Push],
) -> (BTreeSet<String>, Vec<String>) {
    let results = join_all(pushes.iter().map(|push| {
        let body = CommandBody::SetRewrites {
            generation: push.generation,
            rewrites: push.rewrites.clone(),
            replaces: Some(push.replaces),
        };
        agents.tell(memory, &push.node, push.endpoint, body)
    }))
    .await;
    let mut held_by: BTreeSet<String> = p
        .no_address
        .iter()
        .chain(&p.late)
        .chain(p.stale.keys())
        .chain(p.dockerd_unread.keys())
        .chain(&p.unread)
        .cloned()
        .collect();
    let mut waiting = waiting_for(memory, p);
    for (push, r) in pushes.iter().zip(results) {
        let name = hostname_of(memory, &push.node);
        match r {
            Ok(_) => tracing::info!(
                "recovery: {name} applied generation {} ({} rewrites)",
                push.generation,
                push.rewrites.len()
            ),
            Err(e) => {
                tracing::warn!("recovery: {name}: {e}");
                held_by.insert(push.node.clone());
                waiting.push(format!(
                    "{name} (its agent at {} did not take the set)",
                    push.endpoint
                ));
            }
        }
    }
    (held_by, waiting)
}

/// Who the plan says clean-up waits for, and why, a line each.
fn waiting_for(memory: &Memory, p: &plan::Plan) -> Vec<String> {
    let hostname = |node: &str| hostname_of(memory, node);
    p.no_address
        .iter()
        .map(|n| format!("{} (not heard at any address since the move)", hostname(n)))
        .chain(p.late.iter().map(|n| {
            format!(
                "{} (Docker sees it down; it keeps the last rules until it reconnects)",
                hostname(n)
            )
        }))
        .chain(p.stale.iter().map(|(n, held)| {
            format!(
                "{} (its dockerd still holds {}; it keeps the last rules until restarted)",
                hostname(n),
                held.join(", ")
            )
        }))
        .chain(
            p.dockerd_unread.iter().map(|(n, why)| {
                format!("{} (its agent cannot read its dockerd: {why})", hostname(n))
            }),
        )
        .chain(p.unread.iter().map(|n| {
            format!(
                "{} (its agent did not say what it holds; told nothing)",
                hostname(n)
            )
        }))
        .collect()
}

impl Recoverer {
    pub fn new(ports: Ports, agent_port: u16) -> Recoverer {
        let Ports {
            host,
            discovery,
            peers,
            agents,
            store,
        } = ports;
        let file = store.load();
        let (say_tx, say_rx) = mpsc::unbounded_channel();
        // Unread at start: none, which counts as moved (the cautious side:
        // the swarm must then prove it can commit).
        let last_local = std::sync::Mutex::new(host.addrs().unwrap_or_default());
        Recoverer {
            host,
            discovery,
            peers,
            agents,
            store,
            last_local,
            file,
            heard: BTreeMap::new(),
            candidates: BTreeMap::new(),
            warned: Default::default(),
            agent_silent: false,
            heartbeat: plan::Heartbeat::default(),
            not_ready: BTreeSet::new(),
            down: BTreeSet::new(),
            proven: BTreeMap::new(),
            proof_basis: BTreeMap::new(),
            agent_port,
            readdressing: None,
            readdress_done: Arc::new(tokio::sync::Notify::new()),
            say_tx,
            say_rx,
            not_now: String::new(),
        }
    }

    /// Notified when a re-addressing this manager coordinates ends.
    pub fn readdress_done(&self) -> Arc<tokio::sync::Notify> {
        self.readdress_done.clone()
    }

    pub fn phase(&self) -> Phase {
        self.file.recovery.phase
    }

    /// Announces this manager over mDNS and browses for the others (see
    /// [`Discovery::announce`]). Called again after a failure.
    pub async fn discover(&mut self, memory: &Memory) -> Result<(), DiscoveryError> {
        if memory.cluster_id.is_empty() {
            return Ok(());
        }
        let addrs = self.local_addrs();
        self.discovery.announce(memory, addrs).await
    }

    /// Avahi went away: start over at the next [`Self::discover`].
    pub fn avahi_lost(&mut self) {
        self.discovery.lost();
    }

    /// This host's addresses now; if they cannot be read, the last ones
    /// read (a failed read must not look like a move).
    fn local_addrs(&self) -> Vec<Ipv4Addr> {
        let Ok(mut last) = self.last_local.lock() else {
            return Vec::new();
        };
        match self.host.addrs() {
            Ok(addrs) => {
                last.clone_from(&addrs);
                addrs
            }
            Err(e) => {
                tracing::warn!("{e}; going by the addresses read before: {last:?}");
                last.clone()
            }
        }
    }

    /// Whether a swarm that answers must also prove it can commit (see
    /// [`crate::docker::DockerApi::quorum`]): when this host or a peer moved,
    /// or while rewrites are going out.
    pub fn quorum_in_doubt(&self, memory: &Memory) -> bool {
        let local = self.local_addrs();
        let mine_moved =
            plan::remembered_addr(memory, &memory.node_id).is_some_and(|a| !local.contains(&a));
        self.file.recovery.phase == Phase::Rewrite || mine_moved || self.peers_moved(memory)
    }

    fn peers_moved(&self, memory: &Memory) -> bool {
        let moved = |node: &String, addr: &Ipv4Addr| {
            plan::remembered_addr(memory, node).is_some_and(|old| old != *addr)
        };
        self.proven.iter().any(|(n, a)| moved(n, a))
            || self
                .candidates
                .iter()
                .any(|(n, c)| c.keys().any(|a| moved(n, a)))
    }

    /// Takes in an announcement: a hint about a remembered manager. True if
    /// it brought an address not heard before (worth a round at once).
    pub fn hear(&mut self, memory: &Memory, event: Event) -> bool {
        let h = match event {
            Event::Heard(h) => h,
            Event::Unreadable(e) => {
                tracing::debug!("an mDNS announcement could not be read: {e}");
                return false;
            }
            Event::AvahiOwner { old, new } => return self.discovery.owner_changed(&old, &new),
            Event::Removed(service) => {
                // Claims stay until proven or refused: after a move a host's
                // entry is removed from its old interface after it appeared
                // on the new one, under the same name.
                tracing::debug!("mDNS entry {service:?} removed");
                return false;
            }
        };
        if !self.worth_proving(memory, &h) {
            return false;
        }
        let a = &h.announcement;
        let proven = self.proven.get(&a.node).copied();
        let claims = self.candidates.entry(a.node.clone()).or_default();
        let mut new = Vec::new();
        for addr in &a.addrs {
            if Some(*addr) != proven && !claims.contains_key(addr) {
                claims.insert(
                    *addr,
                    Candidate {
                        sender: h.sender,
                        failures: 0,
                        next_try: std::time::Instant::now(),
                    },
                );
                new.push(addr.to_string());
            }
        }
        if !new.is_empty() {
            tracing::info!(
                "heard manager {} at {} (from {} on {}); to be proven",
                crate::docker::short(&a.node),
                new.join(", "),
                h.sender,
                h.interface
            );
        }
        self.heard.insert(a.node.clone(), h);
        !new.is_empty()
    }

    /// Whether an announcement claims a remembered manager of this swarm
    /// other than this one, on an interface a swarm may use.
    fn worth_proving(&mut self, memory: &Memory, h: &Heard) -> bool {
        let a = &h.announcement;
        if a.node == memory.node_id || ignored_interface(&h.interface) {
            return false;
        }
        if a.cluster != memory.cluster_id {
            tracing::debug!(
                "announcement of another swarm ({}) from {}",
                a.cluster,
                h.sender
            );
            return false;
        }
        let known_manager = memory
            .nodes
            .get(&a.node)
            .is_some_and(|n| n.role == Role::Manager);
        if !known_manager && self.warned.insert((h.sender, a.node.clone())) {
            tracing::warn!(
                "ignored an announcement from {} claiming to be manager {}: no such manager is remembered",
                h.sender,
                a.node
            );
        }
        known_manager
    }

    /// Proves every heard but unproven claim: TLS on ADDR:2377 with a
    /// certificate for that node ID and cluster, from the remembered root CA.
    ///
    /// An address this host rewrites proves nothing: the handshake would go
    /// to wherever the rewrite points.
    /// A proof counts only if the address was not rewritten here before nor
    /// after the handshake (a rule may arrive from another manager
    /// meanwhile). Each proof records whether this host had moved
    /// (`mine_moved`) and where Docker had the node, see [`stale_proofs`].
    async fn prove(&mut self, memory: &Memory, rewritten: &[Ipv4Addr], mine_moved: bool) {
        let now = std::time::Instant::now();
        for claims in self.candidates.values_mut() {
            claims.retain(|a, _| !rewritten.contains(a));
        }
        let todo: Vec<(String, Ipv4Addr, IpAddr)> = self
            .candidates
            .iter()
            .flat_map(|(node, claims)| {
                claims
                    .iter()
                    .filter(|(_, c)| c.next_try <= now)
                    .map(move |(a, c)| (node.clone(), *a, c.sender))
            })
            .collect();
        let peers = &self.peers;
        let proofs = join_all(todo.iter().map(|(node, addr, _)| {
            let exp = identity::Expected {
                root_ca_pem: memory.root_ca_pem.clone(),
                cluster: memory.cluster_id.clone(),
                node: node.clone(),
            };
            async move { peers.prove(*addr, &exp).await }
        }))
        .await;
        let after = if proofs.iter().any(Result::is_ok) {
            self.local_rules(memory)
                .await
                .ok()
                .map(|st| st.rewrites.iter().map(|r| r.from).collect())
        } else {
            Some(Vec::new())
        };
        for ((node, addr, sender), proof) in todo.into_iter().zip(proofs) {
            let claims = self.candidates.entry(node.clone()).or_default();
            match proof {
                // Rewritten meanwhile, or unknown: tried again next round.
                Ok(_) if after.as_ref().is_none_or(|a| a.contains(&addr)) => {}
                Ok(_) => {
                    claims.remove(&addr);
                    self.proof_basis.insert(
                        node.clone(),
                        Basis {
                            remembered: plan::remembered_addr(memory, &node),
                            mine_moved,
                        },
                    );
                    if self.proven.insert(node.clone(), addr) != Some(addr) {
                        tracing::info!(
                            "proven: manager {} is at {addr}",
                            crate::docker::short(&node)
                        );
                    }
                }
                Err(e) => {
                    if self.warned.insert((sender, format!("{node} {addr}"))) {
                        tracing::warn!("announcement from {sender} not accepted: {e}");
                    }
                    if let Some(c) = claims.get_mut(&addr) {
                        c.failures += 1;
                        c.next_try = now + PROOF_RETRY;
                        if c.failures >= MAX_PROOF_FAILURES {
                            claims.remove(&addr);
                        }
                    }
                }
            }
        }
    }

    /// Asks mDNS for every remembered manager's `<hostname>.local`: an active
    /// query the host answers at once, where a service record may take a
    /// while to be re-announced after a move. Each answer is only a claim,
    /// proven like the announced ones.
    async fn resolve_managers(&mut self, memory: &Memory) {
        let discovery = &self.discovery;
        let managers: Vec<(&String, &str)> = memory
            .nodes
            .iter()
            .filter(|(id, n)| n.role == Role::Manager && **id != memory.node_id)
            .map(|(id, n)| (id, n.hostname.as_str()))
            .collect();
        let found = join_all(managers.iter().map(|(_, host)| async move {
            tokio::time::timeout(MANAGER_RESOLVE, discovery.resolve(host)).await
        }))
        .await;
        for ((id, host), r) in managers.into_iter().zip(found) {
            let Ok(Ok(addr)) = r else { continue };
            if self.proven.get(id) == Some(&addr) {
                continue;
            }
            let claims = self.candidates.entry(id.clone()).or_default();
            if let std::collections::btree_map::Entry::Vacant(slot) = claims.entry(addr) {
                tracing::info!(
                    "{host}.local (manager {}) resolves to {addr}; to be proven",
                    crate::docker::short(id)
                );
                slot.insert(Candidate {
                    sender: IpAddr::V4(addr),
                    failures: 0,
                    next_try: std::time::Instant::now(),
                });
            }
        }
    }

    /// Takes in what the re-addressing task said and how it ended.
    async fn collect_readdressing(&mut self, lines: &mut Vec<String>) {
        while let Ok(line) = self.say_rx.try_recv() {
            self.timeline(line, lines);
        }
        let finished = self
            .readdressing
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished());
        if !finished {
            return;
        }
        let Some((name, task)) = self.readdressing.take() else {
            return;
        };
        match task.await {
            Ok(Ok(StepEnd::Done)) => self.not_now.clear(),
            Ok(Ok(StepEnd::NotNow(why))) => {
                self.say_wait(format!("re-addressing {name} waits: {why}"), lines)
            }
            Ok(Err(e)) => {
                self.timeline(
                    format!("re-address {name} failed, to be tried again: {e}"),
                    lines,
                );
                self.not_now.clear();
            }
            Err(e) => tracing::error!("recovery: the re-addressing of {name} crashed: {e}"),
        }
    }

    /// Restarts this host's own dockerd at `addr` with its old address
    /// replaced, as a task taking the re-addressing slot; no lock (there is
    /// no quorum to take one), and the host checks the pin first.
    fn restart_self(
        &mut self,
        memory: &Memory,
        addr: Ipv4Addr,
        stale: Vec<String>,
        swarm: Option<&Arc<dyn Swarm>>,
    ) {
        let (None, Some(swarm), Some(old)) = (
            &self.readdressing,
            swarm,
            plan::remembered_addr(memory, &memory.node_id),
        ) else {
            return;
        };
        let work = Readdressing::ThisHost {
            old,
            new: addr,
            stale,
        };
        self.spawn_readdressing("this host".to_string(), swarm, work);
    }

    /// Runs `work` as the task that takes the re-addressing slot.
    fn spawn_readdressing(&mut self, name: String, swarm: &Arc<dyn Swarm>, work: Readdressing) {
        let (swarm, say) = (swarm.clone(), self.say_tx.clone());
        let done = self.readdress_done.clone();
        let task = tokio::spawn(async move {
            let r = swarm.readdress(work, say).await;
            // A step that ended (or failed) calls for a round at once; a
            // "not now" waits for the next tick (a round a tick, not five a
            // second while a step waits; docs/recovery.md).
            if !matches!(r, Ok(StepEnd::NotNow(_))) {
                done.notify_one();
            }
            r
        });
        self.readdressing = Some((name, task));
    }

    /// Carries out the heartbeat moves of [`plan::Heartbeat`]; a move that
    /// fails is tried again next round (the planner asks for it again).
    async fn heartbeat(
        &mut self,
        moves: Vec<HeartbeatMove>,
        swarm: &dyn Swarm,
        lines: &mut Vec<String>,
    ) {
        let hb = readdress::HEARTBEAT;
        for m in moves {
            match m {
                HeartbeatMove::Raise { leader } => {
                    let what = "raising the dispatcher heartbeat";
                    let hold = swarm.hold_heartbeat(hb, self.host.now_ms());
                    if let Some(held) = bounded(what, hold).await {
                        self.heartbeat.held = true;
                        self.heartbeat.told_leader = leader;
                        if let Some(was) = held.raised_from {
                            self.timeline(readdress::raised_line(was), lines);
                        }
                    }
                }
                HeartbeatMove::Retell { leader } => {
                    let what = "setting the dispatcher heartbeat again";
                    if let Some(changed) = bounded(what, swarm.retouch_heartbeat(hb)).await {
                        if changed {
                            tracing::info!("recovery: dispatcher heartbeat set again for the new leader {leader}");
                        }
                        self.heartbeat.told_leader = leader;
                    }
                }
                HeartbeatMove::PutBack { why, for_down } => {
                    let what = "putting the dispatcher heartbeat back";
                    if let Some(back) = bounded(what, swarm.release_heartbeat(hb)).await {
                        self.heartbeat.maybe_raised = false;
                        self.heartbeat.held = false;
                        self.heartbeat.back_for_down |= for_down;
                        if let Some(p) = back {
                            let line = format!(
                                "dispatcher heartbeat back to {:.0}s{why}",
                                p.as_secs_f64()
                            );
                            self.timeline(line, lines);
                        }
                    }
                }
            }
        }
    }

    /// Keeps which nodes hold the clean-up back (the daemon's state line
    /// and `status` name them): the others are clean already, and the
    /// recovery ends when these are back.
    fn clean_up_waits(&mut self, phase: Phase, mut waiting: Vec<String>) {
        if phase != Phase::CleanUp {
            waiting.clear();
        }
        waiting.sort();
        self.file.waiting = waiting;
    }

    /// Says in the timeline why re-addressing waits, once per reason: a
    /// wait is where a slow recovery's time goes.
    fn say_wait(&mut self, why: String, lines: &mut Vec<String>) {
        if why != self.not_now {
            self.not_now = why.clone();
            self.timeline(why, lines);
        }
    }

    fn timeline(&mut self, line: String, lines: &mut Vec<String>) {
        tracing::info!("recovery: {line}");
        self.file.record(self.host.now_ms(), line.clone());
        lines.push(line);
    }

    /// One round: observe, plan, act. Returns the timeline lines it added.
    pub async fn step(
        &mut self,
        memory: &Memory,
        health: Health,
        swarm: Option<Arc<dyn Swarm>>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        self.collect_readdressing(&mut lines).await;
        let local = self.local_addrs();
        let mine_moved =
            plan::remembered_addr(memory, &memory.node_id).is_some_and(|a| !local.contains(&a));
        self.drop_stale_proofs(memory, mine_moved);
        let healthy = matches!(health, Health::Healthy { .. });
        let peers_moved = self.peers_moved(memory);
        self.heartbeat.note_phase(self.file.recovery.phase);
        let at_rest = self.heartbeat.at_rest(self.file.recovery.phase, &health);
        if let (Some(m), Some(swarm)) = (at_rest, &swarm) {
            self.heartbeat(vec![m], swarm.as_ref(), &mut lines).await;
        }
        if healthy && !mine_moved && !peers_moved && self.file.recovery.phase == Phase::Idle {
            return lines;
        }
        self.discovery.refresh();
        self.resolve_managers(memory).await;
        let own = self.prove_through_own_rules(memory, mine_moved).await;
        let mut obs = self.observe(memory, health, swarm.as_ref(), local).await;
        if mine_moved && !healthy {
            obs.listener_missing = match plan::my_current(&obs, memory) {
                Some(me) => !self.peers.listens(me).await,
                None => false,
            };
        }
        obs.agents = self.read_agents(memory, &obs, own).await;
        let p = plan::plan(&obs, memory, &self.file.recovery, self.agent_port);
        if p.next.started_ms != self.file.recovery.started_ms {
            self.file.clear_timeline();
        }
        let (pushes, batch) = self.take_actions(memory, &obs, &p, swarm.as_ref(), &mut lines);
        if let Some(why) = &p.held {
            self.say_wait(format!("re-addressing waits: {why}"), &mut lines);
        }
        if let (false, None, Some(swarm)) = (batch.is_empty(), &self.readdressing, &swarm) {
            self.start_readdressing(memory, &obs, &p.next, swarm, batch);
        }
        let (held_by, waiting) = push_sets(self.agents.as_ref(), memory, &p, &pushes).await;
        self.clean_up_waits(p.next.phase, waiting);
        if let Some(swarm) = &swarm {
            let hostname = |n: &str| hostname_of(memory, n);
            let moves =
                self.heartbeat
                    .moves(p.next.phase, &obs.health, &held_by, &self.down, hostname);
            self.heartbeat(moves, swarm.as_ref(), &mut lines).await;
        }
        if p.next != self.file.recovery {
            self.file.recovery = p.next;
            self.save();
        }
        lines
    }

    /// Drops the proofs that no longer stand (see [`stale_proofs`]).
    fn drop_stale_proofs(&mut self, memory: &Memory, mine_moved: bool) {
        for (node, why) in stale_proofs(&self.proven, &self.proof_basis, memory, mine_moved) {
            if let Some(addr) = self.proven.remove(&node) {
                self.proof_basis.remove(&node);
                tracing::info!(
                    "recovery: the proof of manager {} at {addr} is stale ({why}); to be proven again",
                    crate::docker::short(&node),
                );
            }
        }
    }

    /// Proves the claimed managers, through this host's own rewrites; what
    /// this host's agent said. Proving waits while those rules cannot be
    /// read: a proof through a rule to a manager's *old* address would be
    /// wrong (docs/recovery.md).
    async fn prove_through_own_rules(
        &mut self,
        memory: &Memory,
        mine_moved: bool,
    ) -> Option<AgentStatus> {
        match self.local_rules(memory).await {
            Ok(status) => {
                let rewritten: Vec<Ipv4Addr> = status.rewrites.iter().map(|r| r.from).collect();
                if std::mem::take(&mut self.agent_silent) {
                    tracing::info!("recovery: this host's agent answers again");
                }
                self.proven.retain(|_, a| !rewritten.contains(a));
                let proven = &self.proven;
                self.proof_basis.retain(|n, _| proven.contains_key(n));
                self.prove(memory, &rewritten, mine_moved).await;
                Some(status)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.agent_silent, true) {
                    tracing::warn!(
                        "recovery: this host's agent does not answer ({e}); no claim is proven until it does"
                    );
                }
                None
            }
        }
    }

    /// What the planner sees this round, but for the agents' answers and
    /// the missing listener.
    async fn observe(
        &self,
        memory: &Memory,
        health: Health,
        swarm: Option<&Arc<dyn Swarm>>,
        local: Vec<Ipv4Addr>,
    ) -> Observation {
        let (pending, restarting) = match (swarm, &health) {
            (Some(swarm), Health::Healthy { .. }) => marks(swarm.as_ref()).await.unzip(),
            _ => (Some(BTreeMap::new()), Some(BTreeSet::new())),
        };
        // Only a recovery restarts nodes; what they run is read for it alone.
        let running = match (swarm, &health, self.file.recovery.phase) {
            (_, _, Phase::Idle) => None,
            (Some(swarm), Health::Healthy { .. }, _) => running(swarm.as_ref()).await,
            _ => None,
        };
        Observation {
            now_ms: self.host.now_ms(),
            health,
            local,
            proven: self.proven.clone(),
            agents: BTreeMap::new(),
            not_ready: self.not_ready.clone(),
            marks_unknown: pending.is_none(),
            pending: pending.unwrap_or_default(),
            listener_missing: false,
            restarting: restarting.unwrap_or_default(),
            running,
            unpinned: memory
                .nodes
                .iter()
                .filter(|(_, n)| n.agent.is_none())
                .map(|(id, _)| id.clone())
                .collect(),
        }
    }

    /// Carries out the plan's timeline lines and this host's own restart;
    /// the sets to push and the re-addressing batch, for the caller.
    fn take_actions(
        &mut self,
        memory: &Memory,
        obs: &Observation,
        p: &plan::Plan,
        swarm: Option<&Arc<dyn Swarm>>,
        lines: &mut Vec<String>,
    ) -> (Vec<Push>, Vec<readdress::Target>) {
        let mut pushes = Vec::new();
        let mut batch = Vec::new();
        for a in &p.actions {
            match a.clone() {
                Action::Timeline(line) => {
                    tracing::info!("recovery: {line}");
                    self.file.record(obs.now_ms, line.clone());
                    lines.push(line);
                }
                Action::SetRewrites {
                    node,
                    endpoint,
                    generation,
                    rewrites,
                    replaces,
                } => pushes.push(Push {
                    node,
                    endpoint,
                    generation,
                    rewrites,
                    replaces,
                }),
                Action::Readdress { node, from, to } => batch.push(readdress::Target {
                    hostname: hostname_of(memory, &node),
                    node,
                    from,
                    to,
                    how: readdress::How::Manager,
                }),
                Action::Restart { node, addr, stale } if node == memory.node_id => {
                    self.restart_self(memory, addr, stale, swarm);
                }
                Action::Restart { node, addr, stale } => batch.push(readdress::Target {
                    hostname: hostname_of(memory, &node),
                    node,
                    from: addr,
                    to: addr,
                    how: readdress::How::Restart { stale },
                }),
            }
        }
        (pushes, batch)
    }

    /// Starts the re-addressing `batch` as a task that takes the slot.
    fn start_readdressing(
        &mut self,
        memory: &Memory,
        obs: &Observation,
        next: &Recovery,
        swarm: &Arc<dyn Swarm>,
        batch: Vec<readdress::Target>,
    ) {
        let mut managers: BTreeMap<String, Ipv4Addr> = plan::current_addrs(obs, memory)
            .into_iter()
            .filter(|(id, _)| {
                memory
                    .nodes
                    .get(id)
                    .is_some_and(|n| n.role == Role::Manager)
            })
            .collect();
        // A demoted manager is where its mark says.
        for (id, (_, to)) in &obs.pending {
            managers.entry(id.clone()).or_insert(*to);
        }
        let map = plan::moved(next, &plan::current_addrs(obs, memory));
        let name = batch
            .iter()
            .map(|t| t.hostname.as_str())
            .collect::<Vec<_>>()
            .join(" and ");
        let work = Readdressing::Nodes {
            managers,
            map,
            targets: batch,
        };
        self.spawn_readdressing(name, swarm, work);
    }

    /// The addresses this host's own agent rewrites now; an error (naming
    /// the agent's address) when it does not answer: its rules are still in
    /// force then, just unknown.
    async fn local_rules(&self, memory: &Memory) -> Result<AgentStatus, TellError> {
        let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, self.agent_port));
        let body = CommandBody::Status;
        self.agents
            .tell(memory, &memory.node_id, endpoint, body)
            .await
    }

    /// Asks every node's agent what it has in force, at its current address:
    /// proven managers, this host, workers found by `<hostname>.local`.
    /// `own`: what this host's agent said this round (asked once, not
    /// twice: a busy agent falls behind).
    async fn read_agents(
        &self,
        memory: &Memory,
        obs: &Observation,
        own: Option<AgentStatus>,
    ) -> BTreeMap<String, AgentSeen> {
        let mut where_: Vec<(String, Ipv4Addr)> =
            plan::current_addrs(obs, memory).into_iter().collect();
        let mut seen = BTreeMap::new();
        if let (Some(st), Some(addr)) = (own, plan::my_current(obs, memory)) {
            where_.retain(|(node, _)| *node != memory.node_id);
            seen.insert(
                memory.node_id.clone(),
                AgentSeen {
                    addr,
                    generation: st.generation,
                    rewrites: st.rewrites,
                    dockerd: st.dockerd,
                },
            );
        }
        {
            // A manager demoted for re-addressing is a worker for now: it is
            // found the way a worker is.
            let discovery = &self.discovery;
            let workers: Vec<(&String, &str)> = memory
                .nodes
                .iter()
                .filter(|(id, n)| n.role == Role::Worker || obs.pending.contains_key(*id))
                .map(|(id, n)| (id, n.hostname.as_str()))
                .collect();
            let found = join_all(workers.iter().map(|(_, host)| async move {
                tokio::time::timeout(WORKER_RESOLVE, discovery.resolve(host)).await
            }))
            .await;
            for ((id, _), r) in workers.into_iter().zip(found) {
                match r {
                    Ok(Ok(addr)) => where_.push((id.clone(), addr)),
                    // A worker on another link (it did not move, or moved
                    // elsewhere) is not heard over mDNS: try where it was.
                    // Only its pinned key can sign the answer.
                    _ => {
                        if let Some(addr) = plan::remembered_addr(memory, id) {
                            where_.push((id.clone(), addr));
                        }
                    }
                }
            }
        }
        let agents = &self.agents;
        let answers = join_all(where_.iter().map(|(node, addr)| {
            let endpoint = SocketAddr::from((*addr, self.agent_port));
            async move {
                let body = CommandBody::Status;
                agents.tell(memory, node, endpoint, body).await.ok()
            }
        }))
        .await;
        for ((node, addr), st) in where_.into_iter().zip(answers) {
            if let Some(s) = st {
                seen.insert(
                    node,
                    AgentSeen {
                        addr,
                        generation: s.generation,
                        rewrites: s.rewrites,
                        dockerd: s.dockerd,
                    },
                );
            }
        }
        seen
    }

    fn save(&self) {
        if let Err(e) = self.store.save(&self.file) {
            tracing::error!("{e}");
        }
    }
}

/// A call to Docker bounded to 10 s; `None` (logged, tried again next
/// round) when it fails or takes longer.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, crate::docker::DockerError>>,
) -> Option<T> {
    bounded_for(Duration::from_secs(10), what, call).await
}

async fn bounded_for<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, crate::docker::DockerError>>,
) -> Option<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!("recovery: {e}; tried again next round");
            None
        }
        Err(_) => {
            tracing::warn!(
                "recovery: {what} took over {}s; tried again next round",
                limit.as_secs()
            );
            None
        }
    }
}

/// The re-address marks (managers half-way) and the restart marks (nodes
/// restarted in place); `None` from [`marks`] if they cannot be read (the
/// round after tries again; meanwhile re-addressing waits).
type Marks = (BTreeMap<String, (Ipv4Addr, Ipv4Addr)>, BTreeSet<String>);

async fn marks(docker: &dyn Swarm) -> Option<Marks> {
    let both = async {
        Ok::<_, crate::docker::DockerError>((
            docker.readdress_marks().await?,
            docker.restart_marks().await?,
        ))
    };
    bounded_for(Duration::from_secs(5), "reading the re-address marks", both).await
}

/// The services each node runs a task of; `None` if Docker errs or takes
/// more than 5 s (nodes are then restarted one at a time).
async fn running(docker: &dyn Swarm) -> Option<BTreeMap<String, BTreeSet<String>>> {
    bounded_for(
        Duration::from_secs(5),
        "listing the running tasks",
        docker.running_tasks(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::NodeMemory;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    /// m1 (this manager) and m3, managers at 10.0.1.1 and 10.0.1.3.
    fn memory(m3_at: &str) -> Memory {
        let mut m = Memory {
            node_id: "m1".into(),
            cluster_id: "c".into(),
            ..Memory::default()
        };
        for (id, a) in [("m1", "10.0.1.1"), ("m3", m3_at)] {
            m.nodes.insert(
                id.into(),
                NodeMemory {
                    hostname: id.into(),
                    role: Role::Manager,
                    availability: "active".into(),
                    addr: a.into(),
                    manager_addr: Some(format!("{a}:2377")),
                    arch: "x86_64".into(),
                    agent: None,
                },
            );
        }
        m
    }

    #[test]
    fn a_proof_older_than_docker_s_record_or_this_host_s_move_is_stale() {
        let before = Basis {
            remembered: Some(ip("10.0.1.3")),
            mine_moved: false,
        };
        let basis = BTreeMap::from([("m3".to_string(), before)]);
        let at_old = BTreeMap::from([("m3".to_string(), ip("10.0.1.3"))]);
        let at_new = BTreeMap::from([("m3".to_string(), ip("10.0.2.3"))]);
        // Nothing changed: the proof stands, wherever it is.
        assert!(stale_proofs(&at_old, &basis, &memory("10.0.1.3"), false).is_empty());
        assert!(stale_proofs(&at_new, &basis, &memory("10.0.1.3"), false).is_empty());
        // Docker re-addressed m3 to where it was proven: it stands.
        assert!(stale_proofs(&at_new, &basis, &memory("10.0.2.3"), false).is_empty());
        // Docker records m3 at its new address, the proof is of the old one
        // (the case that cut m3 off): stale.
        let stale = stale_proofs(&at_old, &basis, &memory("10.0.2.3"), false);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0, "m3");
        assert!(stale[0].1.contains("10.0.2.3"), "{stale:?}");
        // This host moved since the proof: stale; a proof made after: not.
        assert_eq!(
            stale_proofs(&at_old, &basis, &memory("10.0.1.3"), true).len(),
            1
        );
        let after = BTreeMap::from([(
            "m3".to_string(),
            Basis {
                mine_moved: true,
                ..before
            },
        )]);
        assert!(stale_proofs(&at_new, &after, &memory("10.0.1.3"), true).is_empty());
    }
}

#[cfg(test)]
mod scenarios;
