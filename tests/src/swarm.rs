//! The swarm inside a lab: forming it, asking it how it is, and its fingerprint.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::image::WORKLOAD_IMAGE;
use crate::lab::Lab;
use crate::{par_map, wait_for};

pub const SERVICE: &str = "probe";
pub const CONFIG: &str = "lab-config";
pub const SECRET: &str = "lab-secret";
/// The user's application network: an attachable overlay the probe service
/// is on, so the lab sees the data plane (VXLAN between the nodes) too.
pub const NETWORK: &str = "app";
/// Its subnet, fixed so that no lab subnet can collide with it (the lab
/// refuses subnets overlapping it, like the ingress network's).
pub const NETWORK_SUBNET: &str = "10.0.1.0/24";
/// The port the probe service's tasks serve their page on (`-p` below).
pub const PROBE_PORT: u16 = 80;

/// What each probe task runs: busybox httpd in the foreground, serving a page
/// that names its node and task (`probe node=<hostname> task=<task name>`,
/// from the environment the service sets from templates). httpd as PID 1
/// ignores SIGTERM (measured: `docker stop` waited out the 10 s grace and
/// killed it), so a shell stays PID 1 and its trap stops httpd at once; when
/// httpd dies by itself, the task ends with its status.
const PROBE_SCRIPT: &str = "trap 'kill $pid; exit 0' TERM; \
busybox mkdir -p /www && \
echo \"probe node=$LAB_NODE task=$LAB_TASK\" > /www/index.html || exit 1; \
busybox httpd -f -p 80 -h /www & pid=$!; \
wait $pid";

/// How long one question to a manager may take: a manager without a leader can
/// otherwise hang for its full RPC timeout.
const QUERY_TIMEOUT_S: &str = "10";

/// Forms the swarm: m1 initialises it, the other managers join one at a time,
/// workers join together; then labels, a config, a secret, the overlay
/// network [`NETWORK`], and a service with one task on every node, serving
/// HTTP on that network (endpoint mode dnsrr: this kernel has no IPVS for
/// VIPs).
pub fn form(lab: &Lab, pinned: bool) -> Result<()> {
    let first = lab
        .managers()
        .next()
        .ok_or_else(|| LabError::Invalid("a swarm needs a manager".into()))?
        .name
        .clone();
    let addr = |n: &str| -> Result<Ipv4Addr> {
        lab.address(n)?
            .ok_or_else(|| LabError::Invalid(format!("{n} has no address")))
    };
    let first_addr = addr(&first)?;
    // `--advertise-addr IP` always; pinned: the listener and the data path
    // too (a manager's listener only: a worker serves no raft port).
    let pins = |ip: Ipv4Addr, manager: bool| -> Vec<String> {
        let mut args = vec!["--advertise-addr".to_string(), ip.to_string()];
        if pinned {
            args.extend(["--data-path-addr".to_string(), ip.to_string()]);
            if manager {
                args.extend(["--listen-addr".to_string(), format!("{ip}:2377")]);
            }
        }
        args
    };
    let mut init = vec!["docker".to_string(), "swarm".into(), "init".into()];
    init.extend(pins(first_addr, true));
    lab.exec(&first, &init.iter().map(String::as_str).collect::<Vec<_>>())?;
    let token = |kind: &str| lab.exec(&first, &["docker", "swarm", "join-token", "-q", kind]);
    let (manager_token, worker_token) = (token("manager")?, token("worker")?);
    let remote = format!("{first_addr}:2377");
    let join = |node: &str, token: &str, manager: bool| -> Result<()> {
        let mut cmd = vec!["docker", "swarm", "join", "--token", token]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        cmd.extend(pins(addr(node)?, manager));
        cmd.push(remote.clone());
        lab.exec(node, &cmd.iter().map(String::as_str).collect::<Vec<_>>())
            .map(|_| ())
    };
    // Raft membership changes one at a time; workers need no consensus.
    for m in lab.managers().skip(1) {
        join(&m.name, &manager_token, true)?;
    }
    let workers: Vec<String> = lab.workers().map(|w| w.name.clone()).collect();
    par_map(&workers, |w| join(w, &worker_token, false))?;

    for node in lab.nodes() {
        lab.exec(
            &first,
            &[
                "docker",
                "node",
                "update",
                "--label-add",
                &format!("lab.node={}", node.name),
                "--label-add",
                &format!("lab.tier={}", node.role),
                &node.name,
            ],
        )?;
    }
    let c = &lab.node(&first)?.container;
    lab.docker().exec_with_input(
        c,
        &["docker", "config", "create", CONFIG, "-"],
        b"lab config\n",
    )?;
    lab.docker().exec_with_input(
        c,
        &["docker", "secret", "create", SECRET, "-"],
        b"lab secret\n",
    )?;
    lab.exec(
        &first,
        &[
            "docker",
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "--subnet",
            NETWORK_SUBNET,
            NETWORK,
        ],
    )?;
    let replicas = lab.nodes().len().to_string();
    lab.exec(
        &first,
        &[
            "docker",
            "service",
            "create",
            "--detach",
            "--name",
            SERVICE,
            "--replicas",
            &replicas,
            "--replicas-max-per-node",
            "1",
            "--no-resolve-image",
            "--network",
            NETWORK,
            "--endpoint-mode",
            "dnsrr",
            "--env",
            "LAB_NODE={{.Node.Hostname}}",
            "--env",
            "LAB_TASK={{.Task.Name}}",
            "--config",
            &format!("source={CONFIG},target=/etc/lab-config"),
            "--secret",
            SECRET,
            "--label",
            "lab=probe",
            WORKLOAD_IMAGE,
            "sh",
            "-c",
            PROBE_SCRIPT,
        ],
    )?;
    wait_healthy(lab, Duration::from_secs(120))?;
    Ok(())
}

