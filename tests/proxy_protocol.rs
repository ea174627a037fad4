//! The PROXY protocol on listeners: HAProxy (Debian's `haproxy`) in front of
//! tollgate as the real sender of v2 (`send-proxy-v2`) and v1 (`send-proxy`)
//! headers, clients on distinct loopback addresses behind it, a backend that
//! echoes what it was told about the client and keeps the first bytes of every
//! connection it gets, and raw senders of good, malformed and stalled headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REJECTED: &str = "tollgate_proxy_protocol_rejected_total";

/// A backend that answers every request with what it was told about the
/// client (`xff=... real=... proto=...`) and keeps the first bytes of each
/// connection it accepts.
struct EchoBackend {
    addr: SocketAddr,
    starts: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl EchoBackend {
    fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&starts);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || serve_echo(stream, &kept));
            }
        });
        EchoBackend { addr, starts }
    }

    /// The first bytes of every connection so far.
    fn starts(&self) -> Vec<Vec<u8>> {
        self.starts.lock().unwrap().clone()
    }

    /// Asserts that every connection began with an HTTP request line: no
    /// byte of a PROXY header (`PROXY ` or the v2 signature) ever came first.
    fn assert_only_http_arrived(&self) {
        let starts = self.starts();
        assert!(!starts.is_empty(), "no connection reached the backend");
        for start in starts {
            assert!(
                start.starts_with(b"GET "),
                "a connection began with {:?}",
                String::from_utf8_lossy(&start)
            );
        }
    }
}

