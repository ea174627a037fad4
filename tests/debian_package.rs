//! The Debian package of `make deb`, built by deploy/debian/build.sh with
//! cargo-deb from the binary under test, checked by lintian, and installed
//! with dpkg on this machine as an administrator would (the tests run as root,
//! as CI does): files, owners and modes, the user, `tollgate -t` on the
//! installed topology, `systemd-analyze verify` on the installed unit, the
//! man page, completions, the logrotate rule run for real, a graceful upgrade
//! to a second build of the package under load, `dpkg -r` and `dpkg -P`.
//!
//! On this machine, not in a scratch root: `dpkg --root` runs the maintainer
//! scripts chrooted into that root, where there is no shell, adduser or
//! tollgate to run them with, and what they are for (a system user, `tollgate
//! -t` run as that user, a running tollgate handed a new binary) only a real
//! system shows. The test cleans up after itself: the package is purged at the
//! end (also when a check fails), and /run/tollgate gets its owner back. It
//! refuses to run where a tollgate package it did not install is present.
//!
//! systemd is not PID 1 here (a container), so the maintainer scripts take
//! their path without it: the unit is enabled (its symlink made) but not
//! started, and this test starts the installed tollgate the way the unit does
//! (as the tollgate user, /run/tollgate its own, on /etc/tollgate/tollgate.yaml).
//! The upgrade is the path postinst takes with systemd too: `tollgate upgrade`
//! on the process in the pid file, which hands its sockets to the new binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CONF: &str = "/etc/tollgate/tollgate.yaml";
const UNIT: &str = "/lib/systemd/system/tollgate.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/tollgate.service";
const PID_FILE: &str = "/run/tollgate/tollgate.pid";

/// Runs a command without a terminal's questions; see [`common::run`].
fn run(command: &mut Command) -> (bool, String) {
    common::run(command.env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg(args: &[&str]) -> (bool, String) {
    run(Command::new("dpkg").args(args))
}

/// The package version of build `n`: the crate's version with a revision
/// that says it is the test's (so a package left by a killed run is known).
fn test_version(n: u32) -> String {
    format!("{}-0test{n}", env!("CARGO_PKG_VERSION"))
}

/// Build `n` of the package, made once per test process.
fn package(n: u32) -> PathBuf {
    static BUILDS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILDS[n as usize - 1]
        .get_or_init(|| {
            let out = temp_dir(&format!("deb-{n}"));
            let (ok, output) = run(Command::new("sh")
                .arg(Path::new(ROOT).join("deploy/debian/build.sh"))
                .arg(TOLLGATE)
                .arg(&out)
                .arg("--fast")
                .env("DEB_VERSION", test_version(n)));
            assert!(ok, "deploy/debian/build.sh failed:\n{output}");
            let deb = PathBuf::from(output.trim().lines().last().unwrap());
            let (_, arch) = run(Command::new("dpkg").arg("--print-architecture"));
            let name = format!("tollgate_{}_{}.deb", test_version(n), arch.trim());
            assert_eq!(deb, out.join(name), "{output}");
            deb
        })
        .clone()
}

#[test]
fn the_package_is_named_holds_its_files_and_passes_lintian() {
    let deb = package(1);
    let (ok, fields) = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
        "Package",
        "Version",
        "Depends",
        "Recommends",
        "Section",
    ]));
    assert!(ok, "{fields}");
    for needed in [
        "Package: tollgate",
        &format!("Version: {}", test_version(1)),
        "adduser",
        "libc6",
        "Recommends: logrotate",
        "Section: httpd",
    ] {
        assert!(fields.contains(needed), "no {needed} in:\n{fields}");
    }
    let (ok, conffiles) = run(Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("conffiles"));
    assert!(ok, "{conffiles}");
    assert!(conffiles.contains(CONF), "{conffiles}");
    assert!(
        conffiles.contains("/etc/logrotate.d/tollgate"),
        "{conffiles}"
    );
    let (ok, listing) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{listing}");
    for file in [
        "./usr/bin/tollgate",
        "./etc/tollgate/tollgate.yaml",
        "./lib/systemd/system/tollgate.service",
        "./etc/logrotate.d/tollgate",
        "./usr/share/man/man1/tollgate.1.gz",
        "./usr/share/bash-completion/completions/tollgate",
        "./usr/share/zsh/vendor-completions/_tollgate",
        "./usr/share/tollgate/tollgate.schema.json",
        "./usr/share/doc/tollgate/copyright",
        "./usr/share/doc/tollgate/changelog.Debian.gz",
    ] {
        assert!(listing.contains(file), "the package lacks {file}");
    }

    let (ok, output) = run(Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&deb));
    assert!(ok, "lintian failed:\n{output}");
    let errors: Vec<&str> = output.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{output}");
    eprintln!("lintian:\n{output}");
}