/// One node as a manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: String,
    pub state: String,
    pub availability: String,
    pub leader: bool,
    pub reachability: Option<String>,
    pub addr: String,
    pub manager_addr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NodeJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Spec")]
    spec: NodeSpecJson,
    #[serde(rename = "Description")]
    description: NodeDescJson,
    #[serde(rename = "Status")]
    status: NodeStatusJson,
    #[serde(rename = "ManagerStatus", default)]
    manager_status: Option<ManagerStatusJson>,
}

#[derive(Debug, Deserialize)]
struct NodeSpecJson {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Role")]
    role: String,
    #[serde(rename = "Availability")]
    availability: String,
}

#[derive(Debug, Deserialize)]
struct NodeDescJson {
    #[serde(rename = "Hostname")]
    hostname: String,
}

#[derive(Debug, Deserialize)]
struct NodeStatusJson {
    #[serde(rename = "State")]
    state: String,
    #[serde(rename = "Addr", default)]
    addr: String,
}

#[derive(Debug, Deserialize)]
struct ManagerStatusJson {
    #[serde(rename = "Leader", default)]
    leader: bool,
    #[serde(rename = "Reachability", default)]
    reachability: String,
    #[serde(rename = "Addr", default)]
    addr: String,
}

/// Asks one manager for `docker node inspect` of every node.
fn inspect_nodes(lab: &Lab, via: &str) -> Result<Vec<NodeJson>> {
    let out = lab.sh(
        via,
        &format!(
            "ids=$(timeout {QUERY_TIMEOUT_S} docker node ls -q) && timeout {QUERY_TIMEOUT_S} docker node inspect $ids"
        ),
    )?;
    parse_json(&out, &format!("docker node inspect (on {via})"))
}

fn parse_json<T: for<'de> Deserialize<'de>>(out: &str, command: &str) -> Result<T> {
    serde_json::from_str(out).map_err(|e| LabError::Parse {
        command: command.to_string(),
        detail: e.to_string(),
    })
}

/// Every node as manager `via` sees it; an error when it cannot answer (no leader).
pub fn nodes(lab: &Lab, via: &str) -> Result<Vec<NodeView>> {
    Ok(inspect_nodes(lab, via)?
        .into_iter()
        .map(|n| NodeView {
            id: n.id,
            hostname: n.description.hostname,
            role: n.spec.role,
            state: n.status.state,
            availability: n.spec.availability,
            leader: n.manager_status.as_ref().is_some_and(|m| m.leader),
            reachability: n.manager_status.as_ref().map(|m| m.reachability.clone()),
            addr: n.status.addr,
            manager_addr: n.manager_status.map(|m| m.addr),
        })
        .collect())
}

