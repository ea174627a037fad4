//! Client certificates (mTLS) on a TLS listener, with certificates made by
//! the openssl CLI: `required: true` fails the handshake of a client without
//! a valid certificate (none, expired, from another CA); `required: false`
//! lets one without through, unauthenticated. A verified certificate's
//! subject and fingerprint reach the backend as `X-Client-Cert-Subject` /
//! `-Sha256`, exactly as openssl prints them, and forged ones never do. A
//! `client_cert` policy admits listed subjects only, and rate limits keyed on
//! `auth_subject` count each subject. Bad input is a `-t` error at its line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls::TestCa;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Runs `openssl COMMAND EXTRA` in `dir` (`command` split at spaces,
/// `extra` as they are); panics with its output when it fails.
fn openssl(dir: &Path, command: &str, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("run openssl (the openssl package)");
    assert!(
        out.status.success(),
        "openssl {command} {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes a key pair of ours (P-256).
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A client certificate and its key, as files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    /// What `openssl x509 -subject -nameopt RFC2253` says the subject is.
    fn subject(&self) -> String {
        let dir = self.cert.parent().unwrap();
        let cert = self.cert.to_str().unwrap();
        let out = openssl(dir, "x509 -noout -subject -nameopt RFC2253 -in", &[cert]);
        out.trim().strip_prefix("subject=").unwrap().to_string()
    }

    /// What `openssl x509 -fingerprint -sha256` says, as lower-case hex.
    fn sha256(&self) -> String {
        let dir = self.cert.parent().unwrap();
        let cert = self.cert.to_str().unwrap();
        let out = openssl(dir, "x509 -noout -fingerprint -sha256 -in", &[cert]);
        let (_, colons) = out.trim().split_once('=').unwrap();
        colons.replace(':', "").to_ascii_lowercase()
    }
}

/// The certificates of the tests, made with openssl: a CA for clients, a
/// client certificate it signs for `subject` (issued as `/O=.../CN=...`), one
/// it signed for 2020 only (expired), and one from another CA with the same
/// subject.
struct Pki {
    dir: PathBuf,
    client_ca: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("mtls-pki");
        let pki = Pki {
            client_ca: dir.join("clients-ca.pem"),
            dir,
        };
        pki.ca("clients-ca");
        pki.ca("other-ca");
        pki
    }

    /// A self-signed CA `NAME.pem` with its key `NAME.key`.
    fn ca(&self, name: &str) {
        let command = format!(
            "req -x509 {NEW_KEY} -keyout {name}.key -out {name}.pem -days 30 -subj /CN={name} \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        );
        openssl(&self.dir, &command, &[]);
    }

    /// A key and a request for `subject` (OpenSSL's `/O=.../CN=...` form).
    fn request(&self, tag: &str, subject: &str) -> (PathBuf, String) {
        let command = format!("req -new {NEW_KEY} -keyout {tag}.key -out {tag}.csr -subj");
        openssl(&self.dir, &command, &[subject]);
        (self.dir.join(format!("{tag}.key")), format!("{tag}.csr"))
    }

    /// A client certificate for `subject`, signed by CA `ca`, valid 30 days.
    fn client(&self, tag: &str, subject: &str, ca: &str) -> Identity {
        let (key, csr) = self.request(tag, subject);
        std::fs::write(self.dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let command = format!(
            "x509 -req -in {csr} -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {tag}.crt \
             -days 30 -extfile client.ext"
        );
        openssl(&self.dir, &command, &[]);
        Identity {
            cert: self.dir.join(format!("{tag}.crt")),
            key,
        }
    }

    /// A client certificate the client CA signed for January 2020 only
    /// (`openssl ca` sets both dates, where `x509 -days` starts now).
    fn expired(&self, tag: &str, subject: &str) -> Identity {
        let (key, csr) = self.request(tag, subject);
        let conf = "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\n\
                    new_certs_dir = .\nserial = ca.serial\ndefault_md = sha256\n\
                    policy = any\nx509_extensions = client\nunique_subject = no\n\
                    preserve = yes\n[any]\ncommonName = supplied\n\
                    organizationName = optional\n[client]\nextendedKeyUsage = clientAuth\n";
        std::fs::write(self.dir.join("ca.conf"), conf).unwrap();
        std::fs::write(self.dir.join("index.txt"), "").unwrap();
        std::fs::write(self.dir.join("ca.serial"), "1000\n").unwrap();
        let command = format!(
            "ca -batch -config ca.conf -cert clients-ca.pem -keyfile clients-ca.key -in {csr} \
             -out {tag}.crt -notext -startdate 20200101000000Z -enddate 20200201000000Z"
        );
        openssl(&self.dir, &command, &[]);
        Identity {
            cert: self.dir.join(format!("{tag}.crt")),
            key,
        }
    }
}

/// The certificate tollgate serves (for `localhost`), and what clients trust.
struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

fn server_cert(dir: &Path) -> ServerCert {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["localhost"], &[]);
    ServerCert {
        cert: write_file(dir, "server.crt", &cert),
        key: write_file(dir, "server.key", &key),
        ca_pem: ca.pem,
    }
}

/// A TLS client trusting `server`'s CA, presenting `identity` when given,
/// speaking only TLS 1.2 when `tls12` (where the server refuses a client
/// certificate within the handshake) or TLS 1.3.
fn client(
    server: &ServerCert,
    identity: Option<&Identity>,
    tls12: bool,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&identity.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&identity.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// An answer: its status and, from the demo backend, the JSON it describes
/// the request with (`null` for an answer of tollgate's own).
struct Answer {
    status: u16,
    json: serde_json::Value,
}

impl Answer {
    /// The header the backend got, if it got it.
    fn header(&self, name: &str) -> Option<&str> {
        self.json["headers"][name].as_str()
    }
}

/// GET `path` over a new TLS connection made with `config`, sending
/// `headers`; the error when the handshake or the exchange fails.
fn get_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut stream =
        common::tls::connect(addr, "localhost", config).map_err(|e| format!("handshake: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(start), Some(end)) => serde_json::from_str(&text[start..=end]).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    Ok(Answer { status, json })
}

/// Headers a client forges in the hope a backend trusts them.
const FORGED: &[(&str, &str)] = &[
    ("X-Client-Cert-Subject", "CN=admin,O=Forged"),
    ("X-Client-Cert-Sha256", "00"),
];

/// tollgate with a plain listener (`[0]`) and a TLS one (`[1]`) whose
/// `tls:` adds `client_certificates`, then `body`.
async fn tollgate_with(
    server: &ServerCert,
    client_certificates: &str,
    body: &str,
) -> (Tollgate, SocketAddr) {
    let dir = temp_dir("mtls");
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
        http2: true
        client_certificates: {client_certificates}
  metrics: 127.0.0.1:0
  access_log: {log}
  access_log_format: json
  pid_file: {pid}
  upgrade_sock: {sock}
{body}",
        cert = server.cert.display(),
        key = server.key.display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        log = dir.join("access.log").display(),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let tls = tollgate.reported("server.listeners[1]");
    (tollgate, tls)
}

/// Asserts that a TLS 1.2 handshake with `identity` fails with `alert`, and
/// that a TLS 1.3 one gets no HTTP answer.
fn assert_refused(tls: SocketAddr, server: &ServerCert, identity: Option<&Identity>, alert: &str) {
    match get_tls(tls, client(server, identity, true), "/", &[]) {
        Err(e) => assert!(
            e.starts_with("handshake:") && e.contains(alert),
            "expected the handshake to fail with {alert}: {e}"
        ),
        Ok(answer) => panic!("answered {} over TLS 1.2", answer.status),
    }
    if let Ok(answer) = get_tls(tls, client(server, identity, false), "/", &[]) {
        panic!("answered {} over TLS 1.3", answer.status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_verified_in_the_handshake() {
    let pki = Pki::new();
    let good = pki.client("good", "/O=Partner A/CN=partner-a", "clients-ca");
    let expired = pki.expired("expired", "/O=Partner A/CN=partner-a");
    let foreign = pki.client("foreign", "/O=Partner A/CN=partner-a", "other-ca");
    let server = server_cert(&pki.dir);
    let backend = Backend::start("app");
    let (tollgate, tls) = tollgate_with(
        &server,
        &format!("{{ca: {}, required: true}}", pki.client_ca.display()),
        &proxy_to(&[backend.addr]),
    )
    .await;

    for tls12 in [true, false] {
        let answer = get_tls(tls, client(&server, Some(&good), tls12), "/", FORGED).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(good.subject(), "CN=partner-a,O=Partner A");
        assert_eq!(
            answer.header("x-client-cert-subject"),
            Some(good.subject().as_str())
        );
        assert_eq!(
            answer.header("x-client-cert-sha256"),
            Some(good.sha256().as_str())
        );
    }

    // Over HTTP/2 too, where every stream of the connection has it.
    let identity = [&good.cert, &good.key]
        .map(|f| std::fs::read(f).unwrap())
        .concat();
    let h2 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .resolve("localhost", tls)
        .build()
        .unwrap();
    // A body is buffered and proxied by a subrequest, which has it as well.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let url = format!("https://localhost:{}/h2", tls.port());
        let answer = h2
            .request(method, &url)
            .body("a body")
            .header(FORGED[0].0, FORGED[0].1)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        let seen: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(
            seen["headers"]["x-client-cert-subject"],
            "CN=partner-a,O=Partner A"
        );
    }

    assert_refused(tls, &server, None, "CertificateRequired");
    assert_refused(tls, &server, Some(&expired), "CertificateExpired");
    assert_refused(tls, &server, Some(&foreign), "UnknownCA");

    // Still serving, and a reload keeps asking for certificates.
    tollgate.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(10), || async {
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "success")])
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(reloaded, "{}", tollgate.stderr());
    assert_refused(tls, &server, None, "CertificateRequired");
    let answer = get_tls(tls, client(&server, Some(&good), false), "/", &[]).unwrap();
    assert_eq!(answer.status, 200);
}

/// Sends SIGHUP and waits for the `n`th successful reload.
async fn reload(tollgate: &Tollgate, n: f64) {
    tollgate.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(10), || async {
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "success")])
            .await
            .unwrap_or(0.0)
            >= n
    })
    .await;
    assert!(reloaded, "{}", tollgate.stderr());
}

