//! Tracing (`server.tracing`): W3C trace context continued or started and
//! passed to the backend, one SERVER span per sampled request exported over
//! OTLP/HTTP to a receiver that decodes it with the official
//! `opentelemetry-proto` package (tests/python/otlp_receiver.py), the trace
//! ID in the access log, and a collector that is down or slow costing
//! requests nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn tracing_to(receiver: &Backend, extra: &str) -> String {
    format!(
        "  tracing: {{otlp: \"http://{}\", service_name: edge{extra}}}",
        receiver.addr
    )
}

fn receiver(args: &[&str]) -> Backend {
    Backend::start_python("otlp", "otlp_receiver.py", args)
}

/// The spans the receiver has, once there are at least `n`.
async fn spans(receiver: &Backend, n: usize) -> Vec<Value> {
    let url = format!("http://{}/spans", receiver.addr);
    let fetch = || async {
        reqwest::get(&url)
            .await
            .unwrap()
            .json::<Vec<Value>>()
            .await
            .unwrap()
    };
    let arrived = wait_until(Duration::from_secs(10), || async {
        fetch().await.len() >= n
    })
    .await;
    let got = fetch().await;
    assert!(arrived, "fewer than {n} spans: {got:?}");
    got
}

/// The `traceparent` (and `tracestate`) the demo backend was sent.
async fn seen_by_backend(answer: reqwest::Response) -> (String, Option<String>) {
    let seen: Value = answer.json().await.unwrap();
    let header = |name: &str| seen["headers"][name].as_str().map(str::to_string);
    let traceparent =
        header("traceparent").unwrap_or_else(|| panic!("the backend got no traceparent: {seen}"));
    (traceparent, header("tracestate"))
}

/// (version, trace ID, parent ID, flags) of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(
        (p[1].len(), p[2].len(), p[3].len()),
        (32, 16, 2),
        "{traceparent}"
    );
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

