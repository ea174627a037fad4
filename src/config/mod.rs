//! The topology file: schema, loading, and validation with file:line:column errors.
//!
//! [`load`] is the only way a [`Config`] is made from a file: its values are
//! parsed into their types as it is read, backend names are resolved, upstream
//! CA files are read, and every check in `validate` has passed, so nothing
//! after it parses or checks again.

mod error;
pub mod json_schema;
pub mod resolve;
mod schema;
mod spans;
mod trust;
pub mod types;
pub mod units;
mod validate;
pub(crate) use validate::MAX_WEIGHT;

pub use error::{ConfigError, ConfigErrors, Problem, Problems};
pub use schema::*;
pub use spans::{Position, Spans};
pub use types::*;
pub(crate) use validate::HEURISTICALLY_CACHEABLE;

use std::path::{Path, PathBuf};

/// The topology file read when `-c` is not given.
pub const DEFAULT_FILE: &str = "/etc/tollgate/tollgate.yaml";

/// A validated config with what is needed to point at its lines later, when
/// reading what it names finds a problem (a missing key file).
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub file: PathBuf,
    spans: Spans,
}

impl LoadedConfig {
    /// The problem `message` about the node at `node` (`auth.tokens.jwt.jwks_file`).
    pub(crate) fn error_at(&self, node: &str, message: &str) -> ConfigErrors {
        self.errors(Problems(vec![Problem::at(node, message)]))
    }

    /// `problems`, each at the line of its node, in file order.
    pub fn errors(&self, problems: Problems) -> ConfigErrors {
        located(&self.file, &self.spans, problems)
    }
}

/// `problems` as errors at their nodes' positions, in file order.
fn located(file: &Path, spans: &Spans, problems: Problems) -> ConfigErrors {
    let mut errors: Vec<ConfigError> = problems
        .0
        .into_iter()
        .map(|problem| ConfigError {
            file: file.to_path_buf(),
            position: Some(spans.position(&problem.node)),
            message: problem.to_string(),
        })
        .collect();
    errors.sort_by_key(|e| e.position.map(|p| (p.line, p.column)));
    ConfigErrors(errors)
}

/// Reads, parses and validates the topology file at `path`.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the topology file: {e}"),
        }])
    })?;
    parse(&source, path)
}

/// Parses and validates topology `source`; `path` is used in error messages only.
pub fn parse(source: &str, path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let mut config: Config = serde_yaml::from_str(source).map_err(|e| {
        let position = e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: position.or(Some(Position { line: 1, column: 1 })),
            message: plain_serde_message(&e.to_string()),
        }])
    })?;
    fill_default_paths(&mut config.server, path);
    let spans = Spans::index(source);
    let mut problems = validate::check(&config);
    problems.extend(resolve::resolve_backends(&mut config).0);
    problems.extend(trust::read_upstream_cas(&mut config).0);
    if !problems.0.is_empty() {
        return Err(located(path, &spans, problems));
    }
    Ok(LoadedConfig {
        config,
        file: path.to_path_buf(),
        spans,
    })
}

/// Gives `server.pid_file` and `server.upgrade_sock` their defaults, which depend
/// on the file's own path (see `pid_file`).
fn fill_default_paths(server: &mut ServerConfig, path: &Path) {
    let (pid_file, upgrade_sock) = crate::pid_file::default_paths(path);
    if server.pid_file.as_os_str().is_empty() {
        server.pid_file = pid_file;
    }
    if server.upgrade_sock.as_os_str().is_empty() {
        server.upgrade_sock = upgrade_sock;
    }
}

/// serde_yaml appends " at line L column C" to its messages; the position is
/// printed in front instead.
fn plain_serde_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}
