//! The `static` action over real sockets: bytes equal to the file, validators and
//! 304, ranges (206/416), HEAD, index files, 404, and every traversal attempt refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

const SECRET: &str = "top-secret-outside-the-root";

struct Site {
    tollgate: Tollgate,
    poster: Vec<u8>,
}

async fn site() -> Site {
    let dir = temp_dir("static");
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("poster")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    // 300 KiB of varied bytes: several chunks.
    let poster: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("poster/a.jpg"), &poster).unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(root.join("missing.html"), "<h1>not here</h1>\n").unwrap();
    std::fs::write(root.join(".env"), SECRET).unwrap();
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("poster/escape.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("poster/a.jpg"), root.join("poster/inside.jpg")).unwrap();
    let body = format!(
        "routes:
  - match: {{path_prefix: /poster/}}
    static: {{root: {root}}}
  - match: {{path_prefix: /images/}}
    static: {{root: {root}/poster}}
    strip_prefix: true
  - match: {{path_prefix: /}}
    static: {{root: {root}, not_found_page: /missing.html}}
",
        root = root.display()
    );
    Site {
        tollgate: Tollgate::start(&body).await,
        poster,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_with_validators_ranges_and_head() {
    let site = site().await;
    let client = reqwest::Client::new();
    let url = site.tollgate.url("/poster/a.jpg");

    let full = client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    let h = full.headers().clone();
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["content-length"], site.poster.len().to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    let etag = h["etag"].to_str().unwrap().to_string();
    let last_modified = h["last-modified"].to_str().unwrap().to_string();
    assert_eq!(full.bytes().await.unwrap().as_ref(), site.poster.as_slice());

    let cached = client
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());
    let cached = client
        .get(&url)
        .header("If-Modified-Since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let stale = client
        .get(&url)
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);

    let part = client
        .get(&url)
        .header("Range", "bytes=100000-100009")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100000-100009/{}", site.poster.len()).as_str()
    );
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &site.poster[100_000..100_010]
    );
    let tail = client
        .get(&url)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &site.poster[site.poster.len() - 5..]
    );
    let beyond = client
        .get(&url)
        .header("Range", "bytes=999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", site.poster.len()).as_str()
    );

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        site.poster.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    // A symlink that stays inside the root is served.
    let inside = client
        .get(site.tollgate.url("/poster/inside.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(inside.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_index_and_missing_files() {
    let site = site().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let docs = client
        .get(site.tollgate.url("/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert_eq!(docs.headers()["content-type"], "text/html");
    assert_eq!(docs.text().await.unwrap(), "<h1>docs</h1>\n");
    let bare = client.get(site.tollgate.url("/docs")).send().await.unwrap();
    assert_eq!(bare.status(), 301);
    assert_eq!(bare.headers()["location"], "/docs/");
    // No listing of a directory without an index.
    assert_eq!(
        client
            .get(site.tollgate.url("/poster/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(site.tollgate.url("/poster/nope.jpg"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The configured error page, with status 404.
    let missing = client
        .get(site.tollgate.url("/nope.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "<h1>not here</h1>\n");
    let post = client
        .post(site.tollgate.url("/poster/a.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_serves_a_directory_as_nginx_alias_does() {
    let site = site().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // /images/a.jpg is ROOT/poster/a.jpg: the prefix is not looked for on disk.
    let image = client
        .get(site.tollgate.url("/images/a.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.bytes().await.unwrap(), site.poster);
    for outside in [
        "/images/../.env",
        "/images/%2e%2e/.env",
        "/images/escape.txt",
    ] {
        let status = client
            .get(site.tollgate.url(outside))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status == 404 || status == 400, "{outside}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_leaves_the_root() {
    let site = site().await;
    for path in [
        "/poster/../secret.txt",
        "/poster/../../secret.txt",
        "/../secret.txt",
        "/poster/%2e%2e/%2e%2e/secret.txt",
        "/poster/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/poster/..%2f..%2fsecret.txt",
        "/poster/..%5c..%5csecret.txt",
        "/poster/..\\..\\secret.txt",
        "/poster/a.jpg%00.txt",
        "/poster/escape.txt",
        "/.env",
        "/%2eenv",
        "//secret.txt",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (raw, _) = raw_exchange(
            site.tollgate.addr,
            request.as_bytes(),
            Duration::from_secs(5),
        );
        let status = raw.get(9..12).unwrap_or("");
        assert!(status == "404" || status == "400", "{path}: {raw}");
        assert!(!raw.contains(SECRET), "{path} leaked the secret: {raw}");
    }
}
