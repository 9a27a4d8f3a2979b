//! Re-addressing one manager: making Docker record its new raft address
//! while keeping its node ID, labels and availability.
//!
//! Docker has no call for this, and a restart with a new advertise address
//! does not change the address raft recorded. What holds (measured, see
//! docs/recovery.md): demote the manager, restart its dockerd with the new
//! advertise address in `docker-state.json`, promote it again — it rejoins
//! raft at the new address under the same node ID.
//!
//! Carried out by another manager (the coordinator), under the swarm lock,
//! only while every manager is reachable, so the swarm keeps its quorum at
//! every step. Every step can be re-run: a mark in the swarm
//! (`swarm-glue-readdress-<node>`) says a node was demoted for this, so if
//! the coordinator dies half-way, whoever coordinates next finishes the job.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::mpsc;

use crate::docker::{short, DockerError, NodeView};
use crate::enrol::Hands;
use crate::host::unix_ms;
use crate::memory::Role;
use crate::ssh::SshError;

/// The lock every re-addressing takes; one manager at a time, swarm-wide.
pub const LOCK: &str = "readdress";
/// Long enough for one manager (about 20–30 s measured); a coordinator that
/// is killed and restarted releases its own lease at start.
const LEASE: Duration = Duration::from_secs(300);
/// Longest any single wait of a step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(500);
const SSH_TIMEOUT: Duration = Duration::from_secs(20);
/// The restart step: stopping dockerd (it stops its containers with their
/// grace period) and waiting for it to be back in the swarm (4–19 s
/// measured on a busy 7-node lab).
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a coordinator waits for an unreachable manager to become
/// reachable before demoting it anyway: its own restart, to listen at its
/// new address, may be slow (8.6–85.6 s measured).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(120);

/// The dispatcher heartbeat period while managers are re-addressed. Docker
/// declares a node down after three periods without a heartbeat (15 s by
/// default) and replaces its tasks; a re-addressing can silence a node
/// that long (docs/recovery.md, "Why the heartbeat is raised"). 20 s gives
/// 60 s; a node silent at a leader change still has Docker's fixed 30 s.
/// Put back once the recovery is over.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// The timeline line of whoever raised the heartbeat.
pub fn raised_line(was: Duration) -> String {
    format!(
        "dispatcher heartbeat raised from {:.0}s to {:.0}s while managers are re-addressed, so no node is declared down and its tasks replaced",
        was.as_secs_f64(),
        HEARTBEAT.as_secs_f64()
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub hostname: String,
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub how: How,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Demote, restart dockerd with the new addresses, promote.
    Manager,
    /// Restart dockerd at `to` with the old addresses replaced, in place:
    /// it still holds `stale` (gossip and tunnel addresses follow only a
    /// restart).
    Restart { stale: Vec<String> },
}

/// What re-addressing needs besides the target.
pub struct Bearings {
    pub hands: Arc<Hands>,
    /// Every manager's current address (this one included), to check from
    /// each of them what the swarm records.
    pub managers: BTreeMap<String, Ipv4Addr>,
    /// Old → new address of every moved node: the addresses a node's
    /// `docker-state.json` names (its own, the one it joined through).
    pub map: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Timeline lines, as they happen.
    pub say: mpsc::UnboundedSender<String>,
}

#[derive(Debug)]
pub enum StepEnd {
    Done,
    /// Not now, and not an error: another manager holds the lock, or a
    /// manager is unreachable.
    NotNow(String),
}

/// Why a re-addressing step failed; the recovery tries it again.
#[derive(Debug, thiserror::Error)]
pub enum ReaddressError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{0}; no manager is restarted while nodes can be declared down")]
    Heartbeat(DockerError),
    #[error("node {} ({hostname}) is not in the swarm", short(.node))]
    NotInSwarm { node: String, hostname: String },
    #[error("the swarm no longer lists {hostname}")]
    Unlisted { hostname: String },
    #[error("waited {}s for {what}{}", .secs, last_seen(.last))]
    Timeout {
        what: String,
        secs: u64,
        last: String,
    },
    /// Several targets of one step failed, each named.
    #[error("{}", .0.iter().map(|(host, e)| format!("{host}: {e}")).collect::<Vec<_>>().join("; "))]
    Several(Vec<(String, ReaddressError)>),
}

fn last_seen(last: &str) -> String {
    if last.is_empty() {
        String::new()
    } else {
        format!(" (last seen: {last})")
    }
}

/// Why a wait is not over yet: the last one is reported if it times out.
struct NotYet(String);

impl<E: std::fmt::Display> From<E> for NotYet {
    fn from(e: E) -> NotYet {
        NotYet(e.to_string())
    }
}

