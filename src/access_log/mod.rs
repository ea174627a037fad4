//! One line per answered request, in JSON, the combined format or a format of
//! nginx variables (see [`template`]), to stdout or a file.
//!
//! Lines are formatted on the worker thread and written by a dedicated writer
//! thread through a bounded queue, so a slow or full disk never blocks a request:
//! when the queue is full the line is dropped and counted in the error log. A failed
//! write is reported once per burst and the writer keeps going. A file is
//! reopened at its path on SIGUSR1 (see [`reopen`]), for logrotate.

pub mod reopen;
pub mod template;

use crate::config::{AccessLogFormat, AccessLogTarget};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// How often the writer thread writes what is queued: the most a line waits.
/// At this interval the queue holds 6.5 million lines per second.
const WRITE_INTERVAL: Duration = Duration::from_millis(10);

/// What is logged about one request.
pub(crate) struct AccessEntry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    /// Path and query as the client sent them.
    pub uri: &'a str,
    /// The path as routed and forwarded, when it is not the one sent.
    pub routed_path: Option<&'a str>,
    pub version: &'a str,
    pub host: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration: Duration,
    pub route: &'a str,
    pub upstream: &'a str,
    /// Backend address, or `-`.
    pub backend: &'a str,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub request_headers: &'a http::HeaderMap,
    /// The answer's headers, when one was sent.
    pub response_headers: Option<&'a http::HeaderMap>,
    /// The request's ID, with `server.request_id`.
    pub request_id: Option<&'a str>,
    /// The request's trace ID, with `server.tracing`.
    pub trace_id: Option<&'a str>,
    /// The subject (RFC 4514) of the client certificate the listener
    /// verified, when the client sent one.
    pub client_cert: Option<&'a str>,
}

pub struct AccessLog {
    format: AccessLogFormat,
    sender: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the log target (a file is created or appended to) and starts its
    /// writer thread. `off` writes nothing and starts no thread.
    pub fn open(target: &AccessLogTarget, format: AccessLogFormat) -> io::Result<AccessLog> {
        let (sink, path): (Box<dyn Write + Send>, _) = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    format,
                    sender: None,
                    dropped: Arc::default(),
                });
            }
            AccessLogTarget::Stdout => (Box::new(io::stdout()), None),
            AccessLogTarget::File(path) => (Box::new(open_append(path)?), Some(path.clone())),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || {
                let writer = Writer {
                    out: BufWriter::with_capacity(WRITE_BUFFER, sink),
                    path,
                    generation: reopen::generation(),
                };
                write_lines(receiver, writer, writer_dropped)
            })?;
        Ok(AccessLog {
            format,
            sender: Some(sender),
            dropped,
        })
    }

    /// Queues the line for `entry`; never blocks.
    pub(crate) fn log(&self, entry: &AccessEntry<'_>) {
        let Some(sender) = &self.sender else { return };
        let line = match &self.format {
            AccessLogFormat::Json => json_line(entry),
            AccessLogFormat::Combined => combined_line(entry),
            AccessLogFormat::Custom(template) => template.line(entry),
        };
        if let Err(TrySendError::Full(_)) = sender.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            )
        })
}

/// The writer thread's output: the file (or stdout) and, for a file, its
/// path and the last reopen generation it has seen.
struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    path: Option<PathBuf>,
    generation: u64,
}

impl Writer {
    /// Opens the file at its path again when a reopen has been asked for since
    /// the last time; the old file gets what is buffered first. When the path
    /// cannot be opened, lines go on to the old file.
    fn reopen_if_asked(&mut self) {
        let Some(path) = &self.path else { return };
        let generation = reopen::generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        if let Err(e) = self.out.flush() {
            log::error!("access log write failed before reopening: {e}");
        }
        match open_append(path) {
            Ok(file) => {
                self.out = BufWriter::with_capacity(WRITE_BUFFER, Box::new(file));
                log::info!("access log {} reopened", path.display());
            }
            Err(e) => log::error!("{e}; lines go on to the file open before"),
        }
    }
}

/// The writer's buffer: one write call per batch of lines.
const WRITE_BUFFER: usize = 64 * 1024;

