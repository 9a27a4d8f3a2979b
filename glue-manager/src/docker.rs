//! Docker, through bollard over the local socket: what the swarm looks like,
//! the registry of glue-managers, the swarm lock and the SSH key job.
//!
//! Docker configs would be the natural home of the registry and the lock, but
//! bollard has no configs API; secrets are raft objects too, their creation is
//! atomic by name, and their labels can be read by every manager. Their data
//! is a constant: nothing secret is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use bollard::models::{
    Mount, MountTypeEnum, NodeSpecRoleEnum, SecretSpec, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicatedJob, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    EventsOptions, ListNodesOptions, ListSecretsOptions, ListServicesOptions, ListTasksOptions,
};
use bollard::Docker;
use futures_util::Stream;
use glue_protocol::PublicKey;

use crate::memory::{ManagerKeys, Role};

pub const LABEL_KIND: &str = "io.swarm-glue.kind";
pub const LABEL_NODE: &str = "io.swarm-glue.node";
pub const LABEL_ISSUER: &str = "io.swarm-glue.issuer";
const LABEL_SIGNING: &str = "io.swarm-glue.signing-key";
const LABEL_SSH: &str = "io.swarm-glue.ssh-key";
const LABEL_HOLDER: &str = "io.swarm-glue.holder";
const LABEL_EXPIRES: &str = "io.swarm-glue.expires";
pub const REGISTRY_PREFIX: &str = "swarm-glue-manager-";
pub const LOCK_PREFIX: &str = "swarm-glue-lock-";
pub const JOB_PREFIX: &str = "swarm-glue-sshkey-";
pub const READDRESS_PREFIX: &str = "swarm-glue-readdress-";
/// A node whose dockerd is being restarted in place (see readdress).
pub const RESTART_PREFIX: &str = "swarm-glue-restart-";
const LABEL_FROM: &str = "io.swarm-glue.from";
const LABEL_TO: &str = "io.swarm-glue.to";
/// The secret that says swarm-glue raised the dispatcher heartbeat, and
/// from what: one per swarm.
pub const HEARTBEAT_MARK: &str = "swarm-glue-heartbeat";
const LABEL_ORIGINAL: &str = "io.swarm-glue.original-ns";
const LABEL_SINCE: &str = "io.swarm-glue.since-ms";
/// What [`DockerApi::retouch_heartbeat`] adds and takes away in turn.
const RETOUCH: Duration = Duration::from_secs(1);
/// Docker's own default, for a swarm spec that does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Docker at {socket}: {message}")]
    Unreachable { socket: String, message: String },
    #[error("Docker: {what}: {message}")]
    Call { what: String, message: String },
}

fn call(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let what = what.into();
    move |e| DockerError::Call {
        what,
        message: e.to_string(),
    }
}

fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// One node as the swarm's managers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub availability: String,
    pub state: String,
    pub addr: String,
    pub manager_addr: Option<String>,
    pub leader: bool,
    /// A manager's reachability as raft sees it ("reachable", "unreachable").
    pub reachability: String,
    pub arch: String,
}

/// What this Docker daemon says about the swarm it is part of.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub node_id: String,
    pub local_state: String,
    pub cluster_id: String,
    /// This node is a manager and the swarm answers (it has a leader).
    pub control_available: bool,
    pub error: String,
    pub nodes: Vec<NodeView>,
    pub root_ca_pem: String,
}

#[derive(Clone)]
pub struct DockerApi {
    docker: Docker,
    socket: String,
    pub api_version: String,
}

