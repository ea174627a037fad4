//! Builds the pingora server from a validated config: its process settings from
//! `server:`, the proxy service on every listener, the metrics endpoint and the
//! health checker. Nothing here runs until [`pingora::server::Server::run_forever`].

use crate::access_log::AccessLog;
use crate::acme::challenge::Http01Answers;
use crate::acme::AcmeService;
use crate::admin::Admin;
use crate::balance::health::HealthChecker;
use crate::config::{Config, ConfigErrors, LoadedConfig, Problems};
use crate::discovery::DiscoveryService;
use crate::edge::answer_headers::ListenerHeaders;
use crate::edge::certs::CertStore;
use crate::edge::compression::CompressionPolicy;
use crate::edge::keepalive::LeanKeepalive;
use crate::edge::proxy_protocol::{self, ProxyHeaderReading};
use crate::edge::redirect::HttpsRedirect;
use crate::edge::request_body::{temp_dir_or_default, BufferLimits};
use crate::edge::tls::CertTable;
use crate::edge::tls_accept::{ListenerAcceptors, LiveAcceptor, TlsTerminating};
use crate::listen::{ByListener, Reservation};
use crate::notify::Readiness;
use crate::observe::request_id::RequestIds;
use crate::observe::tracing::Tracer;
use crate::proxy::{Proxy, ProxySettings};
use crate::quic::QuicService;
use crate::reload::{ReloadOnHangup, Reloader};
use crate::topology::{Resources, Topology};
use crate::upgrade::{Launch, Upgrader};
use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::tls::ClientCertVerifier;
use std::net::SocketAddr;
use std::sync::Arc;

