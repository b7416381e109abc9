//! Serializes a JSON value tree as block-style YAML that means exactly the same thing.
//!
//! Typed documents (cloud-init) are built as Rust structs, turned into a
//! `serde_json::Value` by serde, and written here. Strings that YAML could read as
//! something else (`yes`, `0644`, `1e3`, `null`) are always quoted; multi-line strings
//! become `|` literal blocks so scripts stay readable. No string concatenation of user
//! values happens anywhere else.

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
    if body.lines().any(|l| l.chars().any(|c| c.is_control() && c != '\t')) {
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
/// string escapes are a subset of YAML's).
fn quote_string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
    }
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
