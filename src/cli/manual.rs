//! The man page, tollgate(1): the flags and commands from the clap definition
//! (so none is left out), then what clap does not know: signals, files,
//! environment and exit statuses.

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

/// What a signal does to a running tollgate, in the order the page lists them.
pub const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "Reload the topology file: it is read and validated in full, then swapped in whole; \
         requests in flight finish on the topology they started with. An invalid file changes \
         nothing (the problems are logged with FILE:LINE:COLUMN). The server: section takes \
         effect only on a restart or an upgrade, but for the TLS listeners' certificates and \
         client certificate CAs, which are read again.",
    ),
    (
        "SIGUSR1",
        "Reopen the access log file (server.access_log), as nginx does: after logrotate has \
         moved it away, lines go to a new file at the same path. Nothing else changes.",
    ),
    (
        "SIGUSR2",
        "Upgrade the binary in place: start the binary at the path this process was started \
         from, with its arguments and -u, hand the listening sockets over and drain for \
         server.grace_period. If the new process cannot start, this one logs \
         \"upgrade aborted\" and keeps serving.",
    ),
    (
        "SIGTERM",
        "Stop gracefully: stop accepting, let requests in flight run for \
         server.grace_period, then exit 0.",
    ),
    ("SIGINT", "Exit at once."),
    (
        "SIGQUIT",
        "Hand the listening sockets to a new process started with -u (it waits on \
         server.upgrade_sock), keep accepting for 5 s beside it, then drain and exit.",
    ),
];

/// The files tollgate and its package read and write.
pub const FILES: &[(&str, &str)] = &[
    (
        "/etc/tollgate/tollgate.yaml",
        "The topology file read when -c is not given; a configuration file of the package, \
         never overwritten by an upgrade.",
    ),
    (
        "/run/tollgate/tollgate.pid",
        "The pid file of the packaged topology (server.pid_file), which reload, upgrade and \
         logrotate use to find the process. Without server.pid_file each topology file has \
         its own: /run/tollgate/NAME-HASH.pid for root and the owner of /run/tollgate, else \
         under $XDG_RUNTIME_DIR/tollgate or /tmp/tollgate-UID.",
    ),
    (
        "/run/tollgate/upgrade.sock",
        "The socket the listening sockets are handed over on during an upgrade \
         (server.upgrade_sock).",
    ),
    (
        "/var/log/tollgate/access.log",
        "The access log of the packaged topology (server.access_log); rotated daily by \
         /etc/logrotate.d/tollgate, which sends SIGUSR1.",
    ),
    (
        "/var/lib/tollgate",
        "State: ACME accounts and certificates (server.acme.storage), owned by the tollgate \
         user, mode 0700.",
    ),
    (
        "/var/cache/tollgate",
        "The disk tier of caches (caches.NAME.disk.path), owned by the tollgate user.",
    ),
    (
        "/usr/share/tollgate/tollgate.schema.json",
        "The JSON Schema of the topology file (what tollgate schema prints), for editors: \
         # yaml-language-server: $schema=/usr/share/tollgate/tollgate.schema.json",
    ),
    (
        "/lib/systemd/system/tollgate.service",
        "The systemd unit: runs tollgate as the tollgate user; systemctl reload checks the \
         file and sends SIGHUP.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "RUST_LOG",
        "What the error log on stderr shows: error, warn, info (the default), debug, trace.",
    ),
    (
        "NOTIFY_SOCKET",
        "Set by systemd for Type=notify: tollgate reports READY=1 once every listener listens, \
         RELOADING=1 around a reload, STOPPING=1 at shutdown, and its MAINPID after an upgrade.",
    ),
    (
        "XDG_RUNTIME_DIR",
        "Where a user without /run/tollgate keeps default pid files and upgrade sockets.",
    ),
    (
        "TMPDIR",
        "Where request bodies too large for memory are buffered when server.temp_dir is not set.",
    ),
];

/// Exit statuses of every way tollgate is run.
pub const EXIT_STATUSES: &[(&str, &str)] = &[
    (
        "0",
        "Success: the file is valid (-t), the signal was sent (reload), the new process took \
         over (upgrade), the server stopped after SIGTERM.",
    ),
    (
        "1",
        "The topology file is not valid (each problem printed as FILE:LINE:COLUMN), a port \
         cannot be bound, an upgrade did not complete, or the admin API refused or could not \
         be reached.",
    ),
    (
        "2",
        "The command line is wrong (an unknown flag, a missing argument).",
    ),
    (
        "3",
        "reload or upgrade: no tollgate is running the file (no pid file, or one naming a \
         process that is gone).",
    ),
];

/// The man page in roff.
pub fn render() -> std::io::Result<Vec<u8>> {
    let command = super::Cli::command();
    let man = Man::new(command.clone())
        .title("TOLLGATE")
        .section("1")
        .source(format!("tollgate {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(
        "tollgate is an HTTP load balancer and API gateway on Cloudflare's Pingora. One \
         YAML topology file names its listeners, upstreams (backends, balancing, health \
         checks), routes, authentication policies, rate limits and caches; unknown keys are \
         errors. Without a command, tollgate serves that file until it is stopped.",
    )]);
    roff.to_writer(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    commands(&mut roff, &command);
    listed(&mut roff, "SIGNALS", SIGNALS);
    listed(&mut roff, "FILES", FILES);
    listed(&mut roff, "ENVIRONMENT", ENVIRONMENT);
    listed(&mut roff, "EXIT STATUS", EXIT_STATUSES);
    examples(&mut roff);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), logrotate(8), the README of tollgate (/usr/share/doc/tollgate/README.md)",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The COMMANDS section: each visible subcommand with its arguments and help.
fn commands(roff: &mut Roff, command: &clap::Command) {
    roff.control("SH", ["COMMANDS"]);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut head = vec![bold(sub.get_name().to_string())];
        for arg in sub.get_positionals() {
            head.push(roman(" "));
            head.push(italic(arg.get_id().as_str().to_uppercase()));
        }
        roff.control("TP", []);
        roff.text(head);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        let options = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help");
        for arg in options {
            let name = match arg.get_long() {
                Some(long) => format!("--{long} {}", arg.get_id().as_str().to_uppercase()),
                None => arg.get_id().as_str().to_uppercase(),
            };
            roff.control("RS", []);
            roff.control("TP", []);
            roff.text([bold(name)]);
            if let Some(help) = arg.get_help() {
                roff.text([roman(help.to_string())]);
            }
            roff.control("RE", []);
        }
    }
}

/// A section of `.TP` items.
fn listed(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (name, text) in items {
        roff.control("TP", []);
        roff.text([bold(*name)]);
        roff.text([roman(*text)]);
    }
}

fn examples(roff: &mut Roff) {
    roff.control("SH", ["EXAMPLES"]);
    for (what, line) in [
        (
            "Check a file before putting it in place:",
            "tollgate -t -c /etc/tollgate/tollgate.yaml",
        ),
        (
            "Reload after editing it:",
            "systemctl reload tollgate    (or: tollgate reload)",
        ),
        (
            "Upgrade the binary without a failed request:",
            "tollgate -c /etc/tollgate/tollgate.yaml upgrade",
        ),
        (
            "Editor support for the topology:",
            "tollgate schema > tollgate.schema.json",
        ),
    ] {
        roff.text([roman(what)]);
        roff.control("IP", []);
        roff.control("nf", []);
        roff.text([roman(format!("    {line}"))]);
        roff.control("fi", []);
        roff.control("PP", []);
    }
}
