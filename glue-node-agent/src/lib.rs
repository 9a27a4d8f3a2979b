//! glue-node-agent: the hands of swarm-glue on every node.
//!
//! [`protocol`] (the glue-protocol crate) is the one definition of what
//! managers and agents say to each other, shared with glue-manager.

pub use glue_protocol as protocol;
pub use glue_protocol::clock::unix_ms;
pub use glue_protocol::logging;
pub use glue_protocol::PROGRAM_VERSION as VERSION;

pub mod agent;
pub mod bounded;
pub mod config;
pub mod dockerd;
pub mod netfilter;
pub mod overlay;
pub mod reset;
pub mod rules;
pub mod server;
pub mod state;
