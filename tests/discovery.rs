//! Backends discovered by DNS, from a real dnsmasq on loopback whose hosts
//! file the tests rewrite (and SRV records they set): the set follows the
//! answer without a reload, keeps the state of the backends that stay, keeps
//! the last good set when the answer fails, leaves out SRV targets that do
//! not resolve, ip_hash agrees across instances, and reloads (adding,
//! renaming, or changing something else while the answer changes) and
//! discovery's swaps do not undo each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// dnsmasq answering from `hosts` (re-read on SIGHUP) and `srv` records,
/// with a TTL of 1 s; killed when dropped.
struct Dns {
    child: Child,
    port: u16,
    hosts: PathBuf,
    /// What dnsmasq logs (with the queries, when asked for).
    log: PathBuf,
}

impl Dns {
    /// Starts dnsmasq and waits until it answers. The port is one found free
    /// for UDP; dnsmasq also wants it for TCP, and exits when it is taken
    /// there: then it is started again on another.
    fn start(dir: &Path, hosts: &str, srv: &[&str]) -> Dns {
        Self::start_with(dir, hosts, srv, &[])
    }

    /// As [`Dns::start`], with more arguments for dnsmasq.
    fn start_with(dir: &Path, hosts: &str, srv: &[&str], args: &[&str]) -> Dns {
        let hosts_file = write_file(dir, "hosts", hosts);
        let log = dir.join("dnsmasq.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let port = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let _ = std::fs::remove_file(&log);
            let mut command = Command::new("dnsmasq");
            command
                .arg("--keep-in-foreground")
                .arg(format!("--port={port}"))
                .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                .args(["--no-resolv", "--no-hosts", "--local-ttl=1", "--user=root"])
                .arg("--pid-file")
                .arg(format!("--log-facility={}", log.display()))
                .arg(format!("--addn-hosts={}", hosts_file.display()));
            for record in srv {
                command.arg(format!("--srv-host={record}"));
            }
            command.args(args);
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (Debian package dnsmasq-base) is needed");
            // dnsmasq binds its sockets, then logs `started`, then that it
            // read the hosts file (a line `set_hosts` counts).
            let read = format!("read {}", hosts_file.display());
            while Instant::now() < deadline {
                if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&read)) {
                    return Dns {
                        child,
                        port,
                        hosts: hosts_file,
                        log,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "dnsmasq did not start");
        }
    }

    /// Rewrites the hosts file, has dnsmasq read it again and waits until
    /// it has: from then on it answers from the new file.
    fn set_hosts(&self, hosts: &str) {
        let read = format!("read {}", self.hosts.display());
        let before = self.log().matches(&read).count();
        std::fs::write(&self.hosts, hosts).unwrap();
        // SAFETY: kill(2) on the dnsmasq this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(&read).count() == before {
            assert!(Instant::now() < deadline, "dnsmasq did not read {read}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Demo backends on 127.0.0.2, .3, ... all on one port (A records carry no port).
fn backends_on_one_port(n: u8) -> (Vec<Backend>, u16) {
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backends = (0..n)
        .map(|i| {
            let ip = format!("127.0.0.{}", i + 2);
            Backend::start_with(&format!("b{}", i + 2), &format!("{ip}:{port}"), &[])
        })
        .collect();
    (backends, port)
}

fn hosts_for(ips: &[u8]) -> String {
    ips.iter()
        .map(|i| format!("127.0.0.{i} app.test\n"))
        .collect()
}

fn discovered_upstream(dns: &Dns, target: &str, extra: &str) -> String {
    discovered("app", dns, target, extra, "")
}

/// Upstream `name` discovered at `target`, with `extra` lines under it;
/// `routes` (whole `  - match:` entries) come before the route of every
/// path to it.
fn discovered(name: &str, dns: &Dns, target: &str, extra: &str, routes: &str) -> String {
    format!(
        "upstreams:\n  {name}:\n    discovery: {{dns: '{target}', interval: 1s, resolvers: ['{}']}}\n{extra}routes:\n{routes}  - match: {{path_prefix: /}}\n    upstream: {name}\n",
        dns.resolver()
    )
}

/// A sample's value, 0 when there is none yet.
async fn value(tollgate: &Tollgate, name: &str, labels: &[(&str, &str)]) -> f64 {
    tollgate.metric(name, labels).await.unwrap_or(0.0)
}

/// Waits up to 15 s for the sample to exceed `above`.
async fn grows(tollgate: &Tollgate, name: &str, labels: &[(&str, &str)], above: f64) -> bool {
    wait_until(Duration::from_secs(15), || async {
        value(tollgate, name, labels).await > above
    })
    .await
}

/// Discovery failures of upstream `app`.
const FAILURES: (&str, [(&str, &str); 1]) =
    ("tollgate_discovery_failures_total", [("upstream", "app")]);

/// Waits up to 10 s for the last 20 answers of `load` to all come from `want`.
async fn settles_on(load: &SteadyLoad, want: &[&str]) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let last = load.last_backends(20);
        last.len() == 20 && last.iter().all(|b| want.contains(&b.as_str()))
    })
    .await
}

