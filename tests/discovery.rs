//! Backends discovered by DNS, from a real dnsmasq on loopback whose hosts
//! file the tests rewrite (and SRV records they set): the set follows the
//! answer without a reload, keeps the state of the backends that stay, keeps
//! the last good set when the answer fails, and ip_hash agrees across
//! instances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// dnsmasq answering from `hosts` (re-read on SIGHUP) and `srv` records,
/// with a TTL of 1 s; killed when dropped.
struct Dns {
    child: Child,
    port: u16,
    hosts: PathBuf,
}

impl Dns {
    fn start(dir: &Path, hosts: &str, srv: &[&str]) -> Dns {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hosts_file = write_file(dir, "hosts", hosts);
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--local-ttl=1", "--user=root"])
            .arg("--pid-file")
            .arg(format!("--addn-hosts={}", hosts_file.display()));
        for record in srv {
            command.arg(format!("--srv-host={record}"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base) is needed");
        Dns {
            child,
            port,
            hosts: hosts_file,
        }
    }

    /// Rewrites the hosts file and has dnsmasq read it again.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        // SAFETY: kill(2) on the dnsmasq this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
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
    format!(
        "upstreams:\n  app:\n    discovery: {{dns: '{target}', interval: 1s, resolvers: ['{}']}}\n{extra}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        dns.resolver()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_set_follows_dns_without_a_reload() {
    let dir = temp_dir("dns");
    let (backends, port) = backends_on_one_port(3);
    let dns = Dns::start(&dir, &hosts_for(&[2, 3]), &[]);
    let extra =
        "    health_check: {tcp: {}, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 100}\n";
    let tollgate = Tollgate::start(&discovered_upstream(
        &dns,
        &format!("app.test:{port}"),
        extra,
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

    // b3 dies and is found out by its health check; then the answer changes
    // to b3 and b4. b3 stays, and stays down: its state was kept.
    let mut backends = backends;
    backends[1].kill();
    let b3 = format!("127.0.0.3:{port}");
    let down = wait_until(Duration::from_secs(10), || async {
        tollgate
            .metric("tollgate_upstream_backend_healthy", &[("backend", &b3)])
            .await
            == Some(0.0)
    })
    .await;
    assert!(down, "b3 was not found down");
    dns.set_hosts(&hosts_for(&[3, 4]));
    let moved = wait_until(Duration::from_secs(10), || {
        let last = load.last_backends(20);
        async move { last.len() == 20 && last.iter().all(|b| b == "b4") }
    })
    .await;
    assert!(
        moved,
        "traffic did not move to b4: {:?}\n{}",
        load.last_backends(20),
        tollgate.stderr()
    );
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &[("backend", &b3)])
            .await,
        Some(0.0),
        "b3's health was forgotten"
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
    let found = wait_until(Duration::from_secs(10), || async {
        get(&client, &tollgate.url("/"))
            .await
            .is_ok_and(|(_, b, _)| b == "b2")
    })
    .await;
    assert!(found, "{}", tollgate.stderr());
    // No address for the name any more.
    dns.set_hosts("");
    let counted = tollgate
        .metric_reaches(
            "tollgate_discovery_failures_total",
            &[("upstream", "app")],
            2.0,
        )
        .await;
    assert!(counted, "{}", tollgate.stderr());
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().1, "b2");
    // No DNS server at all.
    let _ = dns.child.kill();
    let _ = dns.child.wait();
    let counted = tollgate
        .metric_reaches(
            "tollgate_discovery_failures_total",
            &[("upstream", "app")],
            3.0,
        )
        .await;
    assert!(counted, "{}", tollgate.stderr());
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().1, "b2");
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
    let before = tollgate.config_text();
    let server_part = before.split("upstreams:").next().unwrap().to_string();
    tollgate.rewrite_config(&format!(
        "{server_part}{}",
        discovered_upstream(&dns, &format!("app.test:{port}"), "")
    ));
    tollgate.signal(libc::SIGHUP);
    let moved = wait_until(Duration::from_secs(10), || async {
        get(&client, &tollgate.url("/"))
            .await
            .is_ok_and(|(_, b, _)| b == "b2")
    })
    .await;
    assert!(moved, "{}", tollgate.stderr());
}
