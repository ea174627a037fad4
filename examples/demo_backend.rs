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
//! It prints `listening on ADDR` once bound, so a caller may pass port 0 and read
//! the port it got.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

struct Options {
    listen: String,
    name: String,
    delay: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut listen = None;
    let mut name = None;
    let mut delay = Duration::ZERO;
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
            "-h" | "--help" => {
                println!("usage: tollgate-demo-backend --listen ADDR [--name NAME] [--delay MS]");
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
    let mut answer = response(&options, status, "application/json", Bytes::from(body));
    // `?max_age=N`: an answer caches may keep for N seconds.
    let max_age = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("max_age="))
        .and_then(|v| v.parse::<u32>().ok());
    if let Some(seconds) = max_age {
        if let Ok(value) = format!("public, max-age={seconds}").parse() {
            answer.headers_mut().insert("Cache-Control", value);
        }
    }
    Ok(answer)
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
