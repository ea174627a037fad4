//! A small HTTP backend for demos and tests (`tollgate-demo-backend`).
//!
//! Answers every request with a JSON description of what it received (method, path,
//! headers, body length) and an `X-Backend` header naming itself. Special paths:
//! `/health` answers `ok`; `/status/NNN` answers that status; `/slow?ms=N` waits N
//! milliseconds first. `--delay MS` slows every answer but `/health`.
//!
//! The JSON's `connection` numbers the TCP connection the request came on, so a
//! caller can see keep-alive reuse.
//!
//! With `--role auth` it is instead the tutorial's auth service: `POST /login` with
//! `{"user": "alice", "password": "alice-password"}` answers `{"token": "..."}`;
//! `GET /token-info` with `Authorization: Bearer <token>` answers 200 with
//! `X-User` and `X-Permissions` headers, or 401. Users: alice (products:read,
//! products:write) and bob (products:read). Tokens live in memory; demo only.
//!
//! It prints `listening on ADDR` once bound, so a caller may pass port 0 and read
//! the port it got.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

struct Options {
    listen: String,
    name: String,
    delay: Duration,
    auth_role: bool,
    /// Tokens issued by the auth role: token -> user.
    tokens: Mutex<HashMap<String, &'static str>>,
}

/// The auth role's users: (name, password, permissions).
const USERS: [(&str, &str, &str); 2] = [
    ("alice", "alice-password", "products:read,products:write"),
    ("bob", "bob-password", "products:read"),
];

fn parse_args() -> Result<Options, String> {
    let mut listen = None;
    let mut name = None;
    let mut delay = Duration::ZERO;
    let mut auth_role = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--name" => name = Some(value("--name")?),
            "--delay" => {
                let ms: u64 = value("--delay")?
                    .parse()
                    .map_err(|_| "--delay takes milliseconds".to_string())?;
                delay = Duration::from_millis(ms);
            }
            "--role" => match value("--role")?.as_str() {
                "auth" => auth_role = true,
                "app" => auth_role = false,
                other => return Err(format!("unknown role {other}: expected app or auth")),
            },
            "-h" | "--help" => {
                println!("usage: tollgate-demo-backend --listen ADDR [--name NAME] [--delay MS] [--role app|auth]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.ok_or("--listen ADDR is required")?;
    Ok(Options {
        name: name.unwrap_or_else(|| listen.clone()),
        listen,
        delay,
        auth_role,
        tokens: Mutex::new(HashMap::new()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("tollgate-demo-backend: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&options.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tollgate-demo-backend: cannot listen on {}: {e}",
                options.listen
            );
            std::process::exit(1);
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    let connections = AtomicU64::new(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let options = Arc::clone(&options);
        let connection = connections.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&options), connection, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    options: Arc<Options>,
    connection: u64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/health" {
        return Ok(response(
            &options,
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok\n"),
        ));
    }
    if options.auth_role {
        if !options.delay.is_zero() {
            tokio::time::sleep(options.delay).await;
        }
        return Ok(auth_answer(&options, req).await);
    }
    let mut delay = options.delay;
    if path == "/slow" {
        if let Some(ms) = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
        {
            delay = Duration::from_millis(ms);
        }
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers()
            .iter()
            .fold(serde_json::Map::new(), |mut map, (k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                match map.get_mut(k.as_str()) {
                    Some(serde_json::Value::String(existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&value);
                    }
                    _ => {
                        map.insert(k.as_str().to_string(), serde_json::Value::String(value));
                    }
                }
                map
            });
    let body_len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let description = serde_json::json!({
        "backend": options.name,
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_length": body_len,
        "connection": connection,
    });
    let mut body = description.to_string();
    body.push('\n');
    Ok(response(
        &options,
        status,
        "application/json",
        Bytes::from(body),
    ))
}

fn response(
    options: &Options,
    status: StatusCode,
    content_type: &str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("X-Backend", options.name.as_str());
    if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
        builder = builder.header("Content-Length", body.len());
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The auth role: `/login` issues tokens, `/token-info` validates them.
async fn auth_answer(options: &Options, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, value: serde_json::Value| {
        response(
            options,
            status,
            "application/json",
            Bytes::from(format!("{value}\n")),
        )
    };
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/login") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let login: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let user = USERS.iter().find(|(name, password, _)| {
                login["user"].as_str() == Some(*name)
                    && login["password"].as_str() == Some(*password)
            });
            match user {
                Some((name, _, _)) => {
                    let token = new_token(name);
                    if let Ok(mut tokens) = options.tokens.lock() {
                        tokens.insert(token.clone(), name);
                    }
                    json(StatusCode::OK, serde_json::json!({ "token": token }))
                }
                None => json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": "wrong user or password" }),
                ),
            }
        }
        ("GET", "/token-info") => {
            let token = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string);
            let user = token.and_then(|t| {
                options
                    .tokens
                    .lock()
                    .ok()
                    .and_then(|tokens| tokens.get(&t).copied())
            });
            match user.and_then(|u| USERS.iter().find(|(name, _, _)| *name == u)) {
                Some((name, _, permissions)) => {
                    let mut answer = json(
                        StatusCode::OK,
                        serde_json::json!({ "user": name, "permissions": permissions }),
                    );
                    let headers = answer.headers_mut();
                    headers.insert("X-User", hyper::header::HeaderValue::from_static(name));
                    headers.insert(
                        "X-Permissions",
                        hyper::header::HeaderValue::from_static(permissions),
                    );
                    answer
                }
                None => json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": "invalid or missing token" }),
                ),
            }
        }
        (_, "/health") => response(
            options,
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok\n"),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "no such endpoint" }),
        ),
    }
}

/// A token that is hard to guess for a demo: hashed from the time, a counter and
/// a per-process random seed. Not for production.
fn new_token(user: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut token = String::new();
    for part in 0..2u64 {
        let mut h = state.build_hasher();
        h.write(user.as_bytes());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u64(part);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        token.push_str(&format!("{:016x}", h.finish()));
    }
    token
}
