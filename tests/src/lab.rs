//! A lab: systemd-booted Debian nodes on internal Docker networks of this
//! machine, which can be moved to other subnets, cut off, stopped and started.
//!
//! Everything a lab makes carries its name (container and network labels, a
//! comment on each host iptables rule), so it can be found again by the
//! command-line driver, and removed completely by `down` or, after a killed
//! run, by the next lab that starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::docker::{host, Docker};
use crate::error::{LabError, Result};
use crate::image::{self, NodeImage};
use crate::net::Ipv4Net;
use crate::rng::Rng;
use crate::{par_map, wait_for};

const LABEL_LAB: &str = "swarm-glue.lab";
const LABEL_OWNER: &str = "swarm-glue.lab.owner";
const LABEL_NODE: &str = "swarm-glue.lab.node";
const LABEL_ROLE: &str = "swarm-glue.lab.role";
const LABEL_HOME: &str = "swarm-glue.lab.home";
const RULE_COMMENT_PREFIX: &str = "swarm-glue-lab:";
const OWNER_CLI: &str = "cli";

/// Lab subnets are carved from here unless one is asked for.
pub const SUBNET_POOL: &str = "10.231.0.0/16";

/// Ranges the nodes' own dockerd uses inside every node (docker0,
/// docker_gwbridge, the swarm's ingress network and the lab's overlay
/// network `app`): a lab subnet there would collide inside the nodes.
const RESERVED_INSIDE_NODES: [(&str, &str); 4] = [
    ("172.17.0.0/16", "docker0 inside every lab node"),
    ("172.18.0.0/16", "docker_gwbridge inside every lab node"),
    ("10.0.0.0/24", "the swarm's ingress network"),
    (
        crate::swarm::NETWORK_SUBNET,
        "the lab swarm's overlay network app",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    /// Short name and hostname: m1, m2, ... for managers, w1, ... for workers.
    pub name: String,
    pub container: String,
    pub role: Role,
    /// The address the node was created with, in its home subnet.
    pub home: Ipv4Addr,
    pub home_net: Ipv4Net,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub managers: usize,
    pub workers: usize,
    pub subnet: Option<Ipv4Net>,
    /// A kept lab outlives this process (the command-line driver); otherwise it
    /// is torn down when the `Lab` is dropped, also on a panic.
    pub keep: bool,
    /// Form a swarm with a service, labels, a config and a secret.
    pub swarm: bool,
    /// Every address pinned when the swarm is formed: `--listen-addr IP:2377`
    /// and `--data-path-addr IP` besides `--advertise-addr IP` (workers:
    /// the data path too), as operators with several interfaces do.
    pub pinned: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            managers: 3,
            workers: 2,
            subnet: None,
            keep: false,
            swarm: true,
            pinned: false,
        }
    }
}

/// How long each stage of bringing a lab up took.
#[derive(Debug, Clone, Default)]
pub struct UpTimings {
    pub image_build: Option<Duration>,
    pub boot: Duration,
    pub swarm: Duration,
    pub total: Duration,
}

pub struct Lab {
    name: String,
    docker: Docker,
    nodes: Vec<Node>,
    keep: bool,
    torn_down: bool,
    pub timings: UpTimings,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// Where nodes go in a move.
#[derive(Debug, Clone)]
pub enum Addressing {
    /// Random free addresses of the target subnet, never in the old order.
    Shuffled { seed: u64 },
    /// These addresses, one per moving node.
    Exact(BTreeMap<String, Ipv4Addr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub node: String,
    pub from: Option<Ipv4Addr>,
    pub to: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct MoveReport {
    pub subnet: Ipv4Net,
    pub moves: Vec<Move>,
    pub seed: Option<u64>,
    pub took: Duration,
}

impl fmt::Display for MoveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "moved to {}:", self.subnet)?;
        for m in &self.moves {
            let from = m.from.map_or_else(|| "-".to_string(), |a| a.to_string());
            write!(f, " {} {}→{}", m.node, from, m.to)?;
        }
        if let Some(seed) = self.seed {
            write!(f, " (seed {seed})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct EndpointJson {
    #[serde(rename = "IPAddress")]
    ip_address: String,
}

impl Lab {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Manager)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Worker)
    }

