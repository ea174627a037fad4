//! The monitoring set-up against the real thing: the Grafana dashboard's queries
//! and the alert rules in deploy/prometheus run on a real Prometheus (Debian's
//! package) that scrapes a running tollgate on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DASHBOARD: &str = include_str!("../grafana/dashboards/tollgate.json");
const ALERT_RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/tollgate-alerts.yml"
);

/// Every PromQL expression of the dashboard: panel targets (rows included) and
/// the variables' queries.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    fn panels(list: &serde_json::Value, queries: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push(expr.to_string());
                }
            }
            panels(&panel["panels"], queries);
        }
    }
    panels(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    queries
}

/// The metric names an expression uses: identifiers starting with `tollgate_`
/// or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (expr[i..].starts_with("tollgate_") || expr[i..].starts_with("process_"))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            names.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The series names in a text exposition (histograms as their _bucket, _sum and
/// _count series).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A tollgate whose /metrics has a sample of every metric it defines: traffic
/// through a backend that answers and one that refuses (retries, a backend
/// marked down), active checks that pass and fail, an auth rejection, a 429
/// and a failed reload.
async fn tollgate_with_every_metric(backend: &Backend) -> (Tollgate, DeadAddress) {
    let dead_address = DeadAddress::new();
    let dead = dead_address.addr.to_string();
    let dir = temp_dir("keys");
    let keys = write_file(&dir, "keys.txt", "key-one\n");
    let body = format!(
        "upstreams:
  app:
    backends:
      - address: {live}
      - address: {dead}
    retries: 1
  checked:
    backends:
      - address: {live}
      - address: {dead}
    health_check:
      tcp: {{}}
      interval: 100ms
auth:
  machines:
    api_keys:
      header: X-API-Key
      keys_file: {keys}
rate_limits:
  tight:
    key: client_ip
    rate: 1/m
    burst: 0
caches:
  pages:
    memory: 1MiB
    disk: {{path: {cache}, size: 1MiB}}
routes:
  - name: api
    match: {{path_prefix: /}}
    upstream: app
  - name: checked
    match: {{path_prefix: /checked/}}
    upstream: checked
    mirror: {{upstream: app}}
  - name: keyed
    match: {{path_prefix: /keys/}}
    upstream: app
    auth: machines
  - name: limited
    match: {{path_prefix: /limited/}}
    upstream: app
    rate_limit: tight
  - name: cached
    match: {{path_prefix: /cached/}}
    upstream: app
    cache: pages
",
        live = backend.addr,
        keys = keys.display(),
        cache = dir.join("cache").display()
    );
    // A second listener, TLS with http3, for the QUIC metrics.
    let (cert, key, _) = tls::self_signed_files(&dir, "edge", &["localhost"]);
    let config = format!(
        "server:\n  threads: 2\n  listeners:\n    - address: 127.0.0.1:0\n    - address: 127.0.0.1:0\n      http3: true\n      tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}\n  metrics: 127.0.0.1:0\n  access_log: off\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period: 1s\n  tracing: {{otlp: \"http://{dead}\"}}\n{body}",
        cert = cert.display(),
        key = key.display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    );
    let tollgate = Tollgate::launch_reported(temp_dir("tollgate"), &config, &[]).await;
    traffic(&tollgate, 10).await;
    let client = reqwest::Client::new();
    for path in [
        "/keys/x",
        "/limited/a",
        "/limited/b",
        "/checked/x",
        "/status/503",
        "/cached/x",
        "/cached/x",
    ] {
        get(&client, &tollgate.url(path)).await.expect("request");
    }
    let good = tollgate.config_text();
    tollgate.rewrite_config("upstreams: [not, a, map]\n");
    tollgate.signal(libc::SIGHUP);
    assert!(
        tollgate
            .metric_reaches("tollgate_config_reloads_total", &[("result", "error")], 1.0)
            .await
    );
    tollgate.rewrite_config(&good);
    let failures = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric("tollgate_health_checks_total", &[("result", "failure")])
            .await
            .is_some()
            && tollgate
                .metric("tollgate_upstream_retries_total", &[("upstream", "app")])
                .await
                .is_some()
    })
    .await;
    assert!(
        failures,
        "no failed check or retry:\n{}",
        tollgate.metrics().await
    );
    (tollgate, dead_address)
}

