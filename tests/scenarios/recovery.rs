//! The mission, on real daemons: a swarm whose hosts move to another network
//! comes back by itself, and nothing is lost. One lab (3 managers, 2
//! workers, glue-manager on the managers) goes through, in turn:
//!
//! 1. every host moves at once, while a worker announces itself over mDNS as
//!    manager m2 at its own address (a rogue claim): the swarm regains a
//!    leader and converges — every manager recorded at its new address as
//!    seen from every manager, no rewrite left, node IDs, labels, services,
//!    configs and secrets unchanged, every task running in its slot (any
//!    node's may have been replaced once: a recovery may restart any
//!    node's dockerd), every task reached by name and address from every
//!    node over the overlay network — the rogue claim is refused and logged
//!    with its sender; stable for 60 s and after the leader's dockerd
//!    restarts;
//! 2. avahi-daemon restarts on every manager, on m2 after a worker took
//!    its mDNS name: every manager announces itself again (under another
//!    name if it gave way); then only the managers move;
//! 3. every host moves and glue-manager is SIGKILLed on the manager that is
//!    re-addressing another (systemd restarts it);
//! 4. one manager is down while the others move, and comes back (on its old
//!    network, then moved) later;
//! 5. one worker is down while the others move: clean-up names it and waits,
//!    with the heartbeat back to 5 s once Docker declares it down; it comes
//!    back (moved too), its dockerd still dialling the managers' old
//!    addresses, is given the last rules until Docker sees it, and the
//!    recovery ends with it Ready and no rule left;
//! 6. one worker refuses SSH while every host moves: its failed restart is
//!    named in the timeline and it keeps its rules; once sshd is back it is
//!    restarted and the recovery ends.
//!
//! Needs root, Docker and the release binaries (`make test` has all three).

use std::time::{Duration, Instant};

use swarm_glue_lab::glue::{self, Install};
use swarm_glue_lab::recovery;
use swarm_glue_lab::rng::Rng;
use swarm_glue_lab::{bench, par_map, wait_for, Addressing, Ipv4Net, Lab, LabSpec};

use recovery::{say, Run, WATCH};

fn journal(lab: &Lab, node: &str) -> String {
    glue::manager_journal(lab, node)
}

/// Panics with what a case's wait ran into, the managers' timelines and
/// raft views, and where their journals went.
fn stuck(lab: &Lab, run: &Run<'_>, case: &str, e: &dyn std::fmt::Display) -> ! {
    panic!(
        "{case}: {e}\ntimeline: {:#?}\nraft as each manager sees it: {:#?}\njournals: {}",
        recovery::timelines(lab, &run.managers),
        recovery::raft_views(lab, &run.managers),
        recovery::save_logs(lab, case)
    )
}

/// The newest timeline line since `moved_at` that `wanted` picks, with the
/// manager that said it. Only this recovery's lines: a manager's report may
/// still show the last one's for a moment.
fn line_since(
    lab: &Lab,
    run: &Run<'_>,
    moved_at: Instant,
    wanted: impl Fn(&str) -> bool,
) -> Option<(String, String)> {
    let since = recovery::unix_ms(std::time::SystemTime::now() - moved_at.elapsed());
    recovery::timelines(lab, &run.managers)
        .into_iter()
        .rev()
        .find(|(at, _, l)| *at >= since && wanted(l))
        .map(|(_, m, l)| (m, l))
}

/// Stops `down` and moves every other node of `all` to a free subnet:
/// returns the subnet and when the move began.
fn move_without(lab: &Lab, all: &[String], down: &str, case: &str) -> (Ipv4Net, Instant) {
    lab.stop(down)
        .unwrap_or_else(|e| panic!("{case}: stop {down}: {e}"));
    let others: Vec<String> = all.iter().filter(|n| *n != down).cloned().collect();
    let target = lab.free_subnet().expect("a free subnet");
    let report = lab
        .move_nodes(
            &others,
            target,
            Addressing::Shuffled {
                seed: Rng::fresh_seed(),
            },
        )
        .unwrap_or_else(|e| panic!("{case}: move: {e}"));
    println!("{case}: {down} stopped; {report}");
    (target, Instant::now() - report.took)
}

/// Starts `node` and moves it to `target` too: returns when it was moved.
fn back_moved(lab: &Lab, node: &str, target: Ipv4Net, case: &str) -> Instant {
    lab.start(node)
        .unwrap_or_else(|e| panic!("{case}: start {node}: {e}"));
    let report = lab
        .move_nodes(
            &[node.to_string()],
            target,
            Addressing::Shuffled {
                seed: Rng::fresh_seed(),
            },
        )
        .unwrap_or_else(|e| panic!("{case}: move {node}: {e}"));
    println!("{case}: {node} back, {report}");
    Instant::now() - report.took
}

