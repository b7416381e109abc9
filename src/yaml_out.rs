//! Serializes a JSON value tree as block-style YAML that means exactly the same thing.
//!
//! Typed documents (cloud-init) are built as Rust structs, turned into a
//! `serde_json::Value` by serde, and written here. Strings that YAML could read as
//! something else (`yes`, `0644`, `1e3`, `null`) are always quoted; multi-line strings
//! become `|` literal blocks so scripts stay readable. No string concatenation of user
//! values happens anywhere else.
//!
//! cloud-init reads the text with PyYAML, a YAML 1.1 reader: there NEL (U+0085), LS
//! (U+2028) and PS (U+2029) break lines, and a character outside its printable set
//! (C0/C1 controls, U+FFFE, U+FFFF) fails the whole document. Such characters are written
//! only as escapes inside double quotes (`\N`, `\L`, `\P`, `\uXXXX`), never raw.

use serde_json::Value;

/// The YAML text of `value` (a mapping at the top), ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        pad(out, indent);
        out.push_str(&quote_string(key));
        out.push(':');
        write_after_key(out, value, indent);
    }
}

fn write_after_key(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        match item {
            Value::Object(map) if !map.is_empty() => {
                let mut inner = String::new();
                write_map(&mut inner, map, indent + 2);
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
            Value::Array(list) if !list.is_empty() => {
                let mut inner = String::new();
                write_seq(&mut inner, list, indent + 2);
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
            other => {
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn scalar(value: &Value, indent: usize) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => literal_block(s, indent).unwrap_or_else(|| quote_string(s)),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A `|` or `|-` block for multi-line text, when the text allows one.
fn literal_block(s: &str, indent: usize) -> Option<String> {
    if !s.contains('\n') || s.contains('\r') || s.starts_with([' ', '\t', '\n']) {
        return None;
    }
    let (body, header) = match s.strip_suffix('\n') {
        Some(rest) if rest.ends_with('\n') => return None,
        Some(rest) => (rest, "|"),
        None => (s, "|-"),
    };
    if body.chars().any(|c| c != '\n' && (c.is_control() && c != '\t' || needs_escape(c))) {
        return None;
    }
    let mut out = header.to_string();
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
    }
    Some(out)
}

/// A plain scalar when it cannot be misread, else a JSON-style double-quoted one (JSON
/// string escapes are a subset of YAML's), with YAML 1.1's line breaks and every
/// character PyYAML does not print escaped too.
fn quote_string(s: &str) -> String {
    if is_plain_safe(s) {
        return s.to_string();
    }
    let json = serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()));
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Pure: a character a YAML 1.1 reader (PyYAML) would take for a line break, or refuses
/// to read at all: everything outside `\t \n \r`, U+0020-U+007E, U+00A0-U+D7FF and
/// U+E000-U+FFFD below U+10000 (PyYAML's printable set), and NEL, LS and PS.
fn needs_escape(c: char) -> bool {
    let printable = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || u32::from(c) >= 0x10000;
    !printable || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_plain_safe(s: &str) -> bool {
    const SPECIAL: &[&str] = &["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"];
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./@+-".contains(c))
        && !SPECIAL.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_strings_are_quoted() {
        let y = to_yaml(
            &json!({"a": "yes", "b": "0644", "c": "1e3", "d": "plain-word", "e": "a: b", "f": "", "g": "Null"}),
        );
        assert_eq!(
            y,
            "a: \"yes\"\nb: \"0644\"\nc: \"1e3\"\nd: plain-word\ne: \"a: b\"\nf: \"\"\ng: \"Null\"\n"
        );
    }

    #[test]
    fn yaml_1_1_line_breaks_and_unprintables_are_escaped_not_written_raw() {
        let y = to_yaml(
            &json!({"a": "x\u{2028}y\u{85}z\u{2029}", "b": "l1\nl\u{2028}2\n", "c": "\u{7f}\u{9f}\u{fffe}\u{1f600}"}),
        );
        assert_eq!(y, "a: \"x\\Ly\\Nz\\P\"\nb: \"l1\\nl\\L2\\n\"\nc: \"\\u007F\\u009F\\uFFFE\u{1f600}\"\n");
        assert!(!y.chars().any(|c| needs_escape(c) && c != '\n'));
    }

    #[test]
    fn nested_lists_and_blocks() {
        let y = to_yaml(
            &json!({"runcmd": [["sh", "-c", "echo hi"]], "write_files": [{"path": "/x", "content": "l1\nl2\n"}], "e": []}),
        );
        assert_eq!(
            y,
            "runcmd:\n  - - sh\n    - \"-c\"\n    - \"echo hi\"\nwrite_files:\n  - path: /x\n    content: |\n      l1\n      l2\ne: []\n"
        );
    }
}
