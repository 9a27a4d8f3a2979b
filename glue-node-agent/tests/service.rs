//! The agent binary as a service: started in a node namespace with a config,
//! commanded over HTTP from the peer namespace, stopped and started again.
//! Needs root; fails and says so without it.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pair, sh, Fixture, Pair, NEW, NODE_ADDR, OLD};
use glue_node_agent::protocol::{Outcome, PublicKey, RefusalCode, Reply, TrustSet};

const PORT: u16 = 7950;

fn start_agent(p: &Pair, fx: &Fixture) -> Child {
    let config = fx.dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"{}\"\ncluster_id = \"{}\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\nreassert_interval_s = 1\n",
            common::NODE,
            common::CLUSTER,
            fx.dir.join("state").display(),
            fx.dir.join("trusted").display()
        ),
    )
    .expect("config");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.node.name,
            env!("CARGO_BIN_EXE_glue-node-agent"),
        ])
        .args(["--config", &config.display().to_string(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agent starts");
    let addr = SocketAddr::from((NODE_ADDR, PORT));
    let started = Instant::now();
    while p
        .peer
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: Child) {
    sh(&["kill", "-TERM", &child.id().to_string()]);
    let _ = child.wait();
}

fn http(p: &Pair, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    p.peer
        .run(|| common::http((NODE_ADDR, PORT).into(), method, path, body))
}

fn agent_key(fx: &Fixture) -> TrustSet {
    let text = std::fs::read_to_string(fx.dir.join("state/agent.pub")).expect("agent.pub");
    let key = text
        .split_whitespace()
        .nth(1)
        .and_then(PublicKey::from_base64)
        .expect("key");
    TrustSet::new([key])
}

#[test]
fn commands_over_http_are_applied_answered_signed_and_outlive_a_restart() {
    let p = pair();
    let fx = Fixture::new();
    let agent = start_agent(&p, &fx);
    let pinned = agent_key(&fx);

    let (status, body) = http(&p, "POST", "/v1/command", &fx.set(1, 1, &[(OLD, NEW)]));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, reply) = Reply::open(&body, &pinned).expect("the reply is signed by the agent's key");
    assert!(
        matches!(reply.outcome, Outcome::Applied { ref status } if status.in_force),
        "{reply:?}"
    );
    assert!(p.nat().contains("SWARM-GLUE"), "{}", p.nat());

    let (status, body) = http(&p, "POST", "/v1/command", &fx.set(1, 2, &[]));
    assert_eq!(status, 409);
    let (_, reply) = Reply::open(&body, &pinned).expect("signed refusal");
    assert!(
        matches!(reply.outcome, Outcome::Refused { ref refusal } if refusal.code == RefusalCode::Replayed)
    );

    let (status, _) = http(&p, "POST", "/v1/command", &vec![b'x'; 70_000]);
    assert_eq!(status, 413);

    // A firewall reload flushes the table under the running agent: it repairs
    // it at its next check (every second in this config).
    p.node.exec(&["iptables", "-t", "nat", "-F"]);
    p.node.exec(&["iptables", "-t", "nat", "-X"]);
    let flushed = Instant::now();
    while !p.nat().contains("SWARM-GLUE") {
        assert!(
            flushed.elapsed() < Duration::from_secs(10),
            "the running agent did not repair a flushed nat table"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    stop(agent);
    assert!(
        p.nat().contains("SWARM-GLUE"),
        "stopping the agent removed the rules"
    );

    // Something flushes the table while the agent is down; it repairs it at start.
    p.node.exec(&["iptables", "-t", "nat", "-F"]);
    p.node.exec(&["iptables", "-t", "nat", "-X"]);
    let agent = start_agent(&p, &fx);
    let (status, body) = http(&p, "GET", "/v1/status", b"");
    assert_eq!(status, 200);
    let (_, reply) = Reply::open(&body, &pinned).expect("same key after restart");
    match reply.outcome {
        Outcome::Status { status } => {
            assert_eq!(status.generation, 1);
            assert!(
                status.in_force,
                "the persisted set was not re-applied at start"
            );
        }
        other => panic!("{other:?}"),
    }
    stop(agent);
}