impl DockerApi {
    /// Connects and negotiates the API version (docker.io 20.10 speaks 1.41).
    pub async fn connect(socket: &Path) -> Result<DockerApi, DockerError> {
        let socket = socket.display().to_string();
        let unreachable = |message: String| DockerError::Unreachable {
            socket: socket.clone(),
            message,
        };
        let docker = Docker::connect_with_unix(&socket, 30, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let api_version = docker.client_version().to_string();
        Ok(DockerApi {
            docker,
            socket,
            api_version,
        })
    }

    /// A client for `socket` that has asked the daemon nothing: with no
    /// daemon there, every call fails as it does when Docker is down.
    #[cfg(test)]
    pub fn unconnected(socket: &Path) -> Result<DockerApi, DockerError> {
        let socket = socket.display().to_string();
        let docker =
            Docker::connect_with_unix(&socket, 1, bollard::API_DEFAULT_VERSION).map_err(|e| {
                DockerError::Unreachable {
                    socket: socket.clone(),
                    message: e.to_string(),
                }
            })?;
        let api_version = docker.client_version().to_string();
        Ok(DockerApi {
            docker,
            socket,
            api_version,
        })
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    pub async fn snapshot(&self) -> Result<Snapshot, DockerError> {
        // A manager whose swarm lost its leader can take a long time to
        // answer even `info`: that is a stuck swarm, not a Docker gone.
        let info = match tokio::time::timeout(Duration::from_secs(2), self.docker.info()).await {
            Ok(r) => r.map_err(|e| DockerError::Unreachable {
                socket: self.socket.clone(),
                message: e.to_string(),
            })?,
            Err(_) => {
                return Ok(Snapshot {
                    node_id: String::new(),
                    local_state: "active".into(),
                    cluster_id: String::new(),
                    control_available: false,
                    error: "docker info: no answer within 2s".into(),
                    nodes: Vec::new(),
                    root_ca_pem: String::new(),
                })
            }
        };
        let swarm = info.swarm.unwrap_or_default();
        let mut snap = Snapshot {
            node_id: swarm.node_id.unwrap_or_default(),
            local_state: swarm
                .local_node_state
                .map(|s| s.to_string())
                .unwrap_or_default(),
            cluster_id: swarm.cluster.and_then(|c| c.id).unwrap_or_default(),
            control_available: swarm.control_available.unwrap_or(false),
            error: swarm.error.unwrap_or_default(),
            nodes: Vec::new(),
            root_ca_pem: String::new(),
        };
        if !snap.control_available {
            return Ok(snap);
        }
        // A manager whose swarm has no leader still says control_available;
        // these calls then fail and the snapshot says so.
        // Without a leader the call may hang until raft gives up.
        let nodes = tokio::time::timeout(
            Duration::from_secs(3),
            self.docker.list_nodes(None::<ListNodesOptions>),
        )
        .await;
        match nodes {
            Ok(Ok(nodes)) => snap.nodes = nodes.into_iter().filter_map(node_view).collect(),
            Ok(Err(e)) => {
                snap.control_available = false;
                snap.error = format!("listing nodes: {e}");
                return Ok(snap);
            }
            Err(_) => {
                snap.control_available = false;
                snap.error = "listing nodes: no answer within 3s".into();
                return Ok(snap);
            }
        }
        let swarm =
            match tokio::time::timeout(Duration::from_secs(3), self.docker.inspect_swarm()).await {
                Ok(r) => r.map_err(call("inspecting the swarm"))?,
                Err(_) => {
                    snap.control_available = false;
                    snap.error = "inspecting the swarm: no answer within 3s".into();
                    return Ok(snap);
                }
            };
        snap.root_ca_pem = swarm
            .tls_info
            .and_then(|t| t.trust_root)
            .unwrap_or_default();
        if snap.cluster_id.is_empty() {
            snap.cluster_id = swarm.id.unwrap_or_default();
        }
        Ok(snap)
    }

    /// Docker's events about nodes and secrets (the registry): each one is a
    /// reason to look again.
    pub fn events(
        &self,
    ) -> impl Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> {
        let mut filters = HashMap::new();
        filters.insert(
            "type".to_string(),
            vec!["node".to_string(), "secret".to_string()],
        );
        self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
    }

    async fn secrets_named(
        &self,
        prefix: &str,
    ) -> Result<Vec<bollard::models::Secret>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("name".to_string(), vec![prefix.to_string()]);
        let all = self
            .docker
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(call(format!("listing secrets {prefix}*")))?;
        // The name filter matches prefixes; keep only ours.
        Ok(all
            .into_iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.name.as_deref())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect())
    }

    /// Every registered glue-manager's public keys, by node ID.
    pub async fn registry(&self) -> Result<BTreeMap<String, ManagerKeys>, DockerError> {
        let mut out = BTreeMap::new();
        for s in self.secrets_named(REGISTRY_PREFIX).await? {
            let labels = s.spec.and_then(|sp| sp.labels).unwrap_or_default();
            let (Some(node), Some(signing), Some(ssh)) = (
                labels.get(LABEL_NODE),
                labels
                    .get(LABEL_SIGNING)
                    .and_then(|k| PublicKey::from_base64(k)),
                labels.get(LABEL_SSH),
            ) else {
                continue;
            };
            out.insert(
                node.clone(),
                ManagerKeys {
                    signing_key: signing,
                    ssh_key: ssh.clone(),
                },
            );
        }
        Ok(out)
    }