/// The hostname of the leader as any reachable manager reports it, or None
/// when no manager can name one.
pub fn leader(lab: &Lab) -> Option<String> {
    let managers = lab.manager_names();
    let answers = par_map(&managers, |m| Ok(nodes(lab, m).ok())).unwrap_or_default();
    answers
        .into_iter()
        .flatten()
        .find_map(|view| view.into_iter().find(|n| n.leader).map(|n| n.hostname))
}

/// What a healthy swarm looks like: a leader, every node ready, every task running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub leader: Option<String>,
    pub nodes_ready: usize,
    pub nodes: usize,
    pub tasks_running: usize,
    pub replicas: usize,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.leader.is_some()
            && self.nodes_ready == self.nodes
            && self.nodes > 0
            && self.tasks_running == self.replicas
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leader={} ready={}/{} tasks_running={}/{}",
            self.leader.as_deref().unwrap_or("none"),
            self.nodes_ready,
            self.nodes,
            self.tasks_running,
            self.replicas
        )
    }
}

pub fn health(lab: &Lab) -> Result<Health> {
    let managers = lab.manager_names();
    let mut last_err = None;
    for m in &managers {
        match health_via(lab, m) {
            Ok(h) => return Ok(h),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| LabError::Invalid("the lab has no manager".into())))
}

fn health_via(lab: &Lab, via: &str) -> Result<Health> {
    let view = nodes(lab, via)?;
    let tasks = tasks(lab, via)?;
    Ok(Health {
        leader: view.iter().find(|n| n.leader).map(|n| n.hostname.clone()),
        nodes_ready: view.iter().filter(|n| n.state == "ready").count(),
        nodes: view.len(),
        tasks_running: tasks.values().filter(|t| t.state == "running").count(),
        replicas: lab.nodes().len(),
    })
}

pub fn wait_healthy(lab: &Lab, timeout: Duration) -> Result<Health> {
    let mut last = String::from("no answer yet");
    wait_for(
        "the swarm to be healthy",
        timeout,
        Duration::from_millis(500),
        || match health(lab) {
            Ok(h) if h.is_healthy() => Ok(Some(h)),
            Ok(h) => {
                last = h.to_string();
                Ok(None)
            }
            Err(e) => {
                last = e.to_string();
                Ok(None)
            }
        },
    )
    .map_err(|e| match e {
        LabError::Timeout { what, secs } => LabError::Timeout {
            what: format!("{what} (last seen: {last})"),
            secs,
        },
        other => other,
    })
}

// ---- fingerprint -----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFp {
    pub hostname: String,
    pub role: String,
    pub availability: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceFp {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskFp {
    pub service: String,
    pub node: String,
    pub slot: u64,
    pub state: String,
}

/// What must be the same after a recovery as before: identities, roles,
/// labels, availability, services and their versions, running tasks, configs
/// and secrets, and the swarm's own settings. Addresses are deliberately not
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub nodes: BTreeMap<String, NodeFp>,
    pub services: BTreeMap<String, ServiceFp>,
    pub tasks: BTreeMap<String, TaskFp>,
    pub configs: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// The swarm's spec (`docker info`'s `.Swarm.Cluster.Spec`, as JSON):
    /// its raft, dispatcher, CA and orchestration settings.
    pub settings: String,
}

#[derive(Debug, Deserialize)]
struct VersionJson {
    #[serde(rename = "Index")]
    index: u64,
}

#[derive(Debug, Deserialize)]
struct NamedSpecJson {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Debug, Deserialize)]
struct ObjectJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Version")]
    version: VersionJson,
    #[serde(rename = "Spec")]
    spec: NamedSpecJson,
}

#[derive(Debug, Deserialize)]
struct TaskJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(rename = "Slot", default)]
    slot: u64,
    #[serde(rename = "Status")]
    status: TaskStatusJson,
}

#[derive(Debug, Deserialize)]
struct TaskStatusJson {
    #[serde(rename = "State")]
    state: String,
}

