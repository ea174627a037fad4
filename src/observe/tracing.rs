//! Tracing (`server.tracing`): every request belongs to a W3C trace, and a
//! sampled one leaves a span of tollgate's at the collector.
//!
//! - A request with a valid `traceparent` continues that trace: the backend
//!   gets the same trace ID with tollgate's span as the parent, and the
//!   sampled flag the client sent, which alone decides whether tollgate's span
//!   is recorded (parent-based sampling).
//! - A request without one (or with one that is not valid) starts a trace,
//!   recorded for `sample` of them; the backend gets its `traceparent` with
//!   the sampled flag as decided, so services that sample by parent follow.
//! - The span is one SERVER span per request, from its head to its end, with
//!   the route, upstream, backend, status and the upstream's connect and
//!   first-byte times; it is exported by [`otlp`](super::otlp), off the
//!   request path.
//! - A recorded request's calls to an auth service and its mirror copies
//!   have CLIENT spans of their own, children of its span (see
//!   [`calls`](super::calls)).

use super::calls::{CallEnd, CallSpan, Callee};
use super::otlp::{self, SpanExport};
use super::trace_context::{self, Parent, TRACEPARENT, TRACEPARENT_WRITTEN, TRACESTATE};
use crate::config::TracingConfig;
use crate::topology::Topology;
use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

/// The process's tracing, from `server.tracing`.
pub struct Tracer {
    /// New traces are recorded when a random `u64` is below this.
    sample_below: u64,
    /// Always record new traces (`sample: 100%`), no random number needed.
    sample_all: bool,
    export: Option<Arc<SpanExport<FinishedSpan>>>,
}

/// The trace of one request: what its backend is told, and what its span
/// records when it is sampled.
pub struct RequestTrace {
    /// The `traceparent` the backend gets: the trace, tollgate's span.
    pub traceparent: HeaderValue,
    trace_id: u128,
    span_id: u64,
    /// The caller's span, when the request continued a trace.
    parent_span_id: Option<u64>,
    /// When a sampled request began, and where its spans go (`None`: not
    /// recorded).
    recording: Option<Recording>,
    /// The current attempt's upstream timings (see [`UpstreamTimings`]),
    /// when the span is recorded (by this request or, for a subrequest,
    /// its main request).
    pub timings: Option<UpstreamTimings>,
}

/// A recorded request's start, and the exporter of its spans.
struct Recording {
    start: SystemTime,
    export: Arc<SpanExport<FinishedSpan>>,
}

/// When the current attempt to reach a backend was made, its connection
/// ready, and its answer's head read; kept for sampled requests only.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamTimings {
    asked: Option<Instant>,
    connected: Option<Instant>,
    first_byte: Option<Instant>,
}

impl UpstreamTimings {
    /// A backend was chosen: a new attempt starts.
    pub fn asked(&mut self) {
        *self = UpstreamTimings {
            asked: Some(Instant::now()),
            ..UpstreamTimings::default()
        };
    }

    /// The attempt's connection is ready.
    pub fn connected(&mut self) {
        self.connected = Some(Instant::now());
    }

    /// The backend's answer head was read.
    pub fn first_byte(&mut self) {
        self.first_byte = Some(Instant::now());
    }

    /// Time to connect, and from the connection to the answer's head.
    fn durations(&self) -> (Option<Duration>, Option<Duration>) {
        let connect = self.asked.zip(self.connected).map(|(a, c)| c - a);
        let first_byte = self.connected.zip(self.first_byte).map(|(c, f)| f - c);
        (connect, first_byte)
    }
}

/// What the end of a sampled request tells its span.
pub struct SpanFacts {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    /// The topology the request was routed on, and where in it it went.
    pub topology: Option<Arc<Topology>>,
    pub route: Option<usize>,
    pub arm: Option<usize>,
    pub upstream: Option<usize>,
    pub backend: Option<usize>,
}

/// A finished span on its way to the exporter thread, which turns it into
/// OpenTelemetry's form (see [`to_span_data`]).
pub struct FinishedSpan {
    pub(super) trace_id: u128,
    pub(super) span_id: u64,
    pub(super) parent_span_id: Option<u64>,
    pub(super) start: SystemTime,
    pub(super) end: SystemTime,
    pub(super) kind: Finished,
}

