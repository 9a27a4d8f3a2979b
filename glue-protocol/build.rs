//! Records the git commit the programs are built from, for `--version`.
//! `SWARM_GLUE_COMMIT` wins (a build from a tarball or in a container has no
//! .git); otherwise `git rev-parse`; otherwise "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SWARM_GLUE_COMMIT");
    let git = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    for f in ["HEAD", "index"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed={}", git.join(f).display());
        }
    }
    let commit = std::env::var("SWARM_GLUE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()?;
            let c = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !c.is_empty()).then_some(c)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SWARM_GLUE_COMMIT={commit}");
}
