//! The memory of the healthy swarm: what recovery works from when the swarm
//! is dead and nothing can be asked. Written atomically (write, fsync,
//! rename) and only when something changed.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use glue_protocol::files::write_atomic;
use glue_protocol::PublicKey;
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub format: u32,
    pub cluster_id: String,
    /// This manager's node ID.
    pub node_id: String,
    /// The swarm root CA certificate (PEM): managers prove their new
    /// addresses with certificates chaining to it.
    pub root_ca_pem: String,
    pub nodes: BTreeMap<String, NodeMemory>,
    /// Every registered glue-manager: node ID → its public keys.
    pub managers: BTreeMap<String, ManagerKeys>,
    /// Unix time of the last change.
    pub changed_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMemory {
    pub hostname: String,
    pub role: Role,
    pub availability: String,
    /// The node's address as the swarm sees it.
    pub addr: String,
    /// A manager's raft address (host:port).
    pub manager_addr: Option<String>,
    pub arch: String,
    pub agent: Option<PinnedAgent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedAgent {
    pub endpoint: SocketAddr,
    /// Read over SSH (whose host key is pinned) and checked on every reply.
    pub key: PublicKey,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerKeys {
    pub signing_key: PublicKey,
    pub ssh_key: String,
}

impl Memory {
    /// Equal apart from the time of the last change.
    pub fn same_as(&self, other: &Memory) -> bool {
        Memory {
            changed_at: 0,
            ..self.clone()
        } == Memory {
            changed_at: 0,
            ..other.clone()
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Fresh,
    Existing,
    /// The file could not be read as a memory; it was moved here and the
    /// memory is rebuilt from the live swarm.
    CorruptMovedTo(PathBuf, String),
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MemoryError {
    pub path: PathBuf,
    pub message: String,
}

pub struct MemoryStore {
    path: PathBuf,
}

impl MemoryStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MemoryStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<(Memory, Loaded), MemoryError> {
        let err = |message: String| MemoryError {
            path: self.path.clone(),
            message,
        };
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Memory::default(), Loaded::Fresh))
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let why = match serde_json::from_slice::<Memory>(&bytes) {
            Ok(m) if m.format == FORMAT => return Ok((m, Loaded::Existing)),
            Ok(m) => format!("format {} is not {FORMAT}", m.format),
            Err(e) => e.to_string(),
        };
        let aside = self
            .path
            .with_extension(format!("corrupt-{}", glue_protocol::clock::unix_now()));
        fs::rename(&self.path, &aside)
            .map_err(|e| err(format!("{why}; moving it aside failed: {e}")))?;
        Ok((Memory::default(), Loaded::CorruptMovedTo(aside, why)))
    }

    /// Reads without changing anything (for `glue-manager status`).
    pub fn peek(&self) -> Result<Option<Memory>, MemoryError> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| MemoryError {
                    path: self.path.clone(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MemoryError {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }

    pub fn save(&self, memory: &Memory) -> Result<(), MemoryError> {
        let bytes = serde_json::to_vec_pretty(memory).map_err(|e| MemoryError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes).map_err(|e| MemoryError {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("glue-memory-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("dir");
        d
    }

    fn sample() -> Memory {
        let mut m = Memory {
            format: FORMAT,
            cluster_id: "c1".into(),
            node_id: "m1".into(),
            root_ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            changed_at: 5,
            ..Memory::default()
        };
        m.nodes.insert(
            "w1".into(),
            NodeMemory {
                hostname: "lab-w1".into(),
                role: Role::Worker,
                availability: "active".into(),
                addr: "10.0.0.5".into(),
                manager_addr: None,
                arch: "x86_64".into(),
                agent: None,
            },
        );
        m
    }

    #[test]
    fn memory_survives_a_round_trip() {
        let d = dir("trip");
        let store = MemoryStore::new(d.join("memory.json"));
        assert_eq!(store.load().expect("fresh").1, Loaded::Fresh);
        store.save(&sample()).expect("save");
        assert_eq!(store.load().expect("load"), (sample(), Loaded::Existing));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_memory_is_moved_aside_and_reported_with_its_path() {
        let d = dir("corrupt");
        let path = d.join("memory.json");
        fs::write(&path, b"{\"format\": 1, \"clus").expect("write");
        let (m, how) = MemoryStore::new(&path).load().expect("load");
        assert_eq!(m, Memory::default());
        let Loaded::CorruptMovedTo(aside, why) = how else {
            panic!("not reported: {how:?}")
        };
        assert!(aside.exists() && !path.exists(), "{aside:?}");
        assert!(!why.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_time_of_change_alone_is_no_change() {
        let a = sample();
        let b = Memory {
            changed_at: 99,
            ..sample()
        };
        assert!(a.same_as(&b));
        let mut c = sample();
        c.cluster_id = "c2".into();
        assert!(!a.same_as(&c));
    }
}
