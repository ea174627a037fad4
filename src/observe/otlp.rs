//! The export of finished spans to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), off the request path.
//!
//! A request hands its finished span to [`SpanExport::send`], which puts it on
//! a bounded queue and returns at once; a span that finds the queue full is
//! dropped and counted. A thread of its own takes spans off the queue in
//! batches (up to [`BATCH_SPANS`], or what came within [`BATCH_INTERVAL`]),
//! turns them into OpenTelemetry's span type and posts them with the
//! `opentelemetry-otlp` exporter, whose failures (after its own retries,
//! within [`EXPORT_TIMEOUT`]) are counted too. A collector that is down or
//! slow therefore costs requests nothing but the spans it loses.

use crate::metrics::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus::IntCounter;
use std::time::Duration;
use tokio::sync::mpsc;

/// The most spans posted in one request to the collector.
pub const BATCH_SPANS: usize = 512;

/// The longest a finished span waits for its batch to fill.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The most of a collector's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest one batch may take to post, retries included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request path's end of the export: cheap to call, never blocks.
pub struct SpanExport<S> {
    queue: mpsc::Sender<S>,
    dropped_queue_full: IntCounter,
}

impl<S: Send + 'static> SpanExport<S> {
    /// Starts the exporter thread posting to `endpoint` (the full URL spans
    /// are posted to) as service `service_name`; each span is turned into
    /// OpenTelemetry's form by `convert` on that thread. `queue` is the bound
    /// of spans waiting.
    pub fn start(
        endpoint: &reqwest::Url,
        service_name: &str,
        queue: usize,
        convert: fn(S) -> SpanData,
    ) -> anyhow::Result<SpanExport<S>> {
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT)
            .build()?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(CollectorClient(http))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(service_name.to_string())
                .build(),
        );
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || runtime.block_on(export_batches(receiver, exporter, convert)))?;
        // Both reasons are exported from the start, at 0.
        metrics()
            .tracing_spans_dropped
            .with_label_values(&["export_failed"]);
        Ok(SpanExport {
            queue: sender,
            dropped_queue_full: metrics()
                .tracing_spans_dropped
                .with_label_values(&["queue_full"]),
        })
    }

    /// Queues `span` for export, or drops and counts it when the queue is full.
    pub fn send(&self, span: S) {
        if self.queue.try_send(span).is_err() {
            self.dropped_queue_full.inc();
        }
    }
}

/// The exporter thread: batches spans as they come and posts each batch,
/// until every sender is gone.
async fn export_batches<S>(
    mut queue: mpsc::Receiver<S>,
    exporter: opentelemetry_otlp::SpanExporter,
    convert: fn(S) -> SpanData,
) {
    let exported = metrics().tracing_spans_exported.clone();
    let failed = metrics()
        .tracing_spans_dropped
        .with_label_values(&["export_failed"]);
    let mut taken = Vec::with_capacity(BATCH_SPANS);
    loop {
        if queue.recv_many(&mut taken, BATCH_SPANS).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while taken.len() < BATCH_SPANS {
            let room = BATCH_SPANS - taken.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut taken, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let batch: Vec<SpanData> = taken.drain(..).map(convert).collect();
        let spans = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => exported.inc_by(spans),
            Err(e) => {
                failed.inc_by(spans);
                log::warn!("tracing: could not export {spans} spans: {e}");
            }
        }
    }
}

/// The exporter's HTTP client: tollgate's reqwest, rustls included, rather
/// than a second HTTP stack.
#[derive(Debug)]
struct CollectorClient(reqwest::Client);

#[async_trait]
impl opentelemetry_http::HttpClient for CollectorClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (head, body) = request.into_parts();
        let answer = self
            .0
            .request(head.method, head.uri.to_string())
            .headers(head.headers)
            .body(body)
            .send()
            .await?;
        let mut response = http::Response::builder().status(answer.status());
        if let Some(headers) = response.headers_mut() {
            *headers = answer.headers().clone();
        }
        // A collector's answer is a small status message; more is not read.
        let mut answer = answer;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = answer.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err("the collector's answer is over 64 KiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(response.body(body.freeze())?)
    }
}

/// Where spans are posted for `server.tracing.otlp`: its `/v1/traces` when it
/// names no path, as the OTLP standard's base URL; the URL itself otherwise.
pub fn traces_endpoint(otlp: &reqwest::Url) -> reqwest::Url {
    let mut endpoint = otlp.clone();
    if endpoint.path() == "/" || endpoint.path().is_empty() {
        endpoint.set_path("/v1/traces");
    }
    endpoint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        assert_eq!(
            traces_endpoint(&url("http://127.0.0.1:4318")).as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint(&url("https://otel.example/custom/spans")).as_str(),
            "https://otel.example/custom/spans"
        );
    }
}