/// A rotated client CA (the file rewritten in place) and a changed
/// `required` take effect on a reload, for the handshakes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_client_ca_file_and_required_again() {
    let pki = Pki::new();
    let good = pki.client("good", "/O=Partner A/CN=partner-a", "clients-ca");
    let rotated = pki.client("rotated", "/O=Partner A/CN=partner-a", "other-ca");
    let server = server_cert(&pki.dir);
    let backend = Backend::start("app");
    let live_ca = pki.dir.join("live-ca.pem");
    std::fs::copy(&pki.client_ca, &live_ca).unwrap();
    let (tollgate, tls) = tollgate_with(
        &server,
        &format!("{{ca: {}, required: true}}", live_ca.display()),
        &proxy_to(&[backend.addr]),
    )
    .await;
    let get = |identity| get_tls(tls, client(&server, identity, false), "/", &[]);
    assert_eq!(get(Some(&good)).unwrap().status, 200);
    assert_refused(tls, &server, Some(&rotated), "UnknownCA");

    // The CA file now holds the other CA: its clients in, the old ones out.
    std::fs::copy(pki.dir.join("other-ca.pem"), &live_ca).unwrap();
    reload(&tollgate, 1.0).await;
    assert_eq!(get(Some(&rotated)).unwrap().status, 200);
    assert_refused(tls, &server, Some(&good), "UnknownCA");
    assert_refused(tls, &server, None, "CertificateRequired");

    // `required: false`: a client without a certificate is let through.
    let text = tollgate.config_text();
    tollgate.rewrite_config(&text.replace("required: true", "required: false"));
    reload(&tollgate, 2.0).await;
    assert_eq!(get(None).unwrap().status, 200);
    assert_eq!(get(Some(&rotated)).unwrap().status, 200);
    assert!(
        !tollgate
            .stderr()
            .contains("take effect only after a restart"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_clients_without_one_through() {
    let pki = Pki::new();
    let good = pki.client("good", "/C=DE/O=Partner A, Inc./CN=partner-a", "clients-ca");
    let expired = pki.expired("expired", "/O=Partner A/CN=partner-a");
    let server = server_cert(&pki.dir);
    let backend = Backend::start("app");
    let (tollgate, tls) = tollgate_with(
        &server,
        &format!("{{ca: {}, required: false}}", pki.client_ca.display()),
        &proxy_to(&[backend.addr]),
    )
    .await;

    // No certificate: through, and the backend hears of none, forged or not.
    for tls12 in [true, false] {
        let answer = get_tls(tls, client(&server, None, tls12), "/", FORGED).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("x-client-cert-subject"),
            None,
            "{}",
            answer.json
        );
        assert_eq!(
            answer.header("x-client-cert-sha256"),
            None,
            "{}",
            answer.json
        );
    }
    // Nor over the plain listener.
    let plain = reqwest::Client::new()
        .get(tollgate.url("/"))
        .header("X-Client-Cert-Subject", "CN=admin")
        .header("X-Client-Cert-Sha256", "00")
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = plain.json().await.unwrap();
    assert!(seen["headers"]["x-client-cert-subject"].is_null(), "{seen}");
    assert!(seen["headers"]["x-client-cert-sha256"].is_null(), "{seen}");

    // A certificate that is sent is verified all the same.
    let answer = get_tls(tls, client(&server, Some(&good), false), "/", FORGED).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(good.subject(), "CN=partner-a,O=Partner A\\, Inc.,C=DE");
    assert_eq!(
        answer.header("x-client-cert-subject"),
        Some(good.subject().as_str())
    );
    assert_eq!(
        answer.header("x-client-cert-sha256"),
        Some(good.sha256().as_str())
    );
    assert_refused(tls, &server, Some(&expired), "CertificateExpired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_auth_admits_listed_subjects_and_limits_each() {
    let pki = Pki::new();
    let a = pki.client("a", "/O=Partner A/CN=partner-a", "clients-ca");
    let b = pki.client("b", "/O=Partner B/CN=partner-b", "clients-ca");
    let c = pki.client("c", "/O=Partner C/CN=partner-c", "clients-ca");
    let server = server_cert(&pki.dir);
    let backend = Backend::start("app");
    let body = format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
routes:
  - match: {{path_prefix: /partners}}
    upstream: app
    auth: partners
    rate_limit: per_partner
  - match: {{path_prefix: /}}
    upstream: app
auth:
  partners:
    client_cert:
      subjects: [\"CN=partner-a,O=Partner A\", \"CN=partner-b,O=Partner B\"]
rate_limits:
  per_partner: {{key: auth_subject, rate: 1/m, burst: 0}}
",
        backend = backend.addr
    );
    let (tollgate, tls) = tollgate_with(
        &server,
        &format!("{{ca: {}, required: false}}", pki.client_ca.display()),
        &body,
    )
    .await;
    let get = |identity: Option<&Identity>| {
        get_tls(tls, client(&server, identity, false), "/partners", FORGED).unwrap()
    };

    let first = get(Some(&a));
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-client-cert-subject"),
        Some("CN=partner-a,O=Partner A")
    );
    // partner-a's bucket is empty now; partner-b has its own.
    assert_eq!(get(Some(&a)).status, 429);
    assert_eq!(get(Some(&b)).status, 200);
    assert_eq!(get(Some(&b)).status, 429);

    let unlisted = get(Some(&c));
    assert_eq!(unlisted.status, 403);
    assert!(
        unlisted.json.is_null(),
        "the backend answered: {}",
        unlisted.json
    );
    let anonymous = get(None);
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous.json.is_null(),
        "the backend answered: {}",
        anonymous.json
    );
    // Routes without the policy take clients without a certificate.
    let open = get_tls(tls, client(&server, None, false), "/open", &[]).unwrap();
    assert_eq!(open.status, 200);

    for (reason, count) in [("unlisted_subject", 1.0), ("missing_credentials", 1.0)] {
        let labels = [("policy", "partners"), ("reason", reason)];
        let seen = tollgate
            .metric("tollgate_auth_rejections_total", &labels)
            .await;
        assert_eq!(seen, Some(count), "{reason}:\n{}", tollgate.metrics().await);
    }
}

