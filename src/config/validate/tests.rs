//! Validation, one row per rule: an edit of a valid file, the node the problem
//! must name, and words of its message.

use crate::config::parse;
use std::path::Path;

const VALID: &str = "\
server:
  threads: 2
  listeners:
    - address: 127.0.0.1:18080
    - address: 127.0.0.1:18443
      tls:
        certificates: [{cert: /c.pem, key: /k.pem}]
  metrics: 127.0.0.1:19091
upstreams:
  app:
    backends:
      - address: 127.0.0.1:19001
    health_check: {http: {path: /health}, interval: 5s}
    passive: {max_fails: 1, fail_timeout: 10s}
auth:
  users:
    forward: {url: \"http://127.0.0.1:7000/check\", copy_headers: [X-User]}
  tokens:
    jwt: {algorithms: [HS256], secret_env: S}
rate_limits:
  per_client: {key: client_ip, rate: 10/s, burst: 5}
caches:
  pages: {memory: 1MiB, default_ttl: {200: 1m}}
  files: {memory: 1MiB, disk: {path: /var/cache/t, size: 1GiB}}
routes:
  - name: api
    match: {path_prefix: /api/}
    upstream: app
    auth: users
    rate_limit: per_client
    cache: pages
  - match: {path: /old}
    redirect: {to: /new, status: 301}
  - match: {path_prefix: /}
    respond: {status: 200, body: ok}
";

/// Applies the `edits` (from -> to) to the valid file and returns what
/// validation said.
fn problems_of_all(edits: &[(&str, &str)]) -> String {
    let mut text = VALID.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "the row's edit does not apply: {from}");
        text = text.replace(from, to);
    }
    match parse(&text, Path::new("t.yaml")) {
        Ok(_) => String::new(),
        Err(errors) => errors.to_string(),
    }
}

fn problems_of(from: &str, to: &str) -> String {
    problems_of_all(&[(from, to)])
}

#[test]
fn the_valid_file_is_valid() {
    assert_eq!(problems_of("threads: 2", "threads: 2"), "");
}