async fn json_log(tollgate: &Tollgate, n: usize) -> Vec<Value> {
    let written = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() >= n
    })
    .await;
    assert!(written, "fewer than {n} lines:\n{}", tollgate.access_log());
    let log = tollgate.access_log();
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_trace_is_continued_and_tollgates_span_reaches_the_collector() {
    let receiver = receiver(&[]);
    let backend = Backend::start("app");
    // sample 0%: only the caller's sampled flag can make the span recorded.
    let tollgate = Tollgate::start_with(
        &format!("{}\n", proxy_to(&[backend.addr])),
        &tracing_to(&receiver, ", sample: 0%"),
    )
    .await;
    let client = reqwest::Client::new();
    let answer = client
        .get(tollgate.url("/get?q=1"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=abc,other=1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let (sent, state) = seen_by_backend(answer).await;
    let (version, trace, span, flags) = parts(&sent);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(span, PARENT, "tollgate's span is the backend's parent");
    assert_eq!(state.as_deref(), Some("vendor=abc,other=1"));

    let got = spans(&receiver, 1).await;
    let s = &got[0];
    assert_eq!(s["trace_id"], TRACE);
    assert_eq!(s["span_id"], span.as_str());
    assert_eq!(s["parent_span_id"], PARENT);
    assert_eq!(s["service_name"], "edge");
    assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER: {s}");
    assert_eq!(s["status"], 0, "unset: {s}");
    let a = &s["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/get");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["tollgate.upstream"], "app");
    assert_eq!(a["tollgate.backend"], backend.addr.to_string());
    assert!(a["tollgate.route"].is_string(), "{a}");
    for timing in [
        "tollgate.upstream.connect_ms",
        "tollgate.upstream.first_byte_ms",
    ] {
        let ms = a[timing]
            .as_f64()
            .unwrap_or_else(|| panic!("{timing} in {a}"));
        assert!((0.0..10_000.0).contains(&ms), "{timing} = {ms}");
    }
    let (start, end) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
    assert!(start > 0 && end >= start, "{s}");

    // A body buffered through a subrequest: one span, with the backend's
    // timings, and the backend sees tollgate's span as its parent.
    let posted = client
        .post(tollgate.url("/post"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body("a body")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let (sent, _) = seen_by_backend(posted).await;
    let got = spans(&receiver, 2).await;
    let post = got
        .iter()
        .find(|s| s["attributes"]["http.request.method"] == "POST")
        .unwrap();
    assert_eq!(post["span_id"], parts(&sent).2.as_str());
    assert_eq!(post["parent_span_id"], PARENT);
    assert!(
        post["attributes"]["tollgate.upstream.first_byte_ms"].is_f64(),
        "{post}"
    );

    // The access log names the trace.
    let lines = json_log(&tollgate, 2).await;
    assert!(lines.iter().all(|l| l["trace_id"] == TRACE), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_traces_are_sampled_as_configured_and_an_unsampled_caller_is_followed() {
    let receiver = receiver(&[]);
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!("{}\n", proxy_to(&[backend.addr])),
        &tracing_to(&receiver, ", sample: 50%"),
    )
    .await;
    let client = reqwest::Client::new();

    // A caller that did not sample: followed, same trace, nothing exported.
    let answer = client
        .get(tollgate.url("/get"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-00"))
        .send()
        .await
        .unwrap();
    let (sent, _) = seen_by_backend(answer).await;
    let (_, trace, _, flags) = parts(&sent);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));

    // An invalid traceparent (upper case) starts a new trace; its tracestate goes.
    let answer = client
        .get(tollgate.url("/get"))
        .header(
            "traceparent",
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        )
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let (sent, state) = seen_by_backend(answer).await;
    assert_ne!(parts(&sent).1.to_lowercase(), TRACE);
    assert_eq!(state, None);

    // New traces: about half sampled, each with its own trace ID; exactly
    // the sampled ones are exported, as root spans.
    let mut sampled = Vec::new();
    let mut traces = std::collections::HashSet::new();
    let total = 400;
    for _ in 0..total {
        let answer = client.get(tollgate.url("/get")).send().await.unwrap();
        let (sent, _) = seen_by_backend(answer).await;
        let (_, trace, span, flags) = parts(&sent);
        assert!(traces.insert(trace.clone()), "trace IDs repeat: {trace}");
        if flags == "01" {
            sampled.push((trace, span));
        }
    }
    let share = sampled.len() as f64 / total as f64;
    assert!((0.35..0.65).contains(&share), "sampled share {share}");
    let got = spans(&receiver, sampled.len()).await;
    // The invalid caller's new trace was sampled or not; the rest are exact.
    let exported: std::collections::HashSet<_> = got
        .iter()
        .map(|s| {
            (
                s["trace_id"].as_str().unwrap().to_string(),
                s["span_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for pair in &sampled {
        assert!(exported.contains(pair), "{pair:?} not exported");
    }
    assert!(
        got.len() <= sampled.len() + 1,
        "{} spans for {} sampled",
        got.len(),
        sampled.len()
    );
    assert!(
        got.iter().all(|s| s["trace_id"] != TRACE),
        "the unsampled caller's trace was exported"
    );
    let root = got
        .iter()
        .find(|s| s["trace_id"] == sampled[0].0.as_str())
        .unwrap();
    assert_eq!(
        root["parent_span_id"], "",
        "a new trace's span has no parent: {root}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgates_own_answers_have_spans_and_a_5xx_is_an_error() {
    let receiver = receiver(&[]);
    let dead = DeadAddress::new();
    let body = TopologyBody::new()
        .upstream("gone", &[dead.addr], "")
        .route("/gone", "gone", "")
        .raw_route("  - match: {path_prefix: /hello}\n    respond: {status: 200, body: hi}\n")
        .yaml();
    let tollgate = Tollgate::start_with(&body, &tracing_to(&receiver, "")).await;
    let client = reqwest::Client::new();
    let failed = client.get(tollgate.url("/gone")).send().await.unwrap();
    assert_eq!(failed.status(), 502);
    let answered = client.get(tollgate.url("/hello")).send().await.unwrap();
    assert_eq!(answered.status(), 200);

    let got = spans(&receiver, 2).await;
    let by_path = |path: &str| {
        got.iter()
            .find(|s| s["attributes"]["url.path"] == path)
            .unwrap_or_else(|| panic!("no span of {path}: {got:?}"))
    };
    let gone = by_path("/gone");
    assert_eq!(gone["status"], 2, "STATUS_CODE_ERROR: {gone}");
    assert_eq!(gone["attributes"]["http.response.status_code"], 502);
    assert_eq!(gone["attributes"]["tollgate.upstream"], "gone");
    assert_eq!(
        gone["attributes"]["tollgate.backend"],
        dead.addr.to_string()
    );
    let hello = by_path("/hello");
    assert_eq!(hello["status"], 0);
    assert!(
        hello["attributes"].get("tollgate.upstream").is_none(),
        "{hello}"
    );
}

/// Sends `n` requests one after another; all must be answered 200.
async fn all_answered(tollgate: &Tollgate, n: usize) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..n {
        let answer = client.get(tollgate.url("/get")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "request {i}");
    }
    started.elapsed()
}

async fn dropped(tollgate: &Tollgate, reason: &str) -> f64 {
    let text = tollgate.metrics().await;
    metric_value(
        &text,
        "tollgate_tracing_spans_dropped_total",
        &[("reason", reason)],
    )
    .unwrap_or_else(|| panic!("no dropped-span series for {reason}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing_and_its_spans_are_counted() {
    let dead = DeadAddress::new();
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!("{}\n", proxy_to(&[backend.addr])),
        &format!("  tracing: {{otlp: \"http://{}\"}}", dead.addr),
    )
    .await;
    all_answered(&tollgate, 300).await;
    let counted = wait_until(Duration::from_secs(15), || async {
        dropped(&tollgate, "export_failed").await > 0.0
    })
    .await;
    assert!(counted, "{}", tollgate.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_costs_requests_nothing_and_a_full_queue_drops_spans() {
    // The collector answers each export after 20 s, longer than tollgate
    // waits: the exporter is stuck while requests go on.
    let receiver = receiver(&["--delay", "20"]);
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!("{}\n", proxy_to(&[backend.addr])),
        &tracing_to(&receiver, ", queue: 20"),
    )
    .await;
    let took = all_answered(&tollgate, 600).await;
    assert!(took < Duration::from_secs(20), "600 requests took {took:?}");
    let counted = wait_until(Duration::from_secs(5), || async {
        dropped(&tollgate, "queue_full").await > 0.0
    })
    .await;
    assert!(counted, "{}", tollgate.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_service_is_sent_the_traceparent_the_backend_gets() {
    let receiver = receiver(&[]);
    let (auth, asked) =
        head_answering_service(|seen| ("200 OK", serde_json::json!({ "seen": seen })));
    let backend = Backend::start("app");
    let body = format!(
        "upstreams:\n  app:\n    backends: [{{address: {backend}}}]\n\
         auth:\n  checked:\n    forward:\n      url: http://{auth}/check\n      pass_headers: [Cookie]\n\
         \x20     identity_from_json: {{X-Seen-Traceparent: seen.traceparent, X-Seen-Tracestate: seen.tracestate}}\n\
         routes:\n  - {{match: {{path_prefix: /}}, upstream: app, auth: checked}}\n",
        backend = backend.addr
    );
    let tollgate = Tollgate::start_with(&body, &tracing_to(&receiver, "")).await;
    let answer = reqwest::Client::new()
        .get(tollgate.url("/get"))
        .header("Cookie", "session=1")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    let seen: Value = answer.json().await.unwrap();
    let headers = &seen["headers"];
    let sent = headers["traceparent"].as_str().unwrap();
    assert_eq!(parts(sent).1, TRACE);
    assert_eq!(headers["x-seen-traceparent"], sent, "{seen}");
    assert_eq!(headers["x-seen-tracestate"], "vendor=abc", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_last_requests_are_sent_at_once_when_tollgate_stops() {
    let receiver = receiver(&[]);
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!("{}\n", proxy_to(&[backend.addr])),
        &tracing_to(&receiver, ""),
    )
    .await;
    let answer = reqwest::get(tollgate.url("/get")).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answered = Instant::now();
    tollgate.signal(libc::SIGTERM);
    spans(&receiver, 1).await;
    // A batch waits up to a second to fill; a stopping tollgate closes the
    // queue, and the exporter posts what it holds at once.
    let took = answered.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "the span came {took:?} after its request"
    );
}

#[test]
fn an_otlp_url_that_does_not_parse_is_refused_at_its_line() {
    let contents = "server:\n  listeners:\n    - address: 127.0.0.1:0\n  tracing:\n    otlp: \"collector:4318 x\"\nroutes:\n  - match: {path_prefix: /}\n    respond: {status: 200}\n";
    assert_refused_at(contents, 5, &["invalid url", "collector:4318 x"]);
    let sample = contents.replace("otlp: \"collector:4318 x\"", "sample: 120%");
    assert_refused_at(&sample, 5, &["percentage"]);
}
