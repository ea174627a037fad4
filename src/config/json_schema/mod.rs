//! The JSON Schema (draft 2020-12) of the topology file, generated from the
//! same types that parse it (`tollgate schema` prints it).
//!
//! Every config type derives `schemars::JsonSchema` beside `Deserialize`, so
//! a key's doc comment is its description, `deny_unknown_fields` is
//! `additionalProperties: false`, and serde's renames and defaults carry over.
//! Values in a syntax of their own have their schema in [`values`].
//!
//! The generated schema is then put right where the derive cannot know how a
//! value is written ([`written_as_in_the_file`]): a `std::time::Duration`
//! (which schemars describes as `{secs, nanos}`) is a duration string
//! wherever it appears, also on a field that forgot its `#[schemars(with)]`,
//! and defaults are shown as they are written (`30s`, `10MiB`, never
//! `{"secs": 30}` or `10485760`).

pub mod values;

pub use values::*;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The schema of the topology file, as a JSON value.
pub fn topology_schema() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<super::Config>();
    let mut value = schema.to_value();
    if let Value::Object(root) = &mut value {
        root.insert("title".into(), json!("tollgate topology file"));
    }
    written_as_in_the_file(&mut value);
    value
}

/// Rewrites, in `node` and every schema below it, what schemars derived from
/// Rust types into what the file holds: durations as strings, defaults as
/// written, and no default a value of the wrong kind.
pub(crate) fn written_as_in_the_file(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if is_duration_struct(map) {
                *map = duration_schema();
            }
            if let Some(default) = map.get("default").cloned() {
                match written_default(map, default) {
                    Some(written) => map.insert("default".into(), written),
                    None => map.remove("default"),
                };
            }
            map.values_mut().for_each(written_as_in_the_file);
        }
        Value::Array(items) => items.iter_mut().for_each(written_as_in_the_file),
        _ => {}
    }
}

/// schemars's schema of `std::time::Duration`: `{secs, nanos}`.
fn is_duration_struct(schema: &Map<String, Value>) -> bool {
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return false;
    };
    properties.len() == 2 && properties.contains_key("secs") && properties.contains_key("nanos")
}

fn duration_schema() -> Map<String, Value> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("string"));
    schema.insert("pattern".into(), json!(DURATION_PATTERN));
    schema
}

/// The default of `schema` as the file writes it, or `None` when it cannot be
/// written so (a value of another type than the schema's).
fn written_default(schema: &Map<String, Value>, default: Value) -> Option<Value> {
    if let Some(text) = duration_text(&default) {
        return Some(json!(text));
    }
    let pattern = schema.get("pattern").and_then(Value::as_str);
    if pattern == Some(SIZE_PATTERN) {
        return default.as_u64().map(|bytes| json!(size_text(bytes)));
    }
    let expects_string = schema.get("type").and_then(Value::as_str) == Some("string");
    if expects_string && !default.is_string() {
        return None;
    }
    Some(default)
}

/// `{"secs": 30, "nanos": 0}` as `30s` (the largest unit that is exact).
fn duration_text(value: &Value) -> Option<String> {
    let secs = value.get("secs")?.as_u64()?;
    let nanos = value.get("nanos")?.as_u64()?;
    let millis = secs.checked_mul(1000)? + nanos / 1_000_000;
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    Some(
        units
            .iter()
            .find(|(size, _)| millis > 0 && millis.is_multiple_of(*size))
            .map_or(format!("{millis}ms"), |(size, unit)| {
                format!("{}{unit}", millis / size)
            }),
    )
}

/// A number of bytes as `10MiB` (the largest unit that is exact).
fn size_text(bytes: u64) -> String {
    let units = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    units
        .iter()
        .find(|(size, _)| bytes > 0 && bytes.is_multiple_of(*size))
        .map_or(format!("{bytes}B"), |(size, unit)| {
            format!("{}{unit}", bytes / size)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `check` with the path and schema of every object property.
    fn each_property(node: &Value, path: &str, check: &mut dyn FnMut(&str, &Value)) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(properties)) = map.get("properties") {
                    for (name, property) in properties {
                        check(&format!("{path}.{name}"), property);
                    }
                }
                for (key, child) in map {
                    each_property(child, &format!("{path}/{key}"), check);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| each_property(i, path, check)),
            _ => {}
        }
    }

    #[test]
    fn every_key_has_its_doc_comment_as_description() {
        let schema = topology_schema();
        let mut undocumented = Vec::new();
        each_property(&schema, "", &mut |path, property| {
            let described = property
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                undocumented.push(path.to_string());
            }
        });
        assert!(
            undocumented.is_empty(),
            "keys without a doc comment: {undocumented:#?}"
        );
    }

    #[test]
    fn durations_and_defaults_read_as_in_the_file() {
        let schema = topology_schema();
        let text = schema.to_string();
        assert!(!text.contains("\"secs\""), "a Duration left as an object");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let server = &schema["$defs"]["ServerConfig"]["properties"];
        let grace = crate::config::defaults::grace_period().as_secs();
        assert_eq!(server["grace_period"]["default"], format!("{grace}s"));
        assert_eq!(server["grace_period"]["pattern"], DURATION_PATTERN);
        assert_eq!(server["max_request_body"]["default"], "10MiB");
        assert_eq!(server["max_request_body"]["pattern"], SIZE_PATTERN);
        assert_eq!(
            schema["$defs"]["ServerConfig"]["additionalProperties"],
            false
        );
        let required = schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("server")) && required.contains(&json!("routes")));
    }

    #[test]
    fn a_duration_without_its_schema_attribute_still_reads_as_a_string() {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Forgotten {
            /// A key added without `#[schemars(with)]`.
            timeout: std::time::Duration,
        }
        let generator = SchemaSettings::draft2020_12().into_generator();
        let mut value = generator.into_root_schema_for::<Forgotten>().to_value();
        written_as_in_the_file(&mut value);
        let timeout = &value["$defs"]["Duration"];
        assert_eq!(timeout["type"], "string", "{value:#}");
        assert_eq!(timeout["pattern"], DURATION_PATTERN);
    }

    #[test]
    fn defaults_are_written_with_the_largest_exact_unit() {
        assert_eq!(
            duration_text(&json!({"secs": 90, "nanos": 0})),
            Some("90s".into())
        );
        assert_eq!(
            duration_text(&json!({"secs": 120, "nanos": 0})),
            Some("2m".into())
        );
        assert_eq!(
            duration_text(&json!({"secs": 0, "nanos": 250_000_000})),
            Some("250ms".into())
        );
        assert_eq!(
            duration_text(&json!({"secs": 0, "nanos": 0})),
            Some("0ms".into())
        );
        assert_eq!(size_text(10 << 20), "10MiB");
        assert_eq!(size_text(1500), "1500B");
        assert_eq!(size_text(64 << 10), "64KiB");
    }
}
