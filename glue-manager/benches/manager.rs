//! Figures of glue-manager at rest, on the lab's 3 + 2 swarm with the default
//! settings: resident memory and CPU of each manager over an idle period
//! (default 300 s; `BENCH_IDLE_SECONDS` changes it) after every agent is
//! confirmed. Targets: RSS ≤ 20 MB, CPU ≤ 0.2 %. Needs root, Docker and the
//! release binaries (`make bench` builds them).

use std::time::{Duration, Instant};

use swarm_glue_lab::glue::{self, Artefacts, Install};
use swarm_glue_lab::{bench, par_map, wait_for, Lab, LabSpec};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];

/// (utime + stime in clock ticks, VmRSS in kB) of the manager on `node`.
fn sample(lab: &Lab, node: &str) -> (u64, u64) {
    let out = lab
        .sh(
            node,
            "p=$(systemctl show -p MainPID --value glue-manager); \
             cut -d' ' -f14,15 /proc/$p/stat; awk '/VmRSS/{print $2}' /proc/$p/status",
        )
        .unwrap_or_else(|e| panic!("{node}: {e}"));
    let nums: Vec<u64> = out
        .split_whitespace()
        .map(|w| w.parse().unwrap_or_else(|_| panic!("{node}: {out}")))
        .collect();
    (nums[0] + nums[1], nums[2])
}

fn main() {
    let idle: u64 = std::env::var("BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let art = Artefacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let lab =
        Lab::up(&LabSpec::default()).unwrap_or_else(|e| panic!("the lab could not start: {e}"));
    let config = format!(
        "key_job_image = \"{}\"\n",
        swarm_glue_lab::image::WORKLOAD_IMAGE
    );
    par_map(&MANAGERS, |m| {
        glue::install_manager(&lab, m, &art, Install::Deb, &config)
    })
    .expect("installed");
    let started = Instant::now();
    par_map(&MANAGERS, |m| glue::start_manager(&lab, m)).expect("started");
    wait_for(
        "every agent confirmed by every manager",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            let all = par_map(&MANAGERS, |m| {
                Ok(glue::manager_report(&lab, m)?.is_some_and(|r| {
                    let nodes = r["nodes"].as_object().cloned().unwrap_or_default();
                    nodes.len() == 5
                        && nodes
                            .values()
                            .all(|n| n["state"] == "confirmed" && n["trusted_keys"] == 3)
                }))
            })?;
            Ok(all.into_iter().all(|ok| ok).then_some(()))
        },
    )
    .expect("enrolled");
    bench("manager.enrol_all_s", started.elapsed().as_secs_f64(), "s");
    let before: Vec<(u64, u64)> = MANAGERS.iter().map(|m| sample(&lab, m)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle));
    let secs = t0.elapsed().as_secs_f64();
    let ticks = USER_HZ;
    let mut worst_cpu: f64 = 0.0;
    let mut worst_rss: u64 = 0;
    for (m, (cpu0, _)) in MANAGERS.iter().zip(&before) {
        let (cpu1, rss) = sample(&lab, m);
        let pct = (cpu1 - cpu0) as f64 / ticks / secs * 100.0;
        println!(
            "{m}: cpu {pct:.3}% over {secs:.0}s, rss {:.1} MB",
            rss as f64 / 1024.0
        );
        worst_cpu = worst_cpu.max(pct);
        worst_rss = worst_rss.max(rss);
    }
    bench("manager.idle_cpu_pct_worst", worst_cpu, "%");
    bench("manager.idle_rss_mb_worst", worst_rss as f64 / 1024.0, "MB");
    if let Err(errors) = lab.down() {
        panic!("teardown failed: {errors:?}");
    }
}

/// Clock ticks per second in /proc/PID/stat: USER_HZ, 100 on Linux.
const USER_HZ: f64 = 100.0;
