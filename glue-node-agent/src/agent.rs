//! The agent's core: takes an envelope, checks it, changes the node only as
//! told, and answers with a reply signed by the agent's own key. The HTTP
//! server around it stays thin.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::dockerd::DockerdWatch;
use crate::netfilter::{self, Netfilter};
use crate::overlay::{self, Tunnels};
use crate::protocol::{
    open_command, AgentStatus, CommandBody, CommandContext, Outcome, PublicKey, Refusal,
    RefusalCode, Reply, Rewrite, SigningKey, TrustSet, VERSION,
};
use crate::reset::{self, Resetter};
use crate::rules::Ports;
use crate::state::{AgentState, Loaded, StateError, StateStore};

/// The swarm node this agent serves; written by the installing manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node: String,
    pub cluster: String,
}

pub struct Agent {
    key: SigningKey,
    identity: Option<Identity>,
    trust_dir: PathBuf,
    ports: Ports,
    store: StateStore,
    state: Mutex<AgentState>,
    /// One application to the kernel at a time, always of the newest desired
    /// state. Holds what this agent last saw (none before its first apply).
    applying: Mutex<Option<LastSeen>>,
    nf: Box<dyn Netfilter>,
    resetter: Box<dyn Resetter>,
    /// This node's dockerd, reported in every status (none in tests that
    /// have no dockerd).
    dockerd: Option<DockerdWatch>,
    /// Docker's overlay tunnels, kept open to moved peers while a set is in
    /// force (none in tests that have no dockerd).
    tunnels: Option<TunnelKeeper>,
}

struct TunnelKeeper {
    tunnels: Box<dyn Tunnels>,
    /// Learning is known to be on again everywhere since the empty set: no
    /// need to look until a set is in force again.
    restored: AtomicBool,
    /// Held through a pass (the 1 s tick and a set's apply may overlap: a
    /// pass that read an older set must not undo a newer one's); the last
    /// pass's errors, logged when they change.
    pass: Mutex<String>,
}

/// What the agent saw at its last apply or check.
struct LastSeen {
    /// The set in force: tells a change the agent makes from rules altered
    /// under it.
    rewrites: Vec<Rewrite>,
    /// This host's IPv4 addresses (`None`: could not be read).
    local: Option<BTreeSet<Ipv4Addr>>,
}

/// This host's IPv4 addresses (of the network namespace the caller runs in).
fn local_ipv4() -> Option<BTreeSet<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    Some(
        addrs
            .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
            .collect(),
    )
}

/// What handling one request produced: the HTTP status and the signed reply,
/// plus a line for the log.
#[derive(Debug)]
pub struct Handled {
    pub http_status: u16,
    pub reply: Reply,
    pub log: String,
}

/// Everything an agent is made of but its kernel-facing parts.
pub struct Setup {
    pub key: SigningKey,
    pub identity: Option<Identity>,
    pub trust_dir: PathBuf,
    pub ports: Ports,
    pub state_path: PathBuf,
}

impl Agent {
    /// Loads the persisted state (a corrupt file is moved aside, see
    /// [`Loaded`]) and builds the agent; it does not touch the kernel yet.
    pub fn new(
        setup: Setup,
        nf: Box<dyn Netfilter>,
        resetter: Box<dyn Resetter>,
    ) -> Result<(Self, Loaded), StateError> {
        let store = StateStore::new(setup.state_path);
        let (state, loaded) = store.load()?;
        Ok((
            Agent {
                key: setup.key,
                identity: setup.identity,
                trust_dir: setup.trust_dir,
                ports: setup.ports,
                store,
                state: Mutex::new(state),
                applying: Mutex::new(None),
                nf,
                resetter,
                dockerd: None,
                tunnels: None,
            },
            loaded,
        ))
    }

    /// Reports what `watch` reads of this node's dockerd in every status.
    pub fn with_dockerd(mut self, watch: DockerdWatch) -> Self {
        self.dockerd = Some(watch);
        self
    }

