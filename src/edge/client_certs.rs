//! Client certificates (mTLS) on TLS listeners: the verifier a listener's
//! `client_certificates` makes of its CA file, and the identity a verified
//! certificate gives the requests of its connection.
//!
//! The handshake verifies the certificate (chain to `ca`, validity dates,
//! client-auth usage); [`IdentifyClients`] then reads its subject and
//! fingerprint once per connection and hangs them on the connection's TLS
//! digest, where every request of the connection finds them
//! ([`ClientCert::of_digest`]). Backends get them as [`X_CLIENT_CERT_SUBJECT`]
//! and [`X_CLIENT_CERT_SHA256`], which are removed from every client request.

use super::distinguished_name::rfc4514;
use crate::config::{ClientCertificatesConfig, Problem};
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::tls::{ClientCertVerifier, RootCertStore, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use std::any::Any;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use super::distinguished_name::{canonical_subject, check_subject};

/// The subject of the client's certificate, RFC 4514 (see `distinguished_name`).
pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
/// The SHA-256 of the client's certificate (DER), 64 lower-case hex digits.
pub const X_CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-client-cert-sha256");
/// The headers tollgate sets from a client certificate, and so strips from
/// every client request.
pub const IDENTITY_HEADERS: [HeaderName; 2] = [X_CLIENT_CERT_SUBJECT, X_CLIENT_CERT_SHA256];
static SUBJECT_HEADER: HeaderName = X_CLIENT_CERT_SUBJECT;
static SHA256_HEADER: HeaderName = X_CLIENT_CERT_SHA256;

/// The verifier of a listener's `client_certificates` at node `at`
/// (`server.listeners[1].tls.client_certificates`): certificates must chain
/// to the CAs of its `ca` file; without `required`, a client may send none.
pub fn verifier(
    config: &ClientCertificatesConfig,
    at: &str,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    pingora::tls::install_default_crypto_provider();
    let at_ca = format!("{at}.ca");
    let roots = roots_of(&config.ca).map_err(|e| Problem::at(&at_ca, e))?;
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = if config.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| {
        Problem::at(
            at_ca,
            format!("{} cannot verify clients: {e}", config.ca.display()),
        )
    })
}

/// The CAs of PEM file `path`, each checked to be usable as a trust anchor.
fn roots_of(path: &std::path::Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in super::tls::read_ca_file(path)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{} holds a certificate that cannot be a CA: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// What a connection's verified client certificate tells backends.
#[derive(Debug)]
pub struct ClientCert {
    /// RFC 4514, as in [`X_CLIENT_CERT_SUBJECT`].
    subject: String,
    subject_header: HeaderValue,
    sha256_header: HeaderValue,
}

impl ClientCert {
    /// The identity of the certificate `der` (the client's leaf, verified);
    /// `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        let (_, parsed) = X509Certificate::from_der(der).ok()?;
        let subject = rfc4514(parsed.subject());
        let sha256: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(ClientCert {
            subject_header: HeaderValue::from_str(&subject).ok()?,
            sha256_header: HeaderValue::from_str(&sha256).ok()?,
            subject,
        })
    }

    /// The subject, RFC 4514: the `auth_subject` of `client_cert` policies.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The headers backends get: [`X_CLIENT_CERT_SUBJECT`] and
    /// [`X_CLIENT_CERT_SHA256`].
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        [
            (X_CLIENT_CERT_SUBJECT, self.subject_header.clone()),
            (X_CLIENT_CERT_SHA256, self.sha256_header.clone()),
        ]
    }

    /// [`ClientCert::headers`], borrowed (for the auth service's request).
    pub fn header_refs(&self) -> [(&'static HeaderName, &HeaderValue); 2] {
        [
            (&SUBJECT_HEADER, &self.subject_header),
            (&SHA256_HEADER, &self.sha256_header),
        ]
    }

    /// The client certificate of the connection whose TLS digest is
    /// `digest`, when it sent one.
    pub fn of_digest(digest: &SslDigest) -> Option<&ClientCert> {
        digest.extension.get::<ClientCert>()
    }
}

/// Hangs the identity of a handshake's client certificate on its
/// connection's TLS digest (nothing when the client sent none).
pub struct IdentifyClients;

#[async_trait]
impl TlsAccept for IdentifyClients {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let cert = ClientCert::from_der(der);
        if cert.is_none() {
            log::debug!("a verified client certificate does not parse; no identity is passed on");
        }
        Some(Arc::new(cert?))
    }
}

/// A self-signed certificate for `O=Partner A, CN=<cn>` (DER), for tests.
#[cfg(test)]
pub(crate) fn partner_certificate(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Partner A");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).unwrap().der().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_a_certificate() {
        let der = partner_certificate("partner-a");
        let identity = ClientCert::from_der(&der).unwrap();
        assert_eq!(identity.subject(), "CN=partner-a,O=Partner A");
        let [(subject_name, subject), (sha_name, sha)] = identity.headers();
        assert_eq!(subject_name, X_CLIENT_CERT_SUBJECT);
        assert_eq!(subject, "CN=partner-a,O=Partner A");
        assert_eq!(sha_name, X_CLIENT_CERT_SHA256);
        let expected: String = Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, expected.as_str());
        assert!(ClientCert::from_der(b"not a certificate").is_none());
    }
}
