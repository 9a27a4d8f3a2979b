//! The agent against a real VXLAN tunnel, made as Docker's overlay driver
//! makes one: learning on, a permanent forwarding entry naming the tunnel end
//! point the peer announced (its old address). The peer then moves; the
//! rewrites carry the node's packets to the peer's new address, and the
//! agent's tunnel keeping lets the peer's packets in. Needs root.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::{pair, Fixture, Netns, Pair, NEW, NODE_ADDR, OLD};
use glue_node_agent::overlay::DockerNetns;

const NODE_INNER: Ipv4Addr = Ipv4Addr::new(192, 168, 42, 2);
const PEER_INNER: Ipv4Addr = Ipv4Addr::new(192, 168, 42, 87);
const NODE_MAC: &str = "02:42:c0:a8:2a:02";
const PEER_MAC: &str = "02:42:c0:a8:2a:57";

/// A tunnel `vxt` in `ns` at `inner`, whose one remote task (`peer_inner`,
/// `peer_mac`) is reached through `peer_vtep`.
fn tunnel(
    ns: &Netns,
    inner: Ipv4Addr,
    mac: &str,
    peer_inner: Ipv4Addr,
    peer_mac: &str,
    peer_vtep: Ipv4Addr,
) {
    ns.ip(&[
        "link", "add", "vxt", "address", mac, "type", "vxlan", "id", "42", "dstport", "4789",
    ]);
    ns.ip(&["addr", "add", &format!("{inner}/24"), "dev", "vxt"]);
    ns.ip(&["link", "set", "vxt", "up"]);
    let peer_vtep = peer_vtep.to_string();
    ns.exec(&[
        "bridge",
        "fdb",
        "append",
        peer_mac,
        "dev",
        "vxt",
        "dst",
        &peer_vtep,
        "self",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        &peer_inner.to_string(),
        "lladdr",
        peer_mac,
        "dev",
        "vxt",
        "nud",
        "permanent",
    ]);
}

/// The node and the peer, each with its end of the tunnel; the peer has
/// moved from OLD to NEW, the node's entry still names OLD.
fn tunnelled_pair() -> Pair {
    let p = pair();
    tunnel(&p.node, NODE_INNER, NODE_MAC, PEER_INNER, PEER_MAC, OLD);
    tunnel(
        &p.peer, PEER_INNER, PEER_MAC, NODE_INNER, NODE_MAC, NODE_ADDR,
    );
    p.peer_moves();
    p
}

fn learns(ns: &Netns) -> bool {
    !ns.exec(&["ip", "-d", "link", "show", "vxt"])
        .contains("nolearning")
}

/// A task on the peer asks the node's task over the tunnel (UDP) and gets
/// the answer back.
fn peer_task_is_answered(p: &Pair) -> bool {
    let echo = p
        .node
        .run(|| UdpSocket::bind((NODE_INNER, 9999)))
        .expect("bind on the node's tunnel");
    echo.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 16];
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        p.peer.run(|| {
            let c = UdpSocket::bind((PEER_INNER, 0)).expect("bind on the peer's tunnel");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            c.send_to(b"task", (NODE_INNER, 9999)).expect("send");
            let mut buf = [0u8; 16];
            matches!(c.recv_from(&mut buf), Ok((4, _)))
        })
    })
}

/// Docker's namespace directory, holding the node's namespace as an
/// overlay network's (`<epoch>-<network ID>`).
fn netns_dir(fx: &Fixture, node: &Netns) -> DockerNetns {
    let dir = fx.dir.join("netns");
    std::fs::create_dir_all(&dir).expect("netns dir");
    std::os::unix::fs::symlink(
        Path::new("/run/netns").join(&node.name),
        dir.join("1-testnet"),
    )
    .expect("symlink");
    DockerNetns { dir }
}

#[test]
fn a_moved_peers_tunnel_traffic_gets_in_while_the_set_is_in_force_and_learning_is_back_after() {
    let p = tunnelled_pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    assert!(learns(&p.node));
    assert!(
        !peer_task_is_answered(&p),
        "with learning on, the kernel should drop the peer's packets from NEW (its entry names OLD)"
    );

    let agent = agent.with_tunnels(Box::new(netns_dir(&fx, &p.node)));
    agent.keep_tunnels();
    assert!(
        !learns(&p.node),
        "learning is off while the set is in force"
    );
    assert!(
        peer_task_is_answered(&p),
        "the peer's task is answered through the tunnel"
    );

    // A dockerd restarted meanwhile makes its tunnels anew, learning on.
    p.node.ip(&["link", "del", "vxt"]);
    tunnel(&p.node, NODE_INNER, NODE_MAC, PEER_INNER, PEER_MAC, OLD);
    assert!(learns(&p.node));
    agent.keep_tunnels();
    assert!(
        peer_task_is_answered(&p),
        "a tunnel made anew is kept open too"
    );

    p.send(&agent, &fx.set(2, 2, &[]));
    assert!(learns(&p.node), "the empty set turns learning back on");
    assert!(!p
        .peer
        .exec(&["ip", "-d", "link", "show", "vxt"])
        .contains("nolearning"));
}
