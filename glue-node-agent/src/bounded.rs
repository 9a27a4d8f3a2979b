//! Runs a helper program (`iptables-restore`, `ss`, `conntrack`) with a time
//! limit: one that hangs is killed and reported, instead of holding the
//! agent's apply lock, and with it every later set, for as long as it hangs.
//! (No hang was measured; the limit makes sure one cannot hold later sets back.)

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one helper program may run.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Why a helper program gave no output, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    #[error("cannot run {program}: {message}")]
    Start { program: String, message: String },
    #[error("{program} did not finish within {}s and was killed", .limit.as_secs_f64())]
    Killed { program: String, limit: Duration },
    #[error("waiting for {program}: {message}")]
    Wait { program: String, message: String },
    #[error("writing to {program}: {message}")]
    Write { program: String, message: String },
}

/// Runs `cmd` with `input` on its stdin; its output, or why there is none
/// (it could not start, or was killed after `limit`), naming the program.
pub fn output(
    mut cmd: Command,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<Output, HelperError> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HelperError::Start {
            program: name.clone(),
            message: e.to_string(),
        })?;
    // Readers first: a program writing more than a pipe holds (a long
    // `conntrack -L`) must not block while its input is written or while
    // it is waited for.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    // Written from a thread too, so a program that never reads its input
    // is still bounded; stdin is dropped at the end: end of input.
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || stdin.write_all(&bytes)))
        }
        _ => None,
    };
    let status = wait(&mut child, &name, limit)?;
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    // A program that failed before reading all its input says why itself.
    match writer.map(|w| w.join()) {
        Some(Ok(Err(e))) if output.status.success() => Err(HelperError::Write {
            program: name,
            message: e.to_string(),
        }),
        _ => Ok(output),
    }
}

/// Waits for `child` to exit; kills it once `limit` is up.
fn wait(
    child: &mut std::process::Child,
    name: &str,
    limit: Duration,
) -> Result<std::process::ExitStatus, HelperError> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Killed {
                    program: name.to_string(),
                    limit,
                });
            }
            Err(e) => {
                return Err(HelperError::Wait {
                    program: name.to_string(),
                    message: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_hangs_is_killed_and_named() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let e = output(cmd, None, Duration::from_millis(200)).expect_err("killed");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            "sleep did not finish within 0.2s and was killed"
        );
    }

    #[test]
    fn input_goes_in_and_a_long_output_comes_out_whole() {
        let input = "x".repeat(300_000);
        let out = output(
            Command::new("cat"),
            Some(input.as_bytes()),
            Duration::from_secs(10),
        )
        .expect("cat runs");
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 300_000);
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = output(
            Command::new("no-such-program-here"),
            None,
            Duration::from_secs(1),
        )
        .expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot run no-such-program-here:"),
            "{e}"
        );
    }
}