/// What a finished span was of.
pub(super) enum Finished {
    /// A request: tollgate's SERVER span.
    Request(UpstreamTimings, SpanFacts),
    /// A call made for a request (see [`calls`](super::calls)): a CLIENT span.
    Call(Callee, CallEnd),
}

impl Tracer {
    /// The tracer of `config`; starts the exporter thread when `otlp` is set.
    pub fn start(config: &TracingConfig) -> anyhow::Result<Tracer> {
        let export = match &config.otlp {
            Some(otlp) => Some(Arc::new(SpanExport::start(
                &otlp::traces_endpoint(otlp),
                &config.service_name,
                config.queue,
                to_span_data,
            )?)),
            None => None,
        };
        let share = config.sample.share();
        Ok(Tracer {
            sample_below: (share * u64::MAX as f64) as u64,
            sample_all: share >= 1.0,
            export,
        })
    }

    /// Continues the trace of `req` or starts one (see the module's doc),
    /// and makes its `traceparent` the one tollgate passes on; a started
    /// trace drops the client's `tracestate`. With `subrequest`, `req` is the
    /// head of tollgate's own subrequest, whose `traceparent` is its main
    /// request's: kept as it is, and nothing of the subrequest is recorded
    /// but its upstream timings.
    pub fn begin(
        &self,
        req: &mut RequestHeader,
        subrequest: bool,
    ) -> pingora::Result<RequestTrace> {
        let incoming = super::single_line(&req.headers, &TRACEPARENT)
            .and_then(|v| trace_context::parse_traceparent(v.as_bytes()));
        if subrequest {
            if let Some(Parent {
                trace_id,
                span_id,
                sampled,
            }) = incoming
            {
                return Ok(RequestTrace {
                    traceparent: trace_context::traceparent(trace_id, span_id, sampled),
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    recording: None,
                    timings: (sampled && self.export.is_some()).then(UpstreamTimings::default),
                });
            }
        }
        let (trace_id, parent_span_id, sampled) = match incoming {
            Some(parent) => (parent.trace_id, Some(parent.span_id), parent.sampled),
            None => {
                if req.headers.contains_key(&TRACESTATE) {
                    req.remove_header(&TRACESTATE);
                }
                (
                    trace_context::new_trace_id(),
                    None,
                    self.samples_new_trace(),
                )
            }
        };
        let span_id = trace_context::new_span_id();
        let traceparent = trace_context::traceparent(trace_id, span_id, sampled);
        req.insert_header(TRACEPARENT_WRITTEN, traceparent.clone())?;
        let recording = self
            .export
            .as_ref()
            .filter(|_| sampled)
            .map(|export| Recording {
                start: SystemTime::now(),
                export: Arc::clone(export),
            });
        Ok(RequestTrace {
            traceparent,
            trace_id,
            span_id,
            parent_span_id,
            timings: recording.is_some().then(UpstreamTimings::default),
            recording,
        })
    }

    fn samples_new_trace(&self) -> bool {
        self.sample_all || (self.sample_below > 0 && rand::random::<u64>() < self.sample_below)
    }

    /// Ends the span of `trace` with `facts`, when the request was sampled:
    /// hands it to the exporter (see `otlp::SpanExport::send`).
    pub fn finish(&self, trace: &RequestTrace, facts: impl FnOnce() -> SpanFacts) {
        let Some(recording) = &trace.recording else {
            return;
        };
        recording.export.send(FinishedSpan {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
            start: recording.start,
            end: SystemTime::now(),
            kind: Finished::Request(trace.timings.unwrap_or_default(), facts()),
        });
    }
}

impl RequestTrace {
    /// The upstream timings to note, when the span is recorded.
    pub fn timings(&mut self) -> Option<&mut UpstreamTimings> {
        self.timings.as_mut()
    }

