//! glue-manager: remembers the healthy swarm, installs and trusts the agents
//! on every node, and (issue 5) brings a moved swarm back.

pub mod agent_client;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod docker;
pub mod enrol;
pub mod host;
pub mod identity;
pub mod install;
pub mod keys;
pub mod mdns;
pub mod memory;
pub mod plan;
pub mod ports;
pub mod progress;
pub mod readdress;
pub mod recovery;
pub mod ssh;
pub mod status;