    pub fn manager_names(&self) -> Vec<String> {
        self.managers().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name || n.container == name)
            .ok_or_else(|| LabError::UnknownNode {
                lab: self.name.clone(),
                node: name.to_string(),
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Expands `all`, `managers` and `workers`, and checks every name.
    pub fn select(&self, names: &[String]) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let picked: Vec<String> = match name.as_str() {
                "all" => self.nodes.iter().map(|n| n.name.clone()).collect(),
                "managers" => self.managers().map(|n| n.name.clone()).collect(),
                "workers" => self.workers().map(|n| n.name.clone()).collect(),
                _ => vec![self.node(name)?.name.clone()],
            };
            for p in picked {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        if out.is_empty() {
            return Err(LabError::Invalid("no node was named".into()));
        }
        Ok(out)
    }

    pub fn exec(&self, node: &str, cmd: &[&str]) -> Result<String> {
        self.docker.exec(&self.node(node)?.container, cmd)
    }

    pub fn sh(&self, node: &str, script: &str) -> Result<String> {
        self.docker.sh(&self.node(node)?.container, script)
    }

    /// Creates a lab, boots its nodes and, unless told not to, forms the swarm.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        let started = Instant::now();
        let docker = Docker::new();
        docker.check_host()?;
        if spec.managers == 0 {
            return Err(LabError::Invalid("a lab needs at least one manager".into()));
        }
        if spec.managers + spec.workers > 60 {
            return Err(LabError::Invalid(format!(
                "{} nodes is more than this machine can boot",
                spec.managers + spec.workers
            )));
        }
        for err in clean_stale_labs(&docker) {
            eprintln!("lab: while removing a stale lab: {err}");
        }
        let name = format!(
            "sg{:06x}",
            Rng::new(Rng::fresh_seed()).next_u64() & 0xff_ffff
        );
        let mut lab = Lab {
            name,
            docker,
            nodes: Vec::new(),
            keep: spec.keep,
            torn_down: false,
            timings: UpTimings::default(),
        };
        // Cheap checks before the (possibly minute-long) image build.
        if let Some(subnet) = spec.subnet {
            lab.check_subnet_free(subnet)?;
        }
        let image = image::ensure_node_image(&lab.docker, false)?;
        lab.timings.image_build = image.built_in;
        let made = (|| {
            let boot_started = Instant::now();
            lab.create_nodes(spec, &image)?;
            lab.timings.boot = boot_started.elapsed();
            if spec.swarm {
                let swarm_started = Instant::now();
                crate::swarm::form(&lab, spec.pinned)?;
                lab.timings.swarm = swarm_started.elapsed();
            }
            Ok(())
        })();
        if let Err(e) = made {
            // A lab that did not come up is removed, also one meant to be kept.
            if let Err(errors) = lab.down() {
                for t in errors {
                    eprintln!("lab: teardown after a failed start: {t}");
                }
            }
            return Err(e);
        }
        lab.timings.total = started.elapsed();
        Ok(lab)
    }

    fn owner_label(&self) -> String {
        if self.keep {
            OWNER_CLI.to_string()
        } else {
            this_process_owner()
        }
    }

    fn create_nodes(&mut self, spec: &LabSpec, image: &NodeImage) -> Result<()> {
        let (net_name, subnet) = match spec.subnet {
            Some(subnet) => (self.ensure_network(subnet)?, subnet),
            None => self.allocate_network()?,
        };
        let mut addresses = subnet.node_addresses().skip(1);
        let mut nodes = Vec::new();
        for (role, count, prefix) in [
            (Role::Manager, spec.managers, "m"),
            (Role::Worker, spec.workers, "w"),
        ] {
            for i in 1..=count {
                let name = format!("{prefix}{i}");
                let home = addresses.next().ok_or(LabError::SubnetTooSmall {
                    subnet,
                    room: subnet.node_addresses().count(),
                    wanted: spec.managers + spec.workers,
                })?;
                nodes.push(Node {
                    container: format!("{}-{name}", self.name),
                    name,
                    role,
                    home,
                    home_net: subnet,
                });
            }
        }
        let owner = self.owner_label();
        for node in &nodes {
            let home_label = format!("{LABEL_HOME}={}/{}", node.home, subnet.prefix());
            let args: Vec<String> = [
                "run",
                "--detach",
                "--name",
                &node.container,
                "--hostname",
                &node.name,
                "--network",
                &net_name,
                "--ip",
                &node.home.to_string(),
                "--label",
                &format!("{LABEL_LAB}={}", self.name),
                "--label",
                &format!("{LABEL_OWNER}={owner}"),
                "--label",
                &format!("{LABEL_NODE}={}", node.name),
                "--label",
                &format!("{LABEL_ROLE}={}", node.role),
                "--label",
                &home_label,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(node_run_flags().iter().map(|s| s.to_string()))
            .chain([image.tag.clone()])
            .collect();
            self.docker.run(&args)?;
            self.nodes.push(node.clone());
        }
        let workload = image::workload_tarball()?;
        par_map(&self.nodes, |node| self.wait_booted(node, &workload))?;
        Ok(())
    }

    /// Waits until systemd finished booting and the node's dockerd answers,
    /// then loads the workload image into it.
    fn wait_booted(&self, node: &Node, workload: &[u8]) -> Result<()> {
        let c = &node.container;
        wait_for(
            &format!("systemd to finish booting on {}", node.name),
            Duration::from_secs(90),
            Duration::from_millis(250),
            || {
                let state = self
                    .docker
                    .exec(c, &["systemctl", "is-system-running"])
                    .unwrap_or_else(|e| match e {
                        LabError::Command { .. } => "starting".into(),
                        other => other.to_string(),
                    });
                Ok(matches!(state.as_str(), "running" | "degraded").then_some(()))
            },
        )?;
        wait_for(
            &format!("dockerd on {}", node.name),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                Ok(self
                    .docker
                    .exec(c, &["docker", "info", "--format", "{{.ServerVersion}}"])
                    .ok()
                    .map(|_| ()))
            },
        )?;
        if std::env::var_os(DOCKERD_DEBUG).is_some_and(|v| v == "1") {
            // Added to the image's daemon.json (once), read again on SIGHUP
            // (the unit's reload), kept across restarts.
            self.docker.exec(
                c,
                &[
                    "sh",
                    "-c",
                    "f=/etc/docker/daemon.json; { grep -q '\"debug\"' $f \
                     || sed -i '0,/{/s//{\\n  \"debug\": true,/' $f; } && systemctl reload docker",
                ],
            )?;
        }
        self.docker.exec_with_input(
            c,
            &["docker", "import", "-", image::WORKLOAD_IMAGE],
            workload,
        )?;
        Ok(())
    }

    /// Re-opens a lab made earlier (by the command-line driver, typically).
    pub fn open(name: &str) -> Result<Lab> {
        let docker = Docker::new();
        docker.check_host()?;
        let ids = docker.run(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label={LABEL_LAB}={name}"),
        ])?;
        if ids.is_empty() {
            return Err(LabError::UnknownLab(name.to_string()));
        }
        let mut args = vec!["inspect".to_string(), "--format".to_string()];
        args.push(format!(
            "{{{{.Name}}}}|{{{{index .Config.Labels \"{LABEL_NODE}\"}}}}|{{{{index .Config.Labels \"{LABEL_ROLE}\"}}}}|{{{{index .Config.Labels \"{LABEL_HOME}\"}}}}|{{{{index .Config.Labels \"{LABEL_OWNER}\"}}}}"
        ));
        args.extend(ids.lines().map(str::to_string));
        let out = docker.run(&args)?;
        let mut nodes = Vec::new();
        let mut keep = true;
        for line in out.lines() {
            let parse_err = || LabError::Parse {
                command: "docker inspect (lab labels)".into(),
                detail: format!("`{line}`"),
            };
            let f: Vec<&str> = line.split('|').collect();
            if f.len() != 5 {
                return Err(parse_err());
            }
            let role = match f[2] {
                "manager" => Role::Manager,
                "worker" => Role::Worker,
                _ => return Err(parse_err()),
            };
            let (home, prefix) = f[3].split_once('/').ok_or_else(parse_err)?;
            let home: Ipv4Addr = home.parse().map_err(|_| parse_err())?;
            let prefix: u8 = prefix.parse().map_err(|_| parse_err())?;
            keep &= f[4] == OWNER_CLI;
            nodes.push(Node {
                name: f[1].to_string(),
                container: f[0].trim_start_matches('/').to_string(),
                role,
                home,
                home_net: Ipv4Net::new(home, prefix).map_err(|_| parse_err())?,
            });
        }
        nodes.sort_by_key(|n| (n.role, node_index(&n.name)));
        Ok(Lab {
            name: name.to_string(),
            docker,
            nodes,
            keep,
            torn_down: false,
            timings: UpTimings::default(),
        })
    }

