//! The recovery driven round by round through the recording ports: the
//! swarm shapes and failures the lab found the hard way, each in
//! milliseconds and without root. The test plays Docker: it says who leads,
//! what the swarm records, and carries out the re-addressings the recoverer
//! starts the way the real ones end.

use super::*;
use crate::host::HostError;
use crate::memory::{NodeMemory, PinnedAgent};
use crate::ports::recording::RecordingHost;
use crate::ports::recording::{
    describe, RecordingAgents, RecordingDiscovery, RecordingPeers, RecordingStore, RecordingSwarm,
    Script,
};
use glue_protocol::{DockerdAddrs, SigningKey};
use std::sync::atomic::Ordering;

const OLD: u8 = 1;
const NEW: u8 = 2;

fn at(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, net, host)
}

/// What a node's dockerd holds when it holds `addr`.
fn holding(addr: Ipv4Addr) -> DockerdAddrs {
    DockerdAddrs {
        read_ms: 1,
        node_addr: addr.to_string(),
        state: BTreeMap::from([("AdvertiseAddr".into(), addr.to_string())]),
        error: None,
    }
}

/// A swarm of managers m1.. and workers w1.. on 10.0.1.0/24 (host numbers
/// in that order), seen from m1, with every agent pinned and answering.
struct World {
    host: Arc<RecordingHost>,
    discovery: Arc<RecordingDiscovery>,
    peers: Arc<RecordingPeers>,
    agents: Arc<RecordingAgents>,
    store: Arc<RecordingStore>,
    swarm: Arc<RecordingSwarm>,
    memory: Memory,
    /// Node → host number.
    number: BTreeMap<String, u8>,
    /// Where each node is now.
    now: BTreeMap<String, Ipv4Addr>,
    leader: String,
    /// The raft address Docker records for each manager.
    recorded: BTreeMap<String, Ipv4Addr>,
    /// Re-addressings already carried out.
    carried_out: usize,
    /// The other managers' glue-managers re-address this one when it is the
    /// leader and last (a manager cannot promote itself back).
    others_act: bool,
}

impl World {
    fn new(managers: u8, workers: u8) -> World {
        let key = SigningKey::generate().expect("key").public();
        let mut memory = Memory {
            node_id: "m1".into(),
            cluster_id: "c".into(),
            ..Memory::default()
        };
        let names = (1..=managers)
            .map(|i| (format!("m{i}"), Role::Manager))
            .chain((1..=workers).map(|i| (format!("w{i}"), Role::Worker)));
        let mut w = World {
            host: Arc::new(RecordingHost::new(&[at(OLD, 1)], 1_000_000)),
            discovery: Arc::default(),
            peers: Arc::default(),
            agents: Arc::default(),
            store: Arc::default(),
            swarm: Arc::default(),
            memory: Memory::default(),
            number: BTreeMap::new(),
            now: BTreeMap::new(),
            leader: "m1".into(),
            recorded: BTreeMap::new(),
            carried_out: 0,
            others_act: true,
        };
        for (i, (name, role)) in names.enumerate() {
            let addr = at(OLD, i as u8 + 1);
            let manager = role == Role::Manager;
            memory.nodes.insert(
                name.clone(),
                NodeMemory {
                    hostname: name.clone(),
                    role,
                    availability: "active".into(),
                    addr: addr.to_string(),
                    manager_addr: manager.then(|| format!("{addr}:2377")),
                    arch: "x86_64".into(),
                    agent: Some(PinnedAgent {
                        endpoint: SocketAddr::from((addr, 7950)),
                        key,
                        version: "recording".into(),
                    }),
                },
            );
            w.number.insert(name.clone(), i as u8 + 1);
            if manager {
                w.recorded.insert(name.clone(), addr);
            }
            w.place(&name, addr);
            w.agents.with(&name, |a| a.dockerd = Some(holding(addr)));
        }
        w.memory = memory;
        w
    }

    fn recoverer(&self) -> Recoverer {
        let ports = Ports {
            host: self.host.clone(),
            discovery: Box::new(self.discovery.clone()),
            peers: self.peers.clone(),
            agents: self.agents.clone(),
            store: Box::new(self.store.clone()),
        };
        Recoverer::new(ports, 7950)
    }

