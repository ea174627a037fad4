//! Rate-limit buckets shared by every tollgate instance through Redis
//! (`scope: cluster`): the same GCRA as the local buckets, run as one Lua
//! script per request, so that concurrent instances cannot overspend and the
//! store costs one round trip. The script reads Redis's own clock, so the
//! instances' clocks need not agree. Concurrent requests share one
//! multiplexed connection (their commands are pipelined).
//!
//! A bucket's Redis key expires when the bucket would be full again, so
//! Redis holds only the buckets of keys seen within their refill time, and
//! a key is at most [`LONGEST_KEY_KEPT`] bytes plus the limit's name (longer
//! ones are digested).
//!
//! A store that does not answer within `server.cluster.timeout` is taken
//! for down for a second: the requests of that second do not wait on it at
//! all, and the limit's `on_store_error` decides. The first request after
//! it tries the store again, so shared limiting resumes by itself.

use crate::config::ClusterConfig;
use crate::filters::rate_limit::Decision;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a failed store is left alone before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// One bucket's GCRA step, atomically: KEYS[1] the bucket, ARGV[1] the
/// emission interval and ARGV[2] the tolerance (burst intervals), in µs.
/// Returns {1, used} when the request passes (`used`: how far the bucket's
/// theoretical arrival time now runs ahead of now), {0, retry_after, ahead}
/// when it is refused.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return {0, ahead - tolerance, ahead}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, new_tat - now}
"#;

/// The process's store, set at start when `server.cluster` is.
static STORE: OnceLock<Arc<SharedLimits>> = OnceLock::new();

/// Sets the store of this process from `server.cluster`.
pub fn init(config: &ClusterConfig) -> Result<(), String> {
    let store = SharedLimits::new(config)?;
    let _ = STORE.set(Arc::new(store));
    Ok(())
}

/// The store, when `server.cluster` is set.
pub(crate) fn store() -> Option<&'static Arc<SharedLimits>> {
    STORE.get()
}

/// Why the store gave no decision.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// It failed recently; not tried.
    Down,
    /// No answer in time.
    Timeout,
    /// An error of Redis or of the connection.
    Failed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Down => f.write_str("failed a moment ago"),
            StoreError::Timeout => f.write_str("no answer in time"),
            StoreError::Failed(e) => f.write_str(e),
        }
    }
}

pub struct SharedLimits {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    timeout: Duration,
    script: redis::Script,
    /// Until when (ms since [`started`](Self::started)) the store is left alone.
    down_until: AtomicU64,
    started: Instant,
}

impl SharedLimits {
    fn new(config: &ClusterConfig) -> Result<SharedLimits, String> {
        let client = match &config.ca_roots {
            Some(roots) => {
                let root_cert = std::fs::read(roots).map_err(|e| {
                    format!(
                        "server.cluster.ca_roots: cannot read {}: {e}",
                        roots.display()
                    )
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(config.redis.as_str(), certificates)
            }
            None => redis::Client::open(config.redis.as_str()),
        }
        .map_err(|e| format!("server.cluster.redis: {e}"))?;
        Ok(SharedLimits {
            client,
            connection: tokio::sync::OnceCell::new(),
            timeout: config.timeout,
            script: redis::Script::new(GCRA),
            down_until: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// One request against the shared bucket `key` of limit `limit`, whose
    /// requests are `interval` apart with `tolerance` of burst.
    pub(crate) async fn check(
        &self,
        limit: &str,
        key: &[u8],
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Decision, StoreError> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::Down);
        }
        let run = self.run(limit, key, interval, tolerance);
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(decision)) => return Ok(decision),
            Ok(Err(e)) => StoreError::Failed(e.to_string()),
            Err(_) => StoreError::Timeout,
        };
        // From the failure, not from the call: a timeout as long as the
        // breaker's window must not leave it closed.
        let failed_ms = self.started.elapsed().as_millis() as u64;
        let until = failed_ms + DOWN_FOR.as_millis() as u64;
        let was = self.down_until.fetch_max(until, Ordering::Relaxed);
        if was <= now_ms {
            log::warn!(
                "the rate-limit store does not answer ({result}); cluster limits follow their \
                 on_store_error for {}s, then try it again",
                DOWN_FOR.as_secs()
            );
        }
        Err(result)
    }

    async fn run(
        &self,
        limit: &str,
        key: &[u8],
        interval: Duration,
        tolerance: Duration,
    ) -> redis::RedisResult<Decision> {
        let mut connection = self.connection().await?;
        let bucket = bucket_key(limit, key);
        let answer: Vec<i64> = self
            .script
            .key(bucket)
            .arg(interval.as_micros().max(1) as u64)
            .arg(tolerance.as_micros() as u64)
            .invoke_async(&mut connection)
            .await?;
        let micros =
            |i: usize| Duration::from_micros(answer.get(i).copied().unwrap_or(0).max(0) as u64);
        Ok(match answer.first() {
            Some(1) => {
                let used = micros(1);
                let room = (tolerance + interval).saturating_sub(used);
                Decision::Allow {
                    remaining: (room.as_micros() / interval.as_micros().max(1)) as u32,
                    reset: used,
                }
            }
            _ => Decision::Deny {
                retry_after: micros(1),
                reset: micros(2),
            },
        })
    }

    /// The shared connection, opened on first use; it reconnects by itself
    /// after Redis restarts.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }
}

/// Keys longer than this are stored by their digest.
const LONGEST_KEY_KEPT: usize = 32;

/// The Redis key of `limit`'s bucket for `key`:
/// `tollgate:limit:LIMIT:k:KEY` for a key of at most [`LONGEST_KEY_KEPT`]
/// bytes (a client address is 4 or 16), else `tollgate:limit:LIMIT:h:` and
/// the first 16 bytes of the key's SHA-256, so that clients cannot make the
/// store's keys as long as they like. Every instance derives the same key.
fn bucket_key(limit: &str, key: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut bucket = Vec::with_capacity(19 + limit.len() + LONGEST_KEY_KEPT);
    bucket.extend_from_slice(b"tollgate:limit:");
    bucket.extend_from_slice(limit.as_bytes());
    if key.len() <= LONGEST_KEY_KEPT {
        bucket.extend_from_slice(b":k:");
        bucket.extend_from_slice(key);
    } else {
        bucket.extend_from_slice(b":h:");
        bucket.extend_from_slice(&sha2::Sha256::digest(key)[..16]);
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_kept_and_long_ones_digested_apart() {
        assert_eq!(
            bucket_key("api", b"\x7f\0\0\x01"),
            b"tollgate:limit:api:k:\x7f\0\0\x01"
        );
        let long = [b'a'; 4096];
        let digested = bucket_key("api", &long);
        assert_eq!(digested.len(), "tollgate:limit:api:h:".len() + 16);
        assert!(digested.starts_with(b"tollgate:limit:api:h:"));
        assert_eq!(digested, bucket_key("api", &long));
        let mut other = long;
        other[4095] = b'b';
        assert_ne!(digested, bucket_key("api", &other));
        // A short key spelled like a digest does not share its bucket.
        let spelled = &digested["tollgate:limit:api:".len()..];
        assert_ne!(bucket_key("api", spelled), digested);
    }
}
