//! Installing the agent on a node over SSH, as data first: a probe script
//! reports what the node has, [`plan`] decides what must change, and
//! [`install_script`] does exactly that, idempotently, under a lock on the
//! node so two managers never write the same files at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use glue_protocol::trust_file_contents;
use glue_protocol::PublicKey;
use ring::digest;

pub const PACKAGED_BIN: &str = "/usr/bin/glue-node-agent";
pub const LOCAL_BIN: &str = "/usr/local/bin/glue-node-agent";
pub const UNIT_PATH: &str = "/etc/systemd/system/glue-node-agent.service";
pub const CONFIG_PATH: &str = "/etc/swarm-glue/agent.toml";
pub const TRUST_DIR: &str = "/etc/swarm-glue/trusted-managers";
pub const AGENT_PUB: &str = "/var/lib/swarm-glue-agent/agent.pub";
const UNIT_TEMPLATE: &str = include_str!("../../systemd/glue-node-agent.service");

/// The agent version this manager installs (both are built together).
pub fn agent_version() -> String {
    format!("glue-node-agent {}", glue_protocol::PROGRAM_VERSION)
}

/// Reports, one fact a line, what the node has. Read-only.
pub const PROBE_SCRIPT: &str = r#"
h() { if [ -f "$1" ]; then sha256sum < "$1" | cut -d' ' -f1; else echo -; fi; }
echo "arch $(uname -m)"
echo "init $(cat /proc/1/comm 2>/dev/null)"
for b in /usr/bin/glue-node-agent /usr/local/bin/glue-node-agent; do
  [ -x "$b" ] && echo "bin $b $(h "$b") $("$b" --version 2>/dev/null | head -n1)"
