//! The `static` route action: files under `root`, as nginx `root` (the request path
//! is appended to it), streamed in chunks, never read whole.
//!
//! Paths are decoded strictly before they touch the file system: `..` and `.`
//! segments, encoded slashes (`%2f`), backslashes, NUL bytes and dotfiles are
//! refused (404), and the file found is canonicalized and must lie inside the
//! canonical root, so a symlink pointing outside is refused too. Directories serve
//! their `index` file; listings are never produced.

use crate::edge::compression::CompressionPolicy;
use crate::edge::respond::send_answer;
use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, LOCATION, RANGE,
};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read and sent per chunk.
const CHUNK: usize = 16 * 1024;

pub struct StaticFiles {
    /// The canonical root directory.
    root: PathBuf,
    index: String,
    /// A file under `root` sent (with status 404) when a file is missing.
    not_found_page: Option<PathBuf>,
}

/// What a request resolved to.
enum Found {
    File(PathBuf, std::fs::Metadata),
    /// A directory asked for without its trailing slash: redirect to it.
    AddSlash,
    Missing,
}

impl StaticFiles {
    /// Checks that `root` is a directory now; the path is canonicalized once.
    pub fn new(
        root: &Path,
        index: String,
        not_found_page: Option<&str>,
    ) -> Result<StaticFiles, String> {
        let canonical = std::fs::canonicalize(root)
            .map_err(|e| format!("cannot use root {}: {e}", root.display()))?;
        if !canonical.is_dir() {
            return Err(format!("root {} is not a directory", root.display()));
        }
        let not_found_page = not_found_page.map(|p| canonical.join(p.trim_start_matches('/')));
        Ok(StaticFiles {
            root: canonical,
            index,
            not_found_page,
        })
    }

    /// Answers the request in `session` with the file at `path` under the root
    /// (the request's path as forwarded, see `filters::request_path`, less a
    /// stripped prefix); a directory asked without its `/` is redirected to
    /// `request_path` and a `/`. Returns the status sent. `compression`, when
    /// set, decides whether the file's answer is compressed.
    pub async fn serve(
        &self,
        session: &mut Session,
        path: &str,
        request_path: &str,
        compression: Option<&CompressionPolicy>,
    ) -> pingora::Result<u16> {
        let req = session.req_header();
        let head_only = req.method == http::Method::HEAD;
        if req.method != http::Method::GET && !head_only {
            let mut header = ResponseHeader::build(405, Some(2))?;
            header.insert_header(http::header::ALLOW, "GET, HEAD")?;
            send_answer(
                session,
                header,
                Bytes::from_static(b"405 Method Not Allowed\n"),
            )
            .await?;
            return Ok(405);
        }
        let Some(relative) = safe_relative_path(path) else {
            return self.not_found(session, compression).await;
        };
        match self.find(&relative).await {
            Found::File(path, meta) => {
                self.send_file(session, &path, &meta, head_only, 200, compression)
                    .await
            }
            Found::AddSlash => {
                let mut header = ResponseHeader::build(301, Some(2))?;
                let query = session
                    .req_header()
                    .uri
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                header.insert_header(LOCATION, format!("{request_path}/{query}"))?;
                send_answer(session, header, Bytes::new()).await?;
                Ok(301)
            }
            Found::Missing => self.not_found(session, compression).await,
        }
    }

    async fn find(&self, relative: &str) -> Found {
        let wants_directory = relative.is_empty() || relative.ends_with('/');
        let mut candidate = self.root.join(relative);
        if wants_directory {
            candidate.push(&self.index);
        }
        let Ok(canonical) = tokio::fs::canonicalize(&candidate).await else {
            return Found::Missing;
        };
        if !canonical.starts_with(&self.root) {
            return Found::Missing;
        }
        let Ok(meta) = tokio::fs::metadata(&canonical).await else {
            return Found::Missing;
        };
        if meta.is_dir() {
            return if wants_directory {
                Found::Missing
            } else {
                Found::AddSlash
            };
        }
        if !meta.is_file() {
            return Found::Missing;
        }
        Found::File(canonical, meta)
    }

    async fn not_found(
        &self,
        session: &mut Session,
        compression: Option<&CompressionPolicy>,
    ) -> pingora::Result<u16> {
        if let Some(page) = &self.not_found_page {
            if let Ok(meta) = tokio::fs::metadata(page).await {
                if meta.is_file() {
                    let head_only = session.req_header().method == http::Method::HEAD;
                    return self
                        .send_file(session, page, &meta, head_only, 404, compression)
                        .await;
                }
            }
        }
        plain_not_found(session).await
    }

