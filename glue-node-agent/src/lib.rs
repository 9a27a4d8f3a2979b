//! glue-node-agent: the hands of swarm-glue on every node.
//!
//! [`protocol`] is the one definition of what managers and agents say to each
//! other; glue-manager uses it from here.

/// What `--version` prints after the program's name: the version and the git
/// commit both programs were built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWARM_GLUE_COMMIT"),
    ")"
);

pub mod agent;
pub mod bounded;
pub mod config;
pub mod dockerd;
pub mod logging;
pub mod netfilter;
pub mod overlay;
pub mod protocol;
pub mod reset;
pub mod rules;
pub mod server;
pub mod state;

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
