//! Names what `tollgate --version` prints beside the version: the git commit
//! the binary is built from (`TOLLGATE_GIT_COMMIT`; from the environment when
//! set, as a build outside a checkout sets it, else `git rev-parse`, else
//! `unknown`) and the pingora version Cargo.lock pins (`TOLLGATE_PINGORA_VERSION`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TOLLGATE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let commit = std::env::var("TOLLGATE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TOLLGATE_GIT_COMMIT={}", commit.trim());
    let pingora = std::fs::read_to_string("Cargo.lock")
        .ok()
        .and_then(|lock| locked_version(&lock, "pingora"))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TOLLGATE_PINGORA_VERSION={pingora}");
}

/// The short hash of HEAD, with the files that move it watched so that a new
/// commit rebuilds with its hash.
fn git_commit() -> Option<String> {
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            watch(&file);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(file) = git(&["rev-parse", "--git-path", &branch]) {
            watch(&file);
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn watch(file: &str) {
    if Path::new(file).exists() {
        println!("cargo:rerun-if-changed={file}");
    }
}

/// What `git ARGS` prints, when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// The version of `package` in a Cargo.lock.
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let entry = format!("name = \"{package}\"\n");
    let after = &lock[lock.find(&entry)? + entry.len()..];
    let version = after.strip_prefix("version = \"")?;
    Some(version[..version.find('"')?].to_string())
}