/// Re-addresses the `targets` (at most `plan::at_once` of them, chosen so
/// the raft members left keep their quorum), side by side, under the one
/// swarm lock.
pub async fn run(bearings: &Bearings, targets: &[Target]) -> Result<StepEnd, ReaddressError> {
    let docker = &bearings.hands.docker;
    // Every node must know the longer period before one goes silent: an
    // agent learns it at its next heartbeat, at most one old period away.
    let now_ms = unix_ms();
    let held = docker
        .hold_heartbeat(HEARTBEAT, now_ms)
        .await
        .map_err(ReaddressError::Heartbeat)?;
    if let Some(was) = held.raised_from {
        say(bearings, raised_line(was));
    }
    // Bounded, whatever another manager's clock said when it raised it.
    let settled = Instant::now()
        + Duration::from_millis(held.settled_ms.saturating_sub(now_ms)).min(HEARTBEAT);
    let lease = match docker
        .lock(LOCK, &bearings.hands.manager_id, LEASE, unix_ms() / 1000)
        .await?
    {
        Ok(lease) => lease,
        Err(held) => return Ok(StepEnd::NotNow(format!("the re-address lock is {held}"))),
    };
    // Demotions and dockerd restarts (the slow part) overlap; promotions
    // take turns. Seen: two managers promoted at once both waited the full
    // 90 s to be seen by every manager (raft changes its membership one
    // change at a time; that this was the cause is likely, not shown).
    let promote = tokio::sync::Mutex::new(());
    let results = join_all(targets.iter().map(|t| {
        let others: Vec<&str> = targets
            .iter()
            .filter(|o| o.node != t.node)
            .map(|o| o.node.as_str())
            .collect();
        let promote = &promote;
        async move {
            match &t.how {
                How::Manager => steps(bearings, t, promote, &others, settled).await,
                How::Restart { stale } => restart_in_place(bearings, t, stale, settled).await,
            }
        }
    }))
    .await;
    if let Err(e) = docker.unlock(lease).await {
        tracing::warn!("{e}");
    }
    let mut errors = Vec::new();
    let mut waits = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        match r {
            Ok(StepEnd::Done) => {}
            Ok(StepEnd::NotNow(why)) => waits.push(why),
            Err(e) => errors.push((t.hostname.clone(), e)),
        }
    }
    if errors.len() == 1 && targets.len() == 1 {
        Err(errors.remove(0).1)
    } else if !errors.is_empty() {
        Err(ReaddressError::Several(errors))
    } else if !waits.is_empty() {
        // Two managers stepped together mostly wait for the same reason.
        waits.sort();
        waits.dedup();
        Ok(StepEnd::NotNow(waits.join("; ")))
    } else {
        Ok(StepEnd::Done)
    }
}

/// `others`: the managers re-addressed alongside, not asked whether they see
/// this one (they may be workers for now); `promote` is held from the
/// promotion until every manager sees the node; no dockerd restarts before
/// `settled`.
async fn steps(
    bearings: &Bearings,
    t: &Target,
    promote: &tokio::sync::Mutex<()>,
    others: &[&str],
    settled: Instant,
) -> Result<StepEnd, ReaddressError> {
    let started = Instant::now();
    let (node, nodes) = match node_to_step(bearings, t).await? {
        Ok(found) => found,
        Err(not_now) => return Ok(not_now),
    };
    let recorded_new = node.manager_addr.as_deref() == Some(raft_addr(t).as_str());
    if node.role == Role::Manager && !recorded_new {
        if let Some(not_now) = demote(bearings, t, &node, &nodes, others).await? {
            return Ok(not_now);
        }
    }
    let mut turn = None;
    if node.role == Role::Worker || !recorded_new {
        restart_as_worker(bearings, t, settled).await?;
        turn = Some(promote.lock().await);
        bearings
            .hands
            .docker
            .set_role(&t.node, Role::Manager)
            .await?;
    }
    let _turn = match turn {
        Some(t) => t,
        None => promote.lock().await,
    };
    seen_by_every_manager(bearings, t, others, started).await
}

fn raft_addr(t: &Target) -> String {
    format!("{}:2377", t.to)
}

/// The swarm's view of node `t` and of every node, if a step may start
/// now: the swarm answers here and every other manager is reachable
/// (quorum is never put at risk); else why not now.
async fn node_to_step(
    bearings: &Bearings,
    t: &Target,
) -> Result<Result<(NodeView, Vec<NodeView>), StepEnd>, ReaddressError> {
    let snap = bearings.hands.docker.snapshot().await?;
    if !snap.control_available {
        return Ok(Err(StepEnd::NotNow(format!(
            "the swarm does not answer here: {}",
            snap.error
        ))));
    }
    let Some(node) = snap.nodes.iter().find(|n| n.id == t.node) else {
        return Err(ReaddressError::NotInSwarm {
            node: t.node.clone(),
            hostname: t.hostname.clone(),
        });
    };
    if let Some(down) = snap
        .nodes
        .iter()
        .find(|n| n.role == Role::Manager && n.id != t.node && n.reachability != "reachable")
    {
        return Ok(Err(StepEnd::NotNow(format!(
            "manager {} is {}; re-addressing waits so the swarm keeps its quorum",
            down.hostname,
            if down.reachability.is_empty() {
                "not reachable"
            } else {
                &down.reachability
            }
        ))));
    }
    Ok(Ok((node.clone(), snap.nodes)))
}

/// Demotes manager `t` (marked first, so whoever coordinates next finishes
/// the job); why not now, if not.
async fn demote(
    bearings: &Bearings,
    t: &Target,
    node: &NodeView,
    nodes: &[NodeView],
    others: &[&str],
) -> Result<Option<StepEnd>, ReaddressError> {
    let name = &t.hostname;
    if node.reachability != "reachable" {
        let waited = Instant::now();
        if became_reachable(bearings, t).await {
            return Ok(Some(StepEnd::NotNow(format!(
                "{name} was unreachable for {:.0}s (e.g. restarting its own dockerd); re-addressing it starts again now that the swarm reaches it",
                waited.elapsed().as_secs_f64()
            ))));
        }
        say(
            bearings,
            format!(
                "re-address {name}: unreachable for {}s; demoting it anyway",
                UNREACHABLE_GRACE.as_secs()
            ),
        );
    }
    if let Some(blind) = managers_blind_to_the_leader(bearings, t, nodes, others).await {
        return Ok(Some(StepEnd::NotNow(format!(
            "not every manager's Docker sees the leader yet: {blind}"
        ))));
    }
    let docker = &bearings.hands.docker;
    docker.mark_readdress(&t.node, t.from, t.to).await?;
    docker.set_role(&t.node, Role::Worker).await?;
    touch(bearings, t).await;
    say(
        bearings,
        format!("re-address {name}: demoted, to rejoin raft at {}", t.to),
    );
    Ok(None)
}