/// How the process was started, beyond the topology file.
#[derive(Debug, Default, Clone, Copy)]
pub struct StartOptions {
    /// Take the listening sockets over from a running tollgate (graceful upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

/// Everything a config needs before it can serve, checked without binding a port:
/// the compiled topology and the opened access log. `tollgate -t` stops here.
pub struct Prepared {
    pub topology: Topology,
    pub access_log: AccessLog,
    /// The certificates of the TLS listeners.
    pub certs: Arc<CertStore>,
    /// The client certificate verifier of each listener that has
    /// `client_certificates` (by listener index).
    pub client_verifiers: Vec<Option<Arc<dyn ClientCertVerifier>>>,
}

pub fn prepare(loaded: &LoadedConfig) -> Result<Prepared, ConfigErrors> {
    let config = &loaded.config;
    let resources = Resources::read(config).map_err(|problems| loaded.errors(problems))?;
    crate::discovery::prepare_sets(
        config
            .upstreams
            .iter()
            .filter_map(|(name, u)| Some((name, u.discovery.as_ref()?))),
    );
    let topology = Topology::compile(config, resources, None);
    let access_log = AccessLog::open(
        &config.server.access_log,
        config.server.access_log_format.clone(),
    )
    .map_err(|e| loaded.error_at("server.access_log", &e.to_string()))?;
    let tables =
        certificate_tables(config).map_err(|problem| loaded.errors(Problems(vec![problem])))?;
    let client_verifiers =
        client_verifiers(config).map_err(|problem| loaded.errors(Problems(vec![problem])))?;
    let listeners = config.server.listeners.iter().map(|l| {
        let acme_names = l.tls.as_ref().map(|t| t.acme.clone()).unwrap_or_default();
        (l.tls.is_some(), acme_names)
    });
    let mut tables = tables.into_iter();
    let certs = CertStore::new(
        listeners
            .map(|(tls, names)| tables.next().flatten().filter(|_| tls).map(|t| (t, names)))
            .collect(),
    );
    if let Some(acme) = &config.server.acme {
        crate::acme::load_kept(acme, &certs.acme_names(), &certs);
    }
    Ok(Prepared {
        topology,
        access_log,
        certs: Arc::new(certs),
        client_verifiers,
    })
}

/// The client certificate verifier of each listener (`None` for those
/// without `client_certificates`); the problem names the first CA file that
/// is not usable.
pub fn client_verifiers(
    config: &Config,
) -> Result<Vec<Option<Arc<dyn ClientCertVerifier>>>, crate::config::Problem> {
    let listeners = config.server.listeners.iter().enumerate();
    listeners
        .map(|(i, listener)| {
            let asked = listener
                .tls
                .as_ref()
                .and_then(|t| t.client_certificates.as_ref());
            asked
                .map(|clients| {
                    let at = format!("server.listeners[{i}].tls.client_certificates");
                    crate::edge::client_certs::verifier(clients, &at)
                })
                .transpose()
        })
        .collect()
}

/// The file certificates of each listener (`None` for plain ones), loaded and
/// checked; the problem names the first file that is not usable.
pub fn certificate_tables(
    config: &Config,
) -> Result<Vec<Option<CertTable>>, crate::config::Problem> {
    (0..config.server.listeners.len())
        .map(|i| listener_certificates(config, i))
        .collect()
}

/// The file certificates of `server.listeners[i]`, `None` for a plain one.
pub fn listener_certificates(
    config: &Config,
    i: usize,
) -> Result<Option<CertTable>, crate::config::Problem> {
    let Some(tls_config) = config.server.listeners.get(i).and_then(|l| l.tls.as_ref()) else {
        return Ok(None);
    };
    let pairs: Vec<_> = tls_config
        .certificates
        .iter()
        .map(|c| (c.cert.as_path(), c.key.as_path()))
        .collect();
    let at = format!("server.listeners[{i}].tls.certificates");
    CertTable::load(&pairs, &at).map(Some)
}

/// The pingora process settings taken from `server:`.
fn server_conf(config: &Config) -> ServerConf {
    let server = &config.server;
    let threads = server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    ServerConf {
        threads,
        pid_file: server.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: server.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(server.grace_period.as_secs()),
        ..ServerConf::default()
    }
}

/// The port HTTPS redirects point to when the config has no TLS listener to
/// name one (validation requires one, so this is only a fallback).
const DEFAULT_HTTPS_PORT: u16 = 443;

/// How long a new process started by SIGUSR2 may take to load its config and
/// open the upgrade socket.
const UPGRADE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Client connections read straight into pingora's request and body buffers
/// (plain HTTP) or into rustls's record buffer (TLS). pingora's default
/// 64 KiB read buffer cost ~100 KiB of memory per idle plain connection and
/// one more copy of every byte; a 16 KiB one in front of rustls cost 13 KB
/// per idle TLS connection (54.7 against 67.3 KB, 5,000 connections) and
/// saved no instructions on keep-alive requests (170.6k against 170.9k per
/// request, callgrind).
const CLIENT_READ_BUFFER: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// Builds the server with all its services, ready to run.
pub fn build(
    loaded: &LoadedConfig,
    prepared: Prepared,
    options: StartOptions,
    mut reservation: Reservation,
) -> anyhow::Result<Server> {
    let config = &loaded.config;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));
    server.bootstrap();

    let check_plans = prepared.topology.check_plans.clone();
    let topology = Arc::new(ArcSwap::from_pointee(prepared.topology));
    let http01 = Arc::new(Http01Answers::default());
    if let Some(cluster) = &config.server.cluster {
        crate::cluster::init(cluster).map_err(|e| anyhow::anyhow!(e))?;
    }
    let (http_proxy, acceptors) = add_listeners(
        &mut server,
        config,
        &reservation,
        Arc::clone(&topology),
        prepared.access_log,
        (Arc::clone(&prepared.certs), Arc::clone(&http01)),
        &prepared.client_verifiers,
    )?;
    let certs = &prepared.certs;
    add_quic(&mut server, config, &mut reservation, certs, http_proxy)?;
    if let Some(acme) = &config.server.acme {
        let service = AcmeService::new(acme, Arc::clone(&prepared.certs), http01);
        server.add_service(background_service("acme", service));
    }
    let scraped = Arc::clone(&topology);
    crate::metrics::before_scrape(Box::new(move || scraped.load().refresh_backend_gauges()));
    if let Some(address) = reservation.metrics {
        let mut metrics = Service::new("metrics".to_string(), HttpServer::new_app(MetricsEndpoint));
        metrics.threads = Some(1);
        metrics.add_tcp(&address.to_string());
        server.add_service(metrics);
    }

    let (plans_sender, plans) = tokio::sync::watch::channel(check_plans);
    let plans_sender = Arc::new(plans_sender);
    server.add_service(background_service("health checks", HealthChecker { plans }));
    // Always: a reload may add a discovered upstream.
    let discovery = DiscoveryService {
        topology: Arc::clone(&topology),
        plans: Arc::clone(&plans_sender),
    };
    server.add_service(background_service("discovery", discovery));
    let reloader = Reloader::new(
        loaded.file.clone(),
        Arc::clone(&topology),
        Arc::clone(&plans_sender),
        &config.server,
        prepared.certs,
        acceptors,
    );
    let reloader = Arc::new(reloader);
    server.add_service(background_service(
        "reload",
        ReloadOnHangup(Arc::clone(&reloader)),
    ));
    if let Some(address) = reservation.admin {
        let admin = Admin::new(
            Arc::clone(&topology),
            Arc::clone(&plans_sender),
            Arc::clone(&reloader),
            config.server.admin_token_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        admin.add_services(&mut server, address);
    }

    add_process_services(&mut server, config, reservation)?;
    Ok(server)
}

