//! The UDP socket of an `http3` listener across a binary upgrade: it is
//! passed to the new process with the TCP listening sockets (pingora's table
//! of listening fds, under [`fd_key`]), so the address never stops
//! answering: no packet meets a closed port. The old process sends every
//! connection a GOAWAY when its handover ends and serves their requests in
//! flight to their end, while new connections go to the new process.
//!
//! The handover begins with the SIGQUIT that makes pingora pass its sockets
//! ([`started`]): from then on, the old process leaves new connections to
//! the new one and sends its own a GOAWAY at once, so that it stops reading
//! the shared socket as early as it can. Packets are not routed by
//! connection ID between the two: while both read the socket, a packet of
//! one's connection read by the other is dropped (and sent again by its
//! sender).

use pingora::server::ListenFds;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use tokio::signal::unix::{signal, SignalKind};

/// The key of a listener's UDP socket in pingora's table of listening fds
/// (TCP sockets are keyed by their bare address).
pub(super) fn fd_key(address: SocketAddr) -> String {
    format!("udp://{address}")
}

/// The socket of the listener at `address`: the one a previous process
/// passed on (in `fds`), else `reserved`, else a new one; entered in `fds`
/// so that it passes to the next process in turn.
pub(super) fn socket(
    address: SocketAddr,
    reserved: Option<UdpSocket>,
    fds: Option<&ListenFds>,
) -> std::io::Result<UdpSocket> {
    let key = fd_key(address);
    let passed = fds.and_then(|fds| fds.lock().get(&key).copied());
    let socket = match (passed, reserved) {
        // SAFETY: the fd came from the previous process's table of listening
        // sockets under this listener's UDP key: an open UDP socket this
        // process owns, used by nothing else here. The table keeps its
        // number only to pass it on, which leaves it open.
        (Some(fd), _) => unsafe { UdpSocket::from_raw_fd(fd) },
        (None, Some(socket)) => socket,
        (None, None) => UdpSocket::bind(address)?,
    };
    if passed.is_none() {
        if let Some(fds) = fds {
            fds.lock().add(key, socket.as_raw_fd());
        }
    }
    Ok(socket)
}

/// Resolves when a binary upgrade's handover begins (SIGQUIT, on which
/// pingora passes the listening sockets to the new process); never, when
/// the signal cannot be watched.
pub(super) async fn started() {
    match signal(SignalKind::quit()) {
        Ok(mut quit) => {
            quit.recv().await;
        }
        Err(e) => {
            log::warn!("cannot watch SIGQUIT; HTTP/3 connections drain at shutdown only: {e}");
            std::future::pending::<()>().await;
        }
    }
}