/// The backends of the next `n` answers of `load`.
async fn next_answers(load: &SteadyLoad, n: usize) -> Vec<String> {
    let from = load.answered();
    assert!(load.wait_answered(n).await, "the load stalled");
    load.backends.lock().unwrap()[from..].to_vec()
}

/// Waits up to 10 s for a request to tollgate to be answered by `backend`.
async fn answered_by(tollgate: &Tollgate, backend: &str) -> bool {
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(10), || async {
        get(&client, &tollgate.url("/"))
            .await
            .is_ok_and(|(_, b, _)| b == backend)
    })
    .await
}

/// Replaces tollgate's topology below `server:` with `body`, sends SIGHUP
/// and waits for the reload to be done (counted as a success).
async fn reload(tollgate: &Tollgate, body: &str) {
    let reloads = [("result", "success")];
    let done = value(tollgate, "tollgate_config_reloads_total", &reloads).await;
    let config = tollgate.config_text();
    let server_part = config.split("upstreams:").next().unwrap();
    tollgate.rewrite_config(&format!("{server_part}{body}"));
    tollgate.signal(libc::SIGHUP);
    let reloaded = grows(tollgate, "tollgate_config_reloads_total", &reloads, done).await;
    assert!(reloaded, "the reload failed:\n{}", tollgate.stderr());
}

