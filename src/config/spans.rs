//! Where each node of the topology file stands, so that checks made after parsing
//! (a route naming an unknown upstream, two routes with the same match) can name the
//! line and column as serde does for type errors.
//!
//! Paths are written as in error messages: `upstreams.products.backends[1].weight`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (both 1-based) of a node in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of every node, by path.
#[derive(Debug, Default)]
pub struct Spans {
    positions: HashMap<String, Position>,
}

impl Spans {
    /// Indexes `source`. A source that does not parse yields an empty index; serde
    /// reports the syntax error itself.
    pub fn index(source: &str) -> Spans {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut walker, false).is_err() {
            return Spans::default();
        }
        Spans {
            positions: walker.positions,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one, or 1:1.
    pub fn position(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(pos) = self.positions.get(path) {
                return *pos;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Walker {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn enter_node(&mut self, key_text: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
                None => {
                    *key = Some(key_text.unwrap_or("?").to_string());
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let position = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(path) = self.enter_node(Some(&text)) {
                    self.positions.entry(path).or_insert(position);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.enter_node(None) {
                    self.positions.entry(path).or_insert(position);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A collection used as a mapping key has no path of its own.
                let path = self.enter_node(None).unwrap_or_else(|| "?".to_string());
                self.positions.entry(path.clone()).or_insert(position);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_nodes() {
        let src = "server:\n  threads: 2\nroutes:\n  - match: {path: /a}\n    upstream: x\n  - match:\n      path: /b\n    upstream: y\n";
        let spans = Spans::index(src);
        assert_eq!(
            spans.position("server.threads"),
            Position {
                line: 2,
                column: 12
            }
        );
        assert_eq!(spans.position("routes[0].upstream").line, 5);
        assert_eq!(spans.position("routes[1].match.path").line, 7);
        assert_eq!(spans.position("routes[1].upstream").line, 8);
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(spans.position("routes[1].nothing").line, 6);
    }
}