    /// `node` answers at `addr` from now on: its host, its agent, its raft
    /// port (a manager), its `.local` name. Its dockerd holds what it held.
    fn place(&mut self, node: &str, addr: Ipv4Addr) {
        self.now.insert(node.to_string(), addr);
        if node == "m1" {
            self.host.set_addrs(Ok(vec![addr]));
            self.agents.place(node, &[Ipv4Addr::LOCALHOST, addr]);
        } else {
            self.agents.place(node, &[addr]);
        }
        if self.recorded.contains_key(node) {
            self.peers.place(node, addr);
        }
        self.discovery.name(node, addr);
    }

    /// Moves `nodes` to 10.0.`net`.0/24, each keeping its host number.
    fn move_to(&mut self, net: u8, nodes: &[&str]) {
        for n in nodes {
            let addr = at(net, self.number[*n]);
            self.place(n, addr);
        }
    }

    fn move_all(&mut self, net: u8) {
        let all: Vec<String> = self.number.keys().cloned().collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.move_to(net, &all);
    }

    fn healthy(&self) -> Health {
        Health::Healthy {
            leader: self.leader.clone(),
            recorded: self.recorded.clone(),
        }
    }

    /// One round as the daemon runs it, then the re-addressing it started
    /// ends (see [`World::carry_out`]).
    async fn round(&mut self, r: &mut Recoverer, health: Health) -> Vec<String> {
        let lines = r.step(&self.memory, health, Some(self.swarm.clone())).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        self.carry_out();
        self.others_readdress_this_one();
        lines
    }

    /// m1 led and is the last manager at its old address: m2 demotes it
    /// (leadership moves to m2) and re-addresses it.
    fn others_readdress_this_one(&mut self) {
        let others_done = self
            .recorded
            .iter()
            .all(|(m, a)| m == "m1" || *a == self.now[m]);
        if self.others_act
            && self.leader == "m1"
            && others_done
            && self.recorded["m1"] != self.now["m1"]
        {
            self.leader = "m2".into();
            let to = self.now["m1"];
            self.readdressed("m1", to);
        }
    }

    /// Does what the re-addressings started since the last look did when
    /// they ended: the swarm records a re-addressed manager at its new
    /// address, a restarted dockerd holds its node's current one. (A
    /// scripted failure or "not now" is carried out as well: the test
    /// says which it wants by what it scripted.)
    fn carry_out(&mut self) {
        let done = self.swarm.readdressed();
        for work in &done[self.carried_out..] {
            match work {
                Readdressing::Nodes { targets, .. } => {
                    for t in targets {
                        self.readdressed(&t.node, t.to);
                    }
                }
                Readdressing::ThisHost { new, .. } => self.readdressed("m1", *new),
            }
        }
        self.carried_out = done.len();
    }

    /// `node`'s dockerd restarted at `addr`; a manager is recorded there.
    fn readdressed(&mut self, node: &str, addr: Ipv4Addr) {
        self.agents.with(node, |a| a.dockerd = Some(holding(addr)));
        if let Some(rec) = self.recorded.get_mut(node) {
            *rec = addr;
        }
        // The daemon's next look at Docker remembers the new address.
        if let Some(n) = self.memory.nodes.get_mut(node) {
            n.addr = addr.to_string();
            if n.manager_addr.is_some() {
                n.manager_addr = Some(format!("{addr}:2377"));
            }
        }
    }

    /// A round while the swarm has its leader.
    async fn healthy_round(&mut self, r: &mut Recoverer) -> Vec<String> {
        let health = self.healthy();
        self.round(r, health).await
    }

    /// Rounds (healthy, as Docker is once the rules are in force) until
    /// the recovery is over or `limit` rounds ran; every line said.
    async fn until_idle(&mut self, r: &mut Recoverer, limit: usize) -> Vec<String> {
        let mut all = Vec::new();
        for _ in 0..limit {
            let health = self.healthy();
            all.extend(self.round(r, health).await);
            if r.phase() == Phase::Idle {
                break;
            }
        }
        all
    }