/// Probes every 200 ms; one failure takes a backend out, and only
/// `HEALTHY` passes in a row (5 s) bring it back.
const HEALTHY: u32 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_set_follows_dns_without_a_reload() {
    let dir = temp_dir("dns");
    let (mut backends, port) = backends_on_one_port(3);
    let dns = Dns::start(&dir, &hosts_for(&[2, 3]), &[]);
    let extra = format!(
        "    health_check: {{tcp: {{}}, interval: 200ms, unhealthy_threshold: 1, healthy_threshold: {HEALTHY}}}\n"
    );
    let tollgate = Tollgate::start(&discovered_upstream(
        &dns,
        &format!("app.test:{port}"),
        &extra,
    ))
    .await;
    let load = SteadyLoad::start(tollgate.url("/"), 2);
    let first = wait_until(Duration::from_secs(10), || {
        let last = load.last_backends(20);
        async move { last.contains(&"b2".to_string()) && last.contains(&"b3".to_string()) }
    })
    .await;
    assert!(
        first,
        "not both b2 and b3: {:?}\n{}",
        load.last_backends(20),
        tollgate.stderr()
    );

    // b3 dies and is found out by its health check (not only by the
    // failures of requests, which take it out for a while too).
    let b3 = format!("127.0.0.3:{port}");
    let healthy = [("backend", b3.as_str())];
    let passes = [("backend", b3.as_str()), ("result", "success")];
    let fails = [("backend", b3.as_str()), ("result", "failure")];
    let checks = "tollgate_health_checks_total";
    let failed_before = value(&tollgate, checks, &fails).await;
    backends[1].kill();
    assert!(
        grows(&tollgate, checks, &fails, failed_before).await,
        "no probe of b3 failed"
    );
    let down = wait_until(Duration::from_secs(10), || async {
        tollgate
            .metric("tollgate_upstream_backend_healthy", &healthy)
            .await
            == Some(0.0)
    })
    .await;
    assert!(down, "b3 was not found down");
    // b3 answers again, and the answer changes to b3 and b4 well before b3
    // has passed the HEALTHY probes that would bring it back.
    let passed_before = value(&tollgate, checks, &passes).await;
    backends[1].restart();
    dns.set_hosts(&hosts_for(&[3, 4]));
    let swapped = wait_until(Duration::from_secs(10), || async {
        load.last_backends(20).contains(&"b4".to_string())
    })
    .await;
    assert!(swapped, "b4 got no traffic\n{}", tollgate.stderr());
    // Right after the swap b3 answers (asked directly), and yet it is out
    // and gets no traffic: the state kept for it still wants its HEALTHY
    // passes. A forgotten state would be a fresh one, and a fresh backend
    // starts healthy (ActiveHealth::default, gauge 1); answering its
    // probes, it would stay up and take half the requests at once.
    let up = value(&tollgate, "tollgate_upstream_backend_healthy", &healthy).await;
    let passed = value(&tollgate, checks, &passes).await - passed_before;
    assert!(
        passed < f64::from(HEALTHY),
        "the swap came after b3 had passed {passed} probes: too late to tell"
    );
    assert_eq!(up, 0.0, "b3's health was forgotten");
    let direct = get(&reqwest::Client::new(), &format!("http://{b3}/")).await;
    assert_eq!(direct.unwrap().1, "b3", "b3 does not answer");
    let after = next_answers(&load, 20).await;
    assert!(
        after.iter().all(|b| b == "b4"),
        "b3's health was forgotten: {after:?}"
    );
    // After HEALTHY passes in a row, and not before, b3 is back.
    let back = wait_until(Duration::from_secs(15), || async {
        load.last_backends(20).contains(&"b3".to_string())
    })
    .await;
    assert!(back, "b3 did not come back\n{}", tollgate.stderr());
    let passed = value(&tollgate, checks, &passes).await - passed_before;
    assert!(
        passed >= f64::from(HEALTHY),
        "b3 back after {passed} passes"
    );
    let report = load.stop().await;
    report.assert_no_failure(40);
    assert!(
        tollgate.stderr().contains("app.test"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_failed_answer_keeps_the_last_good_set() {
    let dir = temp_dir("dns-empty");
    let (_backends, port) = backends_on_one_port(1);
    let mut dns = Dns::start(&dir, &hosts_for(&[2]), &[]);
    let tollgate =
        Tollgate::start(&discovered_upstream(&dns, &format!("app.test:{port}"), "")).await;
    let client = reqwest::Client::new();
    // dnsmasq may have come up after tollgate's first look: wait for b2.
    let found = answered_by(&tollgate, "b2").await;
    assert!(found, "{}", tollgate.stderr());
    // Requests go on all along; every one is answered by b2.
    let load = SteadyLoad::start(tollgate.url("/"), 2);
    // No address for the name any more; then no DNS server at all. Each
    // time a failure is counted after the change, not one counted before.
    let (failures, app) = FAILURES;
    let before = value(&tollgate, failures, &app).await;
    dns.set_hosts("");
    let counted = grows(&tollgate, failures, &app, before).await;
    assert!(counted, "{}", tollgate.stderr());
    assert!(next_answers(&load, 20).await.iter().all(|b| b == "b2"));
    let _ = dns.child.kill();
    let _ = dns.child.wait();
    let before = value(&tollgate, failures, &app).await;
    let counted = grows(&tollgate, failures, &app, before).await;
    assert!(counted, "{}", tollgate.stderr());
    assert!(next_answers(&load, 20).await.iter().all(|b| b == "b2"));
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().1, "b2");
    let report = load.stop().await;
    report.assert_no_failure(40);
    assert!(report.backends.iter().all(|b| b == "b2"));
    assert!(tollgate.stderr().contains("keeping the last 1 found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights() {
    let dir = temp_dir("dns-srv");
    let light = Backend::start("light");
    let heavy = Backend::start("heavy");
    let dns = Dns::start(
        &dir,
        "127.0.0.1 light.test\n127.0.0.1 heavy.test\n",
        &[
            &format!("_app._tcp.svc.test,light.test,{},0,1", light.addr.port()),
            &format!("_app._tcp.svc.test,heavy.test,{},0,3", heavy.addr.port()),
        ],
    );
    let tollgate = Tollgate::start(&discovered_upstream(&dns, "_app._tcp.svc.test", "")).await;
    let client = reqwest::Client::new();
    let both = wait_until(Duration::from_secs(10), || async {
        let m = tollgate.metrics().await;
        m.matches("tollgate_upstream_backend_healthy{").count() == 2
    })
    .await;
    assert!(both, "{}", tollgate.stderr());
    let mut counts = std::collections::HashMap::new();
    for _ in 0..80 {
        let (_, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        *counts.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(counts.get("light"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("heavy"), Some(&60), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_agrees_across_instances_that_see_the_same_set() {
    let dir = temp_dir("dns-hash");
    let (_backends, port) = backends_on_one_port(4);
    let dns = Dns::start(&dir, &hosts_for(&[2, 3, 4, 5]), &[]);
    let body = discovered_upstream(
        &dns,
        &format!("app.test:{port}"),
        "    algorithm: ip_hash\n",
    );
    let first = Tollgate::start(&body).await;
    let second = Tollgate::start(&body).await;
    for tollgate in [&first, &second] {
        let all = wait_until(Duration::from_secs(10), || async {
            let m = tollgate.metrics().await;
            m.matches("tollgate_upstream_backend_healthy{").count() == 4
        })
        .await;
        assert!(all, "{}", tollgate.stderr());
    }
    let mut seen = std::collections::HashSet::new();
    for client_ip in 10..40u8 {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, client_ip]))
            .build()
            .unwrap();
        let a = get(&client, &first.url("/")).await.unwrap().1;
        let b = get(&client, &second.url("/")).await.unwrap().1;
        assert_eq!(a, b, "client 127.0.0.{client_ip}");
        seen.insert(a);
    }
    assert!(seen.len() >= 3, "the clients spread over {seen:?}");
}

#[test]
fn discovery_settings_are_checked() {
    for (upstream, node) in [
        ("discovery: {dns: app.test}", "upstreams.app.discovery.dns"),
        (
            "backends: [{address: 127.0.0.1:9}]\n    discovery: {dns: 'app.test:80'}",
            "upstreams.app.discovery",
        ),
    ] {
        let check = check_topology(&format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    {upstream}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
        ));
        assert!(!check.ok, "{upstream}");
        assert!(check.output.contains(node), "{node}: {}", check.output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_discovered_upstream_serves_its_backends() {
    let dir = temp_dir("dns-reload");
    let (_backends, port) = backends_on_one_port(1);
    let listed = Backend::start("listed");
    let dns = Dns::start(&dir, &hosts_for(&[2]), &[]);
    let tollgate = Tollgate::start(&proxy_to(&[listed.addr])).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().1, "listed");
    reload(
        &tollgate,
        &discovered_upstream(&dns, &format!("app.test:{port}"), ""),
    )
    .await;
    // At once: the set is resolved before the reloaded topology is compiled.
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().1, "b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_target_that_does_not_resolve_leaves_the_others() {
    let dir = temp_dir("dns-srv-gone");
    let one = Backend::start("one");
    let two = Backend::start("two");
    let late = Backend::start("late");
    let record = |name: &str, backend: &Backend| {
        format!("_app._tcp.svc.test,{name},{},0,1", backend.addr.port())
    };
    // late.test has no address yet.
    let names = "127.0.0.1 one.test\n127.0.0.1 two.test\n";
    let (r1, r2, r3) = (
        record("one.test", &one),
        record("two.test", &two),
        record("late.test", &late),
    );
    let dns = Dns::start(&dir, names, &[&r1, &r2, &r3]);
    let tollgate = Tollgate::start(&discovered_upstream(&dns, "_app._tcp.svc.test", "")).await;
    // Were the answer failed by late.test, the upstream would have no backend
    // and every request would fail.
    let load = SteadyLoad::start(tollgate.url("/"), 2);
    assert!(
        settles_on(&load, &["one", "two"]).await,
        "{:?}\n{}",
        load.last_backends(20),
        tollgate.stderr()
    );
    let (failures, app) = FAILURES;
    let before = value(&tollgate, failures, &app).await;
    let answers = next_answers(&load, 40).await;
    for name in ["one", "two"] {
        assert!(answers.iter().any(|b| b == name), "{name}: {answers:?}");
    }
    // Once late.test resolves, it is served too; no failure was counted
    // for the answers without it.
    dns.set_hosts(&format!("{names}127.0.0.1 late.test\n"));
    let joined = wait_until(Duration::from_secs(10), || async {
        load.last_backends(20).contains(&"late".to_string())
    })
    .await;
    assert!(joined, "late was not found\n{}", tollgate.stderr());
    let after = value(&tollgate, failures, &app).await;
    assert_eq!(after, before, "{}", tollgate.stderr());
    load.stop().await.assert_no_failure(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_a_discovered_upstream_keeps_it_discovered() {
    let dir = temp_dir("dns-rename");
    let (_backends, port) = backends_on_one_port(2);
    let dns = Dns::start(&dir, &hosts_for(&[2]), &[]);
    let target = format!("app.test:{port}");
    let tollgate = Tollgate::start(&discovered("app", &dns, &target, "", "")).await;
    let client = reqwest::Client::new();
    let found = answered_by(&tollgate, "b2").await;
    assert!(found, "{}", tollgate.stderr());
    reload(&tollgate, &discovered("web", &dns, &target, "", "")).await;
    // At once, not after discovery's next round: the set was resolved for
    // the new name before the reloaded topology was compiled.
    let answer = get(&client, &tollgate.url("/")).await.unwrap();
    assert_eq!(
        (answer.0, answer.1.as_str()),
        (200, "b2"),
        "{}",
        tollgate.stderr()
    );
    let b2 = format!("127.0.0.2:{port}");
    let requests = [
        ("upstream", "web"),
        ("backend", b2.as_str()),
        ("code", "200"),
    ];
    let counted = grows(
        &tollgate,
        "tollgate_upstream_requests_total",
        &requests,
        0.0,
    )
    .await;
    assert!(
        counted,
        "not counted for web:\n{}",
        tollgate.metrics().await
    );
    // Discovery follows the upstream under its new name.
    dns.set_hosts(&hosts_for(&[3]));
    let moved = answered_by(&tollgate, "b3").await;
    assert!(moved, "{}", tollgate.stderr());
    let line = format!("upstream web: {target} now has 1 backends");
    assert!(tollgate.stderr().contains(&line), "{}", tollgate.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_while_the_answer_changes_keep_the_discovered_set() {
    let dir = temp_dir("dns-reload-during");
    let (_backends, port) = backends_on_one_port(2);
    // Upstream `app` follows app.test, whose address the test changes.
    // Upstream `slow`, resolved after it in each round of discovery, has an
    // SRV target forwarded to a server that never answers: every round waits
    // for it (seconds) between reading app.test and swapping the set in.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forward = format!("--server=/slow.test/{}", silent.local_addr().unwrap());
    let srv = |name: &str| format!("_slow._tcp.svc.test,{name},9,0,1");
    let (here, slow) = (srv("here.test"), srv("slow.test"));
    let args = [forward.replace(':', "#"), "--log-queries".to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hosts = |ip: u8| format!("127.0.0.{ip} app.test\n127.0.0.1 here.test\n");
    let dns = Dns::start_with(&dir, &hosts(2), &[&here, &slow], &args);
    // Each reload changes only a route that answers by itself.
    let body = |mark: usize| {
        let routes =
            format!("  - match: {{path: /mark}}\n    respond: {{status: 200, body: '{mark}'}}\n");
        let slow = format!(
            "  slow:\n    discovery: {{dns: _slow._tcp.svc.test, resolvers: ['{}']}}\n",
            dns.resolver()
        );
        let app = discovered("app", &dns, &format!("app.test:{port}"), "", &routes);
        app.replacen("upstreams:\n", &format!("upstreams:\n{slow}"), 1)
    };
    let tollgate = Tollgate::start(&body(0)).await;
    let client = reqwest::Client::new();
    let mark = || async { get(&client, &tollgate.url("/mark")).await.unwrap().2 };
    let load = SteadyLoad::start(tollgate.url("/"), 2);
    assert!(settles_on(&load, &["b2"]).await, "{}", tollgate.stderr());
    for (round, ip) in [3u8, 2].into_iter().enumerate() {
        let (want, reloaded) = (format!("b{ip}"), (2 * round + 1).to_string());
        // The answer changes; once discovery has read it, and while it waits
        // for slow.test, the config is reloaded. Discovery's swap comes after
        // the reload: it swaps in the new set, on the reloaded topology (not
        // on the one it started from, which would undo the reload).
        dns.set_hosts(&hosts(ip));
        let asked = dns.log().matches("query[A] app.test").count();
        let read = wait_until(Duration::from_secs(15), || async {
            dns.log().matches("query[A] app.test").count() > asked
        })
        .await;
        assert!(read, "app.test was not asked for again");
        reload(&tollgate, &body(2 * round + 1)).await;
        assert_eq!(mark().await, reloaded);
        assert!(
            settles_on(&load, &[&want]).await,
            "round {round}: {:?}\n{}",
            load.last_backends(20),
            tollgate.stderr()
        );
        assert_eq!(
            mark().await,
            reloaded,
            "round {round}: the reload was undone"
        );
        // A reload once the set follows the answer compiles that set, not
        // an older one: the answers right after it still come from it.
        reload(&tollgate, &body(2 * round + 2)).await;
        let after = next_answers(&load, 20).await;
        assert!(after.iter().all(|b| *b == want), "round {round}: {after:?}");
    }
    load.stop().await.assert_no_failure(100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_leaves_the_answer_leaves_the_metrics() {
    let dir = temp_dir("dns-series");
    let (_backends, port) = backends_on_one_port(2);
    let dns = Dns::start(&dir, &hosts_for(&[2, 3]), &[]);
    let target = format!("app.test:{port}");
    let tollgate = Tollgate::start(&discovered_upstream(&dns, &target, "")).await;
    let (b2, b3) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let upstream_requests = "tollgate_upstream_requests_total";
    assert!(answered_by(&tollgate, "b2").await && answered_by(&tollgate, "b3").await);
    let counted = wait_until(Duration::from_secs(5), || async {
        value(
            &tollgate,
            upstream_requests,
            &[("backend", &b3), ("code", "200")],
        )
        .await
            > 0.0
    })
    .await;
    assert!(counted, "b3's answers are not counted");
    let b2_before = value(
        &tollgate,
        upstream_requests,
        &[("backend", &b2), ("code", "200")],
    )
    .await;

    // b3 leaves the answer: once discovery swaps it out, its series go.
    dns.set_hosts(&hosts_for(&[2]));
    let b3_label = format!("backend=\"{b3}\"");
    let gone = wait_until(Duration::from_secs(10), || async {
        !tollgate.metrics().await.contains(&b3_label)
    })
    .await;
    assert!(gone, "b3's series stayed:\n{}", tollgate.metrics().await);
    let b2_after = value(
        &tollgate,
        upstream_requests,
        &[("backend", &b2), ("code", "200")],
    )
    .await;
    assert!(
        b2_after >= b2_before,
        "b2's count went back: {b2_before} then {b2_after}"
    );
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &[("backend", &b2)])
            .await,
        Some(1.0)
    );

    // Back in the answer, b3 counts from zero: one answer (the first
    // request it answers ends the wait), one in its count.
    dns.set_hosts(&hosts_for(&[2, 3]));
    assert!(answered_by(&tollgate, "b3").await, "b3 did not come back");
    assert!(
        tollgate
            .metric_reaches(upstream_requests, &[("backend", &b3), ("code", "200")], 1.0)
            .await,
        "b3 did not count from zero:\n{}",
        tollgate.metrics().await
    );
}