#[test]
fn a_moved_swarm_comes_back_by_itself_and_loses_nothing() {
    let lab =
        Lab::up(&LabSpec::default()).unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    let run = Run::new(&lab);
    recovery::install_and_confirm(&lab, Install::Deb, "", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("swarm-glue could not be installed: {e}"));

    // 1. Everything moves; w1 claims to be m2 meanwhile.
    let fp = recovery::fingerprint(&lab).expect("fingerprint");
    let ids = recovery::ids(&fp);
    let cluster = lab
        .exec("m1", &["docker", "info", "-f", "{{.Swarm.Cluster.ID}}"])
        .expect("cluster ID")
        .trim()
        .to_string();
    let all = run.nodes.clone();
    let before = fp;
    let o = run.move_only("all_moved", &all, |_| {
        let w1 = lab.address("w1").ok().flatten().expect("w1 address");
        recovery::publish_claim(
            &lab,
            "w1",
            "swarm-glue rogue",
            &cluster,
            &ids["m2"],
            w1,
            "/dev/null",
        )
        .expect("rogue announcer");
    });
    run.assert_recovered("all_moved", &before, &o);
    let w1 = lab
        .address("w1")
        .ok()
        .flatten()
        .expect("w1 address")
        .to_string();
    let refused = run
        .managers
        .iter()
        .filter(|m| journal(&lab, m).contains(&format!("announcement from {w1} not accepted")))
        .count();
    assert!(
        refused > 0,
        "no manager logged the rogue claim from {w1} as not accepted"
    );
    // The timeline is in the journal of the packaged unit.
    let journals: Vec<String> = run.managers.iter().map(|m| journal(&lab, m)).collect();
    assert!(
        journals.iter().all(|j| j.contains("recovery: "))
            && journals.iter().any(|j| j.contains("recovery: detected: "))
            && journals.iter().any(|j| j.contains("recovery: converged: ")),
        "journalctl -u glue-manager shows the recovery timeline on every manager: {journals:#?}"
    );
    recovery::stop_claims(&lab, "w1").expect("stop rogue");

    // ... stable for 60 s, and after the leader's dockerd restarts.
    recovery::stable_then_leader_restart(&lab, &run.managers, &run.nodes)
        .unwrap_or_else(|e| panic!("all_moved: {e}"));

    // 2. avahi-daemon restarts on every manager (on m2 after w1 took its
    //    mDNS name): each announces itself again; then only the managers
    //    move, found through the new daemons.
    recovery::avahi_restarts(&lab, &run.managers, "m2", "w1")
        .unwrap_or_else(|e| panic!("avahi restarts: {e}"));
    run.move_and_recover("managers_moved", &run.managers);

    // 3. glue-manager is killed on the manager that re-addresses another.
    let before = recovery::fingerprint(&lab).expect("fingerprint");
    let mut killed = String::new();
    let o = run.move_only("killed_while_readdressing", &all, |moved_at| {
        let (coordinator, _) = wait_for(
            "a manager to start re-addressing another",
            Duration::from_secs(180),
            Duration::from_millis(500),
            || {
                Ok(line_since(&lab, &run, moved_at, |l| {
                    l.contains(": demoted, to rejoin raft")
                }))
            },
        )
        .expect("re-addressing starts");
        lab.sh(
            &coordinator,
            "systemctl kill --signal=KILL glue-manager.service",
        )
        .expect("SIGKILL");
        say(format!("SIGKILLed glue-manager on {coordinator}"));
        killed = coordinator;
    });
    run.assert_recovered("killed_while_readdressing", &before, &o);
    let restarts = lab
        .sh(
            &killed,
            "systemctl show -p NRestarts --value glue-manager.service",
        )
        .expect("NRestarts");
    assert_ne!(
        restarts.trim(),
        "0",
        "systemd restarted glue-manager on {killed}"
    );

    // 4. m3 is down while the others move; it comes back later.
    let before = recovery::fingerprint(&lab).expect("fingerprint");
    let (target, moved_at) = move_without(&lab, &all, "m3", "one_down");
    let moved_system = std::time::SystemTime::now() - moved_at.elapsed();
    let up: Vec<String> = vec!["m1".into(), "m2".into()];
    let quorum = wait_for(
        "quorum with m3 down",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || Ok(recovery::quorum_after(&lab, &up, moved_system)),
    )
    .expect("the two managers up regain quorum");
    bench("recovery.one_down.quorum_s", quorum.as_secs_f64(), "s");
    back_moved(&lab, "m3", target, "one_down");
    let o = recovery::watch(&lab, &run.managers, &run.nodes, moved_at, WATCH, &|l| {
        say(format!("+{:.1}s {l}", moved_at.elapsed().as_secs_f64()))
    })
    .expect("watch");
    // With one manager of three down, quorum comes back later (measured
    // ~10 s) and a worker may be marked down meanwhile: its task is then
    // started again in place. Everything else must be as before.
    run.assert_recovered_where("one_down", &before, &o, &run.nodes);
    let clean = par_map(&run.nodes, |n| recovery::rewrites_on(&lab, n)).expect("rules");
    assert!(clean.iter().all(|c| *c == 0), "rewrites left: {clean:?}");

    // 5. w2 is down while the others move; clean-up waits for it, and it
    //    comes back moved.
    let before = recovery::fingerprint(&lab).expect("fingerprint");
    let (target, moved_at) = move_without(&lab, &all, "w2", "worker_late");
    let waiting = wait_for(
        "clean-up to wait for w2",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            for m in &run.managers {
                let Ok(Some(r)) = glue::manager_report(&lab, m) else {
                    continue;
                };
                let phase = r["recovery"]["recovery"]["phase"].as_str().unwrap_or("");
                let w = r["recovery"]["waiting"].to_string();
                if phase == "clean_up" && w.contains("w2 (") {
                    return Ok(Some(format!("{m}: {w}")));
                }
            }
            Ok(None)
        },
    )
    .unwrap_or_else(|e| stuck(&lab, &run, "worker_late", &e));
    say(format!(
        "+{:.1}s clean-up waits: {waiting}",
        moved_at.elapsed().as_secs_f64()
    ));
    // Once Docker declares w2 down, every other node is clean and nothing is
    // left for the raised heartbeat to protect: it goes back to 5 s while
    // clean-up still waits.
    let put_back = wait_for(
        "the heartbeat back to 5 s while clean-up waits for w2, down",
        Duration::from_secs(180),
        Duration::from_secs(2),
        || {
            let Some((_, m, line)) = recovery::timelines(&lab, &run.managers)
                .into_iter()
                .find(|(_, _, l)| l.contains("heartbeat back to 5s (clean-up waits only for w2"))
            else {
                return Ok(None);
            };
            let period = lab
                .sh(
                    "m1",
                    "docker info --format '{{json .Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}'",
                )
                .unwrap_or_default();
            Ok((period.trim() == "5000000000").then(|| format!("{m}: {line}")))
        },
    )
    .expect("the heartbeat goes back while only a down node holds clean-up back");
    say(format!(
        "+{:.1}s {put_back}",
        moved_at.elapsed().as_secs_f64()
    ));
    let started = recovery::unix_ms(std::time::SystemTime::now()) / 1000;
    let back_at = back_moved(&lab, "w2", target, "worker_late");
    let o = recovery::watch(&lab, &run.managers, &run.nodes, moved_at, WATCH, &|l| {
        say(format!("+{:.1}s {l}", moved_at.elapsed().as_secs_f64()))
    })
    .expect("watch");
    run.assert_recovered_where("worker_late", &before, &o, &run.nodes);
    let back = back_at.duration_since(moved_at);
    let converged = o.converged.expect("converged").saturating_sub(back);
    bench(
        "recovery.worker_late.back_to_converged_s",
        converged.as_secs_f64(),
        "s",
    );
    let agent = lab
        .sh(
            "w2",
            &format!("journalctl -u glue-node-agent --no-pager -o cat --since @{started}"),
        )
        .expect("w2's agent journal");
    assert!(
        agent
            .lines()
            .any(|l| l.contains("set from") && !l.contains(" 0 rewrites")),
        "w2's agent was given the last rules when it came back: {agent}"
    );
    let clean = par_map(&run.nodes, |n| recovery::rewrites_on(&lab, n)).expect("rules");
    assert!(clean.iter().all(|c| *c == 0), "rewrites left: {clean:?}");

    // 6. w1 refuses SSH while every host moves: the restart of its dockerd
    //    fails and is named in the timeline, w1 keeps its rules meanwhile;
    //    once sshd is back, the next try restarts it and the recovery ends.
    let before = recovery::fingerprint(&lab).expect("fingerprint");
    lab.sh("w1", "systemctl stop ssh.socket ssh.service")
        .expect("stop sshd on w1");
    let o = run.move_only("ssh_refused", &all, |moved_at| {
        let (m, named) = wait_for(
            "a manager to name w1's failed restart",
            Duration::from_secs(240),
            Duration::from_secs(1),
            || {
                Ok(line_since(&lab, &run, moved_at, |l| {
                    l.contains("w1") && l.contains("failed, to be tried again")
                }))
            },
        )
        .unwrap_or_else(|e| stuck(&lab, &run, "ssh_refused", &e));
        say(format!(
            "+{:.1}s {m}: {named}",
            moved_at.elapsed().as_secs_f64()
        ));
        let rules = recovery::rewrites_on(&lab, "w1").expect("w1's rules");
        assert!(rules > 0, "w1 keeps its rules while it cannot be restarted");
        lab.sh("w1", "systemctl start ssh.socket ssh.service")
            .expect("start sshd on w1");
        say(format!(
            "+{:.1}s sshd on w1 again ({rules} rules in force there)",
            moved_at.elapsed().as_secs_f64()
        ));
    });
    run.assert_recovered("ssh_refused", &before, &o);
    let clean = par_map(&run.nodes, |n| recovery::rewrites_on(&lab, n)).expect("rules");
    assert!(clean.iter().all(|c| *c == 0), "rewrites left: {clean:?}");
    swarm_glue_lab::lab::tear_down_checked(lab);
}
