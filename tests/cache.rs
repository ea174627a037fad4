//! The shared cache over real sockets: tollgate in front of a real HTTP origin
//! (tests/common/origin.rs) that counts what reaches it. The disk tier has its
//! own suite (cache_disk.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::{Origin, LAST_MODIFIED};
use common::{wait_until, Tollgate, TopologyBody};
use std::io::Read;
use std::time::Duration;

/// tollgate with upstream `app` over `origin`, every path to it stored in
/// cache `pages`, whose settings are `cache` (YAML lines indented four).
async fn cached(origin: &Origin, cache: &str) -> Tollgate {
    cached_with(origin, cache, "", "").await
}

/// As [`cached`], with `server_extra` lines under `server:` and `routes_before`
/// (whole routes) ahead of the cached one.
async fn cached_with(
    origin: &Origin,
    cache: &str,
    server_extra: &str,
    routes_before: &str,
) -> Tollgate {
    Tollgate::start_with(&topology(origin, cache, routes_before), server_extra).await
}

fn topology(origin: &Origin, cache: &str, routes_before: &str) -> String {
    let mut body = TopologyBody::new()
        .upstream("app", &[origin.addr], "")
        .section(&format!("caches:\n  pages:\n{cache}"));
    if !routes_before.is_empty() {
        body = body.raw_route(routes_before);
    }
    body.route("/", "app", "    name: pages\n    cache: pages\n")
        .yaml()
}

/// What a test reads of an answer.
struct Answer {
    status: u16,
    /// X-Cache-Status, empty when absent.
    cache: String,
    age: Option<u64>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client that asks for no compression unless a test says so, and does not
/// decode what it gets.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .build()
        .unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request");
    let headers = response.headers().clone();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Answer {
        status: response.status().as_u16(),
        cache: text("x-cache-status").unwrap_or_default().to_string(),
        age: text("age").and_then(|a| a.parse().ok()),
        body: response.bytes().await.expect("body").to_vec(),
        headers,
    }
}

async fn get(tollgate: &Tollgate, target: &str) -> Answer {
    get_with(tollgate, target, &[]).await
}

