//! The admin listener (`server.admin`): a JSON API over the running state
//! and a few actions (drain, undrain, weight, reload), and the status page
//! at its root. It runs as a pingora service of its own with one thread, so
//! however busy it is, the proxy's threads never wait on it; its actions
//! swap the topology under the same writers' lock as a reload.
//!
//! Off loopback, and whenever `server.admin_token_file` is set, every API
//! request needs `Authorization: Bearer TOKEN` (compared in constant time);
//! the page itself holds no data and is served to anyone who reaches it.

mod actions;
mod auth;
pub mod client;
mod history;
mod state;

use crate::balance::health::CheckPlan;
use crate::reload::Reloader;
use crate::topology::Topology;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

use history::Sampler;

/// The status page, compiled in.
const PAGE: &str = include_str!("page.html");

/// Largest request body the API reads (a weight is a few bytes).
const MAX_BODY: usize = 4096;

/// Set when the admin listener is on: then every upstream measures its
/// backends' latency, for the page (not only `least_time` ones).
static ON: AtomicBool = AtomicBool::new(false);

/// Whether the admin listener is on.
pub(crate) fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turns latency measurement on for every upstream (before the first request).
fn announce() {
    ON.store(true, Ordering::Relaxed);
}

/// What the admin API reads and acts on.
pub struct Admin {
    pub topology: Arc<ArcSwap<Topology>>,
    pub plans: Arc<watch::Sender<Vec<Arc<CheckPlan>>>>,
    pub(crate) reloader: Arc<Reloader>,
    pub history: Arc<history::History>,
    /// The bearer token required, when there is one.
    token: Option<String>,
}

impl Admin {
    /// The admin API over these; `token_file` holds the bearer token (its
    /// surrounding whitespace ignored). An unreadable or empty file is an error.
    pub(crate) fn new(
        topology: Arc<ArcSwap<Topology>>,
        plans: Arc<watch::Sender<Vec<Arc<CheckPlan>>>>,
        reloader: Arc<Reloader>,
        token_file: Option<&std::path::Path>,
    ) -> Result<Admin, String> {
        let token = token_file.map(auth::read_token).transpose()?;
        Ok(Admin {
            history: Arc::new(history::History::default()),
            topology,
            plans,
            reloader,
            token,
        })
    }
}

impl Admin {
    /// Adds the admin listener at `address` (one thread of its own) and the
    /// service that samples the backends for the page; from now on every
    /// upstream measures its backends' latency.
    pub(crate) fn add_services(self, server: &mut pingora::server::Server, address: SocketAddr) {
        announce();
        let sampler = Sampler {
            topology: Arc::clone(&self.topology),
            history: Arc::clone(&self.history),
        };
        server.add_service(pingora::services::background::background_service(
            "admin history",
            sampler,
        ));
        let mut service = pingora::services::listening::Service::new(
            "admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(self),
        );
        service.threads = Some(1);
        service.add_tcp(&address.to_string());
        server.add_service(service);
    }
}

/// An answer of the API: status and JSON body.
pub(crate) struct Answer {
    status: u16,
    body: serde_json::Value,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl Answer {
    pub(crate) fn ok(body: serde_json::Value) -> Answer {
        Answer {
            status: 200,
            body,
            allow: None,
        }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer {
            status,
            body: serde_json::json!({ "error": message.into() }),
            allow: None,
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    /// Serves the page at `/`, the API under `/api/`; 404 elsewhere.
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        if path == "/" || path == "/index.html" {
            return respond(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet().copied())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let request = session.req_header();
        let answer = if let Some(why) = auth::cross_site(request, self.token.is_some()) {
            Answer::error(403, why)
        } else {
            match auth::check(request, self.token.as_deref()) {
                Err(why) => Answer::error(401, why),
                Ok(who) => self.api(session, &path, &format!("{peer} ({who})")).await,
            }
        };
        let mut response = respond(
            answer.status,
            "application/json",
            serde_json::to_vec_pretty(&answer.body).unwrap_or_default(),
        );
        if let Some(allow) = answer.allow {
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        if answer.status == 401 {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"tollgate admin\""),
            );
        }
        response
    }
}

impl Admin {
    /// The API request `path` from `who`.
    async fn api(&self, session: &mut ServerSession, path: &str, who: &str) -> Answer {
        let method = session.req_header().method.clone();
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let topology = self.topology.load_full();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["api", "status"]) => Answer::ok(state::status(&topology, self)),
            ("GET", ["api", "upstreams"]) => Answer::ok(state::upstreams(&topology, &self.history)),
            ("GET", ["api", "upstreams", name]) => state::upstream(&topology, &self.history, name),
            ("GET", ["api", "routes"]) => Answer::ok(state::routes(&topology)),
            ("GET", ["api", "certificates"]) => Answer::ok(state::certificates()),
            ("GET", ["api", "caches"]) => Answer::ok(state::caches()),
            ("GET", ["api", "history"]) => Answer::ok(self.history.to_json()),
            (
                "POST",
                ["api", "upstreams", name, "backends", address, action @ ("drain" | "undrain")],
            ) => self.set_drained(name, &decode(address), *action == "drain", who),
            ("PUT", ["api", "upstreams", name, "backends", address, "weight"]) => {
                match read_body(session).await {
                    Ok(body) => self.set_weight(name, &decode(address), &body, who),
                    Err(answer) => answer,
                }
            }
            ("POST", ["api", "reload"]) => self.reload(who),
            (_, ["api", ..]) if known_path(&parts) => Answer {
                allow: Some(allowed(&parts)),
                ..Answer::error(405, format!("{method} is not allowed on {path}"))
            },
            _ => Answer::error(404, format!("no such endpoint: {method} {path}")),
        }
    }
}

/// Whether `parts` name an endpoint (with some method).
fn known_path(parts: &[&str]) -> bool {
    matches!(
        parts,
        [
            "api",
            "status" | "upstreams" | "routes" | "certificates" | "caches" | "history" | "reload"
        ] | ["api", "upstreams", _]
            | [
                "api",
                "upstreams",
                _,
                "backends",
                _,
                "drain" | "undrain" | "weight"
            ]
    )
}

/// The methods endpoint `parts` answers.
fn allowed(parts: &[&str]) -> &'static str {
    match parts {
        ["api", "reload"] | ["api", "upstreams", _, "backends", _, "drain" | "undrain"] => "POST",
        ["api", "upstreams", _, "backends", _, "weight"] => "PUT",
        _ => "GET",
    }
}

/// A path segment with its %XX escapes decoded (an IPv6 address may come as
/// `%5B::1%5D:80`); a `%` that begins no escape is kept as it is.
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The request body, up to [`MAX_BODY`]; a 400 answer when it is larger or
/// cannot be read.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(Answer::error(413, "the body is too large"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Answer::error(400, format!("cannot read the body: {e}"))),
        }
    }
}

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let status =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = crate::edge::respond::whole_answer(status, content_type, body);
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(decode("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(decode("%5B%3A%3A1%5D:80"), "[::1]:80");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