/// The managers (but `t` and `others`) whose own Docker does not answer
/// through the leader, each with what it said; none if all do.
///
/// The leader removes a demoted member from raft only while the members
/// left are a quorum of *active* ones, retrying quietly; `Reachability`
/// may still say reachable for a manager whose raft link is down (then a
/// demotion begins and never ends).
async fn managers_blind_to_the_leader(
    bearings: &Bearings,
    t: &Target,
    nodes: &[NodeView],
    others: &[&str],
) -> Option<String> {
    let asked: Vec<(&String, &Ipv4Addr)> = bearings
        .managers
        .iter()
        .filter(|(m, _)| **m != t.node && !others.contains(&m.as_str()))
        .collect();
    let seen = join_all(asked.iter().map(|(m, addr)| async move {
        ssh(bearings, m, **addr, "docker node ls", LEADER_SEEN).await
    }))
    .await;
    let host = |m: &String| {
        nodes
            .iter()
            .find(|n| n.id == *m)
            .map_or(short(m).to_string(), |n| n.hostname.clone())
    };
    let blind: Vec<String> = asked
        .iter()
        .zip(seen)
        .filter(|(_, r)| r.as_ref().map_or(true, |out| out.trim() != "leader"))
        .map(|((m, _), r)| match r {
            Ok(out) => format!("{} ({})", host(m), out.trim()),
            Err(e) => format!("{} ({e})", host(m)),
        })
        .collect();
    (!blind.is_empty()).then(|| blind.join(", "))
}

/// Waits until `t` has left raft and holds a worker's certificate, then
/// restarts its dockerd with the new addresses (unless it advertises the
/// new one already) and waits until it is ready. Restarted earlier, it
/// starts a manager again and joins raft as a new member while being
/// demoted (measured: the new member's dockerd then panics in raft).
async fn restart_as_worker(
    bearings: &Bearings,
    t: &Target,
    settled: Instant,
) -> Result<(), ReaddressError> {
    let name = &t.hostname;
    let gave_up = Instant::now();
    // When the swarm was first seen to have taken it out of raft while it
    // still held a manager's certificate.
    let out_of_raft = std::sync::OnceLock::new();
    let out_of_raft_at = &out_of_raft;
    wait(
        &format!("{name} to give up its manager role"),
        || async move {
            match gave_up_role(bearings, t).await? {
                Demotion::Done => Ok(true),
                Demotion::OutOfRaft(why) => {
                    if out_of_raft_at.set(gave_up.elapsed()).is_ok() {
                        touch(bearings, t).await;
                    }
                    Err(NotYet(why))
                }
                Demotion::Pending(why) => Err(NotYet(why)),
            }
        },
    )
    .await?;
    let node_addr = ssh(bearings, &t.node, t.to, "docker info", INFO).await?;
    if node_addr.split_whitespace().nth(1) != Some(t.to.to_string().as_str()) {
        let given_up = gave_up.elapsed();
        tokio::time::sleep_until(settled.into()).await;
        let restart = Instant::now();
        let script = restart_script(&bearings.map, &remotes(bearings, &t.node));
        run_restart(
            bearings,
            t,
            "patching docker-state.json and restarting dockerd",
            &script,
        )
        .await?;
        say(
            bearings,
            format!(
                "re-address {name}: manager role given up after {:.1}s{}; dockerd restarted with advertise address {} in {:.1}s",
                given_up.as_secs_f64(),
                out_of_raft.get().map_or(String::new(), |d| format!(
                    " (out of raft after {:.1}s, its certificate still a manager's)",
                    d.as_secs_f64()
                )),
                t.to,
                restart.elapsed().as_secs_f64()
            ),
        );
    }
    let docker = &bearings.hands.docker;
    wait(&format!("{name} to be ready"), || async move {
        let snap = docker.snapshot().await?;
        Ok(snap
            .nodes
            .iter()
            .any(|n| n.id == t.node && n.state == "ready"))
    })
    .await
}

/// Waits until every manager (but `others`) sees `t` at its new raft
/// address, reachable; then the step is done and its mark goes.
async fn seen_by_every_manager(
    bearings: &Bearings,
    t: &Target,
    others: &[&str],
    started: Instant,
) -> Result<StepEnd, ReaddressError> {
    let name = &t.hostname;
    let to_raft = raft_addr(t);
    let check = format!(
        "docker node inspect --format '{{{{if .ManagerStatus}}}}{{{{.ManagerStatus.Addr}}}} {{{{.ManagerStatus.Reachability}}}}{{{{end}}}}' {}",
        t.node
    );
    let want = format!("{to_raft} reachable");
    let promoted = Instant::now();
    let (check, want) = (&check, &want);
    wait(
        &format!("every manager to see {name} at {to_raft}"),
        || async move {
            // Asked of all at once: one SSH round trip per poll, not one
            // per manager.
            let asked = bearings
                .managers
                .iter()
                .filter(|(m, _)| !others.contains(&m.as_str()));
            let seen = join_all(asked.map(|(m, addr)| async move {
                ssh(bearings, m, *addr, "docker node inspect", check)
                    .await
                    .unwrap_or_default()
            }))
            .await;
            Ok(seen.iter().all(|s| s.trim() == want.as_str()))
        },
    )
    .await?;
    bearings.hands.docker.unmark_readdress(&t.node).await?;
    say(
        bearings,
        format!(
            "re-addressed {name} ({}) in {:.1}s: promoted, seen at {to_raft} by all {} managers {:.1}s later",
            short(&t.node),
            started.elapsed().as_secs_f64(),
            bearings.managers
                .keys()
                .filter(|m| !others.contains(&m.as_str()))
                .count(),
            promoted.elapsed().as_secs_f64()
        ),
    );
    Ok(StepEnd::Done)
}