/// This machine while the test has the package on it: a package the test did
/// not install refuses the test; one a killed run left is purged. When
/// dropped, the package is purged and /run/tollgate gets its owner back.
struct Machine {
    run_dir: Option<(u32, u32, u32)>,
}

impl Machine {
    fn take() -> Machine {
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "installing the package on this machine needs root, as CI runs the tests"
        );
        let (known, status) = run(Command::new("dpkg-query").args([
            "-W",
            "-f",
            "${Version} ${db:Status-Status}",
            "tollgate",
        ]));
        let version = status.split_whitespace().next().unwrap_or("");
        let present = known && !status.contains("not-installed");
        if present && !version.contains("-0test") {
            panic!("a tollgate package ({status}) is on this machine: the test would replace it");
        }
        if present {
            let (ok, output) = dpkg(&["--purge", "tollgate"]);
            assert!(ok, "purging a package left by a killed run: {output}");
        }
        let (user_exists, _) = run(Command::new("getent").args(["passwd", "tollgate"]));
        assert!(
            !user_exists,
            "a tollgate user exists without the package: the test would delete it"
        );
        let run_dir = std::fs::metadata("/run/tollgate")
            .ok()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
        Machine { run_dir }
    }

    /// /run/tollgate as systemd's `RuntimeDirectory=tollgate` makes it.
    fn own_run_dir(&self) {
        std::fs::create_dir_all("/run/tollgate").unwrap();
        let (ok, output) = run(Command::new("chown").args(["tollgate:tollgate", "/run/tollgate"]));
        assert!(ok, "{output}");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let (ok, output) = dpkg(&["--purge", "tollgate"]);
        if !ok {
            eprintln!("cleaning up: dpkg --purge tollgate failed:\n{output}");
        }
        let (uid, gid, mode) = self.run_dir.unwrap_or((0, 0, 0o755));
        let _ = std::os::unix::fs::chown("/run/tollgate", Some(uid), Some(gid));
        let _ = std::fs::set_permissions("/run/tollgate", std::fs::Permissions::from_mode(mode));
    }
}

/// Asserts the owner, group and mode of `path`.
fn assert_owned(path: &str, user: &str, group: &str, mode: u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, ids) = run(Command::new("stat").args(["-c", "%U %G", path]));
    assert_eq!(ids.trim(), format!("{user} {group}"), "owner of {path}");
    assert_eq!(
        meta.mode() & 0o7777,
        mode,
        "mode of {path}: {:o}",
        meta.mode()
    );
}

/// Runs the installed tollgate with `args` as the tollgate user.
fn as_tollgate(args: &[&str]) -> (bool, String) {
    run(Command::new("setpriv")
        .args(["--reuid=tollgate", "--regid=tollgate", "--init-groups"])
        .arg("/usr/bin/tollgate")
        .args(args))
}

fn installed_version() -> String {
    let (_, version) = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "tollgate"]));
    version.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_upgrades_in_place_under_load_removes_and_purges() {
    let machine = Machine::take();
    let v1 = package(1);
    let v1 = v1.to_str().unwrap();

    an_invalid_topology_is_kept_and_not_started(v1);

    let (ok, output) = dpkg(&["-i", v1]);
    assert!(ok, "dpkg -i failed:\n{output}");
    assert!(!output.contains("does not pass"), "{output}");
    installed_files_users_and_unit_are_in_place();
    the_man_page_and_completions_are_installed();

    let service = run_and_rotate_the_log_as_the_unit_would(&machine).await;
    let new_pid = upgrade_under_load(service).await;
    let _reap = Reap(new_pid);
    // The service stops (systemd would stop it before removing).
    // SAFETY: kill(2) on the tollgate this test's upgrade started.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    let stopped = wait_until(Duration::from_secs(15), || async move { !alive(new_pid) }).await;
    assert!(stopped, "the upgraded tollgate did not stop on SIGTERM");

    remove_keeps_the_topology_and_purge_removes_the_rest();
    drop(machine);
}