/// The HTTP/3 service of the `http3` listeners (none when there is none),
/// serving with `http_proxy` on the UDP sockets `reservation` holds.
fn add_quic(
    server: &mut Server,
    config: &Config,
    reservation: &mut Reservation,
    certs: &Arc<CertStore>,
    http_proxy: Arc<HttpProxy<Proxy>>,
) -> anyhow::Result<()> {
    let udp = reservation.take_udp();
    let quic = QuicService::new(config, &reservation.listeners, udp, certs, http_proxy)?;
    if let Some(quic) = quic {
        server.add_service(quic);
    }
    Ok(())
}

/// The services of the process itself: binary upgrades on SIGUSR2, access
/// log reopens on SIGUSR1, and the readiness notice once every address is
/// listened on.
fn add_process_services(
    server: &mut Server,
    config: &Config,
    reservation: Reservation,
) -> anyhow::Result<()> {
    let launch = Launch::of_this_process().context("reading this process's own launch")?;
    server.add_service(background_service(
        "upgrade",
        Upgrader {
            launch,
            bound_addresses: reservation.passed_on(),
            upgrade_sock: config.server.upgrade_sock.clone(),
            start_timeout: UPGRADE_START_TIMEOUT,
        },
    ));
    server.add_service(background_service(
        "access log reopen",
        crate::access_log::reopen::ReopenOnUsr1,
    ));
    let readiness = Readiness {
        reservation: std::sync::Mutex::new(reservation),
    };
    server.add_service(background_service("readiness", readiness));
    Ok(())
}

