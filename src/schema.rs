//! JSON Schemas of `config.yaml` and `deployment.yaml`, generated from the raw types.
//!
//! The raw structs are the parser's source of truth (their fields are the accepted
//! keys), so deriving the schema from them keeps editors and `spot validate` in step.
//! Aliases (`destination` for `dest`) and the original's `deployment:` wrapper are added
//! here, since they are parser behaviour rather than fields.

use serde_json::{Value, json};

use crate::manifest::raw::{RawConfig, RawManifest, RawService, RawTarballSpec, RawUpload};

/// The `config.yaml` schema.
pub fn config() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RawConfig)).unwrap_or_default();
    tidy(&mut schema);
    schema
}

/// The `deployment.yaml` schema: the flat form or the original's `deployment:` form.
pub fn deployment() -> Value {
    let generated = serde_json::to_value(schemars::schema_for!(RawManifest)).unwrap_or_default();
    let Value::Object(mut root) = generated else {
        return Value::Null;
    };
    let defs = root.remove("$defs").unwrap_or_else(|| json!({}));
    let schema_uri = root.remove("$schema").unwrap_or(Value::Null);
    let title = root.remove("title").unwrap_or(Value::Null);
    let description = root.remove("description").unwrap_or(Value::Null);
    let version = root.get("properties").and_then(|p| p.get("version")).cloned().unwrap_or(Value::Null);
    let mut defs = match defs {
        Value::Object(d) => d,
        _ => serde_json::Map::new(),
    };
    defs.insert("Manifest".into(), Value::Object(root));
    let mut schema = json!({
        "$schema": schema_uri,
        "title": title,
        "description": description,
        "anyOf": [
            { "$ref": "#/$defs/Manifest" },
            {
                "description": "The original spot deployer's form: everything nested under `deployment:`.",
                "type": "object",
                "properties": { "version": version, "deployment": { "$ref": "#/$defs/Manifest" } },
                "required": ["deployment"],
                "additionalProperties": false
            }
        ],
        "$defs": defs,
    });
    tidy(&mut schema);
    schema
}

/// Adds accepted aliases as properties, so editors do not flag them.
fn tidy(schema: &mut Value) {
    for (def, aliases) in [
        ("RawUpload", RawUpload::ALIASES),
        ("RawTarballSpec", RawTarballSpec::ALIASES),
        ("RawService", RawService::ALIASES),
    ] {
        let Some(props) =
            schema.pointer_mut(&format!("/$defs/{def}/properties")).and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (field, alias) in aliases {
            if let Some(field_schema) = props.get(*field).cloned() {
                let mut aliased = field_schema;
                if let Some(obj) = aliased.as_object_mut() {
                    obj.insert("description".into(), json!(format!("Alias of `{field}`.")));
                }
                props.insert((*alias).to_string(), aliased);
            }
        }
    }
}