/// The forward-auth service of the next test: a certificate's identity it
/// knows passes, as user `partner-a`; anything else is refused.
fn certificate_checking_service(
    seen: &serde_json::Map<String, serde_json::Value>,
) -> (&'static str, serde_json::Value) {
    let subject = seen.get("x-client-cert-subject").and_then(|v| v.as_str());
    let sha = seen.get("x-client-cert-sha256").and_then(|v| v.as_str());
    match (subject, sha) {
        (Some("CN=partner-a,O=Partner A"), Some(sha)) if sha.len() == 64 => (
            "200 OK",
            serde_json::json!({"user": "partner-a", "sha": sha}),
        ),
        _ => ("401 Unauthorized", serde_json::json!({})),
    }
}

/// Forward auth is sent the verified certificate's identity, as backends
/// are: a client may log in with its certificate alone; a forged identity
/// header is no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_is_sent_the_client_certificate_identity() {
    let pki = Pki::new();
    let good = pki.client("good", "/O=Partner A/CN=partner-a", "clients-ca");
    let server = server_cert(&pki.dir);
    let backend = Backend::start("app");
    let (auth, asked) = head_answering_service(certificate_checking_service);
    let body = format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
    auth: service
auth:
  service:
    forward:
      url: http://{auth}/check
      identity_from_json: {{X-User: user, X-Sha: sha}}
