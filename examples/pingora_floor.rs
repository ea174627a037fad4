//! The floor of the benchmark (`pingora-floor`): the least a pingora
//! proxy does per request, for `make bench` to set tollgate's cost against.
//!
//! One pingora server with one HTTP proxy service whose `upstream_peer` hands
//! every request to one fixed plain-HTTP peer, `--upstream ADDR`. Nothing else:
//! no filters, no logging, the request (its `Host` too) forwarded as it came,
//! pingora's defaults for buffers, timeouts and upstream keep-alive. The same
//! allocator as tollgate (mimalloc) and the same release profile, one worker
//! thread unless `--threads N` says otherwise.
//!
//! Two flags add what every production proxy does on each request, in the
//! plainest way pingora's API offers, to measure what pingora itself charges
//! for it apart from tollgate's code: `--timeouts` sets read and write
//! timeouts on the client session and connect, read, write and idle timeouts
//! on the peer (tollgate's defaults); `--forwarding-headers` sets the four
//! headers tollgate sets (`X-Forwarded-For`, `X-Real-IP`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`), one `insert_header` call each.
//! `--production` is both.
//!
//! `--listen ADDR` serves plain HTTP; `--tls-listen ADDR --tls-cert FILE
//! --tls-key FILE` adds a TLS listener (pingora's rustls, h2 and HTTP/1.1
//! offered, as tollgate's listeners in the bench offer them).
//!
//!     pingora-floor --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The same allocator as tollgate's (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: pingora-floor --listen ADDR --upstream ADDR \
                     [--tls-listen ADDR --tls-cert FILE --tls-key FILE] [--threads N] \
                     [--timeouts] [--forwarding-headers] [--production]";

struct Options {
    listen: Option<String>,
    upstream: SocketAddr,
    tls: Option<(String, String, String)>,
    threads: usize,
    extras: Extras,
}

/// The production work `--timeouts` and `--forwarding-headers` add.
#[derive(Clone, Copy, Default)]
struct Extras {
    timeouts: bool,
    forwarding_headers: bool,
}

fn parse_args() -> std::result::Result<Options, String> {
    let (mut listen, mut upstream, mut threads) = (None, None, 1);
    let mut extras = Extras::default();
    let (mut tls_listen, mut tls_cert, mut tls_key) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--upstream" => upstream = Some(value("--upstream")?),
            "--tls-listen" => tls_listen = Some(value("--tls-listen")?),
            "--tls-cert" => tls_cert = Some(value("--tls-cert")?),
            "--tls-key" => tls_key = Some(value("--tls-key")?),
            "--threads" => {
                threads = value("--threads")?
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or("--threads takes a number of at least 1")?;
            }
            "--timeouts" => extras.timeouts = true,
            "--forwarding-headers" => extras.forwarding_headers = true,
            "--production" => {
                extras = Extras {
                    timeouts: true,
                    forwarding_headers: true,
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let upstream: String = upstream.ok_or("--upstream ADDR is required")?;
    let upstream = upstream
        .parse()
        .map_err(|_| format!("--upstream {upstream}: not an IP:PORT address"))?;
    let tls = match (tls_listen, tls_cert, tls_key) {
        (None, None, None) => None,
        (Some(addr), Some(cert), Some(key)) => Some((addr, cert, key)),
        _ => return Err("--tls-listen, --tls-cert and --tls-key go together".to_string()),
    };
    if listen.is_none() && tls.is_none() {
        return Err("--listen ADDR or --tls-listen ADDR is required".to_string());
    }
    Ok(Options {
        listen,
        upstream,
        tls,
        threads,
        extras,
    })
}

/// Every request to the one peer, over plain HTTP.
struct Floor {
    upstream: SocketAddr,
    extras: Extras,
}

/// tollgate's default timeouts (`upstreams.*.timeouts`, `server.client_timeouts`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.extras.timeouts {
            session.set_read_timeout(Some(READ_TIMEOUT));
            session.set_write_timeout(Some(WRITE_TIMEOUT));
            peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
            peer.options.read_timeout = Some(READ_TIMEOUT);
            peer.options.write_timeout = Some(WRITE_TIMEOUT);
            peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        }
        Ok(Box::new(peer))
    }

    /// `--forwarding-headers`: the four headers, with the client's address.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !self.extras.forwarding_headers {
            return Ok(());
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let host = request.headers.get("host").cloned();
        request.insert_header("X-Forwarded-For", client.as_str())?;
        request.insert_header("X-Real-IP", client)?;
        request.insert_header("X-Forwarded-Proto", "http")?;
        if let Some(host) = host {
            request.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pingora-floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: options.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Floor {
            upstream: options.upstream,
            extras: options.extras,
        },
    );
    if let Some(listen) = &options.listen {
        proxy.add_tcp(listen);
    }
    if let Some((addr, cert, key)) = &options.tls {
        let mut settings = match TlsSettings::intermediate(cert, key) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pingora-floor: TLS settings: {e}");
                return ExitCode::FAILURE;
            }
        };
        settings.enable_h2();
        proxy.add_tls_with_settings(addr, None, settings);
    }
    server.add_service(proxy);
    server.run_forever()
}
