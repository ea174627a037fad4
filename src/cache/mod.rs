//! Shared HTTP caches (RFC 9111) on pingora's cache: the key (`key`), the
//! decisions (`policy`), the storages (`storage`, over the `memory` and `disk`
//! tiers), and [`CacheStatus`], what `X-Cache-Status` says.
//!
//! pingora runs the cache between `request_filter` and `upstream_peer`: a
//! request the cache answers never reaches a backend. Its lock makes
//! concurrent misses of one key wait for one fetch; the proxy hooks of
//! `proxy::caching` tell it what to store and how.

mod disk;
mod entry;
pub(crate) mod key;
mod memory;
pub(crate) mod policy;
mod status;
mod storage;
mod tier;

pub(crate) use disk::prepare_directory;
pub(crate) use status::{CacheStatus, LookupCounters};

use crate::config::CacheConfig;
use crate::metrics::metrics;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheOptionOverrides, HttpCache};
use policy::Policy;
use prometheus::IntCounter;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use storage::TieredStorage;

/// How long a fill may hold the lock of its key before waiting requests may
/// compete for it again (each waits at most `lock` anyway).
const LOCK_AGE_LIMIT: Duration = Duration::from_secs(60);

/// A cache's storage and lock. Every topology that keeps the cache (same name,
/// same directory) shares them; when the last one drops it, the memory is freed.
struct Store {
    name: String,
    storage: &'static TieredStorage,
    lock: &'static CacheLock,
    /// The hold on the cache's series: when the last topology with a cache
    /// of this name is gone, they are removed.
    _series: crate::metrics::Lease,
}

/// A storage this process made: pingora's cache takes a storage and a lock for
/// the whole process, so each (name, directory) gets one, reused whenever the
/// cache is in a topology again.
struct Registered {
    name: String,
    disk: Option<PathBuf>,
    storage: &'static TieredStorage,
    lock: &'static CacheLock,
    /// The [`Store`]s of it alive now.
    users: usize,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<Registered>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// The storage of cache `name` as `config` has it: the one made before for
    /// this name and directory (with the new sizes), or a new one.
    fn open(name: &str, config: &CacheConfig) -> Store {
        let series = crate::metrics::cache_series(name);
        let memory = to_usize(config.memory);
        let disk = config.disk.as_ref();
        let mut registry = registry();
        let found = registry
            .iter_mut()
            .find(|r| r.name == name && r.disk.as_deref() == disk.map(|d| d.path.as_path()));
        let registered = match found {
            Some(registered) => {
                registered
                    .storage
                    .revive(memory, disk.map(|d| to_usize(d.size)));
                registered
            }
            None => {
                let tier = disk.map(|d| (d.path.as_path(), to_usize(d.size)));
                registry.push(Registered {
                    name: name.to_string(),
                    disk: disk.map(|d| d.path.clone()),
                    storage: Box::leak(Box::new(TieredStorage::new(name, memory, tier))),
                    lock: Box::leak(Box::new(CacheLock::new(LOCK_AGE_LIMIT))),
                    users: 0,
                });
                let last = registry.len() - 1;
                &mut registry[last]
            }
        };
        registered.users += 1;
        Store {
            name: name.to_string(),
            storage: registered.storage,
            lock: registered.lock,
            _series: series,
        }
    }
}

impl Drop for Store {
    /// The last topology with this storage is gone: its memory is freed, and
    /// the gauges cleared unless another storage of the same name is in use.
    fn drop(&mut self) {
        let mut registry = registry();
        let mut users = 0;
        let mut namesakes_in_use = false;
        for registered in registry.iter_mut() {
            if std::ptr::eq(registered.storage, self.storage) {
                registered.users = registered.users.saturating_sub(1);
                users = registered.users;
            } else if registered.name == self.name && registered.users > 0 {
                namesakes_in_use = true;
            }
        }
        if users == 0 {
            self.storage.retire(!namesakes_in_use);
        }
    }
}

fn to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// One cache of a topology: where it stores, and its rules.
pub struct Cache {
    pub name: String,
    store: Arc<Store>,
    pub(crate) policy: Policy,
    max_object: usize,
    /// How long a miss waits for another request's fetch; `None`: no lock.
    lock_wait: Option<Duration>,
    purge_allow: Vec<ipnet::IpNet>,
    lock_waits: IntCounter,
}

impl Cache {
    /// Cache `name` as `config` has it. The storage of `previous` (the same
    /// cache in the running topology) is kept when the directory is the same,
    /// with the new sizes; so are its entries.
    pub(crate) fn compile(name: &str, config: &CacheConfig, previous: Option<&Cache>) -> Cache {
        let directory = config.disk.as_ref().map(|d| d.path.as_path());
        let kept = previous.filter(|p| p.store.storage.disk_root() == directory);
        let store = match kept {
            Some(previous) => {
                let disk_size = config.disk.as_ref().map(|d| to_usize(d.size));
                previous
                    .store
                    .storage
                    .set_limits(to_usize(config.memory), disk_size);
                Arc::clone(&previous.store)
            }
            None => Arc::new(Store::open(name, config)),
        };
        Cache {
            name: name.to_string(),
            store,
            policy: Policy::new(config),
            max_object: to_usize(config.max_object()),
            lock_wait: (!config.lock.is_zero()).then_some(config.lock),
            purge_allow: config.purge_allow.clone(),
            lock_waits: metrics().cache_lock_waits.with_label_values(&[name]),
        }
    }

    /// Turns `cache` (a request's, not enabled yet) on with this cache's
    /// storage, lock and `max_object`.
    pub(crate) fn enable(&self, cache: &mut HttpCache) {
        let lock: Option<&'static CacheKeyLockImpl> = match self.lock_wait {
            Some(_) => Some(self.store.lock),
            None => None,
        };
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = self.lock_wait;
        cache.enable(self.store.storage, None, None, lock, Some(overrides));
        cache.set_max_file_size_bytes(self.max_object);
    }

    /// Whether `client` may `PURGE` (`purge_allow`).
    pub(crate) fn may_purge(&self, client: IpAddr) -> bool {
        self.purge_allow.iter().any(|net| net.contains(&client))
    }

    /// Counts a request that waited on the lock for another's fetch.
    pub(crate) fn count_lock_wait(&self) {
        self.lock_waits.inc();
    }
}
