//! RFC 9111 decisions of a shared cache: which requests may be answered from
//! it, which answers may be stored, for how long they are fresh, and for how
//! long past that they may still be served (RFC 5861).

use crate::config::{CacheConfig, HEURISTICALLY_CACHEABLE};
use http::header::{AGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Why an answer was not stored, beyond the origin saying so (`OriginNotCache`).
const STATUS_NOT_STORED: NoCacheReason = NoCacheReason::Custom("status not stored");
const PERSONAL: NoCacheReason = NoCacheReason::Custom("personal request");
const VARY_ANY: NoCacheReason = NoCacheReason::Custom("Vary: *");
const VARY_CLIENT: NoCacheReason = NoCacheReason::Custom("Vary on the client address");
const SETS_COOKIE: NoCacheReason = NoCacheReason::Custom("Set-Cookie");
const STALE_ON_ARRIVAL: NoCacheReason = NoCacheReason::Custom("stale without validator");

/// Headers tollgate writes with the client's address: an answer that varies on
/// one is the client's own.
const CLIENT_ADDRESS_HEADERS: [&str; 3] = ["x-forwarded-for", "x-real-ip", "forwarded"];

/// The freshness rules of one cache.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// Freshness by status when the origin gives none (only statuses the RFC
    /// lets a cache store heuristically; validation refuses the others).
    default_ttl: Vec<(StatusCode, Duration)>,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

/// Whether `request` may be answered from a cache and its answer stored:
/// GET and HEAD (a HEAD is answered from a stored GET).
pub(crate) fn request_cacheable(request: &RequestHeader) -> bool {
    matches!(request.method, Method::GET | Method::HEAD)
}

impl Policy {
    pub(crate) fn new(config: &CacheConfig) -> Policy {
        Policy {
            default_ttl: config.default_ttl.clone(),
            stale_while_revalidate: config.stale_while_revalidate,
            stale_if_error: config.stale_if_error,
        }
    }

    /// Whether `response`, the origin's answer at `now` to a GET, may be stored,
    /// and if so its metadata. `personal` is a request that carried
    /// `Authorization` or an identity tollgate's auth established: its answer is
    /// only stored when the origin marks it shareable (`public`, `s-maxage`,
    /// `must-revalidate`; RFC 9111 section 3.5).
    ///
    /// Never stored: `no-store`, `private`, `Vary: *` or on a header carrying
    /// the client's address, an answer that sets a cookie, 206/304/1xx, an
    /// answer without freshness (explicit or `default_ttl`), and one already
    /// stale that cannot be revalidated. The
    /// fields listed by `private="..."` and `no-cache="..."` are removed from
    /// what is stored, as is `Age` (the stored age is kept in the metadata).
    pub(crate) fn decide(
        &self,
        response: &ResponseHeader,
        personal: bool,
        now: SystemTime,
    ) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let status = response.status;
        if status.is_informational()
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Uncacheable(STATUS_NOT_STORED);
        }
        let control = CacheControl::from_resp_headers(response);
        let control = control.as_ref();
        if control.is_some_and(|cc| cc.no_store() || cc.private()) {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        if personal && !control.is_some_and(shareable_when_personal) {
            return Uncacheable(PERSONAL);
        }
        if vary_names(response).any(|name| name == "*") {
            return Uncacheable(VARY_ANY);
        }
        if vary_names(response).any(|name| {
            CLIENT_ADDRESS_HEADERS
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        }) {
            return Uncacheable(VARY_CLIENT);
        }
        let mut stored = response.clone();
        if let Some(cc) = control {
            cc.strip_private_headers(&mut stored);
        }
        if stored.headers.contains_key(SET_COOKIE) {
            return Uncacheable(SETS_COOKIE);
        }
        let Some(lifetime) = self.freshness_lifetime(control, response, now) else {
            return Uncacheable(NoCacheReason::OriginNotCache);
        };
        let age = age_value(response);
        let validated =
            response.headers.contains_key(ETAG) || response.headers.contains_key(LAST_MODIFIED);
        if lifetime <= age && !validated {
            return Uncacheable(STALE_ON_ARRIVAL);
        }
        stored.remove_header(&AGE);
        let (stale_while_revalidate, stale_if_error) = self.stale_windows(control);
        let epoch = now.checked_sub(age).unwrap_or(now);
        let fresh_until = match lifetime.checked_sub(age) {
            Some(left) if !left.is_zero() => now + left,
            // Already stale: when it went stale (its stale windows run from
            // there), and before `now`, so the first use revalidates.
            _ => {
                let expired = epoch + lifetime;
                let before_now = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
                expired.min(before_now)
            }
        };
        let mut meta = CacheMeta::new(
            fresh_until,
            now,
            stale_while_revalidate,
            stale_if_error,
            stored,
        );
        if !age.is_zero() {
            meta.set_epoch_override(epoch);
        }
        RespCacheable::Cacheable(meta)
    }

    /// RFC 9111 section 4.2.1: `s-maxage`, else `max-age`, else `Expires` minus
    /// `Date`, else (section 4.2.2) this cache's `default_ttl` for the status.
    /// `no-cache` stores the answer stale, to be revalidated on every use; an
    /// unreadable `max-age` or `Expires` counts as already expired.
    fn freshness_lifetime(
        &self,
        control: Option<&CacheControl>,
        response: &ResponseHeader,
        now: SystemTime,
    ) -> Option<Duration> {
        if let Some(cc) = control {
            if cc.no_cache() {
                return Some(Duration::ZERO);
            }
            let explicit = match cc.s_maxage() {
                Ok(Some(seconds)) => Ok(Some(seconds)),
                Ok(None) => cc.max_age(),
                Err(e) => Err(e),
            };
            match explicit {
                Ok(Some(seconds)) => return Some(Duration::from_secs(seconds.into())),
                Err(_) => return Some(Duration::ZERO),
                Ok(None) => {}
            }
        }
        if response.headers.contains_key(EXPIRES) {
            return Some(expires_lifetime(response, now));
        }
        let status = response.status;
        if !HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) {
            return None;
        }
        self.default_ttl
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, ttl)| *ttl)
    }

    /// Seconds past freshness the answer may be served while it is refreshed,
    /// and when the origin fails: none after `no-cache`, `must-revalidate`,
    /// `proxy-revalidate` or `s-maxage` (RFC 9111 sections 4.2.4, 5.2.2); else
    /// the origin's directives (RFC 5861), else this cache's settings.
    fn stale_windows(&self, control: Option<&CacheControl>) -> (u32, u32) {
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let Some(cc) = control else {
            return (
                seconds(self.stale_while_revalidate),
                seconds(self.stale_if_error),
            );
        };
        let forbidden = cc.no_cache()
            || cc.must_revalidate()
            || cc.proxy_revalidate()
            || cc.has_key("s-maxage");
        if forbidden {
            return (0, 0);
        }
        let while_revalidate = cc
            .serve_stale_while_revalidate_duration()
            .unwrap_or(self.stale_while_revalidate);
        let if_error = cc
            .serve_stale_if_error_duration()
            .unwrap_or(self.stale_if_error);
        (seconds(while_revalidate), seconds(if_error))
    }
}

