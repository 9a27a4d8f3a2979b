//! What this node's dockerd holds as its own addresses, read for the
//! managers: after a move, dockerd keeps the gossip and VXLAN address it
//! took when it started (`Swarm.NodeAddr`) and any address pinned in the
//! swarm's state file, so a manager must know which nodes still need a
//! dockerd restart before it takes the rewrites away (docs/recovery.md).
//!
//! Reading only: `GET /info` on the Docker socket and the state file. A
//! reading is made off the request path (dockerd may not answer for seconds
//! while the swarm has no leader) and kept; a status carries the last one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::DockerdAddrs;

pub use glue_protocol::STATE_FIELDS;
/// `GET /info` may take this long before the reading says dockerd did not answer.
const INFO_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read from dockerd.
const MAX_INFO_BYTES: u64 = 1 << 20;
/// A kept reading older than this is refreshed when a status is asked.
const FRESH_MS: u64 = 1500;

/// Why dockerd's addresses could not be read, naming the socket or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerdError {
    #[error("GET /info on {}: {message}", .socket.display())]
    Info { socket: PathBuf, message: String },
    #[error("/info is not JSON: {0}")]
    InfoNotJson(String),
    #[error("/info names no DockerRootDir")]
    NoRootDir,
    #[error("{}: {message}", .path.display())]
    State { path: PathBuf, message: String },
}

/// Where dockerd's addresses are read from.
pub trait DockerdSource: Send + Sync {
    /// `Swarm.NodeAddr` and the state file's address fields, or why not.
    fn read(&self) -> Result<(String, BTreeMap<String, String>), DockerdError>;
}

/// The real source: the Docker socket, and the state file under the root
/// directory dockerd names.
pub struct DockerSocket {
    pub socket: PathBuf,
}

impl DockerdSource for DockerSocket {
    fn read(&self) -> Result<(String, BTreeMap<String, String>), DockerdError> {
        let body = get_info(&self.socket)?;
        let (root, node_addr) = parse_info(&body)?;
        let path = Path::new(&root).join("swarm/docker-state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => parse_state(&bytes).map_err(|e| DockerdError::State {
                path: path.clone(),
                message: e.to_string(),
            })?,
            // Not in a swarm (or left it): nothing pinned.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(DockerdError::State {
                    path,
                    message: e.to_string(),
                })
            }
        };
        Ok((node_addr, state))
    }
}

fn get_info(socket: &Path) -> Result<String, DockerdError> {
    let fail = |message: String| DockerdError::Info {
        socket: socket.to_path_buf(),
        message,
    };
    let what = |e: std::io::Error| fail(e.to_string());
    let mut s = UnixStream::connect(socket).map_err(what)?;
    s.set_read_timeout(Some(INFO_TIMEOUT)).map_err(what)?;
    s.set_write_timeout(Some(INFO_TIMEOUT)).map_err(what)?;
    // HTTP/1.0: dockerd answers without chunks and closes the connection.
    s.write_all(b"GET /info HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(what)?;
    let mut raw = Vec::new();
    s.take(MAX_INFO_BYTES).read_to_end(&mut raw).map_err(what)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no HTTP answer".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(fail(status.to_string()));
    }
    Ok(body.to_string())
}

/// dockerd's root directory and `Swarm.NodeAddr` from the body of `/info`.
pub fn parse_info(body: &str) -> Result<(String, String), DockerdError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| DockerdError::InfoNotJson(e.to_string()))?;
    let root = v["DockerRootDir"]
        .as_str()
        .ok_or(DockerdError::NoRootDir)?
        .to_string();
    let node_addr = v["Swarm"]["NodeAddr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((root, node_addr))
}

/// The non-empty address fields of `docker-state.json`.
pub fn parse_state(bytes: &[u8]) -> Result<BTreeMap<String, String>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(STATE_FIELDS
        .iter()
        .filter_map(|f| {
            let s = v[*f].as_str().filter(|s| !s.is_empty())?;
            Some((f.to_string(), s.to_string()))
        })
        .collect())
}

/// The last reading, refreshed in the background when a status finds it old.
pub struct DockerdWatch {
    source: Arc<dyn DockerdSource>,
    last: Arc<Mutex<Option<DockerdAddrs>>>,
    reading: Arc<AtomicBool>,
}

