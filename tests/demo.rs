//! `make run`'s demo as a new user starts it: examples/run_demo.sh on
//! config/tollgate.yaml, with its fixed ports (8080, 9001-9004, 9091, 9092).
//! It prints the status page's address, serves it, and its least_time route
//! answers. Its own binary: the demo's ports are fixed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_and_serves_the_status_page() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = std::path::Path::new(TOLLGATE).parent().unwrap();
    let mut child = Command::new("bash")
        .arg("examples/run_demo.sh")
        .current_dir(root)
        .env("TOLLGATE_BIN_DIR", bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run examples/run_demo.sh");
    let group = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    // Read to the end: the demo logs requests to stdout, and a closed pipe
    // would stop it.
    let (sender, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text += &line;
            text.push('\n');
            if !sent && line.contains("Ctrl-C stops everything") {
                sent = true;
                let _ = sender.send(text.clone());
            }
        }
        if !sent {
            let _ = sender.send(text);
        }
    });
    let printed = printed
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_default();
    let client = reqwest::Client::new();
    let page_up = wait_until(Duration::from_secs(20), || async {
        client.get("http://127.0.0.1:9092/").send().await.is_ok()
    })
    .await;
    // The admin port may open before the proxy's: wait for the proxy too.
    let proxy_up = wait_until(Duration::from_secs(20), || async {
        client
            .get("http://127.0.0.1:8080/healthz")
            .send()
            .await
            .is_ok()
    })
    .await;
    let fast = client.get("http://127.0.0.1:8080/fast/x").send().await;
    let status = client
        .get("http://127.0.0.1:9092/api/upstreams")
        .send()
        .await;
    // SAFETY: kill(2) on the process group this test started.
    unsafe { libc::kill(-group, libc::SIGINT) };
    let _ = child.wait();
    assert!(
        printed.contains("Status page (live upstreams and backends): http://127.0.0.1:9092/"),
        "{printed}"
    );
    assert!(page_up, "no status page at :9092");
    assert!(proxy_up, "no proxy at :8080");
    assert_eq!(fast.unwrap().status(), 200);
    let upstreams: serde_json::Value =
        serde_json::from_str(&status.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(upstreams["fast"]["algorithm"], "least_time");
}