    /// Keeps `tunnels` open to moved peers while a set is in force.
    pub fn with_tunnels(mut self, tunnels: Box<dyn Tunnels>) -> Self {
        self.tunnels = Some(TunnelKeeper {
            tunnels,
            restored: AtomicBool::new(false),
            pass: Mutex::new(String::new()),
        });
        self
    }

    /// Turns learning off on every overlay tunnel while a set is in force,
    /// and back on with the empty set (see [`overlay`]). Cheap when there
    /// is nothing to do; run every second, since a dockerd that restarts
    /// during a recovery makes its tunnels anew.
    pub fn keep_tunnels(&self) {
        let Some(k) = &self.tunnels else { return };
        let Ok(mut last_errors) = k.pass.lock() else {
            return;
        };
        let in_force = !self.state().rewrites.is_empty();
        if !in_force && k.restored.load(Ordering::SeqCst) {
            return;
        }
        let held = overlay::hold(k.tunnels.as_ref(), !in_force);
        for t in &held.changed {
            tracing::info!(
                "overlay tunnel {} in {}: learning {}",
                t.device,
                t.netns.display(),
                if in_force {
                    "off while rewrites are in force"
                } else {
                    "on again"
                }
            );
        }
        let errors: Vec<String> = held.errors.iter().map(ToString::to_string).collect();
        let errors = errors.join("; ");
        if *last_errors != errors && !errors.is_empty() {
            tracing::warn!("overlay tunnels: {errors}");
        }
        k.restored
            .store(!in_force && errors.is_empty(), Ordering::SeqCst);
        *last_errors = errors;
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    fn state(&self) -> AgentState {
        // A panic under the lock left the state as it was: still the truth.
        let state = self.state.lock();
        state
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn status(&self) -> AgentStatus {
        let state = self.state();
        AgentStatus {
            agent_version: crate::VERSION.to_string(),
            generation: state.generation,
            in_force: netfilter::in_force(self.nf.as_ref(), &state.rewrites, &self.ports)
                .unwrap_or(false),
            rewrites: state.rewrites,
            trusted_keys: load_trust_dir(&self.trust_dir).0.len(),
            dockerd: self
                .dockerd
                .as_ref()
                .and_then(|d| d.current(crate::unix_ms())),
        }
    }

    fn reply(&self, in_reply_to: u64, now: u64, outcome: Outcome) -> Reply {
        let (node, cluster) = self
            .identity
            .as_ref()
            .map(|i| (i.node.clone(), i.cluster.clone()))
            .unwrap_or_default();
        Reply {
            v: VERSION,
            node,
            cluster,
            in_reply_to,
            at: now,
            outcome,
        }
    }

    fn refuse(&self, in_reply_to: u64, now: u64, refusal: Refusal) -> Handled {
        let http_status = match refusal.code {
            RefusalCode::Oversized => 413,
            RefusalCode::UntrustedKey | RefusalCode::BadSignature | RefusalCode::IssuerMismatch => {
                403
            }
            RefusalCode::Replayed | RefusalCode::StaleGeneration => 409,
            RefusalCode::NotEnrolled => 503,
            RefusalCode::Internal => 500,
            _ => 400,
        };
        Handled {
            http_status,
            log: format!("refused: {refusal}"),
            reply: self.reply(in_reply_to, now, Outcome::Refused { refusal }),
        }
    }

    /// A signed status with no command (GET /v1/status).
    pub fn status_reply(&self, now: u64) -> Reply {
        self.reply(
            0,
            now,
            Outcome::Status {
                status: self.status(),
            },
        )
    }

    /// Handles one command envelope.
    pub fn handle(&self, bytes: &[u8], now: u64) -> Handled {
        let Some(identity) = self.identity.clone() else {
            let why = "this agent has no node and cluster ID yet (agent.toml)";
            return self.refuse(0, now, Refusal::new(RefusalCode::NotEnrolled, why));
        };
        let (trusted, _) = load_trust_dir(&self.trust_dir);
        let Ok(mut state) = self.state.lock() else {
            let why = "state lock poisoned";
            return self.refuse(0, now, Refusal::new(RefusalCode::Internal, why));
        };
        let last_seq = |k: &PublicKey| state.last_seq_of(k);
        let ctx = CommandContext {
            cluster: &identity.cluster,
            node: &identity.node,
            trusted: &trusted,
            now,
            last_seq: &last_seq,
        };
        let cmd = match open_command(bytes, &ctx) {
            Ok(c) => c,
            Err(refusal) => {
                drop(state);
                return self.refuse(0, now, refusal);
            }
        };
        let mut next = state.clone();
        next.last_seq.insert(cmd.issuer.to_base64(), cmd.seq);
        let issuer = cmd.issuer.short();
        let (outcome, log) = match cmd.body {
            CommandBody::Status => {
                // The sequence is spent even for a status: a replay of it is refused too.
                let saved = self.commit(&mut state, next);
                drop(state);
                if let Err(refusal) = saved {
                    return self.refuse(cmd.seq, now, refusal);
                }
                let status = self.status();
                let log = format!("status asked by {issuer} (seq {})", cmd.seq);
                (Outcome::Status { status }, log)
            }
            CommandBody::SetRewrites {
                generation,
                rewrites,
                replaces,
            } => {
                let started = std::time::Instant::now();
                match self.set_rewrites(state, next, generation, rewrites, replaces) {
                    Ok((changed, count)) => (
                        Outcome::Applied {
                            status: self.status(),
                        },
                        format!(
                            "set from {issuer} (seq {}): generation {generation}, {count} rewrites{} ({:.2}s)",
                            cmd.seq,
                            if changed { "" } else { ", already in force" },
                            started.elapsed().as_secs_f64()
                        ),
                    ),
                    Err(refusal) => return self.refuse(cmd.seq, now, refusal),
                }
            }
            CommandBody::Unsupported => {
                drop(state);
                return self.refuse(
                    cmd.seq,
                    now,
                    Refusal::new(RefusalCode::UnsupportedCommand, "unknown command"),
                );
            }
        };
        Handled {
            http_status: 200,
            reply: self.reply(cmd.seq, now, outcome),
            log,
        }
    }

    /// Makes a set the desired one (refused if stale), saved before it is
    /// put in force; whether the kernel had to change, and how many
    /// rewrites the set has.
    fn set_rewrites(
        &self,
        mut state: std::sync::MutexGuard<'_, AgentState>,
        mut next: AgentState,
        generation: u64,
        mut rewrites: Vec<Rewrite>,
        replaces: Option<u64>,
    ) -> Result<(bool, usize), Refusal> {
        rewrites.sort();
        if let Some(why) = stale_set(&state, generation, &rewrites, replaces) {
            return Err(Refusal::new(RefusalCode::StaleGeneration, why));
        }
        if rewrites != state.rewrites {
            // Connections to every address whose rule is added, changed or
            // removed must end; owed until they did.
            let mut pending: BTreeSet<Ipv4Addr> = state.pending_reset.iter().copied().collect();
            pending.extend(rewritten_differently(&state.rewrites, &rewrites));
            next.pending_reset = pending.into_iter().collect();
        }
        let count = rewrites.len();
        next.generation = generation;
        next.rewrites = rewrites;
        // Desired state first: if the agent dies after this, it re-applies
        // the set when it starts.
        let saved = self.commit(&mut state, next);
        drop(state);
        saved?;
        let changed = self
            .enforce()
            .map_err(|e| Refusal::new(RefusalCode::Internal, e.to_string()))?;
        Ok((changed, count))
    }

    /// Saves `next` and makes it the state; on failure nothing changes.
    fn commit(&self, state: &mut AgentState, next: AgentState) -> Result<(), Refusal> {
        self.store.save(&next).map_err(|e| {
            Refusal::new(
                RefusalCode::Internal,
                format!("could not persist the state: {e}"),
            )
        })?;
        *state = next;
        Ok(())
    }

    /// Puts the newest desired set in force, then ends the connections still
    /// pending a reset, and those to addresses whose rule differs from the
    /// set last in force. Connections through a rule that stayed the same
    /// are left alone, unless:
    /// - the rules were altered under the agent (a firewall reload, a
    ///   reboot), or this is its first apply since it started: flows set up
    ///   meanwhile may have bypassed the rewrite;
    /// - this host lost an address since the last apply or check (it moved):
    ///   its connections from that address are dead, and dockerd keeps
    ///   sending on them (a lab manager that came back and then moved had
    ///   every raft message to the leader fail on one, for the 4 minutes
    ///   until the lab was torn down).
    ///
    /// Then connections to every rewritten address end, and only then are
    /// the overlay tunnels gone through: a process per overlay namespace,
    /// while raft's connections wait for their reset. Returns whether the
    /// kernel had to change.
    fn enforce(&self) -> Result<bool, EnforceError> {
        let enforced = self.enforce_rules();
        self.keep_tunnels();
        enforced
    }

    fn enforce_rules(&self) -> Result<bool, EnforceError> {
        let waited = std::time::Instant::now();
        let mut last = self
            .applying
            .lock()
            .map_err(|_| EnforceError::Poisoned("apply"))?;
        let started = std::time::Instant::now();
        let desired = self.state();
        let local = local_ipv4();
        let applied = netfilter::apply(
            self.nf.as_ref(),
            &desired.rewrites,
            last.as_ref().map(|l| l.rewrites.as_slice()),
            &self.ports,
        )?;
        let lost: Vec<Ipv4Addr> = match (last.as_ref().and_then(|l| l.local.as_ref()), &local) {
            (Some(before), Some(now)) => before.difference(now).copied().collect(),
            _ => Vec::new(),
        };
        let mut olds: BTreeSet<Ipv4Addr> = desired.pending_reset.iter().copied().collect();
        let every = desired.rewrites.iter().map(|r| r.from);
        match (applied, last.as_ref()) {
            (netfilter::Applied::AlreadyInForce, _) => {}
            (netfilter::Applied::Changed, Some(before)) => {
                olds.extend(rewritten_differently(&before.rewrites, &desired.rewrites));
            }
            // A repair, or the first apply since the agent started (after a
            // reboot, say): what went through meanwhile is not known.
            _ => olds.extend(every.clone()),
        }
        if !lost.is_empty() && !desired.rewrites.is_empty() {
            tracing::info!(
                "this host no longer has {lost:?}: ending its connections to every rewritten address"
            );
            olds.extend(every);
        }
        let changed = applied != netfilter::Applied::AlreadyInForce;
        *last = Some(LastSeen {
            rewrites: desired.rewrites.clone(),
            local,
        });
        let kernel = started.elapsed();
        // Where a slow apply spent its time (a manager waits 2 s for the
        // answer to a set).
        let slow = |resets: std::time::Duration| {
            let total = waited.elapsed();
            if total > std::time::Duration::from_secs(1) {
                tracing::warn!(
                    "putting generation {} in force took {:.2}s: {:.2}s waiting for an earlier apply, {:.2}s for the nat table, {:.2}s ending old connections",
                    desired.generation,
                    total.as_secs_f64(),
                    (started - waited).as_secs_f64(),
                    kernel.as_secs_f64(),
                    resets.as_secs_f64()
                );
            }
        };
        if olds.is_empty() {
            slow(std::time::Duration::ZERO);
            return Ok(changed);
        }
        // Owed before it is tried, whatever asked for it (a set, a repair, a
        // lost address): if the agent is killed or the reset fails, the
        // next check, or a restart, retries it.
        if let Err(e) = self.change_owed_resets(|owed| owed.extend(&olds)) {
            tracing::warn!("{e}");
        }
        let resetting = std::time::Instant::now();
        let errors = reset::reset_after_change(self.resetter.as_ref(), olds.iter().copied());
        slow(resetting.elapsed());
        if !errors.is_empty() {
            return Err(EnforceError::StaleConnections(errors));
        }
        self.change_owed_resets(|owed| owed.retain(|a| !olds.contains(a)))?;
        Ok(changed)
    }

    /// Changes the addresses owed a reset, persisted (only when they change).
    fn change_owed_resets(
        &self,
        change: impl FnOnce(&mut BTreeSet<Ipv4Addr>),
    ) -> Result<(), EnforceError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| EnforceError::Poisoned("state"))?;
        let mut owed: BTreeSet<Ipv4Addr> = state.pending_reset.iter().copied().collect();
        change(&mut owed);
        let owed: Vec<Ipv4Addr> = owed.into_iter().collect();
        if owed == state.pending_reset {
            return Ok(());
        }
        let mut next = state.clone();
        next.pending_reset = owed;
        self.commit(&mut state, next)
            .map_err(|r| EnforceError::Owe(r.reason))
    }