impl DockerdWatch {
    pub fn new(source: Arc<dyn DockerdSource>) -> DockerdWatch {
        DockerdWatch {
            source,
            last: Arc::new(Mutex::new(None)),
            reading: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The last reading (none yet right after start); starts a new one
    /// when it is older than 1.5 s and none is under way.
    pub fn current(&self, now_ms: u64) -> Option<DockerdAddrs> {
        let last = self.last.lock().ok().and_then(|l| l.clone());
        let old = last
            .as_ref()
            .is_none_or(|l| now_ms.saturating_sub(l.read_ms) > FRESH_MS);
        if old && !self.reading.swap(true, Ordering::SeqCst) {
            let (source, keep, reading) =
                (self.source.clone(), self.last.clone(), self.reading.clone());
            std::thread::spawn(move || {
                let reading_now = Self::read_now(source.as_ref());
                if let Ok(mut k) = keep.lock() {
                    *k = Some(reading_now);
                }
                reading.store(false, Ordering::SeqCst);
            });
        }
        last
    }

    /// A reading made now, on this thread.
    pub fn read_now(source: &dyn DockerdSource) -> DockerdAddrs {
        let (node_addr, state, error) = match source.read() {
            Ok((n, s)) => (n, s, None),
            Err(e) => (String::new(), BTreeMap::new(), Some(e.to_string())),
        };
        DockerdAddrs {
            read_ms: crate::unix_ms(),
            node_addr,
            state,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_gives_the_root_and_the_address_dockerd_advertises() {
        let body = r#"{"ID":"x","DockerRootDir":"/var/lib/docker","Swarm":{"NodeID":"n","NodeAddr":"10.0.1.5","LocalNodeState":"active"}}"#;
        assert_eq!(
            parse_info(body),
            Ok(("/var/lib/docker".into(), "10.0.1.5".into()))
        );
        // Not in a swarm: no address, not an error.
        let body = r#"{"DockerRootDir":"/d","Swarm":{"NodeAddr":"","LocalNodeState":"inactive"}}"#;
        assert_eq!(parse_info(body), Ok(("/d".into(), String::new())));
        assert!(matches!(
            parse_info("<html>"),
            Err(DockerdError::InfoNotJson(_))
        ));
        assert_eq!(parse_info("{}"), Err(DockerdError::NoRootDir));
    }

    #[test]
    fn the_state_file_gives_only_the_addresses_it_sets() {
        let state = br#"{"LocalAddr":"","RemoteAddr":"10.0.1.1:2377","ListenAddr":"10.0.1.2:2377","AdvertiseAddr":"10.0.1.2","DataPathAddr":"eth0","JoinInProgress":false}"#;
        let got = parse_state(state).expect("state");
        assert_eq!(
            got,
            BTreeMap::from([
                ("AdvertiseAddr".to_string(), "10.0.1.2".to_string()),
                ("DataPathAddr".to_string(), "eth0".to_string()),
                ("ListenAddr".to_string(), "10.0.1.2:2377".to_string()),
            ])
        );
        assert!(parse_state(b"{trunc").is_err());
    }

    struct Fixed(Mutex<u32>);

    impl DockerdSource for Fixed {
        fn read(&self) -> Result<(String, BTreeMap<String, String>), DockerdError> {
            let mut n = self.0.lock().expect("lock");
            *n += 1;
            Err(DockerdError::Info {
                socket: PathBuf::from("/fixed"),
                message: format!("reading {n}"),
            })
        }
    }

    #[test]
    fn a_status_gets_the_kept_reading_and_an_old_one_is_read_again_in_the_background() {
        let watch = DockerdWatch::new(Arc::new(Fixed(Mutex::new(0))));
        // Nothing yet: the first status starts a reading.
        assert_eq!(watch.current(crate::unix_ms()), None);
        let mut seen = None;
        for _ in 0..200 {
            seen = watch.current(crate::unix_ms()).and_then(|r| r.error);
            if seen.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.as_deref(), Some("GET /info on /fixed: reading 1"));
        // Fresh: kept as it is.
        let again = watch.current(crate::unix_ms()).and_then(|r| r.error);
        assert_eq!(again.as_deref(), Some("GET /info on /fixed: reading 1"));
    }
}