/// (edit from, edit to, node the problem names, words of its message)
const RULES: &[(&str, &str, &str, &str)] = &[
    ("threads: 2", "threads: 0", "server.threads", "at least 1"),
    (
        "    - address: 127.0.0.1:18443",
        "    - address: 127.0.0.1:18080",
        "server.listeners[1].address",
        "listed twice",
    ),
    (
        "metrics: 127.0.0.1:19091",
        "metrics: 127.0.0.1:18080",
        "server.metrics",
        "also a proxy listener",
    ),
    (
        "certificates: [{cert: /c.pem, key: /k.pem}]",
        "certificates: []",
        "server.listeners[1].tls.certificates",
        "at least one",
    ),
    (
        "      - address: 127.0.0.1:19001\n",
        "      - address: 127.0.0.1:19001\n        weight: 0\n",
        "upstreams.app.backends[0].weight",
        "out of range",
    ),
    (
        "{http: {path: /health}, interval: 5s}",
        "{http: {path: /health}, tcp: {}}",
        "upstreams.app.health_check",
        "exactly one of",
    ),
    (
        "interval: 5s}",
        "interval: 0s}",
        "upstreams.app.health_check.interval",
        "more than 0",
    ),
    (
        "fail_timeout: 10s",
        "fail_timeout: 0s",
        "upstreams.app.passive.fail_timeout",
        "more than 0",
    ),
    (
        "    upstream: app\n    auth: users",
        "    upstream: nope\n    auth: users",
        "routes[0].upstream",
        "unknown upstream `nope`",
    ),
    (
        "    upstream: app\n    auth: users",
        "    split: [{upstream: app, weight: 0}]\n    auth: users",
        "routes[0].split",
        "sum to 0",
    ),
    (
        "    upstream: app\n    auth: users",
        "    split: [{upstream: app, weight: 1}, {upstream: nope, weight: 1}]\n    auth: users",
        "routes[0].split[1].upstream",
        "unknown upstream `nope` (defined: app)",
    ),
    (
        "    upstream: app\n    auth: users",
        "    upstream: app\n    split: [{upstream: app, weight: 1}]\n    auth: users",
        "routes[0].split",
        "either `upstream` or `split`, not both",
    ),
    (
        "    upstream: app\n    auth: users",
        "    split: []\n    auth: users",
        "routes[0].split",
        "at least one arm",
    ),
    (
        "    upstream: app\n    auth: users",
        "    split: [{upstream: app, weight: 1001}]\n    auth: users",
        "routes[0].split[0].weight",
        "expected 0 to 1000",
    ),
    (
        "    auth: users\n",
        "    auth: nobody\n",
        "routes[0].auth",
        "unknown auth policy",
    ),
    (
        "    rate_limit: per_client",
        "    rate_limit: none",
        "routes[0].rate_limit",
        "unknown rate limit",
    ),
    (
        "burst: 5}",
        "burst: 5, status: 418}",
        "rate_limits.per_client.status",
        "429 or 503",
    ),
    (
        "redirect: {to: /new, status: 301}",
        "redirect: {to: /new, status: 200}",
        "routes[1].redirect.status",
        "not a redirect status",
    ),
    (
        "respond: {status: 200, body: ok}",
        "respond: {status: 100}",
        "routes[2].respond.status",
        "final HTTP status",
    ),
    (
        "  - match: {path: /old}",
        "  - match: {path: /old, path_prefix: /old/}",
        "routes[1].match",
        "not both",
    ),
    (
        "  - match: {path_prefix: /}\n",
        "  - match: {path_prefix: /api/}\n",
        "routes[2].match",
        "same match",
    ),
    (
        "    redirect: {to: /new, status: 301}",
        "    redirect: {to: /new, status: 301}\n    upstream: app",
        "routes[1]",
        "exactly one action",
    ),
    (
        "  - name: api",
        "  - name: \"\"",
        "routes[0].name",
        "non-empty",
    ),
    (
        "jwt: {algorithms: [HS256], secret_env: S}",
        "jwt: {algorithms: [HS256]}",
        "auth.tokens.jwt",
        "secret_env",
    ),
    (
        "jwt: {algorithms: [HS256], secret_env: S}",
        "jwt: {algorithms: [RS256]}",
        "auth.tokens.jwt",
        "jwks_file",
    ),
    (
        "copy_headers: [X-User]",
        "copy_headers: [Host]",
        "auth.users.forward.copy_headers[0]",
        "cannot carry an identity",
    ),
    (
        "copy_headers: [X-User]",
        "copy_headers: [X-User], forbidden_statuses: [401]",
        "auth.users.forward.forbidden_statuses",
        "unauthorized_statuses too",
    ),
    (
        "copy_headers: [X-User]",
        "copy_headers: [X-User], unauthorized_statuses: [200]",
        "auth.users.forward.unauthorized_statuses[0]",
        "not a refusal",
    ),
    (
        "copy_headers: [X-User]",
        "copy_headers: [X-User], token_query: \"a b\"",
        "auth.users.forward.token_query",
        "query parameter",
    ),
    (
        "  users:\n",
        "  us ers:\n",
        "auth.us ers",
        "invalid auth policy name",
    ),
    (
        "default_ttl: {200: 1m}",
        "default_ttl: {200: 1m, 302: 1m}",
        "caches.pages.default_ttl.302",
        "freshness the origin gives",
    ),
    (
        "default_ttl: {200: 1m}",
        "default_ttl: {200: 0s}",
        "caches.pages.default_ttl.200",
        "more than 0",
    ),
    (
        "pages: {memory: 1MiB,",
        "pages: {memory: 0B,",
        "caches.pages.memory",
        "needs memory",
    ),
    (
        "pages: {memory: 1MiB,",
        "pages: {memory: 1MiB, max_object: 2MiB,",
        "caches.pages.max_object",
        "larger than the cache",
    ),
    (
        "size: 1GiB}",
        "size: 0B}",
        "caches.files.disk.size",
        "more than 0",
    ),
    (
        "pages: {memory: 1MiB, default_ttl: {200: 1m}}",
        "pages: {memory: 1MiB, disk: {path: /var/cache/t, size: 1GiB}}",
        "caches.pages.disk.path",
        "directory of cache `files` too",
    ),
    (
        "  pages: {memory",
        "  pa.ges: {memory",
        "caches.pa.ges",
        "invalid cache name",
    ),
    (
        "    cache: pages\n",
        "    cache: pages\n    request_headers: {set: {Content-Length: \"5\"}}\n",
        "routes[0].request_headers.set",
        "managed by tollgate",
    ),
    (
        "    cache: pages\n",
        "    cache: pages\n    request_headers: {remove: [Host, X-Forwarded-For]}\n",
        "routes[0].request_headers.remove",
        "`Host` is managed by tollgate",
    ),
    (
        "    cache: pages\n",
        "    cache: pages\n    response_headers: {remove: [Transfer-Encoding]}\n",
        "routes[0].response_headers.remove",
        "managed by tollgate",
    ),
    (
        "    respond: {status: 200, body: ok}",
        "    respond: {status: 200, body: ok}\n    request_headers: {set: {X-A: b}}",
        "routes[2].request_headers",
        "only a route with an `upstream`",
    ),
    (
        "    cache: pages\n",
        "    cache: pages\n    error_pages: {302: /srv/302.html}\n",
        "routes[0].error_pages.302",
        "not an error status",
    ),
    (
        "    cache: pages\n",
        "    cache: nowhere\n",
        "routes[0].cache",
        "unknown cache `nowhere` (defined: files, pages)",
    ),
    (
        "    respond: {status: 200, body: ok}",
        "    respond: {status: 200, body: ok}\n    cache: pages",
        "routes[2].cache",
        "only a route with an `upstream`",
    ),
    (
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  request_id: {header: Content-Type}\n",
        "server.request_id.header",
        "meaning of its own",
    ),
    (
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  request_id: {header: X-Forwarded-For}\n",
        "server.request_id.header",
        "meaning of its own",
    ),
    (
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  tracing: {queue: 0}\n",
        "server.tracing.queue",
        "at least 1",
    ),
    (
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  request_id: {header: X-User}\n",
        "server.request_id.header",
        "identity header of auth policy `users`",
    ),
];