done
echo "file /etc/swarm-glue/agent.toml $(h /etc/swarm-glue/agent.toml)"
echo "file /etc/systemd/system/glue-node-agent.service $(h /etc/systemd/system/glue-node-agent.service)"
for t in /etc/swarm-glue/trusted-managers/*.pub; do
  [ -f "$t" ] && echo "trust $(basename "$t") $(h "$t")"
done
echo "active $(systemctl is-active glue-node-agent 2>/dev/null || true)"
[ -f /var/lib/swarm-glue-agent/agent.pub ] && echo "pub $(cat /var/lib/swarm-glue-agent/agent.pub)"
true
"#;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub arch: String,
    pub init: String,
    /// Installed agent binaries: path → (sha256, version line).
    pub bins: BTreeMap<String, (String, String)>,
    /// Hashes of the files the manager writes ("-" when absent).
    pub files: BTreeMap<String, String>,
    /// Trust directory: file name → sha256.
    pub trust: BTreeMap<String, String>,
    pub active: String,
    pub agent_key: Option<PublicKey>,
}

impl Probe {
    pub fn parse(text: &str) -> Probe {
        let mut p = Probe::default();
        for line in text.lines() {
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let mut words = rest.splitn(3, ' ');
            match kind {
                "arch" => p.arch = rest.trim().to_string(),
                "init" => p.init = rest.trim().to_string(),
                "active" => p.active = rest.trim().to_string(),
                "bin" => {
                    if let (Some(path), Some(sha)) = (words.next(), words.next()) {
                        let version = words.next().unwrap_or("").trim().to_string();
                        p.bins.insert(path.into(), (sha.into(), version));
                    }
                }
                "file" => {
                    if let (Some(path), Some(sha)) = (words.next(), words.next()) {
                        p.files.insert(path.into(), sha.into());
                    }
                }
                "trust" => {
                    if let (Some(name), Some(sha)) = (words.next(), words.next()) {
                        p.trust.insert(name.into(), sha.into());
                    }
                }
                "pub" => {
                    p.agent_key = rest
                        .split_whitespace()
                        .find(|w| *w != "ed25519")
                        .and_then(PublicKey::from_base64)
                }
                _ => {}
            }
        }
        p
    }
}

/// Debian's name of a kernel architecture (`uname -m`).
pub fn debian_arch(uname_m: &str) -> Option<&'static str> {
    match uname_m {
        "x86_64" | "amd64" => Some("amd64"),
        "aarch64" | "arm64" => Some("arm64"),
        "armv7l" | "armv6l" | "armhf" | "arm" => Some("armhf"),
        _ => None,
    }
}

/// What the node should end up with.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub node_id: String,
    pub cluster_id: String,
    /// The agent binary for the node's architecture (None: not shipped).
    pub binary: Option<Vec<u8>>,
    /// Every registered manager's signing key, by manager node ID.
    pub managers: BTreeMap<String, PublicKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallPlan {
    /// Where the agent runs from.
    pub bin_path: String,
    pub copy_binary: bool,
    /// File path → new contents (agent.toml, the unit, trust files).
    pub writes: BTreeMap<String, String>,
    /// Restart the agent (its binary, unit or config changed, or it is not running).
    pub restart: bool,
}

impl InstallPlan {
    pub fn is_empty(&self) -> bool {
        !self.copy_binary && self.writes.is_empty() && !self.restart
    }

    /// One line for the log: what changes.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.copy_binary {
            parts.push(format!("agent binary to {}", self.bin_path));
        }
        for path in self.writes.keys() {
            parts.push(path.rsplit('/').next().unwrap_or(path).to_string());
        }
        if self.restart {
            parts.push("(re)start".into());
        }
        if parts.is_empty() {
            "nothing to change".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the node runs {0:?} as PID 1, not systemd: the agent needs systemd")]
    NoSystemd(String),
    #[error("no agent binary for architecture {0:?} is shipped with this manager")]
    NoBinary(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn agent_config(node_id: &str, cluster_id: &str) -> String {
    format!(
        "# Written by glue-manager: this node's identity in the swarm.\n\
         # Every other option keeps its default (see glue-node-agent --help).\n\
         node_id = \"{node_id}\"\ncluster_id = \"{cluster_id}\"\n"
    )
}

pub fn agent_unit(bin_path: &str) -> String {
    UNIT_TEMPLATE.replace(
        "ExecStart=/usr/bin/glue-node-agent",
        &format!("ExecStart={bin_path}"),
    )
}

pub fn trust_file_name(manager_node_id: &str) -> String {
    format!("glue-manager-{manager_node_id}.pub")
}

/// Decides what must change on a node. An agent installed from the package
/// (same version at /usr/bin) is used as it is; otherwise the binary shipped
/// with this manager goes to /usr/local/bin with its own unit.
pub fn plan(probe: &Probe, expected: &Wanted) -> Result<InstallPlan, PlanError> {
    if probe.init != "systemd" {
        return Err(PlanError::NoSystemd(probe.init.clone()));
    }
    let mut p = InstallPlan::default();
    let packaged = probe
        .bins
        .get(PACKAGED_BIN)
        .is_some_and(|(_, v)| *v == agent_version());
    let file_differs = |path: &str, contents: &str| {
        probe.files.get(path).map(String::as_str) != Some(sha256_hex(contents.as_bytes()).as_str())
    };
    if packaged {
        p.bin_path = PACKAGED_BIN.into();
    } else {
        let binary = expected
            .binary
            .as_ref()
            .ok_or_else(|| PlanError::NoBinary(probe.arch.clone()))?;
        p.bin_path = LOCAL_BIN.into();
        p.copy_binary = probe.bins.get(LOCAL_BIN).map(|(sha, _)| sha.as_str())
            != Some(sha256_hex(binary).as_str());
        let unit = agent_unit(LOCAL_BIN);
        if file_differs(UNIT_PATH, &unit) {
            p.writes.insert(UNIT_PATH.into(), unit);
        }
    }
    let config = agent_config(&expected.node_id, &expected.cluster_id);
    if file_differs(CONFIG_PATH, &config) {
        p.writes.insert(CONFIG_PATH.into(), config);
    }
    p.restart = p.copy_binary || !p.writes.is_empty() || probe.active != "active";
    // Trust files are read per command: changing them needs no restart.
    for (manager, key) in &expected.managers {
        let name = trust_file_name(manager);
        let contents = trust_file_contents(key, &format!("glue-manager {manager}"));
        if probe.trust.get(&name).map(String::as_str)
            != Some(sha256_hex(contents.as_bytes()).as_str())
        {
            p.writes.insert(format!("{TRUST_DIR}/{name}"), contents);
        }
    }
    Ok(p)
}

/// Where this manager uploads a binary before the install script moves it
/// into place (one name per manager: two uploads never share a file).
pub fn upload_path(bin_path: &str, manager: &str) -> String {
    format!("{bin_path}.{}.new", crate::docker::short(manager))
}

/// The shell script that carries out `plan` on the node, under a lock.
pub fn install_script(plan: &InstallPlan, manager: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s =
        String::from("set -eu\nexec 9>/run/lock/glue-node-agent-install.lock\nflock -w 60 9\n");
    s.push_str("umask 022\nmkdir -p /etc/swarm-glue /etc/swarm-glue/trusted-managers\n");
    s.push_str("put() { printf '%s' \"$2\" | base64 -d > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; }\n");
    if plan.copy_binary {
        let up = upload_path(&plan.bin_path, manager);
        let _ = writeln!(s, "chmod 755 '{up}' && mv '{up}' '{}'", plan.bin_path);
    }
    for (path, contents) in &plan.writes {
        let _ = writeln!(s, "put '{path}' '{}'", b64.encode(contents));
    }
    if plan.restart {
        s.push_str("systemctl daemon-reload\nsystemctl enable --quiet glue-node-agent.service\n");
        s.push_str("systemctl restart glue-node-agent.service\n");
    }
    // The agent makes its key at start; wait for it (and for READY).
    s.push_str(
        "i=0; while [ $i -lt 100 ]; do\n  \
           if systemctl is-active --quiet glue-node-agent && [ -s /var/lib/swarm-glue-agent/agent.pub ]; then\n    \
             echo \"pub $(cat /var/lib/swarm-glue-agent/agent.pub)\"; exit 0\n  fi\n  \
           i=$((i+1)); sleep 0.1\ndone\n\
         echo 'glue-node-agent did not become active:' >&2\n\
         systemctl status --no-pager glue-node-agent >&2 || true\nexit 3\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use glue_protocol::SigningKey;

    fn key() -> PublicKey {
        SigningKey::generate().expect("key").public()
    }

    fn expected(managers: &[(&str, PublicKey)]) -> Wanted {
        Wanted {
            node_id: "node1".into(),
            cluster_id: "cluster1".into(),
            binary: Some(b"ELF agent".to_vec()),
            managers: managers.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        }
    }

    fn probe_of(lines: &str) -> Probe {
        Probe::parse(lines)
    }

    #[test]
    fn a_bare_node_gets_binary_unit_config_trust_and_a_start() {
        let (k1, k2) = (key(), key());
        let p = plan(
            &probe_of(
                "arch x86_64\ninit systemd\nfile /etc/swarm-glue/agent.toml -\nactive inactive\n",
            ),
            &expected(&[("m1", k1), ("m2", k2)]),
        )
        .expect("plan");
        assert!(p.copy_binary && p.restart);
        assert_eq!(p.bin_path, LOCAL_BIN);
        let paths: Vec<&str> = p.writes.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                CONFIG_PATH,
                "/etc/swarm-glue/trusted-managers/glue-manager-m1.pub",
                "/etc/swarm-glue/trusted-managers/glue-manager-m2.pub",
                UNIT_PATH,
            ]
        );
        assert!(p.writes[UNIT_PATH].contains("ExecStart=/usr/local/bin/glue-node-agent --config"));
    }

    #[test]
    fn a_node_that_has_everything_needs_nothing() {
        let k1 = key();
        let e = expected(&[("m1", k1)]);
        let trust = trust_file_contents(&k1, "glue-manager m1");
        let text = format!(
            "arch x86_64\ninit systemd\nbin {LOCAL_BIN} {} glue-node-agent 0.0.0\nfile {CONFIG_PATH} {}\nfile {UNIT_PATH} {}\ntrust glue-manager-m1.pub {}\nactive active\npub ed25519 {}\n",
            sha256_hex(b"ELF agent"),
            sha256_hex(agent_config("node1", "cluster1").as_bytes()),
            sha256_hex(agent_unit(LOCAL_BIN).as_bytes()),
            sha256_hex(trust.as_bytes()),
            k1
        );
        let probe = probe_of(&text);
        assert_eq!(probe.agent_key, Some(k1));
        let p = plan(&probe, &e).expect("plan");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "nothing to change");
    }

    #[test]
    fn a_new_manager_key_only_adds_its_trust_file_without_a_restart() {
        let (k1, k2) = (key(), key());
        let trust = trust_file_contents(&k1, "glue-manager m1");
        let text = format!(
            "arch x86_64\ninit systemd\nbin {LOCAL_BIN} {} v\nfile {CONFIG_PATH} {}\nfile {UNIT_PATH} {}\ntrust glue-manager-m1.pub {}\nactive active\n",
            sha256_hex(b"ELF agent"),
            sha256_hex(agent_config("node1", "cluster1").as_bytes()),
            sha256_hex(agent_unit(LOCAL_BIN).as_bytes()),
            sha256_hex(trust.as_bytes()),
        );
        let p = plan(&probe_of(&text), &expected(&[("m1", k1), ("m2", k2)])).expect("plan");
        assert!(!p.restart && !p.copy_binary);
        assert_eq!(p.writes.len(), 1);
        assert!(p
            .writes
            .contains_key("/etc/swarm-glue/trusted-managers/glue-manager-m2.pub"));
    }

    #[test]
    fn a_packaged_agent_of_the_same_version_is_used_as_it_is() {
        let text = format!(
            "arch aarch64\ninit systemd\nbin {PACKAGED_BIN} abc {}\nactive active\n",
            agent_version()
        );
        let mut e = expected(&[]);
        e.binary = None;
        let p = plan(&probe_of(&text), &e).expect("plan");
        assert_eq!(p.bin_path, PACKAGED_BIN);
        assert!(!p.copy_binary && !p.writes.contains_key(UNIT_PATH));
    }

    #[test]
    fn no_systemd_or_no_binary_for_the_architecture_is_a_clear_error() {
        let e = expected(&[]);
        assert_eq!(
            plan(&probe_of("arch x86_64\ninit sh\n"), &e),
            Err(PlanError::NoSystemd("sh".into()))
        );
        let mut e = expected(&[]);
        e.binary = None;
        let err = plan(&probe_of("arch riscv64\ninit systemd\n"), &e).expect_err("no binary");
        assert!(err.to_string().contains("riscv64"), "{err}");
    }

    #[test]
    fn architectures_map_to_debian_names() {
        assert_eq!(debian_arch("x86_64"), Some("amd64"));
        assert_eq!(debian_arch("aarch64"), Some("arm64"));
        assert_eq!(debian_arch("armv7l"), Some("armhf"));
        assert_eq!(debian_arch("mips"), None);
    }

    #[test]
    fn the_install_script_runs_in_sh_and_writes_files_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("glue-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let target = dir
            .join("file with 'quotes'.txt")
            .display()
            .to_string()
            .replace('\'', "");
        let contents = "line 1\n\"quoted\" $HOME `x`\n";
        let mut p = InstallPlan::default();
        p.writes.insert(target.clone(), contents.into());
        let script = install_script(&p, "m1");
        // Only the file-writing part: no lock, no systemd here.
        let body: String = script
            .lines()
            .filter(|l| l.starts_with("put"))
            .collect::<Vec<_>>()
            .join("\n");
        let ok = std::process::Command::new("/bin/sh")
            .args(["-c", &body])
            .status()
            .expect("sh");
        assert!(ok.success());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), contents);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
