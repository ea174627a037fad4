//! Builds the pingora server from a validated config: its process settings from
//! `server:`, the proxy service on every listener, the metrics endpoint and the
//! health checker. Nothing here runs until [`pingora::server::Server::run_forever`].

use crate::access_log::AccessLog;
use crate::balance::health::HealthChecker;
use crate::config::{Config, ConfigErrors, LoadedConfig};
use crate::proxy::Proxy;
use crate::topology::Topology;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
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
}

pub fn prepare(loaded: &LoadedConfig) -> Result<Prepared, ConfigErrors> {
    let config = &loaded.config;
    let topology = Topology::compile(config).map_err(|e| loaded.error_at(&e.node, &e.message))?;
    let access_log = AccessLog::open(&config.server.access_log, config.server.access_log_format)
        .map_err(|e| loaded.error_at("server.access_log", &e.to_string()))?;
    Ok(Prepared {
        topology,
        access_log,
    })
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

/// Builds the server with all its services, ready to run.
pub fn build(config: &Config, prepared: Prepared, options: StartOptions) -> anyhow::Result<Server> {
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));
    server.bootstrap();

    let check_plans = prepared.topology.check_plans.clone();
    let topology = Arc::new(ArcSwap::from_pointee(prepared.topology));
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Proxy::new(Arc::clone(&topology), prepared.access_log),
    );
    for listener in &config.server.listeners {
        proxy.add_tcp(&listener.address.to_string());
    }
    server.add_service(proxy);

    if let Some(address) = config.server.metrics {
        let mut metrics = Service::new("metrics".to_string(), HttpServer::new_app(MetricsEndpoint));
        metrics.threads = Some(1);
        metrics.add_tcp(&address.to_string());
        server.add_service(metrics);
    }

    if !check_plans.is_empty() {
        server.add_service(background_service(
            "health checks",
            HealthChecker { plans: check_plans },
        ));
    }
    Ok(server)
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
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        let length = response.body().len();
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
        response
    }
}