/// Tasks the swarm wants running, by task ID.
fn tasks(lab: &Lab, via: &str) -> Result<BTreeMap<String, TaskFp>> {
    let out = lab.sh(
        via,
        &format!(
            "ids=$(for s in $(timeout {QUERY_TIMEOUT_S} docker service ls -q); do \
               timeout {QUERY_TIMEOUT_S} docker service ps -q --no-trunc --filter desired-state=running $s; done); \
             [ -z \"$ids\" ] && echo '[]' || timeout {QUERY_TIMEOUT_S} docker inspect --type task $ids"
        ),
    )?;
    let list: Vec<TaskJson> = parse_json(&out, &format!("docker inspect --type task (on {via})"))?;
    Ok(list
        .into_iter()
        .map(|t| {
            (
                t.id,
                TaskFp {
                    service: t.service_id,
                    node: t.node_id,
                    slot: t.slot,
                    state: t.status.state,
                },
            )
        })
        .collect())
}

/// One task of the probe service as the swarm sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTask {
    pub id: String,
    /// The hostname of its node (its node ID if no node has that ID).
    pub node: String,
    pub state: String,
    /// Its address on [`NETWORK`], if it has one.
    pub addr: Option<Ipv4Addr>,
}

/// The probe service's tasks that should run, with their addresses on
/// [`NETWORK`] (`.NetworksAttachments[].Addresses`), as manager `via` sees them.
pub fn probe_tasks(lab: &Lab, via: &str) -> Result<Vec<ProbeTask>> {
    let out = lab.sh(
        via,
        &format!(
            "ids=$(timeout {QUERY_TIMEOUT_S} docker service ps -q --no-trunc --filter desired-state=running {SERVICE}); \
             [ -z \"$ids\" ] || timeout {QUERY_TIMEOUT_S} docker inspect --type task --format \
               '{{{{.ID}}}} {{{{.NodeID}}}} {{{{.Status.State}}}}{{{{range .NetworksAttachments}}}} {{{{.Network.Spec.Name}}}}={{{{join .Addresses \",\"}}}}{{{{end}}}}' $ids"
        ),
    )?;
    let hostnames: BTreeMap<String, String> = nodes(lab, via)?
        .into_iter()
        .map(|n| (n.id, n.hostname))
        .collect();
    let mut tasks = parse_probe_tasks(&out, NETWORK)
        .map_err(|line| LabError::Invalid(format!("tasks on {via}: cannot read {line:?}")))?;
    for t in &mut tasks {
        if let Some(h) = hostnames.get(&t.node) {
            t.node = h.clone();
        }
    }
    Ok(tasks)
}

/// Reads `<task ID> <node ID> <state>[ <network>=<addr/len>[,...]]...`, one
/// task a line; the node stays an ID. Err: the first line it cannot read.
fn parse_probe_tasks(out: &str, network: &str) -> std::result::Result<Vec<ProbeTask>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut f = line.split_whitespace();
            let (Some(id), Some(node), Some(state)) = (f.next(), f.next(), f.next()) else {
                return Err(line.to_string());
            };
            let addr = f
                .filter_map(|a| a.split_once('='))
                .find(|(net, _)| *net == network)
                .and_then(|(_, addrs)| {
                    addrs
                        .split(',')
                        .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
                });
            Ok(ProbeTask {
                id: id.to_string(),
                node: node.to_string(),
                state: state.to_string(),
                addr,
            })
        })
        .collect()
}

/// How many tasks each slot was given since `since_s` (Unix seconds), for
/// the slots given any: `(service ID, slot)` → count (a global service's
/// "slot" is its node ID). Read from the tasks' history (`docker service ps`
/// keeps the last few per slot), so a task stopped and started again once
/// counts 1, twice counts 2.
pub fn started_since(
    lab: &Lab,
    via: &str,
    since_s: u64,
) -> Result<BTreeMap<(String, String), usize>> {
    let out = lab.sh(
        via,
        &format!(
            "ids=$(for s in $(timeout {QUERY_TIMEOUT_S} docker service ls -q); do \
               timeout {QUERY_TIMEOUT_S} docker service ps -q --no-trunc $s; done); \
             [ -z \"$ids\" ] || timeout {QUERY_TIMEOUT_S} docker inspect --type task \
               --format '{{{{.ServiceID}}}} {{{{.Slot}}}} {{{{.NodeID}}}} {{{{.CreatedAt.Unix}}}}' $ids"
        ),
    )?;
    let mut counts = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(service), Some(slot), Some(created)) = (
            f.first(),
            f.get(1),
            f.last().and_then(|c| c.parse::<u64>().ok()),
        ) else {
            return Err(LabError::Invalid(format!(
                "task history on {via}: cannot read {line:?}"
            )));
        };
        if created < since_s {
            continue;
        }
        let slot = if *slot == "0" {
            f.get(2).copied().unwrap_or_default()
        } else {
            slot
        };
        *counts
            .entry((service.to_string(), slot.to_string()))
            .or_insert(0) += 1;
    }
    Ok(counts)
}

