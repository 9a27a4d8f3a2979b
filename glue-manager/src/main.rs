//! glue-manager: the swarm-glue daemon for Docker Swarm managers.
//!
//! The daemon is built by issue #4; until then the binary only reports its
//! version so the workspace, packaging and lab have a real artefact to carry.

fn main() {
    println!("glue-manager {}", env!("CARGO_PKG_VERSION"));
}
