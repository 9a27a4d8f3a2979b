//! The availability probe: whether the user's application answers, from
//! every node, all through a recovery.
//!
//! Every node runs a loop of its own (a transient systemd unit,
//! `lab-probe.service`, in the node, not in a task: a task dies when its
//! node's dockerd restarts, and swarm-glue restarts every node's dockerd once
//! during a recovery). Every 0.5 s the loop starts a round inside the network
//! namespace of the node's running probe task (`nsenter -n`, with a busybox
//! of its own, so the task's files are never touched and dockerd is asked
//! only to find the task again once it was replaced): it resolves
//! `tasks.probe` through Docker's embedded DNS and sends one HTTP GET to
//! every address (busybox `nc -w 1`; the round is cut off after 3 s), and appends one line to
//! `/var/lib/lab-probe/rounds.log` in the node: the round's start (Unix ms,
//! the nodes share this machine's clock), the task it ran in, how many
//! addresses it resolved and, per address, the node named by the page that
//! came back (`-`: none). A round for which the node has no running task, or
//! whose task ended meanwhile, measured nothing and says so. The loop stops
//! by itself after [`MAX_RUN`] (and systemd stops the unit a minute later).
//!
//! [`figures`] reads those lines: per node, the windows with no answer at
//! all, with no answer from another node's task, with no client, and per
//! target node the windows it did not answer in; and the recovery's figures
//! `app_s` and `app_gap_s` (see [`Figures`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::par_map;
use crate::swarm;

/// Where the probe keeps its programs and its log inside every node.
pub const DIR: &str = "/var/lib/lab-probe";
const UNIT: &str = "lab-probe.service";
/// The longest a probe runs before it stops by itself.
pub const MAX_RUN: Duration = Duration::from_secs(15 * 60);
/// A round starts this often on every node.
pub const INTERVAL_MS: u64 = 500;
/// A node whose last round is older than this at the end of the probe
/// stopped measuring before the end.
const STALE_MS: u64 = 10_000;
/// The busybox the rounds run (the lab's, as copied into the workload image).
const BUSYBOX: &str = "/bin/busybox";

/// One round, inside the task's network namespace (busybox sh; `$1` is the
/// busybox to run; the addresses are the words after the first `Name:` of
/// nslookup's answer, both busybox forms). Each line it prints is a field
/// of the round's log line. Few processes (2 cores run 5 nodes): no
/// `timeout` of its own, the loop's `timeout` ends the whole round (GNU
/// timeout signals its process group, the background `nc`s too).
const ROUND_SCRIPT: &str = r#"bb=$1
set -f
out=$($bb nslookup -type=a tasks.@SERVICE@ 127.0.0.11 2>/dev/null)
ips= n=0 named=
for w in $out; do
  case $w in
    Name:) named=1 ;;
    *[!0-9.]*) ;;
    [0-9]*.[0-9]*.[0-9]*.[0-9]*) [ -z "$named" ] || { ips="$ips $w"; n=$((n + 1)); } ;;
  esac
done
echo "dns=$n"
for ip in $ips; do
  (
    r=$($bb nc -w 1 "$ip" @PORT@ <@DIR@/request 2>/dev/null)
    case $r in
      *"probe node="*) r=${r##*probe node=}; r=${r%% *} ;;
      *) r=- ;;
    esac
    echo "$ip=$r"
  ) &
done
wait
"#;

