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