    /// Publishes this manager's public keys; replaces an entry that differs.
    pub async fn register(&self, node_id: &str, keys: &ManagerKeys) -> Result<bool, DockerError> {
        let name = format!("{REGISTRY_PREFIX}{node_id}");
        let labels = HashMap::from([
            (LABEL_KIND.to_string(), "manager-keys".to_string()),
            (LABEL_NODE.to_string(), node_id.to_string()),
            (LABEL_SIGNING.to_string(), keys.signing_key.to_base64()),
            (LABEL_SSH.to_string(), keys.ssh_key.clone()),
        ]);
        for s in self.secrets_named(&name).await? {
            let spec = s.spec.clone().unwrap_or_default();
            if spec.name.as_deref() != Some(name.as_str()) {
                continue;
            }
            if spec.labels.as_ref() == Some(&labels) {
                return Ok(false);
            }
            if let Some(id) = s.id {
                self.docker
                    .delete_secret(&id)
                    .await
                    .map_err(call(format!("replacing secret {name}")))?;
            }
        }
        self.create_secret(&name, labels).await.map(|_| true)
    }

    async fn create_secret(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<Option<String>, DockerError> {
        let spec = SecretSpec {
            name: Some(name.to_string()),
            labels: Some(labels),
            // base64 of "swarm-glue": the data carries nothing.
            data: Some("c3dhcm0tZ2x1ZQ==".to_string()),
            ..Default::default()
        };
        match self.docker.create_secret(spec).await {
            Ok(r) => Ok(Some(r.id)),
            Err(e) if status_code(&e) == Some(409) => Ok(None),
            Err(e) => Err(call(format!("creating secret {name}"))(e)),
        }
    }

    /// Takes the swarm-wide lock `purpose` for `lease`, or says who holds it.
    /// Creating a secret is atomic in raft: one manager wins. A holder that
    /// died loses the lock when its lease expires.
    pub async fn lock(
        &self,
        purpose: &str,
        holder: &str,
        lease: Duration,
        now: u64,
    ) -> Result<Result<Lease, LockHeld>, DockerError> {
        let name = format!("{LOCK_PREFIX}{purpose}");
        for _ in 0..2 {
            let labels = HashMap::from([
                (LABEL_KIND.to_string(), "lock".to_string()),
                (LABEL_HOLDER.to_string(), holder.to_string()),
                (
                    LABEL_EXPIRES.to_string(),
                    (now + lease.as_secs()).to_string(),
                ),
            ]);
            if let Some(id) = self.create_secret(&name, labels).await? {
                return Ok(Ok(Lease { id, name }));
            }
            let held = self.secrets_named(&name).await?;
            let Some(s) = held
                .into_iter()
                .find(|s| s.spec.as_ref().and_then(|sp| sp.name.as_deref()) == Some(name.as_str()))
            else {
                continue; // released in between
            };
            let labels = s.spec.and_then(|sp| sp.labels).unwrap_or_default();
            let by = labels.get(LABEL_HOLDER).cloned().unwrap_or_default();
            let expires: u64 = labels
                .get(LABEL_EXPIRES)
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            // A lease in this holder's own name is what an earlier attempt
            // could not release ("node lost leader"): a manager runs one
            // task per purpose at a time, so it is a leftover, taken over
            // like an expired one rather than waited out.
            if expires > now && by != holder {
                return Ok(Err(LockHeld::By {
                    holder: by,
                    expires,
                }));
            }
            // Expired or ours: remove exactly that lease (by ID, so a lease someone
            // else took meanwhile is never removed), then try again.
            if let Some(id) = s.id {
                let _ = self.docker.delete_secret(&id).await;
            }
        }
        Ok(Err(LockHeld::Contended))
    }

    /// Drops every lock still held under `holder`'s name, and its quorum
    /// probe: called at start, when any such secret is a leftover of a run
    /// that died. Returns how many locks were released.
    pub async fn release_locks_of(&self, holder: &str) -> Result<usize, DockerError> {
        let mut n = 0;
        for s in self.secrets_named(&quorum_probe_name(holder)).await? {
            if let Some(id) = s.id {
                match self.docker.delete_secret(&id).await {
                    Ok(()) => {}
                    Err(e) if status_code(&e) == Some(404) => {}
                    Err(e) => return Err(call("removing a leftover quorum probe")(e)),
                }
            }
        }
        for s in self.secrets_named(LOCK_PREFIX).await? {
            let labels = s
                .spec
                .as_ref()
                .and_then(|sp| sp.labels.clone())
                .unwrap_or_default();
            if labels.get(LABEL_HOLDER).map(String::as_str) != Some(holder) {
                continue;
            }
            if let Some(id) = s.id {
                match self.docker.delete_secret(&id).await {
                    Ok(()) => n += 1,
                    Err(e) if status_code(&e) == Some(404) => {}
                    Err(e) => return Err(call("releasing a leftover lock")(e)),
                }
            }
        }
        Ok(n)
    }

    /// Whether the swarm can commit a write now: a leader that lost its
    /// followers still answers reads (and calls itself leader) for a while,
    /// but cannot commit. Creates and removes a marker secret.
    pub async fn quorum(&self, node_id: &str) -> bool {
        let name = quorum_probe_name(node_id);
        let labels = HashMap::from([(LABEL_KIND.to_string(), "quorum-probe".to_string())]);
        let write = async {
            let id = match self.create_secret(&name, labels).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    // Left by an earlier probe: removing it is a write too.
                    let left = self.secrets_named(&name).await.ok()?;
                    left.into_iter().find_map(|s| s.id)?
                }
                Err(_) => return None,
            };
            self.docker.delete_secret(&id).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), write).await,
            Ok(Some(()))
        )
    }

    /// Sets a node's role, keeping the rest of its spec (labels,
    /// availability, name) exactly as it is.
    pub async fn set_role(&self, node: &str, role: Role) -> Result<(), DockerError> {
        let what = format!("setting the role of node {} to {role:?}", short(node));
        self.update_spec(node, &what, |spec| {
            spec.role = Some(match role {
                Role::Manager => NodeSpecRoleEnum::MANAGER,
                Role::Worker => NodeSpecRoleEnum::WORKER,
            });
        })
        .await
    }

    /// Sends `node`'s spec back unchanged: an event about the node, on
    /// which swarmkit's role manager reconciles its role at once instead of
    /// at its next 5 s tick (docs/recovery.md, "How long a demotion takes").
    pub async fn touch_node(&self, node: &str) -> Result<(), DockerError> {
        let what = format!("updating node {} with its own spec", short(node));
        self.update_spec(node, &what, |_| {}).await
    }

    async fn update_spec(
        &self,
        node: &str,
        what: &str,
        change: impl Fn(&mut bollard::models::NodeSpec),
    ) -> Result<(), DockerError> {
        let what = || what.to_string();
        // The node object changes under us (its status, its certificate's
        // renewal right after a restart): Docker then refuses the update as
        // "out of sequence", and it is read and sent again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let n = self.docker.inspect_node(node).await.map_err(call(what()))?;
            let version = n.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = n.spec.unwrap_or_default();
            change(&mut spec);
            match self
                .docker
                .update_node(
                    node,
                    spec,
                    bollard::query_parameters::UpdateNodeOptionsBuilder::default()
                        .version(version as i64)
                        .build(),
                )
                .await
            {
                Err(e) if attempt < 10 && e.to_string().contains("out of sequence") => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                r => return r.map_err(call(what())),
            }
        }
    }

    /// Marks `node` as being re-addressed from `from` to `to`, in the swarm
    /// itself, so whichever manager coordinates next knows a demoted node
    /// must be promoted again. Returns false if the mark was already there.
    pub async fn mark_readdress(
        &self,
        node: &str,
        from: Ipv4Addr,
        to: Ipv4Addr,
    ) -> Result<bool, DockerError> {
        let labels = HashMap::from([
            (LABEL_KIND.to_string(), "readdress".to_string()),
            (LABEL_NODE.to_string(), node.to_string()),
            (LABEL_FROM.to_string(), from.to_string()),
            (LABEL_TO.to_string(), to.to_string()),
        ]);
        Ok(self
            .create_secret(&format!("{READDRESS_PREFIX}{}", short(node)), labels)
            .await?
            .is_some())
    }

    /// Every node under re-addressing: node ID → (old, new address).
    pub async fn readdress_marks(
        &self,
    ) -> Result<BTreeMap<String, (Ipv4Addr, Ipv4Addr)>, DockerError> {
        let mut out = BTreeMap::new();
        for s in self.secrets_named(READDRESS_PREFIX).await? {
            let labels = s.spec.and_then(|sp| sp.labels).unwrap_or_default();
            let addr = |k: &str| labels.get(k).and_then(|v| v.parse::<Ipv4Addr>().ok());
            if let (Some(node), Some(from), Some(to)) =
                (labels.get(LABEL_NODE), addr(LABEL_FROM), addr(LABEL_TO))
            {
                out.insert(node.clone(), (from, to));
            }
        }
        Ok(out)
    }

    pub async fn unmark_readdress(&self, node: &str) -> Result<(), DockerError> {
        for s in self
            .secrets_named(&format!("{READDRESS_PREFIX}{}", short(node)))
            .await?
        {
            if let Some(id) = s.id {
                self.delete_mark(&id, &format!("re-address mark of node {}", short(node)))
                    .await?;
            }
        }
        Ok(())
    }

    /// Marks `node` as being restarted in place: until the mark goes, no
    /// manager takes the recovery past re-addressing.
    pub async fn mark_restart(&self, node: &str) -> Result<bool, DockerError> {
        let labels = HashMap::from([
            (LABEL_KIND.to_string(), "restart".to_string()),
            (LABEL_NODE.to_string(), node.to_string()),
        ]);
        Ok(self
            .create_secret(&format!("{RESTART_PREFIX}{}", short(node)), labels)
            .await?
            .is_some())
    }

    /// Every node marked as being restarted in place.
    pub async fn restart_marks(&self) -> Result<BTreeSet<String>, DockerError> {
        Ok(self
            .secrets_named(RESTART_PREFIX)
            .await?
            .into_iter()
            .filter_map(|s| s.spec?.labels?.get(LABEL_NODE).cloned())
            .collect())
    }

    pub async fn unmark_restart(&self, node: &str) -> Result<(), DockerError> {
        let name = format!("{RESTART_PREFIX}{}", short(node));
        for s in self.secrets_named(&name).await? {
            if let Some(id) = s.id {
                self.delete_mark(&id, &format!("restart mark of node {}", short(node)))
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn unlock(&self, lease: Lease) -> Result<(), DockerError> {
        match self.docker.delete_secret(&lease.id).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(call(format!("releasing lock {}", lease.name))(e)),
        }
    }

    /// Starts (or finds, after a restart) the one-shot job that adds SSH keys
    /// to root's authorized_keys on `node`.
    pub async fn start_key_job(&self, job: &KeyJob) -> Result<(), DockerError> {
        if self.service_exists(&job.name()).await? {
            return Ok(());
        }
        match self.docker.create_service(job.spec(), None).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(call(format!("creating job {}", job.name()))(e)),
        }
    }

    async fn service_exists(&self, name: &str) -> Result<bool, DockerError> {
        Ok(self.services_named(name).await?.iter().any(|n| n == name))
    }

    async fn services_named(&self, prefix: &str) -> Result<Vec<String>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("name".to_string(), vec![prefix.to_string()]);
        let services = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(call(format!("listing services {prefix}*")))?;
        Ok(services
            .into_iter()
            .filter_map(|s| s.spec.and_then(|sp| sp.name))
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Key jobs this manager started (left over by a restart, for instance).
    pub async fn my_key_jobs(&self, issuer: &str) -> Result<Vec<String>, DockerError> {
        let suffix = format!("-{}", short(issuer));
        Ok(self
            .services_named(JOB_PREFIX)
            .await?
            .into_iter()
            .filter(|n| n.ends_with(&suffix))
            .collect())
    }

    /// The services each node runs a task of right now (node ID → service
    /// IDs): what a restart would take down there.
    pub async fn running_tasks(&self) -> Result<BTreeMap<String, BTreeSet<String>>, DockerError> {
        let filters = HashMap::from([("desired-state".to_string(), vec!["running".to_string()])]);
        let tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(call("listing the running tasks"))?;
        let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for t in tasks {
            let state = t.status.and_then(|s| s.state).map(|s| s.to_string());
            if let (Some("running"), Some(node), Some(service)) =
                (state.as_deref(), t.node_id, t.service_id)
            {
                running.entry(node).or_default().insert(service);
            }
        }
        Ok(running)
    }

    pub async fn job_state(&self, name: &str) -> Result<JobState, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("service".to_string(), vec![name.to_string()]);
        let tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(call(format!("listing tasks of {name}")))?;
        let mut state = JobState::Waiting(String::from("no task yet"));
        for t in tasks {
            let st = t.status.unwrap_or_default();
            let s = st.state.map(|s| s.to_string()).unwrap_or_default();
            let err = st.err.unwrap_or_default();
            match s.as_str() {
                "complete" => return Ok(JobState::Done),
                "failed" | "rejected" => {
                    state = JobState::Failed(if err.is_empty() { s } else { err });
                }
                _ if !matches!(state, JobState::Failed(_)) => {
                    state = JobState::Waiting(if err.is_empty() {
                        s
                    } else {
                        format!("{s}: {err}")
                    });
                }
                _ => {}
            }
        }
        Ok(state)
    }

    /// Raises the swarm's dispatcher heartbeat period to at least `raised`
    /// and leaves a mark naming the period it had and when, so any manager
    /// can put it back. A node is declared down after three heartbeat
    /// periods of silence, and its tasks are then replaced (on a worker: in
    /// place, a new task for the same slot); a re-addressing makes nodes
    /// silent for longer than Docker's default 15 s (a dockerd restart, a
    /// leader change). `now_ms`: Unix time in ms.
    pub async fn hold_heartbeat(&self, raised: Duration, now_ms: u64) -> Result<Held, DockerError> {
        let (_, spec) = self.swarm_spec().await?;
        let period = heartbeat_of(&spec);
        let marks = self.secrets_named(HEARTBEAT_MARK).await?;
        let label = |k: &str| {
            marks.iter().find_map(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.labels.as_ref())
                    .and_then(|l| l.get(k))
                    .and_then(|v| v.parse::<u64>().ok())
            })
        };
        let (original, since) = (label(LABEL_ORIGINAL), label(LABEL_SINCE));
        if marks.is_empty() {
            let labels = HashMap::from([
                (LABEL_KIND.to_string(), "heartbeat".to_string()),
                (LABEL_ORIGINAL.to_string(), period.as_nanos().to_string()),
                (LABEL_SINCE.to_string(), now_ms.to_string()),
            ]);
            // Created once: a second manager finds it there (None) and keeps
            // the period the first one recorded.
            self.create_secret(HEARTBEAT_MARK, labels).await?;
        }
        // Two managers may both get here: the second finds it raised.
        if period < raised && self.set_heartbeat(raised, |p| p < raised).await? {
            return Ok(Held {
                raised_from: Some(period),
                settled_ms: now_ms + period.as_millis() as u64 + 1000,
            });
        }
        // Raised earlier (by this manager or another): settled one old
        // period after that.
        let settled_ms = match (original, since) {
            (Some(o), Some(t)) => t + o / 1_000_000 + 1000,
            _ => now_ms,
        };
        Ok(Held {
            raised_from: None,
            settled_ms,
        })
    }

    /// Makes a newly elected leader use the raised period: its dispatcher
    /// starts with Docker's default and only takes the swarm's period from
    /// an update that *changes* it (swarmkit's `Dispatcher.Run`), so the
    /// period alternates between `raised` and `raised` + 1 s. Left alone
    /// when it is neither (not ours). Whether it changed it.
    pub async fn retouch_heartbeat(&self, raised: Duration) -> Result<bool, DockerError> {
        let (_, spec) = self.swarm_spec().await?;
        let now = heartbeat_of(&spec);
        let next = if now == raised {
            raised + RETOUCH
        } else if now == raised + RETOUCH {
            raised
        } else {
            return Ok(false);
        };
        self.set_heartbeat(next, |p| p == now).await
    }

    /// Puts the heartbeat period back to what the mark recorded and removes
    /// the mark; the period is left alone if someone set another one in the
    /// meantime. Returns the period put back, `None` without a mark.
    pub async fn release_heartbeat(
        &self,
        raised: Duration,
    ) -> Result<Option<Duration>, DockerError> {
        let marks = self.secrets_named(HEARTBEAT_MARK).await?;
        let Some(original) = marks.iter().find_map(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.labels.as_ref())
                .and_then(|l| l.get(LABEL_ORIGINAL))
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_nanos)
        }) else {
            // No mark, or one that says nothing usable: nothing to put back.
            for id in marks.into_iter().filter_map(|s| s.id) {
                self.delete_mark(&id, HEARTBEAT_MARK).await?;
            }
            return Ok(None);
        };
        if original < raised {
            let ours = |now: Duration| now == raised || now == raised + RETOUCH;
            self.set_heartbeat(original, ours).await?;
        }
        for id in marks.into_iter().filter_map(|s| s.id) {
            self.delete_mark(&id, HEARTBEAT_MARK).await?;
        }
        Ok(Some(original))
    }

    /// Removes one of glue-manager's marker secrets by ID; one already gone
    /// is fine (another manager removed it).
    async fn delete_mark(&self, id: &str, name: &str) -> Result<(), DockerError> {
        match self.docker.delete_secret(id).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(call(format!("removing secret {name} ({id})"))(e)),
        }
    }

    /// Sets the period when `only_if(current period)` holds, changing
    /// nothing else in the swarm's spec; read and sent again when another
    /// update came in between. Whether it set it.
    async fn set_heartbeat(
        &self,
        period: Duration,
        only_if: impl Fn(Duration) -> bool,
    ) -> Result<bool, DockerError> {
        for attempt in 1.. {
            let (version, mut spec) = self.swarm_spec().await?;
            if !only_if(heartbeat_of(&spec)) {
                return Ok(false);
            }
            spec["Dispatcher"]["HeartbeatPeriod"] = serde_json::json!(period.as_nanos() as u64);
            let body = serde_json::to_vec(&spec).unwrap_or_default();
            let path = format!("/swarm/update?version={version}");
            match self.raw("POST", &path, Some(body)).await {
                Ok(_) => return Ok(true),
                Err(e) if attempt < 5 && e.to_string().contains("out of sequence") => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    return Err(DockerError::Call {
                        what: format!("setting the dispatcher heartbeat to {period:?}"),
                        message: e.to_string(),
                    })
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The swarm's spec exactly as Docker has it (fields bollard does not
    /// model included) and its version.
    async fn swarm_spec(&self) -> Result<(u64, serde_json::Value), DockerError> {
        let fail = |message: String| DockerError::Call {
            what: "inspecting the swarm".into(),
            message,
        };
        let body = self
            .raw("GET", "/swarm", None)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut swarm: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
        let version = swarm["Version"]["Index"]
            .as_u64()
            .ok_or_else(|| fail("the reply has no Version.Index".into()))?;
        if !swarm["Spec"].is_object() {
            return Err(fail("the reply has no Spec".into()));
        }
        Ok((version, swarm["Spec"].take()))
    }

    /// One call to the Engine API on the socket, bounded to 3 s, for what
    /// bollard has no call for (updating the swarm). The error carries
    /// Docker's message.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, RawError> {
        use http_body_util::{BodyExt, Full, Limited};
        let call = async {
            let transport = |what| {
                move |e: &dyn std::fmt::Display| RawError::Transport {
                    what,
                    message: e.to_string(),
                }
            };
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| transport("connecting")(&e))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| transport("handshake")(&e))?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method(method)
                .uri(format!("/v{}{path}", self.api_version))
                .header("host", "docker")
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
                .map_err(|e| transport("building the request")(&e))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport("sending the request")(&e))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| transport("reading the reply")(&*e))?
                .to_bytes();
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(RawError::Status {
                    status,
                    message: String::from_utf8_lossy(&bytes).trim().to_string(),
                })
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(r) => r,
            Err(_) => Err(RawError::Timeout {
                method: method.to_string(),
                path: path.to_string(),
            }),
        }
    }

    pub async fn remove_service(&self, name: &str) -> Result<(), DockerError> {
        match self.docker.delete_service(name).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(call(format!("removing job {name}"))(e)),
        }
    }
}

