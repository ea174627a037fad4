//! JWT (HS256 from an environment variable, RS256 and ES256 from a JWKS file) and
//! API-key policies, with keys generated at test time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const HMAC_SECRET: &str = "test-hmac-secret-of-reasonable-length";

/// A private key in PKCS#8 PEM made by openssl (`RSA` or `EC`).
fn generate_key(dir: &Path, kind: &str) -> Vec<u8> {
    let path = dir.join(format!("{kind}.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["genpkey", "-algorithm", kind, "-out"]).arg(&path);
    match kind {
        "RSA" => cmd.args(["-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => cmd.args(["-pkeyopt", "ec_paramgen_curve:P-256"]),
    };
    cmd.stderr(std::process::Stdio::null());
    let status = cmd
        .status()
        .expect("openssl (Debian package openssl) is needed");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

struct Keys {
    rsa: EncodingKey,
    ec: EncodingKey,
    rsa_public_pem: Vec<u8>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, aud: &str, exp_offset: i64) -> Value {
    json!({"sub": sub, "aud": aud, "iss": "https://auth.test", "exp": (now() as i64 + exp_offset), "role": "reader"})
}

fn token(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

/// base64url without padding, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

async fn setup() -> (Tollgate, Backend, Keys) {
    let dir = temp_dir("jwt");
    let rsa_pem = generate_key(&dir, "RSA");
    let ec_pem = generate_key(&dir, "EC");
    let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_pem).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let jwks = write_file(
        &dir,
        "jwks.json",
        &serde_json::to_string(&JwkSet {
            keys: vec![rsa_jwk, ec_jwk],
        })
        .unwrap(),
    );
    let rsa_public_pem = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("RSA.pem"))
        .output()
        .unwrap()
        .stdout;
    let keys_file = write_file(
        &dir,
        "api-keys.txt",
        "# machine clients\nbilling: k-billing-123\nk-anonymous-456\n",
    );

    let backend = Backend::start("app");
    let body = format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
auth:
  hmac:
    jwt:
      algorithms: [HS256]
      secret_file: {secret}
      issuer: https://auth.test
      audience: products
      claims_to_headers: {{sub: X-User}}
  public_keys:
    jwt:
      algorithms: [RS256, ES256]
      jwks_file: {jwks}
      issuer: https://auth.test
      audience: products
      claims_to_headers: {{sub: X-User, role: X-Role}}
  mixed:
    jwt:
      algorithms: [RS256, HS256]
      jwks_file: {jwks}
      secret_env: TEST_JWT_SECRET
      audience: products
  machines:
    api_keys:
      header: X-API-Key
      keys_file: {keys}
routes:
  - match: {{path_prefix: /hs/}}
    upstream: app
    auth: hmac
  - match: {{path_prefix: /pk/}}
    upstream: app
    auth: public_keys
  - match: {{path_prefix: /mixed/}}
    upstream: app
    auth: mixed
  - match: {{path_prefix: /keys/}}
    upstream: app
    auth: machines
  - match: {{path_prefix: /per-key/}}
    upstream: app
    auth: machines
    rate_limit: per_subject
rate_limits:
  per_subject:
    key: auth_subject
    rate: 1/m
    burst: 1
",
        backend = backend.addr,
        jwks = jwks.display(),
        keys = keys_file.display(),
        secret = write_file(&dir, "hmac.secret", &format!("{HMAC_SECRET}\n")).display()
    );
    let tollgate = Tollgate::start_with_env(&body, &[("TEST_JWT_SECRET", HMAC_SECRET)]).await;
    (
        tollgate,
        backend,
        Keys {
            rsa,
            ec,
            rsa_public_pem,
        },
    )
}

/// (status, what the backend saw) of a GET with `Authorization: Bearer token`.
async fn call(tollgate: &Tollgate, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(tollgate.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 401 {
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_policies_accept_valid_tokens_and_refuse_the_rest() {
    let (tollgate, _backend, keys) = setup().await;
    let hmac = EncodingKey::from_secret(HMAC_SECRET.as_bytes());

    // Valid: each algorithm, claims copied into headers. HS256 with the secret
    // from a file (/hs/) and from the environment (/mixed/).
    let from_env = token(
        Algorithm::HS256,
        None,
        &claims("hana", "products", 300),
        &hmac,
    );
    assert_eq!(call(&tollgate, "/mixed/1", &from_env).await.0, 200);
    let (status, seen) = call(
        &tollgate,
        "/hs/1",
        &token(
            Algorithm::HS256,
            None,
            &claims("hana", "products", 300),
            &hmac,
        ),
    )
    .await;
    assert_eq!(
        (status, seen["headers"]["x-user"].as_str()),
        (200, Some("hana"))
    );
    let (status, seen) = call(
        &tollgate,
        "/pk/1",
        &token(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims("rita", "products", 300),
            &keys.rsa,
        ),
    )
    .await;
    assert_eq!(
        (status, seen["headers"]["x-user"].as_str()),
        (200, Some("rita"))
    );
    assert_eq!(seen["headers"]["x-role"], "reader");
    let (status, seen) = call(
        &tollgate,
        "/pk/1",
        &token(
            Algorithm::ES256,
            None,
            &claims("eve", "products", 300),
            &keys.ec,
        ),
    )
    .await;
    assert_eq!(
        (status, seen["headers"]["x-user"].as_str()),
        (200, Some("eve"))
    );
    // Within the leeway an expired token still passes (clock skew).
    let (status, _) = call(
        &tollgate,
        "/pk/1",
        &token(
            Algorithm::RS256,
            None,
            &claims("rita", "products", -5),
            &keys.rsa,
        ),
    )
    .await;
    assert_eq!(status, 200);

    // Refused.
    let expired = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("rita", "products", -3600),
        &keys.rsa,
    );
    let wrong_audience = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("rita", "billing", 300),
        &keys.rsa,
    );
    let not_yet = {
        let mut c = claims("rita", "products", 3600);
        c["nbf"] = json!(now() + 600);
        token(Algorithm::RS256, None, &c, &keys.rsa)
    };
    let wrong_issuer = {
        let mut c = claims("rita", "products", 300);
        c["iss"] = json!("https://evil.test");
        token(Algorithm::RS256, None, &c, &keys.rsa)
    };
    let valid = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("rita", "products", 300),
        &keys.rsa,
    );
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = base64url(claims("admin", "products", 300).to_string().as_bytes());
        format!("{}.{}.{}", parts[0], forged, parts[2])
    };
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("admin", "products", 300).to_string().as_bytes())
    );
    let unknown_kid = token(
        Algorithm::RS256,
        Some("other"),
        &claims("rita", "products", 300),
        &keys.rsa,
    );
    // Algorithm confusion: HS256 signed with the RSA public key as the secret.
    let confused = token(
        Algorithm::HS256,
        None,
        &claims("admin", "products", 300),
        &EncodingKey::from_secret(&keys.rsa_public_pem),
    );
    let hs_on_pk_route = token(
        Algorithm::HS256,
        None,
        &claims("hana", "products", 300),
        &hmac,
    );

    for (what, path, bad) in [
        ("expired", "/pk/1", &expired),
        ("wrong audience", "/pk/1", &wrong_audience),
        ("not yet valid", "/pk/1", &not_yet),
        ("wrong issuer", "/pk/1", &wrong_issuer),
        ("tampered", "/pk/1", &tampered),
        ("alg none", "/pk/1", &alg_none),
        ("alg none (hmac route)", "/hs/1", &alg_none),
        ("unknown kid", "/pk/1", &unknown_kid),
        ("HS256 on an RS/ES-only policy", "/pk/1", &hs_on_pk_route),
        ("algorithm confusion", "/mixed/1", &confused),
        ("garbage", "/hs/1", &"abc.def".to_string()),
    ] {
        let (status, _) = call(&tollgate, path, bad).await;
        assert_eq!(status, 401, "{what} token accepted");
    }
    let missing = reqwest::get(tollgate.url("/pk/1")).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");

    let m = tollgate.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "tollgate_auth_rejections_total",
            &[("policy", "public_keys"), ("reason", "expired_token")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "tollgate_auth_rejections_total",
            &[("policy", "public_keys"), ("reason", "missing_credentials")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_header_or_bearer() {
    let (tollgate, _backend, _keys) = setup().await;
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            client
                .get(tollgate.url("/keys/1"))
                .header("X-API-Key", "k-billing-123")
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            client
                .get(tollgate.url("/keys/1"))
                .bearer_auth("k-anonymous-456")
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            client
                .get(tollgate.url("/keys/1"))
                .header("X-API-Key", "k-billing-124")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            client
                .get(tollgate.url("/keys/1"))
                .header("X-API-Key", "k-billing-12")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    let missing = client.get(tollgate.url("/keys/1")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_subject_limits_each_key_on_its_own() {
    let (tollgate, _backend, _keys) = setup().await;
    let client = reqwest::Client::new();
    let send = |key: &'static str| {
        client
            .get(tollgate.url("/per-key/1"))
            .header("X-API-Key", key)
            .send()
    };
    // Same client address, two subjects: each has its own bucket of 2 (burst: 1).
    for _ in 0..2 {
        assert_eq!(send("k-billing-123").await.unwrap().status(), 200);
    }
    let refused = send("k-billing-123").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers()["retry-after"],
        "60",
        "one request a minute"
    );
    assert_eq!(send("k-anonymous-456").await.unwrap().status(), 200);
    // A request that fails auth is refused before the limit counts it.
    assert_eq!(send("wrong").await.unwrap().status(), 401);
    assert_eq!(send("k-anonymous-456").await.unwrap().status(), 200);
}

#[test]
fn unreadable_key_material_is_a_config_error_with_its_line() {
    let missing_jwks = check_topology(
        "server:\n  listeners: [{address: 127.0.0.1:1}]\nauth:\n  p:\n    jwt:\n      algorithms: [RS256]\n      jwks_file: /nonexistent/jwks.json\nroutes:\n  - match: {path: /}\n    respond: {status: 200}\n    auth: p\n",
    );
    assert!(!missing_jwks.ok);
    let located = format!("{}:7:", missing_jwks.file);
    assert!(
        missing_jwks.output.contains(&located)
            && missing_jwks
                .output
                .contains("cannot read /nonexistent/jwks.json"),
        "{}",
        missing_jwks.output
    );

    let unset_secret = check_topology(
        "server:\n  listeners: [{address: 127.0.0.1:1}]\nauth:\n  p:\n    jwt:\n      algorithms: [HS256]\n      secret_env: TOLLGATE_TEST_UNSET_SECRET\nroutes:\n  - match: {path: /}\n    respond: {status: 200}\n    auth: p\n",
    );
    assert!(!unset_secret.ok);
    let located = format!("{}:7:", unset_secret.file);
    assert!(
        unset_secret.output.contains(&located)
            && unset_secret
                .output
                .contains("TOLLGATE_TEST_UNSET_SECRET is not set"),
        "{}",
        unset_secret.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_exp_is_refused_unless_require_exp_is_off() {
    let backend = Backend::start("app");
    let body = format!(
        "upstreams:\n  app:\n    backends: [{{address: {}}}]\n\
         auth:\n\
         \x20 strict:\n    jwt: {{algorithms: [HS256], secret_env: TEST_JWT_SECRET}}\n\
         \x20 lenient:\n    jwt: {{algorithms: [HS256], secret_env: TEST_JWT_SECRET, require_exp: false}}\n\
         routes:\n\
         \x20 - match: {{path_prefix: /strict/}}\n    upstream: app\n    auth: strict\n\
         \x20 - match: {{path_prefix: /lenient/}}\n    upstream: app\n    auth: lenient\n",
        backend.addr
    );
    let tollgate = Tollgate::start_with_env(&body, &[("TEST_JWT_SECRET", HMAC_SECRET)]).await;
    let hmac = EncodingKey::from_secret(HMAC_SECRET.as_bytes());
    let forever = token(Algorithm::HS256, None, &json!({"sub": "svc"}), &hmac);
    let response = reqwest::Client::new()
        .get(tollgate.url("/strict/x"))
        .bearer_auth(&forever)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("no `exp` claim") && text.contains("require_exp"),
        "{text}"
    );
    assert_eq!(call(&tollgate, "/lenient/x", &forever).await.0, 200);
    // An expired token is refused whatever the setting.
    let expired = token(
        Algorithm::HS256,
        None,
        &json!({"sub": "svc", "exp": now() - 3600}),
        &hmac,
    );
    assert_eq!(call(&tollgate, "/lenient/x", &expired).await.0, 401);
}
