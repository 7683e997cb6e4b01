//! Component tests of OTLP/HTTP export: the real binary on loopback, a real HTTP/1.1 server as
//! the collector that decodes what it receives with the OpenTelemetry project's own protobuf
//! types. The collector's overload answers (429, 503 with `Retry-After`) come from this small
//! server: it stands in for a collector under load, which a real Jaeger does not produce on
//! demand (the data-plane tier runs against the real Jaeger). Requests through the proxy must
//! never notice any of it; spans are retried or dropped and counted.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

/// An OTLP/HTTP collector on loopback: answers the scripted `(status, Retry-After)` list in
/// order, then 200, and keeps every request it decoded (whatever it answered).
struct OtlpCollector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl OtlpCollector {
    async fn start(script: &[(u16, Option<&'static str>)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let store = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, script) = (Arc::clone(&store), Arc::clone(&script));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (store, script) = (Arc::clone(&store), Arc::clone(&script));
                        async move {
                            let well_formed = req.uri().path() == "/v1/traces"
                                && req.headers().get("content-type").map(|v| v.as_bytes())
                                    == Some(b"application/x-protobuf");
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let decoded = ExportTraceServiceRequest::decode(bytes);
                            let (status, retry_after) = match decoded {
                                Ok(r) if well_formed => {
                                    store.lock().expect("lock").push(r);
                                    script
                                        .lock()
                                        .expect("lock")
                                        .pop_front()
                                        .unwrap_or((200, None))
                                }
                                _ => (400, None),
                            };
                            let mut resp = Response::new(full(Bytes::new()));
                            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                            if let Some(after) = retry_after {
                                resp.headers_mut()
                                    .insert("retry-after", after.parse().expect("value"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received.lock().expect("lock").clone()
    }
}

fn full(b: Bytes) -> http_body_util::Full<Bytes> {
    http_body_util::Full::new(b)
}

fn value(kvs: &[KeyValue], key: &str) -> Option<String> {
    let kv = kvs.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn m(text: &str, series: &str) -> f64 {
    metric_value(text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_conventions_and_the_pod_resource() {
    let app = App::http1().await;
    let collector = OtlpCollector::start(&[]).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        extra: [
            "--pod-name",
            "shop-7c9d8-x2x4k",
            "--pod-namespace",
            "shop",
            "--node-name",
            "node-1",
            "--workload-attributes",
            "k8s.replicaset.name=shop-7c9d8,k8s.deployment.name=shop",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let (status, _, _) = get(
        proxy.inbound,
        "/orders/42?token=secret",
        &[("user-agent", "curl/8")],
    )
    .await
    .expect("request");
    assert_eq!(status, 200);
    proxy
        .wait_metrics("span exported", |t| {
            m(t, "sidetrace_spans_exported_total") >= 1.0
        })
        .await;
    let reqs = collector.requests();
    let rs = &reqs[0].resource_spans[0];
    let res = &rs.resource.as_ref().expect("resource").attributes;
    for (k, v) in [
        ("service.name", "service1"),
        ("service.namespace", "shop"),
        ("service.instance.id", "shop.shop-7c9d8-x2x4k"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "shop-7c9d8-x2x4k"),
        ("k8s.node.name", "node-1"),
        ("k8s.deployment.name", "shop"),
        ("k8s.replicaset.name", "shop-7c9d8"),
    ] {
        assert_eq!(value(res, k).as_deref(), Some(v), "{k} in {res:?}");
    }
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(span.name, "GET /orders/{id}");
    assert_eq!(span.kind, 2, "SERVER");
    assert_eq!((span.trace_id.len(), span.span_id.len()), (16, 8));
    assert!(span.parent_span_id.is_empty(), "a new trace");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/orders/42"),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("server.address", "service1"),
        ("server.port", "8000"),
        ("network.peer.address", "127.0.0.1"),
        ("user_agent.original", "curl/8"),
    ] {
        assert_eq!(
            value(&span.attributes, k).as_deref(),
            Some(v),
            "{k} in {:?}",
            span.attributes
        );
    }
    assert!(
        span.attributes
            .iter()
            .all(|kv| !format!("{kv:?}").contains("secret")),
        "no query string by default"
    );
    assert_eq!(span.status, None, "a 200 is not an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_with_retry_after_are_retried_and_requests_are_unaffected() {
    let app = App::http1().await;
    let collector = OtlpCollector::start(&[(429, Some("1")), (503, Some("1"))]).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        extra: ["--export-retries", "3", "--export-batch-size", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    for i in 0..3 {
        let (status, _, body) = c.get(&format!("/busy{i}"), &[]).await.expect("request");
        assert_eq!((status.as_u16(), body.as_str()), (200, "hello from app"));
    }
    proxy
        .wait_metrics("every span exported after the retries", |t| {
            m(t, "sidetrace_spans_exported_total") >= 3.0
        })
        .await;
    let text = proxy.metrics().await;
    assert_eq!(
        m(&text, "sidetrace_span_export_retries_total"),
        2.0,
        "{text}"
    );
    assert_eq!(
        m(
            &text,
            "sidetrace_spans_dropped_total{reason=\"send_failed\"}"
        ),
        0.0
    );
    // The first batch was sent three times (429, 503, 200); the others once.
    assert_eq!(collector.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_collector_beyond_the_retries_and_a_bad_request_drop_and_count() {
    let app = App::http1().await;
    let collector = OtlpCollector::start(&[(503, None), (503, None), (400, None)]).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        extra: ["--export-retries", "1", "--export-batch-size", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    assert_eq!(c.get("/a", &[]).await.expect("request").0, 200);
    proxy
        .wait_metrics("dropped after its retry", |t| {
            m(t, "sidetrace_spans_dropped_total{reason=\"send_failed\"}") >= 1.0
        })
        .await;
    assert_eq!(c.get("/b", &[]).await.expect("request").0, 200);
    proxy
        .wait_metrics("a 400 is rejected, never retried", |t| {
            m(t, "sidetrace_spans_dropped_total{reason=\"rejected\"}") >= 1.0
        })
        .await;
    let text = proxy.metrics().await;
    assert_eq!(
        m(&text, "sidetrace_span_export_retries_total"),
        1.0,
        "{text}"
    );
    assert_eq!(collector.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_absent_otlp_collector_leaves_requests_alone() {
    let app = App::http1().await;
    // Hung: accepts connections and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let down = loopback(free_port());
    for (what, endpoint) in [("hung", hung_addr), ("down", down)] {
        let proxy = Proxy::start(ProxyOpts {
            inbound_to: Some(app.addr),
            collector: Some(format!("http://{endpoint}/v1/traces")),
            extra: ["--export-retries", "0", "--export-timeout", "200ms"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await;
        let mut c = H1::connect(proxy.inbound).await.expect("connect");
        for i in 0..4 {
            let (status, _, body) = c.get(&format!("/r{i}"), &[]).await.expect("request");
            assert_eq!(
                (status.as_u16(), body.as_str()),
                (200, "hello from app"),
                "{what}"
            );
        }
        proxy
            .wait_metrics(what, |t| {
                m(t, "sidetrace_spans_dropped_total{reason=\"send_failed\"}") >= 4.0
            })
            .await;
        assert_eq!(proxy.metric("sidetrace_spans_exported_total").await, 0.0);
        assert_eq!(c.get("/after", &[]).await.expect("after").0, 200, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_the_protocol_without_dropping_connections() {
    let app = App::http1().await;
    let zipkin = Collector::start().await;
    let otlp = OtlpCollector::start(&[]).await;
    let config = write_config("protocol", &format!("collector: {}\n", zipkin.endpoint()));
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        config: Some(config.clone()),
        ..Default::default()
    })
    .await;
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    assert_eq!(c.get("/before", &[]).await.expect("first").0, 200);
    assert_eq!(
        zipkin.wait_spans(1).await[0]["tags"]["http.path"],
        "/before"
    );

    let tmp = config.with_extension("new");
    std::fs::write(
        &tmp,
        format!(
            "collector: {}\ncollectorProtocol: otlp-http\n",
            otlp.endpoint()
        ),
    )
    .expect("write");
    std::fs::rename(&tmp, &config).expect("swap");
    proxy
        .wait_metrics("reloaded", |t| {
            m(t, "sidetrace_proxy_config_reloads_total{result=\"ok\"}") >= 1.0
        })
        .await;
    assert_eq!(c.get("/after", &[]).await.expect("second").0, 200);
    proxy
        .wait_metrics("exported over OTLP", |t| {
            m(t, "sidetrace_spans_exported_total") >= 2.0
        })
        .await;
    let reqs = otlp.requests();
    let span = &reqs[0].resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        value(&span.attributes, "url.path").as_deref(),
        Some("/after")
    );
    assert_eq!(zipkin.spans().len(), 1, "nothing more in Zipkin JSON");
    assert!(
        app.seen().iter().all(|s| s.conn == 1),
        "connections kept across the switch"
    );
    let (_, config_json) = admin_get(proxy.admin, "/config").await.expect("/config");
    let config: serde_json::Value = serde_json::from_str(&config_json).expect("json");
    assert_eq!(config["collectorProtocol"], "otlp-http", "{config_json}");
}
