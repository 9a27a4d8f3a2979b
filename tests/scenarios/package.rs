//! swarm-glue as users install it, on real daemons:
//!
//! 1. the managers run the container image, started with the original tool's
//!    `docker run` line unchanged; every host moves; the swarm comes back and
//!    loses nothing, and the timeline is in each host's journal;
//! 2. on w1 (whose agent came over SSH from those managers), the package's
//!    life: `apt install ./swarm-glue_….deb` (the packaged agent takes over,
//!    keeping the node's key), upgrade to a rebuilt package with a bumped
//!    version (both services restarted, the admin's config kept), remove (no
//!    rule, no unit, nothing running; config and keys kept), purge (no keys,
//!    no state, no manager key in root's authorized_keys) — as the table in
//!    docs/operations.md says.
//!
//! Needs root, Docker, the packages and the image (`make test` builds them).

use std::time::Duration;

use swarm_glue_lab::glue::{self, Artefacts, Install, VERSION};
use swarm_glue_lab::recovery::{self, Run};
use swarm_glue_lab::{wait_for, Lab, LabSpec};

fn sh(lab: &Lab, node: &str, script: &str) -> String {
    lab.sh(node, script)
        .unwrap_or_else(|e| panic!("{node}: `{script}`: {e}"))
        .trim()
        .to_string()
}

fn exists(lab: &Lab, node: &str, path: &str) -> bool {
    sh(lab, node, &format!("[ -e {path} ] && echo yes || echo no")) == "yes"
}

fn main_pid(lab: &Lab, node: &str, unit: &str) -> String {
    sh(
        lab,
        node,
        &format!("systemctl show -p MainPID --value {unit}"),
    )
}

fn active(lab: &Lab, node: &str, unit: &str) -> String {
    sh(
        lab,
        node,
        &format!("systemctl is-active {unit} 2>/dev/null || true"),
    )
}

fn nat_rules(lab: &Lab, node: &str) -> usize {
    sh(
        lab,
        node,
        "iptables-save -t nat | grep -c SWARM-GLUE || true",
    )
    .parse()
    .unwrap_or(usize::MAX)
}

fn wait_active(lab: &Lab, node: &str, unit: &str) {
    wait_for(
        &format!("{unit} active on {node}"),
        Duration::from_secs(60),
        Duration::from_millis(500),
        || Ok((active(lab, node, unit) == "active").then_some(())),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            sh(
                lab,
                node,
                &format!("systemctl status --no-pager {unit} || true")
            )
        )
    });
}

