//! `lab`: drives the swarm-glue lab by hand. See tests/README.md.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use swarm_glue_lab::demo::{self, DemoOptions};
use swarm_glue_lab::{bench, glue, image, lab, swarm, Addressing, Ipv4Net, Lab, LabSpec};

#[derive(Parser)]
#[command(
    version,
    about = "Real Docker Swarm nodes on this machine, to move between networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Which {
    /// The lab to act on (default: the only lab on this machine).
    #[arg(long, env = "LAB")]
    lab: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a lab, boot its nodes and form a swarm; the lab stays until `down`.
    Up {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Home subnet (default: a free /24 of 10.231.0.0/16).
        #[arg(long)]
        subnet: Option<Ipv4Net>,
        /// Boot the nodes but form no swarm.
        #[arg(long)]
        no_swarm: bool,
        /// Pin every address when forming the swarm (--listen-addr IP:2377
        /// and --data-path-addr IP besides --advertise-addr IP).
        #[arg(long)]
        pinned: bool,
    },
    /// Show the lab's nodes, addresses and the swarm as the managers see it.
    Status {
        #[command(flatten)]
        which: Which,
    },
    /// Move nodes (names, or all / managers / workers) to another subnet.
    Move {
        #[command(flatten)]
        which: Which,
        /// Target subnet (default: a free /24).
        #[arg(long, conflicts_with = "home")]
        subnet: Option<Ipv4Net>,
        /// Move the nodes back to the addresses they were created with.
        #[arg(long)]
        home: bool,
        /// Seed of the address shuffle (printed when not given).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Pull a node's cable (its link loses carrier; its address stays).
    Cut {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Plug a cut node back in.
    Heal {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Shut a node down.
    Stop {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Boot a stopped node and wait for its dockerd.
    Start {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Restart dockerd on a node.
    RestartDocker {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Install glue-manager (built with `cargo build --release`) on managers
    /// and start it; agents then reach every node through it.
    InstallGlue {
        #[command(flatten)]
        which: Which,
        /// Install but do not start.
        #[arg(long)]
        no_start: bool,
        /// The container image with the documented `docker run` line instead
        /// of the package (default: LAB_GLUE_INSTALL, else the package).
        #[arg(long)]
        container: bool,
        /// Nodes (default: every manager).
        nodes: Vec<String>,
    },
    /// Print the swarm's fingerprint as JSON.
    Fingerprint {
        #[command(flatten)]
        which: Which,
    },
    /// Check the data plane: from every node, inside its probe task, every
    /// task of the service by name (tasks.probe) and by address (HTTP GET
    /// over the overlay network). Prints each failure; exits 1 if any.
    DataPlane {
        #[command(flatten)]
        which: Which,
    },
    /// The availability probe: every node asks the probe service every
    /// 0.5 s from inside its running task's network namespace (see
    /// availability.rs); `lab move` notes the move on the nodes it runs on.
    Probe {
        #[command(flatten)]
        which: Which,
        #[command(subcommand)]
        action: ProbeAction,
    },
    /// Remove labs completely (containers, networks, host iptables rules).
    Down {
        /// Labs to remove (default: the only lab).
        labs: Vec<String>,
        /// Remove every lab on this machine.
        #[arg(long)]
        all: bool,
    },
    /// The demo: a swarm moved to a new network, and what happens next.
    Demo {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Seconds to watch the moved swarm.
        #[arg(long, default_value_t = 300)]
        watch: u64,
        #[arg(long)]
        seed: Option<u64>,
        /// Keep the lab afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Print the lab's own timings: image build (cold), lab up, move.
    Bench {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Rebuild the node image to time a cold build.
        #[arg(long)]
        rebuild_image: bool,
    },
    /// Time recoveries: swarm-glue on the managers, every host moved `runs`
    /// times; prints the median and worst time to a leader and to convergence.
    BenchRecovery {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Leave the lab up when a run fails, to look at it (`lab down` after).
        #[arg(long)]
        keep_on_failure: bool,
    },
}

#[derive(Subcommand)]
enum ProbeAction {
    /// Start it on every running node (a running probe starts again, its
    /// log emptied); it stops by itself after --minutes.
    Start {
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
    /// Stop it and print the report.
    Stop {
        /// Measure from this moment (Unix ms; default: the last `lab move`
        /// since the probe started, else its start).
        #[arg(long)]
        since: Option<u64>,
    },
    /// Print the figures and every node's windows so far.
    Report {
        /// As for `stop`.
        #[arg(long)]
        since: Option<u64>,
    },
}

/// Moves every host `runs` times; (time to a leader, time to convergence,
/// `app_s` of the availability probe) of each run, in seconds. A run that
/// does not converge, leaves some node without any answer from the service
/// once it was available (`app_gap_s` > 0) or never all-green, loses
/// anything, stops a task twice, is not stable for 60 s or not whole (its
/// data plane too) after the leader's dockerd restarts is an error.
fn bench_recovery(lab: &Lab, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    use swarm_glue_lab::recovery;
    recovery::install_and_confirm(
        lab,
        swarm_glue_lab::glue::Install::from_env(),
        "",
        Duration::from_secs(300),
    )?;
    let managers = lab.manager_names();
    let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let (mut quorum, mut converged, mut app) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs.max(1) {
        let before = recovery::fingerprint(lab)?;
        let target = lab.free_subnet()?;
        let probe = swarm_glue_lab::availability::Probe::start(lab, &all)?;
        let report = lab.move_nodes(&all, target, Addressing::Shuffled { seed: run as u64 })?;
        let moved_at = Instant::now() - report.took;
        let o = recovery::watch(
            lab,
            &managers,
            &all,
            moved_at,
            Duration::from_secs(400),
            &|_| {},
        )?;
        // Where the time went, from the managers' own timelines.
        let since = recovery::unix_ms(std::time::SystemTime::now() - moved_at.elapsed());
        for (t, m, line) in recovery::timelines(lab, &managers) {
            if t >= since {
                println!("  +{:5.1}s {m}: {line}", (t - since) as f64 / 1000.0);
            }
        }
        let (Some(q), Some(c)) = (o.quorum, o.converged) else {
            bail!(
                "run {run} did not converge: {:?}\nraft as each manager sees it: {:#?}\njournals: {}",
                o.pending,
                recovery::raft_views(lab, &managers),
                recovery::save_logs(lab, &format!("run{run}"))
            );
        };
        let figures = recovery::finish_probe(lab, probe, &o)?;
        let Some(app_s) = figures.app_s.filter(|_| figures.app_gap_s == 0.0) else {
            bail!(
                "run {run}: the service was not answering every node all the time (app_gap_s={:.1}) \
                 or not all of them at the end (app_s={:?}): {:#?}\njournals: {}",
                figures.app_gap_s,
                figures.app_s,
                figures.lines(),
                recovery::save_logs(lab, &format!("run{run}"))
            );
        };
        // Not timed: every task back, then nothing may have changed.
        let after = recovery::whole_again(lab, Duration::from_secs(120))?;
        // A recovery may restart any node's dockerd.
        let mut losses = recovery::losses(&before, &after, &all);
        losses.extend(recovery::stopped_twice(lab, &o)?);
        if !losses.is_empty() || recovery::ids(&before) != recovery::ids(&after) {
            bail!(
                "run {run}: the swarm changed: {losses:#?}\nDocker on the managers: {:#?}\njournals: {}",
                recovery::nodes_down(lab, &managers),
                recovery::save_logs(lab, &format!("run{run}"))
            );
        }
        // Not timed either: the rest of what the acceptance asks of a run.
        let leader = recovery::stable_then_leader_restart(lab, &managers, &all)
            .with_context(|| format!("run {run}"))?;
        println!(
            "run {run}: leader after {:.1}s, converged after {:.1}s, every node answered by every task \
             after {app_s:.1}s and by some task all along; node IDs kept, nothing lost, \
             no task stopped twice, stable 60 s, whole after {leader}'s dockerd restarted",
            q.as_secs_f64(),
            c.as_secs_f64()
        );
        quorum.push(q.as_secs_f64());
        converged.push(c.as_secs_f64());
        app.push(app_s);
    }
    Ok((quorum, converged, app))
}

/// `lab probe ...`.
fn probe(lab: &Lab, action: ProbeAction) -> anyhow::Result<()> {
    use swarm_glue_lab::availability as av;
    let mut nodes = Vec::new();
    for n in lab.nodes() {
        if lab.is_running(&n.name)? {
            nodes.push(n.name.clone());
        }
    }
    let since = match action {
        ProbeAction::Start { minutes } => {
            av::start_on(lab, &nodes, Duration::from_secs(minutes.max(1) * 60))?;
            println!(
                "availability probe started on {} (stops by itself after {minutes} min); \
                 `lab probe report` or `lab probe stop` for the figures",
                nodes.join(", ")
            );
            return Ok(());
        }
        ProbeAction::Stop { since } => {
            av::stop_on(lab, &nodes)?;
            since
        }
        ProbeAction::Report { since } => since,
    };
    let logs = av::read_logs(lab, &nodes)?;
    let Some(started) = logs.started.values().max().copied() else {
        bail!("no availability probe was started in lab {}", lab.name());
    };
    // From the last move noted since the probe started, else its start.
    let moved = since.unwrap_or_else(|| {
        logs.moved
            .values()
            .copied()
            .filter(|m| *m >= started)
            .max()
            .unwrap_or(started)
    });
    // To its stop, else (running, or stopped by itself) its last round.
    let last = logs
        .rounds
        .values()
        .filter_map(|r| r.last().map(|(at, _)| *at + av::INTERVAL_MS))
        .max()
        .unwrap_or(moved);
    let end = logs.stopped.values().copied().max().unwrap_or(last);
    let running: Vec<&String> = logs
        .running
        .iter()
        .filter(|(_, r)| **r)
        .map(|(n, _)| n)
        .collect();
    println!(
        "availability probe of lab {}: measured from {moved} (Unix ms; {}) to {end} ({:.1} s){}",
        lab.name(),
        if since.is_some() {
            "as asked"
        } else if logs.moved.values().any(|m| *m >= started) {
            "the last move"
        } else {
            "no move since it started: its start"
        },
        end.saturating_sub(moved) as f64 / 1000.0,
        if running.is_empty() {
            String::new()
        } else {
            format!(
                "; still running on {}",
                running
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let figures = av::figures(&logs.rounds, &nodes, moved, end);
    for l in figures.lines() {
        println!("  {l}");
    }
    bench("recovery.app_s", figures.app_s.unwrap_or(f64::NAN), "s");
    bench("recovery.app_gap_s", figures.app_gap_s, "s");
    bench("recovery.app_remote_gap_s", figures.remote_gap_s, "s");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(which: &Which) -> anyhow::Result<Lab> {
    let name = match &which.lab {
        Some(n) => n.clone(),
        None => only_lab()?,
    };
    Ok(Lab::open(&name)?)
}

fn only_lab() -> anyhow::Result<String> {
    let labs = Lab::list()?;
    match labs.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("there is no lab on this machine; start one with `lab up`"),
        many => bail!(
            "there are several labs ({}); pick one with --lab",
            many.join(", ")
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            managers,
            workers,
            subnet,
            no_swarm,
            pinned,
        } => {
            let lab = Lab::up(&LabSpec {
                managers,
                workers,
                subnet,
                keep: true,
                swarm: !no_swarm,
                pinned,
            })?;
            print_up_timings(&lab);
            println!("lab {} is up", lab.name());
            print!("{}", status_text(&lab)?);
        }
        Command::Status { which } => print!("{}", status_text(&open(&which)?)?),
        Command::Move {
            which,
            subnet,
            home,
            seed,
            nodes,
        } => {
            let lab = open(&which)?;
            let report = if home {
                lab.move_home(&nodes)?
            } else {
                let subnet = match subnet {
                    Some(s) => s,
                    None => lab.free_subnet()?,
                };
                let seed = seed.unwrap_or_else(swarm_glue_lab::rng::Rng::fresh_seed);
                lab.move_nodes(&nodes, subnet, Addressing::Shuffled { seed })?
            };
            let moved = std::time::SystemTime::now() - report.took;
            let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
            swarm_glue_lab::availability::mark_moved(&lab, &all, moved)?;
            println!("{report}");
            bench("lab.move_s", report.took.as_secs_f64(), "s");
        }
        Command::Probe { which, action } => {
            let lab = open(&which)?;
            probe(&lab, action)?;
        }
        Command::Cut { which, node } => open(&which)?.cut(&node)?,
        Command::Heal { which, node } => open(&which)?.heal(&node)?,
        Command::Stop { which, node } => open(&which)?.stop(&node)?,
        Command::Start { which, node } => open(&which)?.start(&node)?,
        Command::RestartDocker { which, node } => open(&which)?.restart_docker(&node)?,
        Command::InstallGlue {
            which,
            no_start,
            container,
            nodes,
        } => {
            let lab = open(&which)?;
            let art = glue::Artefacts::locate()?;
            let how = if container {
                glue::Install::Container
            } else {
                glue::Install::from_env()
            };
            let nodes = if nodes.is_empty() {
                lab.manager_names()
            } else {
                lab.select(&nodes)?
            };
            let config = glue::lab_manager_config("");
            swarm_glue_lab::par_map(&nodes, |n| {
                glue::install_manager(&lab, n, &art, how, &config)
            })?;
            if !no_start {
                swarm_glue_lab::par_map(&nodes, |n| glue::start_manager(&lab, n))?;
            }
            println!("glue-manager installed on {}", nodes.join(", "));
        }
        Command::Fingerprint { which } => {
            let fp = swarm::fingerprint_any(&open(&which)?)?;
            println!("{}", serde_json::to_string_pretty(&fp)?);
        }
        Command::DataPlane { which } => {
            let lab = open(&which)?;
            let started = Instant::now();
            let failures = swarm_glue_lab::recovery::data_plane(&lab)?;
            let took = started.elapsed().as_secs_f64();
            if !failures.is_empty() {
                for f in &failures {
                    println!("{f}");
                }
                bail!(
                    "the data plane check found {} failures ({took:.1}s)",
                    failures.len()
                );
            }
            println!(
                "data plane whole: every {} task reached by name and address from every node ({took:.1}s)",
                swarm::SERVICE
            );
        }
        Command::Down { labs, all } => {
            let labs = if all {
                Lab::list()?
            } else if labs.is_empty() {
                vec![only_lab()?]
            } else {
                labs
            };
            let docker = swarm_glue_lab::docker::Docker::new();
            let mut failed = false;
            for name in &labs {
                for err in lab::teardown(&docker, name) {
                    eprintln!("lab {name}: {err}");
                    failed = true;
                }
                println!("lab {name} removed");
            }
            if failed {
                bail!("some of the labs' resources could not be removed (see above)");
            }
        }
        Command::Demo {
            managers,
            workers,
            watch,
            seed,
            keep,
        } => {
            demo::run(&DemoOptions {
                managers,
                workers,
                watch: Duration::from_secs(watch),
                seed,
                keep,
            })?;
        }
        Command::BenchRecovery {
            managers,
            workers,
            runs,
            keep_on_failure,
        } => {
            let lab = Lab::up(&LabSpec {
                managers,
                workers,
                keep: keep_on_failure,
                ..LabSpec::default()
            })?;
            let result = bench_recovery(&lab, runs);
            if let (true, Err(e)) = (keep_on_failure, &result) {
                bail!(
                    "{e:#}\nlab {0} kept for a look (`lab down {0}`)",
                    lab.name()
                );
            }
            let down = lab.down();
            let (quorum, converged, app) = result?;
            down.map_err(|errs| {
                anyhow::anyhow!(errs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "))
            })?;
            let figures = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (v[v.len() / 2], v[v.len() - 1])
            };
            let (qm, qw) = figures(quorum);
            let (cm, cw) = figures(converged);
            let tag = format!("recovery.m{managers}");
            bench(&format!("{tag}.leader_median_s"), qm, "s");
            bench(&format!("{tag}.leader_worst_s"), qw, "s");
            bench(&format!("{tag}.converged_median_s"), cm, "s");
            bench(&format!("{tag}.converged_worst_s"), cw, "s");
            let (am, aw) = figures(app);
            bench(&format!("{tag}.app_median_s"), am, "s");
            bench(&format!("{tag}.app_worst_s"), aw, "s");
        }
        Command::Bench {
            managers,
            workers,
            rebuild_image,
        } => {
            if rebuild_image {
                let docker = swarm_glue_lab::docker::Docker::new();
                docker.check_host()?;
                let built = image::ensure_node_image(&docker, true)?;
                let took = built.built_in.context("the image was not rebuilt")?;
                bench("lab.image_build_cold_s", took.as_secs_f64(), "s");
            }
            let lab = Lab::up(&LabSpec {
                managers,
                workers,
                ..LabSpec::default()
            })?;
            print_up_timings(&lab);
            let target = lab.free_subnet()?;
            let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
            let report = lab.move_nodes(&all, target, Addressing::Shuffled { seed: 1 })?;
            bench("lab.move_all_s", report.took.as_secs_f64(), "s");
            let report = lab.move_home(&all)?;
            bench("lab.move_home_s", report.took.as_secs_f64(), "s");
            let down = Instant::now();
            lab.down().map_err(|errs| {
                anyhow::anyhow!(errs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "))
            })?;
            bench("lab.down_s", down.elapsed().as_secs_f64(), "s");
        }
    }
    Ok(())
}

fn print_up_timings(lab: &Lab) {
    if let Some(d) = lab.timings.image_build {
        bench("lab.image_build_cold_s", d.as_secs_f64(), "s");
    }
    let n = lab.nodes().len();
    bench(
        &format!("lab.boot_{n}_nodes_s"),
        lab.timings.boot.as_secs_f64(),
        "s",
    );
    bench("lab.form_swarm_s", lab.timings.swarm.as_secs_f64(), "s");
    bench("lab.up_s", lab.timings.total.as_secs_f64(), "s");
}

fn status_text(lab: &Lab) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "lab {}", lab.name())?;
    let nets = lab.networks()?;
    for (name, subnet) in &nets {
        writeln!(out, "  network {name} {subnet}")?;
    }
    let addrs = lab.addresses()?;
    let views = lab
        .managers()
        .find_map(|m| swarm::nodes(lab, &m.name).ok())
        .unwrap_or_default();
    writeln!(
        out,
        "  {:<4} {:<8} {:<8} {:<15} {:<8} {:<12} {:<22}",
        "node", "role", "running", "address", "state", "manager", "manager addr (raft)"
    )?;
    for node in lab.nodes() {
        let view = views.iter().find(|v| v.hostname == node.name);
        writeln!(
            out,
            "  {:<4} {:<8} {:<8} {:<15} {:<8} {:<12} {:<22}",
            node.name,
            node.role,
            lab.is_running(&node.name).unwrap_or(false),
            addrs[&node.name].map_or("-".into(), |a| a.to_string()),
            view.map_or("?", |v| v.state.as_str()),
            view.map_or(String::from("?"), |v| if v.leader {
                "leader".into()
            } else {
                v.reachability.clone().unwrap_or_default()
            }),
            view.and_then(|v| v.manager_addr.clone())
                .unwrap_or_default(),
        )?;
    }
    if views.is_empty() {
        writeln!(out, "  swarm: no manager can name a leader")?;
    } else if let Ok(h) = swarm::health(lab) {
        writeln!(out, "  swarm: {h}")?;
    }
    Ok(out)
}
