//! Topology reload: on SIGHUP (and so `tollgate reload` and systemd's
//! ExecReload), the file is read and validated in full, compiled with the live
//! state of backends that stay, and swapped in whole. Requests in flight finish on
//! the topology they started with; new ones take the new one. An invalid file
//! changes nothing: the error is logged with its file:line and counted.

use crate::balance::health::CheckPlan;
use crate::config;
use crate::edge::certs::CertStore;
use crate::edge::tls_accept::ListenerAcceptors;
use crate::metrics::metrics;
use crate::topology::{Resources, Topology};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

pub(crate) struct Reloader {
    path: PathBuf,
    topology: Arc<ArcSwap<Topology>>,
    plans: Arc<watch::Sender<Vec<Arc<CheckPlan>>>>,
    /// The `server:` section the process started with, which a reload cannot change.
    server_at_start: config::ServerConfig,
    /// The TLS listeners' certificates, whose files a reload reads again.
    certs: Arc<CertStore>,
    /// The TLS listeners' acceptors, given the client CAs a reload reads.
    acceptors: ListenerAcceptors,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        topology: Arc<ArcSwap<Topology>>,
        plans: Arc<watch::Sender<Vec<Arc<CheckPlan>>>>,
        server_at_start: &config::ServerConfig,
        certs: Arc<CertStore>,
        acceptors: ListenerAcceptors,
    ) -> Self {
        record_success();
        Reloader {
            path,
            topology,
            plans,
            server_at_start: server_at_start.clone(),
            certs,
            acceptors,
        }
    }

    /// Reads, validates, compiles and swaps in the topology file, with the
    /// TLS listeners' certificate and client CA files read again: a TLS
    /// listener that is as it was but for its `certificates` and
    /// `client_certificates` takes those the file now lists.
    pub fn reload(&self) -> Result<(), config::ConfigErrors> {
        let loaded = config::load(&self.path)?;
        let resources = Resources::read(&loaded.config).map_err(|p| loaded.errors(p))?;
        // Resolved before the writers' lock is taken, so that a slow DNS
        // server holds up this reload only, not discovery's swaps.
        crate::discovery::prepare_sets(
            loaded
                .config
                .upstreams
                .iter()
                .filter_map(|(name, u)| Some((name, u.discovery.as_ref()?))),
        );
        // A client CA file that is not usable fails the reload as it would
        // fail a restart.
        let client_verifiers = crate::server::client_verifiers(&loaded.config)
            .map_err(|p| loaded.errors(config::Problems(vec![p])))?;
        let _writing = crate::topology::WRITES.lock();
        let current = self.topology.load();
        // A listener that is as it was but for its certificates takes the
        // certificates the file now lists; any other change waits for a restart.
        let mut tables = Vec::new();
        let mut verifiers = Vec::new();
        for (i, listener) in loaded.config.server.listeners.iter().enumerate() {
            let before = self.server_at_start.listeners.get(i);
            if listener.tls.is_some()
                && before.map(without_certificates) == Some(without_certificates(listener))
            {
                let clients = client_verifiers.get(i).cloned().flatten();
                verifiers.push((i, clients));
                if let Some(table) = crate::server::listener_certificates(&loaded.config, i)
                    .map_err(|p| loaded.errors(config::Problems(vec![p])))?
                {
                    tables.push((i, table));
                }
            }
        }
        let topology = Topology::compile(&loaded.config, resources, Some(&current));
        if server_without_certificates(&loaded.config.server)
            != server_without_certificates(&self.server_at_start)
        {
            log::warn!(
                "{}: the server section changed; listeners, threads, limits, compression, logging, \
                 ACME, cluster and metrics settings take effect only after a restart or an upgrade (tollgate -u)",
                self.path.display()
            );
        }
        if crate::cluster::store().is_none() {
            for (name, limit) in &loaded.config.rate_limits {
                if limit.scope == config::LimitScope::Cluster {
                    log::warn!(
                        "{}: rate_limits.{name} has `scope: cluster`, but this process started \
                         without server.cluster; it is kept per instance until a restart",
                        self.path.display()
                    );
                }
            }
        }
        let plans = topology.check_plans.clone();
        if topology.undrain_all() {
            log::warn!("reload: the drains made through the admin API end");
        }
        // The checks first, so that a probe in between records on the
        // upstreams about to serve. The checker may be gone during shutdown;
        // nothing is left to update then.
        let _ = self.plans.send(plans);
        self.topology.store(Arc::new(topology));
        self.certs.replace_files(tables);
        for (i, clients) in verifiers {
            if let Some(Some(acceptor)) = self.acceptors.get(i) {
                acceptor.set_client_verifier(clients);
            }
        }
        Ok(())
    }

    /// [`Reloader::reload`] between `RELOADING=1` and `READY=1` to the service
    /// manager, counted, logged (with `why`: "SIGHUP", or who asked the admin
    /// API) and kept as the last outcome.
    pub fn reload_reported(&self, why: &str) -> Result<(), config::ConfigErrors> {
        crate::notify::send("RELOADING=1");
        let result = self.reload();
        crate::notify::send(match result {
            Ok(()) => "READY=1\nSTATUS=reloaded",
            Err(_) => "READY=1\nSTATUS=reload failed; serving the previous topology",
        });
        match &result {
            Ok(()) => {
                metrics()
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                record_success();
                log::info!("reloaded {} ({why})", self.path.display());
            }
            Err(errors) => {
                metrics().config_reloads.with_label_values(&["error"]).inc();
                log::error!("reload failed; the running topology is unchanged ({why}):\n{errors}");
            }
        }
        remember(result.as_ref().err().map(|e| e.to_string()));
        result
    }

    /// The topology file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// How the last reload went: when (Unix seconds), and its errors when it failed.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: f64,
    pub error: Option<String>,
}

static LAST_RELOAD: std::sync::Mutex<Option<ReloadOutcome>> = std::sync::Mutex::new(None);

fn remember(error: Option<String>) {
    if let Ok(mut last) = LAST_RELOAD.lock() {
        *last = Some(ReloadOutcome {
            at: unix_now(),
            error,
        });
    }
}

/// The last reload's outcome; `None` before the first reload.
pub fn last_outcome() -> Option<ReloadOutcome> {
    LAST_RELOAD.lock().ok().and_then(|last| last.clone())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `server` with the certificate lists of its listeners left out: they are
/// what a reload can change there.
fn server_without_certificates(server: &config::ServerConfig) -> config::ServerConfig {
    let mut server = server.clone();
    server.listeners = server.listeners.iter().map(without_certificates).collect();
    server
}

/// `listener` with no certificates listed nor client certificates asked
/// for: what a reload cannot change.
fn without_certificates(listener: &config::ListenerConfig) -> config::ListenerConfig {
    let mut listener = listener.clone();
    if let Some(tls) = &mut listener.tls {
        tls.certificates.clear();
        tls.client_certificates = None;
    }
    listener
}

fn record_success() {
    metrics().config_last_reload_success.set(unix_now());
}

/// The background service that reloads on SIGHUP.
pub(crate) struct ReloadOnHangup(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGHUP, reloads are off: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangups.recv() => {
                    let _ = self.0.reload_reported("SIGHUP");
                }
            }
        }
    }
}
