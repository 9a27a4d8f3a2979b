//! The swarm-glue lab: real, systemd-booted Docker Swarm nodes on one machine
//! that can be moved to new networks. See tests/README.md.

pub mod availability;
pub mod demo;
pub mod docker;
pub mod error;
pub mod glue;
pub mod image;
pub mod lab;
pub mod net;
pub mod recovery;
pub mod rng;
pub mod swarm;

use std::time::{Duration, Instant};

pub use error::{LabError, Result};
pub use lab::{Addressing, Lab, LabSpec, Role};
pub use net::Ipv4Net;

/// Runs `f` on every item at once, one thread each; the first error wins.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(|| f(item))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::Invalid("a lab worker thread panicked".into()))
                })
            })
            .collect()
    })
}

/// Polls `check` until it returns a value or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if started.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(interval);
    }
}

/// One benchmark figure, in the form every swarm-glue benchmark prints.
pub fn bench(name: &str, value: f64, unit: &str) {
    println!("BENCH {name}={value:.2}{unit}");
}