/// Restarts the dockerd of a node that needs no role change (a worker)
/// with its old addresses replaced, and waits until it is back in the
/// swarm with its tasks running again. The node checks first whether its
/// dockerd still holds an old address, so a step asked for on an old
/// reading restarts nothing.
async fn restart_in_place(
    bearings: &Bearings,
    t: &Target,
    stale: &[String],
    settled: Instant,
) -> Result<StepEnd, ReaddressError> {
    let name = &t.hostname;
    let docker = &bearings.hands.docker;
    tokio::time::sleep_until(settled.into()).await;
    let started = Instant::now();
    // Until it goes, no manager takes the rules away (nor ends the
    // recovery) while the node's tasks start again.
    docker.mark_restart(&t.node).await?;
    let script = restart_in_place_script(
        &bearings.map,
        &remotes(bearings, &t.node),
        Stale::AnyAddress,
    );
    let out = run_restart(
        bearings,
        t,
        "restarting dockerd with its new addresses",
        &script,
    )
    .await?;
    if out.trim() == ALREADY_CURRENT {
        docker.unmark_restart(&t.node).await?;
        return Ok(StepEnd::Done);
    }
    wait(&format!("{name} to be ready"), || async move {
        let snap = docker.snapshot().await?;
        Ok(snap
            .nodes
            .iter()
            .any(|n| n.id == t.node && n.state == "ready"))
    })
    .await?;
    docker.unmark_restart(&t.node).await?;
    say(
        bearings,
        format!(
            "restarted {name}'s dockerd at {} in {:.1}s (it held {}); {}",
            t.to,
            started.elapsed().as_secs_f64(),
            stale.join(", "),
            out.lines().last().unwrap_or_default().trim()
        ),
    );
    Ok(StepEnd::Done)
}

/// Restarts this host's own dockerd over SSH to itself (so the container
/// image, which has no systemctl, can too) with `old` replaced by `new` in
/// its state file: a listener pinned to an address the host lost keeps
/// every peer out, and quorum cannot come back before it moves. Nothing
/// else restarts it here: a dockerd merely not listening yet (just booted)
/// is left to the coordinator.
pub async fn restart_self(
    hands: &Hands,
    old: Ipv4Addr,
    new: Ipv4Addr,
    stale: &[String],
    say: &mpsc::UnboundedSender<String>,
) -> Result<StepEnd, ReaddressError> {
    let started = Instant::now();
    let map = BTreeMap::from([(old, new)]);
    let out = hands
        .ssh
        .run(
            &hands.manager_id,
            "127.0.0.1",
            "restarting this host's dockerd with its new address",
            &restart_in_place_script(&map, &[], Stale::PinnedListener),
            b"",
            RESTART_TIMEOUT,
        )
        .await?;
    if out.trim() == ALREADY_CURRENT {
        return Ok(StepEnd::NotNow(format!(
            "nothing listens at {new}:2377, but this host's dockerd pins no listener to an address it lost"
        )));
    }
    let _ = say.send(format!(
        "restarted this host's dockerd with {new} for {old} in {:.1}s ({}), so the others can reach it",
        started.elapsed().as_secs_f64(),
        stale.join(", ")
    ));
    Ok(StepEnd::Done)
}

/// Runs a restart script on `t` over SSH, bounded by [`RESTART_TIMEOUT`].
async fn run_restart(
    bearings: &Bearings,
    t: &Target,
    what: &str,
    script: &str,
) -> Result<String, ReaddressError> {
    bearings
        .hands
        .ssh
        .run(
            &t.node,
            &t.to.to_string(),
            what,
            script,
            b"",
            RESTART_TIMEOUT,
        )
        .await
        .map_err(ReaddressError::from)
}

/// What the in-place restart prints when the node needed none.
const ALREADY_CURRENT: &str = "dockerd already holds its current addresses";

/// Where a restarted node finds the managers: every other manager where it
/// is now, this one (up for sure) first.
fn remotes(bearings: &Bearings, node: &str) -> Vec<(String, Ipv4Addr)> {
    let mut remotes: Vec<(String, Ipv4Addr)> = bearings
        .managers
        .iter()
        .filter(|(id, _)| *id != node)
        .map(|(id, a)| (id.clone(), *a))
        .collect();
    remotes.sort_by_key(|(id, _)| *id != bearings.hands.manager_id);
    remotes
}

/// Prints `leader` when this manager's Docker answers a call that needs the
/// leader (a manager forwards the node list to the leader): it hears the
/// leader, and the leader reaches it.
const LEADER_SEEN: &str =
    "timeout 10 docker node ls -q >/dev/null 2>&1 && echo leader || echo 'no leader seen'";

/// On the node: whether it runs a manager, the address it advertises, and
/// whether its certificate is a worker's yet (count of `swarm-worker` in it).
const INFO: &str = r#"set -e
root=$(docker info --format '{{.DockerRootDir}}')
state=$(docker info --format '{{.Swarm.ControlAvailable}} {{.Swarm.NodeAddr}}')
worker=$(awk '/BEGIN CERT/{f=1;next} /END CERT/{exit} f' "$root/swarm/certificates/swarm-node.crt" | base64 -d 2>/dev/null | grep -ac swarm-worker || true)
echo "$state $worker""#;

