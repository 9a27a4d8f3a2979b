//! Watching swarm-glue bring a moved lab swarm back, from the outside: the
//! demo, the recovery scenarios and the recovery benchmark share this.
//!
//! Everything here is judged by what the real daemons say: a raft write for
//! "the swarm has a leader again", `docker node inspect` on every manager for
//! the recorded addresses, `iptables-save` on every node for rewrites left,
//! and for the data plane, Docker's DNS and HTTP between the probe service's
//! tasks over the overlay network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::availability;
use crate::error::{LabError, Result};
use crate::glue::{self, Artefacts, Install};
use crate::lab::Lab;
use crate::swarm::{self, Fingerprint};
use crate::{par_map, wait_for};

/// Names of swarm objects that swarm-glue (or this probe) creates and removes
/// on its own; not part of the user's swarm.
const TRANSIENT: [&str; 6] = [
    "swarm-glue-lock-",
    "swarm-glue-quorum-",
    "swarm-glue-readdress-",
    "swarm-glue-restart-",
    "swarm-glue-heartbeat",
    "lab-quorum-",
];

/// Installs and starts glue-manager on every manager (lab settings plus
/// `extra` config), then waits until every manager reports every node's
/// agent confirmed.
pub fn install_and_confirm(
    lab: &Lab,
    how: Install,
    extra: &str,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let art = Artefacts::locate()?;
    let config = glue::lab_manager_config(extra);
    let managers = lab.manager_names();
    par_map(&managers, |m| {
        glue::install_manager(lab, m, &art, how, &config)
    })?;
    par_map(&managers, |m| glue::start_manager(lab, m))?;
    let nodes = lab.nodes().len();
    wait_for(
        "every manager to confirm every node's agent",
        timeout,
        Duration::from_secs(2),
        || {
            let ok = par_map(&managers, |m| {
                Ok(glue::manager_report(lab, m)?
                    .map(|r| confirmed(&r) == nodes)
                    .unwrap_or(false))
            })?;
            Ok(ok.iter().all(|x| *x).then_some(()))
        },
    )?;
    Ok(started.elapsed())
}

fn confirmed(report: &serde_json::Value) -> usize {
    report["nodes"]
        .as_object()
        .map(|n| {
            n.values()
                .filter(|v| v["state"].as_str() == Some("confirmed"))
                .count()
        })
        .unwrap_or(0)
}

