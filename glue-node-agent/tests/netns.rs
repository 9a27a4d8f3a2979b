//! The agent against the real kernel: two network namespaces joined by a veth
//! pair, real iptables rules, real sockets. `node` is where the agent runs;
//! `peer` is the manager that moved from OLD to NEW. Needs root (CI and
//! `make test` run as root); without it every test here fails and says so.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{pair, Fixture, Netns, Pair, NEW, NODE_ADDR, OLD};
use glue_node_agent::agent::Agent;
use glue_node_agent::protocol::Outcome;

fn connect(node: &Netns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    node.run(|| TcpStream::connect_timeout(&to, timeout))
}

#[test]
fn tcp_to_an_old_swarm_port_reaches_the_new_address_and_other_ports_are_left_alone() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let swarm = p
        .peer
        .run(|| TcpListener::bind((NEW, 2377)))
        .expect("listen NEW:2377");
    let web = p
        .peer
        .run(|| TcpListener::bind((NEW, 80)))
        .expect("listen NEW:80");
    p.peer_moves();

    let outcome = p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    assert!(
        matches!(outcome, Outcome::Applied { ref status } if status.in_force),
        "{outcome:?}"
    );

    let mut c = connect(&p.node, (OLD, 2377).into(), Duration::from_secs(3))
        .expect("OLD:2377 is redirected to NEW:2377");
    let (mut s, _) = swarm.accept().expect("accept");
    assert_eq!(s.local_addr().expect("addr"), SocketAddr::from((NEW, 2377)));
    c.write_all(b"raft").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"raft");

    web.set_nonblocking(true).expect("nonblocking");
    let plain = connect(&p.node, (OLD, 80).into(), Duration::from_millis(800));
    assert!(
        plain.is_err(),
        "OLD:80 must not be redirected, but it connected"
    );
    assert!(
        web.accept().is_err(),
        "NEW:80 got a connection meant for OLD:80"
    );
}

#[test]
fn udp_to_an_old_gossip_port_is_redirected() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let gossip = p
        .peer
        .run(|| UdpSocket::bind((NEW, 7946)))
        .expect("bind NEW:7946");
    gossip
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    p.peer_moves();
    p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    p.node.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        s.send_to(b"ping", (OLD, 7946)).expect("send");
    });
    let mut buf = [0u8; 16];
    let (n, from) = gossip
        .recv_from(&mut buf)
        .expect("the datagram reaches NEW:7946");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip(), std::net::IpAddr::V4(NODE_ADDR));
}

#[test]
fn an_established_connection_to_an_old_address_is_aborted_when_the_set_arrives() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let old = p
        .peer
        .run(|| TcpListener::bind((OLD, 2377)))
        .expect("listen OLD");
    let mut c = connect(&p.node, (OLD, 2377).into(), Duration::from_secs(3)).expect("connect OLD");
    let (_s, _) = old.accept().expect("accept");
    p.peer_moves();

    p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let got = c.read(&mut buf);
    match got {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
        other => panic!("the stale connection to OLD should be aborted, read gave {other:?}"),
    }
}

/// The peer moves, the set {OLD→NEW} comes, and the node connects to
/// OLD:2377: the client and server ends, both with a 3 s read timeout.
fn through_old_to_new(p: &Pair, fx: &Fixture, agent: &Agent) -> (TcpStream, TcpStream) {
    let swarm = p
        .peer
        .run(|| TcpListener::bind((NEW, 2377)))
        .expect("listen NEW:2377");
    p.peer_moves();
    p.send(agent, &fx.set(1, 1, &[(OLD, NEW)]));
    let c = connect(&p.node, (OLD, 2377).into(), Duration::from_secs(3))
        .expect("OLD:2377 is redirected to NEW:2377");
    let (s, _) = swarm.accept().expect("accept");
    for stream in [&c, &s] {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
    }
    (c, s)
}