/// A topology written before the package (as cloud-init does) that fails
/// `tollgate -t`: dpkg keeps it (--force-confold), the install succeeds, says
/// why tollgate is not started, and the unit is not enabled.
fn an_invalid_topology_is_kept_and_not_started(deb: &str) {
    let broken = "server:\n  listeners:\n    - address: 127.0.0.1:0\nroutes: []\nroutes_typo: 1\n";
    std::fs::create_dir_all("/etc/tollgate").unwrap();
    std::fs::write(CONF, broken).unwrap();
    let (ok, output) = dpkg(&["--force-confold", "-i", deb]);
    assert!(ok, "dpkg -i failed:\n{output}");
    assert!(
        output.contains("does not pass `tollgate -t`, so tollgate is not started"),
        "{output}"
    );
    assert!(output.contains("routes_typo"), "{output}");
    assert_eq!(std::fs::read_to_string(CONF).unwrap(), broken);
    assert!(
        std::fs::symlink_metadata(WANTS).is_err(),
        "the unit was enabled with an invalid topology"
    );
    let (ok, output) = dpkg(&["--purge", "tollgate"]);
    assert!(ok, "{output}");
    assert!(!Path::new(CONF).exists());
}

fn installed_files_users_and_unit_are_in_place() {
    assert_owned("/usr/bin/tollgate", "root", "root", 0o755);
    assert_owned(CONF, "root", "tollgate", 0o640);
    assert_owned(UNIT, "root", "root", 0o644);
    assert_owned("/etc/logrotate.d/tollgate", "root", "root", 0o644);
    assert_owned("/var/lib/tollgate", "tollgate", "tollgate", 0o700);
    assert_owned("/var/cache/tollgate", "tollgate", "tollgate", 0o750);
    assert_owned("/var/log/tollgate", "tollgate", "tollgate", 0o750);
    assert_eq!(
        std::fs::read_to_string(CONF).unwrap(),
        std::fs::read_to_string(Path::new(ROOT).join("deploy/debian/tollgate.yaml")).unwrap()
    );
    let (ok, passwd) = run(Command::new("getent").args(["passwd", "tollgate"]));
    assert!(ok, "no tollgate user");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/tollgate");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    assert!(run(Command::new("getent").args(["group", "tollgate"])).0);

    // Enabled: multi-user.target wants it.
    assert_eq!(std::fs::read_link(WANTS).unwrap(), Path::new(UNIT));
    let (ok, output) = as_tollgate(&["-t", "-c", CONF]);
    assert!(ok, "the installed topology fails tollgate -t:\n{output}");
    assert!(output.contains("is valid"), "{output}");
    let (ok, output) = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(ok, "systemd-analyze verify failed:\n{output}");
    assert!(
        output.trim().is_empty(),
        "systemd-analyze verify warned:\n{output}"
    );
    let (ok, version) = run(Command::new("/usr/bin/tollgate").arg("--version"));
    assert!(ok && version.contains("pingora"), "{version}");
}

fn the_man_page_and_completions_are_installed() {
    let (ok, page) = run(Command::new("man").args(["-P", "cat", "tollgate"]));
    assert!(ok, "man tollgate: {page}");
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "COMMANDS",
        "SIGNALS",
        "FILES",
        "EXIT STATUS",
    ] {
        assert!(page.contains(section), "man tollgate has no {section}");
    }
    let (ok, words) = run(Command::new("bash").arg("-c").arg(
        "source /usr/share/bash-completion/completions/tollgate; \
         COMP_WORDS=(tollgate up); COMP_CWORD=1; _tollgate tollgate up tollgate; \
         printf '%s\\n' \"${COMPREPLY[@]}\"",
    ));
    assert!(ok, "{words}");
    assert!(
        words.lines().any(|w| w == "upgrade"),
        "bash completes `up` as:\n{words}"
    );
    let (ok, output) =
        run(Command::new("zsh").args(["-n", "/usr/share/zsh/vendor-completions/_tollgate"]));
    assert!(ok, "zsh cannot read the completions:\n{output}");
}

/// Starts the installed tollgate as the unit does, on the installed topology
/// edited as an administrator would (a port the kernel picks, a short grace
/// period), then rotates its access log with the package's logrotate rule:
/// SIGUSR1 makes it write to a new file.
async fn run_and_rotate_the_log_as_the_unit_would(machine: &Machine) -> Tollgate {
    let config = std::fs::read_to_string(CONF)
        .unwrap()
        .replace("0.0.0.0:80", "127.0.0.1:0")
        .replace("127.0.0.1:9091", "127.0.0.1:0")
        .replace("grace_period: 30s", "grace_period: 1s");
    std::fs::write(CONF, &config).unwrap();
    machine.own_run_dir();
    let service = Tollgate::launch_reported_by(temp_dir("service"), &config, |_| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=tollgate", "--regid=tollgate", "--init-groups"])
            .args(["/usr/bin/tollgate", "-c", CONF])
            .current_dir("/");
        command
    })
    .await;
    let client = reqwest::Client::new();
    let (status, _, body) = get(&client, &service.url("/status")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "tollgate is running\n"));

    let log = Path::new("/var/log/tollgate/access.log");
    let logged = |path: &'static str, what: &'static str| async move {
        wait_until(Duration::from_secs(5), || async move {
            std::fs::read_to_string(path).is_ok_and(|t| t.contains(what))
        })
        .await
    };
    assert!(logged("/var/log/tollgate/access.log", "GET /status").await);
    let state = temp_dir("logrotate").join("state");
    let (ok, output) = run(Command::new("logrotate")
        .args(["--force", "--state"])
        .arg(&state)
        .arg("/etc/logrotate.d/tollgate"));
    assert!(ok, "logrotate failed:\n{output}");
    let (status, _, _) = get(&client, &service.url("/status?after")).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        logged("/var/log/tollgate/access.log", "/status?after").await,
        "no line in the new file:\n{}",
        service.stderr()
    );
    let rotated = std::fs::read_to_string("/var/log/tollgate/access.log.1").unwrap();
    assert!(
        rotated.contains("GET /status ") && !rotated.contains("after"),
        "{rotated}"
    );
    assert_owned(log.to_str().unwrap(), "tollgate", "tollgate", 0o640);
    assert!(service
        .stderr()
        .contains("SIGUSR1: reopening the access log"));
    service
}