/// When a write probe through any manager was committed, if one was (a
/// leader that lost its followers still answers reads, so only a write says
/// the swarm has a leader): the time the secret's creation returned, read
/// from the clock inside the node (containers share the kernel's), so the
/// figure does not carry the probe's clean-up or its way back to the lab.
/// The probe counts only if its secret could also be removed.
pub fn committed_write(lab: &Lab, managers: &[String]) -> Option<SystemTime> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let answers = par_map(managers, |m| {
        let name = format!("lab-quorum-{m}-{stamp}");
        Ok(lab
            .sh(
                m,
                &format!(
                    "echo x | timeout 3 docker secret create {name} - >/dev/null && date +%s%3N && timeout 5 docker secret rm {name} >/dev/null"
                ),
            )
            .ok()
            .and_then(|out| out.trim().parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    })
    .unwrap_or_default();
    answers.into_iter().flatten().min()
}

/// How long after `moved` (a moment in the past) a write probe was
/// committed, if one was now.
pub fn quorum_after(lab: &Lab, managers: &[String], moved: SystemTime) -> Option<Duration> {
    committed_write(lab, managers).map(|at| at.duration_since(moved).unwrap_or_default())
}

/// What still keeps the recovery from being complete, as seen from every
/// running manager and node; empty when it is complete.
pub fn not_converged(lab: &Lab, managers: &[String], nodes: &[String]) -> Result<Vec<String>> {
    let addrs = lab.addresses()?;
    let mut out = Vec::new();
    let views = par_map(managers, |m| Ok((m.clone(), swarm::nodes(lab, m))))?;
    for (m, view) in views {
        let view = match view {
            Ok(v) => v,
            Err(e) => {
                out.push(format!("{m} cannot list the nodes: {e}"));
                continue;
            }
        };
        for n in &view {
            if n.state != "ready" {
                out.push(format!("{m} sees {} {}", n.hostname, n.state));
            }
            let Some(manager_addr) = &n.manager_addr else {
                continue;
            };
            let want = addrs
                .get(&n.hostname)
                .copied()
                .flatten()
                .map(|a| format!("{a}:2377"));
            if want.as_deref() != Some(manager_addr.as_str()) {
                out.push(format!(
                    "{m} records {} at {manager_addr}, it is at {}",
                    n.hostname,
                    want.unwrap_or_else(|| "?".into())
                ));
            }
            if n.reachability.as_deref() == Some("unreachable") {
                out.push(format!("{m} sees manager {} unreachable", n.hostname));
            }
        }
    }
    for (n, left) in nodes.iter().zip(par_map(nodes, |n| rewrites_on(lab, n))?) {
        if left > 0 {
            out.push(format!("{n} has {left} rewrite rules"));
        }
    }
    for (m, phase) in managers.iter().zip(par_map(managers, |m| phase(lab, m))?) {
        if phase != "idle" {
            out.push(format!("glue-manager on {m} is in phase {phase}"));
        }
    }
    Ok(out)
}

/// Rules of swarm-glue in force on `node`.
pub fn rewrites_on(lab: &Lab, node: &str) -> Result<usize> {
    let out = lab.sh(
        node,
        // iptables-save puts the comment before the target.
        "iptables-save -t nat | grep -- '-j DNAT' | grep -c -- 'swarm-glue' || true",
    )?;
    out.trim()
        .parse()
        .map_err(|_| LabError::Invalid(format!("{node}'s rules: cannot count {out:?}")))
}

/// The recovery phase glue-manager on `node` reports.
pub fn phase(lab: &Lab, node: &str) -> Result<String> {
    Ok(glue::manager_report(lab, node)?
        .and_then(|r| {
            r["recovery"]["recovery"]["phase"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into()))
}

/// The recovery's timeline lines from every manager: (unix ms, manager, line).
pub fn timelines(lab: &Lab, managers: &[String]) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for m in managers {
        let Ok(Some(r)) = glue::manager_report(lab, m) else {
            continue;
        };
        for e in r["recovery"]["timeline"].as_array().into_iter().flatten() {
            if let (Some(t), Some(line)) = (e[0].as_u64(), e[1].as_str()) {
                out.push((t, m.clone(), line.to_string()));
            }
        }
    }
    out.sort();
    out
}

/// What each manager's dockerd logged in the last 15 minutes about nodes it
/// declared down or disconnected (what makes the swarm replace a node's
/// tasks): for a failed loss check.
pub fn nodes_down(lab: &Lab, managers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in managers {
        let lines = lab
            .sh(
                m,
                "journalctl -u docker --since -15min --no-pager -o short-precise \
                 | grep -E 'heartbeat expiration|heartbeat failure|marking node|node is down' || true",
            )
            .unwrap_or_else(|e| format!("cannot read: {e}"));
        out.extend(lines.lines().map(|l| format!("{m}: {l}")));
    }
    out
}

/// Keeps the last 20 minutes of every node's whole journal (glue-manager,
/// its agent, dockerd and the rest) under
/// `/tmp/swarm-glue-lab-logs/<lab>/<step>/`, for a failed run whose lab is
/// torn down next; returns that directory (or why it could not be written).
pub fn save_logs(lab: &Lab, step: &str) -> String {
    let dir = std::path::Path::new("/tmp/swarm-glue-lab-logs")
        .join(lab.name())
        .join(step);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return format!("{} not written: {e}", dir.display());
    }
    for n in lab.nodes() {
        let text = lab
            .sh(
                &n.name,
                // The whole journal: matches on different fields would AND.
                "journalctl --since -20min --no-pager -o short-precise",
            )
            .unwrap_or_else(|e| format!("cannot read: {e}"));
        if let Err(e) = std::fs::write(dir.join(format!("{}.log", n.name)), text) {
            return format!("{} not written: {e}", dir.display());
        }
    }
    dir.display().to_string()
}

/// Each manager's view of raft (its managers, their addresses and
/// reachability) and what its dockerd logged in the last 15 minutes about
/// demotions and raft membership (the refusals are logged at debug level:
/// `SG_LAB_DOCKERD_DEBUG=1` turns it on): for a run that did not converge.
pub fn raft_views(lab: &Lab, managers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in managers {
        let lines = lab
            .sh(
                m,
                "docker node ls --format '{{.Hostname}} {{.ManagerStatus}}' 2>&1; \
                 docker node ls -q 2>/dev/null | xargs -r docker node inspect --format \
                 '{{.Description.Hostname}} role={{.Spec.Role}} {{if .ManagerStatus}}{{.ManagerStatus.Addr}} {{.ManagerStatus.Reachability}}{{end}}' 2>&1; \
                 journalctl -u docker --since -15min --no-pager -o short-precise \
                 | grep -iE 'demot|remov|transferring leadership|raft member|lost leadership|became leader' \
                 | tail -n 40 || true",
            )
            .unwrap_or_else(|e| format!("cannot read: {e}"));
        out.extend(lines.lines().map(|l| format!("{m}: {l}")));
    }
    out
}

/// Every node's own addresses, the overlay network's peers as its dockerd
/// lists them, and the tunnel endpoints its kernel holds (FDB and
/// neighbours in the network's namespace): for a data plane not whole.
pub fn overlay_views(lab: &Lab) -> Vec<String> {
    let script = format!(
        "ip -4 -o addr show scope global | awk '{{print \"addr\", $4}}'; \
         id=$(docker network inspect -f '{{{{.ID}}}}' {net} 2>&1 | cut -c1-10); \
         echo peers $(docker network inspect -v -f '{{{{range .Peers}}}}{{{{.Name}}}}={{{{.IP}}}} {{{{end}}}}' {net} 2>&1); \
         ns=/var/run/docker/netns/1-$id; \
         nsenter --net=$ns bridge fdb show 2>&1 | grep -E 'dst|self' | sed 's/^/fdb /'; \
         nsenter --net=$ns ip neigh show 2>&1 | sed 's/^/neigh /'",
        net = swarm::NETWORK
    );
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let seen = par_map(&names, |n| Ok(lab.sh(n, &script))).unwrap_or_default();
    let mut out = Vec::new();
    for (n, s) in names.iter().zip(seen) {
        let text = s.unwrap_or_else(|e| format!("cannot read: {e}"));
        out.extend(text.lines().map(|l| format!("{n}: {l}")));
    }
    out
}

/// Every service's task history (node, desired and current state, error),
/// as the first manager that answers lists it: for a task stopped twice.
pub fn task_histories(lab: &Lab) -> Vec<String> {
    for m in lab.managers() {
        if let Ok(text) = lab.sh(
            &m.name,
            "for s in $(docker service ls -q); do docker service ps --no-trunc \
             --format \"$s {{.Name}} {{.Node}} {{.DesiredState}} | {{.CurrentState}} | {{.Error}}\" $s; done",
        ) {
            return text.lines().map(str::to_string).collect();
        }
    }
    vec!["no manager answered".into()]
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the watch of a moved swarm found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub quorum: Option<Duration>,
    pub converged: Option<Duration>,
    /// Why it had not converged when the watch ended.
    pub pending: Vec<String>,
    /// When the move began, Unix seconds (rounded down).
    pub moved_unix_s: u64,
    /// The same, Unix ms.
    pub moved_unix_ms: u64,
    /// What the availability probe saw, when one ran through the watch
    /// ([`Run::move_only`]).
    pub app: Option<availability::Figures>,
}

/// Polls the moved swarm until it has converged or `timeout` passed since
/// `moved_at`; `say` is told when quorum returns and when it converged.
pub fn watch(
    lab: &Lab,
    managers: &[String],
    nodes: &[String],
    moved_at: Instant,
    timeout: Duration,
    say: &dyn Fn(String),
) -> Result<Outcome> {
    let mut o = Outcome {
        moved_unix_s: (SystemTime::now() - moved_at.elapsed())
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Outcome::default()
    };
    let moved_system = SystemTime::now() - moved_at.elapsed();
    o.moved_unix_ms = unix_ms(moved_system);
    while moved_at.elapsed() < timeout {
        if o.quorum.is_none() {
            o.quorum = quorum_after(lab, managers, moved_system);
            if o.quorum.is_some() {
                say("the swarm commits writes again".into());
            }
        }
        if o.quorum.is_some() {
            let left = not_converged(lab, managers, nodes)?;
            if left.is_empty() {
                o.converged = Some(moved_at.elapsed());
                say("converged: every manager recorded at its new address, seen from every manager; no rewrite left on any node".into());
                o.pending.clear();
                return Ok(o);
            }
            o.pending = left;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if o.quorum.is_none() {
        o.pending = vec!["the swarm never committed a write".into()];
    }
    Ok(o)
}

/// Differences between two fingerprints that a recovery must not cause:
/// everything, except that a task on a `restartable` node (one whose
/// dockerd a recovery may restart: swarm-glue restarts managers' to
/// re-address them and workers' so that their gossip and VXLAN addresses
/// follow the move) may have been replaced by a new task for the same slot,
/// and the objects swarm-glue creates and removes by itself. That such a
/// task was stopped once at most is [`stopped_twice`]'s to check.
pub fn losses(before: &Fingerprint, after: &Fingerprint, restartable: &[String]) -> Vec<String> {
    let strip = |fp: &Fingerprint| {
        let mut fp = fp.clone();
        fp.secrets
            .retain(|_, name| !TRANSIENT.iter().any(|p| name.starts_with(p)));
        fp
    };
    let (b, a) = (strip(before), strip(after));
    let restartable_ids: Vec<&String> = b
        .nodes
        .iter()
        .filter(|(_, n)| restartable.contains(&n.hostname))
        .map(|(id, _)| id)
        .collect();
    let mut out: Vec<String> = b
        .diff(&a)
        .into_iter()
        .filter(|d| !d.starts_with("task "))
        .collect();
    // Tasks: by ID on the other nodes; by (service, slot) on restartable
    // ones. Such a task is stopped once when its node's dockerd restarts
    // and the swarm starts its slot again where its scheduler chooses: on
    // the same node when the node is back before the task's restart delay,
    // else on another node (seen on this 2-core lab when a restart took
    // longer). A new task is accepted only in a slot vacated so.
    let restarted = |t: &swarm::TaskFp| restartable_ids.contains(&&t.node);
    let mut vacated = Vec::new();
    for (id, t) in &b.tasks {
        match a.tasks.get(id) {
            Some(x) if x == t => {}
            Some(x) => out.push(format!("task {id} changed: {t:?} -> {x:?}")),
            None if restarted(t) => {
                vacated.push((t.service.clone(), t.slot));
                let replaced = a
                    .tasks
                    .values()
                    .any(|x| x.service == t.service && x.slot == t.slot && x.state == "running");
                if !replaced {
                    out.push(format!(
                        "task {id} on a restartable node is gone and not replaced: {t:?}"
                    ));
                }
            }
            None => out.push(format!(
                "task {id} is gone from a node that was not to restart: {t:?}"
            )),
        }
    }
    for (id, x) in &a.tasks {
        if !b.tasks.contains_key(id) && !vacated.contains(&(x.service.clone(), x.slot)) {
            out.push(format!("task {id} is new, in a slot no task left: {x:?}"));
        }
    }
    out
}

/// The slots whose task was stopped more than once since the move: a task
/// may be stopped once (its node's dockerd restarts), never again (e.g.
/// started on a node re-addressed or restarted later). One line each.
pub fn stopped_twice(lab: &Lab, o: &Outcome) -> Result<Vec<String>> {
    let mut last = None;
    for m in lab.managers() {
        match swarm::started_since(lab, &m.name, o.moved_unix_s) {
            Ok(counts) => {
                return Ok(counts
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|((service, slot), n)| {
                        format!("service {service} slot {slot}: started {n} times since the move")
                    })
                    .collect())
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| LabError::Invalid("the lab has no manager".into())))
}

/// What the acceptance asks after a recovery: still converged 60 s later
/// (looked at every 10 s), and whole again after the leader's dockerd
/// restarts (every node ready, every service at full strength, every
/// manager at its current address, and the data plane whole: see
/// [`data_plane`], given [`DATA_PLANE_GRACE`]). Returns the leader that was
/// restarted.
pub fn stable_then_leader_restart(
    lab: &Lab,
    managers: &[String],
    nodes: &[String],
) -> Result<String> {
    let stable_from = Instant::now();
    while stable_from.elapsed() < Duration::from_secs(60) {
        let left = not_converged(lab, managers, nodes)?;
        if !left.is_empty() {
            return Err(LabError::Invalid(format!(
                "not stable {:.0}s after convergence: {left:?}",
                stable_from.elapsed().as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let leader = swarm::leader(lab)
        .ok_or_else(|| LabError::Invalid("no leader 60 s after convergence".into()))?;
    lab.restart_docker(&leader)?;
    wait_for(
        "the swarm to be whole after the leader's dockerd restarted",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let h = swarm::health(lab)?;
            let left = not_converged(lab, managers, nodes)?;
            Ok((h.is_healthy() && left.is_empty()).then_some(()))
        },
    )?;
    let (failures, took) = wait_data_plane(lab, DATA_PLANE_GRACE);
    if !failures.is_empty() {
        return Err(LabError::Invalid(format!(
            "the data plane is not whole {:.0}s after the swarm was whole again once {leader}'s dockerd restarted: {failures:#?}",
            took.as_secs_f64()
        )));
    }
    Ok(leader)
}

/// Every manager's node ID as the swarm names them, by hostname.
pub fn ids(fp: &Fingerprint) -> BTreeMap<String, String> {
    fp.nodes
        .iter()
        .map(|(id, n)| (n.hostname.clone(), id.clone()))
        .collect()
}

pub fn secs(d: Option<Duration>) -> String {
    d.map_or("none".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// A fingerprint taken once the swarm answers everywhere.
pub fn fingerprint(lab: &Lab) -> Result<Fingerprint> {
    wait_for(
        "a fingerprint of the swarm",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || Ok(swarm::fingerprint_any(lab).ok()),
    )
    .map_err(|e| LabError::Invalid(format!("{e}")))
}

pub const WATCH: Duration = Duration::from_secs(300);

/// Waits up to `timeout` until the swarm is healthy with every task back,
/// and returns its fingerprint then: what a recovery is compared by.
pub fn whole_again(lab: &Lab, timeout: Duration) -> Result<Fingerprint> {
    wait_for("every task back", timeout, Duration::from_secs(2), || {
        let h = swarm::health(lab)?;
        Ok(h.is_healthy().then(|| fingerprint(lab).ok()).flatten())
    })
}

// ---- the data plane --------------------------------------------------------

/// How long one HTTP GET to a task may take (a dead path fails by then).
const HTTP_TIMEOUT_S: u32 = 3;
/// How long resolving `tasks.<service>` may take.
const DNS_TIMEOUT_S: u32 = 5;
/// How long each step of the check inside one node (`docker ps`, then
/// `docker exec` into its probe task) may take, when that node's dockerd hangs.
const NODE_TIMEOUT_S: u32 = 20;
/// How long after the swarm is whole again its data plane may take to be
/// whole too (a task started again reaches the others' DNS by gossip).
pub const DATA_PLANE_GRACE: Duration = Duration::from_secs(30);

/// Run inside every node: finds its running probe task; inside it resolves
/// `tasks.probe` through Docker's embedded DNS and sends one HTTP GET to
/// every address it resolved and every address in `@TARGETS@` (the swarm's
/// view), all at once, each bounded by its timeout.
const DATA_PLANE_SCRIPT: &str = r#"ps=$(timeout @NODE@ docker ps -q --filter label=com.docker.swarm.service.name=@SERVICE@ --filter status=running 2>&1) || { echo "@@ps-failed $ps"; exit 0; }
c=$(echo "$ps" | head -n 1)
echo "@@container $c"
[ -n "$c" ] || exit 0
rc=0
timeout @NODE@ docker exec -i "$c" sh -s <<'PROBE' || rc=$?
dns=$(busybox timeout @DNS@ busybox nslookup -type=a tasks.@SERVICE@ 127.0.0.11 2>&1)
echo "@@dns $?"
echo "$dns"
ips=$(echo "$dns" | busybox awk '/^Name:/ { n = 1 } n && /^Address/ { sub(/^Address[^:]*:[ \t]*/, ""); print $1 }')
all=$(busybox printf '%s\n' $ips @TARGETS@ | busybox sort -u)
busybox mkdir -p /tmp/data-plane
for ip in $all; do
  (printf 'GET / HTTP/1.0\r\n\r\n' | busybox timeout @HTTP@ busybox nc "$ip" @PORT@ >/tmp/data-plane/$ip 2>&1; echo "@@rc $?" >>/tmp/data-plane/$ip) &
done
wait
for ip in $all; do echo "@@http $ip"; cat /tmp/data-plane/$ip; done
echo "@@done"
PROBE
echo "@@exec $rc"
"#;

/// What one node's probe task saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// Why the node's running probe task could not be listed.
    ps_failed: Option<String>,
    /// Its running probe task container; None when it has none.
    container: Option<String>,
    /// The exit status of `docker exec` into it.
    exec_rc: Option<i32>,
    /// Whether the script inside it ran to its end.
    done: bool,
    /// nslookup's exit status and output, and the addresses it gave.
    dns_rc: Option<i32>,
    dns_text: String,
    dns: Vec<Ipv4Addr>,
    /// The answer to a GET from each address tried.
    http: BTreeMap<Ipv4Addr, Answer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Answer {
    /// Exit status of `timeout nc` (143: the timeout killed it).
    rc: Option<i32>,
    /// What came back (headers and page), CRs removed.
    text: String,
}

/// The addresses busybox nslookup printed for the name asked (after the
/// first `Name:` line; the server's own `Address:` line comes before it).
/// Both forms: `Address: 10.0.1.3` (1.35) and `Address 1: 10.0.1.3 name`.
fn parse_nslookup(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter(|l| l.starts_with("Address"))
        .filter_map(|l| {
            l.split_once(':')?
                .1
                .split_whitespace()
                .next()?
                .parse::<Ipv4Addr>()
                .ok()
        })
        .collect()
}

/// Reads what [`DATA_PLANE_SCRIPT`] printed.
fn parse_seen(out: &str) -> Seen {
    enum In {
        Top,
        Dns,
        Http(Ipv4Addr),
    }
    let mut seen = Seen::default();
    let mut at = In::Top;
    let mut dns_text = Vec::new();
    for raw in out.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(why) = line.strip_prefix("@@ps-failed") {
            seen.ps_failed = Some(why.trim().to_string());
        } else if let Some(c) = line.strip_prefix("@@container") {
            seen.container = Some(c.trim().to_string()).filter(|c| !c.is_empty());
        } else if let Some(rc) = line.strip_prefix("@@dns ") {
            seen.dns_rc = rc.trim().parse().ok();
            at = In::Dns;
        } else if let Some(ip) = line.strip_prefix("@@http ") {
            match ip.trim().parse() {
                Ok(ip) => {
                    seen.http.insert(ip, Answer::default());
                    at = In::Http(ip);
                }
                Err(_) => at = In::Top,
            }
        } else if let Some(rc) = line.strip_prefix("@@rc ") {
            if let In::Http(ip) = at {
                if let Some(a) = seen.http.get_mut(&ip) {
                    a.rc = rc.trim().parse().ok();
                }
            }
            at = In::Top;
        } else if line == "@@done" {
            seen.done = true;
            at = In::Top;
        } else if let Some(rc) = line.strip_prefix("@@exec ") {
            seen.exec_rc = rc.trim().parse().ok();
            at = In::Top;
        } else {
            match at {
                In::Dns => dns_text.push(line),
                In::Http(ip) => {
                    if let Some(a) = seen.http.get_mut(&ip) {
                        a.text.push_str(line);
                        a.text.push('\n');
                    }
                }
                In::Top => {}
            }
        }
    }
    seen.dns_text = dns_text.join("\n").trim().to_string();
    seen.dns = parse_nslookup(&seen.dns_text);
    seen
}

/// The node a page says it is served from (`probe node=<hostname> ...`).
fn page_node(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn rc(rc: Option<i32>) -> String {
    rc.map_or("none".into(), |r| r.to_string())
}

/// What is wrong with what `source` saw, given the tasks the swarm runs
/// (`running`: running, with an address); one line each.
fn judge(source: &str, seen: &Seen, running: &[swarm::ProbeTask]) -> Vec<String> {
    if let Some(why) = &seen.ps_failed {
        return vec![format!(
            "from {source}: its probe task cannot be listed: {why}"
        )];
    }
    let Some(container) = &seen.container else {
        return vec![format!(
            "from {source}: the node has no running {} task",
            swarm::SERVICE
        )];
    };
    if !seen.done {
        return vec![format!(
            "from {source}: the check did not run through in its task {container} (docker exec exit {}; nslookup said {:?})",
            rc(seen.exec_rc),
            last_line(&seen.dns_text)
        )];
    }
    let mut out = Vec::new();
    let name = format!("tasks.{}", swarm::SERVICE);
    let want: Vec<Ipv4Addr> = running.iter().filter_map(|t| t.addr).collect();
    if seen.dns.is_empty() {
        out.push(format!(
            "from {source}: {name} does not resolve (nslookup exit {}: {:?}); the swarm runs {} tasks",
            rc(seen.dns_rc),
            last_line(&seen.dns_text),
            want.len()
        ));
    } else {
        if seen.dns.len() != want.len() {
            out.push(format!(
                "from {source}: {name} resolves to {} addresses {:?}, the swarm runs {} tasks",
                seen.dns.len(),
                seen.dns,
                want.len()
            ));
        }
        for t in running {
            if let Some(a) = t.addr.filter(|a| !seen.dns.contains(a)) {
                out.push(format!(
                    "from {source}: {name} lacks {}'s task at {a}",
                    t.node
                ));
            }
        }
        for a in seen.dns.iter().filter(|a| !want.contains(a)) {
            out.push(format!(
                "from {source}: {name} resolves to {a}, where the swarm runs no task"
            ));
        }
    }
    for t in running {
        let Some(a) = t.addr else { continue };
        let target = format!("from {source} to {}'s task at {a}", t.node);
        let Some(answer) = seen.http.get(&a) else {
            out.push(format!("{target}: not tried"));
            continue;
        };
        match answer.rc {
            Some(0) => {}
            Some(124 | 143) => {
                out.push(format!(
                    "{target}: HTTP GET: no answer within {HTTP_TIMEOUT_S} s"
                ));
                continue;
            }
            other => {
                out.push(format!(
                    "{target}: HTTP GET failed (nc exit {}: {:?})",
                    rc(other),
                    last_line(&answer.text)
                ));
                continue;
            }
        }
        let status = answer.text.lines().next().unwrap_or("");
        if status.split_whitespace().nth(1) != Some("200") {
            out.push(format!("{target}: HTTP GET answered {status:?}"));
        } else if page_node(&answer.text) != Some(t.node.as_str()) {
            out.push(format!(
                "{target}: the page names {}, not {}",
                page_node(&answer.text).unwrap_or("no node"),
                t.node
            ));
        }
    }
    out
}

/// Whether the user's application works across the swarm: from every node,
/// inside its running probe task, `tasks.probe` must resolve (Docker's
/// embedded DNS) to the address of every task the swarm runs, and an HTTP
/// GET to each of those addresses (over the overlay network, VXLAN between
/// nodes) must return 200 and the page of the task's node. The tasks'
/// addresses are the swarm's (`.NetworksAttachments` on the `app` network,
/// from the first manager that answers), cross-checked with DNS. One line
/// per failure, naming the source node, the target's node and address and
/// what failed; empty when all is good. Every node at once; a dead path
/// fails within seconds (3 s for a GET, 5 s for DNS).
pub fn data_plane(lab: &Lab) -> Result<Vec<String>> {
    let mut last = None;
    let mut tasks = None;
    for m in lab.managers() {
        match swarm::probe_tasks(lab, &m.name) {
            Ok(t) => {
                tasks = Some(t);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(tasks) = tasks else {
        return Err(last.unwrap_or_else(|| LabError::Invalid("the lab has no manager".into())));
    };
    let mut out = Vec::new();
    for t in &tasks {
        if t.state != "running" {
            out.push(format!(
                "swarm: task {} on {} is {}, not running",
                t.id, t.node, t.state
            ));
        } else if t.addr.is_none() {
            out.push(format!(
                "swarm: task {} on {} has no address on {}",
                t.id,
                t.node,
                swarm::NETWORK
            ));
        }
    }
    let running: Vec<swarm::ProbeTask> = tasks
        .into_iter()
        .filter(|t| t.state == "running" && t.addr.is_some())
        .collect();
    let targets: Vec<String> = running
        .iter()
        .filter_map(|t| t.addr.map(|a| a.to_string()))
        .collect();
    let script = DATA_PLANE_SCRIPT
        .replace("@TARGETS@", &targets.join(" "))
        .replace("@SERVICE@", swarm::SERVICE)
        .replace("@NODE@", &NODE_TIMEOUT_S.to_string())
        .replace("@DNS@", &DNS_TIMEOUT_S.to_string())
        .replace("@HTTP@", &HTTP_TIMEOUT_S.to_string())
        .replace("@PORT@", &swarm::PROBE_PORT.to_string());
    let sources: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let seen = par_map(&sources, |n| Ok(lab.sh(n, &script)))?;
    for (n, s) in sources.iter().zip(seen) {
        match s {
            Ok(text) => out.extend(judge(n, &parse_seen(&text), &running)),
            Err(e) => out.push(format!("from {n}: the check could not run: {e}")),
        }
    }
    Ok(out)
}

/// [`data_plane`] again every 2 s until it finds nothing or `timeout`
/// passed: the failures of the last check (empty when it held) and how
/// long it took. A check that cannot run counts as a failure.
pub fn wait_data_plane(lab: &Lab, timeout: Duration) -> (Vec<String>, Duration) {
    let started = Instant::now();
    loop {
        let failures = data_plane(lab)
            .unwrap_or_else(|e| vec![format!("the data plane cannot be checked: {e}")]);
        if failures.is_empty() || started.elapsed() >= timeout {
            return (failures, started.elapsed());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn say(msg: String) {
    println!("  {msg}");
}

/// A lab whose swarm is moved and watched; panics (it is for tests) with
/// what is left when a recovery does not hold.
pub struct Run<'a> {
    pub lab: &'a Lab,
    pub managers: Vec<String>,
    pub nodes: Vec<String>,
}

impl<'a> Run<'a> {
    /// Every manager and every node of `lab`.
    pub fn new(lab: &'a Lab) -> Run<'a> {
        Run {
            lab,
            managers: lab.manager_names(),
            nodes: lab.nodes().iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// Moves `which` to a fresh subnet and watches until converged; panics
    /// with what is left when it does not.
    pub fn move_and_recover(&self, name: &str, which: &[String]) -> (Outcome, Fingerprint) {
        let before = fingerprint(self.lab).expect("fingerprint before");
        let outcome = self.move_only(name, which, |_| {});
        self.assert_recovered(name, &before, &outcome);
        (outcome, before)
    }

    /// Moves and watches; `during` runs right after the move. The
    /// availability probe ([`availability`]) runs on every node from right
    /// before the move until the swarm converged and its data plane is
    /// whole (or [`DATA_PLANE_GRACE`] passed); its figures are in
    /// [`Outcome::app`].
    pub fn move_only(&self, name: &str, which: &[String], during: impl FnOnce(Instant)) -> Outcome {
        let target = self.lab.free_subnet().expect("a free subnet");
        let seed = crate::rng::Rng::fresh_seed();
        let probe = availability::Probe::start(self.lab, &self.nodes)
            .unwrap_or_else(|e| panic!("{name}: the availability probe: {e}"));
        let report = self
            .lab
            .move_nodes(which, target, crate::Addressing::Shuffled { seed })
            .expect("move");
        let moved_at = Instant::now() - report.took;
        println!("{name}: {report}");
        during(moved_at);
        let mut o = watch(
            self.lab,
            &self.managers,
            &self.nodes,
            moved_at,
            WATCH,
            &|l| say(format!("+{:.1}s {l}", moved_at.elapsed().as_secs_f64())),
        )
        .expect("watch");
        crate::bench(
            &format!("recovery.{name}.quorum_s"),
            secs_f64(o.quorum),
            "s",
        );
        crate::bench(
            &format!("recovery.{name}.converged_s"),
            secs_f64(o.converged),
            "s",
        );
        let app = finish_probe(self.lab, probe, &o)
            .unwrap_or_else(|e| panic!("{name}: the availability probe: {e}"));
        bench_app(name, &app);
        o.app = Some(app);
        o
    }

    /// Recovered, nothing lost, the data plane whole, and no task stopped
    /// more than once (a recovery may restart any node's dockerd, so every
    /// node's tasks may have been replaced once).
    pub fn assert_recovered(&self, name: &str, before: &Fingerprint, o: &Outcome) {
        self.assert_recovered_where(name, before, o, &self.nodes);
        let twice = stopped_twice(self.lab, o).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            twice.is_empty(),
            "{name}: tasks stopped more than once: {twice:#?}\ntask histories: {:#?}\ntimeline: {:#?}\njournals: {}",
            task_histories(self.lab),
            timelines(self.lab, &self.managers),
            save_logs(self.lab, name)
        );
    }

    /// Converged, whole again with nothing lost ([`losses`]), node IDs kept,
    /// and the data plane whole ([`data_plane`], given
    /// [`DATA_PLANE_GRACE`]). `restartable`: the nodes whose tasks may have
    /// been replaced by a new task in the same slot.
    pub fn assert_recovered_where(
        &self,
        name: &str,
        before: &Fingerprint,
        o: &Outcome,
        restartable: &[String],
    ) {
        assert!(
            o.converged.is_some(),
            "{name}: not converged within {}s: {:#?}\ntimeline: {:#?}\nraft as each manager sees it: {:#?}\njournals: {}",
            WATCH.as_secs(),
            o.pending,
            timelines(self.lab, &self.managers),
            raft_views(self.lab, &self.managers),
            save_logs(self.lab, name)
        );
        let after = whole_again(self.lab, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let losses = losses(before, &after, restartable);
        assert!(
            losses.is_empty(),
            "{name}: the swarm changed: {losses:#?}\ntimeline: {:#?}\nDocker on the managers: {:#?}\njournals: {}",
            timelines(self.lab, &self.managers),
            nodes_down(self.lab, &self.managers),
            save_logs(self.lab, name)
        );
        assert_eq!(ids(before), ids(&after), "{name}: node IDs");
        let (failures, took) = wait_data_plane(self.lab, DATA_PLANE_GRACE);
        assert!(
            failures.is_empty(),
            "{name}: the data plane is not whole {:.0}s after the swarm was: {failures:#?}\ntimeline: {:#?}\nthe overlay as each node holds it: {:#?}\njournals: {}",
            took.as_secs_f64(),
            timelines(self.lab, &self.managers),
            overlay_views(self.lab),
            save_logs(self.lab, name)
        );
        say(format!(
            "data plane whole: every task reached by name and address from every node ({:.1}s)",
            took.as_secs_f64()
        ));
        if let Some(app) = &o.app {
            assert!(
                app.app_gap_s == 0.0,
                "{name}: once the swarm had a leader again, some node got no answer from any task of the service for {:.1}s: {:#?}\nevery node's windows: {:#?}",
                app.app_gap_s,
                app.gaps(),
                app.lines()
            );
        }
    }
}

/// Ends an availability probe started right before a move watched into
/// `o`: once the swarm converged, it waits until the data plane is whole
/// (at most [`DATA_PLANE_GRACE`]: the recovery's last restarted tasks are
/// gossiped), then stops the probe and returns its figures, every node's
/// windows told.
pub fn finish_probe(
    lab: &Lab,
    probe: availability::Probe<'_>,
    o: &Outcome,
) -> Result<availability::Figures> {
    if o.converged.is_some() {
        let (failures, took) = wait_data_plane(lab, DATA_PLANE_GRACE);
        if !failures.is_empty() {
            say(format!(
                "the availability probe stops with the data plane not whole after {:.0}s: {} failures",
                took.as_secs_f64(),
                failures.len()
            ));
        }
    }
    let moved = UNIX_EPOCH + Duration::from_millis(o.moved_unix_ms);
    let mut app = probe.finish(moved)?;
    if let Some(q) = o.quorum {
        app.count_gaps_from(o.moved_unix_ms + q.as_millis() as u64);
    }
    for l in app.lines() {
        say(l);
    }
    Ok(app)
}

/// `recovery.<case>.app_s` and `.app_gap_s` (and `.app_remote_gap_s`).
pub fn bench_app(case: &str, app: &availability::Figures) {
    crate::bench(
        &format!("recovery.{case}.app_s"),
        app.app_s.unwrap_or(f64::NAN),
        "s",
    );
    crate::bench(&format!("recovery.{case}.app_gap_s"), app.app_gap_s, "s");
    crate::bench(
        &format!("recovery.{case}.app_remote_gap_s"),
        app.remote_gap_s,
        "s",
    );
}

fn secs_f64(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64())
}

/// One swarm-glue announcement as a host's avahi-daemon has it resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The service name, unescaped (`swarm-glue <node ID prefix>[ #N]`).
    pub name: String,
    pub address: String,
    /// The `node=` of its TXT record.
    pub node: String,
}

/// The swarm-glue services the avahi-daemon of `on` knows, resolved
/// (`avahi-browse -tpr`: what is cached, plus answers to its queries).
pub fn announced(lab: &Lab, on: &str) -> Result<Vec<Announced>> {
    let out = lab.sh(on, "avahi-browse -tpr _swarm-glue._tcp")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            if f.len() < 10 || f[0] != "=" {
                return None;
            }
            let node = f[9]
                .split('"')
                .find_map(|t| t.strip_prefix("node="))?
                .to_string();
            Some(Announced {
                name: unescape_dns(f[3]),
                address: f[7].to_string(),
                node,
            })
        })
        .collect())
}

/// avahi-browse writes a name's special characters as `\DDD` (decimal).
fn unescape_dns(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|d| d.parse::<u8>().ok());
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts `avahi-publish` on `on`: a swarm-glue announcement under `name`
/// claiming that `node` of `cluster` is at `addr` (a forged claim, as any
/// host on the link can make). Its output goes to `log`; [`stop_claims`]
/// ends it.
pub fn publish_claim(
    lab: &Lab,
    on: &str,
    name: &str,
    cluster: &str,
    node: &str,
    addr: Ipv4Addr,
    log: &str,
) -> Result<()> {
    lab.sh(
        on,
        &format!(
            "nohup avahi-publish -s '{name}' _swarm-glue._tcp 7950 v=1 cluster={cluster} node={node} addrs={addr} agent=7950 >{log} 2>&1 &"
        ),
    )?;
    Ok(())
}

/// Ends every claim [`publish_claim`] started on `on`.
pub fn stop_claims(lab: &Lab, on: &str) -> Result<()> {
    lab.sh(on, "pkill -x avahi-publish || true")?;
    Ok(())
}

/// avahi-daemon restarts on every manager, and on `collide` only after
/// `rogue` has taken its mDNS name: every manager announces itself again
/// with its fresh daemon (`collide` under another name if it gave way), the
/// first other manager hears each of them at its address, and each journal
/// says why. Whatever happens, `collide`'s avahi-daemon is unmasked and
/// started again and `rogue`'s claim ended before this returns.
pub fn avahi_restarts(lab: &Lab, managers: &[String], collide: &str, rogue: &str) -> Result<()> {
    let result = avahi_restarts_checked(lab, managers, collide, rogue);
    let undo = lab
        .sh(
            collide,
            "systemctl unmask --runtime avahi-daemon.socket avahi-daemon.service && systemctl start avahi-daemon",
        )
        .and_then(|_| stop_claims(lab, rogue));
    let gave_way = result?;
    undo?;
    println!(
        "avahi restarts: every manager announced again; {collide} gave way to {rogue}: {}",
        if gave_way {
            "yes, announced under another name"
        } else {
            "no"
        }
    );
    Ok(())
}

/// [`avahi_restarts`] without the undoing; whether `collide` gave way.
fn avahi_restarts_checked(
    lab: &Lab,
    managers: &[String],
    collide: &str,
    rogue: &str,
) -> Result<bool> {
    let info = |m: &str, f: &str| -> Result<String> {
        Ok(lab
            .exec(m, &["docker", "info", "-f", f])?
            .trim()
            .to_string())
    };
    let address = |m: &str| -> Result<Ipv4Addr> {
        lab.address(m)?
            .ok_or_else(|| LabError::Invalid(format!("{m} has no address")))
    };
    let cluster = info(collide, "{{.Swarm.Cluster.ID}}")?;
    let mut me = BTreeMap::new();
    for m in managers {
        me.insert(
            m.clone(),
            (info(m, "{{.Swarm.NodeID}}")?, address(m)?.to_string()),
        );
    }
    // What each journal said before, to read only what is new.
    const GONE: [&str; 2] = ["avahi-daemon stopped", "avahi-daemon restarted"];
    const GAVE_WAY: &str = "collides with another host's";
    let said = |m: &str, what: &[&str]| {
        let j = glue::manager_journal(lab, m);
        what.iter().map(|w| j.matches(w).count()).sum::<usize>()
    };
    let gone_before: BTreeMap<&String, usize> =
        managers.iter().map(|m| (m, said(m, &GONE))).collect();
    let gave_way_before = said(collide, &[GAVE_WAY]);
    let (cid, caddr) = me[collide].clone();
    let taken = format!("swarm-glue {}", &cid[..12.min(cid.len())]);
    // Masked while down: the next D-Bus call would start it again.
    lab.sh(
        collide,
        "systemctl mask --runtime --now avahi-daemon.socket avahi-daemon.service",
    )?;
    let log = "/tmp/swarm-glue-taken.log";
    publish_claim(lab, rogue, &taken, &cluster, &cid, address(rogue)?, log)?;
    wait_for(
        &format!("{rogue} to publish {taken:?}"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            Ok(lab
                .sh(rogue, &format!("cat {log}"))?
                .contains("Established")
                .then_some(()))
        },
    )?;
    for m in managers.iter().filter(|m| *m != collide) {
        lab.sh(m, "systemctl restart avahi-daemon")?;
    }
    lab.sh(
        collide,
        "systemctl unmask --runtime avahi-daemon.socket avahi-daemon.service && systemctl start avahi-daemon",
    )?;
    let observer = managers
        .iter()
        .find(|m| *m != collide)
        .ok_or_else(|| LabError::Invalid(format!("no manager but {collide} to listen")))?;
    wait_for(
        "every manager to announce itself again after avahi-daemon restarted",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let heard = announced(lab, observer)?;
            for (m, (id, addr)) in &me {
                let ok = |a: &Announced| a.node == *id && a.address == *addr;
                // Its own daemon is new: it lists the service only if
                // published again.
                if !announced(lab, m)?.iter().any(ok) || !heard.iter().any(ok) {
                    return Ok(None);
                }
                if said(m, &GONE) <= gone_before[m] {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .map_err(|e| {
        LabError::Invalid(format!(
            "{e}; {observer} hears {:#?}",
            announced(lab, observer).unwrap_or_default(),
        ))
    })?;
    // Who keeps a contested name is mDNS's choice (seen both ways): if it
    // was glue-manager that gave way, it must be heard under another name.
    let gave_way = said(collide, &[GAVE_WAY]) > gave_way_before;
    let renamed = announced(lab, observer)?
        .iter()
        .any(|a| a.node == cid && a.address == caddr && a.name != taken);
    if gave_way && !renamed {
        return Err(LabError::Invalid(format!(
            "{collide} gave up {taken:?} to {rogue} but {observer} does not hear it at {caddr} under another name"
        )));
    }
    Ok(gave_way)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::{NodeFp, ProbeTask, TaskFp};

    const NSLOOKUP: &str = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\n\
        Non-authoritative answer:\nName:\ttasks.probe\nAddress: 10.0.1.3\n\
        Name:\ttasks.probe\nAddress: 10.0.1.7\n";

    fn page(node: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-type: text/html\r\n\r\n\
             probe node={node} task=probe.1.abc\n"
        )
    }

    fn task(node: &str, addr: [u8; 4]) -> ProbeTask {
        ProbeTask {
            id: format!("t-{node}"),
            node: node.into(),
            state: "running".into(),
            addr: Some(Ipv4Addr::from(addr)),
        }
    }

    #[test]
    fn nslookup_addresses_skip_the_server_and_read_both_forms() {
        assert_eq!(
            parse_nslookup(NSLOOKUP),
            vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 7)]
        );
        let old = "Server:    127.0.0.11\nAddress 1: 127.0.0.11\n\n\
                   Name:      tasks.probe\nAddress 1: 10.0.1.3 probe.1.x.app\n";
        assert_eq!(parse_nslookup(old), vec![Ipv4Addr::new(10, 0, 1, 3)]);
        let missing = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\n\
                       ** server can't find tasks.probe: NXDOMAIN\n";
        assert!(parse_nslookup(missing).is_empty());
    }

    #[test]
    fn a_whole_data_plane_has_nothing_to_say_and_a_broken_one_names_source_target_and_why() {
        let out = format!(
            "@@container 0123abcd\n@@dns 0\n{NSLOOKUP}\
             @@http 10.0.1.3\n{}@@rc 0\n@@http 10.0.1.7\n{}@@rc 0\n@@done\n@@exec 0\n",
            page("m1"),
            page("w2")
        );
        let seen = parse_seen(&out);
        assert_eq!(seen.container.as_deref(), Some("0123abcd"));
        assert_eq!(
            (seen.dns_rc, seen.exec_rc, seen.done),
            (Some(0), Some(0), true)
        );
        assert_eq!(seen.http.len(), 2);
        let running = [task("m1", [10, 0, 1, 3]), task("w2", [10, 0, 1, 7])];
        assert_eq!(judge("m2", &seen, &running), Vec::<String>::new());

        // w2's task is not in DNS and does not answer; m1's page is wrong.
        let out = format!(
            "@@container 0123abcd\n@@dns 0\n\
             Name:\ttasks.probe\nAddress: 10.0.1.3\n\
             @@http 10.0.1.3\n{}@@rc 0\n@@http 10.0.1.7\nTerminated\n@@rc 143\n@@done\n@@exec 0\n",
            page("m3")
        );
        let lines = judge("m2", &parse_seen(&out), &running);
        assert_eq!(
            lines,
            vec![
                "from m2: tasks.probe resolves to 1 addresses [10.0.1.3], the swarm runs 2 tasks",
                "from m2: tasks.probe lacks w2's task at 10.0.1.7",
                "from m2 to m1's task at 10.0.1.3: the page names m3, not m1",
                "from m2 to w2's task at 10.0.1.7: HTTP GET: no answer within 3 s",
            ]
        );

        // No task on the node, or the exec hung.
        assert_eq!(
            judge("w1", &parse_seen("@@container \n"), &running),
            vec!["from w1: the node has no running probe task"]
        );
        let hung = judge("w1", &parse_seen("@@container ab\n@@exec 124\n"), &running);
        assert!(hung[0].contains("did not run through") && hung[0].contains("exit 124"));
    }

    fn fp(tasks: &[(&str, &str, u64)]) -> Fingerprint {
        Fingerprint {
            nodes: ["m1", "w1"]
                .iter()
                .map(|h| {
                    (
                        format!("id-{h}"),
                        NodeFp {
                            hostname: h.to_string(),
                            role: "worker".into(),
                            availability: "active".into(),
                            labels: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            services: BTreeMap::new(),
            tasks: tasks
                .iter()
                .map(|(id, node, slot)| {
                    (
                        id.to_string(),
                        TaskFp {
                            service: "s".into(),
                            node: format!("id-{node}"),
                            slot: *slot,
                            state: "running".into(),
                        },
                    )
                })
                .collect(),
            configs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            settings: "{}".into(),
        }
    }

    #[test]
    fn a_task_replaced_in_its_slot_is_no_loss_on_a_restartable_node_only() {
        let before = fp(&[("a", "m1", 1), ("b", "w1", 2)]);
        let after = fp(&[("a", "m1", 1), ("c", "w1", 2)]);
        let all = ["m1".to_string(), "w1".to_string()];
        assert!(losses(&before, &after, &all).is_empty());
        let only_m1 = losses(&before, &after, &all[..1]);
        assert_eq!(only_m1.len(), 2, "{only_m1:#?}");
        assert!(only_m1[0].starts_with("task b is gone from a node that was not to restart"));
        assert!(only_m1[1].starts_with("task c is new, in a slot no task left"));
        // A new task in a slot nobody left is caught, also with every node
        // restartable; a slot left and not filled again too.
        let extra = fp(&[("a", "m1", 1), ("b", "w1", 2), ("d", "w1", 3)]);
        assert_eq!(losses(&before, &extra, &all).len(), 1);
        let lost = fp(&[("a", "m1", 1)]);
        assert!(losses(&before, &lost, &all)[0].contains("gone and not replaced"));
    }
}