#[test]
fn a_connection_through_a_rule_that_stays_outlives_a_new_set_and_ends_when_its_rule_goes() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let (mut c, mut s) = through_old_to_new(&p, &fx, &agent);

    // Another manager's move becomes known: its rule is added, OLD's stays.
    let other = (Ipv4Addr::new(10, 99, 1, 12), Ipv4Addr::new(10, 99, 2, 33));
    let outcome = p.send(&agent, &fx.set(2, 2, &[(OLD, NEW), other]));
    assert!(
        matches!(outcome, Outcome::Applied { ref status } if status.in_force && status.rewrites.len() == 2),
        "{outcome:?}"
    );
    c.write_all(b"raft").expect("write after the new set");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)
        .expect("the connection through the unchanged rule still carries data");
    assert_eq!(&buf, b"raft");
    s.write_all(b"back").expect("answer");
    c.read_exact(&mut buf)
        .expect("and the answer comes back through it");
    assert_eq!(&buf, b"back");

    // Clean-up: OLD's rule goes, and the connection through it is ended.
    p.send(&agent, &fx.set(3, 3, &[]));
    match c.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
        other => {
            panic!("the connection through the removed rule should be aborted, read gave {other:?}")
        }
    }
}

#[test]
fn a_connection_from_an_address_this_host_lost_is_aborted_even_through_a_rule_that_stays() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let (mut c, _s) = through_old_to_new(&p, &fx, &agent);

    // This host moves too: the connection's local address is gone, so it is
    // dead, though the rule it goes through stays the same.
    p.node_moves(Ipv4Addr::new(10, 99, 2, 3));
    let other = (Ipv4Addr::new(10, 99, 1, 12), Ipv4Addr::new(10, 99, 2, 33));
    p.send(&agent, &fx.set(2, 2, &[(OLD, NEW), other]));
    let mut buf = [0u8; 1];
    match c.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
        other => panic!(
            "the connection from the address this host lost should be aborted, read gave {other:?}"
        ),
    }
}

#[test]
fn the_same_set_twice_changes_nothing_and_the_empty_set_leaves_no_trace() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let second_old = Ipv4Addr::new(10, 99, 1, 12);
    let second_new = Ipv4Addr::new(10, 99, 2, 33);
    let set = [(OLD, NEW), (second_old, second_new)];
    let save = || {
        p.node
            .exec(&["iptables-save", "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    p.send(&agent, &fx.set(1, 1, &set));
    let first = save();
    assert!(first.contains("SWARM-GLUE"), "{first}");
    p.send(&agent, &fx.set(2, 2, &set));
    assert_eq!(
        save(),
        first,
        "re-applying the same set changed the nat table"
    );

    let outcome = p.send(&agent, &fx.set(3, 3, &[]));
    assert!(
        matches!(outcome, Outcome::Applied { ref status } if status.in_force && status.rewrites.is_empty())
    );
    let nat = p.nat();
    assert!(
        !nat.contains("swarm-glue") && !nat.contains("SWARM-GLUE"),
        "the empty set left rules behind:\n{nat}"
    );
}

#[test]
fn a_flushed_nat_table_is_repaired() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    p.node.exec(&["iptables", "-t", "nat", "-F"]);
    p.node.exec(&["iptables", "-t", "nat", "-X"]);
    assert!(!p.nat().contains("SWARM-GLUE"));
    assert!(!p.node.run(|| agent.status()).in_force);
    let repaired = p.node.run(|| agent.reassert()).expect("reassert");
    assert!(repaired, "a repair was needed");
    assert!(p.node.run(|| agent.status()).in_force, "{}", p.nat());
    assert!(
        !p.node.run(|| agent.reassert()).expect("reassert"),
        "nothing left to repair"
    );
}

#[test]
fn a_udp_flow_started_before_the_set_is_redirected_after_it() {
    let p = pair();
    let fx = Fixture::new();
    let agent = p.agent(&fx);
    let old = p
        .peer
        .run(|| UdpSocket::bind((OLD, 7946)))
        .expect("bind OLD:7946");
    let new = p
        .peer
        .run(|| UdpSocket::bind((NEW, 7946)))
        .expect("bind NEW:7946");
    for s in [&old, &new] {
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
    }
    // One socket for the whole flow, as memberlist keeps.
    let client = p
        .node
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7946)))
        .expect("bind");
    client.send_to(b"before", (OLD, 7946)).expect("send");
    let mut buf = [0u8; 16];
    let (n, _) = old
        .recv_from(&mut buf)
        .expect("reaches OLD before the move");
    assert_eq!(&buf[..n], b"before");

    p.peer_moves();
    p.send(&agent, &fx.set(1, 1, &[(OLD, NEW)]));
    client.send_to(b"after", (OLD, 7946)).expect("send");
    let (n, _) = new
        .recv_from(&mut buf)
        .expect("the flow's conntrack entry was forgotten, so the datagram reaches NEW");
    assert_eq!(&buf[..n], b"after");
}
