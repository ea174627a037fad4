//! Checks of a route's `cors:` that its types cannot express.

use super::Problems;
use crate::config::schema::{CorsConfig, CorsOrigin, RouteConfig};

/// `cors` of the route at `at`: origins listed (`*` alone, and never with
/// credentials), methods listed, `max_age` in whole seconds, preflights
/// counted only where there is a limit to count them against, and no other
/// setting of the `Access-Control-*` headers the policy writes.
pub(super) fn check(at: &str, route: &RouteConfig, cors: &CorsConfig, problems: &mut Problems) {
    let at_cors = format!("{at}.cors");
    if cors.origins.is_empty() {
        problems.push(
            format!("{at_cors}.origins"),
            "list at least one origin (`https://app.example.com`), or `[\"*\"]` for every origin",
        );
    }
    for (i, origin) in cors.origins.iter().enumerate() {
        match origin {
            CorsOrigin::Any => {}
            CorsOrigin::Listed(_) => continue,
            CorsOrigin::Invalid(why) => {
                problems.push(format!("{at_cors}.origins[{i}]"), why.as_str());
                continue;
            }
        }
        if cors.origins.len() > 1 {
            problems.push(
                format!("{at_cors}.origins[{i}]"),
                "`*` allows every origin: it stands alone, without other origins",
            );
        }
        if cors.credentials {
            problems.push(
                format!("{at_cors}.origins[{i}]"),
                "`*` cannot be used with `credentials: true`: browsers refuse credentialed \
                 answers that allow any origin; list the origins instead",
            );
        }
    }
    if cors.methods.is_empty() {
        problems.push(
            format!("{at_cors}.methods"),
            "list at least one method, or leave `methods` out for GET, HEAD and POST",
        );
    }
    if cors.max_age.is_some_and(|age| age.subsec_nanos() != 0) {
        problems.push(
            format!("{at_cors}.max_age"),
            "Access-Control-Max-Age is in whole seconds: write e.g. `600s` or `10m`",
        );
    }
    if cors.count_preflights && route.rate_limit.is_none() {
        problems.push(
            format!("{at_cors}.count_preflights"),
            "count_preflights counts preflights against the route's `rate_limit`, and this \
             route has none",
        );
    }
    let set_elsewhere = route
        .response_headers
        .set
        .iter()
        .map(|(name, _)| ("response_headers.set", name))
        .chain(
            route
                .response_headers
                .remove
                .iter()
                .map(|name| ("response_headers.remove", name)),
        )
        .chain(
            route
                .respond
                .iter()
                .flat_map(|r| r.headers.iter().map(|(name, _)| ("respond.headers", name))),
        );
    for (key, name) in set_elsewhere {
        if name.name().as_str().starts_with("access-control-") {
            problems.push(
                format!("{at}.{key}"),
                format!("`{name}` is written by the route's `cors` policy: set it there"),
            );
        }
    }
}