fn objects(lab: &Lab, via: &str, kind: &str) -> Result<Vec<ObjectJson>> {
    let out = lab.sh(
        via,
        &format!(
            "ids=$(timeout {QUERY_TIMEOUT_S} docker {kind} ls -q); \
             [ -z \"$ids\" ] && echo '[]' || timeout {QUERY_TIMEOUT_S} docker {kind} inspect $ids"
        ),
    )?;
    parse_json(&out, &format!("docker {kind} inspect (on {via})"))
}

/// The fingerprint as manager `via` sees the swarm.
pub fn fingerprint(lab: &Lab, via: &str) -> Result<Fingerprint> {
    let nodes = inspect_nodes(lab, via)?
        .into_iter()
        .map(|n| {
            (
                n.id,
                NodeFp {
                    hostname: n.description.hostname,
                    role: n.spec.role,
                    availability: n.spec.availability,
                    labels: n.spec.labels.unwrap_or_default(),
                },
            )
        })
        .collect();
    let named = |kind| -> Result<BTreeMap<String, String>> {
        Ok(objects(lab, via, kind)?
            .into_iter()
            .map(|o| (o.id, o.spec.name))
            .collect())
    };
    Ok(Fingerprint {
        nodes,
        services: objects(lab, via, "service")?
            .into_iter()
            .map(|o| {
                (
                    o.id,
                    ServiceFp {
                        name: o.spec.name,
                        version: o.version.index,
                    },
                )
            })
            .collect(),
        tasks: tasks(lab, via)?,
        configs: named("config")?,
        secrets: named("secret")?,
        settings: settings(lab, via)?,
    })
}

fn settings(lab: &Lab, via: &str) -> Result<String> {
    let out = lab.sh(
        via,
        &format!(
            "timeout {QUERY_TIMEOUT_S} docker info --format '{{{{json .Swarm.Cluster.Spec}}}}'"
        ),
    )?;
    let spec = out.trim();
    if !spec.starts_with('{') {
        return Err(LabError::Invalid(format!(
            "the swarm's settings on {via}: cannot read {spec:?}"
        )));
    }
    Ok(spec.to_string())
}