/// Writes queued lines every [`WRITE_INTERVAL`] until every sender is gone.
///
/// The writer never waits on the queue itself: a blocked receiver would make
/// every request's send wake it (a futex call and a context switch per line,
/// measured at a third of a proxied request's CPU under load). Polling on an
/// interval batches a burst into one write and costs the senders nothing.
fn write_lines(receiver: Receiver<String>, mut writer: Writer, dropped: Arc<AtomicU64>) {
    let mut failing = false;
    loop {
        writer.reopen_if_asked();
        let out = &mut writer.out;
        let mut result = Ok(());
        let mut wrote = false;
        let mut senders_gone = false;
        loop {
            match receiver.try_recv() {
                Ok(line) => {
                    wrote = true;
                    if result.is_ok() {
                        result = out.write_all(line.as_bytes());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    senders_gone = true;
                    break;
                }
            }
        }
        if wrote && result.is_ok() {
            result = out.flush();
        }
        match result {
            Err(e) if !failing => {
                log::error!("access log write failed, lines are being lost: {e}");
                failing = true;
            }
            Ok(()) if failing => {
                log::warn!("access log writes work again");
                failing = false;
            }
            _ => {}
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            log::warn!("access log queue was full: {lost} line(s) dropped");
        }
        if senders_gone {
            return;
        }
        std::thread::sleep(WRITE_INTERVAL);
    }
}

/// The two time formats of the log lines.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum TimeFormat {
    /// `2026-11-23T10:40:01`, followed by `.mmmZ` per line.
    Iso,
    /// `23/Nov/2026:10:40:01 +0000`.
    Common,
}

/// Appends the current time in `format`. The part down to the second is
/// formatted once per second per thread and reused; strftime per line cost more
/// than the rest of the line.
pub(crate) fn push_time(out: &mut String, format: TimeFormat) {
    thread_local! {
        static CACHE: std::cell::RefCell<[(i64, String); 2]> =
            const { std::cell::RefCell::new([(i64::MIN, String::new()), (i64::MIN, String::new())]) };
    }
    let now = chrono::Utc::now();
    let second = now.timestamp();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let slot = &mut cache[format as usize];
        if slot.0 != second {
            let pattern = match format {
                TimeFormat::Iso => "%Y-%m-%dT%H:%M:%S",
                TimeFormat::Common => "%d/%b/%Y:%H:%M:%S +0000",
            };
            slot.1.clear();
            let _ = write!(slot.1, "{}", now.format(pattern));
            slot.0 = second;
        }
        out.push_str(&slot.1);
    });
    if format == TimeFormat::Iso {
        let millis = now.timestamp_subsec_millis().min(999);
        out.push('.');
        push_padded3(out, millis);
        out.push('Z');
    }
}

/// Appends `n` (< 1000) with three digits.
pub(crate) fn push_padded3(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 100) as u8));
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

pub(crate) fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn json_line(e: &AccessEntry<'_>) -> String {
    let mut s = String::with_capacity(320);
    s.push_str("{\"time\":\"");
    push_time(&mut s, TimeFormat::Iso);
    let _ = write!(s, "\",\"client\":\"{}\",\"method\":", e.client);
    json_str(&mut s, e.method);
    s.push_str(",\"uri\":");
    json_str(&mut s, e.uri);
    s.push_str(",\"protocol\":");
    json_str(&mut s, e.version);
    s.push_str(",\"host\":");
    json_str(&mut s, e.host);
    s.push_str(",\"status\":");
    push_int(&mut s, e.status);
    s.push_str(",\"bytes_sent\":");
    push_int(&mut s, e.bytes_sent);
    s.push_str(",\"duration_ms\":");
    let micros = e.duration.as_micros();
    push_int(&mut s, micros / 1000);
    s.push('.');
    push_padded3(&mut s, (micros % 1000) as u32);
    s.push_str(",\"route\":");
    json_str(&mut s, e.route);
    s.push_str(",\"upstream\":");
    json_str(&mut s, e.upstream);
    s.push_str(",\"backend\":");
    json_str(&mut s, e.backend);
    s.push_str(",\"referer\":");
    json_str(&mut s, e.referer);
    s.push_str(",\"user_agent\":");
    json_str(&mut s, e.user_agent);
    if let Some(id) = e.request_id {
        s.push_str(",\"request_id\":");
        json_str(&mut s, id);
    }
    if let Some(id) = e.trace_id {
        s.push_str(",\"trace_id\":");
        json_str(&mut s, id);
    }
    if let Some(subject) = e.client_cert {
        s.push_str(",\"client_cert\":");
        json_str(&mut s, subject);
    }
    s.push_str("}\n");
    s
}

