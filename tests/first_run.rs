//! The papercuts of a first run: a busy port, reload with another file, the pid
//! file, and backends written as host names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs tollgate on `config` until it exits or `timeout` passes; (exit code,
/// stderr, how long it ran). Kills it on timeout.
fn run_until_exit(config: &str, timeout: Duration) -> (Option<i32>, String, Duration) {
    let dir = temp_dir("first-run");
    let path = write_file(&dir, "tollgate.yaml", config);
    let stderr_path = dir.join("stderr.log");
    let started = Instant::now();
    let mut child = Command::new(TOLLGATE)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (code, stderr, started.elapsed())
}

fn minimal_config(listen: SocketAddr, dir: &std::path::Path, backend: &str) -> String {
    format!(
        "server:\n  listeners:\n    - address: {listen}\n  access_log: off\n  pid_file: {pid}\n  upgrade_sock: {sock}\n\
         upstreams:\n  app: {{backends: [{{address: \"{backend}\"}}]}}\n\
         routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    )
}

#[test]
fn a_busy_listen_address_is_one_line_and_exit_status_1() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = temp_dir("busy");
    let (code, stderr, took) = run_until_exit(
        &minimal_config(addr, &dir, "127.0.0.1:9"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("cannot listen on {addr}")) && lines[0].contains("in use"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reload_refuses_a_file_other_than_the_one_running() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&proxy_to(&[backend.addr])).await;
    // Another file naming the same pid file: the process would not read it.
    let other = write_file(&tollgate.dir, "other.yaml", &tollgate.config_text());
    let output = Command::new(TOLLGATE)
        .arg("-c")
        .arg(&other)
        .arg("reload")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    let running = std::fs::canonicalize(tollgate.dir.join("tollgate.yaml")).unwrap();
    assert!(
        text.contains(&format!("runs {}, not", running.display())),
        "{text}"
    );
    let (ok, text) = tollgate.command(&["reload"]);
    assert!(ok, "{text}");
}

#[tokio::test]
async fn the_default_pid_file_is_the_topology_files_own_and_goes_at_exit() {
    let backend = Backend::start("app");
    let dir = temp_dir("default-pid");
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  access_log: off\n  grace_period: 1s\n\
         upstreams:\n  app: {{backends: [{{address: {}}}]}}\n\
         routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend.addr
    );
    let mut tollgate = Tollgate::launch_reported(dir.clone(), &config, &[]).await;
    let config_path = dir.join("tollgate.yaml");
    let (pid_file, _) = tollgate::pid_file::default_paths(&config_path);
    assert!(!pid_file.starts_with("/tmp/tollgate.pid"));
    let written = wait_until(Duration::from_secs(5), || {
        let pid_file = pid_file.clone();
        let pid = tollgate.pid();
        async move { std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == pid.to_string()) }
    })
    .await;
    assert!(written, "no pid in {}", pid_file.display());
    let (ok, text) = tollgate.command(&["reload"]);
    assert!(ok, "{text}");
    tollgate.signal(libc::SIGTERM);
    assert!(tollgate.wait_exit(Duration::from_secs(10)).await.is_some());
    assert!(!pid_file.exists(), "{} left behind", pid_file.display());
}

#[test]
fn a_pid_file_naming_another_process_never_signals_it() {
    let dir = temp_dir("stranger");
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = write_file(
        &dir,
        "tollgate.yaml",
        &minimal_config(addr, &dir, "127.0.0.1:9"),
    );
    let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(dir.join("tollgate.pid"), format!("{}\n", stranger.id())).unwrap();
    let output = Command::new(TOLLGATE)
        .arg("-c")
        .arg(&config)
        .arg("reload")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("not tollgate"), "{text}");
    // SIGHUP would have ended `sleep`.
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was signalled"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn backends_may_be_written_as_host_names() {
    let backend = Backend::start("named");
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  app: {{backends: [{{address: \"localhost:{}\"}}]}}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend.addr.port()
    ))
    .await;
    let (status, name, _) = get(&reqwest::Client::new(), &tollgate.url("/"))
        .await
        .unwrap();
    assert_eq!((status, name.as_str()), (200, "named"));
    let label = format!("localhost:{}", backend.addr.port());
    assert!(
        tollgate
            .metric_reaches(
                "tollgate_upstream_requests_total",
                &[("backend", &label), ("code", "200")],
                1.0
            )
            .await
    );
}
