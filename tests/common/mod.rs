//! Test harness: real processes on loopback. Backends are `tollgate-demo-backend`
//! processes (or small raw TCP servers in the test), tollgate is the real binary
//! with a topology file the test writes, clients are real HTTP clients.
//!
//! Waits are on conditions with deadlines, never fixed sleeps.
#![allow(dead_code)]

pub mod browser;
pub mod origin;
pub mod tls;

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");
/// The demo backend, an example that `cargo test` builds beside the test
/// binaries (`target/PROFILE/examples`).
pub fn demo_backend() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/PROFILE/deps/TEST -> target/PROFILE/examples/tollgate-demo-backend
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/PROFILE");
    let demo = profile_dir.join("examples").join("tollgate-demo-backend");
    assert!(
        demo.exists(),
        "{} is missing: `cargo test` builds it (with --examples or --all-targets)",
        demo.display()
    );
    demo
}

/// A fresh, empty directory for one test's files, under this test process's
/// own directory (see [`temp_root`]).
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = temp_root().join(format!("{}-{tag}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Set when a test of this process panicked: its files are kept to look at.
static A_TEST_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `TMP/tollgate-tests/PID`, this test process's directory. It is removed when
/// the process exits with every test passed; one left by a process that is gone
/// (failed tests, a kill) is removed by the next test process.
pub fn temp_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join("tollgate-tests");
        remove_roots_of_gone_processes(&base);
        let root = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&root).expect("create the test directory");
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            A_TEST_FAILED.store(true, Ordering::Relaxed);
            default_hook(info);
        }));
        extern "C" fn remove_root() {
            if !A_TEST_FAILED.load(Ordering::Relaxed) {
                let root = std::env::temp_dir()
                    .join("tollgate-tests")
                    .join(std::process::id().to_string());
                let _ = std::fs::remove_dir_all(root);
            }
        }
        // SAFETY: atexit(3) with a function that only removes a directory.
        unsafe { libc::atexit(remove_root) };
        root
    })
}

fn remove_roots_of_gone_processes(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<i32>().ok();
        // SAFETY: kill(2) with signal 0 only asks whether the process exists.
        let gone = pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A loopback address where nothing listens, and nothing can while this holds
/// it: its port is bound by a socket that does not listen, so connecting to it
/// is refused (a dead backend), and no other program is handed the port.
pub struct DeadAddress {
    pub addr: SocketAddr,
    _held: tokio::net::TcpSocket,
}

impl DeadAddress {
    pub fn new() -> DeadAddress {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind an ephemeral port");
        let addr = socket.local_addr().expect("its address");
        DeadAddress {
            addr,
            _held: socket,
        }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend process that prints `listening on ADDR` once bound and takes
/// `--listen ADDR`: a `tollgate-demo-backend`, or a Python script (in a real
/// framework) run by the test virtualenv; killed when dropped.
pub struct Backend {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub name: String,
    /// The program and what goes before `--listen ADDR` (a script), and after it.
    program: PathBuf,
    before: Vec<String>,
    after: Vec<String>,
}

impl Backend {
    /// Starts a backend named `name` on a port of its choosing.
    pub fn start(name: &str) -> Backend {
        Self::start_with(name, "127.0.0.1:0", &[])
    }

    /// Starts a demo backend with extra flags (e.g. `--delay 500`).
    pub fn start_with(name: &str, listen: &str, extra: &[&str]) -> Backend {
        let mut after = vec!["--name".to_string(), name.to_string()];
        after.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(name, demo_backend(), Vec::new(), listen, after)
    }

    /// Starts `SCRIPT --listen 127.0.0.1:0 ARGS` with the test virtualenv's Python
    /// (see [`python`]); `SCRIPT` is relative to the repository.
    pub fn start_script(name: &str, script: &str, args: &[&str]) -> Backend {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let before = vec![script.to_string_lossy().into_owned()];
        let after = args.iter().map(|s| s.to_string()).collect();
        Self::spawn(name, python(), before, "127.0.0.1:0", after)
    }

    /// Starts `tests/python/path_backend.py FRAMEWORK`; it picks its own port and
    /// cannot be restarted.
    pub fn start_python(name: &str, script: &str, args: &[&str]) -> Backend {
        let mut command = Command::new(python());
        command
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python")
                    .join(script),
            )
            .args(args);
        let (child, addr) =
            try_spawn_backend(command).unwrap_or_else(|e| panic!("backend {name}: {e}"));
        Backend {
            child: Some(child),
            addr,
            name: name.to_string(),
            program: PathBuf::new(),
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    fn spawn(
        name: &str,
        program: PathBuf,
        before: Vec<String>,
        listen: &str,
        after: Vec<String>,
    ) -> Backend {
        let mut backend = Backend {
            child: None,
            addr: "0.0.0.0:0".parse().unwrap(),
            name: name.to_string(),
            program,
            before,
            after,
        };
        let (child, addr) = try_spawn_backend(backend.command(listen))
            .unwrap_or_else(|e| panic!("backend {name}: {e}"));
        backend.child = Some(child);
        backend.addr = addr;
        backend
    }

    fn command(&self, listen: &str) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.before)
            .args(["--listen", listen])
            .args(&self.after);
        command
    }

    /// Sends `signal` to the process (`SIGSTOP`: it hangs, its sockets open).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("backend running").id() as i32;
        // SAFETY: kill(2) on a child process this harness started and still owns.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal})");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the backend again on the same address.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            !self.program.as_os_str().is_empty(),
            "{} cannot be restarted",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match try_spawn_backend(self.command(&self.addr.to_string())) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("backend {} did not restart: {e}", self.name),
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python of the virtualenv `make pydeps` builds in `target/python`, with the
/// frameworks of `tests/python/requirements.txt`.
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `make pydeps` (make test does) to install the test frameworks",
        python.display()
    );
    python
}

/// Spawns `command` and waits for its `listening on ADDR` line.
fn try_spawn_backend(mut command: Command) -> Result<(Child, SocketAddr), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    // The backend prints its address as soon as it is bound, or exits.
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        let _ = child.wait();
        return Err(format!("did not start: {err}"));
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    Ok((child, addr))
}

