//! Origins as CORS compares them: `scheme://host[:port]` of an http or https
//! page (RFC 6454, the Fetch standard's serialized origin). The scheme and host
//! compare case-insensitively and a port the scheme's default is the same as
//! none, so `https://App.Example.com:443` is `https://app.example.com`.

use std::fmt;

/// The scheme of an origin tollgate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(text: &[u8]) -> Option<Scheme> {
        if text.eq_ignore_ascii_case(b"https") {
            Some(Scheme::Https)
        } else if text.eq_ignore_ascii_case(b"http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An allowed origin, normalized: lower-case host (an IPv6 address in
/// brackets, an international name in its ASCII form), the port always known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

const EXPECTED: &str = "expected scheme://host[:port] with scheme http or https, such as \
                        `https://app.example.com` or `http://127.0.0.1:3000`";

impl Origin {
    /// Parses an origin as written in the topology file: `http` or `https`,
    /// `://`, a host, an optional port; nothing else (no path, not even `/`, no
    /// query, no user). `null` is refused: any sandboxed page sends it.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let invalid = |why: &str| format!("invalid CORS origin `{text}`: {why}; {EXPECTED}");
        if text == "null" {
            return Err(invalid(
                "`null` is what sandboxed frames, local files and redirected requests send, \
                 which any page can arrange, so it cannot be allowed",
            ));
        }
        let Some((scheme, authority)) = text.split_once("://") else {
            return Err(invalid("no `://`"));
        };
        let Some(scheme) = Scheme::parse(scheme.as_bytes()) else {
            return Err(invalid("the scheme is not http or https"));
        };
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if let Some(extra) = authority.find(['/', '?', '#']) {
            let what = if &authority[extra..] == "/" {
                "an origin has no path, not even `/`"
            } else {
                "an origin has no path, query or fragment"
            };
            return Err(invalid(what));
        }
        if authority.contains('@') {
            return Err(invalid("an origin has no user or password"));
        }
        let url = reqwest::Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(invalid("no host"));
        };
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `value`, a request's `Origin`, names this origin. Browsers send
    /// origins serialized (lower case, no default port); others are compared
    /// as this type's doc says. Allocates nothing.
    pub fn matches(&self, value: &[u8]) -> bool {
        let Some(parts) = OriginParts::of(value) else {
            return false;
        };
        parts.scheme == self.scheme
            && parts.port.unwrap_or(self.scheme.default_port()) == self.port
            && parts.host.eq_ignore_ascii_case(self.host.as_bytes())
    }
}

impl fmt::Display for Origin {
    /// The serialized origin: the port only when not the scheme's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// A request's `Origin` split into its parts, borrowed from the header.
struct OriginParts<'a> {
    scheme: Scheme,
    host: &'a [u8],
    port: Option<u16>,
}

impl<'a> OriginParts<'a> {
    /// The parts of `value`; `None` for `null`, another scheme, or anything
    /// that is not `scheme://host[:port]`.
    fn of(value: &'a [u8]) -> Option<OriginParts<'a>> {
        let split = value.windows(3).position(|w| w == b"://")?;
        let scheme = Scheme::parse(&value[..split])?;
        let authority = &value[split + 3..];
        if authority
            .iter()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@'))
        {
            return None;
        }
        // The port's colon is the last one after any IPv6 literal's `]`.
        let after_literal = authority
            .iter()
            .rposition(|&b| b == b']')
            .map_or(0, |at| at + 1);
        let (host, port) = match authority[after_literal..].iter().rposition(|&b| b == b':') {
            Some(colon) => {
                let colon = after_literal + colon;
                let digits = &authority[colon + 1..];
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let port = std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?;
                (&authority[..colon], Some(port))
            }
            None => (authority, None),
        };
        if host.is_empty() {
            return None;
        }
        Some(OriginParts { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_from_the_file_are_normalized() {
        let origin = Origin::parse("HTTPS://App.Example.COM:443").unwrap();
        assert_eq!(origin.to_string(), "https://app.example.com");
        assert_eq!(
            Origin::parse("http://127.0.0.1:3000").unwrap().to_string(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
        assert_eq!(
            Origin::parse("https://bücher.example").unwrap().to_string(),
            "https://xn--bcher-kva.example"
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused_saying_why() {
        for (bad, says) in [
            ("app.example.com", "no `://`"),
            ("ftp://app.example.com", "not http or https"),
            ("https://app.example.com/", "not even `/`"),
            ("https://app.example.com/api", "no path"),
            ("https://app.example.com?x=1", "no path"),
            ("https://user@app.example.com", "no user"),
            ("https://", "no host"),
            ("https://app.example.com:99999", "invalid port"),
            ("https://exa mple.com", "invalid"),
            ("null", "sandboxed"),
        ] {
            let error = Origin::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains("scheme://host[:port]"), "{bad}: {error}");
        }
    }

    #[test]
    fn request_origins_compare_by_scheme_host_and_port() {
        let app = Origin::parse("https://app.example.com").unwrap();
        for same in [
            "https://app.example.com",
            "https://APP.example.com",
            "HTTPS://app.example.com:443",
        ] {
            assert!(app.matches(same.as_bytes()), "{same}");
        }
        for other in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.test",
            "https://evilapp.example.com",
            "https://app.example.com/",
            "https://app.example.com:",
            "https://app.example.com:+443",
            "null",
            "",
            "app.example.com",
        ] {
            assert!(!app.matches(other.as_bytes()), "{other}");
        }
        let local = Origin::parse("http://127.0.0.1:3000").unwrap();
        assert!(local.matches(b"http://127.0.0.1:3000"));
        assert!(!local.matches(b"http://127.0.0.1:3001"));
        assert!(!local.matches(b"http://127.0.0.1"));
        let v6 = Origin::parse("http://[::1]").unwrap();
        assert!(v6.matches(b"http://[::1]"));
        assert!(v6.matches(b"http://[::1]:80"));
        assert!(!v6.matches(b"http://[::1]:81"));
    }
}