    /// Re-applies the desired set if something (a dockerd or firewalld
    /// restart) changed the rules, and retries pending resets. Returns whether
    /// the kernel had to change.
    pub fn reassert(&self) -> Result<bool, EnforceError> {
        self.enforce()
    }

    pub fn state_path(&self) -> &Path {
        self.store.path()
    }
}

/// Why the desired rules could not be put or kept in force.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("the {0} lock is poisoned")]
    Poisoned(&'static str),
    #[error(transparent)]
    Netfilter(#[from] netfilter::NetfilterError),
    #[error(
        "rules are in force but stale connections remain (retried at the next check): {}",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    StaleConnections(Vec<reset::ResetError>),
    #[error("recording the addresses owed a reset: {0}")]
    Owe(String),
}

/// Why a set does not supersede the one in force, if it does not: the set
/// in force changed since the sender read it, or its generation is older
/// (or the same with other rewrites).
fn stale_set(
    state: &AgentState,
    generation: u64,
    rewrites: &[Rewrite],
    replaces: Option<u64>,
) -> Option<String> {
    if let Some(read) = replaces.filter(|r| *r != state.generation) {
        Some(format!(
            "the set in force changed since it was read: generation {}, read as {read}",
            state.generation
        ))
    } else if generation < state.generation
        || (generation == state.generation && rewrites != state.rewrites)
    {
        Some(format!(
            "generation {generation} does not supersede the set in force (generation {})",
            state.generation
        ))
    } else {
        None
    }
}

/// The old addresses whose rule `after` adds, changes or removes against
/// `before`.
fn rewritten_differently(before: &[Rewrite], after: &[Rewrite]) -> BTreeSet<Ipv4Addr> {
    let before: BTreeSet<&Rewrite> = before.iter().collect();
    let after: BTreeSet<&Rewrite> = after.iter().collect();
    before
        .symmetric_difference(&after)
        .map(|r| r.from)
        .collect()
}

/// Loads every `*.pub` file of the trust directory: one base64 Ed25519 key
/// each (optionally after an `ed25519 ` prefix, with a comment after it).
/// Returns the keys and a problem per unreadable or invalid file.
pub fn load_trust_dir(dir: &Path) -> (TrustSet, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return (TrustSet::default(), problems);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pub") {
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(text) => {
                let key = text
                    .split_whitespace()
                    .find(|w| *w != "ed25519")
                    .and_then(PublicKey::from_base64);
                match key {
                    Some(k) => keys.push(k),
                    None => problems.push(format!("{}: not an Ed25519 public key", path.display())),
                }
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    (TrustSet::new(keys), problems)
}

pub use glue_protocol::trust_file_contents;
