//! Reconcile against kube's mock service (controller-rs fixtures style): each scenario states
//! the exact API calls reconcile must make — method, path and the body's key facts — and no
//! others. The real-apiserver tier (e2e/tests/system.rs) proves the same against Kubernetes;
//! these pin the call sequence, which a real apiserver cannot show (e.g. "no write at all").

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidetrace_crds::TracedService;
use sidetrace_operator::controller::{Context, reconcile};
use sidetrace_operator::render::desired_config_map;
use sidetrace_operator::status::{Observed, desired_status};
use sidetrace_operator::telemetry::Metrics;
use tower_test::mock::{self, Handle};

type MockHandle = Handle<Request<Body>, Response<Body>>;

/// How long a scenario may take: the mock never waits on a network.
const TIMEOUT: Duration = Duration::from_secs(10);

fn traced_service(spec: Value) -> TracedService {
    let mut ts = TracedService::new("service1", serde_json::from_value(spec).expect("spec"));
    ts.metadata.namespace = Some("shop".into());
    ts.metadata.uid = Some("uid-1".into());
    ts.metadata.generation = Some(1);
    ts.metadata.resource_version = Some("10".into());
    ts
}

fn context(client: Client) -> Arc<Context> {
    let (pods, _) = reflector::store::<PartialObjectMeta<Pod>>();
    let (namespaces, _) = reflector::store::<PartialObjectMeta<Namespace>>();
    let (tss, _) = reflector::store::<TracedService>();
    Arc::new(Context::new(
        client,
        pods,
        namespaces,
        tss,
        Arc::new(Metrics::default()),
        false,
        "sidetrace-system".into(),
    ))
}

/// The next request, checked for method and path (query ignored); returns its JSON body and
/// the responder.
async fn expect(
    handle: &mut MockHandle,
    method: &str,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(TIMEOUT, handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let bytes = http_body_util::BodyExt::collect(request.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (body, send)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response");
    send.send_response(response);
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// Answers the next `n` Event writes (a first occurrence is a POST; a repeat of the same
/// reason for the same object is a PATCH of the series); returns their reasons.
async fn events(handle: &mut MockHandle, n: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    for _ in 0..n {
        let (request, send) = tokio::time::timeout(TIMEOUT, handle.next_request())
            .await
            .expect("timed out waiting for an Event")
            .expect("client dropped");
        let path = request.uri().path().to_owned();
        let method = request.method().as_str().to_owned();
        assert!(
            path.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events"),
            "expected an Event write, got {method} {path}"
        );
        assert!(method == "POST" || method == "PATCH", "{method} {path}");
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
        if method == "POST" {
            reasons.push(body["reason"].as_str().unwrap_or_default().to_owned());
        } else {
            reasons.push(format!(
                "{} (series)",
                path.rsplit('/').next().unwrap_or_default()
            ));
        }
        respond(send, StatusCode::OK, body);
    }
    reasons
}

async fn no_more_requests(handle: &mut MockHandle) {
    let next = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
    if let Ok(Some((req, _))) = next {
        panic!("unexpected extra call {} {}", req.method(), req.uri());
    }
}

#[tokio::test]
async fn new_traced_service_renders_config_map_then_status_then_events() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let ts = traced_service(
        json!({"selector": {"matchLabels": {"app": "service1"}}, "sampling": {"rate": 0.5}}),
    );
    let run = tokio::spawn(reconcile(Arc::new(ts.clone()), ctx));

    let (_, send) = expect(
        &mut handle,
        "GET",
        "/api/v1/namespaces/shop/configmaps/sidetrace-service1",
    )
    .await;
    respond(send, StatusCode::NOT_FOUND, not_found());
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/api/v1/namespaces/shop/configmaps/sidetrace-service1",
    )
    .await;
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert!(
        body["data"]["proxy.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("samplingRate: 0.5")),
        "{body}"
    );
    respond(send, StatusCode::OK, body);
    assert_eq!(events(&mut handle, 1).await, ["ConfigRendered"]);
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/sidetrace.dev/v1alpha1/namespaces/shop/tracedservices/service1/status",
    )
    .await;
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert_eq!(body["status"]["conditions"][0]["reason"], "ConfigRendered");
    assert_eq!(body["status"]["configMap"], "sidetrace-service1");
    respond(send, StatusCode::OK, serde_json::to_value(&ts).expect("ts"));
    // Ready/ConfigRendered repeats the reason just posted (a series PATCH); PodsInjected and
    // Sampling are new.
    let reasons = events(&mut handle, 3).await;
    assert!(reasons.iter().any(|r| r == "NoPodsSelected"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "SamplingEffective"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.ends_with("(series)")),
        "{reasons:?}"
    );

    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("reconcile ends")
        .expect("no panic")
        .expect("ok");
    no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn steady_state_makes_no_write() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let mut ts = traced_service(json!({"selector": {"matchLabels": {"app": "service1"}}}));
    // The status the operator wrote last time, for the world as it still is.
    let observed = Observed {
        generation: Some(1),
        config_map: Some("sidetrace-service1".into()),
        ..Observed::default()
    };
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    ts.status = Some(desired_status(&observed, None, now));
    let run = tokio::spawn(reconcile(Arc::new(ts.clone()), ctx));

    let (_, send) = expect(
        &mut handle,
        "GET",
        "/api/v1/namespaces/shop/configmaps/sidetrace-service1",
    )
    .await;
    let current = desired_config_map(&ts).expect("renders");
    respond(
        send,
        StatusCode::OK,
        serde_json::to_value(&current).expect("cm"),
    );

    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("reconcile ends")
        .expect("no panic")
        .expect("ok");
    no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn invalid_spec_writes_only_status_and_a_warning() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let ts = traced_service(json!({"selector": {}}));
    let run = tokio::spawn(reconcile(Arc::new(ts.clone()), ctx));

    // No ConfigMap read or write: the last rendered config stays.
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/sidetrace.dev/v1alpha1/namespaces/shop/tracedservices/service1/status",
    )
    .await;
    let ready = &body["status"]["conditions"][0];
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.selector")),
        "{ready}"
    );
    respond(send, StatusCode::OK, serde_json::to_value(&ts).expect("ts"));
    let (body, send) = expect(
        &mut handle,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/shop/events",
    )
    .await;
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "InvalidSpec");
    assert_eq!(body["regarding"]["name"], ts.name_any());
    respond(send, StatusCode::CREATED, body);
    events(&mut handle, 1).await;

    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("reconcile ends")
        .expect("no panic")
        .expect("ok");
    no_more_requests(&mut handle).await;
}
