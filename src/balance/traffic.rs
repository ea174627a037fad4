//! What an upstream learns from its traffic beyond health: answers feed the
//! latency estimates and outlier detection, slow start thins a ramping
//! backend's picks, and the retry budget decides whether a retry may go.

use super::sampling::{chance, thread_random};
use super::Upstream;
use std::time::Duration;

impl Upstream {
    /// Slow start: `index` as the balancer picked it, or, with the chance
    /// that the backend's ramp does not give it this request, another pick
    /// without it (`index` again when there is no other).
    pub(super) fn ramped(
        &self,
        index: usize,
        key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> usize {
        let Some(window) = self.slow_start else {
            return index;
        };
        let share = self.backends[index].state.ramp.share(window);
        if share >= 1.0 || chance(thread_random(), share) {
            return index;
        }
        self.balancer
            .pick(&self.backends, key, &|i| i != index && usable(i))
            .unwrap_or(index)
    }

    /// Records an answer of backend `index` with `status`, whose head came
    /// `latency` after its connection was ready (when the request was
    /// timed): a passive success, a latency sample, and for outlier
    /// detection a failure when the status is 5xx, else the end of a streak.
    pub(crate) fn record_answer(&self, index: usize, status: u16, latency: Option<Duration>) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        backend.state.passive.record_success();
        if let Some(latency) = latency.filter(|_| self.measures_latency()) {
            backend
                .state
                .latency
                .observe(latency, super::peak_ewma::now_nanos());
        }
        if self.outlier.is_some() {
            if status >= 500 {
                self.record_outlier_failure(index);
            } else {
                backend.state.ejection.record_success();
            }
        }
    }

    /// Records that backend `index` gave no answer within `waited` (a read
    /// timeout): for `least_time`, a sample of that length.
    pub(crate) fn record_timeout(&self, index: usize, waited: Duration) {
        if let (true, Some(backend)) = (self.measures_latency(), self.backends.get(index)) {
            backend
                .state
                .latency
                .observe(waited, super::peak_ewma::now_nanos());
        }
    }

    /// Whether requests are timed for latency samples: for `least_time`,
    /// and for every upstream when the admin listener shows them.
    pub(crate) fn measures_latency(&self) -> bool {
        self.measures_latency || crate::admin::is_on()
    }

    /// Counts one failure of backend `index` toward its outlier streak, and
    /// ejects it when the streak is long enough and the upstream has room.
    pub(super) fn record_outlier_failure(&self, index: usize) {
        let (Some(policy), Some(backend)) = (&self.outlier, self.backends.get(index)) else {
            return;
        };
        let ejection = &backend.state.ejection;
        if ejection.record_failure() < policy.consecutive || ejection.is_out() {
            return;
        }
        let _deciding = self.ejecting.lock();
        if ejection.is_out() {
            return;
        }
        let out = self
            .backends
            .iter()
            .filter(|b| b.state.ejection.is_out())
            .count();
        if out >= policy.max_out(self.backends.len()) {
            log::warn!(
                "backend {} of upstream {} failed {} times in a row; kept in: {out} of {} \
                 backends are ejected already (max_ejected)",
                backend.label,
                self.name,
                policy.consecutive,
                self.backends.len()
            );
            ejection.record_success();
            return;
        }
        let length = ejection.eject(policy.ejection);
        backend.state.metrics.ejections.inc();
        backend.state.refresh_healthy_gauge();
        log::warn!(
            "backend {} of upstream {} failed {} times in a row: ejected for {length:?}",
            backend.label,
            self.name,
            policy.consecutive
        );
    }

    /// This upstream with `previous`'s retry budget, when both have the same
    /// `retry_budget`: a reload, a discovery change or a weight change keeps
    /// the history of recent requests and retries.
    pub(crate) fn keeping_budget_of(mut self, previous: Option<&Upstream>) -> Upstream {
        if let Some(previous) = previous {
            if previous.config.retry_budget == self.config.retry_budget {
                self.retry_budget.clone_from(&previous.retry_budget);
            }
        }
        self
    }

    /// Counts a request's first attempt toward the retry budget.
    pub(crate) fn record_request(&self) {
        if let Some(budget) = &self.retry_budget {
            budget.record_request();
        }
    }

