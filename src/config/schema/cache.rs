//! `caches:`: the shared HTTP caches routes store answers in (`cache: NAME`).

use super::defaults;
use crate::config::json_schema as js;
use crate::config::units;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound on the memory held by stored answers (heads and bodies); the least
    /// recently used are evicted past it. `0B` keeps answers on `disk` only.
    #[serde(
        default = "defaults::cache_memory",
        deserialize_with = "units::byte_size"
    )]
    #[schemars(with = "js::ByteSize")]
    pub memory: u64,
    /// Answers also kept in files, which survive restarts and upgrades.
    pub disk: Option<DiskCacheConfig>,
    /// Larger answers pass through uncached, never buffered whole; see
    /// [`CacheConfig::max_object`] for the default.
    #[serde(
        default,
        rename = "max_object",
        deserialize_with = "units::opt_byte_size"
    )]
    #[schemars(with = "Option<js::ByteSize>")]
    pub max_object_set: Option<u64>,
    /// How long answers of these statuses stay fresh when the origin gives no
    /// freshness of its own (nginx `proxy_cache_valid`).
    #[serde(default, deserialize_with = "units::status_durations")]
    #[schemars(with = "js::StatusDurations")]
    pub default_ttl: Vec<(http::StatusCode, Duration)>,
    /// How long past freshness a stored answer may be served while one request
    /// refreshes it; the origin's `stale-while-revalidate` takes precedence.
    #[serde(default, deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub stale_while_revalidate: Duration,
    /// How long past freshness a stored answer may be served when the origin
    /// fails (down, 5xx); the origin's `stale-if-error` takes precedence.
    #[serde(default, deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub stale_if_error: Duration,
    /// How long a request waits for another one already fetching the same
    /// answer, then goes to the origin itself, uncached; `0s` turns waiting off.
    #[serde(default = "defaults::cache_lock", deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub lock: Duration,
    /// Clients that may send `PURGE <url>`; others get 403.
    #[serde(default = "defaults::purge_allow", deserialize_with = "units::ip_nets")]
    #[schemars(with = "js::Networks")]
    pub purge_allow: Vec<ipnet::IpNet>,
}

impl CacheConfig {
    /// `max_object`, or by default 8 MiB, or the larger tier when that is less.
    pub fn max_object(&self) -> u64 {
        self.max_object_set.unwrap_or_else(|| {
            let largest = self.memory.max(self.disk.as_ref().map_or(0, |d| d.size));
            defaults::cache_max_object().min(largest)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskCacheConfig {
    /// A directory of its own; created when missing, and must be writable.
    pub path: PathBuf,
    /// Bound on the bytes of the files; the least recently used go past it.
    #[serde(deserialize_with = "units::byte_size")]
    #[schemars(with = "js::ByteSize")]
    pub size: u64,
}