/// Where a demoted manager is on its way to being a worker.
enum Demotion {
    /// Out of raft with a worker's certificate: its dockerd may restart.
    Done,
    /// The swarm took it out of raft, but its Docker still holds a
    /// manager's certificate (or still runs a manager).
    OutOfRaft(String),
    /// Still a raft member, as the swarm or its own Docker says.
    Pending(String),
}

/// Whether node `t` has given up its manager role: its own Docker runs no
/// manager and holds a worker's certificate, and the swarm has taken it out
/// of raft. A stray member left beside a worker's certificate counts too:
/// promoted, the node should rejoin under that member (swarmkit's Join
/// gives a node ID it knows its member back; read in its source, not run).
async fn gave_up_role(bearings: &Bearings, t: &Target) -> Result<Demotion, ReaddressError> {
    let out = ssh(bearings, &t.node, t.to, "docker info", INFO).await?;
    let mut f = out.split_whitespace();
    let (control, _, worker) = (f.next(), f.next(), f.next());
    let worker_cert = worker.unwrap_or("0") != "0";
    let snap = bearings.hands.docker.snapshot().await?;
    let Some(n) = snap.nodes.iter().find(|n| n.id == t.node) else {
        return Err(ReaddressError::Unlisted {
            hostname: t.hostname.clone(),
        });
    };
    if control != Some("false") || !worker_cert {
        let docker_says = format!(
            "its Docker: {}, {}",
            if control == Some("false") {
                "no manager"
            } else {
                "a manager"
            },
            if worker_cert {
                "a worker's certificate"
            } else {
                "a manager's certificate"
            }
        );
        return Ok(if n.manager_addr.is_none() {
            Demotion::OutOfRaft(docker_says)
        } else {
            Demotion::Pending(docker_says)
        });
    }
    let leader = snap
        .nodes
        .iter()
        .find(|l| l.leader)
        .map_or("nobody", |l| l.hostname.as_str());
    match n {
        n if n.role == Role::Worker && n.manager_addr.is_none() => Ok(Demotion::Done),
        n if n.role == Role::Worker => {
            say(
                bearings,
                format!(
                    "re-address {}: its Docker is a worker's, but raft keeps a member for it at {} ({}); promoting it, to rejoin under that member",
                    t.hostname,
                    n.manager_addr.as_deref().unwrap_or_default(),
                    if n.reachability.is_empty() { "reachability unknown" } else { &n.reachability }
                ),
            );
            Ok(Demotion::Done)
        }
        // The leader has not taken it out of raft yet.
        n => Ok(Demotion::Pending(format!(
            "its Docker is a worker's, but the swarm ({leader} leads) still has it as a manager at {}",
            n.manager_addr.as_deref().unwrap_or("none"),
        ))),
    }
}

/// Tells the swarm about node `t` once more (best effort): swarmkit's role
/// manager takes a demoted node out of raft on one pass and sets its role
/// to worker on the next, which otherwise waits up to 5 s; the node's
/// request for a worker's certificate made before then gets a manager's,
/// and it asks again only after a random back-off of up to 10 s.
async fn touch(bearings: &Bearings, t: &Target) {
    if let Err(e) = bearings.hands.docker.touch_node(&t.node).await {
        tracing::debug!("re-address {}: {e}", t.hostname);
    }
}

/// Whether an unreachable manager becomes reachable within
/// [`UNREACHABLE_GRACE`]. It may be restarting its own dockerd (the plan's
/// missing listener); demoted during that restart, it joins raft again as
/// a new member before it takes its worker's certificate, and leaves a
/// stray member no one removes (docs/recovery.md).
async fn became_reachable(bearings: &Bearings, t: &Target) -> bool {
    let start = Instant::now();
    while start.elapsed() < UNREACHABLE_GRACE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(snap) = bearings.hands.docker.snapshot().await else {
            continue;
        };
        if snap
            .nodes
            .iter()
            .any(|n| n.id == t.node && n.reachability == "reachable")
        {
            return true;
        }
    }
    false
}

fn say(bearings: &Bearings, line: String) {
    let _ = bearings.say.send(line);
}

async fn ssh(
    bearings: &Bearings,
    node: &str,
    addr: Ipv4Addr,
    what: &str,
    cmd: &str,
) -> Result<String, ReaddressError> {
    bearings
        .hands
        .ssh
        .run(node, &addr.to_string(), what, cmd, b"", SSH_TIMEOUT)
        .await
        .map_err(ReaddressError::from)
}

async fn wait<F, Fut>(what: &str, mut check: F) -> Result<(), ReaddressError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, NotYet>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < STEP_TIMEOUT {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(NotYet(why)) => last = why,
        }
        tokio::time::sleep(POLL).await;
    }
    Err(ReaddressError::Timeout {
        what: what.to_string(),
        secs: STEP_TIMEOUT.as_secs(),
        last,
    })
}

/// Stops dockerd (and its socket, so nothing starts it half-way), writes the
/// new addresses into `docker-state.json` (the old file kept next to it),
/// starts dockerd and waits until it is back in the swarm. Every old address
/// is replaced in one pass, so two nodes that swapped addresses are right.
///
/// The managers the node dials when it starts are set from `remotes` (node
/// ID and address of every other manager now, the first one also as the
/// join address): swarmkit keeps them in `state.json`, and a node restarted
/// after several moves was seen dialling only addresses of earlier networks
/// and never rejoining. A node that joined nobody (the one that ran
/// `swarm init`) keeps its empty join address.
pub fn restart_script(
    map: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    remotes: &[(String, Ipv4Addr)],
) -> String {
    format!("set -eu\n{RESTART_LOCK}{}", restart_body(map, remotes))
}

