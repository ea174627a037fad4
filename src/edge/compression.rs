//! Response compression under our policy: only listed content types, only bodies
//! of at least `min_size`, never a body that is already encoded or a partial (206)
//! one.
//!
//! Brotli, when the client accepts it, is done by [`BrotliCompression`], our own
//! downstream module: pingora 0.9.1's brotli never finishes its streams
//! (cloudflare/pingora#1013), which strict decoders reject, so `br` is removed
//! from Accept-Encoding before pingora's module reads it. gzip and zstd (the
//! first the client lists) are done by pingora's module.

use crate::config::CompressionConfig;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::proxy::Session;
use std::io::Write;

/// The brotli encoder's internal buffer: one page, as the crate's examples use.
const BROTLI_BUFFER: usize = 4096;
/// log2 of brotli's sliding window: 22 (4 MiB), the format's default (RFC 7932).
const BROTLI_WINDOW_BITS: u32 = 22;

pub struct CompressionPolicy {
    level: u32,
    min_size: u64,
    /// Lower-case media types, without parameters.
    types: Vec<String>,
}

impl CompressionPolicy {
    pub fn new(config: &CompressionConfig) -> Self {
        CompressionPolicy {
            level: config.level,
            min_size: config.min_size,
            types: config
                .types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Hands brotli to our module when the client accepts it, and removes `br`
    /// from the request's Accept-Encoding (see the module doc). Call from
    /// `early_request_filter`, before pingora's compression module reads it.
    pub(crate) fn route_brotli(&self, session: &mut Session) {
        let req = session.req_header_mut();
        let Some(value) = req
            .headers
            .get(http::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let is_br = |coding: &str| {
            coding
                .split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("br"))
        };
        if !value.split(',').any(is_br) {
            return;
        }
        let kept: Vec<&str> = value
            .split(',')
            .filter(|c| !is_br(c))
            .map(str::trim)
            .collect();
        if kept.is_empty() {
            req.remove_header(&http::header::ACCEPT_ENCODING);
        } else if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
            let _ = req.insert_header(http::header::ACCEPT_ENCODING, v);
        }
        if let Some(module) = session
            .downstream_modules_ctx
            .get_mut::<BrotliCompression>()
        {
            module.arm(self.level);
        }
    }

    /// The level the compression module starts every request with; it reads the
    /// request's Accept-Encoding only when enabled from the start.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Turns compression off again when `resp` should not be compressed; call
    /// right before the header is written.
    pub(crate) fn check_response(&self, session: &mut Session, resp: &ResponseHeader) {
        if !self.eligible(resp) {
            if let Some(module) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                module.adjust_level(0);
            }
            if let Some(module) = session
                .downstream_modules_ctx
                .get_mut::<BrotliCompression>()
            {
                module.disarm();
            }
        }
    }

    fn eligible(&self, resp: &ResponseHeader) -> bool {
        if resp.status == http::StatusCode::PARTIAL_CONTENT
            || resp.headers.contains_key(CONTENT_RANGE)
            || resp.headers.contains_key(CONTENT_ENCODING)
        {
            return false;
        }
        let small = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len < self.min_size);
        if small {
            return false;
        }
        let Some(media) = resp.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = media.split(';').next().unwrap_or("").trim();
        self.types.iter().any(|t| t.eq_ignore_ascii_case(media))
    }
}

/// Brotli for one response, streams finished properly. Armed per request by
/// [`CompressionPolicy::route_brotli`] when the client accepts `br`, disarmed by
/// [`CompressionPolicy::check_response`] for answers that are not to be
/// compressed. Runs before pingora's compression module, which then sees
/// `Content-Encoding: br` and leaves the body alone.
#[derive(Default)]
pub(crate) struct BrotliCompression {
    /// The quality to compress with, when armed.
    armed: Option<u32>,
    encoder: Option<brotli::CompressorWriter<Vec<u8>>>,
}

impl BrotliCompression {
    pub(crate) fn arm(&mut self, level: u32) {
        self.armed = Some(level);
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = None;
    }

    /// The level it is armed with, if it is.
    pub(crate) fn armed(&self) -> Option<u32> {
        self.armed
    }
}

#[async_trait::async_trait]
impl HttpModule for BrotliCompression {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        let Some(level) = self.armed else {
            return Ok(());
        };
        if resp.status.is_informational() {
            if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                self.armed = None;
            }
            return Ok(());
        }
        self.armed = None;
        if end_of_stream || resp.headers.contains_key(CONTENT_ENCODING) {
            return Ok(());
        }
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&http::header::ACCEPT_RANGES);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        resp.insert_header(CONTENT_ENCODING, "br")?;
        let vary = match resp
            .headers
            .get(http::header::VARY)
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.to_ascii_lowercase().contains("accept-encoding") => None,
            Some(v) => Some(format!("{v}, Accept-Encoding")),
            None => Some("Accept-Encoding".to_string()),
        };
        if let Some(vary) = vary {
            resp.insert_header(http::header::VARY, vary)?;
        }
        if let Some(etag) = resp
            .headers
            .get(http::header::ETAG)
            .map(|e| e.as_bytes().to_vec())
        {
            if etag.starts_with(b"\"") {
                resp.insert_header(http::header::ETAG, [b"W/".as_slice(), &etag].concat())?;
            } else if !etag.starts_with(b"W/") {
                resp.remove_header(&http::header::ETAG);
            }
        }
        self.encoder = Some(brotli::CompressorWriter::new(
            Vec::new(),
            BROTLI_BUFFER,
            level,
            BROTLI_WINDOW_BITS,
        ));
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let failed = |e: std::io::Error| {
            pingora::Error::because(pingora::ErrorType::InternalError, "brotli compression", e)
        };
        if let Some(chunk) = body.as_ref() {
            encoder.write_all(chunk).map_err(failed)?;
        }
        if end_of_stream {
            *body = self.encoder.take().map(|e| Bytes::from(e.into_inner()));
        } else {
            // Flush so that a streamed answer reaches the client as it comes.
            encoder.flush().map_err(failed)?;
            *body = Some(Bytes::from(std::mem::take(encoder.get_mut())));
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        Ok(self.encoder.take().map(|e| Bytes::from(e.into_inner())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Builds [`BrotliCompression`] for each request.
pub(crate) struct BrotliCompressionBuilder;

impl HttpModuleBuilder for BrotliCompressionBuilder {
    fn init(&self) -> Module {
        Box::new(BrotliCompression::default())
    }
}