    /// Starts the CLIENT span of a call tollgate makes for this request (to
    /// an auth service, a mirror copy), a child of the request's span; see
    /// [`calls`](super::calls). `None`, at the cost of one test, when the
    /// request's span is not recorded (unsampled, or a subrequest).
    pub fn call(&self) -> Option<CallSpan> {
        let recording = self.recording.as_ref()?;
        Some(CallSpan::start(
            Arc::clone(&recording.export),
            self.trace_id,
            self.span_id,
        ))
    }

    /// The trace ID as 32 hex digits, for the access log.
    pub fn trace_id_text(&self) -> Option<&str> {
        trace_context::trace_id_text(&self.traceparent)
    }
}

static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder("tollgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

/// OpenTelemetry's form of a finished span, on the exporter thread: a
/// request's SERVER span (see [`request_shown`]) or a call's CLIENT span
/// (see `calls::shown`). A call's parent is tollgate's own span, a
/// request's the caller's, when it has one.
fn to_span_data(span: FinishedSpan) -> SpanData {
    let remote_parent = matches!(span.kind, Finished::Request(..)) && span.parent_span_id.is_some();
    let (span_kind, name, attributes, status) = match span.kind {
        Finished::Request(timings, facts) => request_shown(&timings, &facts),
        Finished::Call(callee, end) => super::calls::shown(callee, end),
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id.to_be_bytes()),
            SpanId::from_bytes(span.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from_bytes(span.parent_span_id.unwrap_or(0).to_be_bytes()),
        parent_span_is_remote: remote_parent,
        span_kind,
        name,
        start_time: span.start,
        end_time: span.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: SCOPE.clone(),
    }
}

/// The kind, name, attributes and status of a request's span. Its
/// attributes follow the HTTP semantic conventions where they have a name
/// (`http.request.method`, `url.path`, `http.response.status_code`), and
/// are `tollgate.*` otherwise; a 5xx is an error, as for any server span.
/// Each attribute costs the export some 1,000 instructions, so a span
/// carries what locates the request and its time, no more.
fn request_shown(
    timings: &UpstreamTimings,
    facts: &SpanFacts,
) -> (SpanKind, Cow<'static, str>, Vec<KeyValue>, Status) {
    let topology = facts.topology.as_deref();
    let route = topology.zip(facts.route).and_then(|(t, r)| t.routes.get(r));
    let route_label = route.map_or("-", |r| r.label.as_str());
    let mut attributes = vec![
        KeyValue::new("http.request.method", method_value(&facts.method)),
        KeyValue::new("url.path", facts.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(facts.status)),
        KeyValue::new("tollgate.route", route_label.to_string()),
    ];
    if let Some(route) = route {
        let upstream = route.upstream_label_of(facts.arm);
        if upstream != crate::metrics::NO_UPSTREAM {
            attributes.push(KeyValue::new("tollgate.upstream", upstream.to_string()));
        }
    }
    let backend = topology
        .zip(facts.upstream)
        .and_then(|(t, u)| t.upstreams.get(u))
        .zip(facts.backend)
        .and_then(|(u, b)| u.backends.get(b));
    if let Some(backend) = backend {
        attributes.push(KeyValue::new("tollgate.backend", backend.label.clone()));
        let (connect, first_byte) = timings.durations();
        if let Some(connect) = connect {
            attributes.push(KeyValue::new(
                "tollgate.upstream.connect_ms",
                millis(connect),
            ));
        }
        if let Some(first_byte) = first_byte {
            attributes.push(KeyValue::new(
                "tollgate.upstream.first_byte_ms",
                millis(first_byte),
            ));
        }
    }
    let status = if facts.status >= 500 {
        Status::error(format!("status {}", facts.status))
    } else {
        Status::Unset
    };
    let name = format!("{} {route_label}", facts.method).into();
    (SpanKind::Server, name, attributes, status)
}

/// The method as an attribute value: the standard ones without an allocation.
pub(super) fn method_value(method: &http::Method) -> opentelemetry::Value {
    const STANDARD: [http::Method; 9] = [
        http::Method::GET,
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::HEAD,
        http::Method::OPTIONS,
        http::Method::PATCH,
        http::Method::CONNECT,
        http::Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().position(|m| m == method) {
        Some(i) => NAMES[i].into(),
        None => method.to_string().into(),
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