/// The loop, in the node (bash): a round every 0.5 s, each in the
/// background (a slow one does not hold the next back) and cut off after
/// 3 s, until the deadline. It waits with `read -t` on a FIFO nobody
/// writes to, not `sleep`: no process.
const LOOP_SCRIPT: &str = r#"set -u
dir=@DIR@
bb=$dir/busybox
log=$dir/rounds.log
exec 3<>"$dir/tick"
end=$((EPOCHSECONDS + @MAX_S@))
pid= cid=
while ((EPOCHSECONDS < end)); do
  t=${EPOCHREALTIME//[.,]/}
  t=${t:0:13}
  if [[ -z $pid || ! -e /proc/$pid ]]; then
    pid=
    cid=$(timeout 2 docker ps -q --filter label=com.docker.swarm.service.name=@SERVICE@ --filter status=running 2>/dev/null | head -n 1)
    if [[ -n $cid ]]; then
      pid=$(timeout 2 docker inspect -f '{{.State.Pid}}' "$cid" 2>/dev/null)
      [[ $pid =~ ^[1-9][0-9]*$ ]] || pid=
    fi
  fi
  if [[ -z $pid ]]; then
    echo "$t none" >>"$log"
  else
    (
      r=$(timeout 3 nsenter -t "$pid" -n "$bb" sh "$dir/round.sh" "$bb" 2>/dev/null)
      if [[ -e /proc/$pid ]]; then
        echo "$t c=${cid:0:12} ${r//$'\n'/ }" >>"$log"
      else
        echo "$t gone c=${cid:0:12}" >>"$log"
      fi
    ) &
  fi
  now=${EPOCHREALTIME//[.,]/}
  left=$((t + @INTERVAL_MS@ - ${now:0:13}))
  if ((left > 0)); then
    printf -v left '%03d' "$left"
    read -r -t "0.$left" -u 3 _ || true
  fi
done
wait
"#;

fn fill(script: &str, max: Duration) -> String {
    script
        .replace("@DIR@", DIR)
        .replace("@SERVICE@", swarm::SERVICE)
        .replace("@PORT@", &swarm::PROBE_PORT.to_string())
        .replace("@MAX_S@", &max.as_secs().max(1).to_string())
        .replace("@INTERVAL_MS@", &INTERVAL_MS.to_string())
}

fn write_file(lab: &Lab, node: &str, name: &str, data: &[u8], mode: &str) -> Result<()> {
    let c = &lab.node(node)?.container;
    lab.docker().exec_with_input(
        c,
        &[
            "sh",
            "-ec",
            &format!("mkdir -p {DIR}; cat > {DIR}/{name}.new; chmod {mode} {DIR}/{name}.new; mv {DIR}/{name}.new {DIR}/{name}"),
        ],
        data,
    )?;
    Ok(())
}

/// Starts the probe on `nodes` (stopping one that runs there and emptying
/// its log first); it stops by itself after `max`. Returns once every node
/// logged a round.
pub fn start_on(lab: &Lab, nodes: &[String], max: Duration) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| LabError::io(format!("reading {BUSYBOX} (busybox-static)"), e))?;
    let round = fill(ROUND_SCRIPT, max);
    let looped = fill(LOOP_SCRIPT, max);
    par_map(nodes, |n| {
        write_file(lab, n, "busybox", &busybox, "755")?;
        write_file(lab, n, "round.sh", round.as_bytes(), "644")?;
        write_file(lab, n, "loop.sh", looped.as_bytes(), "644")?;
        write_file(lab, n, "request", b"GET / HTTP/1.0\r\n\r\n", "644")?;
        lab.sh(
            n,
            &format!(
                "systemctl stop {UNIT} 2>/dev/null || true
                 systemctl reset-failed {UNIT} 2>/dev/null || true
                 : > {DIR}/rounds.log
                 rm -f {DIR}/tick; mkfifo {DIR}/tick
                 rm -f {DIR}/moved {DIR}/stopped
                 date +%s%3N > {DIR}/started
                 systemd-run --quiet --collect --unit={UNIT} -p RuntimeMaxSec={} /bin/bash {DIR}/loop.sh",
                max.as_secs() + 60
            ),
        )?;
        Ok(())
    })?;
    crate::wait_for(
        "the availability probe's first round on every node",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let counts = par_map(nodes, |n| {
                Ok(lab
                    .sh(n, &format!("wc -l < {DIR}/rounds.log"))?
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0))
            })?;
            Ok(counts.iter().all(|c| *c > 0).then_some(()))
        },
    )
}

/// Stops the probe on `nodes` (where it runs) and notes when.
pub fn stop_on(lab: &Lab, nodes: &[String]) -> Result<()> {
    par_map(nodes, |n| {
        lab.sh(
            n,
            &format!(
                "systemctl stop {UNIT} 2>/dev/null || true
                 if [ -d {DIR} ] && [ ! -e {DIR}/stopped ]; then date +%s%3N > {DIR}/stopped; fi"
            ),
        )
        .map(|_| ())
    })?;
    Ok(())
}