    fn rules_of(&self, node: &str) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let agent = self.agents.agent(node).expect("agent");
        agent.rewrites.iter().map(|r| (r.from, r.to)).collect()
    }

    fn period(&self) -> Duration {
        self.swarm.period.lock().expect("period").0
    }
}

/// A 3 + 2 swarm all moved to NEW, after the first round (no leader yet):
/// the rules are out.
async fn moved_3_2() -> (World, Recoverer) {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    w.round(&mut r, Health::NoLeader).await;
    (w, r)
}

fn said(lines: &[String], part: &str) -> bool {
    lines.iter().any(|l| l.contains(part))
}

/// Every node that moved from OLD to NEW: its old address to its new one.
fn moved_rules(w: &World) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut rules: Vec<(Ipv4Addr, Ipv4Addr)> = w
        .now
        .iter()
        .filter(|(_, a)| a.octets()[2] == NEW)
        .map(|(n, a)| (at(OLD, w.number[n]), *a))
        .collect();
    rules.sort();
    rules
}

#[tokio::test]
async fn a_healthy_swarm_that_did_not_move_costs_nothing() {
    let mut w = World::new(3, 2);
    w.swarm.period.lock().expect("period").1 = None;
    let mut r = w.recoverer();
    for _ in 0..3 {
        assert!(w.healthy_round(&mut r).await.is_empty());
    }
    assert!(w.agents.told().is_empty(), "{:?}", w.agents.told());
    assert!(w.peers.proofs().is_empty());
    assert!(w.swarm.readdressed().is_empty());
    // Only the heartbeat is looked at once (a restart may have left it raised).
    assert_eq!(w.swarm.heartbeat_calls(), ["release"]);
    assert_eq!(w.store.saves.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_whole_swarm_moved_comes_back_readdressed_with_no_rule_left() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    let first = w.round(&mut r, Health::NoLeader).await;
    assert_eq!(r.phase(), Phase::Rewrite, "{first:#?}");
    // Every node gets every moved node's old address to its new one.
    for n in ["m1", "m2", "m3", "w1", "w2"] {
        assert_eq!(w.rules_of(n), moved_rules(&w), "{n}");
    }
    let rest = w.until_idle(&mut r, 40).await;
    assert_eq!(r.phase(), Phase::Idle, "{rest:#?}");
    for n in ["m1", "m2", "m3", "w1", "w2"] {
        assert!(w.rules_of(n).is_empty(), "{n} keeps {:?}", w.rules_of(n));
        assert_eq!(
            w.agents.agent(n).and_then(|a| a.dockerd),
            Some(holding(w.now[n])),
            "{n}'s dockerd"
        );
    }
    for m in ["m1", "m2", "m3"] {
        assert_eq!(w.recorded[m], at(NEW, w.number[m]), "{m} recorded");
    }
    assert_eq!(w.period(), Duration::from_secs(5), "heartbeat back");
    assert!(said(&rest, "dispatcher heartbeat back to 5s"), "{rest:#?}");
    let saved = w.store.file.lock().expect("file").clone();
    assert_eq!(saved.recovery.phase, Phase::Idle);
    assert!(saved.recovery.converged_ms.is_some(), "{saved:#?}");
}

/// The rules `node`'s agent has for `nodes`' old addresses.
fn rules_for(w: &World, node: &str, nodes: &[&str]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let olds: Vec<Ipv4Addr> = nodes.iter().map(|n| at(OLD, w.number[*n])).collect();
    w.rules_of(node)
        .into_iter()
        .filter(|(from, _)| olds.contains(from))
        .collect()
}

/// m3 moved but neither answers nor is heard yet: its claim is not there.
fn m3_unheard(w: &World) {
    w.peers.at.lock().expect("peers").retain(|_, n| n != "m3");
    w.discovery.names.lock().expect("names").remove("m3");
    w.agents.with("m3", |a| a.silent = true);
}

#[tokio::test]
async fn a_peer_proven_late_gets_its_rule_the_round_it_is_proven() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    m3_unheard(&w);
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(rules_for(&w, "w1", &["m3"]), []);
    assert_eq!(rules_for(&w, "w1", &["m2"]), [(at(OLD, 2), at(NEW, 2))]);
    assert!(!w.peers.proofs().iter().any(|(n, _)| n == "m3"));
    // Re-addressing does not start while a manager is unproven.
    let lines = w.round(&mut r, Health::NoLeader).await;
    assert!(w.swarm.readdressed().is_empty(), "{lines:?}");
    w.move_to(NEW, &["m3"]);
    w.agents.with("m3", |a| a.silent = false);
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(rules_for(&w, "w1", &["m3"]), [(at(OLD, 3), at(NEW, 3))]);
    assert_eq!(rules_for(&w, "m3", &["m2"]), [(at(OLD, 2), at(NEW, 2))]);
}

