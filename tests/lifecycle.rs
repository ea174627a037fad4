//! Process lifecycle: SIGTERM lets requests in flight finish, then exits.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let backend = Backend::start("slow");
    // The harness sets grace_period: 1s.
    let mut tollgate = Tollgate::start(&format!(
        "upstreams:\n  app:\n    backends: [{{address: {}}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend.addr
    ))
    .await;
    let url = tollgate.url("/slow?ms=700");
    let slow = tokio::spawn(async move {
        let response = reqwest::get(url).await?;
        let status = response.status().as_u16();
        response.text().await.map(|body| (status, body))
    });
    // Let the request reach the backend, then ask tollgate to stop.
    let started = Instant::now();
    let in_flight = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric("tollgate_upstream_in_flight", &[("upstream", "app")])
            .await
            == Some(1.0)
    })
    .await;
    assert!(in_flight);
    tollgate.signal(libc::SIGTERM);
    let (status, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request was cut off");
    assert_eq!(status, 200);
    assert!(body.contains("\"backend\":\"slow\""));
    let exited = tollgate.wait_exit(Duration::from_secs(15)).await;
    assert!(exited.is_some(), "tollgate did not exit after SIGTERM");
    assert!(
        std::net::TcpStream::connect(tollgate.addr).is_err(),
        "still accepting after exit"
    );
    eprintln!("drained and exited in {:?}", started.elapsed());
}

/// Known to fail: the handover works, but pingora 0.9 drops idle keep-alive
/// connections the instant it broadcasts shutdown, so a client that sends its next
/// request at that moment gets a reset (seen: 2 to 4 of ~13,000 requests). Zero
/// resets needs pingora to answer such a request with `Connection: close` instead.
/// Run with `cargo test --test lifecycle -- --ignored`.
#[ignore = "pingora drops idle keep-alive connections at the upgrade broadcast (issue 5 open)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_the_sockets_without_a_failed_request() {
    let backend = Backend::start("app");
    let mut old = Tollgate::start(&format!(
        "upstreams:\n  app:\n    backends: [{{address: {}}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend.addr
    ))
    .await;
    let load = SteadyLoad::start(old.url("/"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = old.spawn_upgrade();
    // The new process waits on the upgrade socket; the old one hands over on SIGQUIT.
    let socket = old.dir.join("upgrade.sock");
    let waiting = wait_until(Duration::from_secs(10), || {
        let exists = socket.exists();
        async move { exists }
    })
    .await;
    assert!(waiting, "the new process never opened the upgrade socket");
    old.signal(libc::SIGQUIT);
    let exited = old.wait_exit(Duration::from_secs(20)).await;
    assert!(exited.is_some(), "the old process did not exit");
    assert!(matches!(new.try_wait(), Ok(None)), "the new process died");
    tokio::time::sleep(Duration::from_millis(500)).await; // traffic on the new process alone
    let report = load.stop().await;
    let _ = new.kill();
    let _ = new.wait();
    report.assert_no_failure(101);
}
