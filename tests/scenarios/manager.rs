//! glue-manager on a real swarm: installed on the three managers only, it
//! gets an agent onto every node that trusts every manager, survives a
//! SIGKILL in the middle of it, enrols a worker that joins later (after
//! saying that it lacks the key job's image), refuses a node whose SSH host
//! key changed, rebuilds a corrupt memory, waits for a Docker that is down and
//! reconnects after a dockerd restart. Needs root
//! and a Docker daemon (`make test` has both) and the release binaries
//! (`make test` builds them).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use swarm_glue_lab::glue::{self, Artefacts, Install};
use swarm_glue_lab::image::WORKLOAD_IMAGE;
use swarm_glue_lab::{bench, par_map, wait_for, Lab, LabError, LabSpec, Result};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];

fn node_id(lab: &Lab, node: &str) -> String {
    lab.exec(node, &["docker", "info", "-f", "{{.Swarm.NodeID}}"])
        .unwrap_or_else(|e| panic!("{node}: {e}"))
        .trim()
        .to_string()
}

/// The manager's report, once it has one.
fn report(lab: &Lab, manager: &str) -> Option<Value> {
    glue::manager_report(lab, manager).ok().flatten()
}

/// Node IDs whose agent `manager` has confirmed, trusting all `managers` keys.
fn confirmed(r: &Value, managers: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(nodes) = r["nodes"].as_object() {
        for (id, n) in nodes {
            if n["state"] == "confirmed"
                && n["trusted_keys"].as_u64().unwrap_or(0) >= managers as u64
            {
                out.insert(id.clone());
            }
        }
    }
    out
}