#[tokio::test]
async fn a_claim_no_manager_proves_never_becomes_a_rule() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    m3_unheard(&w);
    // A host on the link claims to be m3, and m3's name resolves to it: it
    // presents no certificate of m3.
    w.discovery.name("m3", at(NEW, 66));
    w.peers.place("m9", at(NEW, 66));
    let heard = Heard {
        announcement: crate::discovery::Announcement {
            cluster: "c".into(),
            node: "m3".into(),
            addrs: vec![at(NEW, 67)],
            agent_port: 7950,
        },
        sender: IpAddr::V4(at(NEW, 67)),
        interface: "eth0".into(),
        service: "swarm-glue m3".into(),
    };
    assert!(
        r.hear(&w.memory, Event::Heard(heard.clone())),
        "a new claim"
    );
    // A claim for a node this swarm does not have as a manager is not taken.
    let mut stranger = heard.clone();
    stranger.announcement.node = "w1".into();
    assert!(!r.hear(&w.memory, Event::Heard(stranger)));
    let mut other_swarm = heard;
    other_swarm.announcement.cluster = "d".into();
    assert!(!r.hear(&w.memory, Event::Heard(other_swarm)));
    for _ in 0..2 {
        w.round(&mut r, Health::NoLeader).await;
    }
    let tried: Vec<Ipv4Addr> = w
        .peers
        .proofs()
        .into_iter()
        .filter(|(n, _)| n == "m3")
        .map(|(_, a)| a)
        .collect();
    assert!(
        tried.contains(&at(NEW, 66)) && tried.contains(&at(NEW, 67)),
        "{tried:?}"
    );
    for n in ["m1", "m2", "w1", "w2"] {
        assert!(
            w.rules_of(n).iter().all(|(_, to)| to.octets()[3] < 60),
            "{n}: {:?}",
            w.rules_of(n)
        );
    }
}

#[tokio::test]
async fn a_proof_made_before_this_host_moved_is_made_again() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    // m3 alone renumbered first: proven at its new address.
    w.move_to(NEW, &["m3"]);
    w.round(&mut r, Health::NoLeader).await;
    let proofs_of_m3 = |w: &World| w.peers.proofs().iter().filter(|(n, _)| n == "m3").count();
    assert_eq!(proofs_of_m3(&w), 1);
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(proofs_of_m3(&w), 1, "a proof stands while nothing changed");
    // Then this host moves too: what it proved from its old link is proven again.
    w.move_to(NEW, &["m1", "m2", "w1", "w2"]);
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(proofs_of_m3(&w), 2);
}

#[tokio::test]
async fn nothing_is_proven_while_this_hosts_own_agent_is_silent() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    w.agents.with("m1", |a| a.silent = true);
    for _ in 0..2 {
        w.round(&mut r, Health::NoLeader).await;
    }
    assert!(w.peers.proofs().is_empty(), "{:?}", w.peers.proofs());
    // Workers need no proof (their agents' keys are pinned); managers do.
    assert_eq!(rules_for(&w, "w1", &["m2", "m3"]), []);
    w.agents.with("m1", |a| a.silent = false);
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(w.rules_of("w1"), moved_rules(&w));
}

