//! The admin status page in a real browser: tollgate with an admin listener and an
//! upstream of 50 backends (40 real demo backends, 10 dead loopback ports) under
//! steady load; headless Chromium, driven over the DevTools protocol (a WebSocket,
//! from this test), opens the page and the test reads what it shows. The page must
//! load without a console error or exception, show every backend with its state,
//! redraw its figures as they move (without reloading), draw its charts; a
//! screenshot is written to target/status-page.png for people to look at.
//!
//! Chromium is the Debian package `chromium` (`make deps` installs it); without it
//! the test fails saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser::{chromium_path, Cdp, Chromium};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const REAL_BACKENDS: usize = 40;
const DEAD_BACKENDS: usize = 10;
const WIDTH: u64 = 1440;
const HEIGHT: u64 = 1000;
const TOKEN: &str = "status-page-test-token";

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"(() => {
  const value = (id) => { const e = document.getElementById(id); return e ? parseFloat(e.dataset.value) : null; };
  const rows = Array.from(document.querySelectorAll('tr.backend')).map((r) => {
    const rps = r.querySelector('td.rps');
    const spark = r.querySelector('svg.spark.rps');
    const badge = r.querySelector('.badge');
    return {
      upstream: r.dataset.upstream,
      address: r.dataset.address,
      state: r.dataset.state,
      badge: badge ? getComputedStyle(badge).backgroundColor : null,
      rps: rps ? rps.textContent : null,
      points: spark ? parseInt(spark.dataset.points || '0', 10) : 0,
    };
  });
  return {
    polls: document.documentElement ? parseInt(document.documentElement.dataset.polls || '0', 10) : 0,
    live: document.getElementById('live') ? document.getElementById('live').dataset.state : null,
    total_rps: value('total-rps'),
    total_rps_text: document.getElementById('total-rps') ? document.getElementById('total-rps').textContent : null,
    marker: window.__statusPageTest === true,
    auth_shown: !!document.getElementById('auth-message') && !document.getElementById('auth-message').hidden,
    auth_text: document.getElementById('auth-message') ? document.getElementById('auth-message').textContent : null,
    rows,
  };
})()"#;

