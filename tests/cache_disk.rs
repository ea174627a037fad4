//! The cache's disk tier over real processes: answers kept across a restart
//! and a binary upgrade, torn files never served, a full disk (a real tmpfs)
//! that fails no request, and a directory that cannot be written refused at
//! start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::{
    check_topology, temp_dir, tollgate_over_small_tmpfs, wait_until, Tollgate, TopologyBody,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn server(dir: &Path) -> String {
    format!(
        "server:\n  threads: 2\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period: 1s\n",
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    )
}

/// A topology whose every path goes to `origin`, cached in `cache_dir`.
fn topology(dir: &Path, origin: &Origin, cache_dir: &Path, memory: &str, size: &str) -> String {
    let body = TopologyBody::new()
        .upstream("app", &[origin.addr], "")
        .section(&format!(
            "caches:\n  pages:\n    memory: {memory}\n    disk: {{path: {}, size: {size}}}\n",
            cache_dir.display()
        ))
        .route("/", "app", "    cache: pages\n")
        .yaml();
    format!("{}{body}", server(dir))
}

async fn start(origin: &Origin, cache_dir: &Path) -> Tollgate {
    let dir = temp_dir("tollgate");
    let config = topology(&dir, origin, cache_dir, "1MiB", "10MiB");
    Tollgate::launch_reported(dir, &config, &[]).await
}

/// The entry files under `cache_dir` (not those being written in `tmp/`).
fn entry_files(cache_dir: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter(|d| d.file_name() != "tmp")
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten().map(|f| f.path()))
        .collect()
}

async fn wait_for_files(cache_dir: &Path, count: usize) {
    let written = wait_until(Duration::from_secs(5), || async {
        entry_files(cache_dir).len() >= count
    })
    .await;
    assert!(
        written,
        "{} of {count} entries on disk",
        entry_files(cache_dir).len()
    );
}

struct Answer {
    status: u16,
    cache: String,
    body: String,
}

/// GETs `target` for host `shop.test` (the key holds the host; each tollgate
/// of a test listens on a port of its own).
async fn get(tollgate: &Tollgate, target: &str) -> Answer {
    let response = reqwest::Client::new()
        .get(tollgate.url(target))
        .header("host", "shop.test")
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Answer {
        status,
        cache,
        body: response.text().await.expect("body"),
    }
}

const PAGES: [&str; 3] = [
    "/one?cc=max-age%3D600",
    "/two?cc=max-age%3D600&vary=Accept-Language",
    "/three?cc=max-age%3D600&size=100000",
];

