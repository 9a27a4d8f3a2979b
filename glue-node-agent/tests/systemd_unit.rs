//! The agent as the systemd service `systemd/glue-node-agent.service` ships it,
//! inside a lab node booted by real systemd: Type=notify start, the hardening
//! leaves it able to do its work, journald has its lines, a restart or a crash
//! keeps the rules, a stop keeps the rules. Needs root and Docker (the lab).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{http, Fixture};
use glue_node_agent::protocol::{Outcome, PublicKey, Reply, TrustSet};
use swarm_glue_lab::{wait_for, Lab, LabSpec};

const UNIT: &str = include_str!("../../systemd/glue-node-agent.service");
const NODE: &str = "m1";

fn node_sh(lab: &Lab, script: &str) -> String {
    lab.sh(NODE, script)
        .unwrap_or_else(|e| panic!("on {NODE}: {e}"))
}

#[test]
fn the_agent_runs_under_systemd_with_its_hardened_unit_and_its_rules_outlive_restarts() {
    let lab = Lab::up(&LabSpec {
        managers: 1,
        workers: 0,
        swarm: false,
        ..LabSpec::default()
    })
    .unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    let container = lab.node(NODE).expect("m1").container.clone();
    let docker = lab.docker();
    docker
        .run(&[
            "cp",
            env!("CARGO_BIN_EXE_glue-node-agent"),
            &format!("{container}:/usr/bin/glue-node-agent"),
        ])
        .expect("copy the agent");
    docker
        .exec_with_input(
            &container,
            &[
                "sh",
                "-c",
                "cat > /etc/systemd/system/glue-node-agent.service",
            ],
            UNIT.as_bytes(),
        )
        .expect("install the unit");

    let fx = Fixture::new();
    let config = format!(
        "node_id = \"{}\"\ncluster_id = \"{}\"\n",
        common::NODE,
        common::CLUSTER
    );
    let trust = std::fs::read(fx.dir.join("trusted/manager-1.pub")).expect("trust file");
    docker
        .exec_with_input(
            &container,
            &[
                "sh",
                "-c",
                "mkdir -p /etc/swarm-glue/trusted-managers && cat > /etc/swarm-glue/agent.toml",
            ],
            config.as_bytes(),
        )
        .expect("config");
    docker
        .exec_with_input(
            &container,
            &[
                "sh",
                "-c",
                "cat > /etc/swarm-glue/trusted-managers/manager-1.pub",
            ],
            &trust,
        )
        .expect("trust");

    let verify = node_sh(
        &lab,
        "systemctl daemon-reload && systemd-analyze verify --man=no /etc/systemd/system/glue-node-agent.service 2>&1",
    );
    assert!(
        verify.is_empty(),
        "systemd-analyze verify complains:\n{verify}"
    );

    // Type=notify: `systemctl start` returns once the agent said READY.
    node_sh(
        &lab,
        "systemctl daemon-reload && timeout 30 systemctl start glue-node-agent",
    );
    assert_eq!(
        node_sh(&lab, "systemctl is-active glue-node-agent || true"),
        "active"
    );
    let status_text = node_sh(&lab, "systemctl show -p StatusText --value glue-node-agent");
    assert!(
        status_text.contains("listening on 0.0.0.0:7950"),
        "STATUS= was `{status_text}`"
    );

    let key = node_sh(&lab, "cat /var/lib/swarm-glue-agent/agent.pub");
    let key = key
        .split_whitespace()
        .nth(1)
        .and_then(PublicKey::from_base64)
        .expect("agent.pub");
    let pinned = TrustSet::new([key]);
    let addr: Ipv4Addr = lab
        .address(NODE)
        .expect("address")
        .expect("m1 has an address");
    let agent_at = SocketAddr::from((addr, 7950));

    // An overlay network's namespace as dockerd keeps it, with a tunnel
    // made as Docker makes one (learning on).
    node_sh(
        &lab,
        "ip netns add sgtunnel && ip -n sgtunnel link add vxt type vxlan id 42 dstport 4789 \
         && mkdir -p /var/run/docker/netns && ln -s /run/netns/sgtunnel /var/run/docker/netns/1-sgtunnel",
    );
    let learning = || !node_sh(&lab, "ip -n sgtunnel -d link show vxt").contains("nolearning");
    assert!(learning());

    let old = Ipv4Addr::new(10, 97, 1, 11);
    let new = Ipv4Addr::new(10, 97, 2, 87);
    let (code, body) = http(
        agent_at,
        "POST",
        "/v1/command",
        &fx.set(1, 1, &[(old, new)]),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (_, reply) = Reply::open(&body, &pinned).expect("signed by the agent");
    assert!(
        matches!(reply.outcome, Outcome::Applied { ref status } if status.in_force),
        "{reply:?}"
    );
    let rules = || node_sh(&lab, "iptables -t nat -S");
    assert!(rules().contains(&format!("-d {old}/32")), "{}", rules());

    assert!(
        !learning(),
        "the hardened unit must let the agent turn learning off in Docker's overlay namespaces; journal:\n{}",
        node_sh(&lab, "journalctl -u glue-node-agent --no-pager -o cat | tail -n 5")
    );

    let status = node_sh(&lab, "glue-node-agent status");
    assert!(
        status.contains("in force    yes")
            && status.contains(&format!("rewrite     {old} -> {new}"))
            && status.contains("1 tunnels, 1 with learning off"),
        "glue-node-agent status says:\n{status}"
    );

    let journal = node_sh(&lab, "journalctl -u glue-node-agent --no-pager -o cat");
    assert!(
        journal.contains("listening on") && journal.contains("set from"),
        "journal:\n{journal}"
    );

    node_sh(&lab, "systemctl restart glue-node-agent");
    assert!(
        rules().contains("SWARM-GLUE"),
        "a restart removed the rules"
    );

    // A crash: systemd starts it again (Restart=on-failure).
    let pid = node_sh(&lab, "systemctl show -p MainPID --value glue-node-agent");
    node_sh(&lab, &format!("kill -9 {pid}"));
    wait_for(
        "systemd to restart the killed agent",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let now_pid = node_sh(&lab, "systemctl show -p MainPID --value glue-node-agent");
            let active = node_sh(&lab, "systemctl is-active glue-node-agent || true");
            Ok((active == "active" && now_pid != pid && now_pid != "0").then_some(()))
        },
    )
    .expect("restarted");
    let (code, body) = http(agent_at, "GET", "/v1/status", b"");
    assert_eq!(code, 200);
    let (_, reply) = Reply::open(&body, &pinned).expect("same key after the crash");
    assert!(
        matches!(reply.outcome, Outcome::Status { ref status } if status.generation == 1 && status.in_force)
    );

    // The empty set turns learning on again; a set puts the rules back.
    let (code, _) = http(agent_at, "POST", "/v1/command", &fx.set(2, 2, &[]));
    assert_eq!(code, 200);
    assert!(learning(), "learning is on again after the empty set");
    let (code, _) = http(
        agent_at,
        "POST",
        "/v1/command",
        &fx.set(3, 3, &[(old, new)]),
    );
    assert_eq!(code, 200);

    let exposure = node_sh(
        &lab,
        "systemd-analyze security glue-node-agent --no-pager | tail -n 1",
    );
    println!("systemd-analyze security: {exposure}");

    node_sh(&lab, "systemctl stop glue-node-agent");
    assert!(
        rules().contains("SWARM-GLUE"),
        "stopping the agent removed the rules"
    );
    lab.down().unwrap_or_else(|e| panic!("teardown: {e:?}"));
}