    /// The names of every lab on this machine.
    pub fn list() -> Result<Vec<String>> {
        let docker = Docker::new();
        let out = docker.run(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL_LAB}"),
            "--format",
            &format!("{{{{.Label \"{LABEL_LAB}\"}}}}"),
        ])?;
        let set: BTreeSet<String> = out.lines().map(str::to_string).collect();
        Ok(set.into_iter().collect())
    }

    /// Removes every container, network and host rule of the lab. Keeps going
    /// past errors and reports them all.
    pub fn down(mut self) -> std::result::Result<(), Vec<LabError>> {
        self.torn_down = true;
        let errors = teardown(&self.docker, &self.name);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    // ---- networks -------------------------------------------------------

    /// The lab's networks: name → subnet.
    pub fn networks(&self) -> Result<BTreeMap<String, Ipv4Net>> {
        lab_networks(&self.docker, &self.name)
    }

    fn allocate_network(&self) -> Result<(String, Ipv4Net)> {
        let pool: Ipv4Net = SUBNET_POOL.parse().map_err(LabError::Invalid)?;
        let count = 1u32 << (24 - pool.prefix());
        let start = Rng::new(Rng::fresh_seed()).below(count as usize) as u32;
        for i in 0..count {
            let Some(subnet) = pool.subnet(24, (start + i) % count) else {
                continue;
            };
            if self.check_subnet_free(subnet).is_err() {
                continue;
            }
            match self.create_network(subnet) {
                Ok(name) => return Ok((name, subnet)),
                // Another lab took it between the check and the create.
                Err(LabError::Command { stderr, .. }) if stderr.contains("overlap") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LabError::NoFreeSubnet(pool))
    }

    /// A free /24 for moving nodes to, different from every network in use.
    pub fn free_subnet(&self) -> Result<Ipv4Net> {
        let pool: Ipv4Net = SUBNET_POOL.parse().map_err(LabError::Invalid)?;
        let count = 1u32 << (24 - pool.prefix());
        let start = Rng::new(Rng::fresh_seed()).below(count as usize) as u32;
        (0..count)
            .filter_map(|i| pool.subnet(24, (start + i) % count))
            .find(|s| self.check_subnet_free(*s).is_ok())
            .ok_or(LabError::NoFreeSubnet(pool))
    }

    /// The network of this lab for `subnet`, created if needed.
    pub fn ensure_network(&self, subnet: Ipv4Net) -> Result<String> {
        if let Some((name, _)) = self.networks()?.into_iter().find(|(_, s)| *s == subnet) {
            return Ok(name);
        }
        self.check_subnet_free(subnet)?;
        self.create_network(subnet)
    }

    /// Refuses a subnet that overlaps any Docker network, host route or range
    /// used inside the nodes, other than this lab's own network of that subnet.
    pub fn check_subnet_free(&self, subnet: Ipv4Net) -> Result<()> {
        for (cidr, owner) in RESERVED_INSIDE_NODES {
            let other: Ipv4Net = cidr.parse().map_err(LabError::Invalid)?;
            if subnet.overlaps(&other) {
                return Err(LabError::SubnetOverlap {
                    subnet,
                    other,
                    owner: owner.into(),
                });
            }
        }
        let docker_nets = all_docker_networks(&self.docker)?;
        let own = self.networks()?;
        for net in &docker_nets {
            if own.get(&net.name) == Some(&subnet) {
                continue;
            }
            for other in &net.subnets {
                if subnet.overlaps(other) {
                    return Err(LabError::SubnetOverlap {
                        subnet,
                        other: *other,
                        owner: format!("Docker network {}", net.name),
                    });
                }
            }
        }
        let bridges: BTreeSet<&str> = docker_nets.iter().map(|n| n.bridge.as_str()).collect();
        for (route, dev) in host_routes()? {
            if !bridges.contains(dev.as_str()) && subnet.overlaps(&route) {
                return Err(LabError::SubnetOverlap {
                    subnet,
                    other: route,
                    owner: format!("a route of this machine on {dev}"),
                });
            }
        }
        Ok(())
    }

    fn create_network(&self, subnet: Ipv4Net) -> Result<String> {
        let existing = self.networks()?.len();
        let name = format!("{}-n{}", self.name, existing + 1);
        self.docker.run(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            &subnet.to_string(),
            "--opt",
            &format!("com.docker.network.bridge.name={name}"),
            "--label",
            &format!("{LABEL_LAB}={}", self.name),
            "--label",
            &format!("{LABEL_OWNER}={}", self.owner_label()),
            &name,
        ])?;
        // Docker's isolation rules for internal networks drop multicast, which
        // kills mDNS; traffic that stays on the lab bridge is let through.
        let comment = format!("{RULE_COMMENT_PREFIX}{}", self.name);
        host(&[
            "iptables",
            "-I",
            "DOCKER-USER",
            "-i",
            &name,
            "-o",
            &name,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ])?;
        // The lab's networks are routed to each other through this machine
        // (as the sites of one company are): a node that did not move still
        // reaches one that did. Nothing is routed anywhere else.
        for other in self.networks()?.keys().filter(|n| **n != name) {
            for (i, o) in [(&name, other), (other, &name)] {
                host(&[
                    "iptables",
                    "-I",
                    "DOCKER-USER",
                    "-i",
                    i,
                    "-o",
                    o,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "ACCEPT",
                ])?;
            }
        }
        Ok(name)
    }

    // ---- addresses and moves ---------------------------------------------

    /// The node's current address on its lab network (None when it has none).
    pub fn address(&self, node: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self.attachment(node)?.map(|(_, ip)| ip))
    }

    fn attachment(&self, node: &str) -> Result<Option<(String, Ipv4Addr)>> {
        let n = self.node(node)?;
        let out = self.docker.run(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            &n.container,
        ])?;
        let nets: BTreeMap<String, EndpointJson> =
            serde_json::from_str(&out).map_err(|e| LabError::Parse {
                command: format!("docker inspect {}", n.container),
                detail: e.to_string(),
            })?;
        let prefix = format!("{}-n", self.name);
        Ok(nets
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .find_map(|(name, ep)| ep.ip_address.parse().ok().map(|ip| (name, ip))))
    }

    /// Every node's current address.
    pub fn addresses(&self) -> Result<BTreeMap<String, Option<Ipv4Addr>>> {
        self.nodes
            .iter()
            .map(|n| Ok((n.name.clone(), self.address(&n.name)?)))
            .collect()
    }

    /// Decides where each node goes, checking everything; changes nothing.
    pub fn plan_move(
        &self,
        names: &[String],
        subnet: Ipv4Net,
        addressing: &Addressing,
    ) -> Result<Vec<Move>> {
        let names = self.select(names)?;
        let own = self.networks()?;
        if !own.values().any(|s| *s == subnet) {
            self.check_subnet_free(subnet)?;
        }
        let current = self.addresses()?;
        let staying: BTreeSet<Ipv4Addr> = current
            .iter()
            .filter(|(n, _)| !names.contains(n))
            .filter_map(|(_, a)| *a)
            .collect();
        let olds: Vec<Option<Ipv4Addr>> = names.iter().map(|n| current[n]).collect();
        let news = match addressing {
            Addressing::Exact(map) => {
                let mut seen = BTreeSet::new();
                let mut news = Vec::new();
                for name in &names {
                    let addr = *map.get(name).ok_or_else(|| {
                        LabError::Invalid(format!("no address was given for {name}"))
                    })?;
                    if !subnet.is_node_address(addr) {
                        return Err(LabError::BadAddress { addr, subnet });
                    }
                    if staying.contains(&addr) || !seen.insert(addr) {
                        return Err(LabError::Invalid(format!(
                            "{addr} is given to {name} but another node has it"
                        )));
                    }
                    news.push(addr);
                }
                news
            }
            Addressing::Shuffled { seed } => {
                let candidates: Vec<Ipv4Addr> = subnet
                    .node_addresses()
                    .filter(|a| !staying.contains(a) && !olds.contains(&Some(*a)))
                    .collect();
                if candidates.len() < names.len() {
                    return Err(LabError::SubnetTooSmall {
                        subnet,
                        room: candidates.len(),
                        wanted: names.len(),
                    });
                }
                shuffled_addresses(&candidates, &olds, &mut Rng::new(*seed))
            }
        };
        Ok(names
            .into_iter()
            .zip(olds)
            .zip(news)
            .map(|((node, from), to)| Move { node, from, to })
            .collect())
    }

    /// Moves nodes to `subnet`, all at once: the old link goes away, the new one
    /// comes up as `eth0` with a default route, as when a host is re-plugged.
    pub fn move_nodes(
        &self,
        names: &[String],
        subnet: Ipv4Net,
        addressing: Addressing,
    ) -> Result<MoveReport> {
        let moves = self.plan_move(names, subnet, &addressing)?;
        let started = Instant::now();
        let network = self.ensure_network(subnet)?;
        // Every moving node leaves before any arrives, as when hosts are
        // carried to another site: no moved node can talk to one that has not
        // moved yet (Docker would learn the new address from that traffic).
        par_map(&moves, |m| self.unplug(&m.node))?;
        par_map(&moves, |m| self.plug(&m.node, m.to, &network, subnet))?;
        Ok(MoveReport {
            subnet,
            moves,
            seed: match addressing {
                Addressing::Shuffled { seed } => Some(seed),
                Addressing::Exact(_) => None,
            },
            took: started.elapsed(),
        })
    }

    /// Moves nodes back to the address they were created with.
    pub fn move_home(&self, names: &[String]) -> Result<MoveReport> {
        let names = self.select(names)?;
        let nets: BTreeSet<Ipv4Net> = names
            .iter()
            .map(|n| self.node(n).map(|n| n.home_net))
            .collect::<Result<_>>()?;
        let [subnet]: [Ipv4Net; 1] = nets
            .into_iter()
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| LabError::Invalid("the nodes named have different home subnets".into()))?;
        let map = names
            .iter()
            .map(|n| Ok((n.clone(), self.node(n)?.home)))
            .collect::<Result<_>>()?;
        self.move_nodes(&names, subnet, Addressing::Exact(map))
    }

    /// Unplugs a node from its lab network (first half of a move).
    fn unplug(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        let Some((old_net, old_addr)) = self.attachment(node)? else {
            return Ok(());
        };
        self.docker
            .run(&["network", "disconnect", "--force", &old_net, &n.container])?;
        // Docker removes the interface by the name it gave it; the lab
        // renamed it to eth0, so the old link can survive the disconnect.
        if self.is_running(node)? {
            self.docker.sh(&n.container, &unlink_script(old_addr))?;
        }
        Ok(())
    }

    /// Plugs a node into `network` with address `addr` (second half of a move).
    fn plug(&self, node: &str, addr: Ipv4Addr, network: &str, subnet: Ipv4Net) -> Result<()> {
        let n = self.node(node)?;
        self.docker.run(&[
            "network",
            "connect",
            "--ip",
            &addr.to_string(),
            network,
            &n.container,
        ])?;
        if self.is_running(node)? {
            self.docker
                .sh(&n.container, &relink_script(addr, subnet.gateway()))?;
        }
        Ok(())
    }

    // ---- faults ------------------------------------------------------------

    pub fn is_running(&self, node: &str) -> Result<bool> {
        let n = self.node(node)?;
        Ok(self
            .docker
            .run(&["inspect", "--format", "{{.State.Running}}", &n.container])?
            == "true")
    }

    /// The host end of the node's eth0.
    fn host_veth(&self, node: &str) -> Result<String> {
        let iflink = self.exec(node, &["cat", "/sys/class/net/eth0/iflink"])?;
        let links = host(&["ip", "-o", "link", "show"])?;
        links
            .lines()
            .find_map(|l| {
                let (idx, rest) = l.split_once(": ")?;
                (idx.trim() == iflink).then(|| rest.split(['@', ':']).next().map(str::to_string))?
            })
            .ok_or_else(|| LabError::Parse {
                command: "ip -o link show".into(),
                detail: format!("no host interface with index {iflink} (eth0 of {node})"),
            })
    }

    /// Cuts the node's cable: its link loses carrier, its address stays.
    pub fn cut(&self, node: &str) -> Result<()> {
        let veth = self.host_veth(node)?;
        host(&["ip", "link", "set", "dev", &veth, "down"]).map(|_| ())
    }

    pub fn heal(&self, node: &str) -> Result<()> {
        let veth = self.host_veth(node)?;
        host(&["ip", "link", "set", "dev", &veth, "up"])?;
        let (_, addr) = self
            .attachment(node)?
            .ok_or_else(|| LabError::Invalid(format!("{node} has no lab network")))?;
        let subnet = self.subnet_of(addr)?;
        self.sh(node, &relink_script(addr, subnet.gateway()))
            .map(|_| ())
    }

    fn subnet_of(&self, addr: Ipv4Addr) -> Result<Ipv4Net> {
        self.networks()?
            .into_values()
            .find(|s| s.contains(addr))
            .ok_or_else(|| LabError::Invalid(format!("{addr} is in none of the lab's networks")))
    }

    pub fn stop(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.docker
            .run(&["stop", "--time", "20", &n.container])
            .map(|_| ())
    }

    /// Starts a stopped node and waits until its dockerd answers again.
    pub fn start(&self, node: &str) -> Result<()> {
        let n = self.node(node)?.clone();
        self.docker.run(&["start", &n.container])?;
        if let Some((_, addr)) = self.attachment(node)? {
            let subnet = self.subnet_of(addr)?;
            self.sh(node, &relink_script(addr, subnet.gateway()))?;
        }
        self.wait_docker(&n)
    }

    pub fn restart_docker(&self, node: &str) -> Result<()> {
        let n = self.node(node)?.clone();
        self.docker
            .exec(&n.container, &["systemctl", "restart", "docker.service"])?;
        self.wait_docker(&n)
    }

    fn wait_docker(&self, n: &Node) -> Result<()> {
        wait_for(
            &format!("dockerd on {}", n.name),
            Duration::from_secs(90),
            Duration::from_millis(250),
            || {
                Ok(self
                    .docker
                    .exec(
                        &n.container,
                        &["docker", "info", "--format", "{{.ServerVersion}}"],
                    )
                    .ok()
                    .map(|_| ()))
            },
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep || self.torn_down {
            return;
        }
        for err in teardown(&self.docker, &self.name) {
            eprintln!("lab {}: teardown: {err}", self.name);
        }
    }
}

