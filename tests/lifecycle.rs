//! Process lifecycle: SIGTERM lets requests in flight finish, then exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let backend = Backend::start("slow");
    // The harness sets grace_period: 1s.
    let mut tollgate = Tollgate::start(&proxy_to(&[backend.addr])).await;
    let url = tollgate.url("/slow?ms=700");
    let slow = tokio::spawn(async move {
        let response = reqwest::get(url).await?;
        let status = response.status().as_u16();
        response.text().await.map(|body| (status, body))
    });
    // Let the request reach the backend, then ask tollgate to stop.
    let started = Instant::now();
    let in_flight = tollgate
        .metric_reaches("tollgate_upstream_in_flight", &[("upstream", "app")], 1.0)
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

/// The upgrade by hand: the new process with `-u`, then SIGQUIT to the old one.
/// pingora drops connections that wait for a request when it stops accepting;
/// the old process closes every connection after its answer from the SIGQUIT on,
/// so clients have left it by then.
/// With the old process gone, requests go on being answered, and the metrics
/// endpoint at the same address (now the new process's, whose counters started
/// at zero) has counted them: the new process serves.
async fn assert_new_process_serves(old: &Tollgate, load: &SteadyLoad) {
    assert!(
        load.wait_answered(50).await,
        "no answer after the old process left"
    );
    let served = old
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    assert!(served >= 50.0, "the new process counted {served} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_the_sockets_without_a_failed_request() {
    let backend = Backend::start("app");
    let mut old = Tollgate::start(&proxy_to(&[backend.addr])).await;
    let load = SteadyLoad::start(old.url("/"), 4);
    assert!(load.wait_answered(50).await, "traffic before the upgrade");
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
    assert_new_process_serves(&old, &load).await;
    let report = load.stop().await;
    let _ = new.kill();
    let _ = new.wait();
    report.assert_no_failure(101);
}

/// Messages tollgate sends to a systemd-style notify socket.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(tag: &str) -> NotifySocket {
        let path = temp_dir(tag).join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket { socket, path }
    }

    /// Waits up to `timeout` for a message holding every one of `lines`.
    fn expect(&self, lines: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if lines.iter().all(|l| message.lines().any(|m| m == *l)) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no notify message with {lines:?} within {timeout:?}; seen: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_command_restarts_the_binary_in_place_without_a_failed_request() {
    let backend = Backend::start("app");
    let notify = NotifySocket::bind("notify");
    let notify_path = notify.path.to_string_lossy().into_owned();
    let mut old = Tollgate::start_with_env(
        &proxy_to(&[backend.addr]),
        &[("NOTIFY_SOCKET", &notify_path)],
    )
    .await;
    let old_pid = old.pid();
    notify.expect(
        &["READY=1", &format!("MAINPID={old_pid}")],
        Duration::from_secs(10),
    );

    // A reload is bracketed by RELOADING=1 and READY=1.
    let (ok, output) = old.command(&["reload"]);
    assert!(ok, "{output}");
    notify.expect(&["RELOADING=1"], Duration::from_secs(5));
    notify.expect(&["READY=1"], Duration::from_secs(5));

    let load = SteadyLoad::start(old.url("/"), 4);
    assert!(load.wait_answered(50).await, "traffic before the upgrade");
    let (ok, output) = old.command(&["upgrade"]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("asked process {old_pid} to upgrade")),
        "{output}"
    );

    // The new process tells the service manager it is the main one now.
    let message = notify.expect(&["READY=1"], Duration::from_secs(15));
    let new_pid: u32 = message
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("MAINPID in the new process's READY");
    let _reap = Reap(new_pid);
    assert_ne!(new_pid, old_pid);
    let exited = old.wait_exit(Duration::from_secs(20)).await;
    assert!(exited.is_some(), "the old process did not exit");
    assert!(alive(new_pid), "the new process died:\n{}", old.stderr());
    assert_eq!(old.pid_in_file(), Some(new_pid));
    assert_new_process_serves(&old, &load).await;
    let report = load.stop().await;
    report.assert_no_failure(101);

    // The new process is the one `reload` reaches now.
    let (ok, output) = old.command(&["reload"]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("asked process {new_pid}")),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_leaves_the_old_process_serving() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&proxy_to(&[backend.addr])).await;
    // `tollgate upgrade` checks the file with the new binary first.
    let good = tollgate.config_text();
    tollgate.rewrite_config(&format!("{good}\nroutes_typo: []\n"));
    let (ok, output) = tollgate.command(&["upgrade"]);
    assert!(!ok, "an invalid file was accepted for an upgrade: {output}");
    assert!(output.contains("routes_typo"), "{output}");

    // A new process that cannot start (the file went bad after the check) makes
    // the old one log why and keep serving.
    tollgate.signal(libc::SIGUSR2);
    let logged = wait_until(Duration::from_secs(15), || {
        let stderr = tollgate.stderr();
        async move { stderr.contains("upgrade aborted, this process keeps serving") }
    })
    .await;
    assert!(logged, "no abort logged:\n{}", tollgate.stderr());
    assert_eq!(tollgate.pid_in_file(), Some(tollgate.pid()));
    let client = reqwest::Client::new();
    let (status, backend_name, _) = get(&client, &tollgate.url("/"))
        .await
        .expect("still serving");
    assert_eq!((status, backend_name.as_str()), (200, "app"));

    // With the file fixed, the next upgrade goes through.
    tollgate.rewrite_config(&good);
    let (ok, output) = tollgate.command(&["upgrade"]);
    assert!(ok, "{output}");
    let old_pid = tollgate.pid();
    let moved = wait_until(Duration::from_secs(15), || {
        let pid = tollgate.pid_in_file();
        async move { pid.is_some_and(|p| p != old_pid) }
    })
    .await;
    assert!(moved, "no new process:\n{}", tollgate.stderr());
    let _reap = Reap(tollgate.pid_in_file().unwrap_or_default());
}

/// On SIGTERM an idle keep-alive connection is closed as soon as tollgate
/// stops listening, not held until the process exits at the end of the grace
/// period; a request in flight on another connection still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_at_once() {
    use std::io::Write;
    let backend = Backend::start("slow");
    let dir = temp_dir("idle-shutdown");
    let config = format!(
        "server:\n  threads: 2\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period: 5s\nupstreams:\n  app:\n    backends: [{{address: {backend}}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        backend = backend.addr,
    );
    let mut tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let addr = tollgate.addr;

    // One connection answered once and left idle.
    let mut idle = std::net::TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (answer, _) = read_until(&mut idle, Duration::from_secs(5), |got| {
        String::from_utf8_lossy(got).contains("\"backend\":\"slow\"")
    });
    assert!(
        String::from_utf8_lossy(&answer).contains("\"backend\":\"slow\""),
        "no answer on the idle connection"
    );

    // A slow request in flight on another connection.
    let url = tollgate.url("/slow?ms=1500");
    let slow = tokio::spawn(async move {
        let response = reqwest::get(url).await?;
        let status = response.status().as_u16();
        response.text().await.map(|_| status)
    });
    let in_flight = tollgate
        .metric_reaches("tollgate_upstream_in_flight", &[("upstream", "app")], 1.0)
        .await;
    assert!(in_flight);

    tollgate.signal(libc::SIGTERM);
    let (_, closed) = read_until(&mut idle, Duration::from_secs(4), |_| false);
    assert!(
        closed,
        "the idle connection was still open 4 s after SIGTERM"
    );
    assert_eq!(
        slow.await.unwrap().expect("the slow request was cut off"),
        200
    );
    assert!(tollgate.wait_exit(Duration::from_secs(15)).await.is_some());
}
