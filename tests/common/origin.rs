//! An origin for the cache tests: a real HTTP/1.1 server (hyper) on a loopback
//! port, whose answers the request's query shapes, and which counts and keeps
//! every request it gets.
//!
//! Query parameters: `cc` (Cache-Control), `expires=SECS` (Expires that far
//! ahead, with Date), `age=SECS`, `etag=TAG`, `lm=1` (a fixed Last-Modified),
//! `vary=NAMES`, `cookie=1` (Set-Cookie), `acao=ORIGIN` (the origin's own
//! Access-Control-Allow-Origin), `status=CODE`, `delay=MS`,
//! `size=BYTES` (a body of that many bytes), `chunked=1` (no Content-Length),
//! `gzip=1` (gzip the body for clients that accept it, with
//! `Vary: Accept-Encoding`), `ct=TYPE`, `v=TEXT` (goes into the body). The
//! body is otherwise `PATH?QUERY #N`, N counting the requests for it, and
//! `X-Origin` names an origin started with a name. A
//! request whose `If-None-Match` matches the ETag, or with `If-Modified-Since`
//! when `lm=1`, gets 304.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The Last-Modified of `lm=1` answers.
pub const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// A request as the origin got it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: http::HeaderMap,
    /// The request body, read whole before the answer.
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    name: String,
    hits: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    failing: AtomicBool,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        Self::start_named("").await
    }

    /// An origin whose answers carry `X-Origin: NAME` (none when `name` is empty).
    pub async fn start_named(name: &str) -> Origin {
        Self::serve(name, false).await
    }

    /// As [`Origin::start_named`], speaking cleartext HTTP/2 only (prior
    /// knowledge, as an `h2c` backend does).
    pub async fn start_h2c_named(name: &str) -> Origin {
        Self::serve(name, true).await
    }

    async fn serve(name: &str, h2c: bool) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_string(),
            ..State::default()
        });
        let shared = Arc::clone(&state);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if h2c {
                        let executor = hyper_util::rt::TokioExecutor::new();
                        let _ = hyper::server::conn::http2::Builder::new(executor)
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Origin {
            addr,
            state,
            accepting,
        }
    }

    /// Requests the origin got for `target` (path and query, as sent).
    pub fn hits(&self, target: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    /// Every request the origin got, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The last request the origin got for `target`.
    pub fn last(&self, target: &str) -> Seen {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.target == target)
            .unwrap_or_else(|| panic!("the origin never got {target}"))
    }

    /// From now on, every request gets 500 (`on`), or its normal answer.
    pub fn fail(&self, on: bool) {
        self.state.failing.store(on, Ordering::SeqCst);
    }

    /// Stops accepting connections: new ones are refused.
    pub fn stop(&self) {
        self.accepting.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Body> {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let count = {
        let mut hits = state.hits.lock().unwrap();
        let n = hits.entry(target.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let (parts, incoming) = request.into_parts();
    let body = incoming
        .collect()
        .await
        .map_or(Bytes::new(), |b| b.to_bytes());
    let request = Request::from_parts(parts, ());
    state.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        target: target.clone(),
        headers: request.headers().clone(),
        body,
    });
    let q = query_map(request.uri().query().unwrap_or(""));
    if let Some(delay) = q.get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        return Response::builder()
            .status(500)
            .body(full("origin failing"))
            .unwrap();
    }
    let mut builder = Response::builder();
    if !state.name.is_empty() {
        builder = builder.header("x-origin", state.name.as_str());
    }
    let now = SystemTime::now();
    builder = builder.header("date", httpdate::fmt_http_date(now));
    if let Some(cc) = q.get("cc") {
        builder = builder.header("cache-control", cc.as_str());
    }
    if let Some(secs) = q.get("expires").and_then(|s| s.parse().ok()) {
        let at = now + Duration::from_secs(secs);
        builder = builder.header("expires", httpdate::fmt_http_date(at));
    }
    if let Some(age) = q.get("age") {
        builder = builder.header("age", age.as_str());
    }
    let etag = q.get("etag").map(|t| format!("\"{t}\""));
    if let Some(etag) = &etag {
        builder = builder.header("etag", etag.as_str());
    }
    let last_modified = q.contains_key("lm");
    if last_modified {
        builder = builder.header("last-modified", LAST_MODIFIED);
    }
    if let Some(vary) = q.get("vary") {
        builder = builder.header("vary", vary.as_str());
    }
    if let Some(origin) = q.get("acao") {
        builder = builder.header("access-control-allow-origin", origin.as_str());
    }
    if q.contains_key("cookie") {
        builder = builder.header("set-cookie", format!("session={count}"));
    }
    let headers = request.headers();
    let not_modified = etag.as_ref().is_some_and(|e| {
        headers
            .get("if-none-match")
            .is_some_and(|v| v == e.as_str())
    }) || (last_modified && headers.contains_key("if-modified-since"));
    if not_modified {
        return builder.status(304).body(full(Bytes::new())).unwrap();
    }
    let status: u16 = q.get("status").and_then(|s| s.parse().ok()).unwrap_or(200);
    builder = builder.status(status);
    builder = builder.header(
        "content-type",
        q.get("ct").map_or("text/plain", String::as_str),
    );
    let mut body: Vec<u8> = match q.get("size").and_then(|s| s.parse().ok()) {
        Some(size) => vec![b'x'; size],
        None => format!(
            "{target} #{count}{}",
            q.get("v").map(|v| format!(" {v}")).unwrap_or_default()
        )
        .into_bytes(),
    };
    if q.contains_key("gzip") {
        builder = builder.header("vary", "Accept-Encoding");
        let accepts = headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
        if accepts {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&body).unwrap();
            body = encoder.finish().unwrap();
            builder = builder.header("content-encoding", "gzip");
        }
    }
    if q.contains_key("chunked") {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = body
            .chunks(16 * 1024)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let stream = StreamBody::new(futures::stream::iter(chunks));
        return builder.body(stream.boxed()).unwrap();
    }
    builder.body(full(body)).unwrap()
}