/// Deletes whatever link inside the node still carries `addr`.
fn unlink_script(addr: Ipv4Addr) -> String {
    format!(
        r#"for ifc in $(ip -o -4 addr show | awk '$4 ~ "^{addr}/" {{print $2}}'); do ip link del dev "$ifc"; done"#
    )
}

/// Brings the interface carrying `addr` up as `eth0` with a default route, as
/// a host's network configuration would after being plugged into a new network.
/// No temporary file: a CI run failed with `cat: /tmp/hosts.lab: No such
/// file or directory` between two lines of the script, right after the node
/// started. The likely cause, not caught in the act: the node image's
/// systemd-tmpfiles empties /tmp at boot (`D /tmp`).
fn relink_script(addr: Ipv4Addr, gateway: Ipv4Addr) -> String {
    format!(
        r#"ifc=$(ip -o -4 addr show | awk '$4 ~ "^{addr}/" {{print $2; exit}}')
[ -n "$ifc" ] || {{ echo "no interface has {addr}" >&2; exit 1; }}
if [ "$ifc" != eth0 ]; then
  ip link set dev "$ifc" down
  ip link set dev "$ifc" name eth0
fi
ip link set dev eth0 up
ip route replace default via {gateway} dev eth0
h=$(hostname)
others=$(grep -v -w -e "$h" /etc/hosts || true)
printf '%s\n%s\t%s\n' "$others" "{addr}" "$h" > /etc/hosts
"#
    )
}

