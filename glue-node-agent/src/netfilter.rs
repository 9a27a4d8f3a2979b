//! Puts a rewrite set in force in the kernel: reads what is there with the
//! `iptables` crate, and writes the batch built by [`crate::rules`] with one
//! `iptables-restore --noflush` (one transaction).

use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::protocol::Rewrite;
use crate::rules::{self, NatState, Ports};

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("reading the nat table failed: {0}")]
    Read(String),
    #[error("iptables-restore refused the batch: {reason}\nbatch was:\n{batch}")]
    Restore { reason: String, batch: String },
}

/// The kernel's nat table, as far as swarm-glue touches it.
pub trait Netfilter: Send + Sync {
    /// `iptables -t nat -S`.
    fn nat_rules(&self) -> Result<String, NetfilterError>;
    /// Applies an `iptables-restore --noflush` batch atomically.
    fn restore(&self, batch: &str) -> Result<(), NetfilterError>;
}

/// The real one: the `iptables` crate to read, `iptables-restore` to write.
pub struct Iptables {
    ipt: Arc<iptables::IPTables>,
}

impl Iptables {
    pub fn new() -> Result<Self, NetfilterError> {
        let ipt =
            iptables::new(false).map_err(|e| NetfilterError::Read(format!("iptables: {e}")))?;
        Ok(Iptables { ipt: Arc::new(ipt) })
    }
}

impl Netfilter for Iptables {
    /// The crate runs `iptables` with no time limit (and `--wait` for the
    /// xtables lock), so the read runs on its own thread and is given up
    /// after [`crate::bounded::LIMIT`]: a held lock must not hold every
    /// later set back. The thread and its `iptables` are left to finish.
    fn nat_rules(&self) -> Result<String, NetfilterError> {
        let ipt = Arc::clone(&self.ipt);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("iptables-read".into())
            .spawn(move || {
                let listed = ipt
                    .list_table(rules::TABLE)
                    .map(|lines| lines.join("\n"))
                    .map_err(|e| e.to_string());
                let _ = tx.send(listed);
            })
            .map_err(|e| NetfilterError::Read(format!("could not start a thread: {e}")))?;
        match rx.recv_timeout(crate::bounded::LIMIT) {
            Ok(listed) => listed.map_err(NetfilterError::Read),
            Err(_) => Err(NetfilterError::Read(format!(
                "`iptables -t {} -S` did not finish within {}s (is the xtables lock held?)",
                rules::TABLE,
                crate::bounded::LIMIT.as_secs()
            ))),
        }
    }

    fn restore(&self, batch: &str) -> Result<(), NetfilterError> {
        let fail = |reason: String| NetfilterError::Restore {
            reason,
            batch: batch.to_string(),
        };
        let mut cmd = Command::new("iptables-restore");
        cmd.args(["--noflush", "--wait"]);
        let out = crate::bounded::output(cmd, Some(batch.as_bytes()), crate::bounded::LIMIT)
            .map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(fail(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// Records batches instead of touching the kernel (for tests without root).
#[derive(Debug, Default)]
pub struct Recording {
    pub state: Mutex<String>,
    pub batches: Mutex<Vec<String>>,
}

impl Netfilter for Recording {
    fn nat_rules(&self) -> Result<String, NetfilterError> {
        let state = self.state.lock();
        Ok(state
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    fn restore(&self, batch: &str) -> Result<(), NetfilterError> {
        if let Ok(mut b) = self.batches.lock() {
            b.push(batch.to_string());
        }
        Ok(())
    }
}

/// What [`apply`] found in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The kernel held the set already.
    AlreadyInForce,
    /// The kernel held the set in force before (or nothing was known of it).
    Changed,
    /// The kernel held neither the set nor the one in force before: something
    /// else altered the rules (a firewall reload, a reboot) and they were put back.
    Repaired,
}

/// Makes the kernel hold exactly `rewrites`. `before` is the set last put in
/// force, if known; it tells a change from a repair.
pub fn apply(
    nf: &dyn Netfilter,
    rewrites: &[Rewrite],
    before: Option<&[Rewrite]>,
    ports: &Ports,
) -> Result<Applied, NetfilterError> {
    let state = NatState::parse(&nf.nat_rules()?);
    let Some(batch) = rules::batch(&state, rewrites, ports) else {
        return Ok(Applied::AlreadyInForce);
    };
    nf.restore(&batch)?;
    Ok(match before {
        Some(before) if !state.matches(before, ports) => Applied::Repaired,
        _ => Applied::Changed,
    })
}

/// True when the kernel holds exactly `rewrites`.
pub fn in_force(
    nf: &dyn Netfilter,
    rewrites: &[Rewrite],
    ports: &Ports,
) -> Result<bool, NetfilterError> {
    Ok(NatState::parse(&nf.nat_rules()?).matches(rewrites, ports))
}