    /// Whether the retry budget lets one more retry go now (always, without
    /// a budget); a refusal is counted.
    pub(crate) fn may_retry(&self) -> bool {
        match &self.retry_budget {
            Some(budget) if !budget.try_retry() => {
                self.retries_refused.inc();
                false
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash_key::RequestParts;
    use crate::balance::test_support::backends;
    use crate::config::UpstreamConfig;
    use std::net::IpAddr;

    fn upstream(yaml: &str, weights: &[u32]) -> Upstream {
        let config: UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
        Upstream::new("traffic-test".into(), backends(weights), &config)
    }

    #[test]
    fn consecutive_5xx_eject_and_max_ejected_keeps_the_rest_in() {
        let u = upstream(
            "outlier: {consecutive_5xx: 3, ejection: 30s, max_ejected: 50%}",
            &[1, 1, 1],
        );
        let ms = Some(Duration::from_millis(1));
        u.record_answer(0, 503, ms);
        u.record_answer(0, 500, ms);
        u.record_answer(0, 200, ms);
        u.record_answer(0, 502, ms);
        assert!(u.backends[0].state.is_up(), "a 200 broke the streak");
        u.record_answer(0, 502, ms);
        u.record_answer(0, 502, ms);
        assert!(!u.backends[0].state.is_up());
        // One of three may be out at 50%: the next is kept in.
        for _ in 0..3 {
            u.record_answer(1, 500, ms);
        }
        assert!(u.backends[1].state.is_up());
        // Connect failures and timeouts make streaks too.
        let u = upstream(
            "outlier: {consecutive_5xx: 2}\npassive: {max_fails: 0}",
            &[1, 1],
        );
        u.record_failure(1);
        assert!(u.backends[1].state.is_up());
        u.record_failure(1);
        assert!(!u.backends[1].state.is_up());
    }

    #[test]
    fn slow_start_thins_a_ramping_backends_picks() {
        let u = upstream("slow_start: 60s", &[1, 1]);
        u.backends[1].state.ramp.begin();
        let headers = http::HeaderMap::new();
        let client = RequestParts::of_client(IpAddr::from([127, 0, 0, 1]), &headers);
        let picks = (0..2000)
            .filter(|_| u.select(&client, &Default::default()) == Some(1))
            .count();
        // At the first share its weight counts as 0.1 against the other's 1:
        // 0.1 / 1.1 of the picks, about 182 of 2000 (round robin gives it 1000).
        assert!((120..250).contains(&picks), "{picks}");
    }

    #[test]
    fn panic_mode_leaves_drained_backends_out() {
        let u = upstream("{}", &[1, 1]);
        for b in &u.backends {
            for _ in 0..3 {
                b.state.active.record(false, 1, 3);
            }
        }
        u.backends[1].state.set_drained(true);
        let headers = http::HeaderMap::new();
        let client = RequestParts::of_client(IpAddr::from([127, 0, 0, 1]), &headers);
        // Nothing is up: panic mode tries backend 0 only, then nothing.
        for _ in 0..4 {
            assert_eq!(u.select(&client, &Default::default()), Some(0));
        }
        let mut tried = crate::balance::Tried::default();
        tried.add(0);
        assert_eq!(u.select(&client, &tried), None);
    }

    #[test]
    fn hashing_does_not_ramp() {
        let u = upstream("algorithm: ip_hash\nslow_start: 60s", &[1, 1]);
        assert!(u.slow_start.is_none());
        let u = upstream(
            "algorithm: hash\nhash_key: header:X-User\nslow_start: 60s",
            &[1, 1],
        );
        assert!(u.slow_start.is_none());
        assert!(upstream("slow_start: 60s", &[1, 1]).slow_start.is_some());
    }

    #[test]
    fn a_spent_budget_refuses_retries() {
        let u = upstream("retry_budget: {ratio: 0%, min_per_second: 1}", &[1]);
        let allowed = (0..20).filter(|_| u.may_retry()).count();
        assert_eq!(allowed, 10);
        assert!(upstream("{}", &[1]).may_retry());
    }
}
