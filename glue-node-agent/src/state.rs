//! What the agent must remember across restarts: the desired rewrite set and,
//! per issuer, the highest sequence accepted (so a replay fails after a
//! restart too). Written atomically: temporary file, fsync, rename, fsync dir.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{PublicKey, Rewrite};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub generation: u64,
    pub rewrites: Vec<Rewrite>,
    /// Highest accepted sequence per issuer key (base64).
    pub last_seq: BTreeMap<String, u64>,
    /// Old addresses whose stale connections still have to be ended: kept
    /// until that succeeded, so a failed reset is retried, also after a restart.
    #[serde(default)]
    pub pending_reset: Vec<std::net::Ipv4Addr>,
}

impl AgentState {
    pub fn last_seq_of(&self, key: &PublicKey) -> u64 {
        self.last_seq.get(&key.to_base64()).copied().unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: the state cannot be encoded: {message}")]
    Encode { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] glue_protocol::files::WriteError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a load went, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Fresh,
    Existing,
    /// The file was unreadable; it was moved here and an empty state used.
    CorruptMovedTo(PathBuf),
}

pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state; a corrupt file is moved aside and an empty, safe state
    /// (no rewrites) is returned, with where the bad file went.
    pub fn load(&self) -> Result<(AgentState, Loaded), StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((AgentState::default(), Loaded::Fresh))
            }
            Err(e) => return Err(io(&self.path)(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok((state, Loaded::Existing)),
            Err(_) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = self.path.with_extension(format!("corrupt-{stamp}"));
                fs::rename(&self.path, &aside).map_err(io(&self.path))?;
                Ok((AgentState::default(), Loaded::CorruptMovedTo(aside)))
            }
        }
    }

    /// Reads the state without repairing anything (for `status`); absent
    /// means empty, corrupt is an error naming the file.
    pub fn peek(&self) -> Result<AgentState, StateError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(write_atomic(&self.path, &bytes)?)
    }
}

pub use glue_protocol::files::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "glue-state-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn state_survives_a_round_trip_and_starts_fresh_when_absent() {
        let d = dir();
        let store = StateStore::new(d.join("state.json"));
        assert_eq!(store.load().expect("load").1, Loaded::Fresh);
        let mut s = AgentState {
            generation: 4,
            ..AgentState::default()
        };
        s.last_seq.insert("k".into(), 9);
        store.save(&s).expect("save");
        assert_eq!(store.load().expect("load"), (s, Loaded::Existing));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_state_file_is_moved_aside_and_replaced_by_an_empty_state() {
        let d = dir();
        let path = d.join("state.json");
        fs::write(&path, b"{\"generation\": 3, \"rewr").expect("write");
        let (state, how) = StateStore::new(&path).load().expect("load");
        assert_eq!(state, AgentState::default());
        let Loaded::CorruptMovedTo(aside) = how else {
            panic!("corrupt file not reported: {how:?}")
        };
        assert!(aside.exists() && !path.exists());
        let _ = fs::remove_dir_all(&d);
    }
}