/// Reads the page until `done` holds of what it shows or `timeout` passes;
/// the last reading either way.
async fn read_until(
    cdp: &mut Cdp,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> (bool, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let page = cdp.eval(READ_PAGE).await;
        if done(&page) {
            return (true, page);
        }
        if Instant::now() >= deadline {
            return (false, page);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rows(page: &Value) -> &[Value] {
    page["rows"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_shows_every_backend_and_moves_under_load() {
    let started = Instant::now();
    let chromium = chromium_path();

    let real: Vec<Backend> = (0..REAL_BACKENDS)
        .map(|i| Backend::start(&format!("b{i}")))
        .collect();
    let dead: Vec<DeadAddress> = (0..DEAD_BACKENDS).map(|_| DeadAddress::new()).collect();
    // Real and dead interleaved, a few of weight 3.
    let mut addresses = Vec::new();
    let mut list = String::new();
    for i in 0..REAL_BACKENDS + DEAD_BACKENDS {
        let addr = if i % 5 == 4 {
            dead[i / 5].addr
        } else {
            real[i - i / 5].addr
        };
        let weight = if i % 7 == 0 { 3 } else { 1 };
        list.push_str(&format!(
            "      - address: {addr}\n        weight: {weight}\n"
        ));
        addresses.push(addr.to_string());
    }
    let dead_set: BTreeSet<String> = dead.iter().map(|d| d.addr.to_string()).collect();
    let body = format!(
        "upstreams:
  app:
    algorithm: round_robin
    backends:
{list}    health_check:
      http: {{path: /health, expect_status: [200]}}
      interval: 500ms
      timeout: 400ms
      healthy_threshold: 1
      unhealthy_threshold: 1
    retries: 3
routes:
  - name: everything
    match: {{path_prefix: /}}
    upstream: app
"
    );
    // With a token file the API wants the token even on loopback: the page
    // sends the one of its address (#token=...).
    let secrets = temp_dir("admin-token");
    let token_file = write_file(&secrets, "admin.token", &format!("{TOKEN}\n"));
    let tollgate = Tollgate::start_with(
        &body,
        &format!(
            "  admin: 127.0.0.1:0\n  admin_token_file: {}",
            token_file.display()
        ),
    )
    .await;
    let admin = tollgate.reported("server.admin");
    let load = SteadyLoad::start(tollgate.url("/"), 4);
    assert!(load.wait_answered(50).await, "the load is not answered");

    let profile = temp_dir("chromium-profile");
    let browser = Chromium::launch(&profile, (WIDTH, HEIGHT));
    let mut cdp = Cdp::connect(&browser.devtools).await;
    cdp.open_page((WIDTH, HEIGHT)).await;
    let url = format!("http://{admin}/#token={TOKEN}");
    let navigated = cdp.call("Page.navigate", json!({"url": url})).await;
    assert!(
        navigated.get("errorText").is_none(),
        "opening {url}: {navigated}"
    );

    // Every backend shown, each in its state: the dead ones failed their checks.
    let expected: BTreeSet<String> = addresses.iter().cloned().collect();
    let (shown, page) = read_until(&mut cdp, Duration::from_secs(20), |page| {
        let rows = rows(page);
        let listed: BTreeSet<String> = rows
            .iter()
            .filter(|r| r["upstream"] == "app")
            .filter_map(|r| r["address"].as_str().map(str::to_string))
            .collect();
        rows.len() == expected.len()
            && listed == expected
            && rows.iter().all(|r| {
                let dead = dead_set.contains(r["address"].as_str().unwrap_or(""));
                (r["state"] == "healthy") != dead
            })
    })
    .await;
    assert!(
        shown,
        "the page does not show the {} backends, the dead ones not healthy, the others healthy; it shows:\n{:#}\nconsole: {:?}",
        expected.len(),
        page,
        cdp.errors()
    );
    // The badges are colored by state: a healthy and a dead one differ.
    let badge_of = |want_dead: bool| {
        rows(&page)
            .iter()
            .find(|r| dead_set.contains(r["address"].as_str().unwrap_or("")) == want_dead)
            .map(|r| r["badge"].clone())
    };
    assert_ne!(
        badge_of(true),
        badge_of(false),
        "state badges are not colored"
    );
    println!(
        "page shows {} backends after {:.1} s",
        rows(&page).len(),
        started.elapsed().as_secs_f64()
    );

    // The figures move: total req/s above zero, then a different figure, with
    // the page not reloaded in between (the marker set on it stays).
    cdp.eval("window.__statusPageTest = true").await;
    let (moving, first) = read_until(&mut cdp, Duration::from_secs(15), |page| {
        page["total_rps"].as_f64().is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(moving, "total req/s stays at zero under load: {first:#}");
    let first_rps = first["total_rps"].as_f64().unwrap();
    let first_polls = first["polls"].as_u64().unwrap_or(0);
    let (changed, second) = read_until(&mut cdp, Duration::from_secs(15), |page| {
        page["total_rps"]
            .as_f64()
            .is_some_and(|v| v > 0.0 && v != first_rps)
            && page["polls"].as_u64().unwrap_or(0) > first_polls
    })
    .await;
    assert!(
        changed,
        "total req/s does not change between polls (first {first_rps}): {second:#}"
    );
    assert_eq!(second["marker"], json!(true), "the page reloaded itself");
    assert_eq!(second["live"], json!("ok"), "the live indicator is not ok");
    println!(
        "total req/s {} then {} ({})",
        first_rps, second["total_rps"], second["total_rps_text"]
    );

    // The per-backend charts have history to draw (some seconds of it).
    let (charted, page) = read_until(&mut cdp, Duration::from_secs(15), |page| {
        rows(page)
            .iter()
            .filter(|r| !dead_set.contains(r["address"].as_str().unwrap_or("")))
            .all(|r| r["points"].as_u64().unwrap_or(0) >= 5)
    })
    .await;
    assert!(charted, "the rate charts have no history: {page:#}");

    // The screenshot, of the whole page.
    let metrics = cdp.call("Page.getLayoutMetrics", json!({})).await;
    let height = metrics["cssContentSize"]["height"]
        .as_f64()
        .unwrap_or(HEIGHT as f64)
        .clamp(HEIGHT as f64, 8000.0);
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
            }),
        )
        .await;
    let png = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    };
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    println!("screenshot of the status page: {}", path.display());

    // Nothing went wrong in the page from its load to here.
    cdp.eval("1").await;
    let errors = cdp.errors();
    assert!(
        errors.is_empty(),
        "the status page logged errors:\n{}",
        errors.join("\n")
    );

    // A wrong token: the page says what it needs instead of figures. Its
    // requests answered 401 are logged by Chromium; nothing else may be.
    cdp.eval("location.hash = '#token=wrong'").await;
    let (refused, auth) = read_until(&mut cdp, Duration::from_secs(10), |page| {
        page["live"] == "auth" && page["auth_shown"] == json!(true)
    })
    .await;
    assert!(refused, "a refused token is not shown: {auth:#}");
    assert!(
        auth["auth_text"].as_str().unwrap_or("").contains("#token="),
        "the token message does not say how to give one: {auth:#}"
    );
    assert_eq!(auth["marker"], json!(true), "the page reloaded itself");
    let errors: Vec<String> = cdp
        .errors()
        .into_iter()
        .filter(|e| !(e.starts_with("log (network)") && e.contains("401")))
        .collect();
    assert!(
        errors.is_empty(),
        "the status page logged errors with a wrong token:\n{}",
        errors.join("\n")
    );

    let report = load.stop().await;
    println!(
        "{} requests answered under the page ({} failed), {}, {:.1} s in all",
        report.backends.len(),
        report.failed.len(),
        chromium.display(),
        started.elapsed().as_secs_f64()
    );
    drop(browser);
}
