//! One line per answered request, in JSON or the combined format, to stdout or a file.
//!
//! Lines are formatted on the worker thread and written by a dedicated writer
//! thread through a bounded queue, so a slow or full disk never blocks a request:
//! when the queue is full the line is dropped and counted in the error log. A failed
//! write is reported once per burst and the writer keeps going.

use crate::config::{AccessLogFormat, AccessLogTarget};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// What is logged about one request.
pub struct AccessEntry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    /// Path and query as the client sent them.
    pub uri: &'a str,
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
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    format,
                    sender: None,
                    dropped: Arc::default(),
                });
            }
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(open_append(path)?),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || {
                write_lines(
                    receiver,
                    BufWriter::with_capacity(64 * 1024, sink),
                    writer_dropped,
                )
            })?;
        Ok(AccessLog {
            format,
            sender: Some(sender),
            dropped,
        })
    }

    /// Queues the line for `entry`; never blocks.
    pub fn log(&self, entry: &AccessEntry<'_>) {
        let Some(sender) = &self.sender else { return };
        let line = match self.format {
            AccessLogFormat::Json => json_line(entry),
            AccessLogFormat::Combined => combined_line(entry),
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

fn write_lines(
    receiver: Receiver<String>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    dropped: Arc<AtomicU64>,
) {
    let mut failing = false;
    while let Ok(first) = receiver.recv() {
        let mut result = out.write_all(first.as_bytes());
        // Write whatever else is queued, then flush once.
        while let Ok(line) = receiver.try_recv() {
            if result.is_ok() {
                result = out.write_all(line.as_bytes());
            }
        }
        if result.is_ok() {
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
    }
}

fn json_line(e: &AccessEntry<'_>) -> String {
    let mut s = String::with_capacity(320);
    let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let _ = write!(
        s,
        "{{\"time\":\"{time}\",\"client\":\"{}\",\"method\":",
        e.client
    );
    json_str(&mut s, e.method);
    s.push_str(",\"uri\":");
    json_str(&mut s, e.uri);
    s.push_str(",\"protocol\":");
    json_str(&mut s, e.version);
    s.push_str(",\"host\":");
    json_str(&mut s, e.host);
    let _ = write!(
        s,
        ",\"status\":{},\"bytes_sent\":{},\"duration_ms\":{:.3},\"route\":",
        e.status,
        e.bytes_sent,
        e.duration.as_secs_f64() * 1000.0
    );
    json_str(&mut s, e.route);
    s.push_str(",\"upstream\":");
    json_str(&mut s, e.upstream);
    s.push_str(",\"backend\":");
    json_str(&mut s, e.backend);
    s.push_str(",\"referer\":");
    json_str(&mut s, e.referer);
    s.push_str(",\"user_agent\":");
    json_str(&mut s, e.user_agent);
    s.push_str("}\n");
    s
}

/// Appends `text` as a JSON string literal.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
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

/// nginx's `combined`: client - - [time] "request" status bytes "referer" "agent".
fn combined_line(e: &AccessEntry<'_>) -> String {
    let time = chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S +0000");
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{} - - [{time}] \"", e.client);
    quoted_part(&mut s, e.method);
    s.push(' ');
    quoted_part(&mut s, e.uri);
    s.push(' ');
    quoted_part(&mut s, e.version);
    let _ = write!(s, "\" {} {} \"", e.status, e.bytes_sent);
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
    s.push_str("\"\n");
    s
}

/// Appends `text` for use inside double quotes, escaping as nginx does (`\xHH`).
fn quoted_part(out: &mut String, text: &str) {
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
        }
    }

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
    fn combined_escapes_quotes() {
        let line = combined_line(&entry());
        assert!(line.starts_with("127.0.0.2 - - ["), "{line}");
        assert!(
            line.contains("\"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A\"\n"),
            "{line}"
        );
    }
}
