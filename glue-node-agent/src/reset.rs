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
    /// Destroys every TCP socket of this host whose peer is one of `addrs`.
    fn kill_sockets_to(&self, addrs: &[Ipv4Addr]) -> Result<(), ResetError>;
    /// Deletes every conntrack entry whose original destination is one of `addrs`.
    fn forget_flows_to(&self, addrs: &[Ipv4Addr]) -> Vec<ResetError>;
}

/// The real one: `ss -K` (netlink SOCK_DESTROY) and `conntrack -D`.
#[derive(Debug, Default)]
pub struct Kernel;

fn run(program: &str, args: &[String], ok_codes: &[i32]) -> Result<(), ResetError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = crate::bounded::output(cmd, None, crate::bounded::LIMIT).map_err(|e| {
        ResetError::Failed {
            command: command.clone(),
            reason: e.to_string(),
        }
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
    fn kill_sockets_to(&self, addrs: &[Ipv4Addr]) -> Result<(), ResetError> {
        if addrs.is_empty() {
            return Ok(());
        }
        // One filter for all addresses: `( dst A or dst B ... )`.
        let mut args: Vec<String> = ["-K", "-t", "-n", "("].map(String::from).to_vec();
        for (i, a) in addrs.iter().enumerate() {
            if i > 0 {
                args.push("or".into());
            }
            args.push("dst".into());
            args.push(a.to_string());
        }
        args.push(")".into());
        run("ss", &args, &[0])
    }

    fn forget_flows_to(&self, addrs: &[Ipv4Addr]) -> Vec<ResetError> {
        // One `conntrack -D` per address deletes every flow to it. (It used
        // to be one listing, then one `conntrack -D` per flow; on busy lab
        // managers ending old connections, `ss -K` included, took 1.3-1.5 s,
        // against a 2 s push timeout, and 0.08-0.33 s with this.)
        std::thread::scope(|s| {
            let handles: Vec<_> = addrs
                .iter()
                .map(|a| {
                    let args = ["-D", "-f", "ipv4", "--orig-dst"]
                        .map(String::from)
                        .into_iter()
                        .chain([a.to_string()])
                        .collect::<Vec<_>>();
                    // conntrack exits 1 when no flow matched: fine.
                    s.spawn(move || run("conntrack", &args, &[0, 1]))
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(r) => r.err(),
                    Err(_) => Some(ResetError::Failed {
                        command: "conntrack -D".into(),
                        reason: "the worker thread panicked".into(),
                    }),
                })
                .collect()
        })
    }
}

/// After a set changed: end what still points at `olds`, the addresses whose
/// rule changed (see `Agent::enforce`). Keeps going and returns every error.
pub fn reset_after_change(
    r: &dyn Resetter,
    olds: impl IntoIterator<Item = Ipv4Addr>,
) -> Vec<ResetError> {
    let olds: Vec<Ipv4Addr> = olds.into_iter().collect();
    // Flows first, sockets second: the other way round, a program
    // reconnecting at once through the new rule had that fresh flow's
    // translation deleted under it, and noticed only 15 s later
    // (docs/recovery.md, "Measured: behind the constants"). A socket opened between
    // the two steps is killed too, and its program is told at once.
    let mut errors = r.forget_flows_to(&olds);
    if let Err(e) = r.kill_sockets_to(&olds) {
        errors.push(e);
    }
    errors
}