#[tokio::test]
async fn an_agent_that_does_not_answer_holds_clean_up_and_is_named_until_it_does() {
    let (mut w, mut r) = moved_3_2().await;
    w.agents.with("w2", |a| a.silent = true);
    let lines = w.until_idle(&mut r, 20).await;
    assert_eq!(r.phase(), Phase::CleanUp, "{lines:#?}");
    assert_eq!(r.file.waiting.len(), 1, "{:?}", r.file.waiting);
    assert!(
        r.file.waiting[0].starts_with("w2 ("),
        "{:?}",
        r.file.waiting
    );
    assert_eq!(w.rules_of("w1"), [], "the others are clean already");
    // It answers again, its dockerd at the old address (it missed the
    // restarts): the leader's manager restarts it (m2 leads since m1 was
    // re-addressed), then the last rules go.
    w.agents.with("w2", |a| a.silent = false);
    w.until_idle(&mut r, 2).await;
    assert_eq!(r.phase(), Phase::CleanUp);
    assert!(
        r.file.waiting[0].contains("its dockerd still holds NodeAddr 10.0.1.5"),
        "{:?}",
        r.file.waiting
    );
    assert_eq!(w.swarm.readdressed().len(), 2, "m1 does not coordinate it");
    w.leader = "m1".into();
    let lines = w.until_idle(&mut r, 5).await;
    assert_eq!(r.phase(), Phase::Idle, "{lines:#?}");
    assert!(said(&lines, "recorded: w2 10.0.2.5→10.0.2.5"), "{lines:#?}");
    assert!(w.rules_of("w2").is_empty());
    assert!(r.file.waiting.is_empty());
}

#[tokio::test]
async fn a_node_down_through_clean_up_gets_the_heartbeat_back_and_keeps_its_rules() {
    let (mut w, mut r) = moved_3_2().await;
    w.agents.with("w2", |a| a.silent = true);
    r.down.insert("w2".into());
    r.not_ready.insert("w2".into());
    let lines = w.until_idle(&mut r, 20).await;
    assert_eq!(r.phase(), Phase::CleanUp, "{lines:#?}");
    assert!(
        said(&lines, "clean-up waits only for w2, down"),
        "{lines:#?}"
    );
    assert_eq!(w.period(), Duration::from_secs(5), "not left at 20 s");
    // It keeps the rules it had: its dockerd still dials the old addresses.
    assert_eq!(w.rules_of("w2"), moved_rules(&w));
}

#[tokio::test]
async fn a_manager_killed_mid_readdressing_is_continued_by_its_next_process() {
    let (mut w, mut r) = moved_3_2().await;
    w.swarm
        .scripts
        .lock()
        .expect("scripts")
        .push_back(Script::Hang);
    w.healthy_round(&mut r).await;
    let started = w.swarm.readdressed();
    assert_eq!(started.len(), 1);
    w.healthy_round(&mut r).await;
    assert_eq!(
        w.swarm.readdressed().len(),
        1,
        "one re-addressing at a time"
    );
    // Killed with m2 demoted: its mark is in the swarm, the file on disk.
    drop(r);
    w.swarm
        .marks
        .lock()
        .expect("marks")
        .insert("m2".into(), (at(OLD, 2), at(NEW, 2)));
    w.carried_out = w.swarm.readdressed().len();
    let mut again = w.recoverer();
    assert_eq!(again.phase(), Phase::Readdress, "continued from its file");
    w.healthy_round(&mut again).await;
    let next = w.swarm.readdressed();
    assert_eq!(next.len(), 2);
    assert_eq!(
        describe(&next[1]).split(',').next(),
        Some("m2 10.0.1.2→10.0.2.2")
    );
    w.swarm.marks.lock().expect("marks").clear();
    w.until_idle(&mut again, 20).await;
    assert_eq!(again.phase(), Phase::Idle);
}

#[tokio::test]
async fn a_new_leader_during_readdressing_is_told_the_raised_heartbeat() {
    let (mut w, mut r) = moved_3_2().await;
    w.swarm
        .scripts
        .lock()
        .expect("scripts")
        .push_back(Script::Hang);
    w.healthy_round(&mut r).await;
    assert_eq!(w.swarm.heartbeat_calls(), ["hold"]);
    w.healthy_round(&mut r).await;
    assert_eq!(w.swarm.heartbeat_calls(), ["hold"], "the same leader");
    w.leader = "m3".into();
    w.healthy_round(&mut r).await;
    assert_eq!(w.swarm.heartbeat_calls(), ["hold", "retouch"]);
    w.healthy_round(&mut r).await;
    assert_eq!(w.swarm.heartbeat_calls(), ["hold", "retouch"], "told once");
}

