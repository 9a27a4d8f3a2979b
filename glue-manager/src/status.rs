//! What the daemon reports about itself (status.json in the state
//! directory), and how `glue-manager status` shows it to a person.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::enrol::NodeState;
use crate::memory::{Memory, Role};

pub const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub version: String,
    /// This manager's node ID and public signing key (base64).
    pub node_id: String,
    pub signing_key: String,
    /// One line: what the manager is doing or waiting for.
    pub state: String,
    pub docker: String,
    /// Registered glue-managers (node IDs) whose keys every agent must trust.
    pub managers: Vec<String>,
    pub nodes: BTreeMap<String, NodeReport>,
    /// The current or last recovery: phase, timings and timeline.
    #[serde(default)]
    pub recovery: crate::progress::RecoveryFile,
    /// The latest errors, newest last: (unix time, message).
    pub errors: VecDeque<(u64, String)>,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub hostname: String,
    pub role: Option<Role>,
    pub addr: String,
    pub state: NodeState,
    /// SSH with this manager's key works.
    pub ssh_ok: bool,
    pub agent_version: String,
    pub agent_key: String,
    /// How many manager keys the agent trusts (from its signed status).
    pub trusted_keys: Option<usize>,
    pub confirmed_at: Option<u64>,
    pub last_error: Option<String>,
    pub next_try_at: Option<u64>,
}

impl StatusReport {
    pub fn push_error(&mut self, now: u64, message: String) {
        if self.errors.back().map(|(_, m)| m) == Some(&message) {
            return;
        }
        self.errors.push_back((now, message));
        while self.errors.len() > MAX_ERRORS {
            self.errors.pop_front();
        }
    }

    /// Every node's agent confirmed and trusting every registered manager.
    pub fn all_confirmed(&self) -> bool {
        !self.nodes.is_empty()
            && self.nodes.values().all(|n| {
                n.state == NodeState::Confirmed
                    && n.trusted_keys.is_some_and(|t| t >= self.managers.len())
            })
    }
}

fn ago(now: u64, t: u64) -> String {
    let d = now.saturating_sub(t);
    match d {
        0..=119 => format!("{d}s ago"),
        120..=7199 => format!("{}m ago", d / 60),
        _ => format!("{}h ago", d / 3600),
    }
}

/// The status for a person: the swarm as remembered, each node, what is
/// pending, the last errors.
pub fn render(
    memory: Option<&Memory>,
    report: Option<&StatusReport>,
    running: bool,
    now: u64,
) -> String {
    let mut s = String::new();
    render_header(&mut s, memory, report, running, now);
    let Some(r) = report else { return s };
    let _ = writeln!(s, "managers trusted by every agent: {}", r.managers.len());
    let pending = render_nodes(&mut s, r, now);
    if pending.is_empty() {
        let _ = writeln!(s, "\npending: nothing");
    } else {
        let _ = writeln!(s, "\npending:");
        for p in pending {
            let _ = writeln!(s, "  {p}");
        }
    }
    render_recovery(&mut s, &r.recovery);
    if !r.errors.is_empty() {
        let _ = writeln!(s, "\nlast errors:");
        for (t, e) in r.errors.iter().rev().take(5) {
            let _ = writeln!(s, "  {}: {e}", ago(now, *t));
        }
    }
    s
}

/// Who reports, and the swarm as remembered.
fn render_header(
    s: &mut String,
    memory: Option<&Memory>,
    report: Option<&StatusReport>,
    running: bool,
    now: u64,
) {
    match report {
        Some(r) => {
            let _ = writeln!(
                s,
                "glue-manager {} (pid {}, {}) — {}",
                r.version,
                r.pid,
                if running { "running" } else { "NOT RUNNING" },
                r.state
            );
            let _ = writeln!(s, "docker: {}", r.docker);
            let _ = writeln!(s, "report: updated {}", ago(now, r.updated_at));
        }
        None => {
            let _ = writeln!(s, "glue-manager has not reported yet (no status.json)");
        }
    }
    match memory {
        Some(m) if !m.cluster_id.is_empty() => {
            let _ = writeln!(
                s,
                "swarm: cluster {} as remembered {} — {} nodes, this manager is {}",
                m.cluster_id,
                ago(now, m.changed_at),
                m.nodes.len(),
                m.node_id
            );
        }
        _ => {
            let _ = writeln!(s, "swarm: nothing remembered yet");
        }
    }
}

