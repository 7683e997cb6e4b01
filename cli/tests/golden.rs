//! Golden files for what `sidetrace` prints: the checklist (healthy and with one of each
//! failure), the status table (plain, wide, JSON) and a trace tree from Jaeger's JSON. Inputs
//! are plain facts (and `golden/jaeger-trace.json`), outputs `golden/*.txt|json`, so a reviewer
//! reads the output rather than the code.
//! `UPDATE_GOLDEN=1 cargo test -p sidetrace-cli --test golden` rewrites the outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sidetrace_cli::check::{
    self, Check, CollectorFacts, ConditionFacts, CrdFacts, DeploymentFacts, LeaseFacts,
    NamespaceFacts, PodFacts, Probe, WebhookFacts,
};
use sidetrace_cli::proxy::{ProxyConfigView, ProxyMetrics, ProxyView};
use sidetrace_cli::status::{PodRow, render_table};
use sidetrace_cli::{render, spans};
use sidetrace_contract::injection::{PodState, SkipReason};

const CP: &str = "sidetrace-system";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `value` as the golden JSON files hold it: pretty, with a final newline.
fn pretty_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("json") + "\n"
}

fn check_or_update(name: &str, actual: &str, failures: &mut Vec<String>) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => {}
        Ok(_) => failures.push(format!(
            "{} differs; actual:\n{actual}(rerun with UPDATE_GOLDEN=1 after checking)",
            path.display()
        )),
        Err(e) => failures.push(format!(
            "{}: {e} (UPDATE_GOLDEN=1 creates it)",
            path.display()
        )),
    }
}

