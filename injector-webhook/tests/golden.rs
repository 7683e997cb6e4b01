//! Golden fixtures: `tests/fixtures/<case>/pod.json` (+ optional `case.json`) →
//! `patch.json`, `patched-pod.json` and `warnings.json`. The patch is applied with a JSON Patch
//! implementation and the resulting pod is compared, so reviewers read what the pod becomes.
//! `UPDATE_GOLDEN=1 cargo test -p sidetrace-injector --test golden` rewrites the outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;
use sidetrace_contract::injection::{Decision, SkipRecord};
use sidetrace_contract::names;
use sidetrace_crds::TracedService;
use sidetrace_injector::mutate::{PodContext, mutate};
use sidetrace_injector::{Settings, SidecarMode};

/// Per-case inputs besides the pod.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    /// Namespace of the admission request; "shop" by default.
    namespace: Option<String>,
    /// Labels of that namespace; `sidetrace.dev/inject=enabled` by default.
    namespace_labels: Option<BTreeMap<String, String>>,
    /// "native" (default) or "classic".
    mode: Option<String>,
    /// TracedServices in the cache.
    #[serde(default)]
    traced_services: Vec<TracedService>,
    /// `--init-ipv6=on` when true (the default is auto).
    #[serde(default)]
    init_ipv6: bool,
}

fn settings(mode: SidecarMode) -> Settings {
    Settings {
        proxy_image: "sidetrace/proxy:golden".into(),
        init_image: "sidetrace/init:golden".into(),
        mode,
        ..Settings::default()
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_or_update(path: &Path, actual: &Value, failures: &mut Vec<String>) {
    let text = serde_json::to_string_pretty(actual).expect("serialise") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, text).expect("write golden");
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if serde_json::from_str::<Value>(&expected).ok().as_ref() == Some(actual) => {}
        Ok(_) => failures.push(format!(
            "{} differs; actual:\n{text}(rerun with UPDATE_GOLDEN=1 after checking)",
            path.display()
        )),
        Err(e) => failures.push(format!(
            "{}: {e} (UPDATE_GOLDEN=1 creates it)",
            path.display()
        )),
    }
}

struct Outcome {
    patched: Value,
    injected: bool,
}

fn run_case(dir: &Path, failures: &mut Vec<String>) -> Outcome {
    let pod_json = read_json(&dir.join("pod.json"));
    let case: Case = if dir.join("case.json").exists() {
        serde_json::from_value(read_json(&dir.join("case.json"))).expect("case.json")
    } else {
        Case::default()
    };
    let mode = match case.mode.as_deref() {
        None | Some("native") => SidecarMode::Native,
        Some("classic") => SidecarMode::Classic,
        Some(other) => panic!("{}: unknown mode {other}", dir.display()),
    };
    let settings = Settings {
        init_ipv6: if case.init_ipv6 {
            sidetrace_contract::Ipv6Capture::On
        } else {
            sidetrace_contract::Ipv6Capture::Auto
        },
        ..settings(mode)
    };
    let namespace = case.namespace.clone().unwrap_or_else(|| "shop".into());
    let ns_labels = case.namespace_labels.clone().unwrap_or_else(|| {
        [(
            names::INJECT_LABEL.to_owned(),
            names::INJECT_NAMESPACE_ENABLED.to_owned(),
        )]
        .into()
    });
    let traced: Vec<Arc<TracedService>> = case.traced_services.into_iter().map(Arc::new).collect();
    let pod: Pod = serde_json::from_value(pod_json.clone()).expect("pod.json is a Pod");
    let ctx = PodContext {
        namespace: &namespace,
        namespace_labels: Some(&ns_labels),
        traced_services: &traced,
    };
    let m = mutate(&pod, ctx, &settings);
    let patch_json = m
        .patch
        .as_ref()
        .map(|p| serde_json::to_value(p).expect("patch serialises"))
        .unwrap_or_else(|| Value::Array(vec![]));
    let mut patched = pod_json.clone();
    if let Some(p) = &m.patch {
        json_patch::patch(&mut patched, p)
            .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", dir.display()));
    }
    check_or_update(&dir.join("patch.json"), &patch_json, failures);
    check_or_update(&dir.join("patched-pod.json"), &patched, failures);
    check_or_update(
        &dir.join("warnings.json"),
        &serde_json::to_value(&m.warnings).expect("json"),
        failures,
    );

    // Idempotence: the apiserver may call the webhook again with the patched pod.
    let patched_pod: Pod = serde_json::from_value(patched.clone())
        .unwrap_or_else(|e| panic!("{}: patched pod is not a Pod: {e}", dir.display()));
    let again = mutate(&patched_pod, ctx, &settings);
    if again.patch.is_some() {
        failures.push(format!("{}: second pass patched again", dir.display()));
    }
    let injected = matches!(m.decision, Decision::Inject(_));
    if injected {
        check_injected(dir, &pod_json, &patched, mode, failures);
    } else {
        check_skipped(dir, &m.decision, &pod_json, &patched, failures);
    }
    Outcome { patched, injected }
}

/// A pod left alone keeps its spec; where the reason is recorded, the skip annotation says it
/// in the form the operator reads back.
fn check_skipped(
    dir: &Path,
    decision: &Decision,
    before: &Value,
    after: &Value,
    failures: &mut Vec<String>,
) {
    let mut fail = |what: &str| failures.push(format!("{}: {what}", dir.display()));
    let Decision::Skip(reason) = decision else {
        return;
    };
    if before["spec"] != after["spec"] {
        fail("a skipped pod's spec changed");
    }
    let record = after["metadata"]["annotations"][names::SKIP_ANNOTATION]
        .as_str()
        .and_then(SkipRecord::parse);
    match (reason.is_recorded(), record) {
        (true, Some(r)) if r == SkipRecord::of(reason) => {}
        (true, r) => fail(&format!("skip {reason:?} recorded as {r:?}")),
        (false, Some(r)) => fail(&format!(
            "skip {reason:?} must not be recorded, found {r:?}"
        )),
        (false, None) => {}
    }
}