/// Fills the cache of `tollgate` with [`PAGES`] and waits for them on disk;
/// returns their bodies.
async fn fill(tollgate: &Tollgate, cache_dir: &Path) -> Vec<String> {
    let mut bodies = Vec::new();
    for page in PAGES {
        let answer = get(tollgate, page).await;
        assert_eq!((answer.status, answer.cache.as_str()), (200, "MISS"));
        bodies.push(answer.body);
    }
    wait_for_files(cache_dir, PAGES.len()).await;
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_disk_cache_serves_after_a_restart_with_the_origin_down() {
    let origin = Origin::start().await;
    let cache_dir = temp_dir("cache");
    let first = start(&origin, &cache_dir).await;
    let bodies = fill(&first, &cache_dir).await;
    drop(first);
    origin.stop();
    let second = start(&origin, &cache_dir).await;
    for (page, body) in PAGES.iter().zip(&bodies) {
        let answer = get(&second, page).await;
        assert_eq!(
            (answer.status, answer.cache.as_str()),
            (200, "HIT"),
            "{page}"
        );
        assert_eq!(&answer.body, body);
    }
    // The files found are indexed for eviction.
    let indexed = wait_until(Duration::from_secs(5), || async {
        second
            .metric(
                "tollgate_cache_entries",
                &[("cache", "pages"), ("tier", "disk")],
            )
            .await
            == Some(PAGES.len() as f64)
    })
    .await;
    assert!(indexed, "{}", second.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_entry_is_never_served() {
    let origin = Origin::start().await;
    let cache_dir = temp_dir("cache");
    let first = start(&origin, &cache_dir).await;
    fill(&first, &cache_dir).await;
    drop(first);
    // Every file cut short, as a crash mid-write on a reordering filesystem
    // could leave it.
    for file in entry_files(&cache_dir) {
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    }
    let second = start(&origin, &cache_dir).await;
    for page in PAGES {
        let answer = get(&second, page).await;
        assert_eq!(
            (answer.status, answer.cache.as_str()),
            (200, "MISS"),
            "{page}"
        );
        assert!(answer.body.contains('#') || answer.body.len() == 100_000);
    }
    let unreadable = second
        .metric(
            "tollgate_cache_unreadable_entries_total",
            &[("cache", "pages")],
        )
        .await
        .unwrap_or(0.0);
    assert!(unreadable >= 1.0, "{}", second.metrics().await);
    // Stored again, whole.
    for page in PAGES {
        assert_eq!(get(&second, page).await.cache, "HIT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_keeps_the_disk_cache() {
    let origin = Origin::start().await;
    let cache_dir = temp_dir("cache");
    let mut old = start(&origin, &cache_dir).await;
    let bodies = fill(&old, &cache_dir).await;
    let mut new = old.spawn_upgrade();
    let socket = old.dir.join("upgrade.sock");
    let waiting = wait_until(Duration::from_secs(10), || {
        let exists = socket.exists();
        async move { exists }
    })
    .await;
    assert!(waiting, "the new process never opened the upgrade socket");
    old.signal(libc::SIGQUIT);
    assert!(old.wait_exit(Duration::from_secs(20)).await.is_some());
    origin.stop();
    for (page, body) in PAGES.iter().zip(&bodies) {
        let answer = get(&old, page).await;
        assert_eq!(
            (answer.status, answer.cache.as_str()),
            (200, "HIT"),
            "{page}"
        );
        assert_eq!(&answer.body, body);
    }
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_stays_within_its_size() {
    let origin = Origin::start().await;
    let dir = temp_dir("tollgate");
    let cache_dir = temp_dir("cache");
    let config = topology(&dir, &origin, &cache_dir, "1MiB", "100KiB");
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    for i in 0..12 {
        let page = format!("/part{i}?cc=max-age%3D600&size=30000");
        assert_eq!(get(&tollgate, &page).await.status, 200);
    }
    let labels = [("cache", "pages"), ("tier", "disk")];
    let evicted = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric("tollgate_cache_evictions_total", &labels)
            .await
            .unwrap_or(0.0)
            >= 8.0
    })
    .await;
    assert!(evicted, "{}", tollgate.metrics().await);
    let on_disk: u64 = entry_files(&cache_dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        on_disk <= 100 * 1024,
        "{on_disk} bytes in files for a 100 KiB disk"
    );
    let counted = tollgate
        .metric("tollgate_cache_bytes", &labels)
        .await
        .unwrap();
    assert!(counted <= 100.0 * 1024.0, "{counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_storing_and_fails_no_request() {
    let origin = Origin::start().await;
    let dir = temp_dir("tollgate");
    let cache_dir = temp_dir("cache");
    // The cache directory is a 256 KiB tmpfs, mounted for tollgate alone (a
    // mount namespace of its own); its bound is set far above what fits.
    let config = topology(&dir, &origin, &cache_dir, "16MiB", "100MiB");
    let tollgate =
        Tollgate::launch_reported_by(dir, &config, tollgate_over_small_tmpfs(&cache_dir, "256k"))
            .await;
    for i in 0..20 {
        let page = format!("/big{i}?cc=max-age%3D600&size=60000");
        let answer = get(&tollgate, &page).await;
        assert_eq!((answer.status, answer.body.len()), (200, 60_000), "{page}");
    }
    let full = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric(
                "tollgate_cache_write_failures_total",
                &[("cache", "pages"), ("tier", "disk"), ("reason", "full")],
            )
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(full, "{}\n{}", tollgate.metrics().await, tollgate.stderr());
    let logged = tollgate.stderr().matches("the disk is full").count();
    assert_eq!(logged, 1, "logged once a minute:\n{}", tollgate.stderr());
    // Served from memory all the same.
    assert_eq!(
        get(&tollgate, "/big19?cc=max-age%3D600&size=60000")
            .await
            .cache,
        "HIT"
    );
}

#[test]
fn a_cache_directory_that_cannot_be_written_is_refused_at_start() {
    let dir = temp_dir("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let cache_dir = file.join("cache");
    let result = check_topology(&format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    backends: [{{address: 127.0.0.1:9}}]\ncaches:\n  pages:\n    disk: {{path: {}, size: 1MiB}}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    cache: pages\n",
        cache_dir.display()
    ));
    assert!(!result.ok, "{}", result.output);
    assert!(
        result.output.contains("caches.pages.disk.path"),
        "{}",
        result.output
    );
    assert!(
        result.output.contains(&cache_dir.display().to_string()),
        "{}",
        result.output
    );
}
