//! Access log lines in a format of the user's, written with nginx's variables:
//! `access_log_format: '$remote_addr [$time_local] "$request" $status "$http_x_forwarded_for"'`.
//!
//! The format is parsed once, at load, into literal text and variables; an unknown
//! variable is a config error. Values are escaped as nginx does by default: `"`,
//! `\` and bytes outside printable ASCII become `\xHH`; an empty value is `-`.
//!
//! Variables: `remote_addr` (the client, after `trusted_proxies`), `remote_user`
//! (always `-`), `time_local`, `time_iso8601`, `msec`, `request` (method, target,
//! protocol), `request_method`, `request_uri` (as the client sent it), `uri` (the
//! path as routed), `args`, `server_protocol`, `status`, `body_bytes_sent`,
//! `bytes_sent`, `request_time` (seconds, millisecond precision), `host`,
//! `http_NAME` (a request header, `-` for `_`), `sent_http_NAME` (a response
//! header), `upstream_addr` (the backend), `request_id` (with `server.request_id`),
//! and tollgate's `route` and `upstream`.
//! `${name}` may be written for `$name`.

use super::{push_int, push_padded3, push_time, quoted_part, AccessEntry, TimeFormat};
use http::header::HeaderName;

/// A parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Status,
    BodyBytesSent,
    RequestTime,
    Host,
    Http(HeaderName),
    SentHttp(HeaderName),
    UpstreamAddr,
    RequestId,
    /// `$trace_id` (or `$otel_trace_id`, as nginx's OpenTelemetry module).
    TraceId,
    /// `$ssl_client_s_dn` (nginx's name): the verified client certificate's
    /// subject, RFC 4514.
    ClientCertSubject,
    Route,
    Upstream,
}

impl Var {
    fn parse(name: &str) -> Result<Var, String> {
        let header = |rest: &str| {
            HeaderName::from_bytes(rest.replace('_', "-").as_bytes())
                .map_err(|_| format!("`${name}` does not name a header"))
        };
        Ok(match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_user" => Var::RemoteUser,
            "time_local" => Var::TimeLocal,
            "time_iso8601" => Var::TimeIso8601,
            "msec" => Var::Msec,
            "request" => Var::Request,
            "request_method" => Var::RequestMethod,
            "request_uri" => Var::RequestUri,
            "uri" => Var::Uri,
            "args" | "query_string" => Var::Args,
            "server_protocol" => Var::ServerProtocol,
            "status" => Var::Status,
            "body_bytes_sent" | "bytes_sent" => Var::BodyBytesSent,
            "request_time" => Var::RequestTime,
            "host" => Var::Host,
            "upstream_addr" => Var::UpstreamAddr,
            "request_id" => Var::RequestId,
            "trace_id" | "otel_trace_id" => Var::TraceId,
            "ssl_client_s_dn" => Var::ClientCertSubject,
            "route" => Var::Route,
            "upstream" => Var::Upstream,
            _ => {
                if let Some(rest) = name.strip_prefix("sent_http_") {
                    Var::SentHttp(header(rest)?)
                } else if let Some(rest) = name.strip_prefix("http_") {
                    Var::Http(header(rest)?)
                } else {
                    return Err(format!("unknown variable `${name}`"));
                }
            }
        })
    }
}

impl Template {
    /// Parses `format`; the error names the first variable that is not one.
    pub fn parse(format: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        while let Some(dollar) = rest.find('$') {
            text.push_str(&rest[..dollar]);
            rest = &rest[dollar + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| "`${` without its `}`".to_string())?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err("a `$` without a variable name".into());
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(Var::parse(name)?));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The line for `entry`, with its newline.
    pub(crate) fn line(&self, e: &AccessEntry<'_>) -> String {
        let mut s = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Text(text) => s.push_str(text),
                Part::Var(var) => push_var(&mut s, var, e),
            }
        }
        s.push('\n');
        s
    }
}

/// Appends `text` escaped, or `-` when it is empty.
fn push_value(out: &mut String, text: &str) {
    if text.is_empty() {
        out.push('-');
    } else {
        quoted_part(out, text);
    }
}