/// The dispatcher heartbeat period a swarm spec (as JSON) sets.
fn heartbeat_of(spec: &serde_json::Value) -> Duration {
    spec["Dispatcher"]["HeartbeatPeriod"]
        .as_u64()
        .map(Duration::from_nanos)
        .unwrap_or(DEFAULT_HEARTBEAT)
}

/// The marker secret of [`DockerApi::quorum`]; a kill between its create and
/// its removal leaves it, and the next start removes it.
pub fn quorum_probe_name(node_id: &str) -> String {
    format!("swarm-glue-quorum-{}", short(node_id))
}

/// What [`DockerApi::hold_heartbeat`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The period it had, when this call raised it.
    pub raised_from: Option<Duration>,
    /// Unix ms from which every node has heard of the raised period (one
    /// old period after it was raised, and a second).
    pub settled_ms: u64,
}

/// Why a swarm-wide lock was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockHeld {
    /// Another holder's lease, until `expires` (Unix seconds).
    By { holder: String, expires: u64 },
    /// Taken and released by others while this manager tried twice.
    Contended,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A time of day, not "ends in Ns": the reason is said once per
            // change in the timeline.
            LockHeld::By { holder, expires } => {
                let t = expires % 86_400;
                write!(
                    f,
                    "held by {holder} until {:02}:{:02}:{:02} UTC",
                    t / 3600,
                    t / 60 % 60,
                    t % 60
                )
            }
            LockHeld::Contended => f.write_str("contended"),
        }
    }
}