",
        backend = backend.addr
    );
    let (tollgate, tls) = tollgate_with(
        &server,
        &format!("{{ca: {}, required: false}}", pki.client_ca.display()),
        &body,
    )
    .await;

    let answer = get_tls(tls, client(&server, Some(&good), false), "/", FORGED).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.header("x-user"), Some("partner-a"));
    assert_eq!(answer.header("x-sha"), Some(good.sha256().as_str()));
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // No certificate: the forged headers are stripped, so no credentials
    // are left and the service is not asked.
    let anonymous = get_tls(tls, client(&server, None, false), "/", FORGED).unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.json.is_null(), "{}", anonymous.json);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The access log names the certificate's subject, and only where one was sent.
    let logged = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() >= 2
    })
    .await;
    assert!(logged, "{}", tollgate.access_log());
    let lines: Vec<serde_json::Value> = tollgate
        .access_log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["client_cert"], "CN=partner-a,O=Partner A");
    assert_eq!(lines[1]["status"], 401);
    assert!(lines[1].get("client_cert").is_none(), "{}", lines[1]);
}

#[test]
fn bad_client_certificate_settings_are_errors_at_their_line() {
    let pki = Pki::new();
    let server = server_cert(&pki.dir);
    let good = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
        client_certificates:
          ca: {ca}
upstreams:
  app:
    backends: [{{address: 127.0.0.1:9}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
    auth: partners
auth:
  partners:
    client_cert: {{subjects: [\"CN=partner-a,O=Partner A\"]}}
",
        cert = server.cert.display(),
        key = server.key.display(),
        ca = pki.client_ca.display(),
    );
    let checked = check_topology(&good);
    assert!(checked.ok, "{}", checked.output);

    let missing = pki.dir.join("no-such-ca.pem");
    assert_refused_at(
        &good.replace(pki.client_ca.to_str().unwrap(), missing.to_str().unwrap()),
        7,
        &["client_certificates.ca", "cannot read", "no-such-ca.pem"],
    );
    assert_refused_at(
        &good.replace(
            pki.client_ca.to_str().unwrap(),
            server.key.to_str().unwrap(),
        ),
        7,
        &["holds no PEM certificate"],
    );
    // On a plain listener, where there is no handshake to ask in.
    let plain = "server:
  listeners:
    - address: 127.0.0.1:0
      client_certificates: {ca: /etc/tollgate/clients-ca.pem}
upstreams:
  app:
    backends: [{address: 127.0.0.1:9}]
routes:
  - match: {path_prefix: /}
    upstream: app
";
    assert_refused_at(
        plain,
        4,
        &["client certificates need TLS", "this listener is plain"],
    );
    // A client_cert policy with no listener asking for certificates.
    let unasked = good.replace(
        &format!(
            "        client_certificates:\n          ca: {}\n",
            pki.client_ca.display()
        ),
        "",
    );
    assert_refused_at(
        &unasked,
        15,
        &["client_cert needs a TLS listener with `client_certificates`"],
    );
    // A subject in OpenSSL's one-line form would never match.
    assert_refused_at(
        &good.replace("CN=partner-a,O=Partner A", "/O=Partner A/CN=partner-a"),
        17,
        &["subjects[0]", "RFC 4514"],
    );
}