fn serve_echo(mut stream: TcpStream, starts: &Mutex<Vec<Vec<u8>>>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first = true;
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        if first {
            starts.lock().unwrap().push(buf[..n.min(16)].to_vec());
            first = false;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let header = |name: &str| {
                head.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map_or("-".to_string(), |(_, v)| v.trim().to_string())
            };
            let body = format!(
                "xff={} real={} proto={}",
                header("x-forwarded-for"),
                header("x-real-ip"),
                header("x-forwarded-proto")
            );
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// tollgate with six listeners: [0] plain, [1] `proxy_protocol: v2`, [2]
/// `v1`, [3] `any` with TLS (and HTTP/2), [4] `any` from 127.0.0.2 only, [5]
/// `v2` redirecting to HTTPS.
/// Routes: `/` to the backend, `/admin/` allowed to 127.0.0.2 only,
/// `/limited/` at one request a minute per client address.
struct Setup {
    tollgate: Tollgate,
    backend: EchoBackend,
    v2: SocketAddr,
    v1: SocketAddr,
    tls: SocketAddr,
    from_two: SocketAddr,
    redirect: SocketAddr,
    cert_pem: String,
}

async fn setup() -> Setup {
    let backend = EchoBackend::start();
    let dir = temp_dir("proxy-protocol");
    let (cert, key, cert_pem) = tls::self_signed_files(&dir, "pp", &["pp.test"]);
    let config = format!(
        "server:
  threads: 2
  listeners:
    - address: 127.0.0.1:0
    - address: 127.0.0.1:0
      proxy_protocol: v2
    - address: 127.0.0.1:0
      proxy_protocol: v1
    - address: 127.0.0.1:0
      proxy_protocol: any
      tls: {{certificates: [{{cert: {cert}, key: {key}}}], http2: true}}
    - address: 127.0.0.1:0
      proxy_protocol: any
      proxy_protocol_from: [127.0.0.2/32]
    - address: 127.0.0.1:0
      proxy_protocol: v2
      redirect_https: true
  metrics: 127.0.0.1:0
  access_log: {log}
  access_log_format: json
  pid_file: {pid}
  upgrade_sock: {sock}
  grace_period: 1s
upstreams:
  app:
    backends: [{{address: {backend}}}]
rate_limits:
  one:
    key: client_ip
    rate: 1/m
    burst: 0
routes:
  - match: {{path_prefix: /}}
    upstream: app
  - match: {{path_prefix: /admin/}}
    upstream: app
    allow: [127.0.0.2/32]
  - match: {{path_prefix: /limited/}}
    upstream: app
    rate_limit: one
",
        cert = cert.display(),
        key = key.display(),
        log = dir.join("access.log").display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        backend = backend.addr,
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let at = |i: usize| tollgate.reported(&format!("server.listeners[{i}]"));
    let (v2, v1, tls, from_two, redirect) = (at(1), at(2), at(3), at(4), at(5));
    for listener in [v2, v1, tls, from_two, redirect] {
        tollgate.wait_listening(listener).await;
    }
    let setup = Setup {
        tollgate,
        backend,
        v2,
        v1,
        tls,
        from_two,
        redirect,
        cert_pem,
    };
    // The one connection each listener's wait above opened and closed at
    // once is counted: `closed` on the first three, the peer (127.0.0.1)
    // refused on the last.
    for listener in [v2, v1, tls, redirect] {
        assert!(setup.rejected_reaches(listener, "closed", 1.0).await);
    }
    assert!(
        setup
            .rejected_reaches(from_two, "peer_not_allowed", 1.0)
            .await
    );
    setup
}

impl Setup {
    /// The count of connections `listener` closed for `reason`.
    async fn rejected(&self, listener: SocketAddr, reason: &str) -> f64 {
        let listener = listener.to_string();
        let labels = [("listener", listener.as_str()), ("reason", reason)];
        self.tollgate
            .metric(REJECTED, &labels)
            .await
            .unwrap_or(-1.0)
    }

    /// Waits for `listener`'s count of `reason` to reach `value`.
    async fn rejected_reaches(&self, listener: SocketAddr, reason: &str, value: f64) -> bool {
        let listener = listener.to_string();
        let labels = [("listener", listener.as_str()), ("reason", reason)];
        self.tollgate.metric_reaches(REJECTED, &labels, value).await
    }
}

/// HAProxy in TCP mode (as an NLB passes connections through): one frontend
/// per `(backend server address, server options)`, in order; killed when dropped.
struct Haproxy {
    child: Child,
    frontends: Vec<SocketAddr>,
    dir: PathBuf,
}

fn haproxy_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("haproxy"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/haproxy");
        assert!(
            sbin.exists(),
            "haproxy is missing: `make deps` installs it (Debian package haproxy)"
        );
        sbin
    })
}

/// A loopback port no one listens on just now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Haproxy {
    async fn start(servers: &[(SocketAddr, &str)]) -> Haproxy {
        let dir = temp_dir("haproxy");
        let frontends: Vec<SocketAddr> = servers.iter().map(|_| free_port()).collect();
        let mut config = "global\n    maxconn 200\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
            .to_string();
        for (i, ((server, options), frontend)) in servers.iter().zip(&frontends).enumerate() {
            config.push_str(&format!(
                "frontend f{i}\n    bind {frontend}\n    default_backend b{i}\n\
                 backend b{i}\n    server tollgate {server} {options}\n"
            ));
        }
        let path = write_file(&dir, "haproxy.cfg", &config);
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy {
            child,
            frontends,
            dir,
        };
        let addresses = haproxy.frontends.clone();
        let up = wait_until(Duration::from_secs(10), || {
            let addresses = addresses.clone();
            async move { addresses.iter().all(|a| TcpStream::connect(a).is_ok()) }
        })
        .await;
        let exited = matches!(haproxy.child.try_wait(), Ok(Some(_)));
        assert!(
            up && !exited,
            "haproxy did not start:\n{}",
            std::fs::read_to_string(haproxy.dir.join("stderr.log")).unwrap_or_default()
        );
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose connections come from `ip`.
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

/// GET `path` at `addr` with `client`: (status, body).
async fn get_at(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} at {addr}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A TCP connection to `addr` from `ip`.
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(ip), 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// A v2 PROXY header naming `ip`:`port` (TCP over IPv4) as the client.
fn v2_header(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    out.extend(ip.octets());
    out.extend([127, 0, 0, 1]);
    out.extend(port.to_be_bytes());
    out.extend(443u16.to_be_bytes());
    out
}

/// The v2 header of a LOCAL command (a load balancer's health check).
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// Sends `bytes` then a GET of `path` on a connection from `ip` to `addr`:
/// the answer's body, or `None` when the connection was closed unanswered.
async fn raw_get(ip: [u8; 4], addr: SocketAddr, bytes: &[u8], path: &str) -> Option<String> {
    let mut stream = connect_from(ip, addr).await;
    let mut request = bytes.to_vec();
    request.extend(format!("GET {path} HTTP/1.1\r\nHost: pp\r\nConnection: close\r\n\r\n").bytes());
    // The peer may close before it has read everything: that is an answer too.
    let _ = stream.write_all(&request);
    let (out, _) = read_until(&mut stream, Duration::from_secs(10), |_| false);
    let text = String::from_utf8_lossy(&out).into_owned();
    (!text.is_empty()).then(|| text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Sends `bytes` on a connection to `addr` (then ends its side when
/// `finish`), and returns how long until tollgate closed it, having answered
/// nothing. Panics when it answers or keeps it open for 15 s.
fn closed_unanswered(addr: SocketAddr, bytes: &[u8], finish: bool) -> Duration {
    let mut stream = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let _ = stream.write_all(bytes);
    if finish {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let (out, closed) = read_until(&mut stream, Duration::from_secs(15), |_| false);
    assert!(
        closed && out.is_empty(),
        "after {bytes:?}: closed {closed}, got {:?}",
        String::from_utf8_lossy(&out)
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_v2_and_v1_headers_name_the_client_everywhere() {
    let setup = setup().await;
    let haproxy = Haproxy::start(&[(setup.v2, "send-proxy-v2"), (setup.v1, "send-proxy")]).await;
    let (two, three) = (client_from([127, 0, 0, 2]), client_from([127, 0, 0, 3]));
    for front in &haproxy.frontends {
        // The backend is told the client HAProxy accepted, not HAProxy.
        let (status, body) = get_at(&two, *front, "/who?from=2").await;
        assert_eq!(status, 200);
        assert_eq!(body, "xff=127.0.0.2 real=127.0.0.2 proto=http");
        let (_, body) = get_at(&three, *front, "/who?from=3").await;
        assert_eq!(body, "xff=127.0.0.3 real=127.0.0.3 proto=http");
        // Keep-alive: later requests on the connection keep the client.
        let (_, body) = get_at(&three, *front, "/who?again").await;
        assert_eq!(body, "xff=127.0.0.3 real=127.0.0.3 proto=http");
    }
    // allow/deny by the client address of the header.
    let v2_front = haproxy.frontends[0];
    assert_eq!(get_at(&two, v2_front, "/admin/x").await.0, 200);
    assert_eq!(get_at(&three, v2_front, "/admin/x").await.0, 403);
    // A rate limit per client: 127.0.0.2 spends its one request a minute,
    // 127.0.0.3 (through the same HAProxy, the same peer) still has its own.
    assert_eq!(get_at(&two, v2_front, "/limited/a").await.0, 200);
    assert_eq!(get_at(&two, v2_front, "/limited/b").await.0, 429);
    assert_eq!(get_at(&three, v2_front, "/limited/c").await.0, 200);
    // The access log names the client of the header.
    let logged = wait_until(Duration::from_secs(5), || async {
        let log = setup.tollgate.access_log();
        log.lines()
            .any(|l| l.contains("\"/who?from=2\"") && l.contains("\"client\":\"127.0.0.2\""))
            && log
                .lines()
                .any(|l| l.contains("\"/who?from=3\"") && l.contains("\"client\":\"127.0.0.3\""))
    })
    .await;
    assert!(logged, "access log:\n{}", setup.tollgate.access_log());
    setup.backend.assert_only_http_arrived();
    for listener in [setup.v2, setup.v1] {
        for reason in ["malformed", "wrong_version", "timeout", "peer_not_allowed"] {
            assert_eq!(setup.rejected(listener, reason).await, 0.0, "{reason}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_reads_the_header_before_the_handshake() {
    let setup = setup().await;
    let haproxy = Haproxy::start(&[(setup.tls, "send-proxy-v2")]).await;
    let front = haproxy.frontends[0];
    let root = reqwest::Certificate::from_pem(setup.cert_pem.as_bytes()).unwrap();
    for http1_only in [true, false] {
        let mut builder = reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, 3]))
            .resolve("pp.test", SocketAddr::from(([127, 0, 0, 1], 0)))
            .add_root_certificate(root.clone())
            .use_rustls_tls();
        if http1_only {
            builder = builder.http1_only();
        }
        let client = builder.build().unwrap();
        let response = client
            .get(format!("https://pp.test:{}/tls", front.port()))
            .send()
            .await
            .unwrap();
        let version = response.version();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            "xff=127.0.0.3 real=127.0.0.3 proto=https",
            "{version:?}"
        );
        let expected = if http1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(version, expected);
    }
    setup.backend.assert_only_http_arrived();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_headers_name_any_client_and_local_is_the_peer() {
    let setup = setup().await;
    let header = v2_header(Ipv4Addr::new(203, 0, 113, 9), 40000);
    let body = raw_get([127, 0, 0, 4], setup.v2, &header, "/raw").await;
    assert_eq!(
        body.as_deref(),
        Some("xff=203.0.113.9 real=203.0.113.9 proto=http")
    );
    // The header and the request in separate writes, a byte at a time.
    let mut stream = connect_from([127, 0, 0, 4], setup.v2).await;
    stream.set_nodelay(true).unwrap();
    for byte in &header {
        stream.write_all(&[*byte]).unwrap();
    }
    let request = b"GET /slowly HTTP/1.1\r\nHost: pp\r\nConnection: close\r\n\r\n";
    stream.write_all(request).unwrap();
    let (out, _) = read_until(&mut stream, Duration::from_secs(10), |_| false);
    assert!(
        String::from_utf8_lossy(&out).ends_with("xff=203.0.113.9 real=203.0.113.9 proto=http"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // LOCAL (an NLB health check) and v1 UNKNOWN: served as the peer itself.
    let body = raw_get([127, 0, 0, 4], setup.v2, V2_LOCAL, "/local").await;
    assert_eq!(
        body.as_deref(),
        Some("xff=127.0.0.4 real=127.0.0.4 proto=http")
    );
    let body = raw_get([127, 0, 0, 5], setup.v1, b"PROXY UNKNOWN\r\n", "/unknown").await;
    assert_eq!(
        body.as_deref(),
        Some("xff=127.0.0.5 real=127.0.0.5 proto=http")
    );
    let v1 = b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n";
    let body = raw_get([127, 0, 0, 4], setup.v1, v1, "/v6").await;
    assert_eq!(
        body.as_deref(),
        Some("xff=2001:db8::7 real=2001:db8::7 proto=http")
    );
    // A redirecting listener takes the header off too.
    let mut stream = connect_from([127, 0, 0, 4], setup.redirect).await;
    let mut request = header.clone();
    request.extend(b"GET /r?x=1 HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).unwrap();
    let (out, _) = read_until(&mut stream, Duration::from_secs(10), |_| false);
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(answer.contains("https://pp.test:"), "{answer}");
    setup.backend.assert_only_http_arrived();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_stalled_headers_are_closed_and_counted() {
    let setup = setup().await;
    let whole = v2_header(Ipv4Addr::new(203, 0, 113, 9), 40000);
    // Bytes sent in one go, then nothing more: each closed unanswered, and
    // counted under its reason.
    let malformed: &[(SocketAddr, &[u8])] = &[
        (setup.v2, b"GET / HTTP/1.1\r\nHost: pp\r\n\r\n"),
        (
            setup.v2,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage-garbage",
        ),
        // Version 3; a command that does not exist; a length too short for
        // the addresses; 65,535 bytes of TLVs announced.
        (
            setup.v2,
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c123456789012",
        ),
        (
            setup.v2,
            b"\r\n\r\n\0\r\nQUIT\n\x2f\x11\x00\x0c123456789012",
        ),
        (
            setup.v2,
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        ),
        (setup.v2, b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"),
        (
            setup.v1,
            b"PROXY TCP4 999.0.0.1 127.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n\r\n",
        ),
        (setup.v1, b"PROXY TCP4 203.0.113.9 127.0.0.1 port 443\r\n"),
        (setup.v1, b"PROXY TCP7 203.0.113.9 127.0.0.1 1 443\r\n"),
    ];
    for (listener, bytes) in malformed {
        closed_unanswered(*listener, bytes, false);
    }
    assert!(setup.rejected_reaches(setup.v2, "malformed", 6.0).await);
    assert!(setup.rejected_reaches(setup.v1, "malformed", 3.0).await);
    // The first of them is in the log at warn, for the operator.
    let warned = format!("WARN  tollgate::edge::proxy_protocol] PROXY protocol listener {}: closed the connection of 127.0.0.1:", setup.v2);
    let log = setup.tollgate.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(&warned) && l.contains("(malformed;")),
        "no warning `{warned}` in:\n{log}"
    );
    // A header of the other version.
    closed_unanswered(setup.v2, b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\n", false);
    closed_unanswered(setup.v1, &whole, false);
    assert!(setup.rejected_reaches(setup.v2, "wrong_version", 1.0).await);
    assert!(setup.rejected_reaches(setup.v1, "wrong_version", 1.0).await);
    // Truncated, then the client's side ends.
    closed_unanswered(setup.v2, &whole[..20], true);
    assert!(setup.rejected_reaches(setup.v2, "closed", 2.0).await);
    // Truncated, or nothing at all, and the client waits: closed once the
    // bounded wait (5 s) is over, not before.
    let (v2, truncated) = (setup.v2, whole[..20].to_vec());
    let partial = std::thread::spawn(move || closed_unanswered(v2, &truncated, false));
    let v1 = setup.v1;
    let silent = std::thread::spawn(move || closed_unanswered(v1, b"", false));
    for waited in [partial.join().unwrap(), silent.join().unwrap()] {
        assert!(
            waited >= Duration::from_millis(4500) && waited < Duration::from_secs(10),
            "closed after {waited:?}"
        );
    }
    assert!(setup.rejected_reaches(setup.v2, "timeout", 1.0).await);
    assert!(setup.rejected_reaches(setup.v1, "timeout", 1.0).await);
    // Nothing of it reached the backend, and every worker still serves.
    assert!(
        setup.backend.starts().is_empty(),
        "{:?}",
        setup.backend.starts()
    );
    for n in 0..8 {
        let body = raw_get([127, 0, 0, 6], setup.v2, &whole, &format!("/after/{n}")).await;
        assert_eq!(
            body.as_deref(),
            Some("xff=203.0.113.9 real=203.0.113.9 proto=http")
        );
    }
    setup.backend.assert_only_http_arrived();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_proxy_protocol_from_is_refused() {
    let setup = setup().await;
    let header = v2_header(Ipv4Addr::new(203, 0, 113, 9), 40000);
    let listed = raw_get([127, 0, 0, 2], setup.from_two, &header, "/listed").await;
    assert_eq!(
        listed.as_deref(),
        Some("xff=203.0.113.9 real=203.0.113.9 proto=http")
    );
    // From another address: closed without an answer, whatever it sends.
    let other = raw_get([127, 0, 0, 3], setup.from_two, &header, "/other").await;
    assert_eq!(other, None);
    let plain = raw_get([127, 0, 0, 3], setup.from_two, b"", "/plain").await;
    assert_eq!(plain, None);
    assert!(
        setup
            .rejected_reaches(setup.from_two, "peer_not_allowed", 3.0)
            .await
    );
    let starts = setup.backend.starts();
    assert_eq!(
        starts.len(),
        1,
        "only the listed peer's request: {starts:?}"
    );
}

const CHECKED: &str = "\
server:
  listeners:
    - address: 127.0.0.1:18080
      proxy_protocol: v2
upstreams:
  app:
    backends: [{address: 127.0.0.1:19001}]
routes:
  - match: {path_prefix: /}
    upstream: app
";

#[test]
fn proxy_protocol_values_are_checked_at_their_line() {
    for value in ["v1", "v2", "any", "off"] {
        let text = CHECKED.replace("proxy_protocol: v2", &format!("proxy_protocol: {value}"));
        let result = check_topology(&text);
        assert!(result.ok, "{value}: {}", result.output);
    }
    assert_refused_at(
        &CHECKED.replace("proxy_protocol: v2", "proxy_protocol: v3"),
        4,
        &["v3", "off", "v1", "v2", "any"],
    );
    assert_refused_at(
        &CHECKED.replace("proxy_protocol: v2", "proxy_protocol: true"),
        4,
        &["proxy_protocol"],
    );
    let from = |list: &str| {
        CHECKED.replace(
            "      proxy_protocol: v2\n",
            &format!("      proxy_protocol: v2\n      proxy_protocol_from: {list}\n"),
        )
    };
    assert!(check_topology(&from("[10.0.0.0/8, 127.0.0.1]")).ok);
    assert_refused_at(&from("[10.0.0.0/33]"), 5, &["10.0.0.0/33"]);
    assert_refused_at(&from("[]"), 5, &["proxy_protocol_from", "no peer"]);
    assert_refused_at(
        &from("[10.0.0.0/8]").replace("proxy_protocol: v2", "proxy_protocol: off"),
        5,
        &["proxy_protocol_from", "without `proxy_protocol`"],
    );
}
