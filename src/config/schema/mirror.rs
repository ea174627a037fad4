//! A route's `mirror:`: copies of a share of its requests sent to another
//! upstream, whose answers never reach clients (see `mirror`).

use super::defaults;
use crate::config::json_schema as js;
use crate::config::units;
use crate::config::Percent;
use serde::Deserialize;
use std::time::Duration;

/// `mirror: {upstream, percent, max_body, max_in_flight, timeout}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The upstream the copies go to (the "shadow").
    pub upstream: String,
    /// The share of the route's requests copied, `10%` or `10`; fractions
    /// (`0.5%`) allowed. Default 100%.
    #[serde(default = "defaults::mirror_percent")]
    pub percent: Percent,
    /// Requests with a longer body are not copied (counted as dropped).
    #[serde(
        default = "defaults::mirror_max_body",
        deserialize_with = "units::byte_size"
    )]
    #[schemars(with = "js::ByteSize")]
    pub max_body: u64,
    /// Copies of this route on their way at once; beyond, copies are dropped.
    #[serde(default = "defaults::mirror_max_in_flight")]
    pub max_in_flight: u32,
    /// The whole exchange of one copy with the shadow, connect to the last
    /// byte of its answer.
    #[serde(
        default = "defaults::mirror_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub timeout: Duration,
}
