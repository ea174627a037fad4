//! Readiness for a service manager: systemd's notify protocol (`Type=notify`).
//!
//! When `NOTIFY_SOCKET` is set, tollgate sends `READY=1` with its `MAINPID` once
//! every listener of its config is listening in this process, `RELOADING=1` /
//! `READY=1` around a topology reload, and `STOPPING=1` at shutdown. A new
//! process started for a binary upgrade sends its own `MAINPID`, so systemd
//! follows the upgrade (the unit needs `NotifyAccess=all`). Without the variable
//! every call here does nothing.

use crate::listen::Reservation;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notify message (`KEY=VALUE` lines); failures are logged, never fatal.
pub fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, state) {
        log::warn!(
            "cannot notify the service manager at {}: {e}",
            target.to_string_lossy()
        );
    }
}

fn send_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &address)
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(target))
    }
}

/// How long the listeners may take to listen before tollgate says it never will.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

/// Says when this process serves and when it stops: a background service,
/// started with the listeners. Once every address listens it lets their
/// reservation go, logs `listening on ADDR (NODE)` for each, and tells the
/// service manager `READY=1`; at shutdown, `STOPPING=1`.
pub(crate) struct Readiness {
    /// Every address the config listens on, metrics included, still held.
    pub reservation: std::sync::Mutex<Reservation>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Readiness {
    /// Waits for the listeners (never says ready, with an error logged, if one
    /// does not listen within [`LISTEN_DEADLINE`]: the service manager's start
    /// timeout then applies), then waits for shutdown.
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let named = self
            .reservation
            .lock()
            .map(|r| r.named())
            .unwrap_or_default();
        let addresses: Vec<SocketAddr> = named.iter().map(|(_, a)| *a).collect();
        let missing = wait_listening(&addresses, LISTEN_DEADLINE).await;
        if let Ok(mut reservation) = self.reservation.lock() {
            reservation.release();
        }
        if missing.is_empty() {
            for (node, address) in &named {
                log::info!("listening on {address} ({node})");
            }
            ready(&format!("serving on {} listeners", addresses.len()));
        } else {
            log::error!(
                "not listening on {missing:?} after {LISTEN_DEADLINE:?}; not telling the service manager we are ready"
            );
        }
        let _ = shutdown.changed().await;
        send("STOPPING=1");
    }
}

/// `READY=1` with this process as the main one.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nMAINPID={}\nSTATUS={status}",
        std::process::id()
    ));
}

/// Waits until every address in `addresses` has a listening TCP socket owned by
/// this process (read from /proc), checking every 10 ms, at most `deadline`.
/// Returns the addresses still not listening.
pub async fn wait_listening(addresses: &[SocketAddr], deadline: Duration) -> Vec<SocketAddr> {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let listening = own_listening_ports();
        let missing: Vec<SocketAddr> = addresses
            .iter()
            .filter(|a| !listening.contains(&a.port()))
            .copied()
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() >= give_up {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ports of the TCP sockets in LISTEN state whose inode is one of this
/// process's file descriptors.
fn own_listening_ports() -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        ports.extend(listening_ports_in(&text, &inodes));
    }
    ports
}

/// Parses a /proc/net/tcp table: the local ports of LISTEN (state 0A) rows
/// whose inode is in `inodes`.
fn listening_ports_in<'a>(
    table: &'a str,
    inodes: &'a HashSet<u64>,
) -> impl Iterator<Item = u16> + 'a {
    table.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.contains(&inode.parse::<u64>().ok()?) {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_rows_of_own_inodes_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 100 0 0 10 0\n\
   2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n";
        let inodes: HashSet<u64> = [111].into_iter().collect();
        let ports: Vec<u16> = listening_ports_in(table, &inodes).collect();
        assert_eq!(ports, vec![0x1F90]);
    }

    #[tokio::test]
    async fn sees_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert!(wait_listening(&[address], Duration::from_secs(2))
            .await
            .is_empty());
        drop(listener);
        let missing = wait_listening(&[address], Duration::from_millis(50)).await;
        assert_eq!(missing, vec![address]);
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("tollgate-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
