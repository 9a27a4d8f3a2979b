//! Shared by the agent's tests: a manager key, a trust directory, commands.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use glue_node_agent::agent::{trust_file_contents, Agent, Identity, Setup};
use glue_node_agent::netfilter::Netfilter;
use glue_node_agent::protocol::{Command, CommandBody, Rewrite, SigningKey, VERSION};
use glue_node_agent::reset::Resetter;
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