fn enabled() -> BTreeMap<String, String> {
    [("sidetrace.dev/inject".to_owned(), "enabled".to_owned())].into()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> ConditionFacts {
    ConditionFacts {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
    }
}

fn proxy_view(pod: &str, exported: u64, send_failed: u64) -> ProxyView {
    ProxyView {
        namespace: "shop".into(),
        pod: pod.into(),
        ready: Ok(()),
        config: Some(ProxyConfigView {
            service_name: Some("front-proxy".into()),
            sampling_rate: Some(0.5),
            collector: Some("http://jaeger-collector.sidetrace-system:4318/v1/traces".into()),
            collector_protocol: Some("otlp-http".into()),
            config_file: Some("/etc/sidetrace/proxy.yaml".into()),
            config_file_error: None,
        }),
        metrics: Some(ProxyMetrics {
            exported,
            dropped: [
                ("queue_full".to_owned(), 0),
                ("send_failed".to_owned(), send_failed),
            ]
            .into(),
            reloads_ok: 1,
            ..ProxyMetrics::default()
        }),
        errors: Vec::new(),
    }
}

/// A healthy install, then the same install with each failure the issue names.
fn checklists() -> (Vec<Check>, Vec<Check>) {
    let crd = CrdFacts {
        established: true,
        served: vec!["v1alpha1".into()],
    };
    let up = DeploymentFacts {
        desired: 1,
        available: 1,
    };
    let lease = LeaseFacts {
        holder: Some("sidetrace-operator-6b7c9-x8k2p".into()),
        renewed_secs_ago: Some(2),
        duration_secs: Some(15),
    };
    let webhooks = [WebhookFacts {
        name: "namespace.inject.sidetrace.dev".into(),
        target: "service sidetrace-system/sidetrace-injector:443".into(),
        failure_policy: "Ignore".into(),
        has_ca_bundle: true,
    }];
    let secret = "sidetrace-system/sidetrace-injector-tls";
    let dns = "sidetrace-injector.sidetrace-system.svc";
    let ready_ts = [
        condition("Ready", "True", "ConfigRendered", "config rendered"),
        condition(
            "PodsInjected",
            "True",
            "AllInjected",
            "1 of 1 pods carry the sidecar",
        ),
    ];
    let healthy_ns = NamespaceFacts {
        name: "shop".into(),
        labels: enabled(),
        traced_services: 1,
        pods: vec![PodFacts {
            name: "front-proxy-5d9f7-abcde".into(),
            state: PodState::Injected {
                config_from: Some("front-proxy".into()),
            },
            workload: Some("deployment/front-proxy".into()),
        }],
    };
    let collector = CollectorFacts {
        url: "http://jaeger-collector.sidetrace-system:4318/v1/traces".into(),
        service: Some("sidetrace-system/jaeger-collector".into()),
        ready_endpoints: 1,
    };
    let mut healthy = vec![
        check::crd("tracedservices.sidetrace.dev", Some(&crd)),
        check::deployment("operator", CP, "sidetrace-operator", Some(up)),
        check::leader(CP, "sidetrace-operator", Some(&lease)),
        check::deployment("injector", CP, "sidetrace-injector", Some(up)),
        check::webhook_registered("sidetrace-injector", Some(&webhooks)),
        check::ca_bundle(secret, dns, &Ok(())),
        check::webhook_reachable(
            "sidetrace-injector",
            CP,
            &Probe::Injected {
                namespace: "shop".into(),
            },
        ),
    ];
    healthy.extend(check::namespace(&healthy_ns));
    healthy.push(check::traced_service("shop", "front-proxy", &ready_ts));
    healthy.extend(check::proxy(&proxy_view("front-proxy-5d9f7-abcde", 120, 0)));
    healthy.push(check::collector(&collector));

    let scaled = DeploymentFacts {
        desired: 0,
        available: 0,
    };
    let unlabelled = NamespaceFacts {
        name: "billing".into(),
        labels: BTreeMap::new(),
        traced_services: 1,
        pods: vec![PodFacts {
            name: "invoices-0".into(),
            state: PodState::Skipped(SkipReason::NotEnabled),
            workload: Some("statefulset/invoices".into()),
        }],
    };
    let late = NamespaceFacts {
        pods: vec![
            healthy_ns.pods[0].clone(),
            PodFacts {
                name: "cart-7f8d6-q2w3e".into(),
                state: PodState::Missing {
                    why: "created before injection was enabled, or while the webhook was \
                          unreachable"
                        .into(),
                },
                workload: Some("deployment/cart".into()),
            },
        ],
        ..healthy_ns.clone()
    };
    let mut failing = vec![
        check::crd("tracedservices.sidetrace.dev", Some(&crd)),
        check::deployment("operator", CP, "sidetrace-operator", Some(up)),
        check::leader(CP, "sidetrace-operator", Some(&lease)),
        check::deployment("injector", CP, "sidetrace-injector", Some(scaled)),
        check::webhook_registered("sidetrace-injector", Some(&webhooks)),
        check::ca_bundle(
            secret,
            dns,
            &Err("the serving certificate is not signed by any CA in the caBundle".into()),
        ),
        check::webhook_reachable(
            "sidetrace-injector",
            CP,
            &Probe::Untouched {
                namespace: "shop".into(),
            },
        ),
    ];
    failing.extend(check::namespace(&unlabelled));
    failing.extend(check::namespace(&late));
    failing.push(check::traced_service(
        "shop",
        "front-proxy",
        &[
            ready_ts[0].clone(),
            condition(
                "PodsInjected",
                "False",
                "PodsNotInjected",
                "1 of 2 pods should carry the sidecar and do not: cart-7f8d6-q2w3e",
            ),
        ],
    ));
    failing.extend(check::proxy(&proxy_view("front-proxy-5d9f7-abcde", 0, 42)));
    failing.push(check::collector(&CollectorFacts {
        ready_endpoints: 0,
        ..collector
    }));
    (healthy, failing)
}

#[test]
fn checklists_render_as_in_the_golden_files() {
    let (healthy, failing) = checklists();
    assert!(!check::any_failed(&healthy), "the healthy install passes");
    assert!(check::any_failed(&failing));
    let mut failures = Vec::new();
    check_or_update(
        "check-healthy.txt",
        &render::checklist(&healthy, false),
        &mut failures,
    );
    check_or_update(
        "check-failures.txt",
        &render::checklist(&failing, false),
        &mut failures,
    );
    check_or_update("check-failures.json", &pretty_json(&failing), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn status_renders_as_in_the_golden_files() {
    let rows = vec![
        PodRow {
            namespace: "shop".into(),
            traced_service: Some("front-proxy".into()),
            pod: Some("front-proxy-5d9f7-abcde".into()),
            injected: true,
            ready: "2/2".into(),
            sampling: Some(0.5),
            spans_per_second: Some(12.5),
            exported: Some(4200),
            dropped: Some(3),
            drop_reasons: "send_failed 3".into(),
            collector: Some("http://jaeger-collector.sidetrace-system:4318/v1/traces".into()),
        },
        PodRow {
            namespace: "shop".into(),
            traced_service: Some("front-proxy".into()),
            pod: Some("front-proxy-5d9f7-zzzzz".into()),
            injected: false,
            ready: "1/1".into(),
            ..PodRow::default()
        },
        PodRow {
            namespace: "shop".into(),
            traced_service: Some("idle".into()),
            ready: "-".into(),
            ..PodRow::default()
        },
    ];
    let mut failures = Vec::new();
    check_or_update("status.txt", &render_table(&rows, false), &mut failures);
    check_or_update("status-wide.txt", &render_table(&rows, true), &mut failures);
    check_or_update("status.json", &pretty_json(&rows), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_jaeger_trace_renders_as_the_demo_tree() {
    let text = std::fs::read_to_string(dir().join("jaeger-trace.json")).expect("fixture");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let spans = spans::jaeger_spans(&v);
    assert_eq!(spans.len(), 5);
    let mut failures = Vec::new();
    check_or_update("trace.txt", &spans::render_tree(&spans), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
