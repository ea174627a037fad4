//! Authentication at the gateway. A route names at most one policy; the policy
//! looks at the request and either lets it pass with an [`Identity`] (headers for
//! the upstream request, and a subject for rate limiting) or rejects it with the
//! answer the client gets. Services behind tollgate only decide authorization.
//!
//! Identity headers are trusted by services, so every header any policy may set is
//! removed from every client request before a policy adds its own (see
//! `Topology::identity_headers`).

pub mod api_keys;
pub mod basic;
pub mod client_cert;
pub mod forward;
pub mod jwt;

use super::Answer;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Who the request is from, as a policy established it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Headers added to the upstream request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The key of `auth_subject` rate limits; `None` when the policy knows none.
    pub subject: Option<String>,
}

/// Why a request was refused: the `reason` label of `tollgate_auth_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No token, key or client certificate in the request.
    MissingCredentials,
    /// A token that is malformed, wrongly signed, or for another issuer/audience.
    InvalidToken,
    /// A token past its `exp` (or before its `nbf`).
    ExpiredToken,
    /// An API key that is not in the keys file.
    InvalidKey,
    /// A user name and password that are not in the users file.
    InvalidCredentials,
    /// A client certificate whose subject a `client_cert` policy does not list.
    UnlistedSubject,
    /// The auth service answered 401.
    Denied,
    /// The auth service answered 403.
    Forbidden,
    /// The auth service was down, slow or answered something else: fail closed.
    Unavailable,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::MissingCredentials => "missing_credentials",
            RejectReason::InvalidToken => "invalid_token",
            RejectReason::ExpiredToken => "expired_token",
            RejectReason::InvalidKey => "invalid_key",
            RejectReason::InvalidCredentials => "invalid_credentials",
            RejectReason::UnlistedSubject => "unlisted_subject",
            RejectReason::Denied => "denied",
            RejectReason::Forbidden => "forbidden",
            RejectReason::Unavailable => "unavailable",
        }
    }
}

/// The answer to a rejected request.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: http::StatusCode,
    pub reason: RejectReason,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Rejection {
    /// A 401 of tollgate's own, with `WWW-Authenticate: Bearer`.
    pub(crate) fn unauthorized(reason: RejectReason, message: &'static str) -> Rejection {
        let error = match reason {
            RejectReason::MissingCredentials => "Bearer",
            _ => "Bearer error=\"invalid_token\"",
        };
        Rejection {
            status: http::StatusCode::UNAUTHORIZED,
            reason,
            headers: vec![(WWW_AUTHENTICATE, HeaderValue::from_static(error))],
            body: Bytes::from_static(message.as_bytes()),
        }
    }

    /// The answer the client gets; text without a content type of its own is
    /// `text/plain`.
    pub(crate) fn into_answer(self) -> Answer {
        let mut headers = self.headers;
        if !headers
            .iter()
            .any(|(name, _)| name == http::header::CONTENT_TYPE)
        {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ));
        }
        Answer {
            status: self.status,
            headers,
            body: self.body,
            close: false,
            linger: false,
            grpc_code: None,
        }
    }

    /// A 503: the policy could not decide, so the request does not pass.
    pub fn unavailable() -> Rejection {
        Rejection {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            reason: RejectReason::Unavailable,
            headers: Vec::new(),
            body: Bytes::from_static(b"503 Service Unavailable: authentication is unavailable\n"),
        }
    }
}

/// What a policy decided.
#[derive(Debug)]
pub enum Verdict {
    Pass(Identity),
    Reject(Rejection),
}

/// What a policy is asked about.
pub(crate) struct AuthRequest<'a> {
    pub head: &'a RequestHeader,
    /// The client address (after `trusted_proxies`).
    pub client: IpAddr,
    /// The path the request was routed on, as it is forwarded (see
    /// `filters::request_path`), without the query.
    pub path: &'a str,
    /// The client certificate its connection verified.
    pub client_cert: Option<&'a crate::edge::client_certs::ClientCert>,
    /// The request's ID and its header, with `server.request_id`.
    pub request_id: Option<(&'a HeaderName, &'a HeaderValue)>,
    /// The request's trace, with `server.tracing`: the `traceparent` it
    /// goes on with (tollgate's span as the parent), and the spans of calls
    /// made for it when it is recorded.
    pub trace: Option<&'a crate::observe::tracing::RequestTrace>,
}

/// One configured policy.
pub enum AuthPolicy {
    Forward(Box<forward::ForwardAuth>),
    Jwt(jwt::JwtAuth),
    ApiKeys(api_keys::ApiKeys),
    Basic(Box<basic::BasicAuth>),
    ClientCert(client_cert::ClientCertAuth),
}

impl AuthPolicy {
    /// Decides about `req`. Never lets a request pass on an error.
    pub(crate) async fn check(&self, req: &AuthRequest<'_>) -> Verdict {
        match self {
            AuthPolicy::Forward(f) => f.check(req).await,
            AuthPolicy::Jwt(j) => j.check(req.head),
            AuthPolicy::ApiKeys(k) => k.check(req.head),
            AuthPolicy::Basic(b) => b.check(req.head).await,
            AuthPolicy::ClientCert(c) => c.check(req.client_cert),
        }
    }

    /// Every header this policy may add to upstream requests.
    pub(crate) fn identity_headers(&self) -> Vec<HeaderName> {
        match self {
            AuthPolicy::Forward(f) => f.identity_headers(),
            AuthPolicy::Jwt(j) => j.identity_headers(),
            AuthPolicy::ApiKeys(_) => Vec::new(),
            AuthPolicy::Basic(b) => b.identity_headers(),
            // Its headers are the certificate's, stripped from every request.
            AuthPolicy::ClientCert(_) => Vec::new(),
        }
    }
}

/// The text of `claim` in `claims`, for a header: the member of that name, or,
/// when there is none, the path it spells with dots (`user.name`). Strings as they
/// are, numbers and booleans as written, lists of those joined with `,`, objects
/// as JSON; `None` for a missing or null claim.
pub(crate) fn claim_text(claims: &serde_json::Value, claim: &str) -> Option<String> {
    use serde_json::Value;
    let value = claims.get(claim).or_else(|| {
        claim
            .split('.')
            .try_fold(claims, |value, key| value.get(key))
    })?;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    };
    match value {
        Value::Null => None,
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.join(","))
            .or_else(|| Some(value.to_string())),
        Value::Object(_) => Some(value.to_string()),
        other => scalar(other),
    }
}

/// The token of `Authorization: Bearer <token>` (scheme in any case).
pub(crate) fn bearer_token(req: &RequestHeader) -> Option<&str> {
    let value = req.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