#[test]
fn the_image_brings_a_moved_swarm_back_and_the_package_installs_upgrades_and_goes_cleanly() {
    let art = Artefacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let newer_version = format!("{VERSION}+upgrade1");
    let newer = Artefacts::deb_of_version(&newer_version).unwrap_or_else(|e| panic!("{e}"));
    let lab =
        Lab::up(&LabSpec::default()).unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    let run = Run::new(&lab);

    // 1. The managers run the image with the documented line.
    recovery::install_and_confirm(&lab, Install::Container, "", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("swarm-glue (container) could not be installed: {e}"));
    for m in &run.managers {
        assert!(
            !exists(&lab, m, "/usr/bin/glue-manager"),
            "{m}: the package is not installed in the container case"
        );
        let how = sh(
            &lab,
            m,
            &format!(
                "docker inspect -f '{{{{.Config.Image}}}} {{{{.HostConfig.NetworkMode}}}} {{{{.HostConfig.RestartPolicy.Name}}}} {{{{.State.Running}}}}' {}",
                glue::CONTAINER
            ),
        );
        assert_eq!(
            how,
            format!("{} host unless-stopped true", art.image),
            "{m}: the container"
        );
    }
    let all = run.nodes.clone();
    run.move_and_recover("container_all_moved", &all);
    let timelines: Vec<String> = run
        .managers
        .iter()
        .map(|m| glue::manager_journal(&lab, m))
        .collect();
    assert!(
        timelines.iter().all(|j| j.contains("recovery: rewrite")),
        "every manager's host journal (journalctl -t glue-manager) shows the recovery: {timelines:#?}"
    );
    assert!(
        timelines.iter().any(|j| j.contains("recovery: converged")),
        "a host journal shows the convergence"
    );

    // 2. The package's life on w1.
    let node = "w1";
    assert!(
        exists(&lab, node, "/usr/local/bin/glue-node-agent"),
        "{node}: the managers installed the agent over SSH"
    );
    let agent_key = sh(&lab, node, "cat /var/lib/swarm-glue-agent/agent.pub");
    let out = glue::apt_install(&lab, node, &art.deb, true).expect("apt install");
    println!(
        "{node}: apt install ./{}: ok",
        art.deb.file_name().unwrap_or_default().to_string_lossy()
    );
    assert_eq!(
        sh(
            &lab,
            node,
            "dpkg-query -W -f='${Status} ${Version}' swarm-glue"
        ),
        format!("install ok installed {VERSION}"),
        "{out}"
    );
    for unit in ["glue-node-agent", "glue-manager"] {
        wait_active(&lab, node, unit);
        assert_eq!(
            sh(&lab, node, &format!("systemctl is-enabled {unit}")),
            "enabled"
        );
    }
    assert!(
        !exists(&lab, node, "/usr/local/bin/glue-node-agent")
            && !exists(&lab, node, "/etc/systemd/system/glue-node-agent.service"),
        "the agent installed over SSH gave way to the packaged one"
    );
    assert_eq!(
        sh(
            &lab,
            node,
            "readlink /etc/systemd/system/multi-user.target.wants/glue-node-agent.service"
        ),
        "/lib/systemd/system/glue-node-agent.service",
        "the agent is enabled through the package's unit, not the SSH installer's"
    );
    let pid = main_pid(&lab, node, "glue-node-agent");
    assert_eq!(
        sh(&lab, node, &format!("readlink /proc/{pid}/exe")),
        "/usr/bin/glue-node-agent"
    );
    assert_eq!(
        sh(&lab, node, "cat /var/lib/swarm-glue-agent/agent.pub"),
        agent_key,
        "the node kept its agent key (the managers' pin holds)"
    );
    let verify = sh(
        &lab,
        node,
        "systemd-analyze verify --man=no glue-manager.service glue-node-agent.service 2>&1 || true",
    );
    assert!(
        verify.is_empty(),
        "systemd-analyze verify of the installed units: {verify}"
    );
    let version = sh(&lab, node, "glue-manager --version");
    assert!(
        version.contains(&format!("{VERSION} (commit ")),
        "{version}"
    );
    for page in ["glue-manager", "glue-node-agent"] {
        assert!(exists(
            &lab,
            node,
            &format!("/usr/share/man/man8/{page}.8.gz")
        ));
    }

    // Upgrade, with a setting of the admin's in the conffile.
    sh(
        &lab,
        node,
        "printf '# changed by the admin\\ntick_interval_s = 30\\n' >> /etc/swarm-glue/manager.toml",
    );
    let pids = (
        main_pid(&lab, node, "glue-manager"),
        main_pid(&lab, node, "glue-node-agent"),
    );
    glue::apt_install(&lab, node, &newer, true).expect("upgrade");
    assert_eq!(
        sh(&lab, node, "dpkg-query -W -f='${Version}' swarm-glue"),
        newer_version
    );
    for unit in ["glue-node-agent", "glue-manager"] {
        wait_active(&lab, node, unit);
    }
    let after = (
        main_pid(&lab, node, "glue-manager"),
        main_pid(&lab, node, "glue-node-agent"),
    );
    assert!(
        after.0 != pids.0 && after.1 != pids.1,
        "both services restarted on upgrade: {pids:?} -> {after:?}"
    );
    assert!(
        sh(&lab, node, "cat /etc/swarm-glue/manager.toml").contains("changed by the admin"),
        "the admin's config survived the upgrade"
    );

    // swarm-glue comes off the managers first (docs/operations.md): while
    // they run, they install the agent again over SSH on a node that lost it,
    // which is their job but not what is tested here.
    for m in &run.managers {
        sh(&lab, m, &format!("docker stop {}", glue::CONTAINER));
    }

    // A rewrite in force (the agent puts its persisted set back at start) ...
    let state_path = "/var/lib/swarm-glue-agent/state.json";
    let mut state: serde_json::Value =
        serde_json::from_str(&sh(&lab, node, &format!("cat {state_path}"))).expect("state");
    state["generation"] = serde_json::json!(state["generation"].as_u64().unwrap_or(0) + 1);
    state["rewrites"] = serde_json::json!([{"from": "192.0.2.10", "to": "192.0.2.20"}]);
    sh(&lab, node, "systemctl stop glue-node-agent");
    lab.docker()
        .exec_with_input(
            &lab.node(node).expect("w1").container,
            &["sh", "-c", &format!("cat > {state_path}")],
            state.to_string().as_bytes(),
        )
        .expect("state written");
    sh(&lab, node, "systemctl start glue-node-agent");
    wait_for(
        "the persisted rewrite in force",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || Ok((nat_rules(&lab, node) > 0).then_some(())),
    )
    .expect("rules");

    // ... is gone with the package; config and keys stay.
    let out = sh(
        &lab,
        node,
        "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q swarm-glue",
    );
    assert_eq!(
        sh(&lab, node, "dpkg-query -W -f='${Status}' swarm-glue"),
        "deinstall ok config-files",
        "{out}"
    );
    assert_eq!(nat_rules(&lab, node), 0, "no rewrite rule after removal");
    for unit in ["glue-node-agent", "glue-manager"] {
        assert_ne!(active(&lab, node, unit), "active", "{unit} stopped");
        for dir in ["/lib/systemd/system", "/etc/systemd/system"] {
            let file = format!("{dir}/{unit}.service");
            assert!(!exists(&lab, node, &file), "{file} removed");
        }
    }
    for gone in [
        "/usr/bin/glue-manager",
        "/usr/bin/glue-node-agent",
        "/usr/lib/swarm-glue",
    ] {
        assert!(!exists(&lab, node, gone), "{gone} removed");
    }
    for kept in [
        "/etc/swarm-glue/manager.toml",
        "/etc/swarm-glue/agent.toml",
        "/etc/swarm-glue/trusted-managers",
        "/var/lib/swarm-glue-agent/agent.key",
        "/var/lib/swarm-glue/signing.key",
    ] {
        assert!(exists(&lab, node, kept), "{kept} kept until purge");
    }
    assert!(
        sh(
            &lab,
            node,
            "grep -c ' swarm-glue manager ' /root/.ssh/authorized_keys || true"
        ) != "0"
    );

    // Purge: nothing of swarm-glue is left.
    let out = sh(
        &lab,
        node,
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q swarm-glue",
    );
    assert_eq!(
        sh(
            &lab,
            node,
            "dpkg-query -W -f='${Status}' swarm-glue 2>/dev/null || echo absent"
        ),
        "absent",
        "{out}"
    );
    for gone in [
        "/etc/swarm-glue",
        "/var/lib/swarm-glue",
        "/var/lib/swarm-glue-agent",
        "/etc/systemd/system/multi-user.target.wants/glue-manager.service",
        "/etc/systemd/system/multi-user.target.wants/glue-node-agent.service",
    ] {
        assert!(!exists(&lab, node, gone), "{gone} purged");
    }
    assert_eq!(
        sh(
            &lab,
            node,
            "grep -c ' swarm-glue manager ' /root/.ssh/authorized_keys || true"
        ),
        "0",
        "the managers' SSH keys purged from root's authorized_keys"
    );
    assert_eq!(nat_rules(&lab, node), 0);
    println!(
        "{node}: install, upgrade to {newer_version}, remove, purge: as docs/operations.md says"
    );
    swarm_glue_lab::lab::tear_down_checked(lab);
}
