//! Response compression (gzip or zstd, the first the client's Accept-Encoding
//! lists) through pingora's downstream compression module, under our policy: only
//! listed content types, only bodies of at least `min_size`, never a body that is
//! already encoded or a partial (206) one.
//!
//! Brotli is not offered: pingora 0.9.1 never finishes its brotli streams
//! (cloudflare/pingora#1013), which strict decoders reject. `br` is removed from
//! Accept-Encoding before the module reads it, so those clients get gzip or zstd.

use crate::config::CompressionConfig;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;

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

    /// Removes `br` from the request's Accept-Encoding (see the module doc); call
    /// from `early_request_filter`, before the compression module reads it.
    pub fn refuse_brotli(&self, req: &mut pingora::http::RequestHeader) {
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
    }

    /// The level the compression module starts every request with; it reads the
    /// request's Accept-Encoding only when enabled from the start.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Turns compression off again when `resp` should not be compressed; call
    /// right before the header is written.
    pub fn check_response(&self, session: &mut Session, resp: &ResponseHeader) {
        if !self.eligible(resp) {
            if let Some(module) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                module.adjust_level(0);
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
