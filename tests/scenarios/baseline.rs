//! Baseline: the lab reproduces a real swarm, its mDNS, and the failure that
//! swarm-glue exists for. Needs root and a Docker daemon (`make test` has both);
//! without them every test here fails with the reason.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use swarm_glue_lab::{bench, recovery, swarm, wait_for, Addressing, Ipv4Net, Lab, LabSpec, Result};

fn lab_up() -> Lab {
    let lab =
        Lab::up(&LabSpec::default()).unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    if let Some(d) = lab.timings.image_build {
        bench("lab.image_build_cold_s", d.as_secs_f64(), "s");
    }
    bench("lab.up_s", lab.timings.total.as_secs_f64(), "s");
    lab
}

/// What every node resolves every other node's `<hostname>.local` to. Each
/// node asks for all names at once: a name that does not resolve costs nss-mdns
/// a five-second timeout.
fn mdns_view(lab: &Lab) -> Result<BTreeMap<(String, String), Option<Ipv4Addr>>> {
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let answers = swarm_glue_lab::par_map(&names, |from| {
        let others: Vec<&str> = names
            .iter()
            .filter(|n| *n != from)
            .map(String::as_str)
            .collect();
        let script = format!(
            "for t in {}; do getent hosts $t.local & done; wait",
            others.join(" ")
        );
        let out = lab.sh(from, &script).unwrap_or_default();
        let resolved: BTreeMap<String, Ipv4Addr> = out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = w.next()?.parse().ok()?;
                let name = w.next()?.strip_suffix(".local")?;
                Some((name.to_string(), addr))
            })
            .collect();
        Ok(others
            .into_iter()
            .map(|to| ((from.clone(), to.to_string()), resolved.get(to).copied()))
            .collect::<Vec<_>>())
    })?;
    Ok(answers.into_iter().flatten().collect())
}

fn assert_mdns_current(lab: &Lab, when: &str) {
    let addrs = lab.addresses().expect("addresses");
    let mut last = BTreeMap::new();
    let res = wait_for(
        "every node to resolve every other node's .local name to its current address",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            last = mdns_view(lab)?;
            Ok(last
                .iter()
                .all(|((_, to), got)| *got == addrs[to])
                .then_some(()))
        },
    );
    if let Err(e) = res {
        let wrong: Vec<_> = last
            .iter()
            .filter(|((_, to), got)| **got != addrs[to])
            .map(|((from, to), got)| {
                format!(
                    "{from} resolves {to}.local to {got:?}, expected {:?}",
                    addrs[to]
                )
            })
            .collect();
        panic!("{when}: {e}\n{wrong:#?}");
    }
}

