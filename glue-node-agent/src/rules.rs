//! The netfilter rules that carry a rewrite set, built as plain data.
//!
//! Two chains in the `nat` table take turns: the new set is written into the
//! chain not in use, `OUTPUT` jumps to it first, and only then the jump to the
//! old chain goes. All of it is one `iptables-restore --noflush` batch, which
//! the kernel applies as one transaction, so there is never a moment where no
//! set (or half a set) is in force. Rules only touch the swarm's own ports.

use std::fmt::Write as _;

use crate::protocol::Rewrite;

pub const TABLE: &str = "nat";
pub const HOOK: &str = "OUTPUT";
pub const CHAINS: [&str; 2] = ["SWARM-GLUE-A", "SWARM-GLUE-B"];
/// Every rule and jump of swarm-glue carries this comment.
pub const COMMENT: &str = "swarm-glue";

/// The ports a swarm talks on (Docker's defaults), redirected and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            // 2377: cluster management and raft; 7946: gossip.
            tcp: vec![2377, 7946],
            // 7946: gossip; 4789: VXLAN data path of overlay networks.
            udp: vec![7946, 4789],
        }
    }
}

/// The rules of one chain for `rewrites`, in the exact form `iptables -S`
/// prints them, so what is in the kernel can be compared line by line.
pub fn chain_rules(chain: &str, rewrites: &[Rewrite], ports: &Ports) -> Vec<String> {
    let mut sorted = rewrites.to_vec();
    sorted.sort();
    let mut out = Vec::new();
    for r in &sorted {
        for (proto, list) in [("tcp", &ports.tcp), ("udp", &ports.udp)] {
            if list.is_empty() {
                continue;
            }
            let ports: Vec<String> = list.iter().map(u16::to_string).collect();
            out.push(format!(
                "-A {chain} -d {}/32 -p {proto} -m multiport --dports {} -m comment --comment {COMMENT} -j DNAT --to-destination {}",
                r.from,
                ports.join(","),
                r.to
            ));
        }
    }
    out
}

/// The jump from `OUTPUT` to a chain, as `iptables -S` prints it.
pub fn jump_rule(chain: &str) -> String {
    format!("-A {HOOK} -m comment --comment {COMMENT} -j {chain}")
}

/// What swarm-glue has in the nat table now, read from `iptables -t nat -S`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Our chains that exist, with their rules.
    pub chains: Vec<(String, Vec<String>)>,
    /// Our jumps in OUTPUT, in order: the chain each one targets.
    pub jumps: Vec<String>,
}

impl NatState {
    pub fn parse(iptables_s: &str) -> NatState {
        let mut state = NatState::default();
        for line in iptables_s.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["-N", chain] if CHAINS.contains(chain) => {
                    state.chains.push(((*chain).to_string(), Vec::new()));
                }
                ["-A", chain, ..] if CHAINS.contains(chain) => {
                    if let Some((_, rules)) = state.chains.iter_mut().find(|(c, _)| c == chain) {
                        rules.push(line.trim().to_string());
                    }
                }
                ["-A", hook, .., "-j", target] if *hook == HOOK && CHAINS.contains(target) => {
                    state.jumps.push((*target).to_string());
                }
                _ => {}
            }
        }
        state
    }

    fn rules_of(&self, chain: &str) -> Option<&[String]> {
        self.chains
            .iter()
            .find(|(c, _)| c == chain)
            .map(|(_, r)| r.as_slice())
    }

    /// The chain in force: the first jump's target.
    pub fn active(&self) -> Option<&str> {
        self.jumps.first().map(String::as_str)
    }

    /// True when exactly `rewrites` is in force and nothing else of ours is
    /// left (an empty set means: no chain, no jump).
    pub fn matches(&self, rewrites: &[Rewrite], ports: &Ports) -> bool {
        if rewrites.is_empty() {
            return self.chains.is_empty() && self.jumps.is_empty();
        }
        let Some(active) = self.active() else {
            return false;
        };
        self.jumps.len() == 1
            && self.chains.len() == 1
            && self.rules_of(active) == Some(chain_rules(active, rewrites, ports).as_slice())
    }
}