/// `public`, `s-maxage` or `must-revalidate`: what lets a shared cache store the
/// answer to a request with credentials.
fn shareable_when_personal(control: &CacheControl) -> bool {
    control.public() || control.must_revalidate() || control.has_key("s-maxage")
}

/// The header names `Vary` lists, trimmed.
fn vary_names(response: &ResponseHeader) -> impl Iterator<Item = &str> {
    response
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `Expires` minus `Date` (or minus `now` without a readable `Date`); zero when
/// `Expires` is unreadable or given twice (RFC 9111 section 5.3).
fn expires_lifetime(response: &ResponseHeader, now: SystemTime) -> Duration {
    let mut values = response.headers.get_all(EXPIRES).iter();
    let (Some(expires), None) = (values.next(), values.next()) else {
        return Duration::ZERO;
    };
    let Some(expires) = http_date(expires) else {
        return Duration::ZERO;
    };
    let date = response
        .headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or(now);
    expires.duration_since(date).unwrap_or_default()
}

fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// The `Age` the origin (or a cache before it) gave the answer; 0 when absent
/// or unreadable.
fn age_value(response: &ResponseHeader) -> Duration {
    response
        .headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default_ttl: &[(u16, u64)]) -> Policy {
        Policy {
            default_ttl: default_ttl
                .iter()
                .map(|(s, t)| (StatusCode::from_u16(*s).unwrap(), Duration::from_secs(*t)))
                .collect(),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    /// The stored meta's freshness left at `now`, or why it was not stored.
    fn decide(p: &Policy, r: &ResponseHeader, personal: bool) -> Result<CacheMeta, String> {
        match p.decide(r, personal, SystemTime::now()) {
            RespCacheable::Cacheable(meta) => Ok(meta),
            RespCacheable::Uncacheable(reason) => Err(reason.as_str().to_string()),
        }
    }

    fn fresh_secs(meta: &CacheMeta) -> u64 {
        meta.fresh_until()
            .duration_since(SystemTime::now())
            .map_or(0, |d| d.as_secs() + 1)
    }

    #[test]
    fn freshness_comes_from_s_maxage_then_max_age_then_expires_then_default_ttl() {
        let p = policy(&[(200, 100), (404, 7)]);
        let both = response(200, &[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(fresh_secs(&decide(&p, &both, false).unwrap()), 20);
        let max_age = response(200, &[("cache-control", "max-age=10")]);
        assert_eq!(fresh_secs(&decide(&p, &max_age, false).unwrap()), 10);
        let date = httpdate::fmt_http_date(SystemTime::now());
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(50));
        let expires = response(200, &[("date", &date), ("expires", &later)]);
        let secs = fresh_secs(&decide(&p, &expires, false).unwrap());
        assert!((49..=51).contains(&secs), "{secs}");
        let silent = response(404, &[]);
        assert_eq!(fresh_secs(&decide(&p, &silent, false).unwrap()), 7);
        // No heuristic for a status default_ttl does not list.
        assert!(decide(&p, &response(410, &[]), false).is_err());
        // Nor for one the RFC does not let a cache store heuristically.
        assert!(decide(&policy(&[]), &response(302, &[]), false).is_err());
        // An unreadable Expires is already expired; without validator: not stored.
        let bad = response(200, &[("expires", "soon")]);
        assert!(decide(&p, &bad, false).is_err());
    }

    #[test]
    fn directives_that_forbid_storing_are_obeyed() {
        let p = policy(&[(200, 100)]);
        for cc in [
            "no-store",
            "private",
            "private, max-age=60",
            "no-store, public",
        ] {
            let r = response(200, &[("cache-control", cc)]);
            assert!(decide(&p, &r, false).is_err(), "{cc} stored");
        }
        let cookie = response(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        );
        assert_eq!(decide(&p, &cookie, false).unwrap_err(), "Set-Cookie");
        let vary_any = response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept, *")],
        );
        assert_eq!(decide(&p, &vary_any, false).unwrap_err(), "Vary: *");
        for header in ["X-Forwarded-For", "x-real-ip", "Forwarded"] {
            let r = response(200, &[("cache-control", "max-age=60"), ("vary", header)]);
            assert_eq!(
                decide(&p, &r, false).unwrap_err(),
                "Vary on the client address"
            );
        }
        for status in [206, 304] {
            let r = response(status, &[("cache-control", "max-age=60")]);
            assert!(decide(&p, &r, false).is_err(), "{status} stored");
        }
    }

    #[test]
    fn qualified_private_and_no_cache_only_drop_their_fields() {
        let p = policy(&[]);
        let r = response(
            200,
            &[
                (
                    "cache-control",
                    "max-age=60, private=\"set-cookie\", no-cache=\"x-user\"",
                ),
                ("set-cookie", "session=1"),
                ("x-user", "ann"),
                ("x-kept", "yes"),
            ],
        );
        let meta = decide(&p, &r, false).unwrap();
        assert!(meta.headers().get("set-cookie").is_none());
        assert!(meta.headers().get("x-user").is_none());
        assert_eq!(meta.headers()["x-kept"], "yes");
    }

    #[test]
    fn personal_requests_are_stored_only_when_the_origin_shares_them() {
        let p = policy(&[(200, 100)]);
        assert_eq!(
            decide(&p, &response(200, &[("cache-control", "max-age=60")]), true).unwrap_err(),
            "personal request"
        );
        assert!(decide(&p, &response(200, &[]), true).is_err());
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            let r = response(200, &[("cache-control", cc)]);
            assert!(decide(&p, &r, true).is_ok(), "{cc} refused");
        }
    }

    #[test]
    fn no_cache_is_stored_stale_only_with_a_validator() {
        let p = policy(&[]);
        let with_etag = response(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]);
        let meta = decide(&p, &with_etag, false).unwrap();
        assert!(!meta.is_fresh(SystemTime::now()));
        let without = response(200, &[("cache-control", "no-cache")]);
        assert!(decide(&p, &without, false).is_err());
    }

    #[test]
    fn the_origins_age_counts_against_freshness_and_is_not_stored() {
        let p = policy(&[]);
        let r = response(200, &[("cache-control", "max-age=100"), ("age", "40")]);
        let meta = decide(&p, &r, false).unwrap();
        let left = fresh_secs(&meta);
        assert!((59..=61).contains(&left), "{left}");
        assert!((40..=41).contains(&meta.age().as_secs()));
        assert!(meta.headers().get("age").is_none());
        // Older than its lifetime and no validator: not worth storing.
        let old = response(200, &[("cache-control", "max-age=10"), ("age", "20")]);
        assert!(decide(&p, &old, false).is_err());
        // With one: stored stale, stale since it expired at the origin's side.
        let old = response(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("age", "20"),
                ("etag", "\"e\""),
            ],
        );
        let meta = decide(&p, &old, false).unwrap();
        let stale_for = SystemTime::now()
            .duration_since(meta.fresh_until())
            .unwrap();
        assert!((9..=11).contains(&stale_for.as_secs()), "{stale_for:?}");
    }

    #[test]
    fn stale_windows_follow_the_origin_then_the_cache() {
        let p = policy(&[]);
        let plain = decide(&p, &response(200, &[("cache-control", "max-age=1")]), false).unwrap();
        assert_eq!(plain.stale_while_revalidate_sec(), 30);
        assert_eq!(plain.stale_if_error_sec(), 600);
        let origin = response(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=5, stale-if-error=9",
            )],
        );
        let origin = decide(&p, &origin, false).unwrap();
        assert_eq!(origin.stale_while_revalidate_sec(), 5);
        assert_eq!(origin.stale_if_error_sec(), 9);
        for cc in [
            "max-age=1, must-revalidate",
            "max-age=1, proxy-revalidate",
            "s-maxage=soon, max-age=1",
            "no-cache",
            "s-maxage=1",
        ] {
            let r = response(200, &[("cache-control", cc), ("etag", "\"e\"")]);
            let meta = decide(&p, &r, false).unwrap();
            assert_eq!(meta.stale_while_revalidate_sec(), 0, "{cc}");
            assert_eq!(meta.stale_if_error_sec(), 0, "{cc}");
        }
    }

    #[test]
    fn get_and_head_are_cacheable_requests() {
        for (method, cacheable) in [
            ("GET", true),
            ("HEAD", true),
            ("POST", false),
            ("PURGE", false),
        ] {
            let request = RequestHeader::build(method, b"/", None).unwrap();
            assert_eq!(request_cacheable(&request), cacheable, "{method}");
        }
    }
}
