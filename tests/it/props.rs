//! Property tests: generated valid manifests round-trip through YAML and give
//! deterministic plans; random and truncated input never panics.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use spot_deployer::manifest::yaml::{self, Node};
use spot_deployer::{bundle, cloud_init, manifest, plan};

/// YAML 1.2 core-schema reading of a node, to compare with the JSON that was written.
fn to_json(node: &Node) -> Value {
    match &node.value {
        yaml::Value::Null => Value::Null,
        yaml::Value::Scalar { text, quoted: true } => Value::String(text.clone()),
        yaml::Value::Scalar { text, quoted: false } => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            t => t.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(t.to_string())),
        },
        yaml::Value::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        yaml::Value::Map(entries) => Value::Object(
            entries.iter().map(|(k, v)| (k.as_scalar().unwrap().to_string(), to_json(v))).collect(),
        ),
    }
}

const REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "sa-east-1"];
const TYPES: &[&str] = &["t3.micro", "t3a.small", "m7g.large", "c6i.xlarge", "t4g.nano"];

fn env_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", any::<String>(), 0..6)
}

fn manifest_strategy() -> impl Strategy<Value = (Value, Value, BTreeMap<String, String>)> {
    (
        prop::sample::subsequence(REGIONS, 1..=REGIONS.len()),
        prop::collection::vec(prop::sample::subsequence(TYPES, 1..3), 5),
        1u32..=1000,
        prop::sample::select(vec!["10m", "90m", "2h", "1d", "7d", "1h30m"]),
        prop::collection::btree_map("[A-Za-z][A-Za-z0-9 _.:/=+@-]{0,20}", "[A-Za-z0-9 _.:/=+@-]{0,30}", 0..5),
        prop::collection::vec("[a-z][a-z0-9+.-]{1,12}", 0..6),
        env_strategy(),
        prop::collection::btree_set("[A-Z][A-Z0-9_]{0,6}_SECRET", 0..3),
    )
        .prop_map(|(regions, types, total, ttl, tags, mut packages, env, secrets)| {
            packages.sort();
            packages.dedup();
            let regions: Vec<Value> = regions
                .iter()
                .zip(types)
                .map(|(r, t)| json!({ *r: { "machine_type": t, "image": "auto" } }))
                .collect();
            let config = json!({
                "aws": { "total_instances": total, "ttl": ttl, "tags": tags },
                "regions": regions,
            });
            let manifest = json!({
                "version": 1,
                "packages": packages,
                "env": env,
                "secrets": secrets.into_iter().collect::<Vec<_>>(),
            });
            (config, manifest, env)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]

    #[test]
    fn valid_manifests_round_trip_and_plan_deterministically((config, manifest_doc, env) in manifest_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".spot")).unwrap();
        let config_yaml = spot_deployer::yaml_out::to_yaml(&config);
        let manifest_yaml = spot_deployer::yaml_out::to_yaml(&manifest_doc);
        // The emitter's YAML reads back as the same JSON.
        prop_assert_eq!(to_json(&yaml::parse(&config_yaml).unwrap().unwrap()), config.clone());
        prop_assert_eq!(to_json(&yaml::parse(&manifest_yaml).unwrap().unwrap()), manifest_doc.clone());
        std::fs::write(dir.path().join(".spot/config.yaml"), &config_yaml).unwrap();
        std::fs::write(dir.path().join(".spot/deployment.yaml"), &manifest_yaml).unwrap();

        let deployment = match manifest::load(dir.path()) {
            Ok(d) => d,
            Err(report) => return Err(TestCaseError::fail(format!("{}\n{config_yaml}\n{manifest_yaml}", report.human()))),
        };
        prop_assert_eq!(&deployment.manifest.env, &env);

        let inputs = plan::Inputs {
            deployment_id: "prop-1".into(),
            now: "2026-05-01T00:00:00Z".parse().unwrap(),
            repository: "o/r".into(),
            pr: Some(3),
            run_id: None,
        };
        let identity = plan::identity(&deployment, &inputs);
        let keys = cloud_init::UserDataKeys::placeholders();
        let a = cloud_init::render(&deployment, &identity, &keys).unwrap();
        let b = cloud_init::render(&deployment, &identity, &keys).unwrap();
        prop_assert_eq!(&a.bytes, &b.bytes);
        let doc = yaml::parse(a.text.trim_start_matches("#cloud-config\n")).unwrap().unwrap();
        let env_file = to_json(&doc)["write_files"][0]["content"].as_str().unwrap().to_string();
        for key in env.keys() {
            let needle = format!("{key}=");
            prop_assert!(env_file.contains(&needle));
        }
        let plan_a = plan::build(&deployment, &inputs, bundle::list(&deployment, true).unwrap(), &a);
        let plan_b = plan::build(&deployment, &inputs, bundle::list(&deployment, true).unwrap(), &b);
        prop_assert_eq!(serde_json::to_string(&plan_a).unwrap(), serde_json::to_string(&plan_b).unwrap());
        prop_assert_eq!(plan_a.regions.iter().map(|r| r.instances).sum::<u32>(), deployment.config.total_instances);
    }

    #[test]
    fn any_text_parses_or_errors_without_panicking(text in any::<String>()) {
        let _ = yaml::parse(&text);
    }

    /// Mutations of a valid manifest (YAML tokens inserted, lines deleted or duplicated),
    /// alias bombs and deep nesting among them: each loads or is refused with
    /// diagnostics, never a panic or a hang (the unit tests of `manifest::yaml` and the
    /// nine-level bomb in `cli.rs` check the refusals themselves).
    #[test]
    fn mutated_manifests_with_bombs_and_nesting_load_or_are_refused(
        edits in prop::collection::vec((0usize..40, 0usize..8, 1usize..6), 1..6),
    ) {
        const TOKENS: [&str; 8] = ["&a [x, x, x]", "*a", "[[[[[[[[[[", "]]]]", "{k: &b {c: *b}}", "- ", ": ", "\n"];
        let base = std::fs::read_to_string(crate::common::fixtures().join("valid/everything/.spot/deployment.yaml")).unwrap();
        let mut lines: Vec<String> = base.lines().map(String::from).collect();
        for (at, token, times) in edits {
            let at = at % lines.len().max(1);
            match token {
                0..=5 => {
                    let mut line = lines[at].clone();
                    let cut = line.char_indices().map(|(i, _)| i).nth(line.chars().count() / 2).unwrap_or(line.len());
                    line.insert_str(cut, &TOKENS[token].repeat(times));
                    lines[at] = line;
                }
                6 => { lines.remove(at); }
                _ => { let copy = lines[at].clone(); lines.insert(at, copy); }
            }
        }
        let text = lines.join("\n");
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&crate::common::fixtures().join("valid/everything"), dir.path());
        std::fs::write(dir.path().join(".spot/deployment.yaml"), &text).unwrap();
        if let Err(report) = manifest::load(dir.path()) {
            prop_assert!(!report.diagnostics.is_empty());
            let _ = report.human();
        }
    }

    #[test]
    fn yaml_like_text_loads_or_errors_without_panicking(text in "[a-z_:\\[\\]{}\\-'\"#&*!|>%@ \n0-9.,/]{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".spot")).unwrap();
        std::fs::write(dir.path().join(".spot/config.yaml"), &text).unwrap();
        std::fs::write(dir.path().join(".spot/deployment.yaml"), &text).unwrap();
        let _ = manifest::load(dir.path());
    }
}

#[test]
fn every_truncation_of_the_fixtures_loads_or_errors_without_panicking() {
    for name in ["everything", "original-python-api"] {
        let src = crate::common::fixtures().join("valid").join(name);
        for file in ["config.yaml", "deployment.yaml"] {
            let full = std::fs::read_to_string(src.join(".spot").join(file)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            copy_tree(&src, dir.path());
            let target = dir.path().join(".spot").join(file);
            for (cut, _) in full.char_indices().step_by(3) {
                std::fs::write(&target, &full[..cut]).unwrap();
                if let Err(report) = manifest::load(dir.path()) {
                    assert!(!report.diagnostics.is_empty());
                    let _ = report.human();
                }
            }
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if entry.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}
