//! Values of the topology file that are parsed into their own types when the file
//! is read, so that nothing after loading parses or checks them again: host
//! patterns, route paths, rate-limit and hash keys, JWT algorithms and header names.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// Which hosts a route answers, normalized to lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// No `host` in the match: every host.
    #[default]
    Any,
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, kept as its suffix `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let host = text.trim().to_ascii_lowercase();
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid_name {
            return Err(format!(
                "invalid host `{host}`: expected a name such as `api.example.com` or `*.example.com` (no port, `*` only as the first label)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        HostPattern::parse(&String::deserialize(de)?).map_err(D::Error::custom)
    }
}

/// A route's `path` or `path_prefix`, written as the matched paths it is compared
/// with (see `filters::request_path::check_pattern`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutePath(String);

impl RoutePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        crate::filters::request_path::check_pattern(&text)
            .map_err(|why| D::Error::custom(format!("invalid path `{text}`: {why}")))?;
        Ok(RoutePath(text))
    }
}

/// Which paths a route answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (after `trusted_proxies`).
    ClientIp,
    /// The value of a request header; requests without it share one bucket.
    Header(http::HeaderName),
    /// The identity the route's auth policy found.
    AuthSubject,
    /// One bucket for all requests.
    Global,
}

impl RateKey {
    pub fn parse(text: &str) -> Result<RateKey, String> {
        match text {
            "client_ip" => Ok(RateKey::ClientIp),
            "auth_subject" => Ok(RateKey::AuthSubject),
            "global" => Ok(RateKey::Global),
            _ => match text.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(RateKey::Header)
                    .map_err(|_| format!("invalid header name `{name}` in rate limit key")),
                None => Err(format!(
                    "invalid rate limit key `{text}`: expected client_ip, header:NAME, auth_subject or global"
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        RateKey::parse(&String::deserialize(de)?).map_err(D::Error::custom)
    }
}

/// What `algorithm: hash` hashes onto the upstream's consistent ring
/// (`hash_key`). `ip_hash` is `hash` with [`HashKey::ClientIp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address (after `trusted_proxies`), as `ip_hash` hashes it.
    ClientIp,
    /// The first non-empty value of a request header.
    Header(http::HeaderName),
    /// The first non-empty value of a cookie of the `Cookie` header;
    /// cookie names are case-sensitive.
    Cookie(Box<str>),
    /// The normalized path the request was routed on (before `strip_prefix`).
    Path,
    /// That path and the query as the client sent it (`/a?b=1`).
    Uri,
}

impl HashKey {
    const EXPECTED: &'static str = "expected client_ip, header:NAME, cookie:NAME, path or uri";

    pub fn parse(text: &str) -> Result<HashKey, String> {
        match text {
            "client_ip" => return Ok(HashKey::ClientIp),
            "path" => return Ok(HashKey::Path),
            "uri" => return Ok(HashKey::Uri),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("header:") {
            if name.is_empty() {
                return Err("`header:` needs a header name, e.g. `header:X-User`".into());
            }
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name `{name}` in hash_key"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            if name.is_empty() {
                return Err("`cookie:` needs a cookie name, e.g. `cookie:session`".into());
            }
            // RFC 6265 4.1.1: a cookie name is an RFC 9110 token.
            if !name.bytes().all(is_token_byte) {
                return Err(format!(
                    "invalid cookie name `{name}` in hash_key: a name is letters, digits \
                     and !#$%&'*+-.^_`|~"
                ));
            }
            return Ok(HashKey::Cookie(name.into()));
        }
        Err(format!("invalid hash_key `{text}`: {}", Self::EXPECTED))
    }
}

impl fmt::Display for HashKey {
    /// As it is written in the file (a header name in lower case).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Path => f.write_str("path"),
            HashKey::Uri => f.write_str("uri"),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    /// Parses the key inside the scalar's visitor, so that serde_yaml reports
    /// a bad key at its own line and column rather than at its mapping's.
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = HashKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hash key: client_ip, header:NAME, cookie:NAME, path or uri")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HashKey, E> {
                HashKey::parse(text).map_err(E::custom)
            }
        }
        de.deserialize_str(Key)
    }
}

/// An RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The two kinds of JWT algorithm, which take different keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtFamily {
    /// HS*: a shared secret.
    Hmac,
    /// RS*, PS*, ES*: public keys from a JWK Set.
    PublicKey,
}

/// A JWT algorithm tollgate accepts; `none` and the rest are refused at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtAlgorithm(jsonwebtoken::Algorithm);

impl JwtAlgorithm {
    const SUPPORTED: &'static str =
        "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384";