/// A running tollgate process with a generated topology; killed when dropped.
pub struct Tollgate {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub dir: PathBuf,
}

impl Tollgate {
    /// Starts tollgate with `body` (upstreams and routes) below a generated `server:`
    /// section: one listener and a metrics endpoint on free ports, JSON access log
    /// in the test directory. `server_extra` lines are added to `server:`.
    pub async fn start(body: &str) -> Tollgate {
        Self::start_with(body, "").await
    }

    pub async fn start_with(body: &str, server_extra: &str) -> Tollgate {
        Self::start_with_options(body, server_extra, &[]).await
    }

    /// As [`Tollgate::start`], with extra environment variables.
    pub async fn start_with_env(body: &str, envs: &[(&str, &str)]) -> Tollgate {
        Self::start_with_options(body, "", envs).await
    }

    /// As [`Tollgate::start_with`], with extra environment variables. The
    /// listener and metrics endpoint are on port 0: tollgate picks and reports them.
    pub async fn start_with_options(
        body: &str,
        server_extra: &str,
        envs: &[(&str, &str)],
    ) -> Tollgate {
        let dir = temp_dir("tollgate");
        let config = format!(
            "server:\n  threads: 2\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  access_log: {log}\n  access_log_format: json\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period: 1s\n{server_extra}\n{body}",
            log = dir.join("access.log").display(),
            pid = dir.join("tollgate.pid").display(),
            sock = dir.join("upgrade.sock").display(),
        );
        Self::launch_reported(dir, &config, envs).await
    }

    /// Starts tollgate on a complete topology `config`, whose addresses may have
    /// port 0: waits for the addresses tollgate reports (`addr` is the first
    /// listener's, `metrics_addr` the metrics endpoint's when there is one; see
    /// [`Tollgate::reported`] for the others).
    pub async fn launch_reported(dir: PathBuf, config: &str, envs: &[(&str, &str)]) -> Tollgate {
        let has_metrics = config.contains("\n  metrics:");
        Self::spawn(dir, config, envs)
            .wait_reported(has_metrics)
            .await
    }

