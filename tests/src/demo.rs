//! The demo: a healthy swarm in the lab, every host moved to a new network
//! with shuffled addresses, and what happens to the swarm afterwards, told as
//! a timeline and closed by one `RESULT` line.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lab::{Addressing, Lab, LabSpec};
use crate::rng::Rng;
use crate::swarm;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub managers: usize,
    pub workers: usize,
    /// How long to watch the moved swarm for a leader.
    pub watch: Duration,
    pub seed: Option<u64>,
    pub keep: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            managers: 3,
            workers: 2,
            watch: Duration::from_secs(60),
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
    let before = swarm::fingerprint_any(&lab)?;
    let health = swarm::health(&lab)?;
    t.say(format!("swarm is healthy: {health}"));
    t.say(format!("fingerprint: {}", before.summary()));

    let target = lab.free_subnet()?;
    let seed = opts.seed.unwrap_or_else(Rng::fresh_seed);
    let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let report = lab.move_nodes(&all, target, Addressing::Shuffled { seed })?;
    let moved_at = Instant::now();
    t.say(format!(
        "every host {report} in {:.2}s",
        report.took.as_secs_f64()
    ));
    t.say("swarm-glue is not installed in this lab yet: watching the swarm on its own");

    let mut lost_at = None;
    let mut back_at = None;
    while moved_at.elapsed() < opts.watch {
        match swarm::leader(&lab) {
            None if lost_at.is_none() => {
                lost_at = Some(moved_at.elapsed());
                t.say("the swarm has no leader: every manager dials the old addresses");
            }
            Some(leader) if lost_at.is_some() => {
                back_at = Some(moved_at.elapsed());
                t.say(format!("a leader is back: {leader}"));
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let recovered = back_at.is_some() || lost_at.is_none();
    let (ids_kept, lost) = if recovered {
        let after = swarm::fingerprint_any(&lab)?;
        let diff = before.diff(&after);
        for d in &diff {
            t.say(format!("changed: {d}"));
        }
        (
            if diff.is_empty() { "yes" } else { "no" },
            diff.len().to_string(),
        )
    } else {
        t.say(format!(
            "still no leader {:.0}s after the move: the swarm is dead without swarm-glue",
            moved_at.elapsed().as_secs_f64()
        ));
        ("unknown", "unknown".to_string())
    };
    let secs = |d: Option<Duration>| d.map_or("none".into(), |d| format!("{:.1}", d.as_secs_f64()));
    let result = format!(
        "RESULT swarm_glue=absent nodes={} moved={} leader_lost_s={} quorum_s={} recovered={} ids_kept={ids_kept} lost={lost} watched_s={:.0}",
        lab.nodes().len(),
        report.moves.len(),
        secs(lost_at),
        secs(back_at),
        if recovered { "yes" } else { "no" },
        opts.watch.as_secs_f64()
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
