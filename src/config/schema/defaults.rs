//! Defaults of the topology file, chosen to be safe in production (every
//! timeout set, every limit set).

use std::time::Duration;

pub fn grace_period() -> Duration {
    Duration::from_secs(10)
}
pub fn retries() -> u32 {
    1
}
pub fn weight() -> u32 {
    1
}
pub(crate) fn check_interval() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn check_timeout() -> Duration {
    Duration::from_secs(1)
}
pub fn healthy_threshold() -> u32 {
    2
}
pub fn unhealthy_threshold() -> u32 {
    3
}
pub(crate) fn probe_path() -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static("/")
}
pub fn max_fails() -> u32 {
    1
}
pub fn fail_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn read_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn write_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn auth_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn auth_cache_entries() -> usize {
    10_000
}
pub(crate) fn jwt_leeway() -> Duration {
    Duration::from_secs(30)
}
pub fn verify() -> bool {
    true
}
pub fn yes() -> bool {
    true
}
pub(crate) fn rate_limited_status() -> http::StatusCode {
    http::StatusCode::TOO_MANY_REQUESTS
}
pub(crate) fn unauthorized_statuses() -> Vec<u16> {
    vec![401]
}
pub fn forbidden_statuses() -> Vec<u16> {
    vec![403]
}
pub fn max_request_body() -> u64 {
    10 << 20
}
pub(crate) fn discovery_interval() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn cluster_timeout() -> Duration {
    Duration::from_millis(50)
}
pub(crate) fn acme_retry() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn request_buffer_memory() -> u64 {
    128 << 10
}
pub(crate) fn client_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn compression_level() -> u32 {
    6
}
pub(crate) fn compression_min_size() -> u64 {
    1024
}
pub(crate) fn compression_types() -> Vec<String> {
    [
        "text/html",
        "text/css",
        "text/plain",
        "text/xml",
        "text/javascript",
        "text/csv",
        "text/markdown",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/wasm",
        "image/svg+xml",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect()
}
pub(crate) fn index_file() -> String {
    "index.html".to_string()
}
pub fn redirect_status() -> http::StatusCode {
    http::StatusCode::PERMANENT_REDIRECT
}
pub(crate) fn api_key_header() -> crate::config::types::HeaderName {
    crate::config::types::HeaderName::known(http::HeaderName::from_static("x-api-key"), "X-API-Key")
}

pub(crate) fn request_id_header() -> crate::config::types::HeaderName {
    crate::config::types::HeaderName::known(
        http::HeaderName::from_static("x-request-id"),
        "X-Request-Id",
    )
}

pub(crate) fn trace_service_name() -> String {
    "tollgate".to_string()
}
pub(crate) fn trace_sample() -> crate::config::Percent {
    crate::config::Percent::from_share(1.0)
}
pub(crate) fn trace_queue() -> usize {
    4096
}

pub(crate) fn cache_memory() -> u64 {
    64 << 20
}
pub(crate) fn cache_max_object() -> u64 {
    8 << 20
}
pub(crate) fn cache_lock() -> Duration {
    Duration::from_secs(5)
}
/// PURGE from the machine itself only.
pub(crate) fn purge_allow() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}
pub fn consecutive_5xx() -> u32 {
    5
}
pub fn ejection() -> Duration {
    Duration::from_secs(30)
}
pub fn max_ejected() -> crate::config::Percent {
    crate::config::Percent::from_share(0.5)
}
pub fn retry_ratio() -> crate::config::Percent {
    crate::config::Percent::from_share(0.2)
}
pub fn retry_min_per_second() -> u32 {
    10
}
pub(crate) fn mirror_percent() -> crate::config::Percent {
    crate::config::Percent::from_share(1.0)
}
pub(crate) fn mirror_max_body() -> u64 {
    64 << 10
}
pub(crate) fn mirror_max_in_flight() -> u32 {
    100
}
pub(crate) fn mirror_timeout() -> Duration {
    Duration::from_secs(10)
}