/// Notes on `nodes` where a probe was started that they moved at `at`
/// (what `lab probe report` measures from).
pub fn mark_moved(lab: &Lab, nodes: &[String], at: SystemTime) -> Result<()> {
    let ms = crate::recovery::unix_ms(at);
    par_map(nodes, |n| {
        lab.sh(n, &format!("[ ! -d {DIR} ] || echo {ms} > {DIR}/moved"))
            .map(|_| ())
    })?;
    Ok(())
}

/// What the probe left on each node.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    /// Each node's rounds, by time.
    pub rounds: BTreeMap<String, Vec<(u64, Round)>>,
    /// When it was started, moved and stopped, per node (Unix ms).
    pub started: BTreeMap<String, u64>,
    pub moved: BTreeMap<String, u64>,
    pub stopped: BTreeMap<String, u64>,
    /// Whether the probe still runs there.
    pub running: BTreeMap<String, bool>,
}

/// Reads what the probe left on `nodes`.
pub fn read_logs(lab: &Lab, nodes: &[String]) -> Result<Logs> {
    let texts = par_map(nodes, |n| {
        let marks = lab.sh(
            n,
            &format!(
                "for f in started moved stopped; do echo \"$f $(cat {DIR}/$f 2>/dev/null)\"; done
                 echo \"running $(systemctl is-active {UNIT} 2>/dev/null || true)\""
            ),
        )?;
        let rounds = lab.sh(n, &format!("cat {DIR}/rounds.log 2>/dev/null || true"))?;
        Ok((marks, rounds))
    })?;
    let mut logs = Logs::default();
    for (n, (marks, rounds)) in nodes.iter().zip(texts) {
        for l in marks.lines() {
            let mut f = l.split_whitespace();
            let (Some(key), value) = (f.next(), f.next()) else {
                continue;
            };
            let ms = value.and_then(|v| v.parse::<u64>().ok());
            match (key, ms) {
                ("started", Some(ms)) => logs.started.insert(n.clone(), ms),
                ("moved", Some(ms)) => logs.moved.insert(n.clone(), ms),
                ("stopped", Some(ms)) => logs.stopped.insert(n.clone(), ms),
                _ => None,
            };
            if key == "running" {
                logs.running.insert(n.clone(), value == Some("active"));
            }
        }
        logs.rounds.insert(n.clone(), parse_rounds(&rounds));
    }
    Ok(logs)
}

/// A probe started on some nodes of a lab, stopped when dropped (a test
/// that panics leaves no loop running in a lab kept for a look).
pub struct Probe<'a> {
    lab: &'a Lab,
    nodes: Vec<String>,
    running: bool,
}

impl<'a> Probe<'a> {
    /// [`start_on`] with [`MAX_RUN`].
    pub fn start(lab: &'a Lab, nodes: &[String]) -> Result<Probe<'a>> {
        let mut probe = Probe {
            lab,
            nodes: nodes.to_vec(),
            running: true,
        };
        if let Err(e) = start_on(lab, nodes, MAX_RUN) {
            probe.running = false;
            let _ = stop_on(lab, nodes);
            return Err(e);
        }
        Ok(probe)
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Stops the probe and reads what it saw from `moved` on: the figures,
    /// with every node both client and target.
    pub fn finish(mut self, moved: SystemTime) -> Result<Figures> {
        let end = SystemTime::now();
        self.running = false;
        stop_on(self.lab, &self.nodes)?;
        let logs = read_logs(self.lab, &self.nodes)?;
        Ok(figures(
            &logs.rounds,
            &self.nodes,
            crate::recovery::unix_ms(moved),
            crate::recovery::unix_ms(end),
        ))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = stop_on(self.lab, &self.nodes) {
                eprintln!("the availability probe could not be stopped: {e}");
            }
        }
    }
}

// ---- the rounds and what they say -------------------------------------------

/// One round of one node's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// The node ran no probe task (or its dockerd did not say): nothing measured.
    NoClient,
    /// The task the round ran in ended meanwhile: nothing measured.
    Gone,
    /// Asked from inside the task `container`.
    Asked {
        container: String,
        /// How many addresses `tasks.probe` resolved to (None: the round
        /// printed nothing, e.g. it was cut off).
        resolved: Option<usize>,
        /// Every address asked and the node its page named, if one answered.
        answers: Vec<(Ipv4Addr, Option<String>)>,
    },
}

