//! Lets a moved peer's overlay traffic in while rewrites are in force.
//!
//! Docker's overlay driver makes every VXLAN device with learning on and
//! gives it a permanent forwarding entry per remote task, naming the tunnel
//! end point that task's node announced when its dockerd started. With
//! learning on, the kernel drops a packet whose outer source differs from
//! such an entry: a peer that moved sends from its new address, and until
//! its dockerd restarts it announces, and this node's entries name, its old
//! one. The rewrites carry this node's packets to the peer's new address;
//! learning off lets the peer's packets in. So while a set is in force every
//! overlay tunnel here has learning off, and with the empty set it is on
//! again (libnetwork's overlay driver always creates tunnels with learning
//! on, read in its source).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One VXLAN device in one of Docker's overlay namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub netns: PathBuf,
    pub device: String,
    pub learning: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("{dir}: {reason}")]
    ReadDir { dir: PathBuf, reason: String },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
}

pub trait Tunnels: Send + Sync {
    /// Every overlay tunnel, and what could not be read.
    fn list(&self) -> (Vec<Tunnel>, Vec<TunnelError>);
    fn set_learning(&self, tunnel: &Tunnel, on: bool) -> Result<(), TunnelError>;
}

/// The real one: the namespaces dockerd keeps under its exec root, read and
/// changed with `nsenter --net=… ip`.
#[derive(Debug, Clone)]
pub struct DockerNetns {
    pub dir: PathBuf,
}

/// Docker names an overlay network's namespace `<epoch>-<network ID>`;
/// containers' namespaces have no dash, the ingress one no leading digit.
fn is_overlay_namespace(name: &str) -> bool {
    name.split_once('-').is_some_and(|(epoch, id)| {
        !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty()
    })
}

fn ip_in(netns: &Path, args: &[&str]) -> Result<String, TunnelError> {
    let net = format!("--net={}", netns.display());
    let command = format!("nsenter {net} ip {}", args.join(" "));
    let mut cmd = Command::new("nsenter");
    cmd.arg(&net).arg("ip").args(args);
    let fail = |reason| TunnelError::Command {
        command: command.clone(),
        reason,
    };
    let out = crate::bounded::output(cmd, None, crate::bounded::LIMIT)
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // dockerd mounted it after the agent started, and the mount did not
        // reach the agent's own mount namespace.
        let hint = if stderr.contains("Invalid argument") {
            " (not a namespace as this agent sees it: dockerd's mounts do not reach the agent; is / a shared mount, as systemd makes it on a host?)"
        } else {
            ""
        };
        return Err(fail(format!("{}: {stderr}{hint}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The devices of `ip -d -o link show type vxlan` (one line each) and
/// whether each learns.
pub fn parse_links(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?.to_string();
            let learning = !words.any(|w| w == "nolearning");
            (!name.is_empty()).then_some((name, learning))
        })
        .collect()
}

impl Tunnels for DockerNetns {
    fn list(&self) -> (Vec<Tunnel>, Vec<TunnelError>) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            // No overlay network was ever used here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
            Err(e) => {
                let dir = self.dir.clone();
                return (
                    Vec::new(),
                    vec![TunnelError::ReadDir {
                        dir,
                        reason: e.to_string(),
                    }],
                );
            }
        };
        let mut namespaces: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(is_overlay_namespace))
            .map(|e| e.path())
            .collect();
        namespaces.sort();
        let (mut tunnels, mut errors) = (Vec::new(), Vec::new());
        for netns in namespaces {
            match ip_in(&netns, &["-d", "-o", "link", "show", "type", "vxlan"]) {
                Ok(text) => {
                    tunnels.extend(parse_links(&text).into_iter().map(|(device, learning)| {
                        Tunnel {
                            netns: netns.clone(),
                            device,
                            learning,
                        }
                    }))
                }
                // Gone since it was listed: its network was removed.
                Err(_) if !netns.exists() => {}
                Err(e) => errors.push(e),
            }
        }
        (tunnels, errors)
    }

    fn set_learning(&self, t: &Tunnel, on: bool) -> Result<(), TunnelError> {
        let flag = if on { "learning" } else { "nolearning" };
        ip_in(
            &t.netns,
            &["link", "set", "dev", &t.device, "type", "vxlan", flag],
        )
        .map(|_| ())
    }
}

