//! The demo: a healthy swarm in the lab, every host moved to a new network
//! with shuffled addresses, and what happens to the swarm afterwards, told as
//! a timeline and closed by one `RESULT` line.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lab::{Addressing, Lab, LabSpec};
use crate::rng::Rng;
use crate::{availability, recovery, swarm};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub managers: usize,
    pub workers: usize,
    /// How long to watch the moved swarm recover.
    pub watch: Duration,
    pub seed: Option<u64>,
    pub keep: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            managers: 3,
            workers: 2,
            watch: Duration::from_secs(300),
            seed: None,
            keep: false,
        }
    }
}

struct Timeline {
    origin: Instant,
}

impl Timeline {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>7.1}s] {}",
            self.origin.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

/// Runs the demo; returns the RESULT line it printed.
pub fn run(opts: &DemoOptions) -> Result<String> {
    let t = Timeline {
        origin: Instant::now(),
    };
    t.say(format!(
        "starting a lab of {} managers and {} workers (real systemd, dockerd, avahi, sshd in each)",
        opts.managers, opts.workers
    ));
    let lab = Lab::up(&LabSpec {
        managers: opts.managers,
        workers: opts.workers,
        keep: opts.keep,
        ..LabSpec::default()
    })?;
    let home = lab.nodes()[0].home_net;
    t.say(format!(
        "lab {} is up on {home} in {:.1}s{}",
        lab.name(),
        lab.timings.total.as_secs_f64(),
        lab.timings
            .image_build
            .map(|d| format!(" (node image built in {:.1}s)", d.as_secs_f64()))
            .unwrap_or_default()
    ));
    let managers = lab.manager_names();
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let took = recovery::install_and_confirm(
        &lab,
        crate::glue::Install::from_env(),
        "",
        Duration::from_secs(240),
    )?;
    t.say(format!(
        "swarm-glue installed: glue-manager on {}; every manager confirmed every node's agent after {:.1}s",
        managers.join(", "),
        took.as_secs_f64()
    ));
    let health = swarm::health(&lab)?;
    t.say(format!("swarm is healthy: {health}"));
    let before = recovery::fingerprint(&lab)?;
    t.say(format!("fingerprint: {}", before.summary()));

    let target = lab.free_subnet()?;
    let seed = opts.seed.unwrap_or_else(Rng::fresh_seed);
    // Every node asks the service every 0.5 s from now until the data plane
    // is checked below: the application's view of the recovery.
    let probe = availability::Probe::start(&lab, &names)?;
    let moved_wall = std::time::SystemTime::now();
    let report = lab.move_nodes(&names, target, Addressing::Shuffled { seed })?;
    let moved_at = Instant::now() - report.took;
    t.say(format!(
        "every host {report} in {:.2}s; from now on nobody touches the swarm",
        report.took.as_secs_f64()
    ));
    let since = |what: String| {
        t.say(format!(
            "+{:.1}s after the move: {what}",
            moved_at.elapsed().as_secs_f64()
        ))
    };
    let outcome = recovery::watch(&lab, &managers, &names, moved_at, opts.watch, &since)?;
    t.say("what glue-manager logged (journalctl -u glue-manager), by manager:");
    let origin = recovery::unix_ms(moved_wall);
    for (ms, m, line) in recovery::timelines(&lab, &managers) {
        if ms + 1000 >= origin {
            println!(
                "           +{:>5.1}s {m}: {line}",
                ms.saturating_sub(origin) as f64 / 1000.0
            );
        }
    }
    for p in &outcome.pending {
        t.say(format!("not converged: {p}"));
    }
    let rewrites_left: usize = names
        .iter()
        .map(|n| recovery::rewrites_on(&lab, n).unwrap_or(0))
        .sum();
    if outcome.converged.is_some() {
        // A task stopped with its node's dockerd; give the swarm the time
        // to start it again before comparing.
        let back = crate::wait_for(
            "every task running again",
            Duration::from_secs(90),
            Duration::from_secs(2),
            || Ok(swarm::health(&lab).ok().filter(|h| h.is_healthy())),
        );
        match back {
            Ok(h) => since(format!("every service at full strength: {h}")),
            Err(e) => t.say(format!("{e}")),
        }
    }
    // Given a moment after convergence (tasks started again are gossiped);
    // checked once when it did not converge.
    let grace = if outcome.converged.is_some() {
        recovery::DATA_PLANE_GRACE
    } else {
        Duration::ZERO
    };
    let (failures, took) = recovery::wait_data_plane(&lab, grace);
    for f in &failures {
        t.say(format!("data plane: {f}"));
    }
    let data_plane = if failures.is_empty() {
        t.say(format!(
            "data plane whole: every task reached by name and address from every node ({:.1}s)",
            took.as_secs_f64()
        ));
        "ok".to_string()
    } else {
        format!("{}_failed", failures.len())
    };
    let app = probe.finish(moved_wall)?;
    for l in app.lines() {
        t.say(l);
    }
    let (ids_kept, lost) = match recovery::fingerprint(&lab) {
        Ok(after) => {
            // A recovery may restart any node's dockerd.
            let mut losses = recovery::losses(&before, &after, &names);
            match recovery::stopped_twice(&lab, &outcome) {
                Ok(twice) => losses.extend(twice),
                Err(e) => losses.push(format!("the task history cannot be read: {e}")),
            }
            for d in &losses {
                t.say(format!("changed: {d}"));
            }
            let kept = recovery::ids(&before) == recovery::ids(&after);
            (if kept { "yes" } else { "no" }, losses.len().to_string())
        }
        Err(e) => {
            t.say(format!("the swarm cannot be fingerprinted: {e}"));
            ("unknown", "unknown".to_string())
        }
    };
    let result = format!(
        "RESULT quorum_s={} converged_s={} nodes={} ids_kept={ids_kept} lost={lost} rewrites_left={rewrites_left} data_plane={data_plane} app_s={} app_gap_s={:.1}",
        recovery::secs(outcome.quorum),
        recovery::secs(outcome.converged),
        lab.nodes().len(),
        recovery::secs(app.app_s.map(Duration::from_secs_f64)),
        app.app_gap_s,
    );
    if opts.keep {
        t.say(format!(
            "keeping lab {} (remove it with `lab down {}`)",
            lab.name(),
            lab.name()
        ));
    } else if let Err(errors) = lab.down() {
        for e in errors {
            t.say(format!("teardown: {e}"));
        }
    } else {
        t.say("lab removed: no container, network or host rule left");
    }
    println!("{result}");
    Ok(result)
}
