//! A YAML document as a tree whose every node knows where it came from.
//!
//! This module owns turning YAML text into [`Node`]s with line and column, and nothing
//! else: it knows no manifest keys. Every later error (unknown key, wrong type, a file
//! that does not exist) points at a span taken from here. It never panics on any input;
//! malformed text becomes one [`SyntaxError`].
//!
//! The files come from a pull request, so a few hundred bytes must not be able to take
//! the runner down: anchors and aliases (`&a`, `*a`; a few nested ones expand to
//! gigabytes) are refused where they stand, as is nesting deeper than [`MAX_DEPTH`].
//! The reader bounds the file's size ([`MAX_BYTES`]).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

pub use super::span::Span;

/// A parser's span as a [`Span`] (1-based columns; a multi-line span marks one character).
fn span_of(span: saphyr_parser::Span) -> Span {
    let (start, end) = (span.start, span.end);
    let len = if end.line() == start.line() { end.col().saturating_sub(start.col()) } else { 1 };
    Span::at(start.line(), start.col() + 1, len)
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// The shape of a node. Scalars keep their text; typing (number, bool) is decided by the
/// reader that knows which type the field wants, so `permissions: 0644` stays `"0644"`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar { text: String, quoted: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What a reader calls this node in "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Scalar { quoted: true, .. } => "a string",
            Value::Scalar { text, .. } => match text.as_str() {
                "true" | "false" => "a boolean",
                t if is_yaml_number(t) => "a number",
                _ => "a string",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The text of a scalar, if this is one.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The largest file spot reads as YAML (its files are a few kilobytes).
pub const MAX_BYTES: u64 = 1024 * 1024;
/// The deepest nesting of lists and mappings spot reads (its own files need five).
pub const MAX_DEPTH: usize = 32;

/// Malformed YAML: the parser's message, where it stopped, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
    pub help: &'static str,
}

impl SyntaxError {
    fn at(span: Span, message: impl Into<String>) -> Self {
        Self { span, message: message.into(), help: "fix the YAML syntax at this position" }
    }
}

impl From<ScanError> for SyntaxError {
    fn from(err: ScanError) -> Self {
        let mark = err.marker();
        Self::at(Span::at(mark.line(), mark.col() + 1, 1), err.info())
    }
}

/// An anchor or alias where it stands: refused, never expanded.
fn no_anchors(span: Span, what: &str) -> SyntaxError {
    SyntaxError {
        span,
        message: format!("{what} are not allowed in spot's files"),
        help: "write the value out in full where it is used (anchors and aliases can expand a few bytes into gigabytes)",
    }
}

enum Frame {
    Seq {
        span: Span,
        items: Vec<Node>,
    },
    /// `lines`: the line each key was first given on (a linear search over a megabyte of
    /// keys would take minutes).
    Map {
        span: Span,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        lines: HashMap<String, usize>,
    },
}

/// Parses the first YAML document of `src`. `Ok(None)` for an empty file.
///
/// A second document, or a duplicate key, is reported as a syntax error: a manifest is
/// one document, and YAML parsers disagree on which duplicate wins. So are anchors,
/// aliases and nesting deeper than [`MAX_DEPTH`].
pub fn parse(src: &str) -> Result<Option<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(src);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = next?;
        let span_here = span_of(span);
        let finished = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::at(
                        span_here,
                        "a second YAML document (`---`) is not allowed here: a manifest is one document",
                    ));
                }
                None
            }
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor > 0 =>
            {
                return Err(no_anchors(span_here, "anchors (`&name`)"));
            }
            Event::Alias(_) => return Err(no_anchors(span_here, "aliases (`*name`)")),
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return Err(SyntaxError {
                    span: span_here,
                    message: format!("lists and mappings nested more than {MAX_DEPTH} deep"),
                    help: "spot's files need a few levels: flatten this value",
                });
            }
            Event::Scalar(text, style, _, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = if !quoted && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text: text.into_owned(), quoted }
                };
                Some(Node { value, span: span_here })
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq { span: span_here, items: Vec::new() });
                None
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map {
                    span: span_here,
                    entries: Vec::new(),
                    key: None,
                    lines: HashMap::new(),
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { span, items }) => Some(Node { value: Value::Seq(items), span }),
                Some(Frame::Map { span, entries, .. }) => Some(Node { value: Value::Map(entries), span }),
                None => return Err(SyntaxError::at(span_here, "unbalanced collection end")),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some(node) = finished {
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map { entries, key, lines, .. }) => match key.take() {
                    None => {
                        if !matches!(node.value, Value::Scalar { .. }) {
                            return Err(SyntaxError::at(node.span, "mapping keys must be plain strings"));
                        }
                        let text = node.as_scalar().unwrap_or_default().to_string();
                        if let Some(first) = lines.get(&text) {
                            return Err(SyntaxError::at(
                                node.span,
                                format!("duplicate key `{text}` (first given on line {first})"),
                            ));
                        }
                        lines.insert(text, node.span.line);
                        *key = Some(node);
                    }
                    Some(k) => entries.push((k, node)),
                },
            }
        }
    }
    Ok(root)
}

/// Whether a plain scalar is a number under YAML 1.2's core schema.
pub fn is_yaml_number(s: &str) -> bool {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    if digits(unsigned)
        || matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || matches!(s, ".nan" | ".NaN" | ".NAN")
    {
        return true;
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return !oct.is_empty() && oct.chars().all(|c| ('0'..='7').contains(&c));
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (digits(int) || int.is_empty())
                && (digits(frac) || frac.is_empty())
                && !(int.is_empty() && frac.is_empty())
        }
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_one_based() {
        let node = parse("a:\n  b: 1\n").unwrap().unwrap();
        let b = node.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.span.line, 2);
        assert_eq!(b.span.col, 6);
        let Value::Map(entries) = &node.get("a").unwrap().value else { panic!("map expected") };
        assert_eq!(entries[0].0.span, Span::at(2, 3, 1));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn quoted_numbers_stay_strings_and_empty_is_null() {
        let node = parse("p: '0644'\nq:\n").unwrap().unwrap();
        assert_eq!(node.get("p").unwrap().describe(), "a string");
        assert_eq!(node.get("q").unwrap().value, Value::Null);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn anchors_aliases_and_deep_nesting_are_refused_where_they_stand() {
        let err = parse("a: &x [1, 2]\nb: *x\n").unwrap_err();
        assert_eq!(
            (err.span.line, err.message.as_str()),
            (1, "anchors (`&name`) are not allowed in spot's files")
        );
        // An alias with no anchor: the parser's own error, located.
        assert_eq!(parse("a: 1\nb: *x\n").unwrap_err().span.line, 2);
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&deep).is_ok());
        let deeper = format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let err = parse(&deeper).unwrap_err();
        assert_eq!((err.span.line, err.span.col), (1, MAX_DEPTH + 1));
        assert!(err.message.contains("nested more than"), "{}", err.message);
    }
}