/// `n` answered requests on the default route.
async fn traffic(tollgate: &Tollgate, n: usize) {
    let client = reqwest::Client::new();
    for _ in 0..n {
        let (status, _, _) = get(&client, &tollgate.url("/")).await.expect("request");
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_metrics_name_the_same_things() {
    let backend = Backend::start("app");
    let (tollgate, _dead) = tollgate_with_every_metric(&backend).await;
    let exported = exported_names(&tollgate.metrics().await);
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "too few queries: {queries:?}");

    let mut used = BTreeSet::new();
    for query in &queries {
        for name in metric_names(query) {
            assert!(
                exported.contains(&name),
                "the dashboard query `{query}` uses `{name}`, which tollgate does not export; it exports {exported:?}"
            );
            used.insert(name.trim_end_matches("_bucket").to_string());
        }
    }
    // And every tollgate metric has a place on the dashboard.
    for name in exported.iter().filter(|n| n.starts_with("tollgate_")) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, suffix| n.trim_end_matches(suffix));
        assert!(used.contains(family), "no dashboard panel shows {family}");
    }
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// The address of Prometheus's `msg="Listening on" address=HOST:PORT` log line.
fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("msg=\"Listening on\""))
        .find_map(|l| {
            l.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

impl Prometheus {
    /// Starts Debian's prometheus scraping `target` every second, with the alert
    /// rules of deploy/prometheus loaded.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {ALERT_RULES}\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = write_file(&dir, "prometheus.yml", &config);
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`; `make test` installs it)");
        let mut prometheus = Prometheus {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            dir,
        };
        // It picks its port and logs it: `msg="Listening on" address=127.0.0.1:PORT`.
        let listening = wait_until(Duration::from_secs(30), || {
            let log = prometheus.log();
            async move { listening_address(&log).is_some() }
        })
        .await;
        assert!(listening, "prometheus did not start:\n{}", prometheus.log());
        prometheus.addr = listening_address(&prometheus.log()).unwrap();
        let addr = prometheus.addr;
        let ready = wait_until(Duration::from_secs(30), || async {
            reqwest::get(format!("http://{addr}/-/ready"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "prometheus did not start:\n{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let response = reqwest::Client::new()
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .query(query)
            .send()
            .await
            .expect("prometheus API");
        response.json().await.expect("prometheus API JSON")
    }

    /// The result of an instant query; panics when Prometheus refuses it.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let answer = self.api("query", &[("query", expr)]).await;
        assert_eq!(answer["status"], "success", "`{expr}` failed: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that yields one sample.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The rules of every group in an answer of Prometheus's `/api/v1/rules`.
fn rules_in(answer: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    answer["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
}

/// A dashboard query as Grafana sends it with "All" chosen for every variable.
fn as_grafana_sends(query: &str) -> String {
    query
        .replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$upstream", ".*")
        .replace("$job", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_tollgate_and_answers_every_dashboard_query() {
    let backend = Backend::start("app");
    let (tollgate, _dead) = tollgate_with_every_metric(&backend).await;
    let prometheus = Prometheus::start(tollgate.metrics_addr).await;

    let up = wait_until(Duration::from_secs(20), || async {
        let targets = prometheus.api("targets", &[]).await;
        targets["data"]["activeTargets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["health"] == "up"))
    })
    .await;
    assert!(
        up,
        "the tollgate target never came up: {}",
        prometheus.api("targets", &[]).await
    );

    // tollgate_requests_total rises in Prometheus as traffic goes through.
    let total = "sum(tollgate_requests_total)";
    let seen = wait_until(Duration::from_secs(10), || async {
        prometheus.scalar(total).await.is_some()
    })
    .await;
    assert!(seen, "no tollgate_requests_total in prometheus");
    let before = prometheus.scalar(total).await.unwrap_or_default();
    traffic(&tollgate, 20).await;
    let rose = wait_until(Duration::from_secs(10), || async {
        prometheus.scalar(total).await.unwrap_or_default() >= before + 20.0
    })
    .await;
    assert!(rose, "tollgate_requests_total stayed at {before}");

    // Every panel's query is valid PromQL and, with this traffic, has data
    // (rate() needs two scrapes in its window, so wait for them).
    let panels: Vec<String> = dashboard_queries()
        .into_iter()
        .filter(|q| !q.starts_with("label_values("))
        .collect();
    for query in &panels {
        let expr = as_grafana_sends(query);
        let has_data = wait_until(Duration::from_secs(15), || async {
            !prometheus.query(&expr).await.is_empty()
        })
        .await;
        assert!(has_data, "the dashboard query `{expr}` returns nothing");
    }

    // The alert rules load and evaluate without error.
    let rules = prometheus.api("rules", &[]).await;
    let rule_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/tollgate-alerts.yml"
    );
    let written = std::fs::read_to_string(rule_file)
        .unwrap()
        .matches("- alert:")
        .count();
    assert_eq!(rules_in(&rules).count(), written, "rules: {rules}");
    let evaluated = wait_until(Duration::from_secs(10), || async {
        let rules = prometheus.api("rules", &[]).await;
        let all_ok = rules_in(&rules).all(|r| r["health"] == "ok");
        all_ok
    })
    .await;
    assert!(
        evaluated,
        "a rule does not evaluate: {}",
        prometheus.api("rules", &[]).await
    );
    // The dead backend of the checked upstream is down: its alert is pending.
    let backend_down = wait_until(Duration::from_secs(10), || async {
        let alerts = prometheus.api("alerts", &[]).await;
        alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == "TollgateBackendDown")
    })
    .await;
    assert!(
        backend_down,
        "no TollgateBackendDown for the dead backend: {}",
        prometheus.api("alerts", &[]).await
    );
}

#[test]
fn metric_names_are_read_from_queries() {
    let names = metric_names(
        "histogram_quantile(0.9, sum by (le) (rate(tollgate_request_duration_seconds_bucket{x=\"tollgate_no\"}[1m]))) / process_open_fds",
    );
    let expected: BTreeSet<String> = [
        "tollgate_request_duration_seconds_bucket",
        "tollgate_no",
        "process_open_fds",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // A label value that looks like a name counts too: better a false alarm than a miss.
    assert_eq!(names, expected);
}
