//! IPv4 subnets: parsing, overlap checks and the host addresses the lab hands out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR form, always stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// The first host numbers of every lab subnet are left to the gateway and
/// to addresses a person may want to add by hand.
const FIRST_NODE_HOST: u32 = 10;

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 30 {
            return Err(format!("prefix /{prefix} leaves no room for hosts"));
        }
        let mask = Self::mask_of(prefix);
        Ok(Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    fn last(&self) -> u32 {
        self.first() | !Self::mask_of(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.first() && ip <= self.last()
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The gateway Docker gives a network when none is asked for: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }

    /// Addresses the lab may give to nodes: past the reserved low hosts, before broadcast.
    pub fn node_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let start = self.first() + FIRST_NODE_HOST.min(self.last() - self.first() - 1);
        (start..self.last()).map(Ipv4Addr::from)
    }

    pub fn is_node_address(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.contains(ip) && n != self.first() && n != self.last() && ip != self.gateway()
    }

    /// The `index`-th subnet of size `/prefix` inside this one.
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 30 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let size = 1u32 << (32 - u32::from(prefix));
        Ipv4Net::new(Ipv4Addr::from(self.first() + index * size), prefix).ok()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not in CIDR form (like 10.231.1.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` in `{s}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{prefix}` in `{s}` is not a prefix length 0-32"))?;
        let net = Ipv4Net::new(addr, prefix)?;
        if net.addr != addr {
            return Err(format!("`{s}` has host bits set; did you mean {net}?"));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid test subnet")
    }

    #[test]
    fn parses_and_prints_cidr() {
        assert_eq!(net("10.231.4.0/24").to_string(), "10.231.4.0/24");
        assert!("10.231.4.1/24".parse::<Ipv4Net>().is_err());
        assert!("10.231.4.0".parse::<Ipv4Net>().is_err());
        assert!("10.231.4.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.231.4.0/31".parse::<Ipv4Net>().is_err());
        assert!("ten/24".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let a = net("10.231.0.0/16");
        let b = net("10.231.7.0/24");
        let c = net("10.232.0.0/24");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!(b.overlaps(&b));
    }

    #[test]
    fn node_addresses_skip_gateway_reserved_and_broadcast() {
        let n = net("10.231.4.0/24");
        let all: Vec<_> = n.node_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 231, 4, 10)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 231, 4, 254)));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 231, 4, 1));
        assert!(!n.is_node_address(Ipv4Addr::new(10, 231, 4, 255)));
        assert!(!n.is_node_address(Ipv4Addr::new(10, 231, 4, 1)));
        assert!(n.is_node_address(Ipv4Addr::new(10, 231, 4, 77)));
    }

    #[test]
    fn subnets_are_carved_in_order() {
        let pool = net("10.231.0.0/16");
        assert_eq!(pool.subnet(24, 3), Some(net("10.231.3.0/24")));
        assert_eq!(pool.subnet(24, 256), None);
        assert_eq!(pool.subnet(8, 0), None);
    }
}