/// The fingerprint from the first manager that can answer.
pub fn fingerprint_any(lab: &Lab) -> Result<Fingerprint> {
    let mut last = None;
    for m in lab.managers() {
        match fingerprint(lab, &m.name) {
            Ok(fp) => return Ok(fp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| LabError::Invalid("the lab has no manager".into())))
}

impl Fingerprint {
    /// Every difference, one line each; empty when nothing was lost or changed.
    pub fn diff(&self, after: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps("node", &self.nodes, &after.nodes, &mut out);
        diff_maps("service", &self.services, &after.services, &mut out);
        diff_maps("task", &self.tasks, &after.tasks, &mut out);
        diff_maps("config", &self.configs, &after.configs, &mut out);
        diff_maps("secret", &self.secrets, &after.secrets, &mut out);
        if self.settings != after.settings {
            out.push(format!(
                "swarm settings changed: {} -> {}",
                self.settings, after.settings
            ));
        }
        out
    }

    /// Where the tasks run, without their IDs: (service, node, slot) → state.
    pub fn placement(&self) -> BTreeMap<(String, String, u64), String> {
        self.tasks
            .values()
            .map(|t| ((t.service.clone(), t.node.clone(), t.slot), t.state.clone()))
            .collect()
    }

    pub fn summary(&self) -> String {
        let managers = self.nodes.values().filter(|n| n.role == "manager").count();
        format!(
            "{} nodes ({} managers), {} services, {} running tasks, {} configs, {} secrets",
            self.nodes.len(),
            managers,
            self.services.len(),
            self.tasks.values().filter(|t| t.state == "running").count(),
            self.configs.len(),
            self.secrets.len()
        )
    }
}

fn diff_maps<V: PartialEq + fmt::Debug>(
    kind: &str,
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
    out: &mut Vec<String>,
) {
    for (id, b) in before {
        match after.get(id) {
            None => out.push(format!("{kind} {id} is gone (was {b:?})")),
            Some(a) if a != b => out.push(format!("{kind} {id} changed: {b:?} -> {a:?}")),
            Some(_) => {}
        }
    }
    for (id, a) in after {
        if !before.contains_key(id) {
            out.push(format!("{kind} {id} is new: {a:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "n1".into(),
            NodeFp {
                hostname: "m1".into(),
                role: "manager".into(),
                availability: "active".into(),
                labels: BTreeMap::from([("lab.node".into(), "m1".into())]),
            },
        );
        let mut tasks = BTreeMap::new();
        tasks.insert(
            "t1".into(),
            TaskFp {
                service: "s1".into(),
                node: "n1".into(),
                slot: 1,
                state: "running".into(),
            },
        );
        Fingerprint {
            nodes,
            services: BTreeMap::from([(
                "s1".into(),
                ServiceFp {
                    name: "probe".into(),
                    version: 12,
                },
            )]),
            tasks,
            configs: BTreeMap::from([("c1".into(), "lab-config".into())]),
            secrets: BTreeMap::from([("x1".into(), "lab-secret".into())]),
            settings: r#"{"Dispatcher":{"HeartbeatPeriod":5000000000}}"#.into(),
        }
    }

    #[test]
    fn identical_fingerprints_have_no_diff() {
        assert!(fp().diff(&fp()).is_empty());
    }

    #[test]
    fn diff_names_lost_changed_and_new_objects() {
        let before = fp();
        let mut after = fp();
        after.nodes.get_mut("n1").expect("n1").labels.clear();
        after.tasks.remove("t1");
        after.secrets.insert("x2".into(), "other".into());
        after.settings = r#"{"Dispatcher":{"HeartbeatPeriod":20000000000}}"#.into();
        let diff = before.diff(&after);
        assert_eq!(diff.len(), 4, "{diff:#?}");
        assert!(diff[0].starts_with("node n1 changed"));
        assert!(diff[1].starts_with("task t1 is gone"));
        assert!(diff[2].starts_with("secret x2 is new"));
        assert!(diff[3].starts_with("swarm settings changed"));
    }

    #[test]
    fn parses_probe_tasks_and_their_address_on_the_app_network() {
        let out = "t1 n1 running app=10.0.1.3/24\n\
                   t2 n2 running ingress=10.0.0.4/24 app=10.0.1.7/24,10.0.1.8/24\n\
                   t3 n3 pending\n";
        let tasks = parse_probe_tasks(out, "app").expect("parses");
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[0].addr, Some(Ipv4Addr::new(10, 0, 1, 3)));
        assert_eq!(tasks[1].addr, Some(Ipv4Addr::new(10, 0, 1, 7)));
        assert_eq!((tasks[2].state.as_str(), tasks[2].addr), ("pending", None));
        assert_eq!(parse_probe_tasks("t1 n1", "app"), Err("t1 n1".to_string()));
    }

    #[test]
    fn parses_docker_node_inspect_of_a_manager() {
        let json = r#"[{"ID":"abc","Version":{"Index":9},
            "Spec":{"Labels":{"lab.node":"m1"},"Role":"manager","Availability":"active"},
            "Description":{"Hostname":"m1"},
            "Status":{"State":"ready","Addr":"10.231.1.11"},
            "ManagerStatus":{"Leader":true,"Reachability":"reachable","Addr":"10.231.1.11:2377"}}]"#;
        let nodes: Vec<NodeJson> = parse_json(json, "test").expect("parses");
        assert_eq!(nodes[0].id, "abc");
        assert!(nodes[0].manager_status.as_ref().is_some_and(|m| m.leader));
        assert_eq!(
            nodes[0].manager_status.as_ref().map(|m| m.addr.as_str()),
            Some("10.231.1.11:2377")
        );
    }
}
