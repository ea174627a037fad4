//! `auth:`: the policies routes name, one of forward, jwt, api_keys, basic or
//! client_cert each.

use super::defaults;
use crate::config::json_schema as js;
use crate::config::types::{HeaderName, JwtAlgorithm};
use crate::config::units;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One authentication policy: exactly one of `forward`, `jwt`, `api_keys`,
/// `basic`, `client_cert`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicyConfig {
    /// Ask an auth service about each request (nginx `auth_request`).
    pub forward: Option<ForwardAuthConfig>,
    /// Check a JSON Web Token from `Authorization: Bearer`.
    pub jwt: Option<JwtConfig>,
    /// Accept requests that carry one of a list of keys.
    pub api_keys: Option<ApiKeysConfig>,
    /// User names and passwords (HTTP Basic) from an htpasswd file.
    pub basic: Option<BasicAuthConfig>,
    /// Admit TLS client certificates with one of the listed subjects.
    pub client_cert: Option<ClientCertAuthConfig>,
}

/// Ask an auth service about each request, like nginx `auth_request`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// `http://host:port/path` of the auth service.
    #[serde(deserialize_with = "units::http_url")]
    #[schemars(with = "js::HttpUrl")]
    pub url: reqwest::Url,
    /// The longest the auth service may take to answer; then 503.
    #[serde(
        default = "defaults::auth_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub timeout: Duration,
    /// The bearer token of the client's Authorization goes in this query
    /// parameter of `url` instead of an Authorization header.
    pub token_query: Option<String>,
    /// Client request headers passed on to the auth service (Authorization is,
    /// unless `token_query` is set).
    #[serde(default)]
    pub pass_headers: Vec<HeaderName>,
    /// Headers copied from the auth service's 2xx answer into the upstream request.
    #[serde(default)]
    pub copy_headers: Vec<HeaderName>,
    /// Headers of the upstream request taken from the JSON body of a 2xx answer:
    /// header -> claim (`user.name` reaches into objects).
    #[serde(default, deserialize_with = "units::header_claims")]
    #[schemars(with = "js::HeaderClaims")]
    pub identity_from_json: Vec<(HeaderName, String)>,
    /// Statuses of the auth service that mean 401 to the client.
    #[serde(default = "defaults::unauthorized_statuses")]
    pub unauthorized_statuses: Vec<u16>,
    /// Statuses of the auth service that mean 403 to the client.
    #[serde(default = "defaults::forbidden_statuses")]
    pub forbidden_statuses: Vec<u16>,
    /// How the policy's 401/403/503 answers read.
    #[serde(default)]
    pub error_body: ErrorBody,
    /// How long a positive answer is reused for the same credentials; no
    /// caching when absent.
    #[serde(default, deserialize_with = "units::opt_duration")]
    #[schemars(with = "Option<js::Duration>")]
    pub cache: Option<Duration>,
    /// Most answers kept in the cache.
    #[serde(default = "defaults::auth_cache_entries")]
    pub cache_entries: usize,
}

/// The body of an auth policy's rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBody {
    /// Plain text (a forward policy passes on the auth service's own body).
    #[default]
    Text,
    /// `{"message": "Unauthorized"}` (`Forbidden`, `Service Unavailable`).
    Json,
}

/// Check JSON Web Tokens from `Authorization: Bearer`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `alg` values: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Public keys (RS*, PS*, ES*) as a JWK Set.
    pub jwks_file: Option<PathBuf>,
    /// Environment variable holding the HMAC secret (HS*).
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (HS*); surrounding white space is ignored.
    pub secret_file: Option<PathBuf>,
    /// The `iss` claim a token must have; any when absent.
    pub issuer: Option<String>,
    /// A value the `aud` claim must hold; any when absent.
    pub audience: Option<String>,
    /// Claims copied into upstream request headers: `{sub: X-User}`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, HeaderName>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::jwt_leeway", deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub leeway: Duration,
    /// Refuse tokens without an `exp` claim (default): they would never expire.
    #[serde(default = "defaults::yes")]
    pub require_exp: bool,
    /// How the policy's 401/403 answers read: `text` or `json`.
    #[serde(default)]
    pub error_body: ErrorBody,
}

/// Accept requests that carry one of a list of keys.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Header carrying the key; `Authorization: Bearer <key>` is accepted too.
    #[serde(default = "defaults::api_key_header")]
    pub header: HeaderName,
    /// One key per line; `#` starts a comment; `name: key` names a key (the
    /// name becomes the request's `auth_subject`).
    pub keys_file: PathBuf,
    /// How the policy's 401/403 answers read: `text` or `json`.
    #[serde(default)]
    pub error_body: ErrorBody,
}

/// User names and passwords (RFC 7617) from an htpasswd file of bcrypt entries.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// `user:hash` lines as `htpasswd -B` writes them; `#` starts a comment.
    pub users_file: PathBuf,
    /// The realm of `WWW-Authenticate`; the policy's name when absent.
    pub realm: Option<String>,
    /// The upstream request header that carries the user name (none when absent).
    pub user_header: Option<HeaderName>,
    /// How the policy's 401/403 answers read: `text` or `json`.
    #[serde(default)]
    pub error_body: ErrorBody,
}

/// Admit the clients whose TLS client certificate (verified by the listener's
/// `client_certificates`) has one of the listed subjects.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertAuthConfig {
    /// Subjects as tollgate writes them in `X-Client-Cert-Subject` (RFC 4514:
    /// `CN=partner-a,O=Partner A`).
    pub subjects: Vec<String>,
    /// How the policy's 401/403 answers read: `text` or `json`.
    #[serde(default)]
    pub error_body: ErrorBody,
}
