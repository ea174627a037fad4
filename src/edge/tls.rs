//! TLS termination: certificates loaded and checked at start (so a bad one is a
//! `-t` error naming its file, not a failed handshake later), chosen per
//! connection by SNI. TLS 1.2 and 1.3 only (pingora's rustls settings).

use crate::config::Problem;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate with the names it answers for.
struct LoadedCert {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Chooses a certificate by the SNI name: an exact name, then a wildcard
/// (`*.example.com` covers one label), then the default (the first listed).
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*`: `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Loads every (cert, key) pair of the `certificates` at node `at`
    /// (`server.listeners[1].tls.certificates`); the first is the default. A
    /// problem names the file's node (`...certificates[0].key`).
    pub fn load(pairs: &[(&Path, &Path)], at: &str) -> Result<SniResolver, Problem> {
        pingora::tls::install_default_crypto_provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (i, (cert, key)) in pairs.iter().enumerate() {
            let loaded = load_pair(cert, key, &format!("{at}[{i}]"))?;
            for name in &loaded.names {
                let target = match name.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name.clone()),
                };
                target.or_insert_with(|| Arc::clone(&loaded.key));
            }
            default.get_or_insert(loaded.key);
        }
        let default = default.ok_or_else(|| Problem::at(at, "no certificate listed"))?;
        Ok(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(key) = self.exact.get(&name) {
            return Arc::clone(key);
        }
        if let Some(key) = name
            .find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
        {
            return Arc::clone(key);
        }
        Arc::clone(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()))
    }
}

/// Reads and checks one pair: both files readable PEM, the key matching the
/// certificate, the certificate valid now. Returns it with its DNS names.
fn load_pair(cert: &Path, key: &Path, at: &str) -> Result<LoadedCert, Problem> {
    let cert_text = cert.to_string_lossy();
    let key_text = key.to_string_lossy();
    let cert_problem = |message: String| Problem::at(format!("{at}.cert"), message);
    let key_problem = |message: String| Problem::at(format!("{at}.key"), message);
    std::fs::metadata(cert).map_err(|e| cert_problem(format!("cannot read {cert_text}: {e}")))?;
    std::fs::metadata(key).map_err(|e| key_problem(format!("cannot read {key_text}: {e}")))?;
    let (chain, private_key) = match pingora::tls::load_certs_and_key_files(&cert_text, &key_text) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(cert_problem(format!(
                "{cert_text} or {key_text} holds no PEM certificate or key"
            )))
        }
        Err(e) => {
            return Err(cert_problem(format!(
                "cannot load {cert_text} / {key_text}: {e}"
            )))
        }
    };
    let Some(leaf) = chain.first() else {
        return Err(cert_problem(format!("{cert_text} holds no certificate")));
    };
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| key_problem("no TLS crypto provider".to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| key_problem(format!("{key_text} is not a usable private key: {e}")))?;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| cert_problem(format!("{cert_text} is not a valid X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        let not_after = validity.not_after;
        let not_before = validity.not_before;
        return Err(cert_problem(format!(
            "{cert_text} is not valid now (valid from {not_before} to {not_after})"
        )));
    }
    let names = dns_names(&parsed);
    if names.is_empty() {
        return Err(cert_problem(format!(
            "{cert_text} names no DNS host (subjectAltName or CN)"
        )));
    }
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    certified.keys_match().map_err(|_| {
        key_problem(format!(
            "{key_text} does not match the certificate in {cert_text}"
        ))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate: its subjectAltName DNS entries, or its CN.
fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// pingora TLS settings that use `resolver`, offering h2 when `http2`.
pub(crate) fn listener_settings(
    resolver: Arc<SniResolver>,
    http2: bool,
) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))?;
    settings.set_cert_resolver(resolver);
    if http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

/// Handshake callbacks that do nothing (pingora's constructor for resolver-based
/// settings takes callbacks).
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
