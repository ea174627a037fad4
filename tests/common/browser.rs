//! Headless Chromium driven over the DevTools protocol (a WebSocket from the
//! test): [`Chromium`] starts one of the test's own, [`Cdp`] speaks to it, and
//! [`Cdp::open_page`] gives a fresh page to navigate and evaluate scripts in.
//!
//! Chromium is the Debian package `chromium` (`make deps` installs it);
//! without it a browser test fails saying so.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The Chromium on PATH; the test fails when there is none.
pub fn chromium_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is needed for the browser tests and none is on PATH: \
         `make deps` (which `make test` runs) installs the Debian package `chromium`"
    );
}

/// A headless Chromium of this test's own (own profile, own process group),
/// killed with its children when dropped.
pub struct Chromium {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The browser's DevTools WebSocket address.
    pub devtools: String,
}

impl Chromium {
    /// Starts Chromium with its profile in `profile` and a window of
    /// `width` x `height`, and waits for its DevTools address.
    pub fn launch(profile: &Path, (width, height): (u64, u64)) -> Chromium {
        let mut command = Command::new(chromium_path());
        command
            .args([
                "--headless=new",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-features=Translate,MediaRouter,OptimizationHints",
                "--metrics-recording-only",
                "--mute-audio",
                "--hide-scrollbars",
                "--password-store=basic",
                "--use-mock-keychain",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.display()));
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium's sandbox refuses to run as root.
            command.arg("--no-sandbox");
        }
        command
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: the browser's helpers go with it.
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium_path().display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("chromium's stderr");
        let log = stderr.clone();
        // Read stderr to its end (a full pipe would stall the browser), handing
        // on the DevTools address when it is printed.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut browser = Chromium {
            child,
            stderr,
            devtools: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => browser.devtools = url,
            Err(_) => panic!(
                "chromium printed no DevTools address within 30 s:\n{}",
                browser.stderr()
            ),
        }
        browser
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test started Chromium in.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One DevTools connection to the browser, with one page attached (flat session).
pub struct Cdp {
    ws: Socket,
    next_id: u64,
    /// The attached page's session, which calls go to once set.
    pub session: Option<String>,
    /// Every event received so far.
    pub events: Vec<Value>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
        Cdp {
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    /// Sends `method` (to the attached page, once there is one) and waits for its
    /// answer, keeping the events that come meanwhile.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        let answer = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let frame = self
                    .ws
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                    .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if value["id"] == json!(id) {
                    return value;
                }
                if value.get("method").is_some() {
                    self.events.push(value);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools {method}: no answer within 20 s"));
        if let Some(error) = answer.get("error") {
            panic!("DevTools {method}: {error}");
        }
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// The console errors, uncaught exceptions and error log entries seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|event| {
                let params = &event["params"];
                match event["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(format!(
                        "exception: {}",
                        params["exceptionDetails"]["exception"]["description"]
                            .as_str()
                            .unwrap_or_else(|| {
                                params["exceptionDetails"]["text"].as_str().unwrap_or("?")
                            })
                    )),
                    "Runtime.consoleAPICalled"
                        if matches!(params["type"].as_str(), Some("error" | "assert")) =>
                    {
                        Some(format!(
                            "console.{}: {}",
                            params["type"].as_str().unwrap_or("?"),
                            params["args"]
                        ))
                    }
                    "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
                        "log ({}): {} {}",
                        params["entry"]["source"].as_str().unwrap_or("?"),
                        params["entry"]["text"].as_str().unwrap_or("?"),
                        params["entry"]["url"].as_str().unwrap_or("")
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// Opens a new page (about:blank), attaches to it (calls go to it from
    /// now on), turns on its page, runtime and log events, and sets its
    /// viewport to `width` x `height`.
    pub async fn open_page(&mut self, (width, height): (u64, u64)) {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session")
                .to_string(),
        );
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(method, json!({})).await;
        }
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    }

    /// Navigates the page to `url` and waits until its document has loaded.
    pub async fn navigate(&mut self, url: &str) {
        let navigated = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            navigated.get("errorText").is_none(),
            "opening {url}: {navigated}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.eval("location.href + ' ' + document.readyState").await;
            if state.as_str() == Some(&format!("{url} complete")) {
                return;
            }
            assert!(Instant::now() < deadline, "{url} did not load: {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an error seen by [`Cdp::errors`] contains `text`, for up
    /// to `timeout`; whether one did.
    pub async fn wait_for_error(&mut self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.errors().iter().any(|e| e.contains(text)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // A round trip, which collects the events sent meanwhile.
            self.eval("1").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