    /// Waits for the addresses a tollgate just spawned reports, then for it to
    /// accept on them.
    async fn wait_reported(self, has_metrics: bool) -> Tollgate {
        let mut tollgate = self;
        let mut reported = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !tollgate.has_exited() {
            let log = tollgate.stderr();
            reported = reported_address(&log, "server.listeners[0]").is_some()
                && (!has_metrics || reported_address(&log, "server.metrics").is_some());
            if reported {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = tollgate.stderr();
        match reported_address(&log, "server.listeners[0]") {
            Some(addr) if reported => tollgate.addr = addr,
            _ => panic!("tollgate did not report its addresses:\n{log}"),
        }
        if let Some(metrics) = reported_address(&log, "server.metrics") {
            tollgate.metrics_addr = metrics;
        }
        tollgate.wait_ready().await;
        tollgate
    }

    /// The address tollgate reported for `node` (`server.listeners[1]`).
    pub fn reported(&self, node: &str) -> SocketAddr {
        reported_address(&self.stderr(), node)
            .unwrap_or_else(|| panic!("no address reported for {node}:\n{}", self.stderr()))
    }

    /// Starts tollgate on a complete topology `config` whose listener is `addr` and
    /// metrics endpoint `metrics_addr`, with extra environment variables.
    pub async fn launch(
        dir: PathBuf,
        config: &str,
        addr: SocketAddr,
        metrics_addr: SocketAddr,
        envs: &[(&str, &str)],
    ) -> Tollgate {
        let mut tollgate = Self::spawn(dir, config, envs);
        tollgate.addr = addr;
        tollgate.metrics_addr = metrics_addr;
        tollgate.wait_ready().await;
        tollgate
    }

    /// Writes `config` and starts tollgate on it, without waiting.
    fn spawn(dir: PathBuf, config: &str, envs: &[(&str, &str)]) -> Tollgate {
        Self::spawn_command(dir, config, |config_path| {
            let mut command = Command::new(TOLLGATE);
            command
                .arg("-c")
                .arg(config_path)
                .envs(envs.iter().copied());
            command
        })
    }

    /// As [`Tollgate::launch_reported`], with the process started by the
    /// command `make` returns for the config file's path (tollgate under a
    /// wrapper that execs it, such as `unshare`).
    pub async fn launch_reported_by(
        dir: PathBuf,
        config: &str,
        make: impl FnOnce(&Path) -> Command,
    ) -> Tollgate {
        let tollgate = Self::spawn_command(dir, config, make);
        tollgate
            .wait_reported(config.contains("\n  metrics:"))
            .await
    }

    fn spawn_command(dir: PathBuf, config: &str, make: impl FnOnce(&Path) -> Command) -> Tollgate {
        let config_path = dir.join("tollgate.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let child = make(&config_path)
            .env("RUST_LOG", "info,tollgate=debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate");
        let unknown: SocketAddr = "0.0.0.0:0".parse().unwrap();
        Tollgate {
            child: Some(child),
            addr: unknown,
            metrics_addr: unknown,
            dir,
        }
    }

    async fn wait_ready(&mut self) {
        let (addr, metrics) = (self.addr, self.metrics_addr);
        let no_metrics = metrics.port() == 0;
        let ready = wait_until(Duration::from_secs(15), || async move {
            TcpStream::connect(addr).is_ok() && (no_metrics || TcpStream::connect(metrics).is_ok())
        })
        .await;
        if !ready || self.has_exited() {
            panic!("tollgate did not start:\n{}", self.stderr());
        }
    }

    fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Replaces the topology file tollgate was started with (for reloads).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.dir.join("tollgate.yaml"), text).expect("rewrite config");
    }

    /// The topology file as it is now.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("tollgate.yaml")).expect("read config")
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the tollgate process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("tollgate running").id() as i32;
        // SAFETY: kill(2) on a child process this harness started and still owns.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to 10 s for `addr`, another listener of this tollgate, to accept.
    pub async fn wait_listening(&self, addr: SocketAddr) {
        let listening = wait_until(Duration::from_secs(10), || async move {
            TcpStream::connect(addr).is_ok()
        })
        .await;
        assert!(listening, "{addr} never opened:\n{}", self.stderr());
    }

    /// The process id of the tollgate this harness started.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tollgate running").id()
    }

