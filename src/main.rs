//! The `tollgate` command: parse flags, load the topology file, build the server, run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::config::LoadedConfig;
use tollgate::listen::Reservation;
use tollgate::pid_file;
use tollgate::server::{self, StartOptions};

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees
/// many small buffers across pingora and tokio, and glibc's malloc/free took
/// about 13% of tollgate's CPU under load (perf, issue #6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HTTP load balancer and API gateway, configured by one YAML topology file.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// The topology file: listeners, upstreams, routes and process settings.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = tollgate::config::DEFAULT_FILE
    )]
    conf: PathBuf,

    /// Check the topology file and exit: 0 when valid, 1 with FILE:LINE:COLUMN and
    /// a message per problem otherwise. Binds no port.
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Take the listening sockets over from a running tollgate through
    /// `server.upgrade_sock`, for a binary upgrade without dropped connections.
    /// Then send SIGQUIT to the old process.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,

    /// Run in the background (writes `server.pid_file`).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the topology file as -t does, then ask the running tollgate (the
    /// process in `server.pid_file`) to reload it, by SIGHUP. In-flight requests
    /// finish on the old topology; an invalid file changes nothing.
    Reload,
    /// Check the topology file with this binary, then ask the running tollgate
    /// (the process in `server.pid_file`) to upgrade, by SIGUSR2: it starts the
    /// binary at its own path with `-u`, hands its listening sockets over and
    /// drains for `server.grace_period`. Install the new binary first.
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
        address: String,
        #[arg(long)]
        upstream: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    if let Some(command @ (Command::Status | Command::Drain { .. } | Command::Undrain { .. })) =
        &cli.command
    {
        return admin_command(command, &cli.conf);
    }
    let loaded = match tollgate::config::load(&cli.conf) {
        Ok(loaded) => loaded,
        Err(errors) => return invalid(&cli, &errors),
    };
    let prepared = match server::prepare(&loaded) {
        Ok(prepared) => prepared,
        Err(errors) => return invalid(&cli, &errors),
    };
    if let Some(command) = &cli.command {
        return signal_running(&cli, command, &loaded);
    }
    if cli.test {
        let backends: usize = prepared
            .topology
            .upstreams
            .iter()
            .map(|u| u.backends.len())
            .sum();
        println!(
            "tollgate: the topology file {} is valid ({} routes, {} upstreams, {} backends)",
            cli.conf.display(),
            prepared.topology.routes.len(),
            prepared.topology.upstreams.len(),
            backends
        );
        return ExitCode::SUCCESS;
    }
    serve(&cli, &loaded, prepared)
}

/// Prints the problems of the topology file; exit status 1.
fn invalid(cli: &Cli, errors: &tollgate::config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!(
        "tollgate: the topology file {} is not valid",
        cli.conf.display()
    );
    ExitCode::FAILURE
}

/// `reload` and `upgrade`: signals the tollgate running this file.
fn signal_running(cli: &Cli, command: &Command, loaded: &LoadedConfig) -> ExitCode {
    let (signal, verb) = match command {
        Command::Upgrade => (libc::SIGUSR2, "upgrade"),
        _ => (libc::SIGHUP, "reload"),
    };
    match server::signal_running(loaded, signal) {
        Ok(pid) => {
            println!(
                "tollgate: asked process {pid} to {verb} ({})",
                cli.conf.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: cannot {verb}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `status`, `drain` and `undrain`: through the running tollgate's admin API.
fn admin_command(command: &Command, conf: &std::path::Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = tollgate::admin::client::AdminClient::from_file(conf)?;
        match command {
            Command::Drain { address, upstream } => {
                client.drain(address, upstream.as_deref(), true).await
            }
            Command::Undrain { address, upstream } => {
                client.drain(address, upstream.as_deref(), false).await
            }
            _ => client.status().await,
        }
    });
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the server until it stops; the pid file goes with it.
fn serve(cli: &Cli, loaded: &LoadedConfig, prepared: server::Prepared) -> ExitCode {
    let server_config = &loaded.config.server;
    let reservation = if cli.upgrade {
        Reservation::inherited(&loaded.config)
    } else {
        match Reservation::reserve(&loaded.config) {
            Ok(reservation) => reservation,
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    if let Err(e) = pid_file::prepare_dir(&server_config.upgrade_sock) {
        eprintln!("tollgate: cannot start: {e:#}");
        return ExitCode::FAILURE;
    }
    let options = StartOptions {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    let server = match server::build(loaded, prepared, options, reservation) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tollgate: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if !cli.daemon {
        // Daemons get theirs from pingora after the fork.
        if let Err(e) = pid_file::write(&server_config.pid_file) {
            log::warn!("{e:#}; `tollgate reload` will not find this process");
        }
    }
    server.run(pingora::server::RunArgs::default());
    pid_file::remove_if_ours(&server_config.pid_file);
    ExitCode::SUCCESS
}
