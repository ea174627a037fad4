//! Automatic certificates from a real ACME server: Pebble (Debian package
//! `pebble`), with pebble-challtestsrv as its DNS so every name resolves to
//! 127.0.0.1. Pebble validates tollgate's TLS-ALPN-01 and HTTP-01 answers
//! over loopback, with validation on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls::{client_trusting, connect, get_over, Connection, TestCa};
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How long Pebble may take to issue, from tollgate's first try.
const ISSUANCE: Duration = Duration::from_secs(60);

/// The ports Pebble and its DNS server will use, picked before tollgate
/// starts (tollgate's config names the directory).
struct PebblePorts {
    listen: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
}

impl PebblePorts {
    fn pick() -> PebblePorts {
        let tcp = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let udp = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PebblePorts {
            listen: tcp(),
            management: tcp(),
            dns: udp,
            dns_management: tcp(),
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen)
    }
}

/// The CA of Pebble's own HTTPS certificate: what tollgate's `ca_roots` and
/// the tests trust to reach Pebble.
struct PebbleTls {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
}

fn pebble_tls(dir: &Path) -> PebbleTls {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["localhost"], &["127.0.0.1".parse().unwrap()]);
    PebbleTls {
        cert: write_file(dir, "pebble.crt", &cert),
        key: write_file(dir, "pebble.key", &key),
        ca_file: write_file(dir, "pebble-ca.pem", &ca.pem),
        ca_pem: ca.pem,
    }
}

/// Pebble and pebble-challtestsrv, killed when dropped.
struct Pebble {
    children: Vec<Child>,
    ports: PebblePorts,
    ca_pem: String,
}