impl Round {
    /// The nodes whose task answered, if the round measured anything.
    pub fn answered(&self) -> Option<BTreeSet<&str>> {
        match self {
            Round::Asked { answers, .. } => {
                Some(answers.iter().filter_map(|(_, n)| n.as_deref()).collect())
            }
            Round::NoClient | Round::Gone => None,
        }
    }
}

/// Reads a node's `rounds.log`, by time (rounds end, and are written, out of
/// order); lines it cannot read are left out.
pub fn parse_rounds(text: &str) -> Vec<(u64, Round)> {
    let mut out: Vec<(u64, Round)> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let at = f.next()?.parse::<u64>().ok()?;
            let first = f.next()?;
            if first == "none" {
                return Some((at, Round::NoClient));
            }
            if first == "gone" {
                return Some((at, Round::Gone));
            }
            let container = first.strip_prefix("c=")?.to_string();
            let mut resolved = None;
            let mut answers = Vec::new();
            for field in f {
                if let Some(n) = field.strip_prefix("dns=") {
                    resolved = n.parse().ok();
                } else if let Some((ip, node)) = field.split_once('=') {
                    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let node = Some(node.to_string()).filter(|n| !n.is_empty() && n != "-");
                    answers.push((ip, node));
                }
            }
            Some((
                at,
                Round::Asked {
                    container,
                    resolved,
                    answers,
                },
            ))
        })
        .collect();
    out.sort_by_key(|(at, _)| *at);
    out
}

/// A stretch of time, Unix ms, `from` included, `to` not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl Span {
    pub fn secs(&self) -> f64 {
        self.to_ms.saturating_sub(self.from_ms) as f64 / 1000.0
    }

    /// The part from `from` on, if any.
    fn after(self, from: u64) -> Option<Span> {
        (self.to_ms > from).then(|| Span {
            from_ms: self.from_ms.max(from),
            to_ms: self.to_ms,
        })
    }
}

impl NodeWindows {
    /// One round without an answer right before the node's client itself
    /// went away: its dockerd was stopping, its own task first. The client
    /// measured its own node's shutdown, not the service.
    fn client_going(&self, s: &Span) -> bool {
        s.to_ms - s.from_ms <= INTERVAL_MS * 2
            && self.no_client.iter().any(|c| c.from_ms == s.to_ms)
    }
}

/// What one node's client saw from the move to the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeWindows {
    /// Its rounds from the move on.
    pub rounds: usize,
    /// No task answered (DNS gave nothing, or nothing it gave answered).
    pub no_answer: Vec<Span>,
    /// No task on another node answered (its own may have).
    pub no_remote: Vec<Span>,
    /// Nothing measured: no running task to ask from (its dockerd
    /// restarting), or no round at all.
    pub no_client: Vec<Span>,
    /// Per node expected to answer: the windows its task did not.
    pub missing: BTreeMap<String, Vec<Span>>,
}

/// What the probe says about a moved swarm, measured from the move.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub moved_ms: u64,
    pub end_ms: u64,
    /// From the move until every node got an answer from every node's task
    /// and kept getting them until the end (the start of the last all-green
    /// stretch); None when that never happened.
    pub app_s: Option<f64>,
    /// From the move until every node had got an answer from some task.
    pub available_s: Option<f64>,
    /// After `available_s`: the longest window in which some node got no
    /// answer from any task (0 when the service never failed a node; the
    /// whole watch when it was never available from every node). A node's
    /// own rounds while it had no task to ask from do not count: they
    /// measured nothing.
    pub app_gap_s: f64,
    /// The same for answers from another node's task only (a node's own
    /// task answers it over no network at all).
    pub remote_available_s: Option<f64>,
    pub remote_gap_s: f64,
    /// Whether every node's last round before the move was all-green
    /// (None: some node had no round before it).
    pub green_before: Option<bool>,
    /// Set by [`Figures::count_gaps_from`].
    pub counted_from_ms: Option<u64>,
    pub nodes: BTreeMap<String, NodeWindows>,
}