/// Taken by every restart of dockerd, so the coordinator's and the host's
/// own never overlap: one cancels the other's systemctl job (`exit 1` in a
/// CI run) and a restart under a demotion leaves a stray raft member.
const RESTART_LOCK: &str = r#"mkdir -p /run/lock
exec 9>/run/lock/swarm-glue-dockerd.lock
flock -w 100 9 || { echo "another restart of dockerd held /run/lock/swarm-glue-dockerd.lock for 100s" >&2; exit 5; }
"#;

/// [`restart_script`] without `set -eu` and the lock.
fn restart_body(map: &BTreeMap<Ipv4Addr, Ipv4Addr>, remotes: &[(String, Ipv4Addr)]) -> String {
    let peers: Vec<serde_json::Value> = remotes
        .iter()
        .filter(|(id, _)| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|(id, a)| serde_json::json!({"node_id": id, "addr": format!("{a}:2377")}))
        .collect();
    // Node IDs and addresses only: nothing in it needs quoting for sh.
    let remotes_json = if peers.is_empty() {
        String::new()
    } else {
        serde_json::Value::Array(peers).to_string()
    };
    let mut sed = String::new();
    for (i, old) in map.keys().enumerate() {
        sed.push_str(&format!(
            " -e 's/\"(AdvertiseAddr|LocalAddr|RemoteAddr|ListenAddr|DataPathAddr)\":\"{}(:[0-9]+)?\"/\"\\1\":\"@swarm-glue-{i}@\\2\"/g'",
            old.to_string().replace('.', "\\.")
        ));
    }
    for (i, new) in map.values().enumerate() {
        sed.push_str(&format!(" -e 's/@swarm-glue-{i}@/{new}/g'"));
    }
    if let Some((_, join)) = remotes.first() {
        sed.push_str(&format!(
            " -e 's/\"RemoteAddr\":\"[^\"]+\"/\"RemoteAddr\":\"{join}:2377\"/'"
        ));
    }
    format!(
        r#"root=${{root:-$(timeout 5 docker info --format '{{{{.DockerRootDir}}}}' 2>/dev/null || echo /var/lib/docker)}}
f="$root/swarm/docker-state.json"
[ -f "$f" ] || {{ echo "$f is missing: this node is not in a swarm" >&2; exit 3; }}
# Whatever happens from here (a failed step, the SSH connection dropped),
# dockerd is started again: a node must not be left without it.
trap 'systemctl start docker.socket docker.service' EXIT HUP INT TERM
systemctl stop docker.socket docker.service
cp -p "$f" "$f.swarm-glue-old"
sed -E{sed} "$f.swarm-glue-old" > "$f.swarm-glue-new"
chmod --reference="$f.swarm-glue-old" "$f.swarm-glue-new"
mv "$f.swarm-glue-new" "$f"
r="$root/swarm/state.json"
if [ -n '{remotes_json}' ]; then
  [ ! -f "$r" ] || cp -p "$r" "$r.swarm-glue-old"
  printf '%s' '{remotes_json}' > "$r.swarm-glue-new"
  chmod 600 "$r.swarm-glue-new"
  mv "$r.swarm-glue-new" "$r"
fi
systemctl start docker.socket docker.service
i=0
until [ "$(timeout 5 docker info --format '{{{{.Swarm.LocalNodeState}}}}' 2>/dev/null)" = active ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ echo "dockerd did not rejoin the swarm within 60s" >&2; exit 4; }}
  sleep 0.5
done
"#
    )
}

/// Which addresses a node's dockerd holds make an in-place restart due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Any address of the map the host lost: its gossip address (as
    /// `docker info` says) or one written in its state file.
    AnyAddress,
    /// Only a raft listener pinned (`ListenAddr`) to an address the host
    /// lost: what keeps every peer out before quorum. A manager just booted
    /// has no listener yet and must not be restarted for that.
    PinnedListener,
}

/// [`restart_script`] for a node restarted in place, only if its dockerd
/// still holds an address of `map` that the host no longer has, as `stale`
/// counts them (it prints [`ALREADY_CURRENT`] otherwise); then it waits up
/// to 60 s for as many swarm tasks to run as before the restart. The check
/// runs under the restart lock, so a restart that waited for another one
/// finds the addresses current and restarts nothing.
pub fn restart_in_place_script(
    map: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    remotes: &[(String, Ipv4Addr)],
    stale: Stale,
) -> String {
    let old: Vec<String> = map.keys().map(Ipv4Addr::to_string).collect();
    let (gossip, fields) = match stale {
        Stale::AnyAddress => ("${info#* }", glue_protocol::STATE_FIELDS.join("|")),
        Stale::PinnedListener => ("", "ListenAddr".to_string()),
    };
    format!(
        r#"set -eu
{lock}# One question to dockerd, not three: a manager without quorum answers
# `docker info` only when its 5 s are up.
info=$(timeout 5 docker info --format '{{{{.DockerRootDir}}}} {{{{.Swarm.NodeAddr}}}}' 2>/dev/null || true)
root=${{info%% *}}
[ -n "$root" ] || root=/var/lib/docker
held="{gossip} $(grep -oE '"({fields})":"[0-9.]+' "$root/swarm/docker-state.json" | cut -d'"' -f4 || true)"
stale=
for a in $held; do
  case " {old} " in *" $a "*) ip -4 -o addr show | grep -q "inet $a/" || stale="$stale $a";; esac
done
[ -n "$stale" ] || {{ echo '{ALREADY_CURRENT}'; exit 0; }}
tasks=$(docker ps -q --filter label=com.docker.swarm.task.id | wc -l)
{restart}
i=0
while [ "$(docker ps -q --filter label=com.docker.swarm.task.id | wc -l)" -lt "$tasks" ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ echo "not all of its $tasks tasks run again after 60s"; exit 0; }}
  sleep 0.5
