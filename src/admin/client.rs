//! `tollgate status`, `drain` and `undrain`: the admin API of the running
//! tollgate (`server.admin` of the topology file, with its token), from the
//! terminal.

use serde_json::Value;
use std::time::Duration;

/// How long the command waits for the admin API.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The admin API as the topology file `server` names it.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The two settings the commands need, read from the topology file alone:
/// no name is resolved and no certificate read, so the commands work when
/// the rest of the file would not load (a backend name that no longer
/// resolves, a key only the service may read).
#[derive(serde::Deserialize)]
struct FileSettings {
    server: AdminSettings,
}

#[derive(serde::Deserialize)]
struct AdminSettings {
    #[serde(
        default,
        deserialize_with = "crate::config::units::opt_loopback_default_addr"
    )]
    admin: Option<std::net::SocketAddr>,
    admin_token_file: Option<std::path::PathBuf>,
}

impl AdminClient {
    /// The admin API that the topology file at `path` names.
    pub fn from_file(path: &std::path::Path) -> Result<AdminClient, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let settings: FileSettings =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::new(
            settings.server.admin,
            settings.server.admin_token_file.as_deref(),
        )
    }

    fn new(
        admin: Option<std::net::SocketAddr>,
        token_file: Option<&std::path::Path>,
    ) -> Result<AdminClient, String> {
        let mut address =
            admin.ok_or("the topology file has no server.admin: the admin API is off")?;
        if address.port() == 0 {
            return Err(format!(
                "server.admin is {address}: write the port the running tollgate listens on \
                 (it logs `listening on ADDR (server.admin)`)"
            ));
        }
        if address.ip().is_unspecified() {
            address.set_ip(match address {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let token = token_file.map(super::auth::read_token).transpose()?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(AdminClient {
            base: format!("http://{address}"),
            token,
            http,
        })
    }

    /// `method path`; the JSON answer, or the API's error.
    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{status}: {}",
                value["error"].as_str().unwrap_or("error")
            ))
        }
    }

    /// The status table: one line per backend.
    pub async fn status(&self) -> Result<String, String> {
        let status = self.call(reqwest::Method::GET, "/api/status").await?;
        Ok(status_table(&status))
    }

    /// Drains (or undrains) `address` in every upstream that has it, or in
    /// `upstream` only; what was done, a line per upstream.
    pub async fn drain(
        &self,
        address: &str,
        upstream: Option<&str>,
        drain: bool,
    ) -> Result<String, String> {
        let upstreams = self.call(reqwest::Method::GET, "/api/upstreams").await?;
        let names: Vec<String> = upstreams
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, u)| {
                upstream.is_none_or(|wanted| wanted == name.as_str())
                    && u["backends"].as_array().is_some_and(|b| {
                        b.iter()
                            .any(|b| b["address"] == address || b["label"] == address)
                    })
            })
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            return Err(format!("no upstream has a backend {address}"));
        }
        let action = if drain { "drain" } else { "undrain" };
        let mut lines = Vec::new();
        for name in names {
            let path = format!("/api/upstreams/{name}/backends/{address}/{action}");
            let answer = self.call(reqwest::Method::POST, &path).await?;
            lines.push(format!(
                "{name} {address}: {} ({} in flight)",
                answer["state"].as_str().unwrap_or("?"),
                answer["in_flight"]
            ));
        }
        lines.push("(until the next reload or restart)".to_string());
        Ok(lines.join("\n"))
    }
}

/// `/api/status` as a table.
fn status_table(status: &Value) -> String {
    let mut out = format!(
        "tollgate {}  {}\n",
        status["version"].as_str().unwrap_or("?"),
        status["source"].as_str().unwrap_or("")
    );
    out += &format!(
        "{:<20} {:<28} {:<10} {:>6} {:>9} {:>9} {:>8} {:>10}\n",
        "UPSTREAM", "BACKEND", "STATE", "WEIGHT", "IN FLIGHT", "REQ/S", "ERR/S", "LATENCY"
    );
    for (name, upstream) in status["upstreams"].as_object().into_iter().flatten() {
        for b in upstream["backends"].as_array().into_iter().flatten() {
            let latency = b["latency_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
            out += &format!(
                "{:<20} {:<28} {:<10} {:>6} {:>9} {:>9.1} {:>8.1} {:>10}\n",
                name,
                b["label"].as_str().unwrap_or(""),
                b["state"].as_str().unwrap_or(""),
                b["weight"],
                b["in_flight"],
                b["requests_per_second"].as_f64().unwrap_or(0.0),
                b["errors_per_second"].as_f64().unwrap_or(0.0),
                latency
            );
        }
    }
    out
}
