//! `tollgate -t -c FILE`: valid files exit 0; each kind of error exits non-zero
//! with FILE:LINE:COLUMN and a plain message, and nothing is started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{check_topology, TOLLGATE};
use std::process::Command;

const VALID: &str = "\
server:
  listeners:
    - address: 127.0.0.1:18080
upstreams:
  app:
    backends:
      - address: 127.0.0.1:19001
        weight: 2
      - address: 127.0.0.1:19002
    timeouts: {connect: 1s, read: 30s}
routes:
  - match: {path: /healthz}
    respond: {status: 200, body: ok}
  - match: {path_prefix: /}
    upstream: app
";

/// Runs `tollgate -t` on `contents`; returns (exit success, stdout + stderr, path).
fn check(contents: &str) -> (bool, String, String) {
    let result = check_topology(contents);
    (result.ok, result.output, result.file)
}

/// Asserts that `contents` is refused with an error at `line` mentioning `words`.
fn assert_refused(contents: &str, line: usize, words: &[&str]) {
    let (ok, text, path) = check(contents);
    assert!(!ok, "accepted:\n{contents}\n{text}");
    let located = format!("{path}:{line}:");
    assert!(text.contains(&located), "expected `{located}` in:\n{text}");
    for w in words {
        assert!(text.contains(w), "expected `{w}` in:\n{text}");
    }
}

#[test]
fn a_valid_file_passes() {
    let (ok, text, _) = check(VALID);
    assert!(ok, "{text}");
    assert!(
        text.contains("is valid (2 routes, 1 upstreams, 2 backends)"),
        "{text}"
    );
}

#[test]
fn unknown_key() {
    assert_refused(
        &VALID.replace("    timeouts:", "    timeoutz:"),
        10,
        &["unknown field `timeoutz`", "expected one of"],
    );
    assert_refused(
        &format!("{VALID}extra: 1\n"),
        16,
        &["unknown field `extra`"],
    );
}

#[test]
fn unknown_upstream_in_a_route() {
    assert_refused(
        &VALID.replace("    upstream: app", "    upstream: ap"),
        15,
        &["unknown upstream `ap`", "defined: app"],
    );
}

#[test]
fn empty_backends() {
    let text = VALID.replace(
        "      - address: 127.0.0.1:19001\n        weight: 2\n      - address: 127.0.0.1:19002\n",
        "",
    )
    .replace("    backends:\n", "    backends: []\n");
    assert_refused(&text, 6, &["at least one backend"]);
}

#[test]
fn weight_zero() {
    assert_refused(
        &VALID.replace("weight: 2", "weight: 0"),
        8,
        &["weight 0", "1 to 1000"],
    );
}

#[test]
fn bad_address() {
    assert_refused(
        &VALID.replace("127.0.0.1:19002", "127.0.0.1:99999"),
        9,
        &["invalid address `127.0.0.1:99999`"],
    );
    assert_refused(
        &VALID.replace("127.0.0.1:18080", "localhost"),
        3,
        &["invalid address `localhost`"],
    );
}

#[test]
fn bad_duration() {
    assert_refused(
        &VALID.replace("read: 30s", "read: 30"),
        10,
        &["invalid duration `30`", "250ms"],
    );
}

#[test]
fn two_routes_with_the_same_match() {
    let text = VALID.replace(
        "  - match: {path_prefix: /}\n    upstream: app\n",
        "  - match: {path: /healthz}\n    upstream: app\n",
    );
    assert_refused(&text, 14, &["same match", "routes[0]"]);
}

#[test]
fn a_route_needs_exactly_one_action() {
    let text = VALID.replace("    respond: {status: 200, body: ok}\n", "");
    assert_refused(&text, 12, &["exactly one action"]);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = VALID
        .replace("weight: 2", "weight: 0")
        .replace("    upstream: app", "    upstream: nope");
    let (ok, out, path) = check(&text);
    assert!(!ok);
    let first = out.find(&format!("{path}:8:")).expect("weight error");
    let second = out.find(&format!("{path}:15:")).expect("upstream error");
    assert!(first < second, "{out}");
}

#[test]
fn yaml_syntax_error() {
    assert_refused(
        &VALID.replace("routes:\n", "routes:\n  - match: {path: [\n"),
        12,
        &[],
    );
}

#[test]
fn missing_file() {
    let out = Command::new(TOLLGATE)
        .args(["-t", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the topology file"));
}

#[test]
fn example_topologies_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // edge.yaml names certificates that only exist on a real machine; the
        // edge_example test runs it with generated ones.
        let needs_machine_files = path.file_name().is_some_and(|n| n == "edge.yaml");
        if path.extension().is_some_and(|e| e == "yaml") && !needs_machine_files {
            let out = Command::new(TOLLGATE)
                .arg("-t")
                .arg("-c")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no example topology found");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(TOLLGATE).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--conf",
        "--test",
        "--upgrade",
        "--daemon",
        "--help",
        "--version",
        "reload",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn request_path_switches_take_their_values_only() {
    let switches = VALID.replace(
        "  listeners:",
        "  encoded_slashes: decode\n  underscores_in_headers: reject\n  listeners:",
    );
    let with_route = switches.replace(
        "    upstream: app\n",
        "    upstream: app\n    encoded_slashes: keep\n",
    );
    let (ok, text, _) = check(&with_route);
    assert!(ok, "{text}");
    assert_refused(
        &VALID.replace("  listeners:", "  encoded_slashes: allow\n  listeners:"),
        2,
        &["unknown variant `allow`", "reject", "decode", "keep"],
    );
    assert_refused(
        &VALID.replace(
            "  listeners:",
            "  underscores_in_headers: yes\n  listeners:",
        ),
        2,
        &["unknown variant `yes`", "drop"],
    );
}

#[test]
fn route_paths_are_written_as_they_are_matched() {
    for (written, says) in [
        ("/caf%C3%A9/", "write `/café/`"),
        ("/a/../b/", "write `/b/`"),
        ("//a", "write `/a`"),
        ("/a;b", "cannot hold `;`"),
        ("/a%2Fb", "without escapes"),
    ] {
        assert_refused(
            &VALID.replace(
                "{path_prefix: /}",
                &format!("{{path_prefix: \"{written}\"}}"),
            ),
            14,
            &["routes[1].match", says],
        );
    }
}

#[test]
fn every_bad_backend_address_is_reported_at_once() {
    let file = VALID
        .replace(
            "      - address: 127.0.0.1:19001\n",
            "      - address: no-such-host.invalid:8080\n",
        )
        .replace(
            "      - address: 127.0.0.1:19002\n",
            "      - address: localhost\n      - address: \"localhost:19003\"\n      - address: 127.0.0.1:19003\n",
        );
    let (ok, text, path) = check(&file);
    assert!(!ok, "{text}");
    for (line, says) in [
        (7, "cannot resolve `no-such-host.invalid`"),
        (9, "no port"),
        (11, "as backends[2] is"),
    ] {
        assert!(
            text.contains(&format!("{path}:{line}:")),
            "line {line} in:\n{text}"
        );
        assert!(text.contains(says), "`{says}` in:\n{text}");
    }
}
