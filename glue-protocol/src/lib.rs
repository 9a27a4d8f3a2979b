//! What glue-manager and glue-node-agent share: the one definition of what
//! managers and agents say to each other (signed commands and replies, see
//! docs/protocol.md), and the few helpers both programs need written once.

mod protocol;
pub use protocol::*;

pub mod clock;
pub mod config;
pub mod files;
pub mod logging;

/// What `--version` prints after a program's name: the version and the git
/// commit both programs were built from.
pub const PROGRAM_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWARM_GLUE_COMMIT"),
    ")"
);

/// The TCP port agents listen on unless configured otherwise.
pub const DEFAULT_AGENT_PORT: u16 = 7950;

/// The fields of dockerd's `docker-state.json` that name the node's own
/// addresses (what [`DockerdAddrs::state`] reports).
pub const STATE_FIELDS: [&str; 4] = ["AdvertiseAddr", "DataPathAddr", "ListenAddr", "LocalAddr"];

/// The file a manager's key is written to in an agent's trust directory.
pub fn trust_file_contents(key: &PublicKey, comment: &str) -> String {
    format!("ed25519 {key} {comment}\n")
}
