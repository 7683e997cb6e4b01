//! The checked-in CRD YAML matches the Rust types, examples validate, and invalid manifests are
//! rejected with messages that name the bad field.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sidetrace_crds::{TracedService, crd_yaml, schema_check};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const REGENERATE: &str = "run `make crds` to regenerate it";

#[test]
fn checked_in_crd_yaml_matches_the_rust_types() {
    let want = crd_yaml();
    for path in [
        "crds/tracedservices.sidetrace.dev.yaml",
        "helm/sidetrace/crds/tracedservices.sidetrace.dev.yaml",
    ] {
        let got = std::fs::read_to_string(root().join(path))
            .unwrap_or_else(|e| panic!("{path} is missing ({e}): {REGENERATE}"));
        assert!(
            got == want,
            "{path} has drifted from crds/src: {REGENERATE}"
        );
    }
}

fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&crd_yaml()).expect("generated CRD is YAML");
    schema_check::crd_schema(&crd)
        .expect("CRD has a schema")
        .clone()
}

fn manifests(dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let value: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, value));
    }
    out
}

#[test]
fn every_example_is_valid() {
    let schema = schema();
    let examples = manifests("crds/examples");
    assert!(
        examples.len() >= 4,
        "expected the demo examples, found {}",
        examples.len()
    );
    for (name, value) in examples {
        let errors = schema_check::validate(&schema, &value);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let ts: TracedService =
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
        ts.spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn demo_service1_names_its_outbound_call_check_stock() {
    let (_, value) = manifests("crds/examples")
        .into_iter()
        .find(|(n, _)| n == "demo-service1.yaml")
        .expect("demo-service1.yaml");
    let ts: TracedService = serde_json::from_value(value).expect("parses");
    let config = ts.spec.to_proxy_config(None);
    assert_eq!(
        config.operation_for(
            sidetrace_contract::Direction::Outbound,
            "GET",
            "/trace/2",
            "service2:8000"
        ),
        Some("checkStock")
    );
}

/// Each invalid manifest carries, in a leading comment `# expect: <text>`, a fragment of the
/// message that must reject it (from the schema, or from the CEL rules mirrored in validate()).
#[test]
fn every_invalid_manifest_is_rejected_naming_the_field() {
    let schema = schema();
    let dir = "crds/tests/invalid";
    let cases = manifests(dir);
    assert!(
        cases.len() >= 6,
        "expected invalid cases, found {}",
        cases.len()
    );
    for (name, value) in cases {
        let text = std::fs::read_to_string(root().join(dir).join(&name)).expect("readable");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name} has no '# expect:' line"))
            .trim()
            .to_owned();
        let mut errors = schema_check::validate(&schema, &value);
        if errors.is_empty() {
            match serde_json::from_value::<TracedService>(value) {
                Ok(ts) => errors.extend(ts.spec.validate().err().map(|e| e.to_string())),
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert!(
            errors.iter().any(|e| e.contains(&expect)),
            "{name}: expected an error containing {expect:?}, got {errors:?}"
        );
    }
}
