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

/// Moves every host `runs` times; (time to a leader, time to convergence)
/// of each run, in seconds. A run that does not converge, loses anything,
/// stops a task twice, is not stable for 60 s or not whole (its data plane
/// too) after the leader's dockerd restarts is an error.
fn bench_recovery(lab: &Lab, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use swarm_glue_lab::recovery;
    recovery::install_and_confirm(
        lab,
        swarm_glue_lab::glue::Install::from_env(),
        "",
        Duration::from_secs(300),
    )?;
    let managers = lab.manager_names();
    let all: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let (mut quorum, mut converged) = (Vec::new(), Vec::new());
    for run in 1..=runs.max(1) {
        let before = recovery::fingerprint(lab)?;
        let target = lab.free_subnet()?;
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
            "run {run}: leader after {:.1}s, converged after {:.1}s; node IDs kept, nothing lost, \
             no task stopped twice, stable 60 s, whole after {leader}'s dockerd restarted",
            q.as_secs_f64(),
            c.as_secs_f64()
        );
        quorum.push(q.as_secs_f64());
        converged.push(c.as_secs_f64());
    }
    Ok((quorum, converged))
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
        } => {
            let lab = Lab::up(&LabSpec {
                managers,
                workers,
                subnet,
                keep: true,
                swarm: !no_swarm,
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
            println!("{report}");
            bench("lab.move_s", report.took.as_secs_f64(), "s");
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
            let (quorum, converged) = result?;
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