    /// The process id in the pid file, if it holds one.
    pub fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("tollgate.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `tollgate -c <this topology file> <args>`; its exit status and output.
    pub fn command(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(TOLLGATE)
            .arg("-c")
            .arg(self.dir.join("tollgate.yaml"))
            .args(args)
            .output()
            .expect("run tollgate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Starts a second tollgate on the same topology file with `-u`: it waits to
    /// take the listening sockets over from this one (see `signal(SIGQUIT)`).
    pub fn spawn_upgrade(&self) -> Child {
        let stderr =
            std::fs::File::create(self.dir.join("upgrade-stderr.log")).expect("stderr log");
        let bound = format!(
            "server.listeners[0]={},server.metrics={}",
            self.addr, self.metrics_addr
        );
        Command::new(TOLLGATE)
            .arg("-u")
            .arg("-c")
            .arg(self.dir.join("tollgate.yaml"))
            .env("RUST_LOG", "info")
            .env("TOLLGATE_BOUND_ADDRESSES", bound)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn upgraded tollgate")
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What tollgate wrote to stderr (its error log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The access log written so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits up to 5 s for the sample of `name` with `labels` to equal `value`.
    /// Request counters move in pingora's `logging` phase, just after the client
    /// has its answer, so a test reads them only once they have caught up.
    pub async fn metric_reaches(&self, name: &str, labels: &[(&str, &str)], value: f64) -> bool {
        wait_until(Duration::from_secs(5), || async {
            self.metric(name, labels).await == Some(value)
        })
        .await
    }

    /// The value of the sample of `name` whose labels include all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            remove_default_pid_file(child.id());
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("tollgate files kept in {}", self.dir.display());
        }
    }
}

/// Removes the pid file a killed tollgate of pid `pid` left in the default
/// directory for root (topologies that set no `pid_file`), so that test runs
/// leave none behind.
fn remove_default_pid_file(pid: u32) {
    let Ok(entries) = std::fs::read_dir("/run/tollgate") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_pid_file = path.extension().is_some_and(|e| e == "pid");
        if is_pid_file && std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == pid.to_string())
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Kills a process a test started indirectly (the tollgate an upgrade started,
/// a child of the one the harness started) when dropped.
pub struct Reap(pub u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the tollgate this test's upgrade started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The address of `node` in tollgate's `listening on ADDR (NODE)` log lines.
pub fn reported_address(log: &str, node: &str) -> Option<SocketAddr> {
    let suffix = format!(" ({node})");
    log.lines().find_map(|line| {
        let rest = line.split_once("listening on ")?.1;
        rest.strip_suffix(&suffix)?.parse().ok()
    })
}

/// Finds `name{...labels...} value` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// A YAML `backends:` list for `backends`, each with weight 1.
pub fn backend_list(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("      - address: {}\n", b.addr))
        .collect()
}

/// The part of a topology below `server:`, built from typed parts instead of
/// YAML pasted into each test.
#[derive(Default, Clone)]
pub struct TopologyBody {
    upstreams: Vec<String>,
    routes: Vec<String>,
    sections: Vec<String>,
}

impl TopologyBody {
    pub fn new() -> TopologyBody {
        TopologyBody::default()
    }

    /// An upstream `name` over `backends`, with `extra` YAML lines (indented
    /// four spaces, each ending in a newline) under it.
    pub fn upstream(mut self, name: &str, backends: &[SocketAddr], extra: &str) -> TopologyBody {
        let list: String = backends
            .iter()
            .map(|a| format!("      - address: {a}\n"))
            .collect();
        self.upstreams
            .push(format!("  {name}:\n    backends:\n{list}{extra}"));
        self
    }

    /// A route on `path_prefix` to `upstream`, with `extra` YAML lines (indented
    /// four spaces) under it.
    pub fn route(mut self, path_prefix: &str, upstream: &str, extra: &str) -> TopologyBody {
        self.routes.push(format!(
            "  - match: {{path_prefix: {path_prefix}}}\n    upstream: {upstream}\n{extra}"
        ));
        self
    }

    /// A route written out whole (`  - match: ...` lines).
    pub fn raw_route(mut self, yaml: &str) -> TopologyBody {
        self.routes.push(yaml.to_string());
        self
    }

    /// A top-level section written out whole (`auth:`, `rate_limits:`).
    pub fn section(mut self, yaml: &str) -> TopologyBody {
        self.sections.push(yaml.to_string());
        self
    }

    pub fn yaml(&self) -> String {
        let mut out = String::new();
        if !self.upstreams.is_empty() {
            out.push_str("upstreams:\n");
            out.extend(self.upstreams.iter().map(String::as_str));
        }
        for section in &self.sections {
            out.push_str(section);
        }
        out.push_str("routes:\n");
        out.extend(self.routes.iter().map(String::as_str));
        out
    }
}

/// The most common body: upstream `app` over `backends`, every path to it.
pub fn proxy_to(backends: &[SocketAddr]) -> String {
    TopologyBody::new()
        .upstream("app", backends, "")
        .route("/", "app", "")
        .yaml()
}

/// Sends `request` on a new connection to `addr` and reads until the peer closes
/// or `timeout` passes. Returns what arrived and whether the peer closed.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).expect("send");
    let (out, closed) = read_until(&mut stream, timeout, |_| false);
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads from `stream` until `done` holds for all that has arrived, the peer
/// closes, or `timeout` passes. Returns what arrived and whether the peer closed.
pub fn read_until(
    stream: &mut TcpStream,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return (out, false);
                }
                continue;
            }
            Err(_) => return (out, true),
        }
        if done(&out) {
            return (out, false);
        }
    }
}