async fn get_with(tollgate: &Tollgate, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(tollgate.url(target));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// Waits up to `timeout` for a GET of `target` to have X-Cache-Status `status`;
/// returns that answer.
async fn wait_for_status(
    tollgate: &Tollgate,
    target: &str,
    status: &str,
    timeout: Duration,
) -> Answer {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let answer = get(tollgate, target).await;
        if answer.cache == status || std::time::Instant::now() > deadline {
            assert_eq!(answer.cache, status, "{target}: {}", answer.text());
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first answer to a GET of `target` that is not a fresh hit (entries
/// stored a few milliseconds apart expire as far apart).
async fn answer_once_expired(tollgate: &Tollgate, target: &str) -> Answer {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(tollgate, target).await;
        if answer.cache != "HIT" || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_answer_is_served_without_reaching_the_origin() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    memory: 1MiB\n").await;
    let target = "/page?cc=max-age%3D60";
    let first = get(&tollgate, target).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert_eq!(first.age, Some(0), "a stored miss carries Age: 0");
    let second = get(&tollgate, target).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(origin.hits(target), 1);
    // Age counts up while the answer sits in the cache.
    let aged = wait_until(Duration::from_secs(4), || async {
        get(&tollgate, target).await.age.unwrap_or(0) >= 1
    })
    .await;
    assert!(aged, "Age never moved");
    assert_eq!(origin.hits(target), 1);
    // An origin's own Age counts too.
    let old = "/old?cc=max-age%3D600&age=100";
    get(&tollgate, old).await;
    assert!(get(&tollgate, old).await.age.unwrap() >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_comes_from_s_maxage_max_age_expires_then_default_ttl() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    default_ttl: {200: 1h, 404: 1h}\n").await;
    let short = "/short?cc=max-age%3D1";
    let shared = "/shared?cc=max-age%3D1,s-maxage%3D600";
    let expires = "/expires?expires=600";
    for target in [short, shared, expires] {
        assert_eq!(get(&tollgate, target).await.cache, "MISS");
        assert_eq!(get(&tollgate, target).await.cache, "HIT", "{target}");
    }
    // max-age=1 runs out; s-maxage (for a shared cache) wins over it.
    wait_for_status(&tollgate, short, "EXPIRED", Duration::from_secs(5)).await;
    assert_eq!(get(&tollgate, shared).await.cache, "HIT");
    assert_eq!(origin.hits(shared), 1);

    // Without freshness from the origin: default_ttl for the statuses it lists.
    for (target, stored) in [
        ("/silent", true),
        ("/missing?status=404", true),
        ("/gone?status=410", false),
        ("/moved?status=302", false),
    ] {
        get(&tollgate, target).await;
        let again = get(&tollgate, target).await;
        assert_eq!(again.cache == "HIT", stored, "{target}: {}", again.cache);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_shared_cache_must_not_keep_are_not_stored() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    default_ttl: {200: 1h}\n").await;
    for target in [
        "/a?cc=no-store",
        "/b?cc=private,max-age%3D60",
        "/c?cc=max-age%3D60&cookie=1",
        "/d?cc=max-age%3D60&vary=*",
    ] {
        assert_eq!(get(&tollgate, target).await.cache, "MISS", "{target}");
        let again = get(&tollgate, target).await;
        assert_eq!(again.cache, "MISS", "{target} was stored");
        assert_eq!(origin.hits(target), 2);
    }
    // private="Set-Cookie": stored, without the cookie.
    let qualified = "/e?cc=max-age%3D60,private%3D%22set-cookie%22&cookie=1";
    assert!(get(&tollgate, qualified)
        .await
        .header("set-cookie")
        .is_some());
    let hit = get(&tollgate, qualified).await;
    assert_eq!(hit.cache, "HIT");
    assert!(
        hit.header("set-cookie").is_none(),
        "a stored cookie was shared"
    );

    // A request with Authorization: only an answer the origin marks shared.
    let auth = [("authorization", "Bearer ann")];
    let personal = "/f?cc=max-age%3D60";
    get_with(&tollgate, personal, &auth).await;
    assert_eq!(get_with(&tollgate, personal, &auth).await.cache, "MISS");
    let public = "/g?cc=public,max-age%3D60";
    get_with(&tollgate, public, &auth).await;
    assert_eq!(get_with(&tollgate, public, &auth).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_are_revalidated_with_the_origin() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "").await;
    // no-cache: stored, but checked with the origin on every use.
    let checked = "/checked?cc=no-cache&etag=v1";
    let first = get(&tollgate, checked).await;
    let second = get(&tollgate, checked).await;
    assert_eq!(second.cache, "REVALIDATED");
    assert_eq!(second.body, first.body, "the stored body after a 304");
    assert_eq!(
        origin.last(checked).headers["if-none-match"],
        "\"v1\"",
        "the revalidation carries the stored ETag"
    );
    assert_eq!(origin.hits(checked), 2);

    // Expired with Last-Modified: If-Modified-Since, 304, served as revalidated.
    let dated = "/dated?cc=max-age%3D1&lm=1";
    let first = get(&tollgate, dated).await;
    let revalidated =
        wait_for_status(&tollgate, dated, "REVALIDATED", Duration::from_secs(5)).await;
    assert_eq!(revalidated.body, first.body);
    assert_eq!(
        origin.last(dated).headers["if-modified-since"],
        LAST_MODIFIED
    );
    assert_eq!(revalidated.age, Some(0));
    // ...and fresh again after it.
    assert_eq!(get(&tollgate, dated).await.cache, "HIT");

    // Expired without a validator: fetched whole again.
    let plain = "/plain?cc=max-age%3D1";
    get(&tollgate, plain).await;
    let expired = wait_for_status(&tollgate, plain, "EXPIRED", Duration::from_secs(5)).await;
    assert!(expired.text().ends_with("#2"), "{}", expired.text());
    assert!(!origin.last(plain).headers.contains_key("if-none-match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_range_requests_are_answered_by_the_cache() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "").await;
    let target = "/doc?cc=max-age%3D60&etag=v7&lm=1";
    // On a miss the cache fetches the whole answer, and answers the client's
    // condition itself.
    let cold = get_with(&tollgate, target, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!((cold.status, cold.cache.as_str()), (304, "MISS"));
    assert!(!origin.last(target).headers.contains_key("if-none-match"));
    let full = get(&tollgate, target).await;
    assert_eq!((full.status, full.cache.as_str()), (200, "HIT"));
    assert!(!full.body.is_empty());
    for condition in [
        ("if-none-match", "\"v7\""),
        ("if-modified-since", LAST_MODIFIED),
    ] {
        let answer = get_with(&tollgate, target, &[condition]).await;
        assert_eq!(
            (answer.status, answer.cache.as_str()),
            (304, "HIT"),
            "{condition:?}"
        );
        assert!(answer.body.is_empty());
    }
    let changed = get_with(&tollgate, target, &[("if-none-match", "\"v6\"")]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(origin.hits(target), 1);

    // Ranges are cut from the stored body, on a miss as on a hit.
    let ranged = "/film?cc=max-age%3D60&size=1000";
    for expected in ["MISS", "HIT"] {
        let part = get_with(&tollgate, ranged, &[("range", "bytes=10-19")]).await;
        assert_eq!((part.status, part.cache.as_str()), (206, expected));
        assert_eq!(part.body.len(), 10);
        assert_eq!(part.header("content-range"), Some("bytes 10-19/1000"));
    }
    assert!(!origin.last(ranged).headers.contains_key("range"));
    assert_eq!(origin.hits(ranged), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_origin_is_told_of_the_client_keys_and_varies_the_answer() {
    let origin = Origin::start().await;
    // The test client is a trusted proxy: its X-Forwarded-Host reaches the origin.
    let tollgate = cached_with(&origin, "", "  trusted_proxies: [127.0.0.0/8]\n", "").await;
    let target = "/links?cc=max-age%3D60";
    let shop = get_with(&tollgate, target, &[("x-forwarded-host", "shop.test")]).await;
    let evil = get_with(&tollgate, target, &[("x-forwarded-host", "evil.test")]).await;
    assert_eq!((shop.cache.as_str(), evil.cache.as_str()), ("MISS", "MISS"));
    let again = get_with(&tollgate, target, &[("x-forwarded-host", "shop.test")]).await;
    assert_eq!(
        (again.cache.as_str(), again.body.clone()),
        ("HIT", shop.body)
    );
    // An answer that varies on the client's address is that client's.
    let mine = "/mine?cc=max-age%3D60&vary=X-Real-IP";
    get(&tollgate, mine).await;
    assert_eq!(get(&tollgate, mine).await.cache, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "").await;
    let target = "/poster?cc=max-age%3D60";
    let got = get(&tollgate, target).await;
    let head = send(client().head(tollgate.url(target))).await;
    assert_eq!((head.status, head.cache.as_str()), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert_eq!(origin.hits(target), 1);
    // A HEAD that misses fetches the whole answer with a GET, for later GETs.
    let cold = "/cold?cc=max-age%3D60";
    let head = send(client().head(tollgate.url(cold))).await;
    assert_eq!((head.cache.as_str(), head.body.len()), ("MISS", 0));
    assert_eq!(origin.last(cold).method, "GET");
    assert_eq!(get(&tollgate, cold).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_stores_each_variant_apart() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "").await;
    let target = "/greeting?cc=max-age%3D60&vary=Accept-Language";
    let lang = |l: &'static str| [("accept-language", l)];
    let en = get_with(&tollgate, target, &lang("en")).await;
    let fr = get_with(&tollgate, target, &lang("fr")).await;
    assert_eq!((en.cache.as_str(), fr.cache.as_str()), ("MISS", "MISS"));
    let en_again = get_with(&tollgate, target, &lang("en")).await;
    let fr_again = get_with(&tollgate, target, &lang("fr")).await;
    assert_eq!(
        (en_again.cache.as_str(), fr_again.cache.as_str()),
        ("HIT", "HIT")
    );
    assert_eq!(en_again.body, en.body);
    assert_eq!(fr_again.body, fr.body);
    assert_ne!(en.body, fr.body);
    assert_eq!(origin.hits(target), 2);

    // An origin that compresses by Accept-Encoding: a gzip variant and a plain
    // one; codings listed in another order are the same variant.
    let packed = "/packed?cc=max-age%3D60&gzip=1&v=hello-hello-hello";
    let gzip = get_with(&tollgate, packed, &[("accept-encoding", "gzip, br")]).await;
    let plain = get_with(&tollgate, packed, &[]).await;
    let gzip_again = get_with(&tollgate, packed, &[("accept-encoding", "br,gzip")]).await;
    let plain_again = get_with(&tollgate, packed, &[]).await;
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip_again.cache, "HIT");
    assert_eq!(gzip_again.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&gzip_again.body), gunzip(&gzip.body));
    assert!(String::from_utf8_lossy(&gunzip(&gzip.body)).contains("hello-hello-hello"));
    assert_eq!(
        (
            plain_again.cache.as_str(),
            plain_again.header("content-encoding")
        ),
        ("HIT", None)
    );
    assert_eq!(plain_again.body, plain.body);
    assert!(plain_again.text().contains("hello-hello-hello"));
    assert_eq!(origin.hits(packed), 2);
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_compresses_one_stored_answer_for_each_client_as_it_asks() {
    let origin = Origin::start().await;
    let tollgate = cached_with(
        &origin,
        "",
        "  compression: {level: 6, min_size: 100B}\n",
        "",
    )
    .await;
    let target = "/styles?cc=max-age%3D60&size=5000&ct=text/css";
    let gzip = get_with(&tollgate, target, &[("accept-encoding", "gzip")]).await;
    let plain = get_with(&tollgate, target, &[]).await;
    let gzip_again = get_with(&tollgate, target, &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.cache, "MISS");
    assert_eq!(
        (plain.cache.as_str(), plain.header("content-encoding")),
        ("HIT", None)
    );
    assert_eq!(plain.body.len(), 5000);
    assert_eq!(gzip_again.cache, "HIT");
    assert_eq!(gzip_again.header("content-encoding"), Some("gzip"));
    assert!(gzip_again
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
    assert_eq!(gunzip(&gzip_again.body), plain.body);
    assert_eq!(origin.hits(target), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_of_one_key_reach_the_origin_once() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    lock: 5s\n").await;
    let target = "/hot?cc=max-age%3D60&delay=400";
    let client = client();
    let answers =
        futures::future::join_all((0..50).map(|_| send(client.get(tollgate.url(target))))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(
        origin.hits(target),
        1,
        "concurrent misses reached the origin"
    );
    let waits = tollgate
        .metric("tollgate_cache_lock_waits_total", &[("cache", "pages")])
        .await
        .unwrap_or(0.0);
    assert!(waits >= 1.0, "no lock wait counted");

    // Without the lock, they all go.
    let unlocked_origin = Origin::start().await;
    let unlocked = cached(&unlocked_origin, "    lock: 0s\n").await;
    futures::future::join_all((0..10).map(|_| send(client.get(unlocked.url(target))))).await;
    assert!(unlocked_origin.hits(target) > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_are_served_while_one_request_refreshes_them() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    stale_while_revalidate: 30s\n").await;
    let target = "/news?cc=max-age%3D1";
    let first = get(&tollgate, target).await;
    let stale = wait_for_status(&tollgate, target, "STALE", Duration::from_secs(5)).await;
    assert_eq!(stale.body, first.body, "the stale answer at once");
    // The refresh happened in the background, and its answer is served next.
    let refreshed = wait_until(Duration::from_secs(5), || async {
        let a = get(&tollgate, target).await;
        a.cache == "HIT" && a.text().ends_with("#2")
    })
    .await;
    assert!(refreshed, "the stale answer was never refreshed");

    // The origin's stale-while-revalidate does the same without the setting.
    let origin2 = Origin::start().await;
    let plain = cached(&origin2, "").await;
    let directive = "/live?cc=max-age%3D1,stale-while-revalidate%3D30";
    get(&plain, directive).await;
    wait_for_status(&plain, directive, "STALE", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_are_served_while_the_origin_fails() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    stale_if_error: 10m\n").await;
    let target = "/catalog?cc=max-age%3D1";
    let strict = "/prices?cc=max-age%3D1,must-revalidate";
    let proxy_strict = "/stock?cc=max-age%3D1,proxy-revalidate";
    let first = get(&tollgate, target).await;
    get(&tollgate, strict).await;
    get(&tollgate, proxy_strict).await;
    // The origin answers 500: the stored page, stale.
    origin.fail(true);
    let stale = wait_for_status(&tollgate, target, "STALE", Duration::from_secs(5)).await;
    assert_eq!(
        (stale.status, stale.body.clone()),
        (200, first.body.clone())
    );
    // must-revalidate and proxy-revalidate forbid it: the error passes.
    for forbidden in [strict, proxy_strict] {
        let refused = answer_once_expired(&tollgate, forbidden).await;
        assert_eq!(refused.status, 500, "{forbidden} served {}", refused.cache);
    }
    // The origin is down altogether: still the stored page.
    origin.stop();
    let down = get(&tollgate, target).await;
    assert_eq!((down.status, down.cache.as_str()), (200, "STALE"));
    assert_eq!(down.body, first.body);
    let gone = get(&tollgate, strict).await;
    assert!(gone.status >= 500, "{}", gone.status);

    // The origin's stale-if-error does the same without the setting.
    let origin2 = Origin::start().await;
    let plain = cached(&origin2, "").await;
    let directive = "/feed?cc=max-age%3D1,stale-if-error%3D600";
    let stored = get(&plain, directive).await;
    let without = "/bare?cc=max-age%3D1";
    get(&plain, without).await;
    origin2.fail(true);
    let stale = wait_for_status(&plain, directive, "STALE", Duration::from_secs(5)).await;
    assert_eq!(stale.body, stored.body);
    let without = answer_once_expired(&plain, without).await;
    assert_eq!(without.status, 500, "stale without a window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_a_hard_bound_on_stored_answers() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    memory: 64KiB\n    max_object: 16KiB\n").await;
    for i in 0..40 {
        let answer = get(&tollgate, &format!("/item{i}?cc=max-age%3D600&size=8000")).await;
        assert_eq!((answer.status, answer.body.len()), (200, 8000));
        let bytes = tollgate
            .metric(
                "tollgate_cache_bytes",
                &[("cache", "pages"), ("tier", "memory")],
            )
            .await
            .unwrap();
        assert!(bytes <= 65536.0, "{bytes} bytes stored in 64 KiB");
    }
    let labels = [("cache", "pages"), ("tier", "memory")];
    let entries = tollgate
        .metric("tollgate_cache_entries", &labels)
        .await
        .unwrap();
    assert!((1.0..40.0).contains(&entries), "{entries} entries");
    let evictions = tollgate
        .metric("tollgate_cache_evictions_total", &labels)
        .await
        .unwrap();
    assert!(evictions >= 40.0 - entries, "{evictions} evictions");
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_max_object_stream_through_uncached() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    memory: 4MiB\n    max_object: 1MiB\n").await;
    for target in [
        "/video?cc=max-age%3D60&size=2000000",
        "/stream?cc=max-age%3D60&size=2000000&chunked=1",
    ] {
        let first = get(&tollgate, target).await;
        assert_eq!(
            (first.status, first.body.len()),
            (200, 2_000_000),
            "{target}"
        );
        let second = get(&tollgate, target).await;
        assert_eq!(
            (second.cache.as_str(), second.body.len()),
            ("MISS", 2_000_000)
        );
        assert_eq!(origin.hits(target), 2, "{target} was stored");
    }
    // 64 MiB of unknown length pass without being held whole.
    let before = peak_rss_kib(tollgate.pid());
    let huge = get(&tollgate, "/huge?cc=max-age%3D60&size=67108864&chunked=1").await;
    assert_eq!(huge.body.len(), 64 << 20);
    let grew = peak_rss_kib(tollgate.pid()).saturating_sub(before);
    assert!(grew < 32 * 1024, "peak memory grew by {grew} KiB");
}

/// A client whose connections come from `ip` (a loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(ip.parse().unwrap()))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_a_stored_answer_for_allowed_clients_only() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    purge_allow: [127.0.0.1/32]\n").await;
    let target = "/menu?cc=max-age%3D600&vary=Accept-Language";
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    for lang in ["en", "fr"] {
        get_with(&tollgate, target, &[("accept-language", lang)]).await;
    }
    let stranger =
        send(client_from("127.0.0.2").request(purge.clone(), tollgate.url(target))).await;
    assert_eq!(stranger.status, 403);
    assert_eq!(
        get_with(&tollgate, target, &[("accept-language", "en")])
            .await
            .cache,
        "HIT"
    );
    let purged = send(client_from("127.0.0.1").request(purge.clone(), tollgate.url(target))).await;
    assert_eq!(purged.status, 200);
    // Every variant of the URL is gone.
    for lang in ["en", "fr"] {
        let after = get_with(&tollgate, target, &[("accept-language", lang)]).await;
        assert_eq!(after.cache, "MISS", "{lang}");
    }
    let absent = send(client_from("127.0.0.1").request(purge, tollgate.url("/never"))).await;
    assert_eq!(absent.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_a_cached_route_says_what_the_cache_did() {
    let origin = Origin::start().await;
    let plain_route = "  - match: {path_prefix: /live/}\n    upstream: app\n";
    let tollgate = cached_with(&origin, "", "", plain_route).await;
    let posted = send(client().post(tollgate.url("/form?cc=max-age%3D60"))).await;
    assert_eq!(posted.cache, "BYPASS");
    let target = "/page?cc=max-age%3D60";
    assert_eq!(get(&tollgate, target).await.cache, "MISS");
    assert_eq!(get(&tollgate, target).await.cache, "HIT");
    let uncached = get(&tollgate, "/live/x?cc=max-age%3D60").await;
    assert_eq!((uncached.cache.as_str(), uncached.age), ("", None));

    let lookups = |result: &'static str| {
        let tollgate = &tollgate;
        async move {
            tollgate
                .metric(
                    "tollgate_cache_lookups_total",
                    &[("route", "pages"), ("result", result)],
                )
                .await
                .unwrap_or(0.0)
        }
    };
    let counted = wait_until(Duration::from_secs(5), || async {
        lookups("hit").await == 1.0
            && lookups("miss").await == 1.0
            && lookups("bypass").await == 1.0
    })
    .await;
    assert!(counted, "{}", tollgate.metrics().await);
    let bytes = tollgate
        .metric(
            "tollgate_cache_bytes",
            &[("cache", "pages"), ("tier", "memory")],
        )
        .await
        .unwrap();
    assert!(bytes > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_stored_answers_and_dropping_the_cache_frees_them() {
    let origin = Origin::start().await;
    let tollgate = cached(&origin, "    memory: 1MiB\n").await;
    let target = "/kept?cc=max-age%3D600";
    get(&tollgate, target).await;
    // Another size: the same storage, its answers kept.
    let config = tollgate
        .config_text()
        .replace("memory: 1MiB", "memory: 2MiB");
    tollgate.rewrite_config(&config);
    tollgate.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "success")])
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(reloaded, "{}", tollgate.stderr());
    assert_eq!(get(&tollgate, target).await.cache, "HIT");
    assert_eq!(origin.hits(target), 1);

    // The route no longer cached and the cache gone: its series go with it
    // (no gauge stays frozen), and its memory is freed.
    let with_cache = tollgate.config_text();
    let config = with_cache.replace("    cache: pages\n", "");
    let config = config.replace("caches:\n  pages:\n    memory: 2MiB\n", "");
    tollgate.rewrite_config(&config);
    tollgate.signal(libc::SIGHUP);
    let gone = wait_until(Duration::from_secs(5), || async {
        !tollgate.metrics().await.contains("cache=\"pages\"")
    })
    .await;
    assert!(gone, "{}\n{}", tollgate.config_text(), tollgate.stderr());
    let answer = get(&tollgate, target).await;
    assert_eq!((answer.status, answer.cache.as_str()), (200, ""));
    // Back in the topology, the cache starts empty: what it held was freed.
    tollgate.rewrite_config(&with_cache);
    tollgate.signal(libc::SIGHUP);
    let back = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric(
                "tollgate_cache_entries",
                &[("cache", "pages"), ("tier", "memory")],
            )
            .await
            == Some(0.0)
    })
    .await;
    assert!(back, "{}", tollgate.metrics().await);
    assert_eq!(get(&tollgate, target).await.cache, "MISS");
    assert_eq!(origin.hits(target), 3);
}
