//! The agent's figures, printed (not asserted): stripped binary size, idle
//! RSS, and the time to put a 20-rewrite set in force in a network namespace
//! with real iptables (p50 and p90 over alternating sets). Needs root.
//! Run: `cargo bench -p glue-node-agent` (or `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{now, require_root, Fixture, Netns};
use glue_node_agent::netfilter::Iptables;
use glue_node_agent::reset::Kernel;

const ROUNDS: usize = 40;
const REWRITES: u8 = 20;

fn bench(name: &str, value: f64, unit: &str) {
    println!("BENCH {name}={value:.2}{unit}");
}

fn main() {
    require_root();
    let bin = env!("CARGO_BIN_EXE_glue-node-agent");
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    bench("agent.binary_mb", size as f64 / 1_000_000.0, "MB");
    idle_rss(bin);
    apply_20(ROUNDS);
}

fn idle_rss(bin: &str) {
    let fx = Fixture::new();
    let config = fx.dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\n",
            fx.dir.join("state").display(),
            fx.dir.join("trusted").display()
        ),
    )
    .expect("config");
    let ns = Netns::new("gb");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, bin, "--config"])
        .arg(&config)
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(3));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    bench("agent.idle_rss_mb", rss_kb / 1024.0, "MB");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn apply_20(rounds: usize) {
    let fx = Fixture::new();
    let ns = Netns::new("gb");
    let agent = fx.agent(
        Box::new(Iptables::new().expect("iptables")),
        Box::new(Kernel),
    );
    let set = |shift: u8| -> Vec<(Ipv4Addr, Ipv4Addr)> {
        (1..=REWRITES)
            .map(|i| {
                (
                    Ipv4Addr::new(10, 98, 1, i),
                    Ipv4Addr::new(10, 98, 2, i + shift),
                )
            })
            .collect()
    };
    let mut times = ns.run(|| {
        (0..rounds)
            .map(|i| {
                let envelope = fx.set(i as u64 + 1, i as u64 + 1, &set((i % 2) as u8 * 100));
                let started = Instant::now();
                let handled = agent.handle(&envelope, now());
                let took = started.elapsed();
                assert_eq!(handled.http_status, 200, "{}", handled.log);
                took
            })
            .collect::<Vec<_>>()
    });
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    bench(
        "agent.apply_20_rewrites_p50_ms",
        ms(times[times.len() / 2]),
        "ms",
    );
    bench(
        "agent.apply_20_rewrites_p90_ms",
        ms(times[times.len() * 9 / 10]),
        "ms",
    );
}
