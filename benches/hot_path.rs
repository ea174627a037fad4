//! Micro-benchmarks of the per-request work that does not touch a socket: a
//! backend pick of each algorithm (`hash` by a header and by a cookie), a
//! router lookup, a rate-limit check; and the load of a large topology file.
//! Targets (issue #6): pick < 100 ns at 1,000 backends, lookup < 200 ns at
//! 1,000 routes.
//!
//! Run: `cargo bench --bench hot_path` (or `make bench`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use tollgate::balance::hash_key::RequestParts;
use tollgate::balance::Tried;
use tollgate::config;
use tollgate::topology::{Resources, Topology};

const SERVER: &str = "server:\n  listeners:\n    - address: 127.0.0.1:8080\n  access_log: off\n";

/// A topology with one upstream of `n` backends under `algorithm` (which may
/// carry more keys of the upstream: `hash\n    hash_key: ...`), and `routes`
/// routes over hosts and path prefixes.
fn topology_source(algorithm: &str, backends: usize, routes: usize) -> String {
    let mut text =
        format!("{SERVER}upstreams:\n  app:\n    algorithm: {algorithm}\n    backends:\n");
    for i in 0..backends {
        let weight = 1 + i % 3;
        text += &format!(
            "      - {{address: 10.{}.{}.{}:8080, weight: {weight}}}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    text += "routes:\n";
    for i in 0..routes {
        let host = if i % 2 == 0 {
            format!("host: svc{}.example.com, ", i % 50)
        } else {
            String::new()
        };
        text += &format!(
            "  - match: {{{host}path_prefix: /api/v{}/service{i}/}}\n    upstream: app\n",
            i % 7
        );
    }
    text += "  - match: {path_prefix: /}\n    upstream: app\n";
    text
}

fn compile(source: &str) -> Topology {
    let loaded = config::parse(source, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let resources = Resources::read(&loaded.config).expect("nothing to read");
    Topology::compile(&loaded.config, resources, None)
}

/// The algorithms picked from, as the bench names them and as written.
const ALGORITHMS: [(&str, &str); 6] = [
    ("round_robin", "round_robin"),
    ("ip_hash", "ip_hash"),
    ("hash_header", "hash\n    hash_key: header:X-User"),
    ("hash_cookie", "hash\n    hash_key: cookie:sid"),
    ("least_connections", "least_connections"),
    ("least_time", "least_time"),
];

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    // Browsers' request heads: the key among other headers and cookies, one
    // user and session of 1,024 each (built before timing).
    let heads: Vec<http::HeaderMap> = (0..1024).map(browser_head).collect();
    for (label, algorithm) in ALGORITHMS {
        for n in [3usize, 100, 1000] {
            let topology = compile(&topology_source(algorithm, n, 1));
            let upstream = &topology.upstreams[0];
            // least_time with a latency sample on every backend, so picks
            // read and decay real estimates.
            for (i, backend) in upstream.backends.iter().enumerate() {
                let rtt = std::time::Duration::from_micros(500 + 37 * (i as u64 % 50));
                let now = tollgate::balance::peak_ewma::now_nanos();
                backend.state.latency.observe(rtt, now);
            }
            let tried = Tried::default();
            let mut client: u32 = 0x0a00_0001;
            let mut head = 0usize;
            group.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter(|| {
                    client = client.wrapping_mul(2_654_435_761).wrapping_add(1);
                    head = (head + 1) % heads.len();
                    let request = RequestParts {
                        client: black_box(IpAddr::from(client.to_be_bytes())),
                        headers: black_box(&heads[head]),
                        identity: &[],
                        stripped: &[],
                        client_cert: None,
                        path: "/api/items/42",
                        query: b"",
                    };
                    black_box(upstream.select(&request, &tried))
                })
            });
        }
    }
    group.finish();
}

/// The request head of a browser of user `n`: an `X-User` and a `sid`
/// cookie among other headers and cookies.
fn browser_head(n: usize) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("host", "app.example.com".to_string()),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101".to_string(),
        ),
        ("accept", "text/html,application/xhtml+xml".to_string()),
        ("accept-language", "en-US,en;q=0.5".to_string()),
        ("x-user", format!("user-{n}")),
        (
            "cookie",
            format!("theme=dark; _ga=GA1.2.123456789.1700000000; sid={n:016x}"),
        ),
    ] {
        headers.append(name, http::HeaderValue::from_str(&value).unwrap());
    }
    headers
}

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    for n in [10usize, 1000] {
        let topology = compile(&topology_source("round_robin", 2, n));
        // A host with routes, a path that matches a deep prefix, and a miss that
        // falls through to `/`.
        let hit = format!("/api/v{}/service{}/items/42", (n - 2) % 7, n - 2);
        group.bench_function(BenchmarkId::new("hit", n), |b| {
            b.iter(|| {
                black_box(
                    topology
                        .router
                        .lookup(black_box("svc48.example.com:8080"), black_box(&hit)),
                )
            })
        });
        group.bench_function(BenchmarkId::new("fallback", n), |b| {
            b.iter(|| {
                black_box(topology.router.lookup(
                    black_box("unknown.example.org"),
                    black_box("/static/app.js"),
                ))
            })
        });
    }
    group.finish();
}

fn rate_limit(c: &mut Criterion) {
    let source = &format!("{SERVER}upstreams:\n  app:\n    backends: [{{address: 127.0.0.1:9001}}]\nrate_limits:\n  per_client:\n    key: client_ip\n    rate: 1000000/s\n    burst: 1000000\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    rate_limit: per_client\n");
    let topology = compile(source);
    let limiter = &topology.routes[0]
        .rate_limit
        .as_ref()
        .expect("route has a rate limit")
        .limiter;
    let mut client: u32 = 1;
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| {
            client = client.wrapping_mul(2_654_435_761).wrapping_add(1) % 50_000;
            black_box(limiter.check(black_box(&client.to_be_bytes())))
        })
    });
}

fn config_load(c: &mut Criterion) {
    let source = topology_source("round_robin", 3, 1000);
    c.bench_function("config_load_1000_routes", |b| {
        b.iter(|| {
            let loaded = config::parse(black_box(&source), Path::new("bench.yaml"))
                .expect("valid bench topology");
            let resources = Resources::read(&loaded.config).expect("nothing to read");
            black_box(Topology::compile(&loaded.config, resources, None))
        })
    });
}

criterion_group!(benches, picks, router, rate_limit, config_load);
criterion_main!(benches);