/// The `iptables-restore --noflush` batch that puts `rewrites` in force,
/// starting from `state`; None when it is already in force.
pub fn batch(state: &NatState, rewrites: &[Rewrite], ports: &Ports) -> Option<String> {
    if state.matches(rewrites, ports) {
        return None;
    }
    let mut b = String::new();
    let _ = writeln!(b, "*{TABLE}");
    if rewrites.is_empty() {
        for chain in &state.jumps {
            let _ = writeln!(b, "{}", jump_rule(chain).replacen("-A", "-D", 1));
        }
        for (chain, _) in &state.chains {
            let _ = writeln!(b, "-F {chain}");
            let _ = writeln!(b, "-X {chain}");
        }
    } else {
        let next = match state.active() {
            Some(a) if a == CHAINS[0] => CHAINS[1],
            _ => CHAINS[0],
        };
        if state.rules_of(next).is_some() {
            let _ = writeln!(b, "-F {next}");
        } else {
            let _ = writeln!(b, ":{next} - [0:0]");
        }
        for rule in chain_rules(next, rewrites, ports) {
            let _ = writeln!(b, "{rule}");
        }
        // The new jump goes first, then the old ones go: the first matching
        // DNAT wins, so the new set is in force from the same commit on.
        let _ = writeln!(b, "-I {HOOK} 1 -m comment --comment {COMMENT} -j {next}");
        for chain in &state.jumps {
            let _ = writeln!(b, "{}", jump_rule(chain).replacen("-A", "-D", 1));
        }
        for (chain, _) in state.chains.iter().filter(|(c, _)| c != next) {
            let _ = writeln!(b, "-F {chain}");
            let _ = writeln!(b, "-X {chain}");
        }
    }
    let _ = writeln!(b, "COMMIT");
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn rw(from: u8, to: u8) -> Rewrite {
        Rewrite {
            from: Ipv4Addr::new(10, 1, 0, from),
            to: Ipv4Addr::new(10, 2, 0, to),
        }
    }

    const SAVED_A: &str = "-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N DOCKER
-N SWARM-GLUE-A
-A OUTPUT -m comment --comment swarm-glue -j SWARM-GLUE-A
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A SWARM-GLUE-A -d 10.1.0.11/32 -p tcp -m multiport --dports 2377,7946 -m comment --comment swarm-glue -j DNAT --to-destination 10.2.0.87
-A SWARM-GLUE-A -d 10.1.0.11/32 -p udp -m multiport --dports 7946,4789 -m comment --comment swarm-glue -j DNAT --to-destination 10.2.0.87
";

    #[test]
    fn rules_only_touch_the_swarm_ports_and_are_sorted() {
        let rules = chain_rules("SWARM-GLUE-A", &[rw(12, 5), rw(11, 87)], &Ports::default());
        assert_eq!(rules.len(), 4);
        assert!(rules[0].contains("-d 10.1.0.11/32 -p tcp -m multiport --dports 2377,7946"));
        assert!(rules[1].contains("-p udp -m multiport --dports 7946,4789"));
        assert!(rules[2].contains("-d 10.1.0.12/32"));
        assert!(rules
            .iter()
            .all(|r| r.contains("--comment swarm-glue -j DNAT")));
    }

    #[test]
    fn parses_our_chains_and_jumps_and_ignores_docker_rules() {
        let state = NatState::parse(SAVED_A);
        assert_eq!(state.jumps, vec!["SWARM-GLUE-A"]);
        assert_eq!(state.chains.len(), 1);
        assert_eq!(state.chains[0].1.len(), 2);
        assert!(state.matches(&[rw(11, 87)], &Ports::default()));
        assert!(!state.matches(&[rw(11, 88)], &Ports::default()));
        assert!(!state.matches(&[], &Ports::default()));
    }

    #[test]
    fn the_same_set_again_needs_no_batch() {
        let state = NatState::parse(SAVED_A);
        assert_eq!(batch(&state, &[rw(11, 87)], &Ports::default()), None);
        assert_eq!(batch(&NatState::default(), &[], &Ports::default()), None);
    }

    #[test]
    fn a_new_set_fills_the_other_chain_and_swaps_the_jump_in_one_commit() {
        let state = NatState::parse(SAVED_A);
        let b = batch(&state, &[rw(11, 90)], &Ports::default()).expect("a change");
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":SWARM-GLUE-B - [0:0]");
        let insert = lines
            .iter()
            .position(|l| l.starts_with("-I OUTPUT 1"))
            .expect("jump");
        let delete = lines
            .iter()
            .position(|l| *l == "-D OUTPUT -m comment --comment swarm-glue -j SWARM-GLUE-A")
            .expect("old jump removed");
        assert!(
            insert < delete,
            "the new jump must be in before the old one goes:\n{b}"
        );
        assert!(lines.contains(&"-X SWARM-GLUE-A"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn the_empty_set_removes_every_chain_and_jump() {
        let state = NatState::parse(SAVED_A);
        let b = batch(&state, &[], &Ports::default()).expect("a change");
        assert_eq!(
            b,
            "*nat\n-D OUTPUT -m comment --comment swarm-glue -j SWARM-GLUE-A\n-F SWARM-GLUE-A\n-X SWARM-GLUE-A\nCOMMIT\n"
        );
    }

    #[test]
    fn a_half_applied_state_is_repaired() {
        // A chain with rules but no jump (something flushed OUTPUT).
        let state = NatState::parse(
            "-N SWARM-GLUE-A\n-A SWARM-GLUE-A -d 10.1.0.11/32 -p tcp -m multiport --dports 2377,7946 -m comment --comment swarm-glue -j DNAT --to-destination 10.2.0.87\n",
        );
        assert!(!state.matches(&[rw(11, 87)], &Ports::default()));
        let b = batch(&state, &[rw(11, 87)], &Ports::default()).expect("repair");
        assert!(
            b.contains("-I OUTPUT 1 -m comment --comment swarm-glue -j SWARM-GLUE-A"),
            "{b}"
        );
        assert!(b.contains("-F SWARM-GLUE-A\n"), "{b}");
    }
}