/// Invariants every injected pod satisfies, whatever the golden files say.
fn check_injected(
    dir: &Path,
    before: &Value,
    after: &Value,
    mode: SidecarMode,
    failures: &mut Vec<String>,
) {
    let mut fail = |what: &str| failures.push(format!("{}: {what}", dir.display()));
    let names_of = |v: &Value, key: &str| -> Vec<String> {
        v["spec"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let app_inits = names_of(before, "initContainers");
    let apps = names_of(before, "containers");
    let inits = names_of(after, "initContainers");
    let containers = names_of(after, "containers");
    let (init, proxy) = (
        names::INIT_CONTAINER_NAME.to_owned(),
        names::PROXY_CONTAINER_NAME.to_owned(),
    );
    let proxy_json = match mode {
        SidecarMode::Native => {
            let mut want = vec![init.clone(), proxy.clone()];
            want.extend(app_inits);
            if inits != want {
                fail(&format!("native init order {inits:?}, want {want:?}"));
            }
            if containers != apps {
                fail("native mode changed the regular containers");
            }
            let p = &after["spec"]["initContainers"][1];
            if p["restartPolicy"] != "Always" || p["startupProbe"]["httpGet"]["path"] != "/ready" {
                fail("native proxy lacks restartPolicy Always or the /ready startup probe");
            }
            p.clone()
        }
        SidecarMode::Classic => {
            let mut want = app_inits;
            want.push(init.clone());
            if inits != want {
                fail(&format!("classic init order {inits:?}, want {want:?}"));
            }
            let mut want = vec![proxy.clone()];
            want.extend(apps);
            if containers != want {
                fail(&format!("classic containers {containers:?}, want {want:?}"));
            }
            let p = &after["spec"]["containers"][0];
            if p["lifecycle"]["postStart"]["exec"]["command"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                fail("classic proxy lacks the postStart hold");
            }
            p.clone()
        }
    };
    let sc = &proxy_json["securityContext"];
    if sc["runAsNonRoot"] != true
        || sc["readOnlyRootFilesystem"] != true
        || sc["runAsUser"] != 1337
        || sc["capabilities"]["drop"] != serde_json::json!(["ALL"])
        || sc["allowPrivilegeEscalation"] != false
    {
        fail(&format!("proxy securityContext {sc}"));
    }
    if proxy_json["readinessProbe"]["httpGet"]["path"] != "/ready" {
        fail("proxy readiness probe is not /ready");
    }
    let init_json = after["spec"]["initContainers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == names::INIT_CONTAINER_NAME))
        .cloned()
        .unwrap_or_default();
    let isc = &init_json["securityContext"];
    if isc["capabilities"]["add"] != serde_json::json!(["NET_ADMIN", "NET_RAW"])
        || isc["allowPrivilegeEscalation"] != false
        || isc["privileged"] != false
    {
        fail(&format!("init securityContext {isc}"));
    }
    let status = after["metadata"]["annotations"][names::STATUS_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    if serde_json::from_str::<Value>(status).is_err() {
        fail("status annotation is not JSON");
    }
    // App containers are untouched, except tcpSocket probes, which become the proxy's check
    // of the same port (compared with the probes taken out).
    let without_probes = |c: &Value| {
        let mut c = c.clone();
        if let Some(o) = c.as_object_mut() {
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let tcp_or_rewritten = o.get(probe).is_some_and(|p| {
                    p.get("tcpSocket").is_some()
                        || p["httpGet"]["path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with(names::APP_TCP_PROBE_PATH_PREFIX))
                });
                if tcp_or_rewritten {
                    o.remove(probe);
                }
            }
        }
        c
    };
    for key in ["containers", "initContainers"] {
        for c in before["spec"][key].as_array().into_iter().flatten() {
            let found = after["spec"][key]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| without_probes(a) == without_probes(c));
            if !found {
                fail(&format!("app container {} changed", c["name"]));
            }
        }
    }
}

fn case_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("pod.json").exists())
        .collect();
    // `plain` first: its output is `already-injected`'s input.
    dirs.sort_by_key(|d| (!d.ends_with("plain"), d.clone()));
    dirs
}

#[test]
fn golden_fixtures() {
    let mut failures = Vec::new();
    let dirs = case_dirs();
    assert!(dirs.len() >= 20, "fixtures missing: found {}", dirs.len());
    let mut injected = 0;
    for dir in &dirs {
        let outcome = run_case(dir, &mut failures);
        injected += usize::from(outcome.injected);
        // The already-injected case is the plain case's output, kept in sync here.
        if dir.ends_with("plain") {
            let target = dir.with_file_name("already-injected").join("pod.json");
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::write(
                    &target,
                    serde_json::to_string_pretty(&outcome.patched).expect("json") + "\n",
                )
                .expect("write");
            } else if target.exists() && read_json(&target) != outcome.patched {
                failures.push(format!("{} is not plain's patched pod", target.display()));
            }
        }
    }
    assert!(injected >= 10, "only {injected} cases inject");
    assert!(
        failures.is_empty(),
        "{} golden failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
