//! One reading of a request path: the path decoded and normalized for matching,
//! and its RFC 3986 normal form for forwarding, built together segment by segment
//! so that the two always agree (see the parent module for the rules).

use super::Refusal;

/// How `%2F`, `%5C` and `\` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Separators {
    /// As text within a segment (escapes as written).
    Kept,
    /// As `/`.
    Decoded,
}

/// One reading of a path.
#[derive(Debug)]
pub(super) struct Reading {
    pub(super) matched: String,
    pub(super) forward: String,
    /// `%2F`, `%5C` or `\` occurred.
    pub(super) encoded_separator: bool,
    /// The first escape of the refused kinds other than separators.
    pub(super) hazard: Option<Refusal>,
    /// A segment has `;parameters`.
    pub(super) parameters: bool,
    /// A segment is `.` or `..` with parameters.
    pub(super) dot_parameters: bool,
}

impl Reading {
    /// Whether the path reads differently under different `encoded_slashes`.
    pub(super) fn needs_a_choice(&self) -> bool {
        self.encoded_separator || self.hazard.is_some() || self.dot_parameters
    }
}

/// Whether `path` is its own matched and forwarded form: it starts with `/`, has no
/// `%`, `\` or `;`, no empty segment but a last one, and no dot segment.
pub(super) fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.bytes().any(|b| matches!(b, b'%' | b'\\' | b';')) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The characters RFC 3986 2.3 calls unreserved: their escapes mean the same.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte escaped at `bytes[0..2]` (the two hex digits after a `%`).
pub(super) fn escaped_byte(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [h, l, ..] => Some(hex_value(*h)? * 16 + hex_value(*l)?),
        _ => None,
    }
}

/// The refused kind an escape of `b` belongs to; `after` is what follows the escape.
pub(super) fn hazard_of(b: u8, after: &[u8]) -> Option<Refusal> {
    match b {
        0x00..=0x1F | 0x7F => Some(Refusal::ControlCharacter),
        b'?' | b'#' | b';' => Some(Refusal::EncodedDelimiter),
        b'%' if escaped_byte(after).is_some() => Some(Refusal::DoubleEncoding),
        _ => None,
    }
}

/// `%XX` for `b`, hex digits in upper case (RFC 3986 6.2.2.1).
fn escape(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]
}

/// Segments with `.`, `..` and empty ones resolved as they are pushed.
struct Segments<T> {
    kept: Vec<T>,
    /// The path ends in `/` (its last segment was empty or a dot segment).
    trailing_slash: bool,
}

impl<T> Segments<T> {
    fn new() -> Self {
        Segments {
            kept: Vec::new(),
            trailing_slash: true,
        }
    }

    /// Adds `item`, a segment whose decoded text is `name(&item)`.
    fn push(&mut self, item: T, name: impl Fn(&T) -> &str) {
        match name(&item) {
            "" | "." => self.trailing_slash = true,
            ".." => {
                self.kept.pop();
                self.trailing_slash = true;
            }
            _ => {
                self.kept.push(item);
                self.trailing_slash = false;
            }
        }
    }

    /// `/a/b` or `/a/b/` from the kept segments' texts.
    fn join<'s>(&'s self, text: impl Fn(&'s T) -> &'s str) -> String {
        let mut out = String::new();
        for item in &self.kept {
            out.push('/');
            out.push_str(text(item));
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }
}

/// One segment being read: its matched bytes and its forwarded text.
#[derive(Default)]
struct Segment {
    matched: Vec<u8>,
    forward: String,
}

impl Segment {
    fn push_plain(&mut self, c: char) {
        let mut utf8 = [0u8; 4];
        self.matched
            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        self.forward.push(c);
    }

    /// An escape that stays one in both forms.
    fn push_escape(&mut self, b: u8) {
        let text = escape(b);
        self.matched.extend_from_slice(&text);
        self.forward.extend(text.map(char::from));
    }
}

/// Reads `raw` with separators read as `separators` says. Fails only for what is
/// refused in every case (a malformed escape, a path that is not UTF-8).
pub(super) fn read(raw: &str, separators: Separators) -> Result<Reading, Refusal> {
    let mut reading = Reading {
        matched: String::new(),
        forward: String::new(),
        encoded_separator: false,
        hazard: None,
        parameters: false,
        dot_parameters: false,
    };
    let mut segments: Segments<(String, String)> = Segments::new();
    let mut segment = Segment::default();
    let mut finish = |segment: Segment, reading: &mut Reading| -> Result<(), Refusal> {
        let matched = String::from_utf8(segment.matched).map_err(|_| Refusal::NotUtf8)?;
        if let Some((name, _)) = matched.split_once(';') {
            reading.parameters = true;
            reading.dot_parameters |= name == "." || name == "..";
        }
        segments.push((matched, segment.forward), |(matched, _)| matched);
        Ok(())
    };
    let bytes = raw.as_bytes();
    let mut chars = raw.char_indices();
    // The leading `/` opens the first segment; a path without one starts inside it.
    if raw.starts_with('/') {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '/' => finish(std::mem::take(&mut segment), &mut reading)?,
            '\\' => {
                reading.encoded_separator = true;
                match separators {
                    Separators::Decoded => finish(std::mem::take(&mut segment), &mut reading)?,
                    Separators::Kept => segment.push_plain('\\'),
                }
            }
            '%' => {
                let b = escaped_byte(&bytes[i + 1..]).ok_or(Refusal::MalformedEscape)?;
                chars.next();
                chars.next();
                if b == b'/' || b == b'\\' {
                    reading.encoded_separator = true;
                    match separators {
                        Separators::Decoded => finish(std::mem::take(&mut segment), &mut reading)?,
                        Separators::Kept => segment.push_escape(b),
                    }
                } else if is_unreserved(b) {
                    segment.push_plain(b as char);
                } else if let Some(hazard) = hazard_of(b, &bytes[i + 3..]) {
                    reading.hazard.get_or_insert(hazard);
                    segment.push_escape(b);
                } else {
                    segment.matched.push(b);
                    segment.forward.extend(escape(b).map(char::from));
                }
            }
            c => segment.push_plain(c),
        }
    }
    finish(segment, &mut reading)?;
    reading.matched = segments.join(|(matched, _)| matched);
    reading.forward = segments.join(|(_, forward)| forward);
    Ok(reading)
}

/// `matched` as a servlet container reads it: each segment's `;parameters`
/// dropped, then dot segments resolved.
pub(super) fn without_parameters(matched: &str) -> String {
    let mut segments = Segments::new();
    for segment in matched.strip_prefix('/').unwrap_or(matched).split('/') {
        let name = segment.split_once(';').map_or(segment, |(name, _)| name);
        segments.push(name, |name| name);
    }
    segments.join(|name| name)
}
