//! Checks of `caches:`: sizes that fit together, freshness the RFC allows,
//! one directory per cache.

use super::{check_name, Problems};
use crate::config::schema::CacheConfig;
use std::collections::{BTreeMap, HashMap};

/// Statuses a cache may store without explicit freshness from the origin
/// ("heuristically cacheable", RFC 9110 section 15.1), except 206: tollgate
/// always fetches whole answers.
pub(crate) const HEURISTICALLY_CACHEABLE: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

pub(super) fn check(caches: &BTreeMap<String, CacheConfig>, problems: &mut Problems) {
    let mut directories = HashMap::new();
    for (name, cache) in caches {
        let at = format!("caches.{name}");
        check_name(&at, name, "cache", problems);
        check_sizes(&at, cache, problems);
        for (status, ttl) in &cache.default_ttl {
            if !HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) {
                problems.push(
                    format!("{at}.default_ttl.{}", status.as_u16()),
                    format!(
                        "{status} answers may only be stored with freshness the origin gives \
                         (RFC 9111 section 4.2.2); default_ttl takes {}",
                        statuses(),
                    ),
                );
            }
            if ttl.is_zero() {
                problems.push(
                    format!("{at}.default_ttl.{}", status.as_u16()),
                    "must be more than 0",
                );
            }
        }
        if let Some(disk) = &cache.disk {
            if let Some(first) = directories.insert(disk.path.clone(), name) {
                problems.push(
                    format!("{at}.disk.path"),
                    format!(
                        "`{}` is the directory of cache `{first}` too: give each cache its own",
                        disk.path.display()
                    ),
                );
            }
        }
    }
}

fn check_sizes(at: &str, cache: &CacheConfig, problems: &mut Problems) {
    let disk_size = cache.disk.as_ref().map_or(0, |d| d.size);
    if cache.disk.is_some() && disk_size == 0 {
        problems.push(format!("{at}.disk.size"), "must be more than 0");
    }
    if cache.memory == 0 && cache.disk.is_none() {
        problems.push(
            format!("{at}.memory"),
            "a cache without `disk` needs memory to store answers in",
        );
    }
    if cache.max_object() == 0 {
        problems.push(format!("{at}.max_object"), "must be more than 0");
    } else if cache.max_object() > cache.memory.max(disk_size) {
        problems.push(
            format!("{at}.max_object"),
            "is larger than the cache itself: no answer that large could be stored",
        );
    }
}

fn statuses() -> String {
    let codes: Vec<String> = HEURISTICALLY_CACHEABLE.iter().map(u16::to_string).collect();
    codes.join(", ")
}
