//! glue-manager: remembers the healthy swarm, installs and trusts the agents
//! on every node, and (issue 5) brings a moved swarm back.

pub(crate) mod agent_client;
pub mod config;
pub mod daemon;
pub(crate) mod discovery;
pub(crate) mod docker;
pub(crate) mod enrol;
pub(crate) mod host;
pub mod identity;
pub(crate) mod install;
pub(crate) mod keys;
pub(crate) mod mdns;
pub mod memory;
pub(crate) mod plan;
pub(crate) mod ports;
pub(crate) mod progress;
pub(crate) mod readdress;
pub(crate) mod recovery;
pub(crate) mod ssh;
pub mod status;