#[test]
fn formed_swarm_is_healthy_and_every_node_resolves_every_other_over_mdns_also_after_a_move() {
    let lab = lab_up();
    let health = swarm::health(&lab).expect("a manager answers");
    assert!(health.is_healthy(), "fresh swarm is not healthy: {health}");
    assert_eq!(health.nodes, 5);
    let fp = swarm::fingerprint_any(&lab).expect("fingerprint");
    assert_eq!(fp.nodes.len(), 5, "{fp:#?}");
    assert_eq!(fp.nodes.values().filter(|n| n.role == "manager").count(), 3);
    assert!(
        fp.nodes.values().all(|n| n.labels.contains_key("lab.node")),
        "labels missing: {fp:#?}"
    );
    assert_eq!(fp.services.len(), 1);
    assert_eq!(fp.configs.len(), 1);
    assert_eq!(fp.secrets.len(), 1);
    let nodes_with_task: std::collections::BTreeSet<_> =
        fp.tasks.values().map(|t| &t.node).collect();
    assert_eq!(
        nodes_with_task.len(),
        5,
        "the service must run on every node: {fp:#?}"
    );
    // The user's application: every task reached by name and by address
    // over the overlay network, from every node.
    let check = Instant::now();
    let failures = recovery::data_plane(&lab).expect("the data plane can be checked");
    bench("lab.data_plane_check_s", check.elapsed().as_secs_f64(), "s");
    assert!(
        failures.is_empty(),
        "the data plane of a fresh swarm is broken: {failures:#?}"
    );

    assert_mdns_current(&lab, "before any move");

    let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let target = lab.free_subnet().expect("a free subnet");
    let report = lab
        .move_nodes(&all, target, Addressing::Shuffled { seed: 7 })
        .expect("move");
    bench("lab.move_all_s", report.took.as_secs_f64(), "s");
    for m in &report.moves {
        assert_ne!(m.from, Some(m.to), "{} kept its address", m.node);
        assert!(target.contains(m.to));
        let eth0 = lab
            .exec(&m.node, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .expect("eth0");
        assert!(
            eth0.contains(&format!("{}/", m.to)),
            "{}: eth0 is `{eth0}`",
            m.node
        );
        let route = lab
            .exec(&m.node, &["ip", "route", "show", "default"])
            .expect("route");
        assert!(
            route.contains(&format!("via {} dev eth0", target.gateway())),
            "{}: default route `{route}`",
            m.node
        );
    }
    assert_mdns_current(&lab, "after every node moved");
    swarm_glue_lab::lab::tear_down_checked(lab);
}

#[test]
fn managers_moved_without_swarm_glue_have_no_leader_for_90s_and_moving_back_restores_the_same_swarm(
) {
    let lab = lab_up();
    let before = swarm::fingerprint_any(&lab).expect("fingerprint before");
    let managers = lab.manager_names();
    let target = lab.free_subnet().expect("a free subnet");
    let report = lab
        .move_nodes(&managers, target, Addressing::Shuffled { seed: 11 })
        .expect("move managers");
    println!("{report}");

    // A leader that lost its followers steps down only after raft's election
    // timeout; from then on nobody may lead for 90 s.
    let moved = Instant::now();
    wait_for(
        "the leader to step down after the move",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || Ok(swarm::leader(&lab).is_none().then_some(())),
    )
    .expect("the swarm loses its leader once every manager moved");
    let lost = moved.elapsed();
    bench("lab.leader_lost_after_move_s", lost.as_secs_f64(), "s");
    let mut checks = 0;
    while moved.elapsed() < lost + Duration::from_secs(90) {
        if let Some(leader) = swarm::leader(&lab) {
            panic!(
                "{leader} is leader again {:.0}s after every manager moved: the lab does not reproduce the failure",
                moved.elapsed().as_secs_f64()
            );
        }
        checks += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    println!("no leader in {checks} checks over the 90 s after the leader stepped down");

    lab.move_home(&managers).expect("move managers home");
    let back = Instant::now();
    let health =
        swarm::wait_healthy(&lab, Duration::from_secs(180)).expect("the swarm comes back home");
    bench("lab.control_recovery_s", back.elapsed().as_secs_f64(), "s");
    println!("after moving home: {health}");
    let after = swarm::fingerprint_any(&lab).expect("fingerprint after");
    // Nodes, labels, services, configs and secrets must be exactly the same.
    // Tasks must run where they ran; after two minutes without a leader Docker
    // itself sometimes replaces a task in place (new ID, same node and slot),
    // which is why swarm-glue must bring quorum back in seconds.
    let diff = before.diff(&after);
    let lost: Vec<&String> = diff.iter().filter(|d| !d.starts_with("task ")).collect();
    assert!(lost.is_empty(), "the swarm changed: {lost:#?}");
    assert_eq!(
        before.placement(),
        after.placement(),
        "tasks moved or stopped: {diff:#?}"
    );
    let replaced = diff.len() / 2;
    println!("tasks replaced in place by Docker after the outage: {replaced}");
    bench("lab.control_tasks_replaced", replaced as f64, "");
    swarm_glue_lab::lab::tear_down_checked(lab);
}

#[test]
fn lab_faults_and_bad_requests_behave_and_bad_requests_change_nothing() {
    let lab = lab_up();
    let addrs = lab.addresses().expect("addresses");
    let bad: Vec<(&str, Result<()>)> = vec![
        (
            "unknown node",
            lab.plan_move(
                &["m9".into()],
                lab.free_subnet().expect("free"),
                &Addressing::Shuffled { seed: 1 },
            )
            .map(|_| ()),
        ),
        (
            "docker0's range",
            lab.move_nodes(
                &["w1".into()],
                "172.17.9.0/24".parse().expect("cidr"),
                Addressing::Shuffled { seed: 1 },
            )
            .map(|_| ()),
        ),
        ("a host route", {
            // The link route of this machine's own uplink, never a Docker bridge.
            let host = swarm_glue_lab::docker::host;
            let default = host(&["ip", "-4", "-o", "route", "show", "default"]).expect("routes");
            let dev = default
                .split_whitespace()
                .skip_while(|w| *w != "dev")
                .nth(1)
                .expect("this machine has a default route")
                .to_string();
            let link = host(&[
                "ip", "-4", "-o", "route", "show", "dev", &dev, "scope", "link",
            ])
            .expect("routes");
            let taken: Ipv4Net = link
                .lines()
                .find_map(|l| l.split_whitespace().next().and_then(|c| c.parse().ok()))
                .expect("the uplink has a link route");
            lab.move_nodes(&["w1".into()], taken, Addressing::Shuffled { seed: 1 })
                .map(|_| ())
        }),
        ("a wider subnet around the lab's own network", {
            let mine = lab.nodes()[0].home_net;
            let wider = Ipv4Net::new(mine.addr(), mine.prefix() - 1).expect("cidr");
            lab.move_nodes(&["w1".into()], wider, Addressing::Shuffled { seed: 1 })
                .map(|_| ())
        }),
        ("an address outside the subnet", {
            let target = lab.free_subnet().expect("free");
            let map = BTreeMap::from([("w1".to_string(), Ipv4Addr::new(192, 0, 2, 77))]);
            lab.move_nodes(&["w1".into()], target, Addressing::Exact(map))
                .map(|_| ())
        }),
    ];
    for (what, res) in bad {
        match res {
            Ok(_) => panic!("a move to {what} was accepted"),
            Err(e) => println!("refused ({what}): {e}"),
        }
    }
    assert_eq!(
        lab.addresses().expect("addresses"),
        addrs,
        "a refused request changed addresses"
    );

    // Cut a worker's cable: it disappears from the network, then comes back.
    let w1 = addrs["w1"].expect("w1 address").to_string();
    // sshd listens on every node: a TCP connect to it tells whether w1 is reachable.
    let ping = |from: &str| {
        lab.exec(
            from,
            &[
                "timeout",
                "2",
                "bash",
                "-c",
                &format!("echo > /dev/tcp/{w1}/22"),
            ],
        )
        .is_ok()
    };
    lab.cut("w1").expect("cut");
    assert!(!ping("m1"), "w1 still answers with its cable cut");
    lab.heal("w1").expect("heal");
    wait_for(
        "w1 to answer after heal",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Ok(ping("m1").then_some(())),
    )
    .expect("w1 answers again");

    lab.restart_docker("w2").expect("restart dockerd on w2");
    lab.stop("w1").expect("stop w1");
    assert!(!lab.is_running("w1").expect("state"));
    lab.start("w1").expect("start w1");
    let health = swarm::wait_healthy(&lab, Duration::from_secs(120)).expect("healthy after faults");
    println!("after cut, heal, dockerd restart, stop and start: {health}");
    assert_eq!(
        lab.addresses().expect("addresses"),
        addrs,
        "faults changed addresses"
    );
    swarm_glue_lab::lab::tear_down_checked(lab);
}
