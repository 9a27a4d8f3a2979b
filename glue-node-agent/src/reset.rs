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
    let out = crate::bounded::output(cmd, None, crate::bounded::LIMIT).map_err(|reason| {
        ResetError::Failed {
            command: command.clone(),
            reason,
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
        if addrs.is_empty() {
            return Vec::new();
        }
        // One listing, then a delete per matching flow (usually a handful):
        // conntrack filters on one address per call.
        let mut cmd = Command::new("conntrack");
        cmd.args(["-L", "-f", "ipv4"]);
        let listing = match crate::bounded::output(cmd, None, crate::bounded::LIMIT) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                return vec![ResetError::Failed {
                    command: "conntrack -L -f ipv4".into(),
                    reason: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                }]
            }
            Err(reason) => {
                return vec![ResetError::Failed {
                    command: "conntrack -L -f ipv4".into(),
                    reason,
                }]
            }
        };
        let flows: Vec<Flow> = listing
            .lines()
            .filter_map(Flow::parse)
            .filter(|f| addrs.contains(&f.dst))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = flows
                .iter()
                // conntrack exits 1 when the entry is already gone: fine.
                .map(|f| s.spawn(move || run("conntrack", &f.delete_args(), &[0, 1])))
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

/// The original direction of one conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    proto: String,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: Option<(u16, u16)>,
}

impl Flow {
    /// Reads a `conntrack -L` line; the first src/dst/sport/dport are the
    /// original direction.
    fn parse(line: &str) -> Option<Flow> {
        let mut words = line.split_whitespace();
        let proto = words.next()?.to_string();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name).map(str::to_string))
        };
        let src = field("src=")?.parse().ok()?;
        let dst = field("dst=")?.parse().ok()?;
        let ports = match (field("sport="), field("dport=")) {
            (Some(s), Some(d)) => Some((s.parse().ok()?, d.parse().ok()?)),
            _ => None,
        };
        Some(Flow {
            proto,
            src,
            dst,
            ports,
        })
    }

    fn delete_args(&self) -> Vec<String> {
        let mut args = vec![
            "-D".to_string(),
            "-p".into(),
            self.proto.clone(),
            "--orig-src".into(),
            self.src.to_string(),
            "--orig-dst".into(),
            self.dst.to_string(),
        ];
        if let Some((sport, dport)) = self.ports {
            args.extend([
                "--orig-port-src".into(),
                sport.to_string(),
                "--orig-port-dst".into(),
                dport.to_string(),
            ]);
        }
        args
    }
}

/// After a set changed: end what still points at the addresses that were
/// rewritten before or are rewritten now. Keeps going and returns every error.
pub fn reset_after_change(
    r: &dyn Resetter,
    olds: impl IntoIterator<Item = Ipv4Addr>,
) -> Vec<ResetError> {
    let olds: Vec<Ipv4Addr> = olds.into_iter().collect();
    let mut errors = Vec::new();
    if let Err(e) = r.kill_sockets_to(&olds) {
        errors.push(e);
    }
    errors.extend(r.forget_flows_to(&olds));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_original_direction_of_a_conntrack_line() {
        let udp = "udp      17 29 src=10.99.2.2 dst=10.99.1.11 sport=7946 dport=7946 [UNREPLIED] src=10.99.1.11 dst=10.99.2.2 sport=7946 dport=7946 mark=0 use=1";
        let f = Flow::parse(udp).expect("parses");
        assert_eq!(f.proto, "udp");
        assert_eq!(f.dst, Ipv4Addr::new(10, 99, 1, 11));
        assert_eq!(f.ports, Some((7946, 7946)));
        assert_eq!(
            f.delete_args().join(" "),
            "-D -p udp --orig-src 10.99.2.2 --orig-dst 10.99.1.11 --orig-port-src 7946 --orig-port-dst 7946"
        );
        let icmp = "icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=3 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=3 mark=0 use=1";
        assert_eq!(Flow::parse(icmp).map(|f| f.ports), Some(None));
        assert!(
            Flow::parse("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.")
                .is_none()
        );
    }
}
