//! Certificates from files: the ones listeners serve, loaded and checked at
//! start and on reload (so a bad one is an error naming its file, not a
//! failed handshake later) and tabled by the names they answer for, and the
//! CA files client and backend certificates are verified against.
//! `edge::certs` chooses among served ones per handshake; `edge::tls_accept`
//! terminates TLS.

use crate::config::Problem;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::CryptoProvider;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate as it is served: the key rustls signs with, the DNS names
/// it answers for and when it expires.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// Unix time of its `notBefore` and `notAfter`.
    pub not_before: i64,
    pub not_after: i64,
}

/// The certificates of one listener's `certificates:` list, by SNI name: an
/// exact name, then a wildcard (`*.example.com` covers one label), then the
/// default (the first listed); empty when the list is.
#[derive(Debug, Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<ServedCert>>,
    /// Keyed by the suffix after `*`: `.example.com`.
    wildcard: HashMap<String, Arc<ServedCert>>,
    default: Option<Arc<ServedCert>>,
    /// Every certificate, in the order listed.
    all: Vec<Arc<ServedCert>>,
}

impl CertTable {
    /// Loads every (cert, key) pair of the `certificates` at node `at`
    /// (`server.listeners[1].tls.certificates`); the first is the default. A
    /// problem names the file's node (`...certificates[0].key`).
    pub fn load(pairs: &[(&Path, &Path)], at: &str) -> Result<CertTable, Problem> {
        pingora::tls::install_default_crypto_provider();
        let mut table = CertTable::default();
        for (i, (cert, key)) in pairs.iter().enumerate() {
            let loaded = Arc::new(load_pair(cert, key, &format!("{at}[{i}]"))?);
            for name in &loaded.names {
                let target = match name.strip_prefix('*') {
                    Some(suffix) => table.wildcard.entry(suffix.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                target.or_insert_with(|| Arc::clone(&loaded));
            }
            table.default.get_or_insert_with(|| Arc::clone(&loaded));
            table.all.push(loaded);
        }
        Ok(table)
    }

    /// The certificate listed for exactly `name` (lower case).
    pub fn exact(&self, name: &str) -> Option<&Arc<ServedCert>> {
        self.exact.get(name)
    }

    /// The certificate for `name` (lower case; `None`: the client sent none):
    /// exact, wildcard, then the default.
    pub fn choose(&self, name: Option<&str>) -> Option<&Arc<ServedCert>> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        self.exact
            .get(name)
            .or_else(|| {
                name.find('.')
                    .and_then(|dot| self.wildcard.get(&name[dot..]))
            })
            .or(self.default.as_ref())
    }

    /// Every certificate of the table.
    pub fn all(&self) -> &[Arc<ServedCert>] {
        &self.all
    }
}

/// Reads and checks one pair: both files readable PEM, the key matching the
/// certificate, the certificate valid now. Returns it with its DNS names.
/// `cert` and `key` may be one file holding both.
pub(crate) fn load_pair(cert: &Path, key: &Path, at: &str) -> Result<ServedCert, Problem> {
    let cert_text = cert.to_string_lossy();
    let key_text = key.to_string_lossy();
    let cert_problem = |message: String| Problem::at(format!("{at}.cert"), message);
    let key_problem = |message: String| Problem::at(format!("{at}.key"), message);
    let chain_pem =
        std::fs::read(cert).map_err(|e| cert_problem(format!("cannot read {cert_text}: {e}")))?;
    let key_pem =
        std::fs::read(key).map_err(|e| key_problem(format!("cannot read {key_text}: {e}")))?;
    served_from_pem(&chain_pem, &key_pem).map_err(|(in_key, message)| {
        if in_key {
            key_problem(format!("{key_text} {message}"))
        } else {
            cert_problem(format!("{cert_text} {message}"))
        }
    })
}

/// A certificate chain (leaf first) and its key, from PEM, checked as
/// [`load_pair`] does. The error says whether the key is at fault, and what.
pub(crate) fn served_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServedCert, (bool, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (false, format!("is not PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err((false, "holds no PEM certificate".to_string()));
    };
    let private_key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| (true, format!("holds no PEM private key: {e}")))?;
    let provider = CryptoProvider::get_default()
        .ok_or((true, "cannot be used: no TLS crypto provider".to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| (true, format!("is not a usable private key: {e}")))?;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| (false, format!("is not a valid X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        let not_after = validity.not_after;
        let not_before = validity.not_before;
        return Err((
            false,
            format!("is not valid now (valid from {not_before} to {not_after})"),
        ));
    }
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let names = dns_names(&parsed);
    if names.is_empty() {
        return Err((
            false,
            "names no DNS host (subjectAltName or CN)".to_string(),
        ));
    }
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    certified
        .keys_match()
        .map_err(|_| (true, "does not match the certificate".to_string()))?;
    Ok(ServedCert {
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// The certificates of CA file `path` (PEM, one or more), each a valid
/// X.509 certificate; the error says what is wrong with the file, naming it.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{shown} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    for cert in &certs {
        X509Certificate::from_der(cert.as_ref())
            .map_err(|e| format!("{shown} holds an invalid X.509 certificate: {e}"))?;
    }
    Ok(certs)
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
