//! CLIENT spans of the calls tollgate makes for a recorded request: a
//! `forward` auth policy asking its service, a mirror copy sent to a shadow.
//!
//! Each is a child of the request's SERVER span with an ID of its own, and
//! the callee is sent a `traceparent` with that ID as the parent, so its own
//! spans nest under the call. A call span is started only for a request
//! whose span is recorded (see `RequestTrace::call`): an unsampled request
//! allocates nothing and reads no clock for it. Spans go through the
//! request's exporter queue (see [`otlp`](super::otlp)); their attributes
//! are turned into OpenTelemetry's form on the exporter thread.

use super::otlp::SpanExport;
use super::trace_context::{self, new_span_id};
use super::tracing::{Finished, FinishedSpan};
use crate::balance::Upstream;
use http::HeaderValue;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

/// A started CLIENT span of one call. Dropped without [`CallSpan::finish`]
/// (the call was never made), it is not exported.
pub struct CallSpan {
    export: Arc<SpanExport<FinishedSpan>>,
    trace_id: u128,
    span_id: u64,
    /// The request's span.
    parent_span_id: u64,
    start: SystemTime,
}

/// Who a call went to.
pub enum Callee {
    /// The service of a `forward` auth policy.
    Auth(Arc<AuthService>),
    /// Backend `backend` of the shadow `upstream`, sent a copy of a
    /// `method` request.
    Shadow {
        upstream: Arc<Upstream>,
        backend: usize,
        method: http::Method,
    },
}

/// A `forward` policy's service as its call spans name it, prepared when
/// the policy is read: the span's name `auth <policy>`, and its URL without
/// user name or password (nor query, when the policy puts the token there).
pub struct AuthService {
    name: String,
    url: String,
    address: String,
    port: Option<u16>,
}

/// How a call ended: the status of the answer, when there was one, and
/// what went wrong, when the call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallEnd {
    status: Option<u16>,
    error: Option<CallError>,
}

/// Why a call failed: its `error.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No answer in time.
    Timeout,
    /// No connection (refused, unreachable, TLS).
    Connect,
    /// The exchange broke after connecting.
    Exchange,
    /// An answer whose status the caller cannot use (a 5xx, or a status a
    /// `forward` policy fails closed on): `error.type` is the status.
    Status,
    /// An answer whose body the caller cannot use (a `forward` policy's 2xx
    /// without the JSON claims it needs).
    Body,
}

/// The method of every `forward` auth call.
const AUTH_METHOD: &str = "GET";

impl CallSpan {
    /// Starts a span of trace `trace_id`, child of span `parent_span_id`,
    /// now; it is exported through `export`.
    pub(super) fn start(
        export: Arc<SpanExport<FinishedSpan>>,
        trace_id: u128,
        parent_span_id: u64,
    ) -> CallSpan {
        CallSpan {
            export,
            trace_id,
            span_id: new_span_id(),
            parent_span_id,
            start: SystemTime::now(),
        }
    }

    /// The `traceparent` the callee is sent: this span as the parent, sampled.
    pub fn traceparent(&self) -> HeaderValue {
        trace_context::traceparent(self.trace_id, self.span_id, true)
    }

    /// Ends the span now, a call to `callee` that ended as `end`, and hands
    /// it to the exporter (see `otlp::SpanExport::send`).
    pub fn finish(self, callee: Callee, end: CallEnd) {
        self.export.send(FinishedSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: Some(self.parent_span_id),
            start: self.start,
            end: SystemTime::now(),
            kind: Finished::Call(callee, end),
        });
    }
}

impl AuthService {
    /// The service of policy `policy` at `url`; with `token_query`, the
    /// token is in the URL's query, which the span leaves out.
    pub fn new(policy: &str, url: &reqwest::Url, token_query: bool) -> AuthService {
        let mut shown = url.clone();
        // Only a URL that cannot have them refuses these; there is nothing to strip.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        if token_query {
            shown.set_query(None);
        }
        AuthService {
            name: format!("auth {policy}"),
            url: shown.into(),
            address: url.host_str().unwrap_or_default().to_string(),
            port: url.port_or_known_default(),
        }
    }
}

impl CallEnd {
    /// An answer of `status` the caller used.
    pub fn answered(status: u16) -> CallEnd {
        CallEnd {
            status: Some(status),
            error: None,
        }
    }

    /// An answer of `status` the caller could not use, for `error`
    /// ([`CallError::Status`] or [`CallError::Body`]).
    pub fn unusable(status: u16, error: CallError) -> CallEnd {
        CallEnd {
            status: Some(status),
            error: Some(error),
        }
    }

    /// No answer, for `error`.
    pub fn failed(error: CallError) -> CallEnd {
        CallEnd {
            status: None,
            error: Some(error),
        }
    }

    /// A shadow's answer of `status`: a 5xx is an error, as for any client span.
    pub fn shadow_answered(status: u16) -> CallEnd {
        if status >= 500 {
            CallEnd::unusable(status, CallError::Status)
        } else {
            CallEnd::answered(status)
        }
    }
}