/// What one pass changed and could not do.
#[derive(Debug, Default)]
pub struct Held {
    pub changed: Vec<Tunnel>,
    pub errors: Vec<TunnelError>,
}

/// Gives every overlay tunnel learning `on` (off while rewrites are in force).
pub fn hold(tunnels: &dyn Tunnels, on: bool) -> Held {
    let (found, mut errors) = tunnels.list();
    let mut changed = Vec::new();
    for t in found.into_iter().filter(|t| t.learning != on) {
        match tunnels.set_learning(&t, on) {
            Ok(()) => changed.push(t),
            Err(e) => errors.push(e),
        }
    }
    Held { changed, errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn only_overlay_namespaces_are_looked_into() {
        assert!(is_overlay_namespace("1-suq1cdppng"));
        assert!(is_overlay_namespace("12-pka6chf1w6"));
        for other in [
            "72e684470eca",
            "ingress_sbox",
            "lb_suq1cdppn",
            "-x",
            "1-",
            "a-b",
        ] {
            assert!(!is_overlay_namespace(other), "{other}");
        }
    }

    #[test]
    fn links_give_the_device_and_whether_it_learns() {
        let text = "10: vxlan0@if10: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master br0 state UNKNOWN mode DEFAULT group default \\    link/ether 7e:cf:c7:fd:ef:5e brd ff:ff:ff:ff:ff:ff link-netnsid 0 promiscuity 1 \\    vxlan id 4097 srcport 0 0 dstport 4789 proxy l2miss l3miss ttl auto ageing 300 udpcsum \\    bridge_slave state forwarding learning on flood on\n\
                    11: vx-001002-abcde: <BROADCAST> mtu 1450 \\    vxlan id 4098 srcport 0 0 dstport 4789 nolearning proxy l2miss\n";
        assert_eq!(
            parse_links(text),
            vec![
                ("vxlan0".to_string(), true),
                ("vx-001002-abcde".to_string(), false)
            ]
        );
        assert!(parse_links("").is_empty());
    }

    struct Recording {
        tunnels: Mutex<Vec<Tunnel>>,
        fail: Option<&'static str>,
    }

    impl Tunnels for Recording {
        fn list(&self) -> (Vec<Tunnel>, Vec<TunnelError>) {
            (self.tunnels.lock().expect("tunnels").clone(), Vec::new())
        }
        fn set_learning(&self, t: &Tunnel, on: bool) -> Result<(), TunnelError> {
            if self.fail == Some(t.device.as_str()) {
                return Err(TunnelError::Command {
                    command: t.device.clone(),
                    reason: "refused".into(),
                });
            }
            for k in self
                .tunnels
                .lock()
                .expect("tunnels")
                .iter_mut()
                .filter(|k| k.device == t.device)
            {
                k.learning = on;
            }
            Ok(())
        }
    }

    fn tunnel(device: &str, learning: bool) -> Tunnel {
        Tunnel {
            netns: PathBuf::from("/run/docker/netns/1-x"),
            device: device.into(),
            learning,
        }
    }

    #[test]
    fn a_pass_changes_only_tunnels_not_yet_as_asked_and_names_failures() {
        let r = Recording {
            tunnels: Mutex::new(vec![
                tunnel("a", true),
                tunnel("b", false),
                tunnel("c", true),
            ]),
            fail: Some("c"),
        };
        let held = hold(&r, false);
        let changed: Vec<&str> = held.changed.iter().map(|t| t.device.as_str()).collect();
        assert_eq!(changed, ["a"]);
        assert_eq!(held.errors.len(), 1);
        assert!(held.errors[0].to_string().contains("refused"));
        let again = hold(&Recording { fail: None, ..r }, true);
        let changed: Vec<&str> = again.changed.iter().map(|t| t.device.as_str()).collect();
        assert_eq!(changed, ["a", "b"]);
    }
}