/// The stretches in which `bad` holds, over rounds by time: each from the
/// first round of a run it says `Some(true)` for to the next round (of any
/// kind) or `end`. A round it says `None` for ends a stretch without
/// starting one.
fn spans(rounds: &[(u64, Round)], end: u64, bad: impl Fn(&Round) -> Option<bool>) -> Vec<Span> {
    let mut out = Vec::new();
    let mut open: Option<u64> = None;
    for (at, r) in rounds {
        match (bad(r), open) {
            (Some(true), None) => open = Some(*at),
            (Some(true), Some(_)) => {}
            (_, Some(from)) => {
                out.push(Span {
                    from_ms: from,
                    to_ms: *at,
                });
                open = None;
            }
            (_, None) => {}
        }
    }
    if let Some(from) = open {
        out.push(Span {
            from_ms: from,
            to_ms: end.max(from),
        });
    }
    out
}

fn is_green(r: &Round, expected: &[String]) -> bool {
    r.answered()
        .is_some_and(|a| expected.iter().all(|n| a.contains(n.as_str())))
}

/// From when the last stretch of green rounds (every expected node's task
/// answered) of a node ran to the end; None when its last round was not
/// green, or it had stopped measuring well before the end.
fn green_from(rounds: &[(u64, Round)], expected: &[String], end: u64) -> Option<u64> {
    let (last, _) = rounds.last()?;
    if end.saturating_sub(*last) > STALE_MS {
        return None;
    }
    let mut from = None;
    for (at, r) in rounds {
        if is_green(r, expected) {
            from.get_or_insert(*at);
        } else {
            from = None;
        }
    }
    from
}

/// When a node first got an answer from a task `counts` accepts.
fn first_answer(rounds: &[(u64, Round)], counts: impl Fn(&str) -> bool) -> Option<u64> {
    rounds
        .iter()
        .find(|(_, r)| r.answered().is_some_and(|a| a.iter().any(|n| counts(n))))
        .map(|(at, _)| *at)
}

fn secs_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1000.0
}

