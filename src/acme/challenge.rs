//! The answers an ACME server checks: HTTP-01 key authorizations served at
//! `/.well-known/acme-challenge/TOKEN` on plain listeners, and TLS-ALPN-01
//! certificates (RFC 8737) offered to `acme-tls/1` handshakes.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The path prefix of HTTP-01 requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTP-01 answers of the orders under way, by token.
#[derive(Debug, Default)]
pub struct Http01Answers {
    by_token: Mutex<HashMap<String, String>>,
}

impl Http01Answers {
    /// The key authorization to answer a request for `path` with, when it is
    /// a challenge path of an order under way.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.by_token.lock().ok()?.get(token).cloned()
    }

    pub(crate) fn set(&self, token: &str, key_authorization: Option<String>) {
        if let Ok(mut answers) = self.by_token.lock() {
            match key_authorization {
                Some(answer) => answers.insert(token.to_string(), answer),
                None => answers.remove(token),
            };
        }
    }
}

/// The self-signed TLS-ALPN-01 certificate for `name`: its only name is
/// `name`, and its critical acmeIdentifier extension holds `digest`, the
/// SHA-256 of the key authorization.
pub(crate) fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let private =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("challenge key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("challenge key: {e}"))?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}