/// Picks one new address per node so that none keeps its address and, with two
/// or more nodes, their order by address differs from the old order: nothing
/// maps by position.
pub fn shuffled_addresses(
    candidates: &[Ipv4Addr],
    olds: &[Option<Ipv4Addr>],
    rng: &mut Rng,
) -> Vec<Ipv4Addr> {
    let k = olds.len();
    let mut pool = candidates.to_vec();
    rng.shuffle(&mut pool);
    let mut picked: Vec<Ipv4Addr> = pool.into_iter().take(k).collect();
    let old_rank = ranks(olds);
    for _ in 0..64 {
        rng.shuffle(&mut picked);
        let moved = picked.iter().zip(olds).all(|(n, o)| Some(*n) != *o);
        let new_rank = ranks(&picked.iter().copied().map(Some).collect::<Vec<_>>());
        if moved && (k < 2 || new_rank != old_rank) {
            break;
        }
    }
    picked
}

fn ranks(addrs: &[Option<Ipv4Addr>]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..addrs.len()).collect();
    idx.sort_by_key(|i| addrs[*i]);
    idx
}

fn node_index(name: &str) -> u32 {
    name.trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(0)
}

/// Set to `1`, every node's dockerd logs at debug level (what swarmkit logs
/// when it refuses to remove a demoted manager from raft, for one).
pub const DOCKERD_DEBUG: &str = "SG_LAB_DOCKERD_DEBUG";

