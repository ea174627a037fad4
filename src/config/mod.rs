//! The topology file: schema, loading, and validation with file:line:column errors.
//!
//! [`load`] is the only way a [`Config`] is made from a file; a `Config` it returns
//! has passed every check in `validate`, so compiling it into a topology cannot fail
//! on user input.

pub mod resolve;
mod schema;
mod spans;
pub mod units;
mod validate;

pub use schema::*;
pub use spans::{Position, Spans};

use std::fmt;
use std::path::{Path, PathBuf};

/// The topology file read when `-c` is not given.
pub const DEFAULT_FILE: &str = "/etc/tollgate/tollgate.yaml";

/// One problem in a topology file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `None` when the file could not be read at all.
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.column,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a topology file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated config with what is needed to point at its lines later, when
/// compiling it finds a problem only I/O can reveal (a missing key file).
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub file: PathBuf,
    spans: Spans,
}

impl LoadedConfig {
    /// An error about the node at `path` (e.g. `auth.tokens.jwt.jwks_file`).
    pub fn error_at(&self, node: &str, message: &str) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            file: self.file.clone(),
            position: Some(self.spans.position(node)),
            message: format!("{node}: {message}"),
        }])
    }
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
    problems.extend(resolve::resolve_backends(&mut config));
    problems.sort_by_key(|(p, _)| {
        let pos = spans.position(p);
        (pos.line, pos.column)
    });
    if problems.is_empty() {
        Ok(LoadedConfig {
            config,
            file: path.to_path_buf(),
            spans,
        })
    } else {
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(node, message)| ConfigError {
                    file: path.to_path_buf(),
                    position: Some(spans.position(&node)),
                    message: format!("{node}: {message}"),
                })
                .collect(),
        ))
    }
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
