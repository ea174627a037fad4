//! Automatic certificates (RFC 8555) for the names under TLS listeners'
//! `acme:`, from `server.acme.directory`, on the `instant-acme` client.
//!
//! Each name has a certificate of its own and a task that keeps it: a
//! certificate kept under `storage` that is still valid is served at start
//! without a new order; a name without one is ordered at once; a
//! certificate is renewed once a third of its lifetime is left, and the new
//! one is served to new handshakes as soon as it is issued. A failed order
//! (the ACME server unreachable or refusing, a name it cannot validate) is
//! logged with the server's problem document and tried again after
//! `server.acme.retry`, doubling on each failure up to an hour; the other
//! names, and every other certificate, are served meanwhile.

pub mod challenge;
mod order;
mod storage;

use crate::config::AcmeConfig;
use crate::edge::certs::CertStore;
use crate::edge::tls::{load_pair, served_from_pem, ServedCert};
use crate::metrics::metrics;
use async_trait::async_trait;
use challenge::Http01Answers;
use instant_acme::{Account, AccountCredentials, NewAccount};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::Storage;

/// The longest wait between failed orders.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest one order may take, the account's opening and every answer of
/// the ACME server included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a task sleeps before it looks at its certificate again.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// Checks at load that `storage` can be made and written.
pub fn check_storage(config: &AcmeConfig) -> Result<(), String> {
    Storage::new(&config.storage, config.directory.as_str()).prepare()
}

/// Serves, for each of `names`, the certificate kept under `storage` when it
/// is still valid. A file that cannot be read is logged and ordered anew.
pub fn load_kept(config: &AcmeConfig, names: &[String], certs: &CertStore) {
    let storage = Storage::new(&config.storage, config.directory.as_str());
    for name in names {
        let file = storage.cert_file(name);
        if !file.exists() {
            continue;
        }
        match load_pair(&file, &file, "server.acme.storage") {
            Ok(served) => {
                log::info!(
                    "serving the kept certificate of {name} (expires at {})",
                    served.not_after
                );
                certs.set_acme(name, Arc::new(served));
            }
            Err(problem) => log::warn!(
                "not using the kept certificate of {name}: {}; ordering a new one",
                problem.message
            ),
        }
    }
}

/// The background service that keeps every ACME name certified.
pub struct AcmeService {
    config: AcmeConfig,
    storage: Storage,
    certs: Arc<CertStore>,
    http01: Arc<Http01Answers>,
    /// The account, once created or loaded.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl AcmeService {
    pub fn new(config: &AcmeConfig, certs: Arc<CertStore>, http01: Arc<Http01Answers>) -> Self {
        AcmeService {
            storage: Storage::new(&config.storage, config.directory.as_str()),
            config: config.clone(),
            certs,
            http01,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps `name` certified, until the process ends.
    async fn keep_certified(&self, name: &str) {
        let mut failures = 0u32;
        loop {
            let due = self
                .certs
                .acme_cert(name)
                .map_or(Duration::ZERO, |c| until_renewal(&c));
            if !due.is_zero() {
                tokio::time::sleep(due.min(LONGEST_SLEEP)).await;
                continue;
            }
            // The whole of it, account included: an ACME server that
            // accepts and never answers must not hold the name forever.
            let obtained = tokio::time::timeout(ORDER_TIMEOUT, self.obtain(name))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer from the ACME server in {}s",
                        ORDER_TIMEOUT.as_secs()
                    ))
                });
            match obtained {
                Ok(served) => {
                    failures = 0;
                    metrics().acme_orders.with_label_values(&["issued"]).inc();
                    log::info!(
                        "obtained a certificate for {name} (expires at {})",
                        served.not_after
                    );
                    self.certs.set_acme(name, Arc::new(served));
                }
                Err(e) => {
                    failures += 1;
                    metrics().acme_orders.with_label_values(&["failed"]).inc();
                    let wait = retry_wait(self.config.retry, failures);
                    log::error!(
                        "ACME order for {name} failed (attempt {failures}), trying again in {}s: {e}",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Orders a certificate for `name`, and keeps it under `storage`.
    async fn obtain(&self, name: &str) -> Result<ServedCert, String> {
        let account = {
            let mut kept = self.account.lock().await;
            if kept.is_none() {
                *kept = Some(self.open_account().await?);
            }
            kept.clone().ok_or("no ACME account")?
        };
        let (chain_pem, key_pem) = order::run(
            &account,
            name,
            self.config.challenge,
            &self.certs,
            &self.http01,
        )
        .await?;
        let served = served_from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|(_, e)| format!("the issued certificate {e}"))?;
        // Served from memory even when it cannot be kept: the next restart
        // orders again, but nothing is ordered twice meanwhile.
        let file = self.storage.cert_file(name);
        let pem = format!("{key_pem}\n{chain_pem}");
        if let Err(e) = storage::write_private(&file, pem.as_bytes()) {
            log::error!(
                "cannot keep the certificate of {name} in {}: {e}; serving it from memory",
                file.display()
            );
        }
        Ok(served)
    }

    /// The account kept under `storage`, or a new one registered with the
    /// ACME server (and then kept).
    async fn open_account(&self) -> Result<Account, String> {
        let builder = match &self.config.ca_roots {
            Some(roots) => Account::builder_with_root(roots),
            None => Account::builder(),
        }
        .map_err(|e| format!("cannot make the ACME client: {e}"))?;
        let path = self.storage.account();
        let kept = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Never a new account over one that could not be read.
            Err(e) => {
                return Err(format!(
                    "cannot read the ACME account {}: {e}",
                    path.display()
                ))
            }
        };
        if let Some(text) = kept {
            let credentials: AccountCredentials = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not an ACME account: {e}", path.display()))?;
            return builder
                .from_credentials(credentials)
                .await
                .map_err(|e| format!("cannot use the ACME account of {}: {e}", path.display()));
        }
        let contact = format!("mailto:{}", self.config.email);
        let new_account = NewAccount {
            contact: &[&contact],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder
            .create(&new_account, self.config.directory.to_string(), None)
            .await
            .map_err(|e| format!("cannot register with {}: {e}", self.config.directory))?;
        let text = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
        storage::write_private(&path, &text)
            .map_err(|e| format!("cannot keep the ACME account in {}: {e}", path.display()))?;
        log::info!("registered an ACME account with {}", self.config.directory);
        Ok(account)
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let names = self.certs.acme_names();
        let tasks = futures::future::join_all(names.iter().map(|n| self.keep_certified(n)));
        tokio::select! {
            _ = tasks => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How long until `cert` is due for renewal: when a third of its lifetime
/// is left. Zero when it is due.
fn until_renewal(cert: &ServedCert) -> Duration {
    let lifetime = (cert.not_after - cert.not_before).max(0);
    let renew_at = cert.not_before + lifetime * 2 / 3;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Duration::from_secs(u64::try_from(renew_at - now).unwrap_or(0))
}

/// The wait after the `failures`-th failure in a row: `first`, doubled each
/// time, at most an hour.
fn retry_wait(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_an_hour() {
        let first = Duration::from_secs(10);
        assert_eq!(retry_wait(first, 1), first);
        assert_eq!(retry_wait(first, 3), Duration::from_secs(40));
        assert_eq!(retry_wait(first, 40), MAX_RETRY);
    }
}