/// Whether `bytes` hold a whole response: its head and its Content-Length body.
pub fn response_complete(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let length = String::from_utf8_lossy(&bytes[..head_end])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= head_end + 4 + length
}

/// A counting HTTP service on a free loopback port, a thread per connection:
/// it reads each request's head, puts its headers (names lower-cased) in a
/// JSON map, and answers `answer(&map)`, a status line's text and a JSON
/// body, with `Connection: close`. Returns its address and the number of
/// connections it got.
pub fn head_answering_service(
    answer: fn(&serde_json::Map<String, serde_json::Value>) -> (&'static str, serde_json::Value),
) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut seen = serde_json::Map::new();
                for (name, value) in head.lines().skip(1).filter_map(|l| l.split_once(':')) {
                    seen.insert(
                        name.trim().to_ascii_lowercase(),
                        serde_json::Value::from(value.trim()),
                    );
                }
                let (status, body) = answer(&seen);
                let body = body.to_string();
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            });
        }
    });
    (addr, asked)
}

/// Runs a command; its success and everything it printed.
pub fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (make test installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Asserts that `tollgate -t` refuses `contents` with an error at `line` of
/// the file (`FILE:LINE:`) whose text has every one of `words`.
pub fn assert_refused_at(contents: &str, line: usize, words: &[&str]) {
    let result = check_topology(contents);
    assert!(!result.ok, "accepted:\n{contents}\n{}", result.output);
    let located = format!("{}:{line}:", result.file);
    assert!(
        result.output.contains(&located),
        "expected `{located}` in:\n{}",
        result.output
    );
    for word in words {
        assert!(
            result.output.contains(word),
            "expected `{word}` in:\n{}",
            result.output
        );
    }
}

/// What `tollgate -t` said about a topology file.
pub struct CheckResult {
    /// Exit status 0.
    pub ok: bool,
    /// stdout then stderr.
    pub output: String,
    /// The file checked, as it appears in messages.
    pub file: String,
}

/// Writes `contents` to a fresh file and runs `tollgate -t -c` on it.
pub fn check_topology(contents: &str) -> CheckResult {
    let dir = temp_dir("check");
    let path = write_file(&dir, "topology.yaml", contents);
    let out = Command::new(TOLLGATE)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run tollgate -t");
    CheckResult {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        file: path.display().to_string(),
    }
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

/// GETs `url` and returns (status, X-Backend header, body).
pub async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, String, String), reqwest::Error> {
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await?;
    Ok((status, backend, body))
}

/// A minimal HTTP/1.1 server for answers a normal backend would not give (hop-by-hop
/// response headers, closing without answering). Counts the connections it accepts.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub connections: std::sync::Arc<AtomicUsize>,
}

