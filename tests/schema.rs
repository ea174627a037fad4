//! `tollgate schema`: the JSON Schema (draft 2020-12) of the topology file,
//! held by check-jsonschema (PyPI, in the tests' virtualenv) against every
//! example: each file in config/, the package's default topology, the
//! topology of the EC2 cloud-init file and every YAML block of the README
//! (a fragment completed with a minimal listener and route). A broken example
//! is refused by both the schema and `tollgate -t`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_yaml::{Mapping, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `tollgate schema`, written to a file once.
fn schema() -> &'static (PathBuf, serde_json::Value) {
    static SCHEMA: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let output = Command::new(TOLLGATE).arg("schema").output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let path = write_file(
            &temp_dir("schema"),
            "tollgate.schema.json",
            std::str::from_utf8(&output.stdout).unwrap(),
        );
        (path, value)
    })
}

/// check-jsonschema on `files`: its success and what it said.
fn check_jsonschema(files: &[PathBuf]) -> (bool, String) {
    let program = python().with_file_name("check-jsonschema");
    run(Command::new(&program)
        .arg("--schemafile")
        .arg(&schema().0)
        .args(files))
}

#[test]
fn the_schema_is_draft_2020_12_with_descriptions_and_the_units_as_written() {
    let (_, schema) = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let server = &schema["$defs"]["ServerConfig"];
    assert_eq!(server["additionalProperties"], false);
    let grace = &server["properties"]["grace_period"];
    assert!(
        grace["description"]
            .as_str()
            .unwrap()
            .contains("in flight may finish"),
        "{grace}"
    );
    assert_eq!(grace["type"], "string");
    assert!(grace["pattern"].as_str().unwrap().contains("ms|s|m|h|d"));
    let algorithm = &schema["$defs"]["Algorithm"];
    let text = algorithm.to_string();
    for name in [
        "round_robin",
        "ip_hash",
        "hash",
        "least_connections",
        "least_time",
    ] {
        assert!(text.contains(&format!("\"{name}\"")), "{algorithm}");
    }
    // The schema itself is valid 2020-12: check-jsonschema checks it first.
    let (ok, output) = check_jsonschema(&[Path::new(ROOT).join("config/tollgate.yaml")]);
    assert!(ok, "{output}");
}

#[test]
fn every_example_file_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files.push(Path::new(ROOT).join("deploy/debian/tollgate.yaml"));
    let user_data =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/ec2/user-data.yaml")).unwrap();
    let data: Value = serde_yaml::from_str(&user_data).unwrap();
    let topology = data["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some("/etc/tollgate/tollgate.yaml"))
        .and_then(|f| f["content"].as_str())
        .expect("the topology of user-data.yaml");
    files.push(write_file(
        &temp_dir("ec2"),
        "user-data-topology.yaml",
        topology,
    ));
    let (ok, output) = check_jsonschema(&files);
    assert!(ok, "{output}");
    assert!(output.contains("ok -- validation done"), "{output}");
}

/// The YAML blocks of the README with the line each starts at.
fn readme_blocks() -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some((i + 2, Vec::new())),
            Some((start, lines)) if line.trim_start() == "```" => {
                blocks.push((*start, dedent(lines)));
                current = None;
            }
            Some((_, lines)) => lines.push(line),
            None => {}
        }
    }
    blocks
}

