//! Reading [`Node`]s into the raw manifest types, collecting every error.
//!
//! Serde stops at the first error; a user fixing a manifest wants all of them. So the raw
//! types implement [`FromNode`], which records each problem in a [`Cx`] and carries on
//! with what it could read. The `raw_struct!` macro ties a struct's field names to the
//! YAML keys it accepts, so the parser, the "did you mean" list and the JSON Schema
//! (derived from the same structs) cannot drift apart.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::diagnostic::{Diagnostic, Kind};
use super::yaml::{Node, Span, Value, is_yaml_number};

/// Where read errors go, and which file they are about.
#[derive(Debug)]
pub struct Cx<'a> {
    pub file: String,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Cx<'_> {
    pub fn error(&mut self, kind: Kind, span: Span, message: impl Into<String>, help: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(kind, self.file.clone(), span, message, help));
    }

    /// Reports a problem inside a referenced file: at the manifest field that named it,
    /// or, when the name was inferred (the convention folder has no field), at `at` in
    /// the file itself.
    pub fn error_in_file(
        &mut self,
        kind: Kind,
        field: Span,
        file: &str,
        at: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        if field.line == 0 {
            self.diagnostics.push(Diagnostic::new(kind, file, at, message, help));
        } else {
            self.error(kind, field, message, help);
        }
    }

    pub fn wrong_type(&mut self, node: &Node, expected: &str) {
        self.error(
            Kind::WrongType,
            node.span,
            format!("expected {expected}, found {}", node.describe()),
            format!("write {expected} here"),
        );
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// Something that can be read from a YAML node.
pub trait FromNode: Sized {
    /// Reads `node`, recording problems in `cx`. `None` when nothing usable was read.
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self>;
}

impl FromNode for String {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Scalar { text, quoted: false }
                if text == "true" || text == "false" || is_yaml_number(text) =>
            {
                cx.error(
                    Kind::WrongType,
                    node.span,
                    format!("expected a string, found {}", node.describe()),
                    format!("put it in quotes: \"{text}\""),
                );
                None
            }
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                cx.wrong_type(node, "a string");
                None
            }
        }
    }
}

/// Any scalar as text: for env and tag values, where `PORT: 8080` is meant as "8080".
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarText(pub String);

impl FromNode for ScalarText {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        if let Some(text) = node.as_scalar() {
            Some(ScalarText(text.to_string()))
        } else {
            cx.wrong_type(node, "a string, number or boolean");
            None
        }
    }
}

impl JsonSchema for ScalarText {
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
    fn inline_schema() -> bool {
        true
    }
}

impl FromNode for bool {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Scalar { text, quoted: false } if text == "true" => Some(true),
            Value::Scalar { text, quoted: false } if text == "false" => Some(false),
            Value::Scalar { text, quoted: false }
                if matches!(text.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off" | "y" | "n") =>
            {
                cx.error(
                    Kind::WrongType,
                    node.span,
                    format!("`{text}` is not a boolean in YAML 1.2"),
                    "write `true` or `false`",
                );
                None
            }
            _ => {
                cx.wrong_type(node, "`true` or `false`");
                None
            }
        }
    }
}

macro_rules! from_node_int {
    ($($t:ty),*) => {$(
        impl FromNode for $t {
            fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
                match &node.value {
                    Value::Scalar { text, quoted: false } => match text.parse::<$t>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            cx.wrong_type(node, "a whole number");
                            None
                        }
                    },
                    _ => {
                        cx.wrong_type(node, "a whole number");
                        None
                    }
                }
            }
        }
    )*};
}
from_node_int!(u32, u64, i64);

impl FromNode for f64 {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Scalar { text, quoted: false } => match text.parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => {
                    cx.wrong_type(node, "a number");
                    None
                }
            },
            _ => {
                cx.wrong_type(node, "a number");
                None
            }
        }
    }
}

impl<T: FromNode> FromNode for Vec<T> {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Seq(items) => Some(items.iter().filter_map(|item| T::from_node(item, cx)).collect()),
            _ => {
                cx.wrong_type(node, "a list");
                None
            }
        }
    }
}

impl<T: FromNode> FromNode for Spanned<T> {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        T::from_node(node, cx).map(|value| Spanned::new(value, node.span))
    }
}

/// A YAML mapping with free-form keys (tags, env), kept in file order with spans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyedMap<T>(pub Vec<(Spanned<String>, T)>);

impl<T: FromNode> FromNode for KeyedMap<T> {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(KeyedMap(
                entries
                    .iter()
                    .filter_map(|(k, v)| {
                        let key = Spanned::new(k.as_scalar()?.to_string(), k.span);
                        T::from_node(v, cx).map(|v| (key, v))
                    })
                    .collect(),
            )),
            _ => {
                cx.wrong_type(node, "a mapping");
                None
            }
        }
    }
}

impl<T: JsonSchema> JsonSchema for KeyedMap<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Map_of_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <BTreeMap<String, T>>::json_schema(generator)
    }
    fn inline_schema() -> bool {
        true
    }
}