/// The flags that make a container boot systemd with a working dockerd on this
/// kind of machine (`--privileged` fails here: the kernel's bounding set lacks
/// CAP_SYS_RESOURCE). The node's dockerd keeps its data on an anonymous volume,
/// so it can use overlay2 instead of vfs.
fn node_run_flags() -> &'static [&'static str] {
    &[
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--security-opt",
        "systempaths=unconfined",
        "--cgroupns",
        "host",
        "--volume",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--device-cgroup-rule",
        "a *:* rwm",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--tmpfs",
        "/tmp",
        "--volume",
        "/var/lib/docker",
        "--stop-signal",
        "SIGRTMIN+3",
    ]
}

fn this_process_owner() -> String {
    let pid = std::process::id();
    format!("pid:{pid}:{}", process_start_time(pid).unwrap_or_default())
}

/// Field 22 of /proc/PID/stat: tells a live owner from a reused PID.
fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19).map(str::to_string)
}

fn owner_alive(owner: &str) -> bool {
    if owner == OWNER_CLI {
        return true;
    }
    let mut parts = owner.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("pid"), Some(pid), Some(start)) => pid
            .parse::<u32>()
            .ok()
            .and_then(process_start_time)
            .is_some_and(|s| s == start),
        _ => false,
    }
}

