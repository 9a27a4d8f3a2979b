//! Ends connections that a new rewrite set would otherwise never reach: TCP
//! sockets to old addresses (dockerd keeps dialling on dead connections whose
//! local address is gone) and conntrack entries, which pin UDP flows (gossip on
//! 7946, VXLAN on 4789) to the translation chosen for their first packet.

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("`{command}` failed: {reason}")]
    Failed { command: String, reason: String },
}

pub trait Resetter: Send + Sync {
    /// Destroys every TCP socket of this host whose peer is `addr`.
    fn kill_sockets_to(&self, addr: Ipv4Addr) -> Result<(), ResetError>;
    /// Deletes every conntrack entry whose original destination is `addr`.
    fn forget_flows_to(&self, addr: Ipv4Addr) -> Result<(), ResetError>;
}

/// The real one: `ss -K` (netlink SOCK_DESTROY) and `conntrack -D`.
#[derive(Debug, Default)]
pub struct Kernel;

fn run(program: &str, args: &[&str], ok_codes: &[i32]) -> Result<(), ResetError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ResetError::Failed {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    match out.status.code() {
        Some(c) if ok_codes.contains(&c) => Ok(()),
        _ => Err(ResetError::Failed {
            command,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

impl Resetter for Kernel {
    fn kill_sockets_to(&self, addr: Ipv4Addr) -> Result<(), ResetError> {
        run("ss", &["-K", "-t", "-n", "dst", &addr.to_string()], &[0])
    }

    fn forget_flows_to(&self, addr: Ipv4Addr) -> Result<(), ResetError> {
        // conntrack exits 1 when no entry matched: nothing to forget is fine.
        run("conntrack", &["-D", "-d", &addr.to_string()], &[0, 1])
    }
}

/// After a set changed: end what still points at the addresses that were
/// rewritten before or are rewritten now. Keeps going and returns every error.
pub fn reset_after_change(
    r: &dyn Resetter,
    olds: impl IntoIterator<Item = Ipv4Addr>,
) -> Vec<ResetError> {
    let mut errors = Vec::new();
    for addr in olds {
        if let Err(e) = r.kill_sockets_to(addr) {
            errors.push(e);
        }
        if let Err(e) = r.forget_flows_to(addr) {
            errors.push(e);
        }
    }
    errors
}
