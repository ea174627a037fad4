//! A listener's `http3`: `true` (QUIC on UDP at the listener's address, with
//! the default limits), `false`, or the limits themselves:
//! `http3: {max_streams: 100, idle_timeout: 30s, retry: auto}`.

use crate::config::units;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The QUIC limits of an `http3` listener.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http3Config {
    /// Requests (bidirectional streams) a client may have open at once on
    /// one connection; more wait for one to end.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// A connection with no packet for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "units::duration")]
    #[schemars(with = "crate::config::json_schema::Duration")]
    pub idle_timeout: Duration,
    /// When a new client's address is validated with a Retry first.
    #[serde(default)]
    pub retry: Http3Retry,
}

impl Default for Http3Config {
    fn default() -> Self {
        Http3Config {
            max_streams: default_max_streams(),
            idle_timeout: default_idle_timeout(),
            retry: Http3Retry::default(),
        }
    }
}

/// `http3.retry`: when a client's first packet is answered with a Retry (a
/// round trip that proves the client receives at its address, RFC 9000 8.1)
/// before any handshake work is spent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Http3Retry {
    /// Once more handshakes are in flight than a listener normally has (a
    /// flood of Initial packets from spoofed addresses): no extra round trip
    /// otherwise.
    #[default]
    Auto,
    /// Every new connection (one more round trip for each).
    Always,
}

fn default_max_streams() -> u32 {
    100
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// serde adapter for `http3`: a boolean or the map of [`Http3Config`];
/// `None` when off.
pub(crate) fn http3<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Http3Config>, D::Error> {
    struct Http3Visitor;

    impl<'de> Visitor<'de> for Http3Visitor {
        type Value = Option<Http3Config>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a map of max_streams, idle_timeout and retry")
        }

        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(Http3Config::default))
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
            Http3Config::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    de.deserialize_any(Http3Visitor)
}