/// The proxy service on every listener (TLS ones with their certificate
/// resolvers and client certificate verifiers), at the addresses
/// `reservation` holds, and the HTTPS redirect service on `redirect_https`
/// ones. Returns the proxy app they serve with, for the HTTP/3 listeners to
/// serve with too, and the TLS listeners' acceptors, for reloads to give new
/// client CAs.
fn add_listeners(
    server: &mut Server,
    config: &Config,
    reservation: &Reservation,
    topology: Arc<ArcSwap<Topology>>,
    access_log: AccessLog,
    (certs, http01): (Arc<CertStore>, Arc<Http01Answers>),
    client_verifiers: &[Option<Arc<dyn ClientCertVerifier>>],
) -> anyhow::Result<(Arc<HttpProxy<Proxy>>, ListenerAcceptors)> {
    let listeners = ListenerRoles::of(config, &reservation.listeners);
    let request_ids = config.server.request_id.as_ref().map(RequestIds::new);
    let mut settings = proxy_settings(config, listeners.tls_headers, &http01, request_ids.clone());
    settings.tracer = match &config.server.tracing {
        Some(tracing) => Some(Tracer::start(tracing).context("server.tracing")?),
        None => None,
    };
    let mut http_proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy::new(topology, access_log, settings),
    );
    h2c_options(&mut http_proxy, config);
    let http_proxy = Arc::new(http_proxy);
    let mut acceptors = ByListener::default();
    let mut live_acceptors = ListenerAcceptors::new();
    let listening = config.server.listeners.iter().zip(&reservation.listeners);
    for (i, (listener, address)) in listening.clone().enumerate() {
        let live = listener.tls.as_ref().map(|tls| {
            let clients = client_verifiers.get(i).cloned().flatten();
            Arc::new(LiveAcceptor::new(certs.resolver(i), tls.http2, clients))
        });
        if let Some(live) = &live {
            acceptors.insert(*address, Arc::clone(live));
        }
        live_acceptors.push(live);
    }
    // The PROXY protocol header comes first on a connection: read before TLS.
    let proxy_headers = || proxy_protocol::policies(listening.clone().map(|(l, a)| (l, *a)));
    let mut proxy = Service::new(
        "proxy".to_string(),
        ProxyHeaderReading::new(
            TlsTerminating::new(
                lean_keepalive(Arc::clone(&http_proxy), config, &reservation.listeners),
                acceptors,
            ),
            proxy_headers(),
        ),
    );
    let mut redirects = Service::new(
        "https redirect".to_string(),
        ProxyHeaderReading::new(
            HttpServer::new_app(HttpsRedirect::new(
                listeners.https_port.unwrap_or(DEFAULT_HTTPS_PORT),
                listeners.redirect_statuses,
                Arc::clone(&http01),
                request_ids,
            )),
            proxy_headers(),
        ),
    );
    redirects.threads = Some(1);
    for (listener, address) in listening {
        let address = address.to_string();
        // TLS listeners are TCP ones to pingora: `TlsTerminating` does the handshake.
        let config = ListenerConfig::tcp(address).l4_buffer(CLIENT_READ_BUFFER);
        if listener.redirect_https && listener.tls.is_none() {
            redirects.add_listener(config);
        } else {
            proxy.add_listener(config);
        }
    }
    server.add_service(proxy);
    if listeners.any_redirect {
        server.add_service(redirects);
    }
    Ok((http_proxy, live_acceptors))
}

/// The proxy's settings from the `server:` section: the TLS listeners (with
/// their HSTS value), limits, timeouts, compression, request paths, buffering
/// and request IDs.
fn proxy_settings(
    config: &Config,
    tls_listeners: ByListener<ListenerHeaders>,
    http01: &Arc<Http01Answers>,
    request_ids: Option<RequestIds>,
) -> ProxySettings {
    ProxySettings {
        tls_listeners,
        max_request_body: config.server.max_request_body,
        client_timeouts: config.server.client_timeouts.clone(),
        compression: config
            .server
            .compression
            .as_ref()
            .map(CompressionPolicy::new),
        encoded_slashes: config.server.encoded_slashes,
        underscores_in_headers: config.server.underscores_in_headers,
        http01: config.server.acme.as_ref().map(|_| Arc::clone(http01)),
        buffering_default: config.server.request_buffering,
        buffer_limits: BufferLimits {
            max_body: config.server.max_request_body,
            memory: usize::try_from(config.server.request_buffer_memory).unwrap_or(usize::MAX),
            temp_dir: temp_dir_or_default(config.server.temp_dir.as_deref()),
        },
        request_ids,
        tracer: None,
    }
}

