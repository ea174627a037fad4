//! Checks of a route's `mirror:` that its types cannot express.

use super::{listing, Problems};
use crate::config::schema::{Config, MirrorConfig, RouteConfig};

/// The most copies of one route in flight at once that `max_in_flight` may allow.
const MAX_IN_FLIGHT: u32 = 100_000;

/// `mirror` of the route at `at`: a known upstream, on a route that sends
/// requests on, a bound of copies in flight from 1 to [`MAX_IN_FLIGHT`], and
/// a timeout above zero.
pub(super) fn check(
    at: &str,
    config: &Config,
    route: &RouteConfig,
    mirror: &MirrorConfig,
    problems: &mut Problems,
) {
    let at = format!("{at}.mirror");
    if !config.upstreams.contains_key(&mirror.upstream) {
        problems.push(
            format!("{at}.upstream"),
            format!(
                "unknown upstream `{}` (defined: {})",
                mirror.upstream,
                listing(config.upstreams.keys())
            ),
        );
    }
    if !route.proxies() {
        problems.push(
            at.as_str(),
            "only a route with an `upstream` or `split` has requests to mirror",
        );
    }
    if !(1..=MAX_IN_FLIGHT).contains(&mirror.max_in_flight) {
        problems.push(
            format!("{at}.max_in_flight"),
            format!(
                "{} is out of range: expected 1 to {MAX_IN_FLIGHT} copies in flight",
                mirror.max_in_flight
            ),
        );
    }
    if mirror.timeout.is_zero() {
        problems.push(
            format!("{at}.timeout"),
            "a mirror's timeout must be above zero, e.g. `5s`",
        );
    }
}
