//! A route's `cors:`: which other origins' pages may call the route from a
//! browser, with which methods and headers (see `filters::cors`).

use crate::config::json_schema as js;
use crate::config::types::HeaderName;
use crate::config::units;
use crate::filters::cors::Origin;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// The origins allowed, or `*` alone for any origin (without credentials).
    pub origins: Vec<CorsOrigin>,
    /// The methods a preflight may ask for; the CORS-safelisted GET, HEAD and
    /// POST when absent.
    #[serde(default = "safelisted_methods")]
    pub methods: Vec<CorsMethod>,
    /// The request headers a preflight may ask for (compared case-insensitively).
    #[serde(default)]
    pub headers: Vec<CorsHeader>,
    /// The answer headers scripts of the allowed origins may read, beyond the
    /// CORS-safelisted ones.
    #[serde(default)]
    pub expose: Vec<CorsHeader>,
    /// Allow requests with cookies or HTTP authentication
    /// (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may keep a preflight's answer
    /// (`Access-Control-Max-Age`, whole seconds); the browser's default (5 s)
    /// when absent.
    #[serde(default, deserialize_with = "units::opt_duration")]
    #[schemars(with = "Option<js::Duration>")]
    pub max_age: Option<Duration>,
    /// Count preflights against the route's `rate_limit` (they are not by
    /// default: a browser sends one before its real request).
    #[serde(default)]
    pub count_preflights: bool,
}

/// One entry of `origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigin {
    /// `*`: every origin.
    Any,
    Listed(Origin),
    /// Not an origin, and why: reported by validation at the entry's own line
    /// (serde would name only the list's), so never in a loaded config.
    Invalid(String),
}

impl<'de> Deserialize<'de> for CorsOrigin {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        if text == "*" {
            return Ok(CorsOrigin::Any);
        }
        Ok(Origin::parse(&text).map_or_else(CorsOrigin::Invalid, CorsOrigin::Listed))
    }
}

/// One entry of `methods`: a method name, compared case-sensitively as
/// browsers do (write them as sent: `GET`, `PATCH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsMethod(pub http::Method);

impl<'de> Deserialize<'de> for CorsMethod {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        if text == "*" {
            return Err(D::Error::custom(
                "`*` is not supported in cors.methods: list the methods, e.g. [GET, POST, PUT]",
            ));
        }
        http::Method::from_bytes(text.as_bytes())
            .map(CorsMethod)
            .map_err(|_| D::Error::custom(format!("invalid method `{text}`")))
    }
}

fn safelisted_methods() -> Vec<CorsMethod> {
    [http::Method::GET, http::Method::HEAD, http::Method::POST]
        .into_iter()
        .map(CorsMethod)
        .collect()
}

/// One entry of `headers` or `expose`: a header name (`*` is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsHeader(pub HeaderName);

impl<'de> Deserialize<'de> for CorsHeader {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        if text == "*" {
            return Err(D::Error::custom(
                "`*` is not supported here: list the header names, e.g. [Authorization, Content-Type]",
            ));
        }
        HeaderName::parse(&text)
            .map(CorsHeader)
            .map_err(D::Error::custom)
    }
}
