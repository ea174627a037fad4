//! Tracing (`server.tracing`): W3C trace context continued or started and
//! passed to the backend, one SERVER span per sampled request exported over
//! OTLP/HTTP to a receiver that decodes it with the official
//! `opentelemetry-proto` package (tests/python/otlp_receiver.py), the trace
//! ID in the access log, and a collector that is down or slow costing
//! requests nothing; CLIENT spans of forward-auth calls and mirror copies,
//! whose IDs the auth service and the shadow get as their parent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A sampled `traceparent` of trace `n` (32 hex digits of it), with the
/// caller's span `PARENT`.
fn sampled(n: u8) -> String {
    format!("00-{}-{PARENT}-01", trace_of(n))
}

fn trace_of(n: u8) -> String {
    format!("{:032x}", 0xabc0_0000_u128 + u128::from(n))
}

/// The spans of `trace` in `got`: (the SERVER spans, the CLIENT spans).
fn of_trace<'a>(got: &'a [Value], trace: &str) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let mine = got.iter().filter(|s| s["trace_id"] == trace);
    let (server, client): (Vec<_>, Vec<_>) = mine.partition(|s| s["kind"] == 2);
    assert!(client.iter().all(|s| s["kind"] == 3), "{client:?}");
    (server, client)
}

/// The one SERVER and one CLIENT span of `trace`; the CLIENT span is the
/// SERVER span's child, starts after it, and has its own ID. With `within`
/// (a call the request waits for), it also ends before it.
fn server_and_call<'a>(got: &'a [Value], within: bool, trace: &str) -> (&'a Value, &'a Value) {
    let (server, client) = of_trace(got, trace);
    assert_eq!((server.len(), client.len()), (1, 1), "{trace}: {got:?}");
    let (server, call) = (server[0], client[0]);
    assert_eq!(call["parent_span_id"], server["span_id"], "{call}");
    assert_ne!(call["span_id"], server["span_id"]);
    assert_eq!(call["service_name"], "edge");
    let time = |s: &Value, at: &str| s[at].as_u64().unwrap();
    assert!(
        time(call, "start") >= time(server, "start"),
        "{call} {server}"
    );
    assert!(time(call, "end") >= time(call, "start"), "{call}");
    if within {
        assert!(time(call, "end") <= time(server, "end"), "{call} {server}");
    }
    (server, call)
}

