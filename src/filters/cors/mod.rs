//! CORS (the Fetch standard's cross-origin protocol) for a route with `cors:`.
//!
//! [`Cors::judge`] reads a request once the route is known: a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! by tollgate with 204, before auth and (unless `count_preflights`) the rate
//! limit, and never reaches a backend; any other request goes on as usual.
//! [`Cors::apply`] then sets the CORS headers of whatever answers it: the
//! backend's, the cache's, a static file, tollgate's own 401/403/429/502 alike
//! (a browser hides from scripts the status of an answer without them).
//!
//! On every answer of the route: the backend's `Access-Control-*` headers are
//! removed (the route's policy is the only one), and `Vary: Origin` is added
//! to whatever `Vary` it has. For an allowed origin: `Access-Control-Allow-
//! Origin` echoing it (`*` for `origins: ["*"]`), `-Allow-Credentials: true`
//! with `credentials`; on a preflight also `-Allow-Methods`, `-Allow-Headers`
//! and `-Max-Age`, on other answers `-Expose-Headers`. A preflight that asks
//! for a method or header not listed gets the 204 without any of them, as one
//! from an origin not listed does: the browser then fails the request.
//!
//! CORS is not access control: a request from an origin not listed is still
//! served (browsers are what withhold the answer from the page).
//! Every header value is built at load; the echoed `Origin` is a clone of the
//! request's own value (reference-counted bytes, not a copy), so a request
//! allocates nothing here.

mod origin;

pub use origin::Origin;

use crate::config::{CorsConfig, CorsOrigin};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Access-Control-* answer headers a backend may send, all replaced by the
/// route's policy.
const ANSWER_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
];
/// Private Network Access's answer header (Chromium), replaced as the others.
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// Which origins a route allows.
#[derive(Debug)]
enum Allowed {
    /// `*`: every origin, answered `*` (never with credentials).
    Any,
    Listed(Vec<Origin>),
}

/// A route's CORS policy, compiled from its `cors:`.
#[derive(Debug)]
pub struct Cors {
    allowed: Allowed,
    methods: Vec<http::Method>,
    headers: Vec<HeaderName>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    count_preflights: bool,
}

/// What a request of a CORS route is, for its answer.
#[derive(Debug, Clone)]
pub struct CorsRequest {
    preflight: bool,
    /// The `Access-Control-Allow-Origin` its answers carry; `None`: the
    /// origin (or the preflight's method or headers) is not allowed.
    allow_origin: Option<HeaderValue>,
}

impl CorsRequest {
    /// A preflight, which tollgate answers itself (see [`Cors::preflight_answer`]).
    pub fn is_preflight(&self) -> bool {
        self.preflight
    }
}

impl Cors {
    /// The policy of a validated `cors:` (see `config::validate`).
    pub fn new(config: &CorsConfig) -> Cors {
        let allowed = if config.origins.contains(&CorsOrigin::Any) {
            Allowed::Any
        } else {
            Allowed::Listed(
                config
                    .origins
                    .iter()
                    .filter_map(|o| match o {
                        CorsOrigin::Listed(origin) => Some(origin.clone()),
                        CorsOrigin::Any | CorsOrigin::Invalid(_) => None,
                    })
                    .collect(),
            )
        };
        let methods: Vec<http::Method> = config.methods.iter().map(|m| m.0.clone()).collect();
        let headers: Vec<HeaderName> = config.headers.iter().map(|h| h.0.name().clone()).collect();
        let written = |names: &[crate::config::CorsHeader]| {
            let list: Vec<&str> = names.iter().map(|h| h.0.written()).collect();
            joined(&list)
        };
        Cors {
            allowed,
            allow_methods: joined(&methods.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
            allow_headers: written(&config.headers),
            expose_headers: written(&config.expose),
            methods,
            headers,
            credentials: config.credentials,
            max_age: config.max_age.map(|age| HeaderValue::from(age.as_secs())),
            count_preflights: config.count_preflights,
        }
    }

    /// Whether preflights are counted against the route's rate limit.
    pub fn counts_preflights(&self) -> bool {
        self.count_preflights
    }

    /// What `req` is to this policy: a preflight or not, and whether its
    /// origin (for a preflight: with the method and headers it asks for) is
    /// allowed.
    pub fn judge(&self, req: &RequestHeader) -> CorsRequest {
        let headers = &req.headers;
        let origin = single(headers, &header::ORIGIN);
        let preflight = req.method == http::Method::OPTIONS
            && origin.is_some()
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut allow_origin = match (&self.allowed, origin) {
            (Allowed::Any, _) => Some(ANY),
            (Allowed::Listed(listed), Some(origin)) => listed
                .iter()
                .any(|o| o.matches(origin.as_bytes()))
                .then(|| origin.clone()),
            (Allowed::Listed(_), None) => None,
        };
        if preflight && !self.allows_preflight(headers) {
            allow_origin = None;
        }
        CorsRequest {
            preflight,
            allow_origin,
        }
    }

    /// Whether the method and every header a preflight asks for are listed.
    fn allows_preflight(&self, headers: &http::HeaderMap) -> bool {
        let method_listed =
            single(headers, &header::ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|asked| {
                let asked = asked.as_bytes().trim_ascii();
                self.methods.iter().any(|m| m.as_str().as_bytes() == asked)
            });
        method_listed
            && headers
                .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .iter()
                .flat_map(|value| value.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|name| !name.is_empty())
                .all(|name| {
                    self.headers
                        .iter()
                        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
                })
    }

    /// Sets the CORS headers of an answer to `request` (see the module's doc).
    pub fn apply(&self, request: &CorsRequest, answer: &mut ResponseHeader) -> pingora::Result<()> {
        for name in &ANSWER_HEADERS {
            answer.remove_header(name);
        }
        answer.remove_header(&ALLOW_PRIVATE_NETWORK);
        if !varies_on_origin(&answer.headers) {
            answer.append_header(header::VARY, ORIGIN)?;
        }
        let Some(allow_origin) = &request.allow_origin else {
            return Ok(());
        };
        answer.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone())?;
        if self.credentials {
            answer.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)?;
        }
        if request.preflight {
            if let Some(allowed) = &self.allow_methods {
                answer.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, allowed.clone())?;
            }
            if let Some(allowed) = &self.allow_headers {
                answer.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone())?;
            }
            if let Some(age) = &self.max_age {
                answer.insert_header(header::ACCESS_CONTROL_MAX_AGE, age.clone())?;
            }
        } else if let Some(exposed) = &self.expose_headers {
            answer.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone())?;
        }
        Ok(())
    }

    /// The answer to a preflight: 204 with no body; [`Cors::apply`] adds its
    /// headers as it does to every answer of the route.
    pub fn preflight_answer() -> crate::filters::Answer {
        crate::filters::Answer {
            status: http::StatusCode::NO_CONTENT,
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            close: false,
            linger: false,
            grpc_code: None,
        }
    }
}

/// The value of `name` when the request has it exactly once.
fn single<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// Whether `Vary` names `Origin` already (or is `*`).
fn varies_on_origin(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|token| token == b"*" || token.eq_ignore_ascii_case(b"origin"))
}

/// `a, b, c` as a header value; `None` for no names.
fn joined(names: &[&str]) -> Option<HeaderValue> {
    if names.is_empty() {
        return None;
    }
    HeaderValue::from_str(&names.join(", ")).ok()
}

#[cfg(test)]
mod tests;