#[tokio::test]
async fn a_failed_readdressing_is_said_and_tried_again() {
    let (mut w, mut r) = moved_3_2().await;
    w.swarm
        .scripts
        .lock()
        .expect("scripts")
        .push_back(Script::Fail("node m2 not found".into()));
    // The failure is carried out too (see carry_out): undo it.
    w.others_act = false;
    w.healthy_round(&mut r).await;
    w.readdressed("m2", at(OLD, 2));
    w.agents
        .with("w1", |a| a.dockerd = Some(holding(at(OLD, 4))));
    let lines = w.healthy_round(&mut r).await;
    assert!(
        said(&lines, "re-address m2 and w1 failed, to be tried again"),
        "{lines:#?}"
    );
    assert_eq!(w.swarm.readdressed().len(), 2, "tried again at once");
    assert_eq!(w.swarm.readdressed()[0], w.swarm.readdressed()[1]);
}

#[tokio::test]
async fn a_readdressing_that_must_wait_says_why_once() {
    let (mut w, mut r) = moved_3_2().await;
    let why = "another manager holds the re-address lock";
    for _ in 0..3 {
        w.swarm
            .scripts
            .lock()
            .expect("scripts")
            .push_back(Script::NotNow(why.into()));
    }
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.extend(w.healthy_round(&mut r).await);
        // Not carried out: it waited.
        w.readdressed("m2", at(OLD, 2));
        w.agents
            .with("w1", |a| a.dockerd = Some(holding(at(OLD, 4))));
    }
    let waits = lines.iter().filter(|l| l.contains(why)).count();
    assert_eq!(waits, 1, "{lines:#?}");
}

#[tokio::test]
async fn marks_docker_cannot_read_hold_readdressing_back() {
    let (mut w, mut r) = moved_3_2().await;
    w.swarm.down.store(true, Ordering::SeqCst);
    let lines = w.healthy_round(&mut r).await;
    assert!(w.swarm.readdressed().is_empty());
    assert!(
        said(&lines, "the re-address marks could not be read"),
        "{lines:#?}"
    );
    // The rules stay in force meanwhile.
    assert_eq!(w.rules_of("w1"), moved_rules(&w));
    w.swarm.down.store(false, Ordering::SeqCst);
    w.until_idle(&mut r, 20).await;
    assert_eq!(r.phase(), Phase::Idle);
}

#[tokio::test]
async fn an_unreadable_address_list_is_not_a_move() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.host.set_addrs(Err(HostError("EMFILE".into())));
    for _ in 0..2 {
        assert!(w.healthy_round(&mut r).await.is_empty());
    }
    assert!(!r.quorum_in_doubt(&w.memory), "unreadable is not moved");
    assert!(w.agents.told().is_empty());
    w.host.set_addrs(Ok(vec![at(NEW, 1)]));
    assert!(r.quorum_in_doubt(&w.memory), "moved");
    w.host.set_addrs(Err(HostError("EMFILE".into())));
    assert!(r.quorum_in_doubt(&w.memory), "still moved as last read");
}

#[tokio::test]
async fn the_timeline_is_stamped_by_the_hosts_clock_and_saved() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    w.host.advance_ms(500);
    w.round(&mut r, Health::NoLeader).await;
    w.host.advance_ms(1_500);
    w.healthy_round(&mut r).await;
    let stamps: Vec<u64> = r.file.timeline.iter().map(|(ms, _)| *ms).collect();
    assert_eq!(
        stamps[..3],
        [1_000_500, 1_000_500, 1_002_000],
        "{:#?}",
        r.file.timeline
    );
    let saved = w.store.file.lock().expect("file").clone();
    assert_eq!(saved.recovery, r.file.recovery);
    assert_eq!(saved.recovery.started_ms, Some(1_000_500));
}