/// `hash_key` with `algorithm: hash`, and the features that do not go with it.
const HASHING_RULES: &[(&str, &str, &str, &str)] = &[
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    algorithm: hash\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.algorithm",
        "algorithm hash needs `hash_key`",
    ),
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    hash_key: path\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.hash_key",
        "only with `algorithm: hash`, and this upstream's algorithm is round_robin",
    ),
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    algorithm: ip_hash\n    hash_key: path\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.hash_key",
        "ip_hash always hashes the client address",
    ),
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    algorithm: hash\n    hash_key: cookie:sid\n    slow_start: 30s\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.slow_start",
        "hash does not ramp",
    ),
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    algorithm: hash\n    hash_key: header:X-Client-Cert-Sha256\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.hash_key",
        "x-client-cert-sha256 is set from the connection's client certificate",
    ),
    (
        "    backends:\n      - address: 127.0.0.1:19001\n",
        "    algorithm: ip_hash\n    slow_start: 30s\n    backends:\n      - address: 127.0.0.1:19001\n",
        "upstreams.app.slow_start",
        "ip_hash does not ramp",
    ),
];

#[test]
fn hash_keys_go_with_algorithm_hash() {
    for (from, to, node, words) in HASHING_RULES {
        let said = problems_of(from, to);
        assert!(
            said.contains(&format!("{node}: ")) && said.contains(words),
            "{from} -> {to}: expected `{node}: ...{words}...` in:\n{said}"
        );
    }
    for key in ["client_ip", "header:X-User", "cookie:sid", "path", "uri"] {
        let said = problems_of(
            "    backends:\n      - address: 127.0.0.1:19001\n",
            &format!(
                "    algorithm: hash\n    hash_key: \"{key}\"\n    backends:\n      - address: 127.0.0.1:19001\n"
            ),
        );
        assert_eq!(said, "", "{key}");
    }
}

#[test]
fn each_rule_names_its_node() {
    for (from, to, node, words) in RULES {
        let said = problems_of(from, to);
        assert!(
            said.contains(&format!("{node}: ")) && said.contains(words),
            "{from} -> {to}: expected `{node}: ...{words}...` in:\n{said}"
        );
    }
}