/// Installs the second build while clients keep asking: postinst hands the
/// running tollgate the new binary, every request is answered, the edited
/// topology is kept. Returns the new process's pid.
async fn upgrade_under_load(mut service: Tollgate) -> u32 {
    let edited = std::fs::read_to_string(CONF).unwrap();
    let old_pid = service.pid();
    let in_file: u32 = std::fs::read_to_string(PID_FILE)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(in_file, old_pid);
    let load = SteadyLoad::start(service.url("/status"), 4);
    assert!(load.wait_answered(50).await, "traffic before the upgrade");

    let v2 = package(2);
    let started = std::time::Instant::now();
    let (ok, output) = dpkg(&["-i", v2.to_str().unwrap()]);
    assert!(ok, "upgrading the package failed:\n{output}");
    eprintln!(
        "dpkg -i of the upgrade took {:?}:\n{output}",
        started.elapsed()
    );
    assert!(
        output.contains(&format!("took over from process {old_pid}")),
        "{output}"
    );
    let new_pid: u32 = std::fs::read_to_string(PID_FILE)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(
        exe,
        Path::new("/usr/bin/tollgate"),
        "the new process runs the new binary"
    );
    let exited = service.wait_exit(Duration::from_secs(20)).await;
    assert!(exited.is_some(), "the old process did not exit");
    assert!(
        load.wait_answered(50).await,
        "no answer from the new process"
    );
    let report = load.stop().await;
    report.assert_no_failure(101);
    eprintln!(
        "{} requests answered across the upgrade, none failed",
        report.backends.len()
    );
    assert_eq!(installed_version(), test_version(2));
    assert_eq!(
        std::fs::read_to_string(CONF).unwrap(),
        edited,
        "the upgrade replaced the topology"
    );
    new_pid
}

fn remove_keeps_the_topology_and_purge_removes_the_rest() {
    let edited = std::fs::read_to_string(CONF).unwrap();
    let (ok, output) = dpkg(&["--remove", "tollgate"]);
    assert!(ok, "dpkg -r failed:\n{output}");
    assert!(!Path::new("/usr/bin/tollgate").exists());
    assert!(!Path::new(UNIT).exists());
    assert_eq!(
        std::fs::read_to_string(CONF).unwrap(),
        edited,
        "dpkg -r removed the topology"
    );
    assert!(Path::new("/etc/logrotate.d/tollgate").exists());
    assert!(run(Command::new("getent").args(["passwd", "tollgate"])).0);
    assert!(Path::new("/var/log/tollgate/access.log.1").exists());
    let (_, status) =
        run(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "tollgate"]));
    assert_eq!(status.trim(), "config-files");

    let (ok, output) = dpkg(&["--purge", "tollgate"]);
    assert!(ok, "dpkg -P failed:\n{output}");
    for gone in [
        "/etc/tollgate",
        "/etc/logrotate.d/tollgate",
        "/var/lib/tollgate",
        "/var/cache/tollgate",
        "/var/log/tollgate",
        WANTS,
        "/etc/systemd/system/tollgate.service",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} is left after purge"
        );
    }
    assert!(
        !run(Command::new("getent").args(["passwd", "tollgate"])).0,
        "the user is left"
    );
    assert!(
        !run(Command::new("getent").args(["group", "tollgate"])).0,
        "the group is left"
    );
    let (_, overrides) = run(Command::new("dpkg-statoverride").arg("--list"));
    assert!(!overrides.contains("tollgate"), "{overrides}");
    let (known, status) =
        run(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "tollgate"]));
    assert!(!known || status.contains("not-installed"), "{status}");
}
