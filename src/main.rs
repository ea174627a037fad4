//! The `tollgate` command: parse flags, load the topology file, build the server, run.

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use std::io::Write;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    if let Some(command @ (Command::Schema | Command::Man | Command::Completions { .. })) =
        &cli.command
    {
        return print_generated(command);
    }
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

/// `schema`, `man` and `completions`: what they make, on stdout.
fn print_generated(command: &Command) -> ExitCode {
    let text = match command {
        Command::Schema => {
            let schema = tollgate::config::json_schema::topology_schema();
            serde_json::to_vec_pretty(&schema).map_err(std::io::Error::other)
        }
        Command::Completions { shell } => Ok(cli::completions(*shell)),
        _ => cli::manual::render(),
    };
    let mut stdout = std::io::stdout().lock();
    let written = text.and_then(|mut text| {
        if text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
        stdout.write_all(&text)?;
        stdout.flush()
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of `reload` and `upgrade` when no tollgate runs the file.
const NOT_RUNNING: u8 = 3;

/// `reload` and `upgrade`: signals the tollgate running this file; `upgrade`
/// then waits for the new process to take over.
fn signal_running(cli: &Cli, command: &Command, loaded: &LoadedConfig) -> ExitCode {
    let (signal, verb) = match command {
        Command::Upgrade => (libc::SIGUSR2, "upgrade"),
        _ => (libc::SIGHUP, "reload"),
    };
    let pid = match server::signal_running(loaded, signal) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("tollgate: cannot {verb}: {e:#}");
            return match e.downcast_ref::<pid_file::NotRunning>() {
                Some(_) => ExitCode::from(NOT_RUNNING),
                None => ExitCode::FAILURE,
            };
        }
    };
    println!(
        "tollgate: asked process {pid} to {verb} ({})",
        cli.conf.display()
    );
    if !matches!(command, Command::Upgrade) {
        return ExitCode::SUCCESS;
    }
    let _ = std::io::stdout().flush();
    let pid_file = &loaded.config.server.pid_file;
    let timeout = tollgate::upgrade::HANDOVER_TIMEOUT;
    match tollgate::upgrade::wait_for_successor(pid_file, &loaded.file, pid, timeout) {
        Ok(new) => {
            println!("tollgate: process {new} took over from process {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: upgrade failed: {e:#}");
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
