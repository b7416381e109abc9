//! The committed JSON Schemas match the generated ones and accept every valid fixture.

use std::process::Command;

use crate::common::{repo, spot, valid_dirs};

#[test]
fn committed_schemas_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    spot().args(["schema", "--out"]).arg(tmp.path()).assert().success();
    for name in ["config.schema.json", "deployment.schema.json"] {
        let fresh = std::fs::read_to_string(tmp.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(repo().join("schema").join(name)).unwrap_or_default();
        assert!(
            fresh == committed,
            "schema/{name} is stale: run `cargo run -- schema --out schema` and commit it"
        );
    }
}

#[test]
fn schemas_know_every_key_the_parser_accepts() {
    use spot_deployer::manifest::raw::{RawAws, RawConfig, RawManifest, RawUpload};
    let config = spot_deployer::schema::config();
    let deployment = spot_deployer::schema::deployment();
    let keys = |v: &serde_json::Value, ptr: &str| -> Vec<String> {
        let mut k: Vec<String> =
            v.pointer(ptr).and_then(|p| p.as_object()).unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let sorted = |k: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = k.iter().map(|s| (*s).to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(keys(&config, "/properties"), sorted(RawConfig::KEYS));
    assert_eq!(keys(&config, "/$defs/RawAws/properties"), sorted(RawAws::KEYS));
    assert_eq!(keys(&deployment, "/$defs/Manifest/properties"), sorted(RawManifest::KEYS));
    let mut upload = RawUpload::KEYS.to_vec();
    upload.push("destination");
    assert_eq!(keys(&deployment, "/$defs/RawUpload/properties"), sorted(&upload));
}

#[test]
fn committed_schemas_accept_every_valid_fixture() {
    let mut configs = Vec::new();
    let mut manifests = Vec::new();
    for dir in valid_dirs() {
        if dir.join(".spot").is_dir() {
            configs.push(dir.join(".spot/config.yaml"));
            manifests.push(dir.join(".spot/deployment.yaml"));
        }
    }
    for (schema, files) in [("config.schema.json", configs), ("deployment.schema.json", manifests)] {
        let out = Command::new("check-jsonschema")
            .arg("--schemafile")
            .arg(repo().join("schema").join(schema))
            .args(&files)
            .output()
            .expect(
                "`check-jsonschema` must be installed (pip install check-jsonschema); .ci/run installs it",
            );
        assert!(
            out.status.success(),
            "{schema}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