fn push_var(s: &mut String, var: &Var, e: &AccessEntry<'_>) {
    let header = |headers: Option<&http::HeaderMap>, name: &HeaderName| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let (path, query) = e.uri.split_once('?').unwrap_or((e.uri, ""));
    match var {
        Var::RemoteAddr => s.push_str(&e.client.to_string()),
        Var::RemoteUser => s.push('-'),
        Var::TimeLocal => push_time(s, TimeFormat::Common),
        Var::TimeIso8601 => push_time(s, TimeFormat::Iso),
        Var::Msec => {
            let now = chrono::Utc::now();
            push_int(s, now.timestamp());
            s.push('.');
            push_padded3(s, now.timestamp_subsec_millis().min(999));
        }
        Var::Request => {
            quoted_part(s, e.method);
            s.push(' ');
            quoted_part(s, e.uri);
            s.push(' ');
            quoted_part(s, e.version);
        }
        Var::RequestMethod => push_value(s, e.method),
        Var::RequestUri => push_value(s, e.uri),
        Var::Uri => push_value(s, e.routed_path.unwrap_or(path)),
        Var::Args => push_value(s, query),
        Var::ServerProtocol => push_value(s, e.version),
        Var::Status => push_int(s, e.status),
        Var::BodyBytesSent => push_int(s, e.bytes_sent),
        Var::RequestTime => {
            let millis = e.duration.as_millis();
            push_int(s, millis / 1000);
            s.push('.');
            push_padded3(s, (millis % 1000) as u32);
        }
        Var::Host => push_value(s, e.host),
        Var::Http(name) => push_value(s, &header(Some(e.request_headers), name)),
        Var::SentHttp(name) => push_value(s, &header(e.response_headers, name)),
        Var::UpstreamAddr => push_value(s, if e.backend == "-" { "" } else { e.backend }),
        Var::RequestId => push_value(s, e.request_id.unwrap_or_default()),
        Var::TraceId => push_value(s, e.trace_id.unwrap_or_default()),
        Var::ClientCertSubject => push_value(s, e.client_cert.unwrap_or_default()),
        Var::Route => push_value(s, e.route),
        Var::Upstream => push_value(s, e.upstream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nginx_variables_fill_the_line() {
        let mut request_headers = http::HeaderMap::new();
        request_headers.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        request_headers.insert("user-agent", "curl/8 \"x\"".parse().unwrap());
        let mut response_headers = http::HeaderMap::new();
        response_headers.insert("content-type", "text/plain".parse().unwrap());
        let entry = AccessEntry {
            client: "127.0.0.2".parse().unwrap(),
            method: "GET",
            uri: "/a%2e/b?x=1",
            routed_path: Some("/a./b"),
            version: "HTTP/1.1",
            host: "shop.example",
            status: 404,
            bytes_sent: 12,
            duration: Duration::from_micros(1_234_567),
            route: "0:/",
            upstream: "app",
            backend: "127.0.0.1:9001",
            referer: "",
            user_agent: "curl/8 \"x\"",
            request_headers: &request_headers,
            response_headers: Some(&response_headers),
            request_id: Some("0af7651916cd43dd8448eb211c80319c"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            client_cert: Some("CN=partner-a,O=Partner A"),
        };
        let t = Template::parse(
            "$remote_addr \"$request\" $status ${body_bytes_sent} $request_time $uri?$args \
             \"$http_x_forwarded_for\" \"$http_user_agent\" $http_referer $sent_http_content_type \
             $upstream_addr $route $upstream $host $request_id $trace_id \"$ssl_client_s_dn\"",
        )
        .unwrap();
        assert_eq!(
            t.line(&entry),
            "127.0.0.2 \"GET /a%2e/b?x=1 HTTP/1.1\" 404 12 1.234 /a./b?x=1 \"203.0.113.7\" \
             \"curl/8 \\x22x\\x22\" - text/plain 127.0.0.1:9001 0:/ app shop.example \
             0af7651916cd43dd8448eb211c80319c 4bf92f3577b34da6a3ce929d0e0e4736 \
             \"CN=partner-a,O=Partner A\"\n"
        );
    }

    #[test]
    fn unknown_variables_are_errors() {
        assert!(Template::parse("$remote_addr $nope")
            .unwrap_err()
            .contains("`$nope`"));
        assert!(Template::parse("${status").is_err());
        assert!(Template::parse("cost: $").is_err());
        assert!(Template::parse("no variables at all").is_ok());
    }
}
