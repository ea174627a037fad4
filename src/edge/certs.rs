//! The certificates every TLS listener serves, swapped while it runs: files
//! re-read on reload, ACME certificates as they are issued and renewed, and
//! the TLS-ALPN-01 challenge certificates of orders under way. A handshake
//! reads the current set; connections already open keep theirs.
//!
//! For a name a listener lists under `acme:` it is that name's ACME
//! certificate (or one of its files naming it exactly); while there is none
//! the handshake fails, so no other name's certificate is ever offered for
//! it. Other names go by the files (exact, wildcard, default), and with no
//! files to the first ACME name's certificate.

use super::tls::{CertTable, ServedCert};
use crate::metrics::metrics;
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What one TLS listener serves.
#[derive(Debug)]
struct ListenerCerts {
    files: ArcSwap<CertTable>,
    /// Its `acme:` names, lower case, in order.
    acme_names: Vec<String>,
}

/// Every listener's certificates; shared by the handshakes, the reloader and
/// the ACME service.
#[derive(Debug, Default)]
pub struct CertStore {
    /// By listener index; `None` for plain listeners.
    listeners: Vec<Option<ListenerCerts>>,
    /// ACME certificates by name.
    acme: ArcSwap<HashMap<String, Arc<ServedCert>>>,
    /// TLS-ALPN-01 answers by name, while their orders are under way.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Held while the expiry gauge is rewritten, so two rewrites never mix.
    publishing: Mutex<()>,
}

impl CertStore {
    /// A store for listeners with these tables and `acme:` names (`None`
    /// for plain listeners).
    pub fn new(listeners: Vec<Option<(CertTable, Vec<String>)>>) -> CertStore {
        let listeners = listeners
            .into_iter()
            .map(|l| {
                l.map(|(files, names)| ListenerCerts {
                    files: ArcSwap::from_pointee(files),
                    acme_names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                })
            })
            .collect();
        let store = CertStore {
            listeners,
            ..CertStore::default()
        };
        store.publish_expiry();
        store
    }

    /// The resolver of listener `index` (a TLS one).
    pub fn resolver(self: &Arc<Self>, index: usize) -> Arc<ListenerResolver> {
        Arc::new(ListenerResolver {
            store: Arc::clone(self),
            index,
        })
    }

    /// Every name under some listener's `acme:`, once each, in order.
    pub fn acme_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for listener in self.listeners.iter().flatten() {
            for name in &listener.acme_names {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// Replaces the file certificates of the listeners `tables` has (by
    /// index); new handshakes get them.
    pub fn replace_files(&self, tables: Vec<(usize, CertTable)>) {
        for (index, table) in tables {
            if let Some(Some(listener)) = self.listeners.get(index) {
                listener.files.store(Arc::new(table));
            }
        }
        self.publish_expiry();
    }

    /// Serves `cert` for `name` from now on.
    pub fn set_acme(&self, name: &str, cert: Arc<ServedCert>) {
        self.acme.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.to_string(), Arc::clone(&cert));
            next
        });
        self.publish_expiry();
    }

    /// The ACME certificate served for `name`, if there is one.
    pub fn acme_cert(&self, name: &str) -> Option<Arc<ServedCert>> {
        self.acme.load().get(name).cloned()
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with `key` (until cleared).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        if let Ok(mut challenges) = self.challenges.lock() {
            match key {
                Some(key) => challenges.insert(name.to_string(), key),
                None => challenges.remove(name),
            };
        }
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.lock().ok()?.get(name).cloned()
    }

    /// The certificate listener `index` offers for `name` (lower case).
    fn choose(&self, index: usize, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let listener = self.listeners.get(index)?.as_ref()?;
        let files = listener.files.load();
        let acme = self.acme.load();
        if let Some(name) = name.filter(|n| listener.acme_names.iter().any(|a| a == n)) {
            let served = acme.get(name).or_else(|| files.exact(name))?;
            return Some(Arc::clone(&served.key));
        }
        if let Some(served) = files.choose(name) {
            return Some(Arc::clone(&served.key));
        }
        let first = listener.acme_names.first()?;
        acme.get(first).map(|served| Arc::clone(&served.key))
    }

    /// Sets `tollgate_tls_certificate_expiry_timestamp_seconds` to what is
    /// served now, one series per DNS name and source.
    fn publish_expiry(&self) {
        let _one_at_a_time = self.publishing.lock();
        let gauge = &metrics().tls_certificate_expiry;
        gauge.reset();
        for listener in self.listeners.iter().flatten() {
            for served in listener.files.load().all() {
                for name in &served.names {
                    gauge
                        .with_label_values(&[name, "file"])
                        .set(served.not_after);
                }
            }
        }
        for (name, served) in self.acme.load().iter() {
            gauge
                .with_label_values(&[name, "acme"])
                .set(served.not_after);
        }
    }
}

/// The certificate chooser of one TLS listener.
#[derive(Debug)]
pub struct ListenerResolver {
    store: Arc<CertStore>,
    index: usize,
}

impl ResolvesServerCert for ListenerResolver {
    /// A TLS-ALPN-01 handshake (the client offers only `acme-tls/1`) gets
    /// the challenge certificate of its name; others see the listener's
    /// certificates. `None` fails the handshake.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        // RFC 8737: a validation offers `acme-tls/1` and nothing else.
        let challenge = hello.alpn().is_some_and(|offered| {
            let mut offered = offered;
            offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none()
        });
        if challenge {
            return self.store.challenge(name.as_deref()?);
        }
        self.store.choose(self.index, name.as_deref())
    }
}