impl RawBackend {
    /// Answers every request head with `response`; `None` closes the connection
    /// instead of answering.
    pub fn start(response: Option<&'static [u8]>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            match response {
                                Some(bytes) => {
                                    if stream.write_all(bytes).is_err() {
                                        return;
                                    }
                                }
                                None => return,
                            }
                        }
                    }
                });
            }
        });
        RawBackend { addr, connections }
    }
}

/// Clients that GET `url` in a loop over keep-alive connections until stopped.
pub struct SteadyLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The X-Backend of every 200 answer so far, in order.
    pub backends: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

/// What a [`SteadyLoad`] saw.
pub struct LoadReport {
    /// X-Backend of every 200 answer.
    pub backends: Vec<String>,
    /// Every other outcome, described.
    pub failed: Vec<String>,
}

impl SteadyLoad {
    pub fn start(url: String, clients: usize) -> SteadyLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backends = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers = (0..clients)
            .map(|_| {
                let (url, stop, backends) = (url.clone(), stop.clone(), backends.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut failed = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match get(&client, &url).await {
                            Ok((200, backend, _)) => backends
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(backend),
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    failed
                })
            })
            .collect();
        SteadyLoad {
            stop,
            backends,
            workers,
        }
    }

    /// How many requests have been answered so far.
    pub fn answered(&self) -> usize {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits up to 10 s for `more` requests beyond those answered now; whether
    /// they were.
    pub async fn wait_answered(&self, more: usize) -> bool {
        let target = self.answered() + more;
        wait_until(Duration::from_secs(10), || async {
            self.answered() >= target
        })
        .await
    }

    /// The last `n` backends that answered (fewer when fewer did).
    pub fn last_backends(&self, n: usize) -> Vec<String> {
        let seen = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        seen[seen.len().saturating_sub(n)..].to_vec()
    }

    /// Stops the clients and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failed = Vec::new();
        for worker in self.workers {
            failed.extend(worker.await.expect("load client"));
        }
        let backends = self
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        LoadReport { backends, failed }
    }
}

impl LoadReport {
    /// Asserts that at least `min` requests were answered and none failed.
    pub fn assert_no_failure(&self, min: usize) {
        let total = self.backends.len() + self.failed.len();
        assert!(
            self.backends.len() >= min,
            "only {} of {total} requests answered",
            self.backends.len()
        );
        assert!(
            self.failed.is_empty(),
            "{} of {total} requests failed: {:?}",
            self.failed.len(),
            &self.failed[..self.failed.len().min(3)]
        );
    }
}

/// The htpasswd line Apache's `htpasswd -nb` writes for `user` and
/// `password` with `scheme`: `-B` (bcrypt), `-m` (MD5), `-s` (SHA-1), `-p`
/// (plain text).
pub fn htpasswd_line(scheme: &str, user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nb", scheme, user, password])
        .output()
        .expect("htpasswd (Debian package apache2-utils) is needed");
    assert!(out.status.success(), "htpasswd {scheme} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A command that runs tollgate on the config file it is given with `mount`
/// a tmpfs of `size` (`64k`), in a mount namespace of its own: a full disk
/// for tollgate alone. For [`Tollgate::launch_reported_by`].
pub fn tollgate_over_small_tmpfs(mount: &Path, size: &str) -> impl FnOnce(&Path) -> Command {
    let mount = mount.to_path_buf();
    let script =
        format!("mount -t tmpfs -o size={size} tollgate-full \"$1\" && exec \"$2\" -c \"$3\"");
    move |config_path| {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--map-root-user", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&mount)
            .arg(TOLLGATE)
            .arg(config_path);
        command
    }
}