/// Waits until every manager reports every node in `ids` confirmed and
/// trusting all three managers, and each node's trust directory holds exactly
/// the three managers' keys.
fn wait_all_enrolled(
    lab: &Lab,
    ids: &BTreeSet<String>,
    names: &[String],
    timeout: Duration,
) -> Result<()> {
    let mut last = String::new();
    wait_for(
        "every node's agent to trust all three managers",
        timeout,
        Duration::from_secs(2),
        || {
            let reports: Vec<Option<Value>> = par_map(&MANAGERS, |m| Ok(report(lab, m)))?;
            let mut keys = BTreeSet::new();
            for (m, r) in MANAGERS.iter().zip(&reports) {
                let Some(r) = r else {
                    last = format!("{m} has not reported");
                    return Ok(None);
                };
                let done = confirmed(r, 3);
                if r["managers"].as_array().map(Vec::len) != Some(3) || !ids.is_subset(&done) {
                    last = format!(
                        "{m}: {} registered, confirmed {done:?}; state {}",
                        r["managers"], r["state"]
                    );
                    return Ok(None);
                }
                keys.insert(r["signing_key"].as_str().unwrap_or_default().to_string());
            }
            let trusts = par_map(names, |n| glue::agent_trust(lab, n))?;
            for (n, t) in names.iter().zip(trusts) {
                let t: BTreeSet<String> = t.into_iter().collect();
                if t != keys {
                    last = format!("{n} trusts {t:?}, managers have {keys:?}");
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .map_err(|e| LabError::Invalid(format!("{e}; last: {last}")))
}

fn manager_pid(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "glue-manager",
        ],
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

#[test]
fn glue_manager_on_the_managers_gets_a_trusting_agent_onto_every_node_and_keeps_it_there() {
    let art = Artefacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let lab =
        Lab::up(&LabSpec::default()).unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    // w2 joins later: take it out of the swarm before swarm-glue arrives.
    let w2_old = node_id(&lab, "w2");
    lab.exec("w2", &["docker", "swarm", "leave"])
        .expect("w2 leaves");
    wait_for(
        "w2 to be down",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let s = lab.exec(
                "m1",
                &[
                    "docker",
                    "node",
                    "inspect",
                    "-f",
                    "{{.Status.State}}",
                    &w2_old,
                ],
            )?;
            Ok((s.trim() == "down").then_some(()))
        },
    )
    .expect("w2 seen down");
    lab.exec("m1", &["docker", "node", "rm", &w2_old])
        .expect("w2 removed");

    let config = glue::lab_manager_config("");
    par_map(&MANAGERS, |m| {
        glue::install_manager(&lab, m, &art, Install::Deb, &config)
    })
    .expect("installed");
    // m1 first, alone, so that it is the one running the key jobs.
    let started = Instant::now();
    glue::start_manager(&lab, "m1").expect("m1 started");

    // SIGKILL m1's manager while its key job runs, i.e. mid-install.
    let m1_short: String = node_id(&lab, "m1").chars().take(12).collect();
    let pid_before = manager_pid(&lab, "m1");
    let job = wait_for(
        "m1's manager to run a key job",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || {
            let out = lab.exec("m1", &["docker", "service", "ls", "--format", "{{.Name}}"])?;
            Ok(out
                .lines()
                .find(|l| l.starts_with("swarm-glue-sshkey-") && l.ends_with(&m1_short))
                .map(str::to_string))
        },
    )
    .expect("a key job of m1");
    lab.exec("m1", &["systemctl", "kill", "-s", "KILL", "glue-manager"])
        .expect("SIGKILL");
    println!("killed m1's glue-manager (pid {pid_before}) while {job} ran");
    wait_for(
        "systemd to restart m1's manager",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let pid = manager_pid(&lab, "m1");
            Ok((pid != "0" && pid != pid_before && !pid.is_empty()).then_some(()))
        },
    )
    .expect("restarted");
    par_map(&["m2", "m3"], |m| glue::start_manager(&lab, m)).expect("m2, m3 started");

    let names: Vec<String> = ["m1", "m2", "m3", "w1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ids: BTreeSet<String> = names.iter().map(|n| node_id(&lab, n)).collect();
    wait_all_enrolled(
        &lab,
        &ids,
        &names,
        Duration::from_secs(180).saturating_sub(started.elapsed()),
    )
    .unwrap_or_else(|e| panic!("not every node enrolled within 3 minutes of the start: {e}"));
    bench("manager.enrol_all_s", started.elapsed().as_secs_f64(), "s");

    // The same end state as without the kill: every agent active, each
    // manager's SSH key once in every authorized_keys, no job or lock left.
    for n in &names {
        assert_eq!(
            lab.exec(n, &["systemctl", "is-active", "glue-node-agent"])
                .unwrap_or_default()
                .trim(),
            "active",
            "{n}"
        );
        let keys = lab
            .exec(n, &["cat", "/root/.ssh/authorized_keys"])
            .expect("authorized_keys");
        for m in MANAGERS {
            let id = node_id(&lab, m);
            let count = keys
                .lines()
                .filter(|l| l.ends_with(&format!("swarm-glue manager {id}")))
                .count();
            assert_eq!(count, 1, "{n}: key of {m} appears {count} times:\n{keys}");
        }
    }
    let leftovers = wait_for(
        "key jobs and locks to be gone",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || {
            let jobs = lab.exec("m1", &["docker", "service", "ls", "--format", "{{.Name}}"])?;
            let secrets = lab.exec("m1", &["docker", "secret", "ls", "--format", "{{.Name}}"])?;
            let left: Vec<String> = jobs
                .lines()
                .chain(secrets.lines())
                .filter(|l| {
                    l.starts_with("swarm-glue-sshkey-") || l.starts_with("swarm-glue-lock-")
                })
                .map(str::to_string)
                .collect();
            Ok(left.is_empty().then_some(left))
        },
    );
    assert!(leftovers.is_ok(), "jobs or locks left: {leftovers:?}");
    let journal = lab
        .exec(
            "m1",
            &[
                "journalctl",
                "-u",
                "glue-manager",
                "--no-pager",
                "-o",
                "cat",
            ],
        )
        .unwrap_or_default();
    for line in [
        "removing a key job left by an earlier run",
        "swarm lock(s) left by an earlier run",
    ] {
        assert!(
            journal.contains(line),
            "the restarted manager did not say {line:?}:\n{journal}"
        );
    }
    for m in MANAGERS {
        let status = lab.exec(m, &["glue-manager", "status"]).expect("status");
        assert!(status.contains("pending: nothing"), "{m}:\n{status}");
        println!("--- glue-manager status on {m}\n{status}");
    }

    // A worker that joins later gets its agent too; first without the key
    // job's image, which must be reported as such, then with it.
    lab.exec("w2", &["docker", "image", "rm", "-f", WORKLOAD_IMAGE])
        .expect("image removed from w2");
    let token = lab
        .exec("m1", &["docker", "swarm", "join-token", "-q", "worker"])
        .expect("token");
    let m1_addr = lab
        .address("m1")
        .expect("m1 address")
        .expect("m1 has an address");
    lab.exec(
        "w2",
        &[
            "docker",
            "swarm",
            "join",
            "--token",
            token.trim(),
            &format!("{m1_addr}:2377"),
        ],
    )
    .expect("w2 joins");
    let w2 = node_id(&lab, "w2");
    assert_ne!(w2, w2_old);
    for m in MANAGERS {
        let lacks = format!("lacks image {WORKLOAD_IMAGE}");
        wait_for(
            &format!("{m} to report that w2 lacks the image"),
            Duration::from_secs(180),
            Duration::from_secs(2),
            || {
                Ok(report(&lab, m).filter(|r| {
                    r["nodes"][&w2]["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains(&lacks))
                }))
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let jobs = lab
        .exec("m1", &["docker", "service", "ls", "--format", "{{.Name}}"])
        .expect("services");
    let storm = jobs
        .lines()
        .filter(|l| l.starts_with("swarm-glue-sshkey-"))
        .count();
    assert!(storm <= 3, "key jobs pile up: {jobs}");
    let workload = swarm_glue_lab::image::workload_tarball().expect("workload image");
    lab.docker()
        .exec_with_input(
            &lab.node("w2").expect("w2").container,
            &["docker", "import", "-", WORKLOAD_IMAGE],
            &workload,
        )
        .expect("image back on w2");
    let joined = Instant::now();
    let mut all_names = names.clone();
    all_names.push("w2".into());
    let mut all_ids = ids.clone();
    all_ids.insert(w2.clone());
    wait_all_enrolled(&lab, &all_ids, &all_names, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the late worker was not enrolled: {e}"));
    bench(
        "manager.enrol_late_worker_once_image_back_s",
        joined.elapsed().as_secs_f64(),
        "s",
    );

    // A node whose SSH host key changed is refused and reported, and nothing
    // runs there: its stopped agent stays stopped.
    let w1 = node_id(&lab, "w1");
    lab.sh("w1", "rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; systemctl restart ssh; systemctl stop glue-node-agent")
        .expect("new host key on w1");
    for m in MANAGERS {
        let r = wait_for(
            &format!("{m} to report w1's changed host key"),
            Duration::from_secs(90),
            Duration::from_secs(2),
            || Ok(report(&lab, m).filter(|r| r["nodes"][&w1]["state"] == "host_key_changed")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = r["nodes"][&w1]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            err.contains(&w1) && err.contains("known_hosts"),
            "{m}: {err}"
        );
    }
    assert_eq!(
        lab.sh("w1", "systemctl is-active glue-node-agent || true")
            .unwrap_or_default()
            .trim(),
        "inactive"
    );
    let status = lab.exec("m2", &["glue-manager", "status"]).expect("status");
    assert!(status.contains("HOST KEY CHANGED"), "{status}");

    // A corrupt memory is reported with its path and rebuilt from the swarm.
    lab.sh("m3", "systemctl stop glue-manager; printf '{\"format\": 1, \"clu' > /var/lib/swarm-glue/memory.json; systemctl start glue-manager")
        .expect("corrupt m3's memory");
    let r = wait_for(
        "m3 to rebuild its memory",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let mem = lab.exec("m3", &["cat", "/var/lib/swarm-glue/memory.json"])?;
            let ok = serde_json::from_str::<Value>(&mem)
                .is_ok_and(|m| m["nodes"].as_object().map(|o| o.len()) == Some(5));
            Ok(if ok { report(&lab, "m3") } else { None })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let errors = r["errors"].to_string();
    assert!(
        errors.contains("/var/lib/swarm-glue/memory.json was corrupt"),
        "{errors}"
    );
    let aside = lab
        .sh("m3", "ls /var/lib/swarm-glue/ | grep -c 'memory.corrupt-'")
        .expect("ls");
    assert_eq!(aside.trim(), "1");

    // Docker down at start: READY waits and STATUS says why; then it goes on.
    lab.sh(
        "m3",
        "systemctl stop glue-manager docker.socket docker; systemctl start --no-block glue-manager",
    )
    .expect("docker down on m3");
    let text = wait_for(
        "m3's manager to say it waits for Docker",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let st = lab.exec(
                "m3",
                &[
                    "systemctl",
                    "show",
                    "-p",
                    "ActiveState",
                    "-p",
                    "StatusText",
                    "glue-manager",
                ],
            )?;
            Ok(st.contains("StatusText=waiting for Docker").then_some(st))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains("ActiveState=activating"),
        "READY must wait for Docker: {text}"
    );
    lab.exec("m3", &["systemctl", "start", "docker"])
        .expect("docker back");
    let last = std::cell::RefCell::new(String::new());
    // Not a speed target (m3's dockerd must rejoin raft first): 60 s ran
    // out once in a CI rehearsal, for a reason not seen then; the failure
    // message now shows the unit's state and the end of its journal.
    wait_for(
        "m3's manager to be ready",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            let st = lab.exec(
                "m3",
                &[
                    "systemctl",
                    "show",
                    "-p",
                    "ActiveState",
                    "-p",
                    "StatusText",
                    "glue-manager",
                ],
            )?;
            let ready = st.contains("ActiveState=active") && st.contains("swarm healthy");
            *last.borrow_mut() = st;
            Ok(ready.then_some(()))
        },
    )
    .unwrap_or_else(|e| {
        let journal = glue::manager_journal(&lab, "m3");
        let lines: Vec<&str> = journal.lines().collect();
        panic!(
            "{e}; last seen: {}; the end of its journal:\n{}",
            last.borrow(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    });

    // A dockerd restart ends the event stream: the manager reconnects.
    lab.restart_docker("m2").expect("dockerd restarted on m2");
    wait_for(
        "m2's manager to reconnect",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let journal = lab.exec(
                "m2",
                &[
                    "journalctl",
                    "-u",
                    "glue-manager",
                    "--no-pager",
                    "-o",
                    "cat",
                ],
            )?;
            let st = lab.exec(
                "m2",
                &["systemctl", "show", "-p", "StatusText", "glue-manager"],
            )?;
            let lost = journal.rfind("lost Docker");
            let back = journal.rfind("connected to /var/run/docker.sock");
            Ok((lost.is_some() && back > lost && st.contains("swarm healthy")).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let rss = lab
        .sh("m1", "grep VmRSS /proc/$(systemctl show -p MainPID --value glue-manager)/status | awk '{print $2}'")
        .unwrap_or_default();
    if let Ok(kb) = rss.trim().parse::<f64>() {
        bench("manager.rss_after_enrolment_mb", kb / 1024.0, "MB");
    }
    swarm_glue_lab::lab::tear_down_checked(lab);
}