impl Pebble {
    /// Starts the DNS server (names in `elsewhere` resolve to 127.0.0.9,
    /// where nothing listens; every other to 127.0.0.1), then Pebble, which
    /// validates on `http_port` and `tls_port` and issues certificates valid
    /// for `validity`.
    async fn start(
        dir: &Path,
        ports: PebblePorts,
        tls: &PebbleTls,
        (http_port, tls_port): (u16, u16),
        validity: Duration,
        elsewhere: &[&str],
    ) -> Pebble {
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args([
                "-management",
                &format!("127.0.0.1:{}", ports.dns_management),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) is needed");
        let mut pebble = Pebble {
            children: vec![dns],
            ports,
            ca_pem: tls.ca_pem.clone(),
        };
        let management = SocketAddr::from(([127, 0, 0, 1], pebble.ports.dns_management));
        assert!(
            wait_listening(management).await,
            "pebble-challtestsrv did not start"
        );
        for name in elsewhere {
            let added = reqwest::Client::new()
                .post(format!("http://{management}/add-a"))
                .body(format!(r#"{{"host":"{name}","addresses":["127.0.0.9"]}}"#))
                .send()
                .await
                .unwrap();
            assert!(added.status().is_success());
        }
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", pebble.ports.listen),
            "managementListenAddress": format!("127.0.0.1:{}", pebble.ports.management),
            "certificate": tls.cert,
            "privateKey": tls.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        let config_file = write_file(dir, "pebble.json", &config.to_string());
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let server = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{}", pebble.ports.dns)])
            // No random sleeps before validating, no rejected nonces: Pebble
            // still validates every challenge.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (Debian package pebble) is needed");
        pebble.children.push(server);
        let listen = SocketAddr::from(([127, 0, 0, 1], pebble.ports.listen));
        assert!(wait_listening(listen).await, "pebble did not start");
        pebble
    }

    /// The root Pebble issues under (a new one each run).
    async fn root_pem(&self) -> String {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{}/roots/0", self.ports.management);
        client.get(url).send().await.unwrap().text().await.unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_listening(addr: SocketAddr) -> bool {
    wait_until(Duration::from_secs(10), || async move {
        TcpStream::connect(addr).is_ok()
    })
    .await
}

/// A tollgate whose TLS listener (the second) obtains `names`.
struct Setup {
    tollgate: Tollgate,
    https: SocketAddr,
    pebble_tls: PebbleTls,
    _backend: Backend,
}

fn tollgate_config(
    dir: &Path,
    ports: &PebblePorts,
    pebble_tls: &PebbleTls,
    storage: &Path,
    names: &[&str],
    challenge: &str,
    backend: &Backend,
) -> String {
    let redirect = if challenge == "http-01" {
        "\n      redirect_https: true"
    } else {
        ""
    };
    format!(
        "server:
  listeners:
    - address: 127.0.0.1:0{redirect}
    - address: 127.0.0.1:0
      tls: {{acme: [{names}], http2: true}}
  metrics: 127.0.0.1:0
  pid_file: {pid}
  upgrade_sock: {sock}
  acme:
    directory: {directory}
    email: ops@example.com
    storage: {storage}
    ca_roots: {ca}
    challenge: {challenge}
    retry: 1s
upstreams:
  app:
    backends: [{{address: {backend}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
",
        names = names.join(", "),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        directory = ports.directory(),
        storage = storage.display(),
        ca = pebble_tls.ca_file.display(),
        backend = backend.addr,
    )
}

/// Starts tollgate for `names`, then Pebble on its ports: tollgate's first
/// orders find no ACME server and are tried again.
async fn start(
    names: &[&str],
    challenge: &str,
    validity: Duration,
    elsewhere: &[&str],
) -> (Setup, Pebble, PathBuf) {
    let dir = temp_dir("acme");
    let storage = dir.join("acme-storage");
    let ports = PebblePorts::pick();
    let pebble_tls = pebble_tls(&dir);
    let backend = Backend::start("app");
    let config = tollgate_config(
        &dir,
        &ports,
        &pebble_tls,
        &storage,
        names,
        challenge,
        &backend,
    );
    let tollgate = Tollgate::launch_reported(temp_dir("tollgate"), &config, &[]).await;
    let https = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(https).await;
    let pebble_dir = temp_dir("pebble");
    let validation_ports = (tollgate.addr.port(), https.port());
    let pebble = Pebble::start(
        &pebble_dir,
        ports,
        &pebble_tls,
        validation_ports,
        validity,
        elsewhere,
    )
    .await;
    let setup = Setup {
        tollgate,
        https,
        pebble_tls,
        _backend: backend,
    };
    (setup, pebble, storage)
}

/// The serial number of the certificate `stream`'s server presented.
fn serial(stream: &Connection) -> String {
    let der = &stream.conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.raw_serial_as_string()
}

/// Waits until `name` is served a certificate that verifies against
/// `root_pem` (and, when given, is not `old_serial`); returns its serial.
async fn wait_certified(
    setup: &Setup,
    name: &str,
    root_pem: &str,
    old_serial: Option<&str>,
) -> String {
    let config = client_trusting(&[root_pem]);
    let mut found = None;
    let https = setup.https;
    let certified = wait_until(ISSUANCE, || {
        let attempt = connect(https, name, Arc::clone(&config)).map(|s| serial(&s));
        let fresh = attempt.ok().filter(|s| Some(s.as_str()) != old_serial);
        let done = fresh.is_some();
        if done {
            found = fresh;
        }
        async move { done }
    })
    .await;
    assert!(
        certified,
        "no certificate for {name}:\n{}",
        setup.tollgate.stderr()
    );
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certifies_every_name_and_a_restart_orders_nothing() {
    let names = ["shop.test", "www.shop.test"];
    let year = Duration::from_secs(365 * 86400);
    let (setup, pebble, storage) = start(&names, "tls-alpn-01", year, &[]).await;
    let root = pebble.root_pem().await;
    let mut serials = Vec::new();
    for name in names {
        serials.push(wait_certified(&setup, name, &root, None).await);
    }
    assert_ne!(serials[0], serials[1], "one certificate per name");
    let log = setup.tollgate.stderr();
    assert!(
        log.contains("ACME order for shop.test failed"),
        "the first try, before Pebble: {log}"
    );
    let m = setup.tollgate.metrics().await;
    assert_eq!(
        metric_value(&m, "tollgate_acme_orders_total", &[("result", "issued")]),
        Some(2.0)
    );
    for name in names {
        let expiry = metric_value(
            &m,
            "tollgate_tls_certificate_expiry_timestamp_seconds",
            &[("name", name), ("source", "acme")],
        );
        assert!(expiry.is_some_and(|t| t > 1.7e9), "{name}: {expiry:?}");
    }
    // Keys are private to tollgate's user; one directory per ACME server.
    use std::os::unix::fs::PermissionsExt;
    let server_dir = std::fs::read_dir(&storage)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for file in [
        "account.json",
        "certs/shop.test.pem",
        "certs/www.shop.test.pem",
    ] {
        let mode = std::fs::metadata(server_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // A client that offers acme-tls/1 among other protocols is no validation:
    // it gets the real certificate.
    let mut mixed = (*client_trusting(&[&root])).clone();
    mixed.alpn_protocols = vec![b"h2".to_vec(), b"acme-tls/1".to_vec()];
    let stream = connect(setup.https, "shop.test", Arc::new(mixed)).unwrap();
    assert_eq!(serial(&stream), serials[0]);
    // HTTP is served over the certificate.
    let mut stream = connect(setup.https, "shop.test", client_trusting(&[&root])).unwrap();
    assert_eq!(get_over(&mut stream, "shop.test"), "HTTP/1.1 200 OK");

    // A restart serves the kept certificates and orders none.
    let config = setup.tollgate.config_text();
    let Setup {
        tollgate,
        pebble_tls,
        _backend,
        ..
    } = setup;
    drop(tollgate);
    let tollgate = Tollgate::launch_reported(temp_dir("tollgate"), &config, &[]).await;
    let https = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(https).await;
    let restarted = Setup {
        tollgate,
        https,
        pebble_tls,
        _backend,
    };
    let again = wait_certified(&restarted, "shop.test", &root, None).await;
    assert_eq!(again, serials[0], "a restart ordered a new certificate");
    let m = restarted.tollgate.metrics().await;
    assert_eq!(
        metric_value(&m, "tollgate_acme_orders_total", &[("result", "issued")]),
        None
    );
    assert!(restarted
        .tollgate
        .stderr()
        .contains("serving the kept certificate of shop.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_answered_on_the_redirecting_listener() {
    let year = Duration::from_secs(365 * 86400);
    let (setup, pebble, _storage) = start(&["shop.test"], "http-01", year, &[]).await;
    let root = pebble.root_pem().await;
    wait_certified(&setup, "shop.test", &root, None).await;
    // Every other request on the plain listener is redirected.
    let (answer, _) = raw_exchange(
        setup.tollgate.addr,
        b"GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let (answer, _) = raw_exchange(
        setup.tollgate.addr,
        b"GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        answer.starts_with("HTTP/1.1 308"),
        "no order, no answer: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_under_an_open_connection() {
    // Renewal starts when a third of the 30 s is left.
    let (setup, pebble, _storage) =
        start(&["shop.test"], "tls-alpn-01", Duration::from_secs(30), &[]).await;
    let root = pebble.root_pem().await;
    let first = wait_certified(&setup, "shop.test", &root, None).await;
    let mut held = connect(setup.https, "shop.test", client_trusting(&[&root])).unwrap();
    assert_eq!(serial(&held), first);
    assert_eq!(get_over(&mut held, "shop.test"), "HTTP/1.1 200 OK");
    let renewed = wait_certified(&setup, "shop.test", &root, Some(&first)).await;
    assert_ne!(renewed, first);
    // The connection opened before the renewal is still served.
    assert_eq!(get_over(&mut held, "shop.test"), "HTTP/1.1 200 OK");
    let m = setup.tollgate.metrics().await;
    let issued = metric_value(&m, "tollgate_acme_orders_total", &[("result", "issued")]);
    assert!(issued >= Some(2.0), "{issued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_cannot_be_validated_fails_alone_and_is_retried() {
    let year = Duration::from_secs(365 * 86400);
    let names = ["shop.test", "bad.shop.test"];
    let (setup, pebble, _storage) = start(&names, "tls-alpn-01", year, &["bad.shop.test"]).await;
    let root = pebble.root_pem().await;
    wait_certified(&setup, "shop.test", &root, None).await;
    let tollgate = &setup.tollgate;
    let explained = wait_until(ISSUANCE, || async {
        let log = tollgate.stderr();
        log.matches("ACME order for bad.shop.test failed").count() >= 3
            && log.contains("urn:ietf:params:acme:error:")
    })
    .await;
    assert!(explained, "{}", tollgate.stderr());
    // The handshake for it fails at once, with no certificate offered (the
    // server's alert, not the client's refusal of another name's); the
    // other name is served.
    let started = std::time::Instant::now();
    let refused = connect(setup.https, "bad.shop.test", client_trusting(&[&root])).err();
    let refusal = refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refusal.contains("received fatal alert"),
        "bad.shop.test: {refusal:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal hung"
    );
    let mut stream = connect(setup.https, "shop.test", client_trusting(&[&root])).unwrap();
    assert_eq!(get_over(&mut stream, "shop.test"), "HTTP/1.1 200 OK");
    let m = tollgate.metrics().await;
    let failed = metric_value(&m, "tollgate_acme_orders_total", &[("result", "failed")]);
    assert!(failed >= Some(2.0), "{failed:?}");
}

#[test]
fn acme_settings_that_cannot_work_are_config_errors() {
    for (server_extra, tls, node, says) in [
        ("", "{acme: [shop.test]}", "tls.acme", "server.acme"),
        (
            "  acme: {directory: 'https://127.0.0.1:1/dir', email: nobody, storage: /tmp/x}\n",
            "{acme: [shop.test]}",
            "server.acme.email",
            "not an email",
        ),
        (
            "  acme: {directory: 'https://127.0.0.1:1/dir', email: a@b.example, storage: /tmp/x}\n",
            "{acme: ['*.shop.test']}",
            "tls.acme[0]",
            "wildcard",
        ),
        (
            "  acme: {directory: 'https://127.0.0.1:1/dir', email: a@b.example, storage: /proc/tollgate}\n",
            "{acme: [shop.test]}",
            "server.acme.storage",
            "cannot",
        ),
    ] {
        let check = check_topology(&format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:0\n      tls: {tls}\n{server_extra}upstreams:\n  app:\n    backends: [{{address: 127.0.0.1:9}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
        ));
        assert!(!check.ok, "{node} accepted");
        assert!(
            check.output.contains(node) && check.output.contains(says),
            "{node}: {}",
            check.output
        );
    }
}
