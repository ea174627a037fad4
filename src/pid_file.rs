//! The pid file: where it is by default, writing it, removing it on exit, and
//! finding the tollgate it names for `tollgate reload` and `tollgate upgrade`.
//!
//! The default is per topology file, so several tollgates on one machine never
//! share one: `DIR/STEM-HASH.pid` (and `DIR/STEM-HASH.upgrade.sock` for the
//! upgrade socket), where STEM is the file's name without `.yaml` and HASH is
//! taken from its absolute path. DIR is `/run/tollgate` for root, and for other
//! users when it is theirs to write (systemd's `RuntimeDirectory=tollgate`);
//! otherwise `$XDG_RUNTIME_DIR/tollgate`, and failing that `/tmp/tollgate-UID`
//! (made private to the user). Never a directory others can write in.
//!
//! Before it signals the process a pid file names, tollgate checks that the
//! process is a tollgate running the same topology file; a stale or reused pid is
//! an error, never a signal to a stranger.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The system-wide directory of pid files and upgrade sockets.
const SYSTEM_DIR: &str = "/run/tollgate";

/// The default pid file and upgrade socket of the topology file at `config`.
pub fn default_paths(config: &Path) -> (PathBuf, PathBuf) {
    let absolute = absolute(config);
    let stem = absolute
        .file_stem()
        .map_or_else(|| "tollgate".into(), |s| s.to_string_lossy().into_owned());
    let hash = crate::balance::hash64(absolute.as_os_str().as_bytes()) as u32;
    let dir = runtime_dir();
    (
        dir.join(format!("{stem}-{hash:08x}.pid")),
        dir.join(format!("{stem}-{hash:08x}.upgrade.sock")),
    )
}

/// `path` made absolute (symlinks resolved when it exists).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}

fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let system = Path::new(SYSTEM_DIR);
    let ours = std::fs::metadata(system).is_ok_and(|m| m.is_dir() && m.uid() == uid);
    if uid == 0 || ours {
        return system.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tollgate");
    }
    std::env::temp_dir().join(format!("tollgate-{uid}"))
}

/// Makes the directory of `path` when it is missing: private (0700) under /tmp,
/// 0755 elsewhere. A directory under /tmp that someone else owns, or that others
/// may write, is refused.
pub fn prepare_dir(path: &Path) -> anyhow::Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let shared_tmp = dir.starts_with(std::env::temp_dir());
    let mode = if shared_tmp { 0o700 } else { 0o755 };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if shared_tmp {
        let meta = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid(2) has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
            bail!(
                "{} is not a directory of this user's alone; set server.pid_file and server.upgrade_sock",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Writes this process's id to `path` (never through a symlink).
pub fn write(path: &Path) -> anyhow::Result<()> {
    prepare_dir(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("writing pid file {}", path.display()))?;
    writeln!(file, "{}", std::process::id())
        .with_context(|| format!("writing pid file {}", path.display()))
}

/// Removes `path` when it still names this process (after an upgrade it names
/// the new one, which must keep it).
pub fn remove_if_ours(path: &Path) {
    if read_pid(path).is_ok_and(|pid| pid == std::process::id() as i32) {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove pid file {}: {e}", path.display());
        }
    }
}

/// No tollgate runs the topology file: its pid file is missing, or names a
/// process that is gone. `tollgate reload` and `upgrade` exit 3 on it.
#[derive(Debug)]
pub struct NotRunning(pub String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotRunning {}

fn read_pid(path: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        NotRunning(format!(
            "no tollgate is running it: reading pid file {}: {e}",
            path.display()
        ))
    })?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => bail!("pid file {} holds no process id", path.display()),
    }
}

