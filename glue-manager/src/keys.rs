//! This manager's keys, made at first start and kept 0600 in the state
//! directory: the Ed25519 key that signs agent commands, and the SSH key that
//! installs agents. Neither is ever logged.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use glue_protocol::files::write_atomic;
use glue_protocol::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("ssh-keygen for {path}: {message}")]
    SshKeygen { path: PathBuf, message: String },
}

fn file_err(path: &Path, e: impl ToString) -> KeyError {
    KeyError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Loads the signing key, or makes one if there is none. A key file that
/// cannot be read as a key is an error, never silently replaced: agents trust
/// the old key.
pub fn signing_key(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    match fs::read(path) {
        Ok(bytes) => SigningKey::from_pkcs8(&bytes)
            .map(|k| (k, false))
            .map_err(|e| {
                file_err(
                    path,
                    format!("not a usable signing key ({e}); move it away to make a new one"),
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate().map_err(|e| file_err(path, e))?;
            write_atomic(path, key.pkcs8()).map_err(|e| file_err(path, e))?;
            Ok((key, true))
        }
        Err(e) => Err(file_err(path, e)),
    }
}

/// The SSH key pair (ed25519, OpenSSH format): returns the public key line.
pub fn ssh_key(path: &Path, comment: &str) -> Result<(String, bool), KeyError> {
    let public = path.with_extension("pub");
    let mut made = false;
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(dir, e))?;
        let _ = fs::remove_file(&public);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path)
            .output()
            .map_err(|e| KeyError::SshKeygen {
                path: path.to_path_buf(),
                message: format!("cannot run ssh-keygen (is openssh-client installed?): {e}"),
            })?;
        if !out.status.success() {
            return Err(KeyError::SshKeygen {
                path: path.to_path_buf(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        made = true;
    }
    let line = fs::read_to_string(&public).map_err(|e| file_err(&public, e))?;
    let line = line.trim().to_string();
    if !line.starts_with("ssh-ed25519 ") {
        return Err(file_err(&public, "not an ssh-ed25519 public key"));
    }
    Ok((line, made))
}

/// The public key line without its comment: what authorized_keys is searched for.
pub fn ssh_key_material(line: &str) -> &str {
    let mut parts = line.splitn(3, ' ');
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return line;
    };
    &line[..kind.len() + 1 + b64.len()]
}

/// Sequence numbers of this manager's commands. Agents accept each number of
/// an issuer once and only growing ones, so they must grow across restarts:
/// they follow the clock (microseconds) and never fall below a floor that is
/// persisted ahead of use, one write per minute at most.
pub struct Sequence {
    path: PathBuf,
    inner: Mutex<(u64, u64)>, // (last issued, persisted floor)
}

const RESERVE_US: u64 = 60_000_000;

impl Sequence {
    pub fn open(path: &Path) -> Result<Sequence, KeyError> {
        let floor = match fs::read_to_string(path) {
            Ok(t) => t.trim().parse::<u64>().map_err(|_| {
                file_err(
                    path,
                    "not a sequence number; remove it only if no agent was ever told anything",
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(file_err(path, e)),
        };
        Ok(Sequence {
            path: path.to_path_buf(),
            inner: Mutex::new((floor, floor)),
        })
    }

    pub fn next(&self) -> Result<u64, KeyError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| file_err(&self.path, "sequence lock poisoned"))?;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = (g.0 + 1).max(now_us);
        if seq >= g.1 {
            let floor = seq + RESERVE_US;
            write_atomic(&self.path, floor.to_string().as_bytes())
                .map_err(|e| file_err(&self.path, e))?;
            g.1 = floor;
        }
        g.0 = seq;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("glue-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn the_signing_key_is_made_once_0600_and_then_reused() {
        let d = dir("sign");
        let p = d.join("signing.key");
        let (a, made) = signing_key(&p).expect("made");
        assert!(made);
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let (b, made) = signing_key(&p).expect("loaded");
        assert!(!made);
        assert_eq!(a.public(), b.public());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_signing_key_is_an_error_naming_the_file_not_a_new_key() {
        let d = dir("bad");
        let p = d.join("signing.key");
        fs::write(&p, b"garbage").expect("write");
        let err = signing_key(&p)
            .map(|_| ())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("signing.key"), "{err}");
        assert_eq!(fs::read(&p).expect("kept"), b"garbage");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn sequence_numbers_grow_across_a_restart_even_when_the_clock_goes_back() {
        let d = dir("seq");
        let p = d.join("seq");
        fs::write(&p, (u64::MAX / 2).to_string()).expect("floor from the future");
        let s = Sequence::open(&p).expect("open");
        let a = s.next().expect("a");
        let b = s.next().expect("b");
        assert!(a > u64::MAX / 2 && b > a);
        let again = Sequence::open(&p).expect("reopen").next().expect("c");
        assert!(again > b, "{again} after {b}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn key_material_drops_the_comment() {
        assert_eq!(
            ssh_key_material("ssh-ed25519 AAAAC3Nz swarm-glue manager abc"),
            "ssh-ed25519 AAAAC3Nz"
        );
    }
}
