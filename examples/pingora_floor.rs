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
//! `--listen ADDR` serves plain HTTP; `--tls-listen ADDR --tls-cert FILE
//! --tls-key FILE` adds a TLS listener (pingora's rustls, h2 and HTTP/1.1
//! offered, as tollgate's listeners in the bench offer them).
//!
//!     pingora-floor --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The same allocator as tollgate's (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: pingora-floor --listen ADDR --upstream ADDR \
                     [--tls-listen ADDR --tls-cert FILE --tls-key FILE] [--threads N]";

struct Options {
    listen: Option<String>,
    upstream: SocketAddr,
    tls: Option<(String, String, String)>,
    threads: usize,
}

fn parse_args() -> std::result::Result<Options, String> {
    let (mut listen, mut upstream, mut threads) = (None, None, 1);
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
    })
}

/// Every request to the one peer, over plain HTTP.
struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
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
