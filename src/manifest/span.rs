//! Where a thing stands in a file: the one type every later stage points with.
//!
//! The YAML tree, the diagnostics and the validated model all carry [`Span`]s; this
//! module knows nothing of any of them.

/// A place in a file: 1-based line and column (in characters), and how many characters
/// on that line the caret should cover. Line 0 means "the file as a whole".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub col: usize,
    pub len: usize,
}

impl Span {
    /// A span for a whole file (no line to point at).
    pub const FILE: Span = Span { line: 0, col: 0, len: 0 };

    /// The first character of a file.
    pub const START: Span = Span { line: 1, col: 1, len: 1 };

    pub fn at(line: usize, col: usize, len: usize) -> Self {
        Self { line, col, len: len.max(1) }
    }
}