#[tokio::test]
async fn a_worker_that_moved_is_restarted_beside_a_manager_and_the_rules_wait_for_it() {
    let (mut w, mut r) = moved_3_2().await;
    w.healthy_round(&mut r).await;
    let first = w.swarm.readdressed();
    let Readdressing::Nodes { targets, .. } = &first[0] else {
        panic!("{first:?}");
    };
    let worker = targets
        .iter()
        .find(|t| t.node == "w1")
        .expect("w1 alongside");
    assert_eq!((worker.from, worker.to), (at(NEW, 4), at(NEW, 4)));
    assert_eq!(
        worker.how,
        readdress::How::Restart {
            stale: vec![
                "NodeAddr 10.0.1.4".to_string(),
                "AdvertiseAddr 10.0.1.4".to_string()
            ]
        }
    );
}

/// The managers each re-addressing started, in order.
fn batches(w: &World) -> Vec<Vec<String>> {
    w.swarm
        .readdressed()
        .iter()
        .map(|work| match work {
            Readdressing::Nodes { targets, .. } => targets
                .iter()
                .filter(|t| t.how == readdress::How::Manager)
                .map(|t| t.node.clone())
                .collect(),
            Readdressing::ThisHost { .. } => vec!["m1".to_string()],
        })
        .filter(|b: &Vec<String>| !b.is_empty())
        .collect()
}

#[tokio::test]
async fn five_managers_are_readdressed_two_at_a_time_and_the_leader_last_alone() {
    let mut w = World::new(5, 2);
    let mut r = w.recoverer();
    w.move_all(NEW);
    w.round(&mut r, Health::NoLeader).await;
    let lines = w.until_idle(&mut r, 40).await;
    assert_eq!(r.phase(), Phase::Idle, "{lines:#?}");
    // m1 leads and coordinates the others; m2 then re-addresses m1.
    assert_eq!(
        batches(&w),
        [vec!["m2", "m3"], vec!["m4", "m5"]],
        "{lines:#?}"
    );
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        assert_eq!(w.recorded[m], at(NEW, w.number[m]), "{m}");
    }
    assert!(w.rules_of("w2").is_empty());
}

#[tokio::test]
async fn only_the_managers_moved_workers_are_read_where_they_were_and_keep_no_rule() {
    let mut w = World::new(3, 2);
    let mut r = w.recoverer();
    w.move_to(NEW, &["m1", "m2", "m3"]);
    // The workers stayed: not on the managers' new link, not resolved.
    w.discovery
        .names
        .lock()
        .expect("names")
        .retain(|n, _| n.starts_with('m'));
    w.round(&mut r, Health::NoLeader).await;
    assert_eq!(
        w.rules_of("w1"),
        [
            (at(OLD, 1), at(NEW, 1)),
            (at(OLD, 2), at(NEW, 2)),
            (at(OLD, 3), at(NEW, 3))
        ]
    );
    let asked_w1: Vec<SocketAddr> = w
        .agents
        .told()
        .into_iter()
        .filter(|(n, _, _)| n == "w1")
        .map(|(_, e, _)| e)
        .collect();
    assert!(
        asked_w1.iter().all(|e| e.ip() == at(OLD, 4)),
        "{asked_w1:?}"
    );
    let lines = w.until_idle(&mut r, 40).await;
    assert_eq!(r.phase(), Phase::Idle, "{lines:#?}");
    for n in ["m1", "m2", "m3", "w1", "w2"] {
        assert!(w.rules_of(n).is_empty(), "{n}: {:?}", w.rules_of(n));
    }
    // A worker that did not move is not restarted.
    let restarted: Vec<String> = w
        .swarm
        .readdressed()
        .iter()
        .flat_map(|work| match work {
            Readdressing::Nodes { targets, .. } => targets.clone(),
            Readdressing::ThisHost { .. } => Vec::new(),
        })
        .filter(|t| t.node.starts_with('w'))
        .map(|t| t.node)
        .collect();
    assert!(restarted.is_empty(), "{restarted:?}");
}
