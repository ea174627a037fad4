//! The files in deploy/, checked by the tools that read them: systemd's own
//! verifier, cloud-init's schema, promtool; the topology inside the cloud-init
//! file by `tollgate -t`; the release (`make dist`): the package cloud-init
//! installs, the tarball, their checksums and the release notes that list them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists: point it at this build.
    let unit = std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/tollgate.service"))
        .expect("unit file");
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "User=tollgate",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ExecReload=/usr/bin/tollgate -c /etc/tollgate/tollgate.yaml reload",
        "StateDirectory=tollgate",
        "CacheDirectory=tollgate",
        "LogsDirectory=tollgate",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let dir = temp_dir("systemd");
    let path = write_file(
        &dir,
        "tollgate.service",
        &unit.replace("/usr/bin/tollgate", TOLLGATE),
    );
    let (ok, output) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok, "systemd-analyze verify failed:\n{output}");
    // Unknown keys and other mistakes are warnings with a zero exit: none allowed.
    assert!(
        output.trim().is_empty(),
        "systemd-analyze verify warned:\n{output}"
    );

    // The verifier does catch a mistake (so the check above means something).
    let broken = write_file(
        &dir,
        "broken.service",
        &unit
            .replace("/usr/bin/tollgate", TOLLGATE)
            .replace("ProtectHome=yes", "ProtectHome=very"),
    );
    let (_, output) = run(Command::new("systemd-analyze").arg("verify").arg(&broken));
    assert!(
        output.contains("very"),
        "no complaint about ProtectHome=very:\n{output}"
    );
}

#[test]
fn cloud_init_user_data_passes_the_schema_and_carries_a_valid_topology() {
    let path = Path::new(ROOT).join("deploy/ec2/user-data.yaml");
    let (ok, output) = run(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path));
    assert!(ok, "cloud-init schema failed:\n{output}");
    assert!(output.contains("Valid cloud-config"), "{output}");

    let text = std::fs::read_to_string(&path).expect("user-data");
    let data: serde_yaml::Value = serde_yaml::from_str(&text).expect("user-data YAML");
    let files = data["write_files"].as_sequence().expect("write_files");
    let topology = files
        .iter()
        .find(|f| f["path"].as_str() == Some("/etc/tollgate/tollgate.yaml"))
        .and_then(|f| f["content"].as_str())
        .expect("the topology in write_files");
    let checked = check_topology(topology);
    assert!(
        checked.ok,
        "the EC2 topology is invalid:\n{}",
        checked.output
    );
    assert!(topology.contains("pid_file: /run/tollgate/tollgate.pid"));

    // runcmd installs the Debian package of `make dist`, checked first, keeping
    // the topology written above (tests/debian_package.rs installs it the same
    // way over a topology already there); the package starts the service.
    let script = data["runcmd"][0][2].as_str().expect("runcmd script");
    for needed in [
        "package_url=\"https://releases.example.com/tollgate/tollgate_",
        "_amd64.deb\"",
        "sha256sum -c",
        "apt-get install -y -o Dpkg::Options::=--force-confold \"$work/tollgate.deb\"",
        "systemctl is-active --quiet tollgate",
    ] {
        assert!(script.contains(needed), "runcmd lacks {needed}:\n{script}");
    }
    for gone in ["tar -x", "/usr/local/bin", "systemctl enable"] {
        assert!(!script.contains(gone), "runcmd still has {gone}:\n{script}");
    }
    assert!(
        data.get("users").is_none(),
        "the package makes the tollgate user"
    );
}

