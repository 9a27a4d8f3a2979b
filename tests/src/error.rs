//! What can go wrong while driving the lab, with the node, network or command named.

use std::net::Ipv4Addr;

use crate::net::Ipv4Net;

pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{}` failed ({status}): {stderr}", shorten(command))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
    #[error("no node named `{node}` in lab {lab} (nodes: {known})")]
    UnknownNode {
        lab: String,
        node: String,
        known: String,
    },
    #[error("no lab named `{0}` exists on this machine")]
    UnknownLab(String),
    #[error("subnet {subnet} overlaps {other} ({owner}); pick a subnet that nothing else uses")]
    SubnetOverlap {
        subnet: Ipv4Net,
        other: Ipv4Net,
        owner: String,
    },
    #[error("subnet {subnet} has room for {room} lab nodes, {wanted} were asked to move there")]
    SubnetTooSmall {
        subnet: Ipv4Net,
        room: usize,
        wanted: usize,
    },
    #[error("address {addr} is not a usable host address of {subnet}")]
    BadAddress { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("no free lab subnet left in {0}")]
    NoFreeSubnet(Ipv4Net),
    #[error("invalid lab request: {0}")]
    Invalid(String),
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("the lab needs root and a running Docker daemon: {0}")]
    Host(String),
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Commands can carry whole scripts; a message names their first line only.
fn shorten(command: &str) -> String {
    let first = command.lines().next().unwrap_or_default();
    let mut short: String = first.chars().take(160).collect();
    if short.len() < command.len() {
        short.push_str(" …");
    }
    short
}
