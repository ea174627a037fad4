//! Binary upgrade without a dropped connection.
//!
//! Two ways in, one handover:
//! - By hand, as pingora does it: start the new binary with `-u` (it waits on
//!   `server.upgrade_sock`), then send SIGQUIT to the old process.
//! - On SIGUSR2 (what `tollgate upgrade` and `systemctl kill -s USR2` send), the
//!   running process starts the binary at the path it was started from, with its
//!   own arguments plus `-u`, waits until that process opens the upgrade socket,
//!   then sends itself SIGQUIT. The new process is a child of the old, so it stays
//!   in the service's cgroup under systemd; if it fails before taking over (a bad
//!   config, a broken binary) the old process logs why and keeps serving.
//!
//! On SIGQUIT pingora hands the listening sockets over, keeps accepting on them
//! for 5 s, then stops accepting and drops connections that wait for a request.
//! From the SIGQUIT on, every answer carries `Connection: close`
//! ([`handing_over`]), so clients leave the old process on their own during those
//! 5 s instead of finding an idle keep-alive connection dropped under them.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// True once this process has started handing its sockets to a new one: answers
/// must then close their connection.
pub(crate) fn handing_over() -> bool {
    HANDING_OVER.load(Ordering::Relaxed)
}

fn start_handover() {
    HANDING_OVER.store(true, Ordering::Relaxed);
}

/// How to start this same program again: the path it was started from (not the
/// file it resolved to, so a binary replaced at that path is the one started),
/// its arguments and working directory.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub dir: PathBuf,
}

impl Launch {
    /// This process's own launch, read from its arguments now (call it before
    /// anything changes the working directory).
    pub(crate) fn of_this_process() -> std::io::Result<Launch> {
        let dir = std::env::current_dir()?;
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        let program = if argv0.to_string_lossy().contains('/') {
            dir.join(argv0)
        } else {
            std::env::current_exe()?
        };
        Ok(Launch {
            program,
            args: args.collect(),
            dir,
        })
    }

    /// The same launch as an upgrade: `-u` added once.
    fn as_upgrade(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(
                self.args
                    .iter()
                    .filter(|a| a.as_os_str() != "-u" && a.as_os_str() != "--upgrade"),
            )
            .arg("-u")
            .current_dir(&self.dir);
        command
    }
}

/// Listens for SIGUSR2 (start an upgrade) and SIGQUIT (a handover has begun).
pub(crate) struct Upgrader {
    pub launch: Launch,
    /// The addresses this process listens on, passed to the new one (see
    /// `listen::BOUND_ADDRESSES`), so listeners on port 0 keep their ports.
    pub bound_addresses: String,
    pub upgrade_sock: PathBuf,
    /// How long the new process may take to open the upgrade socket.
    pub start_timeout: Duration,
}

impl Upgrader {
    /// Starts the new process and waits for it to open the upgrade socket.
    /// Returns an error, with the new process stopped, when it exits or does not
    /// get there in time.
    async fn start_successor(&self) -> Result<u32, String> {
        // A socket left by an earlier upgrade would look like the new process's.
        let _ = std::fs::remove_file(&self.upgrade_sock);
        let mut command = self.launch.as_upgrade();
        command.env(crate::listen::BOUND_ADDRESSES, &self.bound_addresses);
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start {}: {e}",
                self.launch.program.to_string_lossy()
            )
        })?;
        let pid = child.id();
        let give_up = tokio::time::Instant::now() + self.start_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "the new process ({pid}) exited before taking over: {status}"
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(stop(child, format!("cannot watch the new process: {e}"))),
            }
            if self.upgrade_sock.exists() {
                return Ok(pid);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(stop(
                    child,
                    format!(
                        "the new process ({pid}) did not open {} within {:?}",
                        self.upgrade_sock.display(),
                        self.start_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn stop(mut child: Child, reason: String) -> String {
    let _ = child.kill();
    let _ = child.wait();
    reason
}

#[async_trait]
impl BackgroundService for Upgrader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (mut upgrades, mut quits) = match (
            signal(SignalKind::user_defined2()),
            signal(SignalKind::quit()),
        ) {
            (Ok(u), Ok(q)) => (u, q),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("cannot listen for SIGUSR2/SIGQUIT, upgrades need -u by hand: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = quits.recv() => start_handover(),
                _ = upgrades.recv() => {
                    if handing_over() {
                        log::warn!("SIGUSR2 ignored: an upgrade is already under way");
                        continue;
                    }
                    log::info!(
                        "upgrade: starting {} -u",
                        self.launch.program.to_string_lossy()
                    );
                    match self.start_successor().await {
                        Ok(pid) => {
                            log::info!("upgrade: process {pid} is waiting for the sockets; handing over");
                            start_handover();
                            // SAFETY: kill(2) on this process's own pid.
                            unsafe { libc::kill(libc::getpid(), libc::SIGQUIT) };
                        }
                        Err(reason) => {
                            log::error!("upgrade aborted, this process keeps serving: {reason}");
                        }
                    }
                }
            }
        }
    }
}

/// How long `tollgate upgrade` waits for the new process to take over: the
/// time the old process gives it to open the upgrade socket, and a margin for
/// the handover.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(40);

/// Waits until `pid_file` names a tollgate on `config` other than `old` (the
/// new process writes it once it holds the sockets); returns its pid. An error
/// when `timeout` passes first: the old process then logs why it keeps serving.
pub fn wait_for_successor(
    pid_file: &std::path::Path,
    config: &std::path::Path,
    old: i32,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let give_up = std::time::Instant::now() + timeout;
    loop {
        match crate::pid_file::running_tollgate(pid_file, config) {
            Ok(pid) if pid != old => return Ok(pid),
            _ if std::time::Instant::now() >= give_up => anyhow::bail!(
                "no new process took over from process {old} within {timeout:?}; \
                 it keeps serving (its log says why: `upgrade aborted`)"
            ),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