#[test]
fn the_release_holds_the_package_and_the_tarball_with_their_checksums_and_notes() {
    let out = temp_dir("dist");
    let (ok, output) = run(Command::new("sh")
        .arg(Path::new(ROOT).join("deploy/dist.sh"))
        .arg(TOLLGATE)
        .arg(&out));
    assert!(ok, "dist.sh failed:\n{output}");
    let paths: Vec<&str> = output.trim().lines().rev().take(3).collect();
    let (notes, tarball, deb) = (paths[0], paths[1], paths[2]);
    let deb_name = Path::new(deb).file_name().unwrap().to_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb_name.starts_with(&format!("tollgate_{version}-1_")) && deb_name.ends_with(".deb"),
        "{deb_name}"
    );
    for file in [deb, tarball] {
        let (ok, checksum) = run(Command::new("sha256sum")
            .args(["-c", &format!("{file}.sha256")])
            .current_dir(&out));
        assert!(ok, "{checksum}");
    }
    let unpacked = temp_dir("unpacked");
    let (ok, output) = run(Command::new("tar")
        .args(["-xzf", tarball, "--strip-components=1", "-C"])
        .arg(&unpacked));
    assert!(ok, "{output}");
    for file in [
        "bin/tollgate",
        "deploy/systemd/tollgate.service",
        "deploy/prometheus/tollgate-alerts.yml",
        "grafana/dashboards/tollgate.json",
        "config/tollgate.yaml",
        "README.md",
    ] {
        assert!(unpacked.join(file).is_file(), "the tarball lacks {file}");
    }
    let (ok, version_line) = run(Command::new(unpacked.join("bin/tollgate")).arg("--version"));
    assert!(
        ok && version_line.starts_with("tollgate "),
        "{version_line}"
    );

    // The release notes list both downloads with their checksums, and say how
    // to install the package.
    let notes = std::fs::read_to_string(notes).unwrap();
    let sum = |file: &str| {
        let text = std::fs::read_to_string(format!("{file}.sha256")).unwrap();
        text.split_whitespace().next().unwrap().to_string()
    };
    let tarball_name = Path::new(tarball).file_name().unwrap().to_str().unwrap();
    for needed in [
        format!("# tollgate {version}"),
        format!("| `{deb_name}` | Debian/Ubuntu package | `{}` |", sum(deb)),
        format!("| `{tarball_name}` |"),
        sum(tarball),
        format!("sudo apt-get install ./{deb_name}"),
        "## Changes".to_string(),
    ] {
        assert!(notes.contains(&needed), "the notes lack {needed}:\n{notes}");
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&unpacked);
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let dir = Path::new(ROOT).join("deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "tollgate-alerts.yml"][..],
        // Each alert fires on the series meant to raise it, and only on those.
        &["test", "rules", "tollgate-alerts.test.yml"][..],
    ] {
        let (ok, output) = run(Command::new("promtool").args(args).current_dir(&dir));
        assert!(ok, "promtool {args:?} failed:\n{output}");
    }
    let rules = std::fs::read_to_string(dir.join("tollgate-alerts.yml")).expect("rules");
    for alert in [
        "TollgateBackendDown",
        "TollgateUpstreamDown",
        "TollgateHighErrorRatio",
        "TollgateHighLatencyP99",
        "TollgateRateLimitSurge",
        "TollgateReloadFailed",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "no {alert} rule"
        );
    }
}

#[test]
fn the_cloudformation_stack_passes_cfn_lint_and_checks_a_route_of_the_user_data() {
    let template = Path::new(ROOT).join("deploy/ec2/cloudformation.yaml");
    let cfn_lint = common::python().with_file_name("cfn-lint");
    let (ok, output) = run(Command::new(&cfn_lint).arg(&template));
    assert!(ok, "cfn-lint failed:\n{output}");

    // The NLB's health check asks the topology of user-data.yaml for a route
    // tollgate answers itself; the instances run that user data.
    let text = std::fs::read_to_string(&template).unwrap();
    let stack: serde_yaml::Value =
        serde_yaml::from_str(&text.replace("!Ref ", "").replace("!GetAtt ", "")).unwrap();
    let path = stack["Parameters"]["HealthCheckPath"]["Default"]
        .as_str()
        .unwrap();
    let user_data =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/ec2/user-data.yaml")).unwrap();
    assert!(
        user_data.contains(&format!("match: {{path: {path}}}")),
        "user-data.yaml has no route for {path}"
    );
    let launch = &stack["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
    assert_eq!(launch["UserData"].as_str(), Some("UserData"));
    let group = &stack["Resources"]["Instances"]["Properties"];
    assert_eq!(group["HealthCheckType"].as_str(), Some("ELB"));
}