/// The auth service of the tracing tests: 500 to requests for `/broken`,
/// else 200 with the headers it was sent as `seen`.
fn tracing_auth_service() -> (std::net::SocketAddr, std::sync::Arc<AtomicUsize>) {
    head_answering_service(|seen| {
        let uri = seen.get("x-forwarded-uri").and_then(Value::as_str);
        let status = match uri {
            Some(uri) if uri.starts_with("/broken") => "500 Internal Server Error",
            _ => "200 OK",
        };
        (status, serde_json::json!({ "seen": seen }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_auth_call_has_a_client_span_whose_id_the_auth_service_gets() {
    let receiver = receiver(&[]);
    let (auth, asked) = tracing_auth_service();
    let dead = DeadAddress::new();
    let backend = Backend::start("app");
    let body = format!(
        "upstreams:\n  app:\n    backends: [{{address: {backend}}}]\n\
         auth:\n  checked:\n    forward:\n      url: http://{auth}/check\n      pass_headers: [Cookie]\n\
         \x20     identity_from_json: {{X-Seen-Traceparent: seen.traceparent, X-Seen-Tracestate: seen.tracestate}}\n\
         \x20 tokened:\n    forward: {{url: \"http://{auth}/token?v=1\", token_query: access_token, cache: 60s}}\n\
         \x20 gone:\n    forward: {{url: \"http://{dead}/check\", pass_headers: [Cookie]}}\n\
         routes:\n  - {{match: {{path_prefix: /}}, upstream: app, auth: checked}}\n\
         \x20 - {{match: {{path_prefix: /token/}}, upstream: app, auth: tokened}}\n\
         \x20 - {{match: {{path_prefix: /dead/}}, upstream: app, auth: gone}}\n",
        backend = backend.addr,
        dead = dead.addr,
    );
    let tollgate = Tollgate::start_with(&body, &tracing_to(&receiver, "")).await;
    let client = reqwest::Client::new();
    let ask = |path: &str, traceparent: String| {
        client
            .get(tollgate.url(path))
            .header("Cookie", "session=1")
            .header("traceparent", traceparent)
    };

    // Unsampled: the auth service gets what the backend gets; no span.
    let unsampled = format!("00-{}-{PARENT}-00", trace_of(0));
    let answer = ask("/get", unsampled).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen: Value = answer.json().await.unwrap();
    let sent = seen["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(parts(sent).1, trace_of(0));
    assert_eq!(seen["headers"]["x-seen-traceparent"], sent, "{seen}");

    // No credentials: 401 without asking, so no call span.
    let refused = client
        .get(tollgate.url("/get"))
        .header("traceparent", sampled(1))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // Sampled: the auth service's parent is the call's span, the backend's tollgate's.
    let answer = ask("/get", sampled(2))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen: Value = answer.json().await.unwrap();
    let headers = &seen["headers"];
    let to_backend = parts(headers["traceparent"].as_str().unwrap());
    let to_auth = parts(headers["x-seen-traceparent"].as_str().unwrap());
    assert_eq!((&to_auth.1, to_auth.3.as_str()), (&trace_of(2), "01"));
    assert_ne!(
        to_auth.2, to_backend.2,
        "the auth service's parent is its own span"
    );
    assert_eq!(headers["x-seen-tracestate"], "vendor=abc", "{seen}");

    // A 500 from the auth service, and one that is not there: 503, error spans.
    let broken = ask("/broken", sampled(3)).send().await.unwrap();
    assert_eq!(broken.status(), 503);
    let gone = ask("/dead/x", sampled(4)).send().await.unwrap();
    assert_eq!(gone.status(), 503);

    // The token in the query is not in the span; a cached pass asks no one.
    for n in [5, 6] {
        let passed = client
            .get(tollgate.url("/token/a"))
            .header("Authorization", "Bearer secret-token")
            .header("traceparent", sampled(n))
            .send()
            .await
            .unwrap();
        assert_eq!(passed.status(), 200);
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4);

    // Spans are exported in the order they end: once the last request's is
    // in, every earlier one is.
    let all_in = wait_until(Duration::from_secs(10), || async {
        let got = spans(&receiver, 1).await;
        !of_trace(&got, &trace_of(6)).0.is_empty()
    })
    .await;
    assert!(all_in);
    let got = spans(&receiver, 10).await;
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(of_trace(&got, &trace_of(0)).0.is_empty(), "{got:?}");
    let spans_of = |n| {
        let (server, client) = of_trace(&got, &trace_of(n));
        (server.len(), client.len())
    };
    assert_eq!(spans_of(1), (1, 0), "a 401 without asking has no call span");
    assert_eq!(spans_of(6), (1, 0), "a cache hit has no call span");

    let (server, call) = server_and_call(&got, true, &trace_of(2));
    assert_eq!(server["span_id"], to_backend.2.as_str());
    assert_eq!(call["span_id"], to_auth.2.as_str());
    assert_eq!(call["name"], "auth checked");
    assert_eq!(call["status"], 0, "{call}");
    let a = &call["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.full"], format!("http://{auth}/check"));
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], i64::from(auth.port()));
    assert_eq!(a["http.response.status_code"], 200);
    assert!(a.get("error.type").is_none(), "{a}");

    let (_, broken) = server_and_call(&got, true, &trace_of(3));
    assert_eq!(broken["status"], 2, "STATUS_CODE_ERROR: {broken}");
    assert_eq!(broken["attributes"]["http.response.status_code"], 500);
    assert_eq!(broken["attributes"]["error.type"], "500");
    let (server, gone) = server_and_call(&got, true, &trace_of(4));
    assert_eq!(server["attributes"]["http.response.status_code"], 503);
    assert_eq!(
        (gone["name"].as_str(), gone["status"].as_i64()),
        (Some("auth gone"), Some(2))
    );
    assert_eq!(gone["attributes"]["error.type"], "connect", "{gone}");
    assert!(gone["attributes"]
        .get("http.response.status_code")
        .is_none());
    assert_eq!(
        gone["attributes"]["url.full"],
        format!("http://{}/check", dead.addr)
    );

    let (_, tokened) = server_and_call(&got, true, &trace_of(5));
    assert_eq!(tokened["name"], "auth tokened");
    assert_eq!(
        tokened["attributes"]["url.full"],
        format!("http://{auth}/token")
    );
    assert!(!tokened.to_string().contains("secret-token"), "{tokened}");
}

/// The `traceparent` `origin` got for `target` (its last request for it).
fn traceparent_at(origin: &Origin, target: &str) -> (String, String, String, String) {
    let seen = origin.last(target);
    let value = seen.headers.get("traceparent").map(|v| v.to_str().unwrap());
    parts(value.unwrap_or_else(|| panic!("no traceparent for {target}: {seen:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_copy_has_a_client_span_whose_id_the_shadow_gets() {
    let receiver = receiver(&[]);
    let (app, shadow) = (
        Origin::start_named("app").await,
        Origin::start_named("shadow").await,
    );
    let dead = DeadAddress::new();
    let body = TopologyBody::new()
        .upstream("app", &[app.addr], "")
        .upstream("shadow", &[shadow.addr], "")
        .upstream("gone", &[dead.addr], "")
        .route("/", "app", "    mirror: {upstream: shadow}\n")
        .route("/lost/", "app", "    mirror: {upstream: gone}\n")
        .yaml();
    let tollgate = Tollgate::start_with(&body, &tracing_to(&receiver, "")).await;
    let client = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder, traceparent: String| async move {
        let answer = request.header("traceparent", traceparent).send().await;
        assert_eq!(answer.unwrap().status(), 200);
    };
    let unsampled = format!("00-{}-{PARENT}-00", trace_of(0));
    send(client.get(tollgate.url("/plain?u=1")), unsampled).await;
    send(client.get(tollgate.url("/search?q=1")), sampled(1)).await;
    send(
        client.post(tollgate.url("/orders")).body("an order"),
        sampled(2),
    )
    .await;
    send(client.get(tollgate.url("/lost/x")), sampled(3)).await;
    let copied = wait_until(Duration::from_secs(10), || async {
        shadow.seen().len() == 3
    })
    .await;
    assert!(copied, "the shadow got {:?}", shadow.seen());

    // Unsampled: the copy carries the backend's traceparent.
    let to_app = traceparent_at(&app, "/plain?u=1");
    assert_eq!(traceparent_at(&shadow, "/plain?u=1"), to_app);
    assert_eq!((to_app.1, to_app.3.as_str()), (trace_of(0), "00"));

    let got = spans(&receiver, 6).await;
    assert!(of_trace(&got, &trace_of(0)).0.is_empty(), "{got:?}");
    let (server, copy) = server_and_call(&got, false, &trace_of(1));
    let (to_app, to_shadow) = (
        traceparent_at(&app, "/search?q=1"),
        traceparent_at(&shadow, "/search?q=1"),
    );
    assert_eq!(server["span_id"], to_app.2.as_str());
    assert_eq!(copy["span_id"], to_shadow.2.as_str(), "{copy}");
    assert_eq!((to_shadow.1, to_shadow.3.as_str()), (trace_of(1), "01"));
    assert_eq!(copy["name"], "mirror shadow");
    assert_eq!(copy["status"], 0, "{copy}");
    let a = &copy["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["tollgate.upstream"], "shadow");
    assert_eq!(a["tollgate.backend"], shadow.addr.to_string());
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], i64::from(shadow.addr.port()));
    assert_eq!(a["http.response.status_code"], 200);

    // A buffered body is copied once it is read whole; the copy has its span.
    let (_, order) = server_and_call(&got, false, &trace_of(2));
    assert_eq!(order["attributes"]["http.request.method"], "POST");
    assert_eq!(
        order["span_id"],
        traceparent_at(&shadow, "/orders").2.as_str()
    );

    // A dead shadow: the client is answered, the copy's span is an error.
    let (_, lost) = server_and_call(&got, false, &trace_of(3));
    assert_eq!(
        (lost["name"].as_str(), lost["status"].as_i64()),
        (Some("mirror gone"), Some(2))
    );
    assert_eq!(lost["attributes"]["error.type"], "connect", "{lost}");
    assert_eq!(
        lost["attributes"]["tollgate.backend"],
        dead.addr.to_string()
    );
    assert!(lost["attributes"]
        .get("http.response.status_code")
        .is_none());
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