struct DockerNet {
    name: String,
    bridge: String,
    subnets: Vec<Ipv4Net>,
}

fn all_docker_networks(docker: &Docker) -> Result<Vec<DockerNet>> {
    let ids = docker.run(&["network", "ls", "-q"])?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "network".to_string(),
        "inspect".into(),
        "--format".into(),
        r#"{{.Name}}|{{.Id}}|{{index .Options "com.docker.network.bridge.name"}}|{{range .IPAM.Config}}{{.Subnet}} {{end}}"#.into(),
    ];
    args.extend(ids.lines().map(str::to_string));
    let out = docker.run(&args)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let [name, id, bridge, subnets] = f.as_slice() else {
                return None;
            };
            let bridge = if bridge.is_empty() || *bridge == "<no value>" {
                format!("br-{}", id.get(..12).unwrap_or(id))
            } else {
                (*bridge).to_string()
            };
            Some(DockerNet {
                name: (*name).to_string(),
                bridge,
                subnets: subnets
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            })
        })
        .collect())
}

fn lab_networks(docker: &Docker, lab: &str) -> Result<BTreeMap<String, Ipv4Net>> {
    let names = docker.run(&[
        "network",
        "ls",
        "--filter",
        &format!("label={LABEL_LAB}={lab}"),
        "--format",
        "{{.Name}}",
    ])?;
    let mut out = BTreeMap::new();
    for name in names.lines() {
        let subnet = docker.run(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            name,
        ])?;
        let subnet = subnet.parse().map_err(|detail| LabError::Parse {
            command: format!("docker network inspect {name}"),
            detail,
        })?;
        out.insert(name.to_string(), subnet);
    }
    Ok(out)
}

/// The host's IPv4 routes with a destination prefix: (subnet, device).
fn host_routes() -> Result<Vec<(Ipv4Net, String)>> {
    let out = host(&["ip", "-4", "-o", "route", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dest = words.next()?;
            let dest: Ipv4Net = if dest.contains('/') {
                dest.parse().ok()?
            } else {
                format!("{dest}/32").parse().ok()?
            };
            let dev = l.split_whitespace().skip_while(|w| *w != "dev").nth(1)?;
            Some((dest, dev.to_string()))
        })
        .collect())
}