impl CallError {
    /// The error of a failed exchange with a shadow backend.
    pub fn of(e: &pingora::Error) -> CallError {
        use pingora::ErrorType::*;
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                CallError::Timeout
            }
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
            | HandshakeError | ConnectProxyFailure | BindError | SocketError => CallError::Connect,
            _ => CallError::Exchange,
        }
    }

    /// The error of a request to an auth service that got no answer.
    pub fn of_request(e: &reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout
        } else if e.is_connect() {
            CallError::Connect
        } else {
            CallError::Exchange
        }
    }

    /// Its `error.type`: the status for [`CallError::Status`].
    fn error_type(self, status: Option<u16>) -> Cow<'static, str> {
        match self {
            CallError::Timeout => "timeout".into(),
            CallError::Connect => "connect".into(),
            CallError::Exchange => "exchange".into(),
            CallError::Status => status.map_or("status".into(), |s| s.to_string().into()),
            CallError::Body => "body".into(),
        }
    }
}

/// What a call span shows, on the exporter thread: its kind, name,
/// attributes and status. Attributes follow the HTTP client conventions
/// (`http.request.method`, `server.address`, `server.port`, `url.full` for
/// auth calls, `http.response.status_code`, `error.type`); a mirror copy's
/// also name its shadow (`tollgate.upstream`, `tollgate.backend`).
pub(super) fn shown(
    callee: Callee,
    end: CallEnd,
) -> (SpanKind, Cow<'static, str>, Vec<KeyValue>, Status) {
    let mut attributes = Vec::with_capacity(7);
    let name = match callee {
        Callee::Auth(service) => {
            attributes.push(KeyValue::new("http.request.method", AUTH_METHOD));
            attributes.push(KeyValue::new("url.full", service.url.clone()));
            attributes.push(KeyValue::new("server.address", service.address.clone()));
            if let Some(port) = service.port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            service.name.clone()
        }
        Callee::Shadow {
            upstream,
            backend,
            method,
        } => {
            attributes.push(KeyValue::new(
                "http.request.method",
                super::tracing::method_value(&method),
            ));
            attributes.push(KeyValue::new("tollgate.upstream", upstream.name.clone()));
            if let Some(backend) = upstream.backends.get(backend) {
                attributes.push(KeyValue::new("tollgate.backend", backend.label.clone()));
                attributes.push(KeyValue::new(
                    "server.address",
                    backend.address.ip().to_string(),
                ));
                attributes.push(KeyValue::new(
                    "server.port",
                    i64::from(backend.address.port()),
                ));
            }
            format!("mirror {}", upstream.name)
        }
    };
    if let Some(status) = end.status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    let status = match end.error {
        Some(error) => {
            let kind = error.error_type(end.status);
            attributes.push(KeyValue::new("error.type", kind.clone()));
            Status::error(kind)
        }
        None => Status::Unset,
    };
    (SpanKind::Client, name.into(), attributes, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_url_is_shown_without_credentials_or_token() {
        let url = reqwest::Url::parse("http://user:secret@auth.internal:9000/check?x=1").unwrap();
        let with_token = AuthService::new("sso", &url, true);
        assert_eq!(with_token.name, "auth sso");
        assert_eq!(with_token.url, "http://auth.internal:9000/check");
        assert_eq!(
            (with_token.address.as_str(), with_token.port),
            ("auth.internal", Some(9000))
        );
        let plain = AuthService::new("sso", &url, false);
        assert_eq!(plain.url, "http://auth.internal:9000/check?x=1");
        let https = reqwest::Url::parse("https://auth.example/v1").unwrap();
        assert_eq!(AuthService::new("a", &https, false).port, Some(443));
    }

    #[test]
    fn failures_are_errors_with_their_type() {
        let service = || {
            Callee::Auth(Arc::new(AuthService::new(
                "p",
                &reqwest::Url::parse("http://a/").unwrap(),
                false,
            )))
        };
        let (kind, name, attributes, status) = shown(service(), CallEnd::answered(401));
        assert_eq!((kind, name.as_ref()), (SpanKind::Client, "auth p"));
        assert_eq!(status, Status::Unset);
        assert!(attributes.iter().all(|a| a.key.as_str() != "error.type"));
        let error_type = |end| {
            let (_, _, attributes, status) = shown(service(), end);
            assert!(matches!(status, Status::Error { .. }), "{status:?}");
            attributes
                .into_iter()
                .find(|a| a.key.as_str() == "error.type")
                .map(|a| a.value.to_string())
        };
        assert_eq!(
            error_type(CallEnd::unusable(503, CallError::Status)).as_deref(),
            Some("503")
        );
        assert_eq!(
            error_type(CallEnd::failed(CallError::Timeout)).as_deref(),
            Some("timeout")
        );
        assert_eq!(CallEnd::shadow_answered(404), CallEnd::answered(404));
        assert_eq!(
            CallEnd::shadow_answered(500),
            CallEnd::unusable(500, CallError::Status)
        );
    }
}