/// Appends `text` as a JSON string literal.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// nginx's `combined`: client - - [time] "request" status bytes "referer" "agent",
/// and with `server.request_id` the ID in quotes at the end, as nginx users
/// add `"$request_id"` to theirs, then with `server.tracing` the trace ID.
fn combined_line(e: &AccessEntry<'_>) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{} - - [", e.client);
    push_time(&mut s, TimeFormat::Common);
    s.push_str("] \"");
    quoted_part(&mut s, e.method);
    s.push(' ');
    quoted_part(&mut s, e.uri);
    s.push(' ');
    quoted_part(&mut s, e.version);
    s.push_str("\" ");
    push_int(&mut s, e.status);
    s.push(' ');
    push_int(&mut s, e.bytes_sent);
    s.push_str(" \"");
    quoted_part(&mut s, if e.referer.is_empty() { "-" } else { e.referer });
    s.push_str("\" \"");
    quoted_part(
        &mut s,
        if e.user_agent.is_empty() {
            "-"
        } else {
            e.user_agent
        },
    );
    s.push('"');
    if let Some(id) = e.request_id {
        s.push_str(" \"");
        quoted_part(&mut s, id);
        s.push('"');
    }
    if let Some(id) = e.trace_id {
        s.push_str(" \"");
        quoted_part(&mut s, id);
        s.push('"');
    }
    s.push('\n');
    s
}

/// Appends `text` for use inside double quotes, escaping as nginx does (`\xHH`).
pub(crate) fn quoted_part(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(text);
        return;
    }
    for b in text.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            client: "127.0.0.2".parse().unwrap(),
            method: "GET",
            uri: "/a?b=\"c\"",
            routed_path: None,
            version: "HTTP/1.1",
            host: "x",
            status: 200,
            bytes_sent: 12,
            duration: Duration::from_micros(1500),
            route: "0:/",
            upstream: "app",
            backend: "127.0.0.1:9001",
            referer: "",
            user_agent: "curl/8\n",
            request_headers: &EMPTY,
            response_headers: None,
            request_id: None,
            trace_id: None,
            client_cert: None,
        }
    }

    static EMPTY: std::sync::LazyLock<http::HeaderMap> =
        std::sync::LazyLock::new(http::HeaderMap::new);

    #[test]
    fn json_is_valid_json() {
        let line = json_line(&entry());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/a?b=\"c\"");
        assert_eq!(v["user_agent"], "curl/8\n");
        assert_eq!(v["duration_ms"], 1.5);
    }

    #[test]
    fn lines_carry_the_request_id_when_there_is_one() {
        let json: serde_json::Value = serde_json::from_str(&json_line(&entry())).unwrap();
        assert!(json.get("request_id").is_none());
        assert!(json.get("trace_id").is_none());
        assert!(json.get("client_cert").is_none());
        let with_id = AccessEntry {
            request_id: Some("0af7651916cd43dd8448eb211c80319c"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            client_cert: Some("CN=partner-a,O=Partner A\\, Inc."),
            ..entry()
        };
        let json: serde_json::Value = serde_json::from_str(&json_line(&with_id)).unwrap();
        assert_eq!(json["request_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["client_cert"], "CN=partner-a,O=Partner A\\, Inc.");
        let line = combined_line(&with_id);
        assert!(
            line.ends_with(
                "\"curl/8\\x0A\" \"0af7651916cd43dd8448eb211c80319c\" \
                 \"4bf92f3577b34da6a3ce929d0e0e4736\"\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn combined_escapes_quotes() {
        let line = combined_line(&entry());
        assert!(line.starts_with("127.0.0.2 - - ["), "{line}");
        assert!(
            line.contains("\"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A\"\n"),
            "{line}"
        );
    }
}