    pub fn parse(text: &str) -> Result<JwtAlgorithm, String> {
        use jsonwebtoken::Algorithm::*;
        let alg = match text {
            "HS256" => HS256,
            "HS384" => HS384,
            "HS512" => HS512,
            "RS256" => RS256,
            "RS384" => RS384,
            "RS512" => RS512,
            "PS256" => PS256,
            "PS384" => PS384,
            "PS512" => PS512,
            "ES256" => ES256,
            "ES384" => ES384,
            other => {
                return Err(format!(
                    "unsupported algorithm `{other}`: expected one of {}",
                    Self::SUPPORTED
                ))
            }
        };
        Ok(JwtAlgorithm(alg))
    }

    pub fn algorithm(self) -> jsonwebtoken::Algorithm {
        self.0
    }

    pub fn family(self) -> JwtFamily {
        use jsonwebtoken::Algorithm::*;
        match self.0 {
            HS256 | HS384 | HS512 => JwtFamily::Hmac,
            _ => JwtFamily::PublicKey,
        }
    }
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        JwtAlgorithm::parse(&String::deserialize(de)?).map_err(D::Error::custom)
    }
}

/// A header name as written in the file (`X-Auth-User`), checked at load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderName {
    name: http::HeaderName,
    /// As written, for messages.
    written: String,
}

impl HeaderName {
    pub fn parse(text: &str) -> Result<HeaderName, String> {
        http::HeaderName::from_bytes(text.as_bytes())
            .map(|name| HeaderName {
                name,
                written: text.to_string(),
            })
            .map_err(|_| format!("invalid header name `{text}`"))
    }

    /// A name known to be valid, as it is to be written.
    pub fn known(name: http::HeaderName, written: &str) -> HeaderName {
        HeaderName {
            name,
            written: written.to_string(),
        }
    }

    pub fn name(&self) -> &http::HeaderName {
        &self.name
    }

    pub fn written(&self) -> &str {
        &self.written
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        HeaderName::parse(&String::deserialize(de)?).map_err(D::Error::custom)
    }
}

/// A percentage, written `50%` (or a bare number, `50`), from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(f64);

impl Percent {
    /// The percentage as a share, 0 to 1.
    pub fn share(self) -> f64 {
        self.0 / 100.0
    }

    /// A percentage from a share (0 to 1).
    pub fn from_share(share: f64) -> Percent {
        Percent(share * 100.0)
    }

    pub fn parse(text: &str) -> Result<Percent, String> {
        let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("invalid percentage `{text}`: expected e.g. `20%`"))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(format!("{text} is not a percentage from 0% to 100%"));
        }
        Ok(Percent(value))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Percent, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(de)? {
            Written::Number(n) => Percent::parse(&n.to_string()),
            Written::Text(text) => Percent::parse(&text),
        }
        .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("API.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        for bad in ["", "a b", "example.com:80", "a.*.com", ".example.com", "*."] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_keys() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(HashKey::parse("uri"), Ok(HashKey::Uri));
        let header = HashKey::parse("header:X-User").unwrap();
        assert_eq!(
            header,
            HashKey::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(header.to_string(), "header:x-user");
        let cookie = HashKey::parse("cookie:Session_ID").unwrap();
        assert_eq!(cookie, HashKey::Cookie("Session_ID".into()));
        assert_eq!(cookie.to_string(), "cookie:Session_ID");
        for (bad, says) in [
            ("ip", "invalid hash_key `ip`: expected client_ip"),
            ("Path", "invalid hash_key"),
            ("header", "invalid hash_key"),
            ("header:", "needs a header name"),
            ("header:X User", "invalid header name `X User`"),
            ("cookie:", "needs a cookie name"),
            ("cookie:a=b", "invalid cookie name `a=b`"),
            ("cookie:a;b", "invalid cookie name"),
            ("query", "invalid hash_key"),
        ] {
            let err = HashKey::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn rate_keys_and_algorithms() {
        assert_eq!(
            RateKey::parse("header:X-Client"),
            Ok(RateKey::Header(http::HeaderName::from_static("x-client")))
        );
        assert!(RateKey::parse("header:bad name").is_err());
        assert!(RateKey::parse("cookie").is_err());
        assert_eq!(
            JwtAlgorithm::parse("ES256").map(JwtAlgorithm::family),
            Ok(JwtFamily::PublicKey)
        );
        assert_eq!(
            JwtAlgorithm::parse("HS512").map(JwtAlgorithm::family),
            Ok(JwtFamily::Hmac)
        );
        for refused in ["none", "EdDSA", "hs256"] {
            assert!(
                JwtAlgorithm::parse(refused)
                    .unwrap_err()
                    .contains("unsupported"),
                "{refused}"
            );
        }
    }
}
