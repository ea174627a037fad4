//! API keys from a keys file, taken from a named header or `Authorization: Bearer`,
//! compared in constant time against every key.

use super::{bearer_token, Identity, RejectReason, Rejection, Verdict};
use http::header::HeaderName;
use pingora::http::RequestHeader;
use std::path::Path;
use subtle::ConstantTimeEq;

pub struct ApiKeys {
    header: HeaderName,
    /// (subject, key)
    keys: Vec<(String, Vec<u8>)>,
}

impl ApiKeys {
    /// Reads the keys file: one key per line, `#` comments, blank lines ignored;
    /// `name: key` gives the key a name used as the request's subject (else
    /// `key-N`, N its line number).
    pub fn load(header: HeaderName, keys_file: &Path) -> Result<ApiKeys, String> {
        let text = std::fs::read_to_string(keys_file)
            .map_err(|e| format!("cannot read keys file {}: {e}", keys_file.display()))?;
        let keys = parse_keys(&text);
        if keys.is_empty() {
            return Err(format!("keys file {} has no key", keys_file.display()));
        }
        Ok(ApiKeys { header, keys })
    }

    pub fn check(&self, req: &RequestHeader) -> Verdict {
        let presented = req
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .or_else(|| bearer_token(req).map(str::as_bytes));
        let Some(presented) = presented else {
            return Verdict::Reject(Rejection::unauthorized(
                RejectReason::MissingCredentials,
                "401 Unauthorized: an API key is needed\n",
            ));
        };
        // Every key is compared, whatever matched, so timing does not tell which.
        let mut found: Option<&str> = None;
        for (subject, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(subject);
            }
        }
        match found {
            Some(subject) => Verdict::Pass(Identity {
                headers: Vec::new(),
                subject: Some(subject.to_string()),
            }),
            None => Verdict::Reject(Rejection::unauthorized(
                RejectReason::InvalidKey,
                "401 Unauthorized: unknown API key\n",
            )),
        }
    }
}

fn parse_keys(text: &str) -> Vec<(String, Vec<u8>)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            Some(match line.split_once(": ") {
                Some((name, key)) => (name.trim().to_string(), key.trim().as_bytes().to_vec()),
                None => (format!("key-{}", i + 1), line.as_bytes().to_vec()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_format() {
        let keys = parse_keys("# machines\nk1\n\nbilling: k2  \n");
        assert_eq!(
            keys,
            vec![
                ("key-2".to_string(), b"k1".to_vec()),
                ("billing".to_string(), b"k2".to_vec())
            ]
        );
    }

    #[test]
    fn header_or_bearer() {
        let keys = ApiKeys {
            header: HeaderName::from_static("x-api-key"),
            keys: parse_keys("billing: k2\n"),
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(
            matches!(keys.check(&req), Verdict::Reject(r) if r.reason == RejectReason::MissingCredentials)
        );
        req.insert_header("X-API-Key", "k2").unwrap();
        assert!(
            matches!(keys.check(&req), Verdict::Pass(id) if id.subject.as_deref() == Some("billing"))
        );
        req.insert_header("X-API-Key", "k3").unwrap();
        assert!(
            matches!(keys.check(&req), Verdict::Reject(r) if r.reason == RejectReason::InvalidKey)
        );
        let mut bearer = RequestHeader::build("GET", b"/", None).unwrap();
        bearer.insert_header("Authorization", "Bearer k2").unwrap();
        assert!(matches!(keys.check(&bearer), Verdict::Pass(_)));
    }
}