/// Why one raw Engine API call failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("{what}: {message}")]
    Transport { what: &'static str, message: String },
    #[error("{status}: {message}")]
    Status {
        status: hyper::StatusCode,
        message: String,
    },
    #[error("{method} {path}: no answer within 3s")]
    Timeout { method: String, path: String },
}

pub struct Lease {
    id: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Waiting(String),
    Done,
    Failed(String),
}

/// First 12 characters of an ID, as Docker shows them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The one-shot job that puts SSH keys into root's authorized_keys on a node.
#[derive(Debug, Clone)]
pub struct KeyJob {
    pub node: String,
    pub issuer: String,
    pub image: String,
    /// authorized_keys lines (key and comment), one per registered manager.
    pub keys: Vec<String>,
}

/// Appends each key line unless its key is already there. Only /bin/sh, grep
/// and printf are needed, so a busybox image does too.
const KEY_SCRIPT: &str = r#"set -eu
d=/host-root/.ssh
mkdir -p "$d"; chmod 700 "$d"
f="$d/authorized_keys"; touch "$f"; chmod 600 "$f"
printf '%s\n' "$GLUE_KEYS" | while IFS= read -r line; do
  [ -n "$line" ] || continue
  material=$(printf '%s\n' "$line" | cut -d' ' -f1,2)
  grep -qF "$material" "$f" || printf '%s\n' "$line" >> "$f"
