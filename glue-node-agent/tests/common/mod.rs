//! Shared by the agent's tests: a manager key, a trust directory, commands.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use glue_node_agent::agent::{trust_file_contents, Agent, Identity, Setup};
use glue_node_agent::netfilter::{Iptables, Netfilter};
use glue_node_agent::protocol::{Command, CommandBody, Outcome, Rewrite, SigningKey, VERSION};
use glue_node_agent::reset::{Kernel, Resetter};
use glue_node_agent::rules::Ports;

pub const CLUSTER: &str = "test-cluster";
pub const NODE: &str = "test-node";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Fixture {
    pub dir: PathBuf,
    pub manager: SigningKey,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("glue-agent-test-"));
        let trust = dir.join("trusted");
        std::fs::create_dir_all(&trust).expect("temp dir");
        let manager = SigningKey::generate().expect("key");
        std::fs::write(
            trust.join("manager-1.pub"),
            trust_file_contents(&manager.public(), "test manager"),
        )
        .expect("trust file");
        Fixture { dir, manager }
    }

    pub fn agent(&self, nf: Box<dyn Netfilter>, resetter: Box<dyn Resetter>) -> Agent {
        let setup = Setup {
            key: SigningKey::generate().expect("key"),
            identity: Some(Identity {
                node: NODE.into(),
                cluster: CLUSTER.into(),
            }),
            trust_dir: self.dir.join("trusted"),
            ports: Ports::default(),
            state_path: self.dir.join("state.json"),
        };
        Agent::new(setup, nf, resetter).expect("agent").0
    }

    pub fn command(&self, seq: u64, body: CommandBody) -> Command {
        Command {
            v: VERSION,
            cluster: CLUSTER.into(),
            target: NODE.into(),
            issuer: self.manager.public(),
            seq,
            expires: now() + 30,
            body,
        }
    }

    pub fn set(&self, seq: u64, generation: u64, rewrites: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<u8> {
        self.set_replacing(seq, generation, rewrites, None)
    }

    /// A set issued after reading generation `replaces` from the agent.
    pub fn set_replacing(
        &self,
        seq: u64,
        generation: u64,
        rewrites: &[(Ipv4Addr, Ipv4Addr)],
        replaces: Option<u64>,
    ) -> Vec<u8> {
        let rewrites = rewrites
            .iter()
            .map(|(from, to)| Rewrite {
                from: *from,
                to: *to,
            })
            .collect();
        self.command(
            seq,
            CommandBody::SetRewrites {
                generation,
                rewrites,
                replaces,
            },
        )
        .seal(&self.manager)
        .to_bytes()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const OLD: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 11);
pub const NEW: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 87);
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 2);

pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("these tests build network namespaces and iptables rules: run them as root (make test does)");
    }
}

pub fn sh(args: &[&str]) -> String {
    let out = Process::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that lives in this namespace: sockets it makes
    /// and programs it starts (iptables, ss, conntrack) are in here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Removes `addr` from the interface that has it; returns the interface.
    pub fn give_up(&self, addr: Ipv4Addr) -> String {
        let shown = self.exec(&[
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
            "to",
            &format!("{addr}/32"),
        ]);
        let dev = shown
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("{} has no {addr}", self.name))
            .to_string();
        let prefix = shown
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{addr}/")))
            .unwrap_or("32")
            .to_string();
        self.ip(&["addr", "del", &format!("{addr}/{prefix}"), "dev", &dev]);
        dev
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Process::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `node` (10.99.2.2, default route via the peer) and `peer`, which answers
/// at NEW and, until it "moves", at OLD too.
pub struct Pair {
    pub node: Netns,
    pub peer: Netns,
}

pub fn pair() -> Pair {
    require_root();
    let node = Netns::new("gn");
    let peer = Netns::new("gp");
    let (a, b) = (unique("vn"), unique("vp"));
    sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    sh(&["ip", "link", "set", &a, "netns", &node.name]);
    sh(&["ip", "link", "set", &b, "netns", &peer.name]);
    node.ip(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", &a]);
    node.ip(&["link", "set", &a, "up"]);
    node.ip(&["route", "add", "default", "via", &NEW.to_string()]);
    peer.ip(&["addr", "add", &format!("{NEW}/24"), "dev", &b]);
    peer.ip(&["addr", "add", &format!("{OLD}/32"), "dev", &b]);
    peer.ip(&["link", "set", &b, "up"]);
    Pair { node, peer }
}

impl Pair {
    /// The peer gives up its old address, as a moved manager does.
    pub fn peer_moves(&self) {
        self.peer.give_up(OLD);
    }

    /// The node gives up its address too, as a host that moved; a new one
    /// takes its place.
    pub fn node_moves(&self, to: Ipv4Addr) {
        let dev = self.node.give_up(NODE_ADDR);
        self.node
            .ip(&["addr", "add", &format!("{to}/24"), "dev", &dev]);
    }

    pub fn agent(&self, fx: &Fixture) -> Agent {
        fx.agent(
            Box::new(Iptables::new().expect("iptables")),
            Box::new(Kernel),
        )
    }

    pub fn send(&self, agent: &Agent, envelope: &[u8]) -> Outcome {
        let handled = self.node.run(|| agent.handle(envelope, now()));
        assert_eq!(handled.http_status, 200, "{}", handled.log);
        handled.reply.outcome
    }

    pub fn nat(&self) -> String {
        self.node.exec(&["iptables", "-t", "nat", "-S"])
    }
}

/// A bare HTTP/1.1 exchange: (status, body).
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let status = String::from_utf8_lossy(&out[9..12])
        .parse()
        .expect("status");
    (status, out[split + 4..].to_vec())
}