    /// Sends `path` with validators, honouring If-None-Match, If-Modified-Since and
    /// one byte range.
    async fn send_file(
        &self,
        session: &mut Session,
        path: &Path,
        meta: &std::fs::Metadata,
        head_only: bool,
        status: u16,
        compression: Option<&CompressionPolicy>,
    ) -> pingora::Result<u16> {
        let len = meta.len();
        let (etag, modified) = validators(meta);
        let last_modified = httpdate::fmt_http_date(modified);
        let content_type = mime_guess::from_path(path).first_or_octet_stream();

        let req = session.req_header();
        if status == 200 && not_modified(req, &etag, modified) {
            let mut header = ResponseHeader::build(304, Some(2))?;
            header.insert_header(ETAG, &etag)?;
            header.insert_header(LAST_MODIFIED, &last_modified)?;
            session
                .write_response_header(Box::new(header), true)
                .await?;
            return Ok(304);
        }
        let range = match req.headers.get(RANGE).and_then(|v| v.to_str().ok()) {
            Some(spec) if status == 200 => parse_range(spec, len),
            _ => RangeRequest::Whole,
        };
        let (status, start, count) = match range {
            RangeRequest::Whole => (status, 0, len),
            RangeRequest::Part(start, end) => (206, start, end - start + 1),
            RangeRequest::Unsatisfiable => {
                let mut header = ResponseHeader::build(416, Some(2))?;
                header.insert_header(CONTENT_RANGE, format!("bytes */{len}"))?;
                send_answer(session, header, Bytes::new()).await?;
                return Ok(416);
            }
        };

        let mut header = ResponseHeader::build(status, Some(6))?;
        header.insert_header(CONTENT_TYPE, content_type.as_ref())?;
        header.insert_header(CONTENT_LENGTH, count)?;
        header.insert_header(ETAG, &etag)?;
        header.insert_header(LAST_MODIFIED, &last_modified)?;
        header.insert_header(ACCEPT_RANGES, "bytes")?;
        if status == 206 {
            header.insert_header(
                CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", start + count - 1),
            )?;
        }
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            // Gone or unreadable since it was found.
            Err(_) => return plain_not_found(session).await,
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start)).await.map_err(|e| {
                pingora::Error::because(
                    pingora::ErrorType::FileReadError,
                    "seeking a static file",
                    e,
                )
            })?;
        }
        let empty = head_only || count == 0;
        if let Some(policy) = compression {
            policy.check_response(session, &header);
        }
        session
            .write_response_header(Box::new(header), empty)
            .await?;
        if empty {
            return Ok(status);
        }
        stream(session, &mut file, count).await?;
        Ok(status)
    }
}

/// The ETag (mtime and length) and Last-Modified time of a file.
fn validators(meta: &std::fs::Metadata) -> (String, SystemTime) {
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mtime = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (
        format!("\"{:x}-{:x}\"", mtime.as_secs(), meta.len()),
        modified,
    )
}

/// Sends `count` bytes of `file` as the response body, in chunks of [`CHUNK`].
async fn stream(
    session: &mut Session,
    file: &mut tokio::fs::File,
    count: u64,
) -> pingora::Result<()> {
    let mut left = count;
    let mut buf = vec![0u8; CHUNK.min(count as usize)];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want]).await.map_err(|e| {
            pingora::Error::because(
                pingora::ErrorType::FileReadError,
                "reading a static file",
                e,
            )
        })?;
        if n == 0 {
            // The file shrank while being sent: the response cannot be completed.
            return pingora::Error::e_explain(
                pingora::ErrorType::FileReadError,
                "static file shrank while sent",
            );
        }
        left -= n as u64;
        session
            .write_response_body(Some(Bytes::copy_from_slice(&buf[..n])), left == 0)
            .await?;
    }
    Ok(())
}

async fn plain_not_found(session: &mut Session) -> pingora::Result<u16> {
    let mut header = ResponseHeader::build(404, Some(1))?;
    header.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    send_answer(session, header, Bytes::from_static(b"404 Not Found\n")).await?;
    Ok(404)
}

/// Whether the client's copy (by ETag, else by date) is current.
fn not_modified(req: &pingora::http::RequestHeader, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = req.headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    let since = req
        .headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified.duration_since(SystemTime::UNIX_EPOCH)) {
        (Some(since), Ok(mtime)) => since
            .duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|s| mtime.as_secs() <= s.as_secs()),
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range against a file of `len` bytes. Several ranges, or a
/// header that does not parse, get the whole file (RFC 9110 allows ignoring Range).
fn parse_range(spec: &str, len: u64) -> RangeRequest {
    let Some(ranges) = spec.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if ranges.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = ranges.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let parse = |s: &str| {
        if s.is_empty() {
            Some(None)
        } else {
            s.parse::<u64>().ok().map(Some)
        }
    };
    match (parse(first.trim()), parse(last.trim())) {
        (Some(Some(start)), Some(end)) => {
            let end = end.unwrap_or(u64::MAX).min(len.saturating_sub(1));
            if start >= len || end < start {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(start, end)
            }
        }
        (Some(None), Some(Some(suffix))) => {
            if suffix == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(len.saturating_sub(suffix), len - 1)
            }
        }
        _ => RangeRequest::Whole,
    }
}

/// The request path, percent-decoded, as a path relative to the root; `None`
/// when it tries to leave the root or names something never served.
fn safe_relative_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (h, l) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
            let c = (h * 16 + l) as u8;
            // An encoded slash or backslash would hide a segment boundary.
            if c == b'/' || c == b'\\' {
                return None;
            }
            decoded.push(c);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).ok()?;
    if text.contains('\0') || text.contains('\\') || !text.starts_with('/') {
        return None;
    }
    let segments: Vec<&str> = text.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        // `.`, `..` and dotfiles (.git, .env) are never served; empty segments
        // (`//`) only at the end, as the directory marker.
        if segment.starts_with('.') || (segment.is_empty() && i != last) {
            return None;
        }
    }
    Some(text[1..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        assert_eq!(
            safe_relative_path("/poster/a.jpg").as_deref(),
            Some("poster/a.jpg")
        );
        assert_eq!(safe_relative_path("/poster/").as_deref(), Some("poster/"));
        assert_eq!(safe_relative_path("/").as_deref(), Some(""));
        assert_eq!(safe_relative_path("/p%20q.txt").as_deref(), Some("p q.txt"));
        for bad in [
            "/../etc/passwd",
            "/poster/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/poster%2f..%2f..%2fetc",
            "/poster/..\\..\\etc",
            "/a%00.txt",
            "/.git/config",
            "/.env",
            "//etc/passwd",
            "/a%5c..",
            "/%",
            "/%zz",
            "relative",
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad} accepted");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Part(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeRequest::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Whole);
    }
}
