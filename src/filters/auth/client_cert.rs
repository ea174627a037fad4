//! `client_cert`: admits the clients whose TLS client certificate, verified
//! in the handshake by the listener's `client_certificates`, has one of the
//! listed subjects. The subject (RFC 4514, as `X-Client-Cert-Subject` has it)
//! becomes the request's `auth_subject`.
//!
//! A request with no certificate (a listener with `required: false`, or one
//! that asks for none) gets 401; a certificate whose subject is not listed,
//! 403. There is no HTTP challenge for a certificate: the 401 carries no
//! `WWW-Authenticate`, the client has to connect again with one.

use super::{Identity, RejectReason, Rejection, Verdict};
use crate::edge::client_certs::{canonical_subject, ClientCert};
use bytes::Bytes;
use std::collections::HashSet;

pub struct ClientCertAuth {
    /// The listed subjects, as certificates give them (see `canonical_subject`).
    subjects: HashSet<String>,
}

impl ClientCertAuth {
    pub fn new(subjects: &[String]) -> ClientCertAuth {
        ClientCertAuth {
            subjects: subjects.iter().map(|s| canonical_subject(s)).collect(),
        }
    }

    /// Decides about a request whose connection verified `cert`.
    pub fn check(&self, cert: Option<&ClientCert>) -> Verdict {
        let Some(cert) = cert else {
            return Verdict::Reject(Rejection {
                status: http::StatusCode::UNAUTHORIZED,
                reason: RejectReason::MissingCredentials,
                headers: Vec::new(),
                body: Bytes::from_static(b"401 Unauthorized: a client certificate is needed\n"),
            });
        };
        if !self.subjects.contains(cert.subject()) {
            return Verdict::Reject(Rejection {
                status: http::StatusCode::FORBIDDEN,
                reason: RejectReason::UnlistedSubject,
                headers: Vec::new(),
                body: Bytes::from_static(
                    b"403 Forbidden: this client certificate is not admitted here\n",
                ),
            });
        }
        Verdict::Pass(Identity {
            headers: Vec::new(),
            subject: Some(cert.subject().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> ClientCert {
        let der = crate::edge::client_certs::partner_certificate(cn);
        ClientCert::from_der(&der).unwrap()
    }

    #[test]
    fn listed_subjects_only() {
        let auth = ClientCertAuth::new(&["CN=partner-a,O=Partner A".to_string()]);
        match auth.check(Some(&cert("partner-a"))) {
            Verdict::Pass(identity) => {
                assert_eq!(
                    identity.subject.as_deref(),
                    Some("CN=partner-a,O=Partner A")
                )
            }
            Verdict::Reject(r) => panic!("refused: {r:?}"),
        }
        assert!(matches!(
            auth.check(Some(&cert("partner-b"))),
            Verdict::Reject(r) if r.status == 403 && r.reason == RejectReason::UnlistedSubject
        ));
        assert!(matches!(
            auth.check(None),
            Verdict::Reject(r) if r.status == 401 && r.reason == RejectReason::MissingCredentials
        ));
    }
}
