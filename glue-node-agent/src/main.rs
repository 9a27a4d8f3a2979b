//! glue-node-agent: applies swarm-glue's signed address rewrites on one node.
//!
//! The agent is built by issue #3; until then the binary only reports its
//! version so the workspace, packaging and lab have a real artefact to carry.

fn main() {
    println!("glue-node-agent {}", env!("CARGO_PKG_VERSION"));
}