/// The table of nodes; a line for each node not confirmed yet.
fn render_nodes(s: &mut String, r: &StatusReport, now: u64) -> Vec<String> {
    let _ = writeln!(
        s,
        "\n{:<14} {:<20} {:<8} {:<16} {:<16} {:<5} {:<7} AGENT",
        "NODE", "HOSTNAME", "ROLE", "ADDRESS", "STATE", "SSH", "TRUSTS"
    );
    let mut pending = Vec::new();
    for (id, n) in &r.nodes {
        let role = match n.role {
            Some(Role::Manager) => "manager",
            Some(Role::Worker) => "worker",
            None => "?",
        };
        let trusts = n
            .trusted_keys
            .map(|t| format!("{t}/{}", r.managers.len()))
            .unwrap_or_else(|| "-".into());
        let agent = if n.agent_key.is_empty() {
            "-".to_string()
        } else {
            format!("{} key {}", n.agent_version, n.agent_key)
        };
        let _ = writeln!(
            s,
            "{:<14} {:<20} {:<8} {:<16} {:<16} {:<5} {:<7} {}",
            crate::docker::short(id),
            n.hostname,
            role,
            n.addr,
            n.state.as_str(),
            if n.ssh_ok { "ok" } else { "-" },
            trusts,
            agent
        );
        if n.state != NodeState::Confirmed {
            pending.push(pending_line(id, n, now));
        }
    }
    pending
}

fn pending_line(id: &str, n: &NodeReport, now: u64) -> String {
    let mut line = format!(
        "{} ({}): {}",
        n.hostname,
        crate::docker::short(id),
        n.state.as_str()
    );
    if let Some(e) = &n.last_error {
        let _ = write!(line, ": {e}");
    }
    if let Some(t) = n.next_try_at {
        let _ = write!(line, " (next try in {}s)", t.saturating_sub(now));
    }
    line
}

/// The current or last recovery: phase, timings, the newest timeline lines.
fn render_recovery(s: &mut String, file: &crate::progress::RecoveryFile) {
    let rec = &file.recovery;
    if rec.started_ms.is_none() {
        return;
    }
    let secs = |t: Option<u64>| {
        t.zip(rec.started_ms)
            .map(|(t, s)| format!("{:.1}s", t.saturating_sub(s) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        s,
        "\nrecovery: phase {:?}, quorum after {}, converged after {}",
        rec.phase,
        secs(rec.quorum_ms),
        secs(rec.converged_ms)
    );
    if !file.waiting.is_empty() {
        let _ = writeln!(s, "  clean-up waits for {}", file.waiting.join(", "));
    }
    for (_, line) in file.timeline.iter().rev().take(8).rev() {
        let _ = writeln!(s, "  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendering_says_what_is_pending_and_why() {
        let mut r = StatusReport {
            pid: 42,
            version: "0.1.0".into(),
            state: "watching 2 nodes".into(),
            docker: "connected, API 1.41".into(),
            managers: vec!["m1".into()],
            updated_at: 100,
            ..StatusReport::default()
        };
        r.nodes.insert(
            "n1aaaaaaaaaaaaaa".into(),
            NodeReport {
                hostname: "lab-w1".into(),
                role: Some(Role::Worker),
                addr: "10.0.0.5".into(),
                state: NodeState::HostKeyChanged,
                last_error: Some("the SSH host key changed".into()),
                next_try_at: Some(400),
                ..NodeReport::default()
            },
        );
        r.push_error(90, "boom".into());
        r.push_error(91, "boom".into());
        assert_eq!(
            r.errors.len(),
            1,
            "the same error twice in a row is kept once"
        );
        assert!(!r.all_confirmed());
        let text = render(None, Some(&r), true, 100);
        assert!(text.contains("lab-w1 (n1aaaaaaaaaa): HOST KEY CHANGED: the SSH host key changed (next try in 300s)"), "{text}");
        assert!(text.contains("last errors:\n  10s ago: boom"), "{text}");
    }
}
