//! Problems of a topology file: [`Problem`] names the node it is about
//! (`upstreams.app.backends[0].weight`); [`ConfigError`] adds where the node is in
//! the file, for the `FILE:LINE:COLUMN: message` lines of `tollgate -t`.

use super::Position;
use std::fmt;
use std::path::PathBuf;

/// One problem with one node of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}: {message}")]
pub struct Problem {
    /// The node's path: `server.listeners[0].address`.
    pub node: String,
    pub message: String,
}

impl Problem {
    pub fn at(node: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            node: node.into(),
            message: message.into(),
        }
    }
}

/// Problems found by one pass over the file, in the order found.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, node: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::at(node, message));
    }

    pub fn extend(&mut self, more: impl IntoIterator<Item = Problem>) {
        self.0.extend(more);
    }
}

/// One problem in a topology file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
