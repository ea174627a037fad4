//! Changes the admin API makes to a running topology: a backend's weight.
//! Each gives a new topology to swap in, as a reload does; a reload or a
//! restart compiles the file again, so they last until then.

use super::{check_plan, Topology};
use crate::balance::Upstream;
use std::sync::Arc;

/// Why a runtime change cannot be made.
#[derive(Debug, PartialEq, Eq)]
pub enum RuntimeChangeError {
    /// No upstream of that name.
    NoUpstream,
    /// The upstream has no backend of that address.
    NoBackend,
    /// The upstream's backends come from DNS, with their weights.
    Discovered,
}

impl Topology {
    /// The index of upstream `name` and of its backend `address` (as
    /// `IP:port`, or as labelled: the address written in the file).
    pub fn find_backend(
        &self,
        name: &str,
        address: &str,
    ) -> Result<(usize, usize), RuntimeChangeError> {
        let index = self
            .upstreams
            .iter()
            .position(|u| u.name == name)
            .ok_or(RuntimeChangeError::NoUpstream)?;
        let backend = self.upstreams[index]
            .backends
            .iter()
            .position(|b| b.label == address || b.address.to_string() == address)
            .ok_or(RuntimeChangeError::NoBackend)?;
        Ok((index, backend))
    }

    /// This topology with backend `address` of upstream `name` at `weight`:
    /// the upstream rebuilt (its balancer's tables follow the weight), every
    /// backend's live state kept, its health checks following.
    pub fn with_weight(
        &self,
        name: &str,
        address: &str,
        weight: u32,
    ) -> Result<Topology, RuntimeChangeError> {
        let (index, backend) = self.find_backend(name, address)?;
        let before = &self.upstreams[index];
        if before.config.discovery.is_some() {
            return Err(RuntimeChangeError::Discovered);
        }
        let mut backends = before.backends.clone();
        backends[backend].weight = weight;
        let upstream = Arc::new(
            Upstream::new(before.name.clone(), backends, &before.config)
                .keeping_budget_of(Some(before)),
        );
        let mut check_plans = self.check_plans.clone();
        check_plans.retain(|plan| !Arc::ptr_eq(&plan.upstream, before));
        if let Some(plan) = check_plan(&upstream, &before.config) {
            check_plans.push(Arc::new(plan));
        }
        let mut upstreams = self.upstreams.clone();
        upstreams[index] = upstream;
        Ok(self.with_upstreams(upstreams, check_plans))
    }

    /// Ends the ejections and failure periods that ran out, and sets every
    /// backend's state gauges from its state now.
    pub fn refresh_backend_gauges(&self) {
        for backend in self.upstreams.iter().flat_map(|u| u.backends.iter()) {
            let _ = backend.state.is_up();
            backend.state.refresh_healthy_gauge();
        }
    }

    /// Ends the drains of every backend: a reload or restart forgets what the
    /// admin API changed. Returns whether any backend was drained.
    pub fn undrain_all(&self) -> bool {
        let mut any = false;
        for backend in self.upstreams.iter().flat_map(|u| u.backends.iter()) {
            if backend.state.is_drained() {
                any |= backend.state.set_drained(false);
            }
        }
        any
    }
}