done
"#;

impl KeyJob {
    pub fn name(&self) -> String {
        format!("{JOB_PREFIX}{}-{}", short(&self.node), short(&self.issuer))
    }

    fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            name: Some(self.name()),
            labels: Some(HashMap::from([
                (LABEL_KIND.to_string(), "ssh-key-job".to_string()),
                (LABEL_NODE.to_string(), self.node.clone()),
                (LABEL_ISSUER.to_string(), self.issuer.clone()),
            ])),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(self.image.clone()),
                    command: Some(vec!["/bin/sh".into(), "-c".into(), KEY_SCRIPT.into()]),
                    env: Some(vec![format!("GLUE_KEYS={}", self.keys.join("\n"))]),
                    mounts: Some(vec![Mount {
                        target: Some("/host-root".into()),
                        source: Some("/root".into()),
                        typ: Some(MountTypeEnum::BIND),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(vec![format!("node.id=={}", self.node)]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated_job: Some(ServiceSpecModeReplicatedJob {
                    max_concurrent: Some(1),
                    total_completions: Some(1),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn node_view(n: bollard::models::Node) -> Option<NodeView> {
    let spec = n.spec.unwrap_or_default();
    let desc = n.description.unwrap_or_default();
    let status = n.status.unwrap_or_default();
    let ms = n.manager_status;
    Some(NodeView {
        id: n.id?,
        hostname: desc.hostname.unwrap_or_default(),
        role: match spec.role.map(|r| r.to_string()).as_deref() {
            Some("manager") => Role::Manager,
            _ => Role::Worker,
        },
        availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        addr: status.addr.unwrap_or_default(),
        manager_addr: ms.as_ref().and_then(|m| m.addr.clone()),
        leader: ms.as_ref().and_then(|m| m.leader).unwrap_or(false),
        reachability: ms
            .and_then(|m| m.reachability)
            .map(|r| r.to_string())
            .unwrap_or_default(),
        arch: desc
            .platform
            .and_then(|p| p.architecture)
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_period_is_read_from_the_spec_docker_gives() {
        let spec = serde_json::json!({"Dispatcher": {"HeartbeatPeriod": 20_000_000_000u64}});
        assert_eq!(heartbeat_of(&spec), Duration::from_secs(20));
        // A spec that does not say runs at Docker's default.
        assert_eq!(heartbeat_of(&serde_json::json!({})), Duration::from_secs(5));
        assert_eq!(
            heartbeat_of(&serde_json::json!({"Dispatcher": {}})),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_key_job_is_pinned_to_its_node_runs_once_and_never_restarts() {
        let job = KeyJob {
            node: "abcdefabcdefabcdef".into(),
            issuer: "0123456789abcdef".into(),
            image: "busybox".into(),
            keys: vec!["ssh-ed25519 AAAA swarm-glue manager 0123".into()],
        };
        assert_eq!(job.name(), "swarm-glue-sshkey-abcdefabcdef-0123456789ab");
        let spec = job.spec();
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["Mode"]["ReplicatedJob"]["TotalCompletions"], 1);
        assert_eq!(json["TaskTemplate"]["RestartPolicy"]["Condition"], "none");
        assert_eq!(
            json["TaskTemplate"]["Placement"]["Constraints"][0],
            "node.id==abcdefabcdefabcdef"
        );
        assert_eq!(
            json["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"],
            "/root"
        );
    }

    #[test]
    fn the_key_script_adds_each_key_once_and_keeps_what_was_there() {
        let root = std::env::temp_dir().join(format!("glue-keyjob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(".ssh")).expect("dir");
        std::fs::write(
            root.join(".ssh/authorized_keys"),
            "ssh-rsa USER user@laptop\n",
        )
        .expect("w");
        let script = KEY_SCRIPT.replace("/host-root", &root.display().to_string());
        let keys =
            "ssh-ed25519 AAAA1 swarm-glue manager m1\nssh-ed25519 AAAA2 swarm-glue manager m2";
        for _ in 0..2 {
            let ok = std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .env("GLUE_KEYS", keys)
                .status()
                .expect("sh");
            assert!(ok.success());
        }
        let text = std::fs::read_to_string(root.join(".ssh/authorized_keys")).expect("read");
        assert_eq!(
            text,
            "ssh-rsa USER user@laptop\nssh-ed25519 AAAA1 swarm-glue manager m1\nssh-ed25519 AAAA2 swarm-glue manager m2\n"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