#[test]
fn the_request_id_header_is_left_to_server_request_id() {
    let on = (
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  request_id: {}\n",
    );
    assert_eq!(problems_of_all(&[on]), "", "the header has a default");
    let said = problems_of_all(&[
        on,
        (
            "    cache: pages\n",
            "    cache: pages\n    request_headers: {remove: [x-request-id]}\n    response_headers: {set: {X-Request-Id: a}}\n",
        ),
    ]);
    for node in [
        "routes[0].request_headers.remove",
        "routes[0].response_headers.set",
    ] {
        assert!(
            said.contains(&format!("{node}: `")) && said.contains("carries the request ID"),
            "{node} in:\n{said}"
        );
    }
    let renamed = problems_of(
        "  metrics: 127.0.0.1:19091\n",
        "  metrics: 127.0.0.1:19091\n  request_id: {header: X-Trace, trust_incoming: true}\n",
    );
    assert_eq!(renamed, "");
}

#[test]
fn a_split_route_proxies_as_an_upstream_route_does() {
    // Cache, request headers and strip_prefix are for routes that send
    // requests on; a split route does, and an arm may have weight 0.
    let said = problems_of(
        "    upstream: app\n    auth: users",
        "    split:\n      - {upstream: app, weight: 9}\n      - {upstream: app, weight: 0, when_header: {X-Canary: \"1\"}}\n    strip_prefix: true\n    request_headers: {set: {X-Env: prod}}\n    auth: users",
    );
    assert_eq!(said, "");
}

#[test]
fn a_limit_on_the_auth_subject_needs_an_auth_policy() {
    let said = problems_of_all(&[
        ("key: client_ip,", "key: auth_subject,"),
        ("    auth: users\n", ""),
    ]);
    assert!(
        said.contains("routes[0].rate_limit: ") && said.contains("this route has no `auth`"),
        "{said}"
    );
}

#[test]
fn values_with_a_syntax_are_refused_as_they_are_read() {
    let rows: &[(&str, &str, &str)] = &[
        (
            "match: {path_prefix: /api/}",
            "match: {path_prefix: /api/../x/}",
            "write `/x/`",
        ),
        (
            "match: {path_prefix: /api/}",
            "match: {host: \"bad host\", path_prefix: /api/}",
            "invalid host",
        ),
        ("key: client_ip,", "key: cookie,", "invalid rate limit key"),
        (
            "    backends:\n      - address: 127.0.0.1:19001\n",
            "    algorithm: hash\n    hash_key: session\n    backends:\n      - address: 127.0.0.1:19001\n",
            "invalid hash_key `session`: expected client_ip, header:NAME, cookie:NAME, path or uri",
        ),
        (
            "algorithms: [HS256]",
            "algorithms: [none]",
            "unsupported algorithm `none`",
        ),
        (
            "copy_headers: [X-User]",
            "copy_headers: [\"bad header\"]",
            "invalid header name",
        ),
        (
            "    upstream: app\n    auth: users",
            "    split: [{upstream: app, weight: 1, when_header: {\"X Canary\": \"1\"}}]\n    auth: users",
            "invalid header name `X Canary`",
        ),
        (
            "url: \"http://127.0.0.1:7000/check\"",
            "url: \"ftp://x/\"",
            "invalid url",
        ),
        (
            "  metrics: 127.0.0.1:19091\n",
            "  metrics: 127.0.0.1:19091\n  tracing: {otlp: \"127.0.0.1 4318\"}\n",
            "invalid url `127.0.0.1 4318`",
        ),
        (
            "  metrics: 127.0.0.1:19091\n",
            "  metrics: 127.0.0.1:19091\n  tracing: {sample: often}\n",
            "invalid percentage `often`",
        ),
        ("rate: 10/s", "rate: 10", "rate"),
        (
            "default_ttl: {200: 1m}",
            "default_ttl: {200: soon}",
            "invalid duration",
        ),
        (
            "default_ttl: {200: 1m}",
            "default_ttl: {2000: 1m}",
            "not an HTTP status",
        ),
        (
            "pages: {memory: 1MiB,",
            "pages: {memory: lots,",
            "invalid size",
        ),
    ];
    for (from, to, words) in rows {
        let said = problems_of(from, to);
        assert!(
            said.contains(words),
            "{from} -> {to}: expected `{words}` in:\n{said}"
        );
    }
}