/// The pid in `pid_file`, once checked to be a running tollgate whose topology
/// file is `config`. The errors say what is running instead.
pub(crate) fn running_tollgate(pid_file: &Path, config: &Path) -> anyhow::Result<i32> {
    let pid = read_pid(pid_file)?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) else {
        return Err(NotRunning(format!(
            "pid file {} names process {pid}, which is not running (a stale pid file)",
            pid_file.display()
        ))
        .into());
    };
    // A binary replaced by an upgrade reads `tollgate (deleted)`.
    let exe_name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
    if !exe_name.is_some_and(|n| n == "tollgate" || n == "tollgate (deleted)") {
        bail!(
            "pid file {} names process {pid}, which is {}, not tollgate",
            pid_file.display(),
            exe.display()
        );
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline"))
        .with_context(|| format!("reading the command line of process {pid}"))?;
    let cwd = std::fs::read_link(proc_dir.join("cwd")).unwrap_or_default();
    let args: Vec<OsString> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
        .collect();
    let running = absolute(&cwd.join(config_argument(&args)));
    let asked = absolute(config);
    if running != asked {
        bail!(
            "tollgate process {pid} runs {}, not {}: a reload reads the file the process runs; \
             change that file, or run `tollgate -c {} reload`",
            running.display(),
            asked.display(),
            running.display()
        );
    }
    Ok(pid)
}

/// The topology file in a tollgate command line (`-c FILE`, `--conf FILE`,
/// `--conf=FILE`, `-cFILE`), or the default.
fn config_argument(args: &[OsString]) -> PathBuf {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"-c" || bytes == b"--conf" {
            if let Some(value) = args.next() {
                return PathBuf::from(value);
            }
        } else if let Some(value) = bytes.strip_prefix(b"--conf=") {
            return PathBuf::from(std::ffi::OsStr::from_bytes(value));
        } else if let Some(value) = bytes.strip_prefix(b"-c").filter(|v| !v.is_empty()) {
            return PathBuf::from(std::ffi::OsStr::from_bytes(value));
        }
    }
    PathBuf::from(crate::config::DEFAULT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_topology_file_is_found_in_every_spelling_of_the_flag() {
        for line in [
            &["tollgate", "-c", "/a.yaml"][..],
            &["tollgate", "--conf", "/a.yaml", "-u"],
            &["tollgate", "--conf=/a.yaml"],
            &["tollgate", "-c/a.yaml"],
        ] {
            assert_eq!(
                config_argument(&args(line)),
                PathBuf::from("/a.yaml"),
                "{line:?}"
            );
        }
        assert_eq!(
            config_argument(&args(&["tollgate", "-u"])),
            PathBuf::from(crate::config::DEFAULT_FILE)
        );
    }

    #[test]
    fn defaults_differ_per_topology_file() {
        let (a_pid, a_sock) = default_paths(Path::new("/etc/tollgate/a.yaml"));
        let (b_pid, _) = default_paths(Path::new("/etc/tollgate/b.yaml"));
        assert_ne!(a_pid, b_pid);
        assert!(a_pid.to_string_lossy().ends_with(".pid"));
        assert!(a_sock.to_string_lossy().ends_with(".upgrade.sock"));
        assert!(a_pid
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("a-"));
        assert!(!a_pid.starts_with("/tmp/tollgate.pid"));
    }

    #[test]
    fn a_pid_file_is_removed_only_while_it_names_this_process() {
        let dir = std::env::temp_dir().join(format!("tollgate-pid-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pid");
        write(&path).unwrap();
        remove_if_ours(&path);
        assert!(!path.exists());
        std::fs::write(&path, "1\n").unwrap();
        remove_if_ours(&path);
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_tollgate_on_the_same_file_is_signalled() {
        let dir = std::env::temp_dir().join(format!("tollgate-pid-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pid");
        // This test process is not tollgate.
        write(&path).unwrap();
        let err = running_tollgate(&path, Path::new("/x.yaml")).unwrap_err();
        assert!(err.to_string().contains("not tollgate"), "{err}");
        std::fs::write(&path, "999999999\n").unwrap();
        let err = running_tollgate(&path, Path::new("/x.yaml")).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
        assert!(err.downcast_ref::<NotRunning>().is_some());
        std::fs::remove_file(&path).unwrap();
        let err = running_tollgate(&path, Path::new("/x.yaml")).unwrap_err();
        assert!(err.downcast_ref::<NotRunning>().is_some(), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
