//! Series leases: the label sets of a topology's objects (a route, an
//! upstream, a backend, a rate limit, a cache), counted while the objects
//! live. When the last holder of a label set is dropped, every series of its
//! families with those labels is removed from the registry (at the next
//! [`flush`]: before the next scrape), so an object a reload or DNS discovery
//! takes out of the topology stops being exported.
//!
//! Series are removed only once no object holds them: a request in flight
//! keeps its topology, and so its objects and their series, until it ends.
//! The series are created only through objects holding the lease (the
//! handles, and the label values looked up per request, come from them), so
//! a removed series is not brought back by a late increment; an object with
//! the same labels compiled later starts fresh series. While an old holder
//! lives on (a long request on the old topology), a new holder of the same
//! labels shares its series instead.
//!
//! Every lease on one family names the same labels (say `route` and
//! `upstream` on `tollgate_requests_total`): a lease on `route` alone would
//! overlap them, and the last of the two to go would remove the other's.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A metric family whose series can be removed by their labels.
pub trait Family: Send + Sync {
    /// The family's name (the key of its leases).
    fn family_name(&self) -> String;
    /// Removes every series whose values of the labels `names` are one of
    /// `values` (each in the order of `names`).
    fn remove_all(&self, names: &[&'static str], values: &HashSet<Vec<String>>);
}

impl<T: MetricVecBuilder> Family for MetricVec<T> {
    fn family_name(&self) -> String {
        self.desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default()
    }

    fn remove_all(&self, names: &[&'static str], values: &HashSet<Vec<String>>) {
        for family in self.collect() {
            for metric in family.get_metric() {
                let pairs = metric.get_label();
                let value_of = |name: &str| {
                    pairs
                        .iter()
                        .find(|p| p.name() == name)
                        .map(|p| p.value().to_string())
                };
                let Some(these) = names
                    .iter()
                    .map(|n| value_of(n))
                    .collect::<Option<Vec<_>>>()
                else {
                    continue;
                };
                if values.contains(&these) {
                    let all: HashMap<&str, &str> =
                        pairs.iter().map(|p| (p.name(), p.value())).collect();
                    // The labels come from the family itself: they fit it.
                    let _ = self.remove(&all);
                }
            }
        }
    }
}

/// A family's name and a label set (names and values).
type Key = (String, Vec<(&'static str, String)>);

/// The label sets whose last holder went, of one family, by label names.
struct Removals {
    family: &'static dyn Family,
    sets: HashMap<Vec<&'static str>, HashSet<Vec<String>>>,
}

#[derive(Default)]
struct Leases {
    /// Holders alive per family and label set.
    holders: HashMap<Key, usize>,
    /// What to remove at the next flush, by family name.
    removals: HashMap<String, Removals>,
    /// The keys in `removals`.
    removing: HashSet<Key>,
}

static LEASES: Mutex<Option<Leases>> = Mutex::new(None);

fn leases() -> MutexGuard<'static, Option<Leases>> {
    LEASES.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    /// Removes every series whose last holder went, one pass over each family.
    fn flush(&mut self) {
        self.removing.clear();
        for (_, removals) in self.removals.drain() {
            for (names, values) in &removals.sets {
                removals.family.remove_all(names, values);
            }
        }
    }
}

/// Removes the series whose last holder went (their removal waits for this,
/// so that a reload dropping many objects goes over each family once). Run
/// before each scrape, and before anything else reads the families.
pub fn flush() {
    if let Some(leases) = leases().as_mut() {
        leases.flush();
    }
}

/// One holder of the series labelled `labels` in some families. Take it
/// before making the handles of those series: a label set whose last holder
/// went is removed first, so the new handles are on fresh series.
pub struct Lease {
    families: Vec<&'static dyn Family>,
    labels: Vec<(&'static str, String)>,
}

impl Lease {
    /// A holder more of the series of `families` whose labels include `labels`.
    pub fn new(families: &[&'static dyn Family], labels: &[(&'static str, &str)]) -> Lease {
        let labels: Vec<(&'static str, String)> = labels
            .iter()
            .map(|(name, value)| (*name, (*value).to_string()))
            .collect();
        let mut guard = leases();
        let leases = guard.get_or_insert_with(Leases::default);
        let keys: Vec<Key> = families
            .iter()
            .map(|f| (f.family_name(), labels.clone()))
            .collect();
        if keys.iter().any(|k| leases.removing.contains(k)) {
            leases.flush();
        }
        for key in keys {
            *leases.holders.entry(key).or_insert(0) += 1;
        }
        Lease {
            families: families.to_vec(),
            labels,
        }
    }
}

impl Drop for Lease {
    /// The last holder of a family's label set has its series removed at the
    /// next [`flush`].
    fn drop(&mut self) {
        let mut guard = leases();
        let leases = guard.get_or_insert_with(Leases::default);
        let names: Vec<&'static str> = self.labels.iter().map(|(n, _)| *n).collect();
        let values: Vec<String> = self.labels.iter().map(|(_, v)| v.clone()).collect();
        for family in &self.families {
            let key = (family.family_name(), self.labels.clone());
            match leases.holders.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    continue;
                }
                _ => {}
            }
            leases.holders.remove(&key);
            let removals = leases
                .removals
                .entry(key.0.clone())
                .or_insert_with(|| Removals {
                    family: *family,
                    sets: HashMap::new(),
                });
            removals
                .sets
                .entry(names.clone())
                .or_default()
                .insert(values.clone());
            leases.removing.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};
    use std::sync::LazyLock;

    static FAMILY: LazyLock<IntCounterVec> = LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new("series_test_total", "unit test"),
            &["upstream", "backend", "code"],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    });

    fn value(upstream: &str, backend: &str, code: &str) -> Option<u64> {
        FAMILY
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .find(|m| {
                let l = m.get_label();
                l.iter()
                    .any(|p| p.name() == "upstream" && p.value() == upstream)
                    && l.iter()
                        .any(|p| p.name() == "backend" && p.value() == backend)
                    && l.iter().any(|p| p.name() == "code" && p.value() == code)
            })
            .map(|m| m.get_counter().value() as u64)
    }

    #[test]
    fn the_last_holder_removes_the_series_of_its_labels_only() {
        let family: &'static dyn Family = &*FAMILY;
        let a = Lease::new(&[family], &[("upstream", "u"), ("backend", "a")]);
        let b = Lease::new(&[family], &[("upstream", "u"), ("backend", "b")]);
        FAMILY.with_label_values(&["u", "a", "200"]).inc();
        FAMILY.with_label_values(&["u", "a", "503"]).inc();
        FAMILY.with_label_values(&["u", "b", "200"]).inc();
        // A second holder of a's labels (the next topology's) keeps them.
        let a_again = Lease::new(&[family], &[("upstream", "u"), ("backend", "a")]);
        drop(a);
        flush();
        assert_eq!(value("u", "a", "200"), Some(1));
        drop(a_again);
        // Removed at the next flush, or when the labels are leased again.
        assert_eq!(value("u", "a", "200"), Some(1));
        flush();
        assert_eq!(value("u", "a", "200"), None);
        assert_eq!(value("u", "a", "503"), None);
        assert_eq!(value("u", "b", "200"), Some(1));
        // Leased again, it starts from zero.
        let _a = Lease::new(&[family], &[("upstream", "u"), ("backend", "a")]);
        FAMILY.with_label_values(&["u", "a", "200"]).inc();
        assert_eq!(value("u", "a", "200"), Some(1));
        drop(b);
        let _b = Lease::new(&[family], &[("upstream", "u"), ("backend", "b")]);
        assert_eq!(value("u", "b", "200"), None, "leased again: fresh");
        assert_eq!(value("u", "a", "200"), Some(1));
    }
}
#[cfg(test)]
mod bulk {
    use super::*;
    use prometheus::{IntCounterVec, Opts};
    use std::sync::LazyLock;

    static BIG: LazyLock<IntCounterVec> = LazyLock::new(|| {
        let opts = Opts::new("series_bulk_total", "unit test");
        IntCounterVec::new(opts, &["upstream", "backend", "code"]).unwrap_or_else(|e| panic!("{e}"))
    });

    /// A reload that takes out 1000 backends of 5 codes each: one flush
    /// removes them all (about 0.1 s in a debug build).
    #[test]
    fn one_flush_removes_the_series_of_many_holders() {
        let family: &'static dyn Family = &*BIG;
        let backends: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        let leases: Vec<Lease> = backends
            .iter()
            .map(|b| Lease::new(&[family], &[("upstream", "u"), ("backend", b)]))
            .collect();
        for b in &backends {
            for code in ["200", "404", "500", "502", "503"] {
                BIG.with_label_values(&["u", b, code]).inc();
            }
        }
        let _other = Lease::new(&[family], &[("upstream", "v"), ("backend", "10.0.0.0:80")]);
        BIG.with_label_values(&["v", "10.0.0.0:80", "200"]).inc();
        let start = std::time::Instant::now();
        drop(leases);
        flush();
        eprintln!("removed 1000 backends of 5 codes in {:?}", start.elapsed());
        let left: Vec<_> = BIG
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .collect();
        assert_eq!(left.len(), 1, "only upstream v's series stays");
    }
}
