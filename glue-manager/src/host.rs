//! This host as a recovery sees it: its IPv4 addresses and the clock.
//! Behind [`Host`] so that the recovery round can be driven by tests; the
//! real one stays a thin call to getifaddrs and the system clock.

use std::net::Ipv4Addr;

/// Why this host's addresses could not be read. Never read as "no
/// addresses": that would look like a move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading this host's addresses (getifaddrs): {0}")]
pub struct HostError(pub String);

pub trait Host: Send + Sync {
    /// This host's IPv4 addresses a swarm may use, sorted, deduplicated.
    fn addrs(&self) -> Result<Vec<Ipv4Addr>, HostError>;
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// Interfaces whose addresses are never a node's swarm address (Avahi
/// publishes them too on a Docker host).
pub fn ignored_interface(name: &str) -> bool {
    name == "lo"
        || name == "docker0"
        || name == "docker_gwbridge"
        || name.starts_with("veth")
        || name.starts_with("br-")
}

/// The real host.
pub struct System;

impl Host for System {
    fn addrs(&self) -> Result<Vec<Ipv4Addr>, HostError> {
        let ifaces = nix::ifaddrs::getifaddrs().map_err(|e| HostError(e.to_string()))?;
        let mut out: Vec<Ipv4Addr> = ifaces
            .filter(|i| !ignored_interface(&i.interface_name))
            .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
            .filter(|a| !a.is_loopback() && !a.is_link_local())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn now_ms(&self) -> u64 {
        unix_ms()
    }
}

pub use glue_protocol::clock::unix_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_bridge_interfaces_are_ignored() {
        for n in ["docker0", "docker_gwbridge", "veth12ab", "br-0f3c", "lo"] {
            assert!(ignored_interface(n), "{n}");
        }
        for n in ["eth0", "ens3", "enp0s25", "wlan0"] {
            assert!(!ignored_interface(n), "{n}");
        }
    }

    #[test]
    fn the_system_host_reads_its_addresses() {
        let addrs = System.addrs().expect("getifaddrs");
        assert!(addrs.windows(2).all(|w| w[0] < w[1]), "{addrs:?}");
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    }
}