/// One value or a list of them (`machine_type: t3.micro` or `[t3.micro, t3a.micro]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T: FromNode> FromNode for OneOrMany<T> {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Seq(_) => Vec::<T>::from_node(node, cx).map(OneOrMany),
            _ => T::from_node(node, cx).map(|v| OneOrMany(vec![v])),
        }
    }
}

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        let many = generator.subschema_for::<Vec<T>>();
        schemars::json_schema!({ "anyOf": [one, many] })
    }
    fn inline_schema() -> bool {
        true
    }
}

/// A documented key of the original tool that spot refuses on purpose, with the reason.
pub type Unsupported = &'static [(&'static str, &'static str)];

/// Reads one mapping field by field; [`MapReader::finish`] reports the leftovers.
#[derive(Debug)]
pub struct MapReader<'n> {
    what: &'static str,
    span: Span,
    entries: Vec<(&'n Node, &'n Node, bool)>,
}

impl<'n> MapReader<'n> {
    /// `what` names the mapping in messages (`aws`, `an upload`...).
    pub fn new(node: &'n Node, what: &'static str, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(Self {
                what,
                span: node.span,
                entries: entries.iter().map(|(k, v)| (k, v, false)).collect(),
            }),
            _ => {
                cx.wrong_type(node, &format!("a mapping ({what})"));
                None
            }
        }
    }

    /// Takes the raw node under `key` or one of its aliases; reports a key given twice.
    pub fn take_node(&mut self, key: &str, aliases: &[&str], cx: &mut Cx) -> Option<&'n Node> {
        let mut found: Option<(&'n Node, &'n Node)> = None;
        for (k, v, used) in &mut self.entries {
            let Some(name) = k.as_scalar() else { continue };
            if name == key || aliases.contains(&name) {
                *used = true;
                if let Some((first, _)) = found {
                    cx.error(
                        Kind::Duplicate,
                        k.span,
                        format!(
                            "`{name}` repeats `{}` given on line {}",
                            first.as_scalar().unwrap_or(key),
                            first.span.line
                        ),
                        format!("keep one of `{key}`{}", alias_list(aliases)),
                    );
                } else {
                    found = Some((k, v));
                }
            }
        }
        found.map(|(_, v)| v).filter(|v| v.value != Value::Null)
    }

    /// Reads the field `key` (or an alias) as `T`; absent and null give `None`.
    pub fn take<T: FromNode>(&mut self, key: &str, aliases: &[&str], cx: &mut Cx) -> Option<Spanned<T>> {
        let node = self.take_node(key, aliases, cx)?;
        Spanned::<T>::from_node(node, cx)
    }

    /// Where the mapping starts, for "missing field" errors.
    pub fn span(&self) -> Span {
        self.span
    }

    /// Reports every key nobody took: unsupported ones with their reason, others with
    /// the closest known key.
    pub fn finish(self, known: &[&str], unsupported: Unsupported, cx: &mut Cx) {
        for (k, _, used) in self.entries {
            if used {
                continue;
            }
            let Some(name) = k.as_scalar() else { continue };
            if let Some((_, why)) = unsupported.iter().find(|(key, _)| {
                *key == name || (key.ends_with('*') && name.starts_with(key.trim_end_matches('*')))
            }) {
                cx.error(
                    Kind::UnsupportedKey,
                    k.span,
                    format!("`{name}` in {} is not supported by spot", self.what),
                    *why,
                );
                continue;
            }
            let help = suggest(name, known, || format!("known keys here: {}", known.join(", ")));
            cx.error(Kind::UnknownKey, k.span, format!("unknown key `{name}` in {}", self.what), help);
        }
    }
}

fn alias_list(aliases: &[&str]) -> String {
    aliases.iter().map(|a| format!(" or `{a}`")).collect()
}

/// "did you mean `x`?" for a likely typo of a known word, else `otherwise()`.
pub fn suggest(word: &str, known: &[&str], otherwise: impl FnOnce() -> String) -> String {
    match did_you_mean(word, known) {
        Some(best) => format!("did you mean `{best}`?"),
        None => otherwise(),
    }
}

/// The known word closest to `word`, if it is close enough to be a likely typo.
fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), *k))
        .filter(|(score, _)| *score > 0.86)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Declares which YAML keys a raw struct reads: each field is a key, `| "alias"` adds
/// accepted spellings. Generates `FromNode`, `KEYS` and `ALIASES`.
macro_rules! raw_struct {
    ($ty:ident, $what:literal, $unsupported:expr, { $($field:ident $(| $alias:literal)*),* $(,)? }) => {
        impl $crate::manifest::read::FromNode for $ty {
            fn from_node(
                node: &$crate::manifest::yaml::Node,
                cx: &mut $crate::manifest::read::Cx,
            ) -> Option<Self> {
                let mut map = $crate::manifest::read::MapReader::new(node, $what, cx)?;
                let value = Self {
                    at: map.span(),
                    $($field: map.take(stringify!($field), &[$($alias),*], cx),)*
                };
                let known: &[&str] = &[$(stringify!($field), $($alias,)*)*];
                map.finish(known, $unsupported, cx);
                Some(value)
            }
        }
        impl $ty {
            /// The keys this mapping accepts (aliases excluded).
            #[allow(dead_code)]
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            /// `(key, alias)` pairs this mapping also accepts.
            pub const ALIASES: &'static [(&'static str, &'static str)] = &[$($((stringify!($field), $alias),)*)*];
        }
    };
}
pub(crate) use raw_struct;
