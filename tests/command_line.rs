//! What the command line says about itself: `--version` (version, git commit,
//! pingora), the man page (every flag and command of `--help`, every signal,
//! file and exit status, rendered by man(1)), the exit statuses it documents,
//! and the shell completions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs tollgate with `args`: exit code and stdout + stderr.
fn tollgate(args: &[&str]) -> (i32, String) {
    let output = Command::new(TOLLGATE).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn version_names_the_version_the_commit_and_pingora() {
    let (code, version) = tollgate(&["--version"]);
    assert_eq!(code, 0);
    let lock = std::fs::read_to_string(format!("{ROOT}/Cargo.lock")).unwrap();
    let pingora = lock
        .split("[[package]]")
        .find(|entry| entry.contains("\nname = \"pingora\"\n"))
        .and_then(|entry| entry.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .unwrap();
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&git.stdout).trim().to_string();
    assert!(git.status.success() && commit.len() == 12, "{git:?}");
    assert_eq!(
        version.trim(),
        format!(
            "tollgate {} (commit {commit}, pingora {pingora})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// The flags `--help` lists (`-c`, `--conf`, ...).
fn flags_of(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| {
            l.split_whitespace()
                .take_while(|w| w.starts_with('-'))
                .map(|w| w.trim_end_matches(',').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The man page as man(1) renders it, without hyphenation or line breaks
/// inside words.
fn rendered_man_page() -> String {
    let (code, roff) = tollgate(&["man"]);
    assert_eq!(code, 0, "{roff}");
    let mut man = Command::new("man")
        .args(["-P", "cat", "-l", "-"])
        .env("MANWIDTH", "1000")
        .env("MAN_KEEP_FORMATTING", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("man (make test installs man-db)");
    use std::io::Write;
    man.stdin
        .take()
        .unwrap()
        .write_all(roff.as_bytes())
        .unwrap();
    let output = man.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "man warns: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Bold and underline are overstruck (`X\x08X`): keep the last of each.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&output.stdout).chars() {
        if c == '\x08' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

/// The text of the man page's section `title`: the indented lines under its
/// heading, up to the next heading.
fn section(page: &str, title: &str) -> String {
    let mut lines = page.lines().skip_while(|l| *l != title);
    assert!(lines.next().is_some(), "no {title} section in:\n{page}");
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_man_page_documents_every_flag_command_signal_file_and_exit_status() {
    let page = rendered_man_page();
    let (_, help) = tollgate(&["--help"]);
    let flags = flags_of(&help);
    assert!(flags.contains(&"--conf".to_string()), "{help}");
    let options = section(&page, "OPTIONS");
    for flag in &flags {
        assert!(
            options.contains(flag.as_str()),
            "{flag} not in OPTIONS:\n{options}"
        );
    }
    let commands_help = help.split("Commands:").nth(1).unwrap();
    let commands: Vec<&str> = commands_help
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"schema") && commands.contains(&"upgrade"),
        "{help}"
    );
    let commands_section = section(&page, "COMMANDS");
    for command in commands {
        assert!(
            commands_section.contains(command),
            "{command} not in COMMANDS:\n{commands_section}"
        );
        let (_, sub_help) = tollgate(&[command, "--help"]);
        for flag in flags_of(&sub_help)
            .iter()
            .filter(|f| *f != "-h" && *f != "--help")
        {
            assert!(
                commands_section.contains(flag.as_str()),
                "{command} {flag} not in COMMANDS:\n{commands_section}"
            );
        }
    }
    let signals = section(&page, "SIGNALS");
    for signal in [
        "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT",
    ] {
        assert!(
            signals.contains(signal),
            "{signal} not in SIGNALS:\n{signals}"
        );
    }
    assert!(signals.contains("Reopen the access log"), "{signals}");
    let files = section(&page, "FILES");
    for file in [
        "/etc/tollgate/tollgate.yaml",
        "/run/tollgate/tollgate.pid",
        "/run/tollgate/upgrade.sock",
        "/var/log/tollgate/access.log",
        "/var/lib/tollgate",
        "/var/cache/tollgate",
        "/usr/share/tollgate/tollgate.schema.json",
        "/lib/systemd/system/tollgate.service",
    ] {
        assert!(files.contains(file), "{file} not in FILES:\n{files}");
    }
    let statuses = section(&page, "EXIT STATUS");
    for code in ["0", "1", "2", "3"] {
        assert!(
            statuses
                .lines()
                .any(|l| l.trim() == code || l.trim().starts_with(&format!("{code} "))),
            "exit status {code} not in:\n{statuses}"
        );
    }
    assert!(page.contains("ENVIRONMENT") && page.contains("RUST_LOG"));
}

#[test]
fn the_exit_statuses_are_the_documented_ones() {
    let (code, _) = tollgate(&["-t", "-c", &format!("{ROOT}/config/tollgate.yaml")]);
    assert_eq!(code, 0);
    let invalid = write_file(&temp_dir("exit"), "bad.yaml", "server: {}\nroutes: []\n");
    let (code, text) = tollgate(&["-t", "-c", invalid.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    let (code, text) = tollgate(&["--no-such-flag"]);
    assert_eq!(code, 2, "{text}");
    // No tollgate runs this file: its pid file does not exist.
    let dir = temp_dir("not-running");
    let config = format!(
        "server:\n  listeners: [{{address: 127.0.0.1:0}}]\n  pid_file: {}\n  access_log: off\n\
         routes: [{{match: {{path: /}}, respond: {{status: 200}}}}]\n",
        dir.join("none.pid").display()
    );
    let file = write_file(&dir, "t.yaml", &config);
    for command in ["reload", "upgrade"] {
        let (code, text) = tollgate(&["-c", file.to_str().unwrap(), command]);
        assert_eq!(code, 3, "{command}: {text}");
        assert!(text.contains("no tollgate is running it"), "{text}");
    }
}

#[test]
fn completions_are_made_for_bash_and_zsh() {
    let (code, bash) = tollgate(&["completions", "bash"]);
    assert_eq!(code, 0);
    let script = write_file(&temp_dir("completions"), "tollgate.bash", &bash);
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(tollgate --co); COMP_CWORD=1; _tollgate tollgate --co tollgate; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&output.stdout);
    assert!(words.lines().any(|w| w == "--conf"), "{output:?}");
    let (code, zsh) = tollgate(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef tollgate"), "{zsh}");
    let script = write_file(&temp_dir("completions"), "_tollgate", &zsh);
    let status = Command::new("zsh")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("zsh (make test installs it)");
    assert!(status.success());
}
