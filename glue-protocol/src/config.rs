//! Reading a program's TOML settings: a missing file at the default path
//! means every default; one named on the command line must exist.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The settings in `path`; `explicit`: the user named the file.
pub fn load<T: DeserializeOwned + Default>(path: &Path, explicit: bool) -> Result<T, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(T::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        port: u16,
    }

    #[test]
    fn a_missing_default_file_is_every_default_and_a_named_one_an_error() {
        let missing = Path::new("/nonexistent/swarm-glue.toml");
        assert_eq!(
            load::<Settings>(missing, false).expect("defaults"),
            Settings::default()
        );
        let e = load::<Settings>(missing, true).expect_err("named");
        assert!(
            e.to_string().starts_with("/nonexistent/swarm-glue.toml: "),
            "{e}"
        );
    }

    #[test]
    fn a_bad_setting_is_named_with_its_file() {
        let path = std::env::temp_dir().join(format!("glue-config-{}.toml", std::process::id()));
        std::fs::write(&path, "port = 7950\ncolour = \"red\"\n").expect("write");
        let e = load::<Settings>(&path, true).expect_err("unknown field");
        assert!(e.to_string().contains("colour"), "{e}");
        std::fs::write(&path, "port = 7951\n").expect("write");
        assert_eq!(
            load::<Settings>(&path, true).expect("ok"),
            Settings { port: 7951 }
        );
        let _ = std::fs::remove_file(&path);
    }
}