/// Removes everything carrying the lab's name; returns every error met.
pub fn teardown(docker: &Docker, lab: &str) -> Vec<LabError> {
    let mut errors = Vec::new();
    let filter = format!("label={LABEL_LAB}={lab}");
    match docker.run(&["ps", "-a", "-q", "--filter", &filter]) {
        Ok(ids) if !ids.is_empty() => {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(ids.lines());
            if let Err(e) = docker.run(&args) {
                errors.push(e);
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    match docker.run(&["network", "ls", "-q", "--filter", &filter]) {
        Ok(ids) => {
            for id in ids.lines() {
                // dockerd may release a removed container's endpoint a moment
                // after `rm` returned.
                let mut tries = 0;
                loop {
                    match docker.run(&["network", "rm", id]) {
                        Err(e) if tries < 10 && e.to_string().contains("active endpoints") => {
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(500));
                        }
                        Err(e) => {
                            errors.push(e);
                            break;
                        }
                        Ok(_) => break,
                    }
                }
            }
        }
        Err(e) => errors.push(e),
    }
    errors.extend(remove_host_rules(|comment| {
        comment == format!("{RULE_COMMENT_PREFIX}{lab}")
    }));
    errors
}

fn remove_host_rules(matches: impl Fn(&str) -> bool) -> Vec<LabError> {
    let rules = match host(&["iptables", "-S", "DOCKER-USER"]) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for rule in rules.lines() {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let comment = words
            .iter()
            .position(|w| *w == "--comment")
            .and_then(|i| words.get(i + 1))
            .map(|c| c.trim_matches('"'));
        if words.first() != Some(&"-A") || !comment.is_some_and(&matches) {
            continue;
        }
        let mut args = vec!["iptables", "-D"];
        args.extend(words[1..].iter().map(|w| w.trim_matches('"')));
        if let Err(e) = host(&args) {
            errors.push(e);
        }
    }
    errors
}

/// What is still on this machine with the lab's name: containers, networks,
/// host rules. Empty after a complete teardown.
/// Takes a test's lab down and checks that nothing of it is left; panics
/// with what went wrong (for tests).
pub fn tear_down_checked(lab: Lab) {
    let name = lab.name().to_string();
    if let Err(errors) = lab.down() {
        panic!("teardown of {name} failed: {errors:?}");
    }
    let left = leftovers(&Docker::new(), &name).expect("leftovers can be listed");
    assert!(left.is_empty(), "lab {name} left these behind: {left:#?}");
}

pub fn leftovers(docker: &Docker, lab: &str) -> Result<Vec<String>> {
    let filter = format!("label={LABEL_LAB}={lab}");
    let mut out = Vec::new();
    for c in docker
        .run(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?
        .lines()
    {
        out.push(format!("container {c}"));
    }
    for n in docker
        .run(&[
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ])?
        .lines()
    {
        out.push(format!("network {n}"));
    }
    let comment = format!("{RULE_COMMENT_PREFIX}{lab}");
    for table in ["filter", "nat"] {
        for rule in host(&["iptables", "-t", table, "-S"])?.lines() {
            if rule
                .split_whitespace()
                .any(|w| w.trim_matches('"') == comment)
            {
                out.push(format!("iptables -t {table}: {rule}"));
            }
        }
    }
    Ok(out)
}

/// Removes labs whose owning test process is gone (killed runs), and host
/// rules whose lab no longer exists.
pub fn clean_stale_labs(docker: &Docker) -> Vec<LabError> {
    let mut errors = Vec::new();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let fmt = format!("{{{{.Label \"{LABEL_LAB}\"}}}}|{{{{.Label \"{LABEL_OWNER}\"}}}}");
    let filter = format!("label={LABEL_LAB}");
    for kind in [&["ps", "-a"][..], &["network", "ls"][..]] {
        let mut args = kind.to_vec();
        args.extend(["--filter", filter.as_str(), "--format", fmt.as_str()]);
        match docker.run(&args) {
            Ok(out) => {
                for line in out.lines() {
                    if let Some((lab, owner)) = line.split_once('|') {
                        owners.insert(lab.to_string(), owner.to_string());
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for (lab, owner) in &owners {
        if !owner_alive(owner) {
            eprintln!("lab: removing stale lab {lab} (owner {owner} is gone)");
            errors.extend(teardown(docker, lab));
        }
    }
    let live: BTreeSet<String> = owners
        .iter()
        .filter(|(_, o)| owner_alive(o))
        .map(|(l, _)| format!("{RULE_COMMENT_PREFIX}{l}"))
        .collect();
    errors.extend(remove_host_rules(|c| {
        c.starts_with(RULE_COMMENT_PREFIX) && !live.contains(c)
    }));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn shuffled_addresses_never_keep_an_address_or_the_order() {
        let candidates: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 231, 9, h)).collect();
        let olds = vec![
            Some(ip("10.231.9.11")),
            Some(ip("10.231.9.12")),
            Some(ip("10.231.9.13")),
        ];
        for seed in 0..200 {
            let cands: Vec<Ipv4Addr> = candidates
                .iter()
                .copied()
                .filter(|c| !olds.contains(&Some(*c)))
                .collect();
            let news = shuffled_addresses(&cands, &olds, &mut Rng::new(seed));
            assert_eq!(news.len(), 3);
            let distinct: BTreeSet<_> = news.iter().collect();
            assert_eq!(distinct.len(), 3, "seed {seed}: {news:?}");
            assert_ne!(
                ranks(&news.iter().copied().map(Some).collect::<Vec<_>>()),
                ranks(&olds),
                "seed {seed}: new addresses {news:?} keep the old order"
            );
        }
    }

    #[test]
    fn shuffled_addresses_are_reproducible_from_the_seed() {
        let cands: Vec<Ipv4Addr> = (10..200).map(|h| Ipv4Addr::new(10, 231, 2, h)).collect();
        let olds = vec![Some(ip("10.231.1.11")), Some(ip("10.231.1.12")), None];
        let a = shuffled_addresses(&cands, &olds, &mut Rng::new(42));
        let b = shuffled_addresses(&cands, &olds, &mut Rng::new(42));
        assert_eq!(a, b);
    }

    #[test]
    fn owner_of_this_process_is_alive_and_others_are_not() {
        assert!(owner_alive(&this_process_owner()));
        assert!(owner_alive(OWNER_CLI));
        assert!(!owner_alive("pid:999999999:1"));
        assert!(!owner_alive(&format!("pid:{}:0", std::process::id())));
        assert!(!owner_alive("garbage"));
    }

    #[test]
    fn node_names_sort_by_number() {
        assert!(node_index("m2") < node_index("m10"));
    }
}
