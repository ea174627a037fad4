//! The command line: flags and subcommands (clap), the version line, and the
//! files made from them: the man page ([`manual`]) and shell completions.

pub mod manual;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `tollgate --version`: the version, the git commit it was built from and
/// the pingora it runs on (both set by build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TOLLGATE_GIT_COMMIT"),
    ", pingora ",
    env!("TOLLGATE_PINGORA_VERSION"),
    ")"
);

/// HTTP load balancer and API gateway, configured by one YAML topology file.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// The topology file: listeners, upstreams, routes and process settings.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = tollgate::config::DEFAULT_FILE
    )]
    pub conf: PathBuf,

    /// Check the topology file and exit: 0 when valid, 1 with FILE:LINE:COLUMN and
    /// a message per problem otherwise. Binds no port.
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Take the listening sockets over from a running tollgate through
    /// `server.upgrade_sock`, for a binary upgrade without dropped connections.
    /// Then send SIGQUIT to the old process.
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,

    /// Run in the background (writes `server.pid_file`).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the topology file as -t does, then ask the running tollgate (the
    /// process in `server.pid_file`) to reload it, by SIGHUP. In-flight requests
    /// finish on the old topology; an invalid file changes nothing.
    Reload,
    /// Check the topology file with this binary, then ask the running tollgate
    /// (the process in `server.pid_file`) to upgrade, by SIGUSR2: it starts the
    /// binary at its own path with `-u`, hands its listening sockets over and
    /// drains for `server.grace_period`. Install the new binary first. Waits
    /// until the new process has taken over.
    Upgrade,
    /// Print the running tollgate's upstreams and backends (state, weight,
    /// in flight, rates, latency), from its admin API (`server.admin`).
    Status,
    /// Drain a backend through the admin API: it gets no new requests, those
    /// in flight finish. Until the next reload or restart.
    Drain {
        /// The backend, as `IP:port` or as written in the topology file.
        address: String,
        /// Only in this upstream (default: every upstream that has it).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Take a drained backend back.
    Undrain {
        /// The backend, as `IP:port` or as written in the topology file.
        address: String,
        /// Only in this upstream (default: every upstream that has it).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Print the JSON Schema (draft 2020-12) of the topology file, for editors
    /// and `check-jsonschema`; reads no file.
    Schema,
    /// Print the man page, tollgate(1), in roff (what the package installs).
    #[command(hide = true)]
    Man,
    /// Print the completions of SHELL (what the package installs).
    #[command(hide = true)]
    Completions {
        /// The shell to complete in.
        shell: Shell,
    },
}

/// The shells completions are made for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
}

/// The completion script of `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    let mut command = Cli::command();
    match shell {
        Shell::Bash => clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command,
            "tollgate",
            &mut out,
        ),
        Shell::Zsh => clap_complete::generate(
            clap_complete::Shell::Zsh,
            &mut command,
            "tollgate",
            &mut out,
        ),
    }
    out
}