/// The figures of a probe whose clients are the nodes of `rounds` and whose
/// expected targets are `expected` (by node name), from `moved` to `end`
/// (Unix ms).
pub fn figures(
    rounds: &BTreeMap<String, Vec<(u64, Round)>>,
    expected: &[String],
    moved: u64,
    end: u64,
) -> Figures {
    let mut f = Figures {
        moved_ms: moved,
        end_ms: end,
        green_before: (!rounds.is_empty()).then_some(true),
        ..Figures::default()
    };
    let mut green_at = Some(moved);
    let (mut available, mut remote_available) = (Some(moved), Some(moved));
    let mut gap_windows: Vec<(bool, Vec<Span>)> = Vec::new();
    for (node, all) in rounds {
        let before = all.iter().rev().find(|(at, _)| *at < moved);
        f.green_before = match (f.green_before, before) {
            (Some(g), Some((_, r))) => Some(g && is_green(r, expected)),
            _ => None,
        };
        let after: Vec<(u64, Round)> = all.iter().filter(|(at, _)| *at >= moved).cloned().collect();
        let own = node.as_str();
        let mut w = NodeWindows {
            rounds: after.len(),
            no_answer: spans(&after, end, |r| r.answered().map(|a| a.is_empty())),
            no_remote: spans(&after, end, |r| {
                r.answered().map(|a| a.iter().all(|n| *n == own))
            }),
            no_client: spans(&after, end, |r| Some(r.answered().is_none())),
            missing: BTreeMap::new(),
        };
        match after.last() {
            None => w.no_client.push(Span {
                from_ms: moved,
                to_ms: end,
            }),
            Some((last, _)) if end.saturating_sub(*last) > STALE_MS => w.no_client.push(Span {
                from_ms: last + INTERVAL_MS,
                to_ms: end,
            }),
            Some(_) => {}
        }
        for target in expected {
            let t = target.as_str();
            let s = spans(&after, end, |r| r.answered().map(|a| !a.contains(t)));
            if !s.is_empty() {
                w.missing.insert(target.clone(), s);
            }
        }
        green_at = match (green_at, green_from(&after, expected, end)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        available = match (available, first_answer(&after, |_| true)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        remote_available = match (remote_available, first_answer(&after, |n| n != own)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        gap_windows.push((false, w.no_answer.clone()));
        gap_windows.push((true, w.no_remote.clone()));
        f.nodes.insert(node.clone(), w);
    }
    if rounds.is_empty() {
        green_at = None;
        available = None;
        remote_available = None;
    }
    let whole = secs_between(moved, end);
    let longest = |remote: bool, from: Option<u64>| match from {
        None => whole,
        Some(from) => gap_windows
            .iter()
            .filter(|(r, _)| *r == remote)
            .flat_map(|(_, s)| s.iter().filter_map(|s| s.after(from)))
            .map(|s| s.secs())
            .fold(0.0, f64::max),
    };
    f.app_gap_s = longest(false, available);
    f.remote_gap_s = longest(true, remote_available);
    f.app_s = green_at.map(|t| secs_between(moved, t));
    f.available_s = available.map(|t| secs_between(moved, t));
    f.remote_available_s = remote_available.map(|t| secs_between(moved, t));
    f
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("none".into(), |v| format!("{v:.1}"))
}

impl Figures {
    fn rel(&self, ms: u64) -> f64 {
        (ms as f64 - self.moved_ms as f64) / 1000.0
    }

    fn spans_text(&self, spans: &[Span]) -> String {
        if spans.is_empty() {
            return "none".into();
        }
        spans
            .iter()
            .map(|s| {
                format!(
                    "+{:.1}..+{:.1}s ({:.1}s)",
                    self.rel(s.from_ms),
                    self.rel(s.to_ms),
                    s.secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The figures in one line, then one line per node: its windows.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "availability: app_s={} app_gap_s={:.1} (every node answered by some task after {} s; by another node's task after {} s, longest gap then {:.1} s); before the move: {}",
            fmt_opt(self.app_s),
            self.app_gap_s,
            fmt_opt(self.available_s),
            fmt_opt(self.remote_available_s),
            self.remote_gap_s,
            match self.green_before {
                Some(true) => "every node answered by every task",
                Some(false) => "NOT every node answered by every task",
                None => "not measured",
            }
        )];
        for (node, w) in &self.nodes {
            let missing = if w.missing.is_empty() {
                "none".to_string()
            } else {
                w.missing
                    .iter()
                    .map(|(t, s)| format!("{t} {}", self.spans_text(s)))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            out.push(format!(
                "{node}: {} rounds; no answer: {}; none from another node: {}; no client: {}; not answered by: {missing}",
                w.rounds,
                self.spans_text(&w.no_answer),
                self.spans_text(&w.no_remote),
                self.spans_text(&w.no_client),
            ));
        }
        out
    }

    /// The windows in which some node got no answer at all, after the
    /// service was first available from every node: what makes
    /// `app_gap_s` non-zero.
    pub fn gaps(&self) -> Vec<String> {
        let from = self.gap_from();
        let mut out = Vec::new();
        for (node, w) in &self.nodes {
            let s: Vec<Span> = match from {
                Some(from) => w
                    .no_answer
                    .iter()
                    .filter(|s| !w.client_going(s))
                    .filter_map(|s| s.after(from))
                    .collect(),
                None => w.no_answer.clone(),
            };
            if !s.is_empty() {
                out.push(format!("{node}: no answer {}", self.spans_text(&s)));
            }
        }
        if from.is_none() {
            out.push("the service was never available from every node".into());
        }
        out
    }
}

impl Figures {
    /// Where `app_gap_s` is measured from: when the service was first
    /// available from every node, or `counted_from_ms` if later.
    fn gap_from(&self) -> Option<u64> {
        let available = self
            .available_s
            .map(|s| self.moved_ms + (s * 1000.0) as u64)?;
        Some(available.max(self.counted_from_ms.unwrap_or(0)))
    }

    /// Measures `app_gap_s` only from `at` (Unix ms) on: before the swarm
    /// has a leader nothing can be re-addressed, and what a node's own
    /// restart to free a pinned listener costs then is no gap of the
    /// recovery's making after the fact.
    pub fn count_gaps_from(&mut self, at: u64) {
        self.counted_from_ms = Some(at);
        self.app_gap_s = match self.gap_from() {
            None => secs_between(self.moved_ms, self.end_ms),
            Some(from) => self
                .nodes
                .values()
                .flat_map(|w| {
                    w.no_answer
                        .iter()
                        .filter(|s| !w.client_going(s))
                        .filter_map(move |s| s.after(from))
                })
                .map(|s| s.secs())
                .fold(0.0, f64::max),
        };
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(answers: &[(&str, &str)]) -> Round {
        Round::Asked {
            container: "c1".into(),
            resolved: Some(answers.len()),
            answers: answers
                .iter()
                .map(|(ip, n)| {
                    (
                        ip.parse().expect("ip"),
                        Some(n.to_string()).filter(|n| *n != "-"),
                    )
                })
                .collect(),
        }
    }

    const A: &str = "10.0.1.3";
    const B: &str = "10.0.1.4";

    fn both() -> Round {
        asked(&[(A, "a"), (B, "b")])
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn reads_every_kind_of_line_by_time_and_skips_garbage() {
        let text = "1000500 c=0123456789ab dns=2 10.0.1.3=m1 10.0.1.4=-\n\
                    1000000 none\n\
                    garbage\n\
                    1001000 gone c=0123456789ab\n\
                    1001500 c=0123456789ab \n\
                    1002000 c=0123456789ab dns=0\n";
        let r = parse_rounds(text);
        assert_eq!(r.len(), 5);
        assert_eq!(r[0], (1_000_000, Round::NoClient));
        assert_eq!(
            r[1],
            (
                1_000_500,
                Round::Asked {
                    container: "0123456789ab".into(),
                    resolved: Some(2),
                    answers: vec![
                        (Ipv4Addr::new(10, 0, 1, 3), Some("m1".into())),
                        (Ipv4Addr::new(10, 0, 1, 4), None)
                    ],
                }
            )
        );
        assert_eq!(r[2], (1_001_000, Round::Gone));
        assert_eq!(r[3].1.answered(), Some(BTreeSet::new()));
        assert!(
            matches!(&r[4].1, Round::Asked { resolved: Some(0), answers, .. } if answers.is_empty())
        );
        assert_eq!(r[1].1.answered(), Some(BTreeSet::from(["m1"])));
    }

    #[test]
    fn spans_run_from_the_first_bad_round_to_the_next_round_and_unmeasured_ends_them() {
        let rounds = vec![
            (0, both()),
            (500, asked(&[])),
            (1000, asked(&[])),
            (1500, both()),
            (2000, asked(&[])),
            (2500, Round::NoClient),
            (3000, asked(&[])),
        ];
        let s = spans(&rounds, 4000, |r| r.answered().map(|a| a.is_empty()));
        assert_eq!(
            s,
            vec![
                Span {
                    from_ms: 500,
                    to_ms: 1500
                },
                Span {
                    from_ms: 2000,
                    to_ms: 2500
                },
                Span {
                    from_ms: 3000,
                    to_ms: 4000
                },
            ]
        );
    }

    #[test]
    fn a_recovery_with_a_restart_per_node_and_the_service_always_up() {
        let moved = 10_000;
        // Before the move all green; after it b is unreachable from a for a
        // while (its own task still answers); then a's dockerd restarts
        // (no client, and b misses a's task), then all green.
        let a = vec![
            (9_500, both()),
            (10_000, asked(&[(A, "a"), (B, "-")])),
            (10_500, asked(&[(A, "a"), (B, "-")])),
            (11_000, both()),
            (11_500, Round::Gone),
            (12_000, Round::NoClient),
            (12_500, Round::NoClient),
            (13_000, both()),
            (13_500, both()),
        ];
        let b = vec![
            (9_600, both()),
            (10_100, asked(&[(A, "-"), (B, "b")])),
            (10_600, both()),
            (11_100, both()),
            (11_600, asked(&[(A, "-"), (B, "b")])),
            (12_100, asked(&[(B, "b")])),
            (12_600, asked(&[(B, "b")])),
            (13_100, asked(&[(B, "b"), ("10.0.1.9", "a")])),
            (13_600, both()),
        ];
        let rounds = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let f = figures(&rounds, &names(), moved, 14_000);
        assert_eq!(f.green_before, Some(true));
        assert_eq!(f.app_s, Some(3.1));
        assert_eq!(f.available_s, Some(0.1));
        assert_eq!(f.app_gap_s, 0.0);
        assert_eq!(f.remote_available_s, Some(1.0));
        assert_eq!(f.remote_gap_s, 1.5, "b heard only itself 11.6..13.1");
        let wa = &f.nodes["a"];
        assert_eq!(wa.rounds, 8);
        assert_eq!(
            wa.no_client,
            vec![Span {
                from_ms: 11_500,
                to_ms: 13_000
            }]
        );
        assert_eq!(
            wa.missing["b"],
            vec![Span {
                from_ms: 10_000,
                to_ms: 11_000
            }]
        );
        assert_eq!(f.nodes["b"].missing["a"].len(), 2);
        assert!(f.gaps().is_empty());
        assert_eq!(f.lines().len(), 3);
    }

    #[test]
    fn no_answer_at_all_after_the_service_was_up_is_a_gap_and_named() {
        let moved = 0;
        let a = vec![
            (0, both()),
            (500, asked(&[])),
            (
                1000,
                Round::Asked {
                    container: "c1".into(),
                    resolved: None,
                    answers: vec![],
                },
            ),
            (1500, both()),
        ];
        let b = vec![(100, both()), (600, both()), (1100, both()), (1600, both())];
        let rounds = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let f = figures(&rounds, &names(), moved, 2000);
        assert_eq!(f.app_gap_s, 1.0);
        assert_eq!(f.app_s, Some(1.5));
        assert_eq!(f.gaps(), vec!["a: no answer +0.5..+1.5s (1.0s)"]);
    }

    #[test]
    fn never_green_at_the_end_stopped_early_or_never_available() {
        let b = vec![(0, both()), (5000, both())];
        // a's last round misses b: not green at the end.
        let a = vec![(0, both()), (5000, asked(&[(A, "a")]))];
        let r = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b.clone())]);
        assert_eq!(figures(&r, &names(), 0, 5500).app_s, None);
        // a stopped measuring long before the end.
        let a = vec![(0, both())];
        let r = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b.clone())]);
        let f = figures(&r, &names(), 0, 30_000);
        assert_eq!(f.app_s, None);
        assert_eq!(
            f.nodes["a"].no_client,
            vec![Span {
                from_ms: 500,
                to_ms: 30_000
            }]
        );
        // a never got an answer: the whole watch is the gap.
        let a = vec![(0, asked(&[])), (5000, Round::NoClient)];
        let r = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let f = figures(&r, &names(), 0, 6000);
        assert_eq!((f.available_s, f.app_gap_s), (None, 6.0));
        assert_eq!(f.green_before, None);
        assert!(f.gaps().iter().any(|g| g.contains("never available")));
        // Nothing read at all.
        let f = figures(&BTreeMap::new(), &names(), 0, 1000);
        assert_eq!((f.app_s, f.app_gap_s), (None, 1.0));
    }

    #[test]
    fn one_unanswered_round_right_before_the_client_itself_stops_is_its_node_stopping() {
        let span = |a, b| Span {
            from_ms: a,
            to_ms: b,
        };
        let w = NodeWindows {
            no_answer: vec![span(1000, 1500)],
            no_client: vec![span(1500, 9000)],
            ..NodeWindows::default()
        };
        assert!(w.client_going(&w.no_answer[0]));
        let longer = NodeWindows {
            no_answer: vec![span(1000, 4000)],
            no_client: vec![span(4000, 9000)],
            ..NodeWindows::default()
        };
        assert!(!longer.client_going(&longer.no_answer[0]), "a real gap");
        let client_stays = NodeWindows {
            no_answer: vec![span(1000, 1500)],
            ..NodeWindows::default()
        };
        assert!(!client_stays.client_going(&client_stays.no_answer[0]));
    }
}
