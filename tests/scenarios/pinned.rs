//! A swarm whose every address was pinned when it was formed (managers:
//! `--advertise-addr IP --data-path-addr IP --listen-addr IP:2377`,
//! workers: `--advertise-addr IP --data-path-addr IP`) moves at once.
//! Before swarm-glue restarted a manager whose listener is pinned to an
//! address its host lost, such a swarm never regained a leader (measured:
//! 4 minutes, dockerd still listening on OLD:2377). Now: a leader, every
//! manager recorded at its new address, node IDs and everything else kept,
//! every task reachable from every node, and no node's dockerd left with an
//! old address in its state file or its listener.
//!
//! Needs root, Docker and the packages (`make test` has all three).

use std::time::Duration;

use swarm_glue_lab::glue::Install;
use swarm_glue_lab::recovery::{self, Run};
use swarm_glue_lab::{Lab, LabSpec};

#[test]
fn a_swarm_with_every_address_pinned_comes_back_by_itself() {
    let lab = Lab::up(&LabSpec {
        pinned: true,
        ..LabSpec::default()
    })
    .unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    let run = Run::new(&lab);
    recovery::install_and_confirm(&lab, Install::Deb, "", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("swarm-glue could not be installed: {e}"));
    let pinned = lab
        .sh("m1", "cat /var/lib/docker/swarm/docker-state.json")
        .expect("m1's state file");
    let m1 = lab.address("m1").ok().flatten().expect("m1's address");
    assert!(
        pinned.contains(&format!("\"ListenAddr\":\"{m1}:2377\"")),
        "the swarm was formed with pinned addresses: {pinned}"
    );
    let all = run.nodes.clone();
    let (o, _) = run.move_and_recover("pinned", &all);
    assert!(o.converged.is_some());
    // Where the time to a leader goes, for docs/recovery.md.
    for (at, m, line) in recovery::timelines(&lab, &run.managers) {
        let since = (at as f64 - o.moved_unix_s as f64 * 1000.0) / 1000.0;
        println!("  {m} +{since:.1}s {line}");
    }
    for n in &all {
        let now = lab
            .address(n)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{n}'s address"));
        let state = lab
            .sh(n, "cat /var/lib/docker/swarm/docker-state.json")
            .expect("state file");
        for field in ["AdvertiseAddr", "DataPathAddr"] {
            assert!(
                state.contains(&format!("\"{field}\":\"{now}")),
                "{n}'s {field} is its new address {now}: {state}"
            );
        }
        if n.starts_with('m') {
            let listening = lab.sh(n, "ss -Hltn 'sport = :2377'").expect("ss");
            assert!(
                listening.contains(&format!("{now}:2377")),
                "{n}'s dockerd listens at {now}:2377: {listening}"
            );
        }
    }
}
