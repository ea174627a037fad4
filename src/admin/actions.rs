//! What the admin API changes: drains, weights, reloads. Each is logged with
//! who asked. Drains and weights last until the next reload or restart,
//! which compile the topology file again; the answers say so.

use super::{Admin, Answer};
use crate::topology::RuntimeChangeError;
use serde_json::json;
use std::sync::Arc;

/// What every answer of a runtime change says of its lifetime.
const NOT_PERSISTED: &str = "this change is not written to the topology file: a reload or \
                             restart undoes it (set it in the file to keep it)";

impl Admin {
    /// `POST .../drain` and `.../undrain`.
    pub(super) fn set_drained(&self, name: &str, address: &str, drain: bool, who: &str) -> Answer {
        let topology = self.topology.load_full();
        let (upstream, backend) = match topology.find_backend(name, address) {
            Ok(found) => found,
            Err(e) => return not_found(e, name, address),
        };
        let backend = &topology.upstreams[upstream].backends[backend];
        let changed = backend.state.set_drained(drain);
        let verb = if drain { "drained" } else { "undrained" };
        if changed {
            log::warn!(
                "admin: backend {} of upstream {name} {verb} by {who}",
                backend.label
            );
        }
        Answer::ok(json!({
            "upstream": name,
            "address": backend.address.to_string(),
            "state": backend.state.state_name(),
            "in_flight": backend.state.in_flight().max(0),
            "changed": changed,
            "persisted": false,
            "note": NOT_PERSISTED,
        }))
    }

    /// `PUT .../weight` with `{"weight": N}`, N from 1 to 1000.
    pub(super) fn set_weight(&self, name: &str, address: &str, body: &[u8], who: &str) -> Answer {
        let weight = match parse_weight(body) {
            Ok(weight) => weight,
            Err(why) => return Answer::error(400, why),
        };
        let _writing = crate::topology::WRITES.lock();
        let live = self.topology.load_full();
        let next = match live.with_weight(name, address, weight) {
            Ok(next) => next,
            Err(RuntimeChangeError::Discovered) => {
                return Answer::error(
                    409,
                    format!("the backends of upstream `{name}` and their weights come from DNS"),
                )
            }
            Err(e) => return not_found(e, name, address),
        };
        // The checks first: a probe that lands in between records on the
        // upstream that is about to serve.
        let _ = self.plans.send(next.check_plans.clone());
        self.topology.store(Arc::new(next));
        log::warn!("admin: backend {address} of upstream {name} set to weight {weight} by {who}");
        Answer::ok(json!({
            "upstream": name,
            "address": address,
            "weight": weight,
            "persisted": false,
            "note": NOT_PERSISTED,
        }))
    }

    /// `POST /api/reload`: reads the topology file again, as SIGHUP does.
    pub(super) fn reload(&self, who: &str) -> Answer {
        let why = format!("admin API, asked by {who}");
        match self.reloader.reload_reported(&why) {
            Ok(()) => Answer::ok(json!({
                "result": "success",
                "source": self.reloader.path().display().to_string(),
                "note": "drains and weights set through the admin API are undone",
            })),
            Err(errors) => Answer {
                status: 422,
                body: json!({
                    "result": "error",
                    "error": "the topology file is not valid; the running topology is unchanged",
                    "problems": errors.to_string(),
                }),
                allow: None,
            },
        }
    }
}

fn not_found(e: RuntimeChangeError, name: &str, address: &str) -> Answer {
    match e {
        RuntimeChangeError::NoUpstream => Answer::error(404, format!("no upstream `{name}`")),
        _ => Answer::error(404, format!("upstream `{name}` has no backend `{address}`")),
    }
}

/// The weight of a `{"weight": N}` body: an integer from 1 to 1000.
fn parse_weight(body: &[u8]) -> Result<u32, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("expected a JSON body {{\"weight\": N}}: {e}"))?;
    let weight = value
        .get("weight")
        .and_then(serde_json::Value::as_u64)
        .ok_or("expected {\"weight\": N} with N a whole number")?;
    if !(1..=u64::from(crate::config::MAX_WEIGHT)).contains(&weight) {
        return Err(format!(
            "weight {weight} is out of range: expected 1 to {}",
            crate::config::MAX_WEIGHT
        ));
    }
    Ok(weight as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_whole_numbers_in_range() {
        assert_eq!(parse_weight(br#"{"weight": 5}"#), Ok(5));
        assert!(parse_weight(br#"{"weight": 0}"#).is_err());
        assert!(parse_weight(br#"{"weight": 1001}"#).is_err());
        assert!(parse_weight(br#"{"weight": 2.5}"#).is_err());
        assert!(parse_weight(br#"{"weight": "3"}"#).is_err());
        assert!(parse_weight(b"five").is_err());
    }
}