/// `lines` with the indentation they all share removed.
fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `fragment` laid over `base`: mappings merged key by key, anything else
/// replaced.
fn merge(base: &mut Value, fragment: Value) {
    match (base, fragment) {
        (Value::Mapping(base), Value::Mapping(fragment)) => {
            for (key, value) in fragment {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, fragment) => *base = fragment,
    }
}

/// The keys of the schema's object `pointer` (`/properties`).
fn keys_at(pointer: &str) -> Vec<String> {
    schema()
        .1
        .pointer(pointer)
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_topology_of_the_readme_validates() {
    let top = keys_at("/properties");
    let server = keys_at("/$defs/ServerConfig/properties");
    let dir = temp_dir("readme");
    let mut files = Vec::new();
    let blocks = readme_blocks();
    assert!(
        blocks.len() >= 10,
        "{} YAML blocks in the README",
        blocks.len()
    );
    for (line, text) in &blocks {
        let parsed: Value = serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("README.md:{line}: not YAML: {e}\n{text}"));
        let fragment = match parsed {
            Value::Mapping(fragment) => fragment,
            // Comments alone (the `yaml-language-server` line).
            Value::Null if text.lines().all(|l| l.trim_start().starts_with('#')) => continue,
            _ => panic!("README.md:{line}: not a mapping:\n{text}"),
        };
        let names: Vec<String> = fragment
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        // A block is a topology, or a part of one: its top-level keys, or keys
        // of `server:` shown on their own.
        let fragment = if names.iter().all(|n| top.contains(n)) {
            Value::Mapping(fragment)
        } else if names.iter().all(|n| server.contains(n)) {
            let mut wrapped = Mapping::new();
            wrapped.insert("server".into(), Value::Mapping(fragment));
            Value::Mapping(wrapped)
        } else {
            panic!("README.md:{line}: keys {names:?} are neither a topology's nor server's");
        };
        let mut topology: Value = serde_yaml::from_str(
            "server: {listeners: [{address: 127.0.0.1:8080}]}\n\
             routes: [{match: {path: /}, respond: {status: 200}}]\n",
        )
        .unwrap();
        merge(&mut topology, fragment);
        let json = serde_json::to_string_pretty(&topology).unwrap();
        files.push(write_file(
            &dir,
            &format!("README.md-line-{line}.json"),
            &json,
        ));
    }
    let (ok, output) = check_jsonschema(&files);
    assert!(ok, "README topologies that fail the schema:\n{output}");
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(readme.contains("# yaml-language-server: $schema="));
}

#[test]
fn a_broken_example_is_refused_by_the_schema_and_by_tollgate_t() {
    let example = std::fs::read_to_string(Path::new(ROOT).join("config/tollgate.yaml")).unwrap();
    let dir = temp_dir("broken");
    for (what, from, to, says) in [
        (
            "a misspelt key",
            "    strip_prefix: true\n",
            "    strip_prefx: true\n",
            "strip_prefx",
        ),
        (
            "a duration without its unit",
            "  grace_period: 5s\n",
            "  grace_period: 5\n",
            "grace_period",
        ),
        (
            "an unknown algorithm",
            "    algorithm: least_connections\n",
            "    algorithm: fewest\n",
            "fewest",
        ),
        (
            "a size for a listener address",
            "    - address: 127.0.0.1:8080\n",
            "    - address: 10MiB\n",
            "10MiB",
        ),
    ] {
        assert!(
            example.contains(from),
            "config/tollgate.yaml lacks {from:?}"
        );
        let broken = example.replacen(from, to, 1);
        let file = write_file(&dir, "broken.yaml", &broken);
        let (ok, output) = check_jsonschema(std::slice::from_ref(&file));
        assert!(!ok, "the schema accepted {what}:\n{output}");
        assert!(output.contains(says), "{what}: {output}");
        let checked = check_topology(&broken);
        assert!(
            !checked.ok,
            "tollgate -t accepted {what}:\n{}",
            checked.output
        );
        let line = broken.lines().position(|l| l == to.trim_end()).unwrap() + 1;
        assert!(
            checked
                .output
                .contains(&format!("{}:{line}:", checked.file)),
            "{what}: tollgate -t names no line {line}:\n{}",
            checked.output
        );
    }
    // And the example as it is passes both.
    let (ok, output) = check_jsonschema(&[Path::new(ROOT).join("config/tollgate.yaml")]);
    assert!(ok, "{output}");
    let checked = check_topology(&example);
    assert!(checked.ok, "{}", checked.output);
}