/// Turns pingora's own h2c detection on when some listener has `h2c`.
fn h2c_options(http_proxy: &mut HttpProxy<Proxy>, config: &Config) {
    if config.server.listeners.iter().any(|l| l.h2c) {
        // Only the connections `LeanKeepalive` finds starting with HTTP/2's
        // preface, on `h2c` listeners, reach pingora's own h2c detection.
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        http_proxy.server_options = Some(options);
    }
}

/// The proxy app in [`LeanKeepalive`], with cleartext HTTP/2 on the `h2c`
/// listeners among the ones at `addresses` (one per listener).
fn lean_keepalive(
    http_proxy: Arc<HttpProxy<Proxy>>,
    config: &Config,
    addresses: &[SocketAddr],
) -> LeanKeepalive<HttpProxy<Proxy>> {
    let mut h2c = ByListener::default();
    for (listener, address) in config.server.listeners.iter().zip(addresses) {
        if listener.h2c {
            h2c.insert(*address, ());
        }
    }
    LeanKeepalive::new(http_proxy, config.server.client_timeouts.keepalive, h2c)
}

/// Sends `signal` (SIGHUP: reload, SIGUSR2: upgrade) to the tollgate in
/// `server.pid_file`, once checked to be a tollgate running the file `loaded`
/// was read from; returns its pid.
pub fn signal_running(loaded: &LoadedConfig, signal: libc::c_int) -> anyhow::Result<i32> {
    let pid = crate::pid_file::running_tollgate(&loaded.config.server.pid_file, &loaded.file)?;
    // SAFETY: kill(2) on a pid just checked to be a tollgate on this topology file.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot signal tollgate process {pid}: {e}");
    }
    Ok(pid)
}

/// What the listeners of a config ask of the proxy.
struct ListenerRoles {
    /// TLS listeners by address, with the headers of their answers.
    tls_headers: ByListener<ListenerHeaders>,
    /// The port HTTPS redirects point to: the first TLS listener's.
    https_port: Option<u16>,
    any_redirect: bool,
    /// The status of each redirecting listener, by address.
    redirect_statuses: ByListener<http::StatusCode>,
}

impl ListenerRoles {
    /// The roles of `config`'s listeners, at `addresses` (one per listener).
    fn of(config: &Config, addresses: &[SocketAddr]) -> Self {
        let listeners = config
            .server
            .listeners
            .iter()
            .zip(addresses.iter().copied());
        let mut tls_headers = ByListener::default();
        for (listener, address) in listeners.clone() {
            if let Some(tls) = &listener.tls {
                let hsts = tls.hsts.as_ref().and_then(|h| {
                    let mut value = format!("max-age={}", h.max_age.as_secs());
                    if h.include_subdomains {
                        value.push_str("; includeSubDomains");
                    }
                    if h.preload {
                        value.push_str("; preload");
                    }
                    http::HeaderValue::from_str(&value).ok()
                });
                let alt_svc = listener
                    .http3
                    .as_ref()
                    .and_then(|_| ListenerHeaders::alt_svc(address.port()));
                tls_headers.insert(address, ListenerHeaders { hsts, alt_svc });
            }
        }
        ListenerRoles {
            tls_headers,
            https_port: listeners
                .clone()
                .find(|(l, _)| l.tls.is_some())
                .map(|(_, a)| a.port()),
            any_redirect: config.server.listeners.iter().any(|l| l.redirect_https),
            redirect_statuses: listeners
                .filter(|(l, _)| l.redirect_https)
                .map(|(l, a)| (a, l.redirect_status))
                .collect(),
        }
    }
}

/// Serves the Prometheus text exposition at `/metrics`; 404 elsewhere.
struct MetricsEndpoint;

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = if session.req_header().uri.path() == "/metrics" {
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            )
        } else {
            (
                404,
                "text/plain; charset=utf-8",
                b"404 Not Found: metrics are at /metrics\n".to_vec(),
            )
        };
        let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        crate::edge::respond::whole_answer(status, content_type, body)
    }
}
