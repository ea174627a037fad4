//! Reopening the access log file on SIGUSR1, as nginx does: logrotate moves
//! the file away, then signals; lines go on to a new file at the same path.
//!
//! The signal only moves a generation counter; the writer thread (see
//! `write_lines`) sees it change within one write interval, writes what it
//! holds to the old file and opens the path again. Nothing on the request
//! path reads the counter.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every access log writer of this process to reopen its file.
pub fn request() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// How many reopens have been asked for so far.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The background service that asks for a reopen on each SIGUSR1.
pub(crate) struct ReopenOnUsr1;

#[async_trait]
impl BackgroundService for ReopenOnUsr1 {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut signals = match signal(SignalKind::user_defined1()) {
            Ok(signals) => signals,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log is not reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = signals.recv() => {
                    log::info!("SIGUSR1: reopening the access log");
                    request();
                }
            }
        }
    }
}
