//! Series leases: the label sets of a topology's objects (a route, an
//! upstream, a backend, a rate limit), counted while the objects live. When
//! the last holder of a label set is dropped, every series of its families
//! with those labels is removed from the registry, so an object a reload
//! takes out of the topology stops being exported.
//!
//! Series are removed only once no object holds them: a request in flight
//! keeps its topology, and so its objects and their series, until it ends.
//! The series are created only through objects holding the lease (the
//! handles, and the label values looked up per request come from them), so
//! a removed series is not brought back by a late increment; an object with
//! the same labels compiled later starts fresh series.
//!
//! Every lease on one family names the same labels (say `route` and
//! `upstream` on `tollgate_requests_total`): a lease on `route` alone would
//! overlap them, and the last of the two to go would remove the other's.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A metric family whose series can be removed by their labels.
pub trait Family: Send + Sync {
    /// The family's name (the key of its leases).
    fn family_name(&self) -> String;
    /// Removes every series whose labels include all of `labels`.
    fn remove_matching(&self, labels: &[(&'static str, String)]);
}

impl<T: MetricVecBuilder> Family for MetricVec<T> {
    fn family_name(&self) -> String {
        self.desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default()
    }

    fn remove_matching(&self, labels: &[(&'static str, String)]) {
        for family in self.collect() {
            for metric in family.get_metric() {
                let pairs = metric.get_label();
                let matches = labels.iter().all(|(name, value)| {
                    pairs
                        .iter()
                        .any(|p| p.name() == *name && p.value() == value)
                });
                if matches {
                    let all: HashMap<&str, &str> =
                        pairs.iter().map(|p| (p.name(), p.value())).collect();
                    // The labels come from the family itself: they fit it.
                    let _ = self.remove(&all);
                }
            }
        }
    }
}

/// Leases alive per family name and label set.
type Holders = HashMap<(String, Vec<(&'static str, String)>), usize>;

static HOLDERS: Mutex<Option<Holders>> = Mutex::new(None);

/// One holder of the series labelled `labels` in some families. Take it
/// before making the handles of those series (a holder of the same labels
/// dropped in between would remove the series under the new handles).
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
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        let holders = holders.get_or_insert_with(HashMap::new);
        for family in families {
            *holders
                .entry((family.family_name(), labels.clone()))
                .or_insert(0) += 1;
        }
        Lease {
            families: families.to_vec(),
            labels,
        }
    }
}

impl Drop for Lease {
    /// The last holder of a family's label set removes its series.
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        let holders = holders.get_or_insert_with(HashMap::new);
        for family in &self.families {
            let key = (family.family_name(), self.labels.clone());
            let last = match holders.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => true,
            };
            if last {
                holders.remove(&key);
                // Under the lock: a new holder of these labels waits, and makes
                // its handles on fresh series.
                family.remove_matching(&self.labels);
            }
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
        assert_eq!(value("u", "a", "200"), Some(1));
        drop(a_again);
        assert_eq!(value("u", "a", "200"), None);
        assert_eq!(value("u", "a", "503"), None);
        assert_eq!(value("u", "b", "200"), Some(1));
        // Leased again, it starts from zero.
        let a = Lease::new(&[family], &[("upstream", "u"), ("backend", "a")]);
        FAMILY.with_label_values(&["u", "a", "200"]).inc();
        assert_eq!(value("u", "a", "200"), Some(1));
        drop((a, b));
        assert_eq!(value("u", "b", "200"), None);
    }
}