done
echo "its $tasks tasks run again"
"#,
        lock = RESTART_LOCK,
        old = old.join(" "),
        restart = restart_body(map, remotes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    /// The script's sed program, run on a sample state file with real sed.
    fn patch(map: &[(&str, &str)], state: &str) -> String {
        patch_with(map, &[], state)
    }

    fn patch_with(map: &[(&str, &str)], remotes: &[(String, Ipv4Addr)], state: &str) -> String {
        let map: BTreeMap<Ipv4Addr, Ipv4Addr> = map.iter().map(|(a, b)| (ip(a), ip(b))).collect();
        let script = restart_script(&map, remotes);
        let line = script
            .lines()
            .find(|l| l.starts_with("sed -E"))
            .expect("sed line")
            .replace(" \"$f.swarm-glue-old\" > \"$f.swarm-glue-new\"", "");
        sh(&["-c", &format!("printf '%s' '{state}' | {line}")])
    }

    /// Runs `sh` with `args`; it must succeed. Its output.
    fn sh(args: &[&str]) -> String {
        let out = std::process::Command::new("sh")
            .args(args)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn the_state_file_gets_the_new_addresses_in_one_pass() {
        let state = r#"{"LocalAddr":"","RemoteAddr":"10.0.1.1:2377","ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"10.0.1.2","DataPathAddr":"","JoinInProgress":false}"#;
        let out = patch(&[("10.0.1.1", "10.0.2.9"), ("10.0.1.2", "10.0.2.7")], state);
        assert_eq!(
            out,
            r#"{"LocalAddr":"","RemoteAddr":"10.0.2.9:2377","ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"10.0.2.7","DataPathAddr":"","JoinInProgress":false}"#
        );
    }

    #[test]
    fn swapped_addresses_are_not_replaced_twice_and_lookalikes_are_left() {
        let state = r#"{"RemoteAddr":"10.0.1.1:2377","AdvertiseAddr":"10.0.1.2:2377","LocalAddr":"10.0.1.22","ListenAddr":"10.0.1.1:2377"}"#;
        let out = patch(&[("10.0.1.1", "10.0.1.2"), ("10.0.1.2", "10.0.1.1")], state);
        assert_eq!(
            out,
            r#"{"RemoteAddr":"10.0.1.2:2377","AdvertiseAddr":"10.0.1.1:2377","LocalAddr":"10.0.1.22","ListenAddr":"10.0.1.2:2377"}"#
        );
    }

    #[test]
    fn the_node_is_told_where_the_managers_are_now() {
        let remotes = vec![
            ("coordinator1".to_string(), ip("10.0.2.9")),
            ("other2".to_string(), ip("10.0.2.5")),
        ];
        // A join address from networks ago is replaced by the coordinator's.
        let state =
            r#"{"LocalAddr":"","RemoteAddr":"10.0.0.1:2377","AdvertiseAddr":"10.0.1.2:2377"}"#;
        let out = patch_with(&[("10.0.1.2", "10.0.2.7")], &remotes, state);
        assert_eq!(
            out,
            r#"{"LocalAddr":"","RemoteAddr":"10.0.2.9:2377","AdvertiseAddr":"10.0.2.7:2377"}"#
        );
        // The node that ran `swarm init` joined nobody and keeps it so.
        let state = r#"{"LocalAddr":"10.0.1.2","RemoteAddr":"","AdvertiseAddr":"10.0.1.2:2377"}"#;
        let out = patch_with(&[("10.0.1.2", "10.0.2.7")], &remotes, state);
        assert_eq!(
            out,
            r#"{"LocalAddr":"10.0.2.7","RemoteAddr":"","AdvertiseAddr":"10.0.2.7:2377"}"#
        );
        // swarmkit's list of managers, written whole.
        let script = restart_script(&BTreeMap::new(), &remotes);
        let line = script
            .lines()
            .find(|l| l.trim_start().starts_with("printf '%s' '"))
            .expect("printf line");
        let json = line.split('\'').nth(3).expect("quoted json");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(
            v,
            serde_json::json!([
                {"node_id": "coordinator1", "addr": "10.0.2.9:2377"},
                {"node_id": "other2", "addr": "10.0.2.5:2377"}
            ])
        );
        // Nothing that could break out of the quotes gets in.
        let odd = vec![("x'; reboot; '".to_string(), ip("10.0.2.1"))];
        assert!(!restart_script(&BTreeMap::new(), &odd).contains("reboot"));
        // The whole script is valid sh, with dockerd started again on any exit.
        let whole = restart_script(
            &BTreeMap::from([(ip("10.0.1.2"), ip("10.0.2.7"))]),
            &remotes,
        );
        assert!(whole.contains("trap 'systemctl start docker.socket docker.service' EXIT"));
        sh(&["-n", "-c", &whole]);
        // No manager known: the file is left as it is.
        assert!(!restart_script(&BTreeMap::new(), &[]).contains("printf '%s' '["));
    }

    /// Runs the in-place restart with fake `docker`, `ip` and `systemctl`
    /// (real sh, sed and flock) on a node that advertises `node_addr` and
    /// has `host`; what it printed and what systemctl was asked.
    fn run_in_place(
        node_addr: &str,
        host: &str,
        state: &str,
        stale: Stale,
    ) -> (String, String, String) {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sg-restart-{}-{run}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(dir.join("swarm")).expect("dirs");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::write(dir.join("swarm/docker-state.json"), state).expect("state");
        let fake = |name: &str, body: &str| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("fake");
            sh(&["-c", &format!("chmod +x {}", p.display())]);
        };
        fake(
            "docker",
            &format!(
                "case \"$*\" in *DockerRootDir*NodeAddr*) echo {} {node_addr};; *DockerRootDir*) echo {};; *NodeAddr*) echo {node_addr};; *LocalNodeState*) echo active;; esac",
                dir.display(),
                dir.display()
            ),
        );
        fake(
            "ip",
            &format!("echo '2: eth0    inet {host}/24 brd 10.0.2.255 scope global eth0'"),
        );
        fake(
            "systemctl",
            &format!("echo \"$*\" >> {}/systemctl.log", dir.display()),
        );
        let map = BTreeMap::from([
            (ip("10.0.1.4"), ip("10.0.2.4")),
            (ip("10.0.1.1"), ip("10.0.2.1")),
        ]);
        let script = restart_in_place_script(&map, &[("m1".to_string(), ip("10.0.2.1"))], stale);
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PATH", path)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let asked = std::fs::read_to_string(dir.join("systemctl.log")).unwrap_or_default();
        let after = std::fs::read_to_string(dir.join("swarm/docker-state.json")).expect("state");
        let _ = std::fs::remove_dir_all(&dir);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            asked,
            after,
        )
    }

    #[test]
    fn a_node_is_restarted_in_place_only_while_its_dockerd_holds_an_old_address() {
        let state =
            r#"{"RemoteAddr":"10.0.1.1:2377","AdvertiseAddr":"10.0.1.4","DataPathAddr":""}"#;
        // Still gossiping from the address it lost: patched and restarted.
        let (out, asked, after) = run_in_place("10.0.1.4", "10.0.2.4", state, Stale::AnyAddress);
        assert!(
            asked.starts_with("stop docker.socket docker.service\nstart"),
            "{asked}"
        );
        assert_eq!(
            after,
            r#"{"RemoteAddr":"10.0.2.1:2377","AdvertiseAddr":"10.0.2.4","DataPathAddr":""}"#
        );
        assert!(out.contains("its 0 tasks run again"), "{out}");
        // Restarted already (an old reading asked again): nothing touched.
        let fresh = r#"{"RemoteAddr":"10.0.2.1:2377","AdvertiseAddr":"10.0.2.4"}"#;
        let (out, asked, after) = run_in_place("10.0.2.4", "10.0.2.4", fresh, Stale::AnyAddress);
        assert_eq!(out.trim(), ALREADY_CURRENT);
        assert_eq!(asked, "");
        assert_eq!(after, fresh);
        // An old address pinned in the state file alone is enough.
        let pinned = r#"{"ListenAddr":"10.0.1.4:2377","AdvertiseAddr":"10.0.2.4"}"#;
        let (_, asked, after) = run_in_place("10.0.2.4", "10.0.2.4", pinned, Stale::AnyAddress);
        assert!(asked.starts_with("stop"), "{asked}");
        assert!(after.contains(r#""ListenAddr":"10.0.2.4:2377""#), "{after}");
    }

    #[test]
    fn a_host_restarts_its_own_dockerd_only_for_a_listener_pinned_to_a_lost_address() {
        // Booted after the move, gossiping from its old address, listening
        // on every address: the coordinator re-addresses it, not itself.
        let unpinned = r#"{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"10.0.1.4"}"#;
        let (out, asked, after) =
            run_in_place("10.0.1.4", "10.0.2.4", unpinned, Stale::PinnedListener);
        assert_eq!(out.trim(), ALREADY_CURRENT);
        assert_eq!(asked, "");
        assert_eq!(after, unpinned);
        // Its listener bound to the address it lost: patched and restarted.
        let pinned = r#"{"ListenAddr":"10.0.1.4:2377","AdvertiseAddr":"10.0.1.4"}"#;
        let (_, asked, after) = run_in_place("10.0.1.4", "10.0.2.4", pinned, Stale::PinnedListener);
        assert!(asked.starts_with("stop"), "{asked}");
        assert_eq!(
            after,
            r#"{"ListenAddr":"10.0.2.4:2377","AdvertiseAddr":"10.0.2.4"}"#
        );
    }

    #[test]
    fn a_restart_of_dockerd_waits_for_one_under_way() {
        let log = std::env::temp_dir().join(format!("sg-lock-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let holder = std::process::Command::new("flock")
            .args(["/run/lock/swarm-glue-dockerd.lock", "sh", "-c"])
            .arg(format!("sleep 1; echo released > {}", log.display()))
            .spawn()
            .expect("flock");
        std::thread::sleep(Duration::from_millis(300));
        let state = r#"{"AdvertiseAddr":"10.0.1.4"}"#;
        let (_, asked, _) = run_in_place("10.0.1.4", "10.0.2.4", state, Stale::AnyAddress);
        let released = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let _ = { holder }.wait();
        // The restart ran, and only once the other one had let go.
        assert!(asked.starts_with("stop"), "{asked}");
        assert_eq!(released.trim(), "released");
    }
}
