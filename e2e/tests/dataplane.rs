//! The local end-to-end data plane: Envoy's tracing sandbox rebuilt from network-namespace
//! pods (front-proxy → service1 → service2), each with real iptables from `sidetrace-init`
//! and a real `sidetrace-proxy` running as uid 1337, spans posted to the real Zipkin server.
//! See `sidetrace_e2e::netns` for the topology.
//!
//! Needs root, iptables, java, the Zipkin jar (`e2e/peers.sh zipkin`) and the workspace
//! binaries (`cargo build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e`). Without them
//! each test prints `SKIP <test>: <reason>` — and fails instead under `CI=true`.
//!
//! `SIDETRACE_E2E_COLLECTOR=jaeger` runs the same tests against Jaeger (`e2e/peers.sh jaeger`)
//! instead of the Zipkin server: the Jaeger tier, the proxies posting Zipkin v2 to its 9411
//! receiver; with `SIDETRACE_E2E_COLLECTOR_PROTOCOL=otlp-http` as well, OTLP/HTTP to its 4318
//! receiver, with the same assertions plus the semantic conventions and resource attributes.
//!
//! Each test builds its own topology (own namespaces, own collector with empty storage), so a
//! test sees exactly the traces it caused. Topologies are built one at a time: each starts a
//! JVM, and the machine has two cores. Nothing here asserts a duration; every wait is a
//! bounded poll that fails with what it last saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{StatusCode, Version};
use sidetrace_contract::CollectorProtocol;
use sidetrace_e2e::collector::{Span, render_tree};
use sidetrace_e2e::netns::{
    Binaries, CollectorChoice, Front, Options, Pod, Sidecar, TCP_ECHO_PORT, Topology, client,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Upper bound for spans to reach the collector (1 s export interval, retries, a busy
/// machine): a hang guard, not a timing assertion.
const SPANS_WAIT: Duration = Duration::from_secs(45);

/// One topology at a time (see the module docs). Tokio's mutex does not poison, so one failed
/// test does not fail the rest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use sidetrace_testkit::skip as skip_or_fail;

/// The topology for `test`, or `None` after printing why it is skipped.
async fn topology(test: &str, opts: Options) -> Option<Topology> {
    let bins = match Binaries::find(CollectorChoice::from_env()) {
        Ok(b) => b,
        Err(reason) => {
            skip_or_fail(test, &reason);
            return None;
        }
    };
    if opts.front == Front::Envoy && bins.envoy.is_none() {
        skip_or_fail(
            test,
            "Envoy is not installed (bin/envoy in the cache): run `e2e/peers.sh envoy`",
        );
        return None;
    }
    match Topology::start(&bins, opts).await {
        Ok(t) => Some(t),
        Err(e) => panic!("{test}: {e:#}"),
    }
}

/// A fresh 128-bit trace id and 64-bit span id, unique per call.
fn ids() -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let hi = nanos ^ (u64::from(std::process::id()) << 32);
    (
        format!(
            "{hi:016x}{:016x}",
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
        ),
        format!("{:016x}", (nanos.rotate_left(17) ^ n) | 1),
    )
}

fn find<'a>(spans: &'a [Span], service: &str, kind: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.service() == service && s.kind() == kind)
        .unwrap_or_else(|| panic!("no {service} {kind} span in\n{}", render_tree(spans)))
}

/// The sandbox's request path: front-proxy → service1 → (checkStock) → service2, five spans
/// linked SERVER → CLIENT → SERVER → CLIENT → SERVER. Returns the front's SERVER span.
fn assert_sandbox_trace(spans: &[Span]) -> Span {
    let tree = render_tree(spans);
    assert_eq!(spans.len(), 5, "five spans expected:\n{tree}");
    let trace_id = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace_id),
        "one trace id:\n{tree}"
    );
    let front_server = find(spans, "front-proxy", "SERVER");
    let front_client = find(spans, "front-proxy", "CLIENT");
    let s1_server = find(spans, "service1", "SERVER");
    let s1_client = find(spans, "service1", "CLIENT");
    let s2_server = find(spans, "service2", "SERVER");
    let parent = |s: &Span| s.parent_id.clone();
    assert_eq!(
        parent(front_client),
        Some(front_server.id.clone()),
        "{tree}"
    );
    assert_eq!(parent(s1_server), Some(front_client.id.clone()), "{tree}");
    assert_eq!(parent(s1_client), Some(s1_server.id.clone()), "{tree}");
    assert_eq!(parent(s2_server), Some(s1_client.id.clone()), "{tree}");
    // shared_span_context: false — every hop has its own span id.
    let mut ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "distinct span ids:\n{tree}");
    // Zipkin lower-cases names; the rule says checkStock.
    assert!(
        s1_client.name().eq_ignore_ascii_case("checkStock"),
        "service1's outbound call is named by the operations rule:\n{tree}"
    );
    assert!(
        front_client.name().eq_ignore_ascii_case("routeToService1"),
        "front's outbound call is named by its rule:\n{tree}"
    );
    for s in spans {
        assert_eq!(
            s.tag("http.status_code"),
            Some("200"),
            "{} {} carries http.status_code:\n{tree}",
            s.service(),
            s.kind()
        );
        assert!(s.duration.is_some(), "durations recorded:\n{tree}");
        assert_eq!(s.tag("http.method"), Some("GET"), "{tree}");
    }
    // Each pod reports its own address as the local endpoint (Zipkin's JSON carries it;
    // Jaeger's query API folds endpoints into process tags).
    let zipkin = CollectorChoice::from_env() == CollectorChoice::Zipkin;
    let endpoints = [
        (front_server, Pod::Front),
        (s1_server, Pod::Service1),
        (s2_server, Pod::Service2),
    ];
    for (span, pod) in endpoints.into_iter().filter(|_| zipkin) {
        let ip = pod.ip().to_string();
        assert_eq!(
            span.local_endpoint.as_ref().and_then(|e| e.ipv4.as_deref()),
            Some(ip.as_str()),
            "{tree}"
        );
    }
    // Over OTLP (the Jaeger tier's second pass): the HTTP semantic conventions on every span
    // and the pod's resource attributes, which Jaeger shows as process tags.
    if sidetrace_e2e::netns::collector_protocol() == CollectorProtocol::OtlpHttp {
        for (span, pod) in [
            (front_server, Pod::Front),
            (front_client, Pod::Front),
            (s1_server, Pod::Service1),
            (s1_client, Pod::Service1),
            (s2_server, Pod::Service2),
        ] {
            let what = format!("{} {}", span.service(), span.kind());
            for key in [
                "http.request.method",
                "http.response.status_code",
                "url.path",
                "url.scheme",
                "server.address",
                "network.peer.address",
            ] {
                assert!(
                    span.tags.contains_key(key),
                    "{what} lacks {key}: {:?}\n{tree}",
                    span.tags
                );
            }
            assert!(
                !span.tags.contains_key("http.method"),
                "{what}: Zipkin names over OTLP"
            );
            let pod_name = format!("{}-0", pod.name());
            let deployment = pod.name().to_owned();
            let instance = format!("{}.{pod_name}", sidetrace_e2e::netns::POD_NAMESPACE);
            for (key, want) in [
                ("k8s.pod.name", pod_name.as_str()),
                ("k8s.namespace.name", sidetrace_e2e::netns::POD_NAMESPACE),
                ("k8s.node.name", sidetrace_e2e::netns::NODE_NAME),
                ("k8s.deployment.name", deployment.as_str()),
                ("service.namespace", sidetrace_e2e::netns::POD_NAMESPACE),
                ("service.instance.id", instance.as_str()),
            ] {
                assert_eq!(
                    span.process_tags.get(key).map(String::as_str),
                    Some(want),
                    "{what} resource attribute {key}: {:?}",
                    span.process_tags
                );
            }
        }
    }
    // One x-request-id, generated by the front's proxy and copied by the apps, on every hop.
    let rid = front_server.tag("guid:x-request-id");
    assert!(
        rid.is_some_and(|r| !r.is_empty()),
        "request id tagged:\n{tree}"
    );
    assert!(
        spans.iter().all(|s| s.tag("guid:x-request-id") == rid),
        "the request id follows the request:\n{tree}"
    );
    front_server.clone()
}

/// All traces recorded for front-proxy, waiting until the newest has five spans.
async fn wait_front_trace(t: &Topology) -> Vec<Vec<Span>> {
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    loop {
        let traces = t
            .collector()
            .traces("front-proxy", 50)
            .await
            .unwrap_or_default();
        if traces.iter().any(|tr| tr.len() >= 5) {
            // A short settle poll so late spans of the same trace are counted too.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return t
                .collector()
                .traces("front-proxy", 50)
                .await
                .expect("query traces");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete front-proxy trace after {SPANS_WAIT:?}; have:\n{}\nfront proxy log:\n{}",
            traces.iter().map(|t| render_tree(t)).collect::<String>(),
            t.log_tail("front-proxy", 20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn apps_alone_answer_across_the_bridge() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "apps_alone_answer_across_the_bridge",
        Options {
            sidecar: Sidecar::None,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let r = t
        .get(Pod::Client, Pod::Front, "/trace/1", &[])
        .await
        .expect("front answers");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("(front-proxy)"), "{}", r.body);
    assert!(r.body.contains("(service1)"), "{}", r.body);
    assert!(r.body.contains("(service2)"), "{}", r.body);
    // The app copies the trace headers it gets, and only those.
    let r = t
        .get(
            Pod::Client,
            Pod::Service2,
            "/headers",
            &[("x-b3-traceid", "abc"), ("cookie", "secret")],
        )
        .await
        .expect("service2 answers");
    assert_eq!(r.body, "x-b3-traceid: abc\n");
}

#[tokio::test]
async fn request_to_front_yields_one_linked_trace_per_hop() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "request_to_front_yields_one_linked_trace_per_hop",
        Options::default(),
    )
    .await
    else {
        return;
    };
    // Credentials ride along, as they do in real traffic; they must never reach a span.
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[
                ("authorization", "Bearer e2e-secret-token"),
                ("cookie", "session=e2e-secret-cookie"),
            ],
        )
        .await
        .expect("front answers through the sidecars");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("(service2)"), "{}", r.body);
    let traces = wait_front_trace(&t).await;
    for s in traces.iter().flatten() {
        for (k, v) in &s.tags {
            assert!(
                !v.contains("e2e-secret"),
                "{} {} tag {k} leaks a credential: {v}",
                s.service(),
                s.kind()
            );
        }
    }
    assert_eq!(
        traces.len(),
        1,
        "one request, one trace:\n{}",
        traces.iter().map(|t| render_tree(t)).collect::<String>()
    );
    let root = assert_sandbox_trace(&traces[0]);
    assert_eq!(
        root.parent_id, None,
        "a request without context starts a trace"
    );
    assert_eq!(root.trace_id.len(), 32, "128-bit trace ids by default");
    eprintln!("{}", render_tree(&traces[0]));
}

#[tokio::test]
async fn unsampled_requests_record_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology("unsampled_requests_record_nothing", Options::default()).await else {
        return;
    };
    let (w3c_trace, w3c_span) = ids();
    let traceparent = format!("00-{w3c_trace}-{w3c_span}-00");
    for headers in [
        vec![("x-b3-sampled", "0")],
        vec![("b3", "0")],
        vec![("traceparent", traceparent.as_str())],
    ] {
        let r = t
            .get(Pod::Client, Pod::Front, "/trace/1", &headers)
            .await
            .expect("unsampled request answers");
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.body);
    }
    // A sampled request after them is the barrier: once its trace is complete, every proxy
    // has exported whatever it queued before it.
    let (trace, span) = ids();
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
        )
        .await
        .expect("sampled request answers");
    assert_eq!(r.status, StatusCode::OK);
    let spans = t
        .collector()
        .wait_trace(&trace, 5, SPANS_WAIT)
        .await
        .expect("the sampled barrier trace arrives");
    assert_sandbox_trace(&spans);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for service in ["front-proxy", "service1", "service2"] {
        let traces = t.collector().traces(service, 50).await.expect("query");
        assert_eq!(
            traces.len(),
            1,
            "{service}: only the sampled request is recorded:\n{}",
            traces.iter().map(|t| render_tree(t)).collect::<String>()
        );
    }
    assert!(
        t.collector()
            .trace(&w3c_trace)
            .await
            .expect("query")
            .is_empty()
    );
}

#[tokio::test]
async fn incoming_b3_context_is_continued() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology("incoming_b3_context_is_continued", Options::default()).await else {
        return;
    };
    // Multi-header B3.
    let (trace, span) = ids();
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
        )
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 5, SPANS_WAIT)
        .await
        .expect("trace continues the caller's id");
    let root = assert_sandbox_trace(&spans);
    assert_eq!(root.parent_id.as_deref(), Some(span.as_str()));

    // Single-header B3, a 64-bit trace id.
    let (trace, span) = ids();
    let short = &trace[16..];
    let b3 = format!("{short}-{span}-1");
    let r = t
        .get(Pod::Client, Pod::Front, "/trace/1", &[("b3", &b3)])
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(short, 5, SPANS_WAIT)
        .await
        .expect("trace continues the b3 single header's id");
    let root = assert_sandbox_trace(&spans);
    assert_eq!(root.parent_id.as_deref(), Some(span.as_str()));

    // Malformed context never fails a request: it is dropped and a new trace starts.
    for headers in [
        vec![
            ("x-b3-traceid", "not-hex"),
            ("x-b3-spanid", "zz"),
            ("x-b3-sampled", "1"),
        ],
        vec![("b3", "garbage-b3-value")],
        vec![("traceparent", "00-0000-bad-01")],
    ] {
        let before: Vec<String> = t
            .collector()
            .traces("front-proxy", 50)
            .await
            .expect("query")
            .iter()
            .filter_map(|tr| tr.first().map(|s| s.trace_id.clone()))
            .collect();
        let r = t
            .get(Pod::Client, Pod::Front, "/trace/1", &headers)
            .await
            .expect("answer");
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.body);
        let deadline = std::time::Instant::now() + SPANS_WAIT;
        let fresh = loop {
            let traces = t
                .collector()
                .traces("front-proxy", 50)
                .await
                .expect("query");
            if let Some(new) = traces.into_iter().find(|tr| {
                tr.len() >= 5 && tr.first().is_some_and(|s| !before.contains(&s.trace_id))
            }) {
                break new;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{headers:?}: no fresh trace appeared"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let root = assert_sandbox_trace(&fresh);
        assert_eq!(root.parent_id, None, "{headers:?}: a new root");
    }
}

#[tokio::test]
async fn w3c_traceparent_is_honoured() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology("w3c_traceparent_is_honoured", Options::default()).await else {
        return;
    };
    let (trace, span) = ids();
    let traceparent = format!("00-{trace}-{span}-01");
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[("traceparent", &traceparent), ("tracestate", "e2e=1")],
        )
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 5, SPANS_WAIT)
        .await
        .expect("trace continues the traceparent's id");
    let root = assert_sandbox_trace(&spans);
    assert_eq!(root.parent_id.as_deref(), Some(span.as_str()));

    // What the app behind the sidecar receives: the SERVER span's context, in B3 and W3C.
    let (trace, span) = ids();
    let traceparent = format!("00-{trace}-{span}-01");
    let r = t
        .get(
            Pod::Client,
            Pod::Service2,
            "/headers",
            &[("traceparent", &traceparent)],
        )
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 1, SPANS_WAIT)
        .await
        .expect("the /headers request is traced");
    let server = find(&spans, "service2", "SERVER");
    let seen = |name: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .map(str::to_owned)
    };
    assert_eq!(
        seen("x-b3-traceid").as_deref(),
        Some(trace.as_str()),
        "{}",
        r.body
    );
    assert_eq!(
        seen("x-b3-spanid").as_deref(),
        Some(server.id.as_str()),
        "{}",
        r.body
    );
    assert_eq!(
        seen("x-b3-parentspanid").as_deref(),
        Some(span.as_str()),
        "{}",
        r.body
    );
    assert_eq!(seen("x-b3-sampled").as_deref(), Some("1"), "{}", r.body);
    assert!(seen("x-request-id").is_some(), "{}", r.body);
    assert_eq!(
        seen("traceparent"),
        Some(format!("00-{trace}-{}-01", server.id)),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn collector_outage_fails_no_request_and_spans_resume() {
    let _serial = SERIAL.lock().await;
    let Some(mut t) = topology(
        "collector_outage_fails_no_request_and_spans_resume",
        Options::default(),
    )
    .await
    else {
        return;
    };
    t.collector_mut().stop();
    for i in 0..10 {
        let r = t
            .get(Pod::Client, Pod::Front, "/trace/1", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i} with the collector down: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
    }
    // The spans of those requests are dropped and counted once the exporter gives up on them
    // (bounded memory), not queued forever.
    let series = "sidetrace_spans_dropped_total{reason=\"send_failed\"}";
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    loop {
        let dropped = t.metric(Pod::Front, series).await.expect("metrics");
        if dropped > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "front's proxy never counted a dropped span while the collector was down:\n{}",
            t.metrics(Pod::Front).await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    t.collector_mut()
        .resume()
        .await
        .expect("the collector starts again");
    let (trace, span) = ids();
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
        )
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    let spans = t
        .collector()
        .wait_trace(&trace, 5, SPANS_WAIT)
        .await
        .expect("spans flow again once the collector is back");
    assert_sandbox_trace(&spans);
    t.check_alive().expect("every process survived the outage");
}

/// Read the echo's banner, send a line, read it back.
async fn echo_round_trip(stream: tokio::net::TcpStream) -> (String, String) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let banner = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("banner within the hang guard")
        .expect("read banner")
        .unwrap_or_default();
    w.write_all(b"ping through iptables\n")
        .await
        .expect("write");
    let echo = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("echo within the hang guard")
        .expect("read echo")
        .unwrap_or_default();
    (banner, echo)
}

#[tokio::test]
async fn opaque_tcp_and_http2_keep_working_through_interception() {
    let _serial = SERIAL.lock().await;
    let Some(mut t) = topology(
        "opaque_tcp_and_http2_keep_working_through_interception",
        Options::default(),
    )
    .await
    else {
        return;
    };
    let echo = SocketAddr::from((Pod::Service2.ip(), TCP_ECHO_PORT));
    const S2_OPAQUE_IN: &str =
        "sidetrace_proxy_detected_protocol_total{direction=\"inbound\",protocol=\"opaque\"}";
    const S1_OPAQUE_OUT: &str =
        "sidetrace_proxy_detected_protocol_total{direction=\"outbound\",protocol=\"opaque\"}";
    let s2_before = t
        .metric(Pod::Service2, S2_OPAQUE_IN)
        .await
        .expect("metrics");
    let s1_before = t
        .metric(Pod::Service1, S1_OPAQUE_OUT)
        .await
        .expect("metrics");
    // Inbound capture only (the client has no sidecar): a server-speaks-first protocol.
    let s = sidetrace_e2e::netns::ns::connect_in(&t.ns(Pod::Client), echo, Duration::from_secs(5))
        .await
        .expect("connect from the client");
    let (banner, line) = echo_round_trip(s).await;
    assert_eq!(banner, "service2 echo ready");
    assert_eq!(line, "ping through iptables");
    // Outbound capture in service1 (this thread is uid 0, not the proxy: captured) and then
    // inbound capture in service2.
    let s =
        sidetrace_e2e::netns::ns::connect_in(&t.ns(Pod::Service1), echo, Duration::from_secs(5))
            .await
            .expect("connect from inside service1");
    let (banner, line) = echo_round_trip(s).await;
    assert_eq!(banner, "service2 echo ready");
    assert_eq!(line, "ping through iptables");
    // Both connections really went through the sidecars (not around them).
    assert_eq!(
        t.metric(Pod::Service2, S2_OPAQUE_IN)
            .await
            .expect("metrics")
            - s2_before,
        2.0,
        "service2's proxy saw both echo connections as opaque TCP"
    );
    assert_eq!(
        t.metric(Pod::Service1, S1_OPAQUE_OUT)
            .await
            .expect("metrics")
            - s1_before,
        1.0,
        "service1's proxy carried the outbound echo connection"
    );

    // HTTP/2 with prior knowledge, inbound only and outbound + inbound, traced.
    for from in [Pod::Client, Pod::Service1] {
        let (trace, span) = ids();
        let req = client::get_request(
            Pod::Service2.app(),
            "/trace/2",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
            Version::HTTP_2,
        )
        .expect("request");
        let r = client::send(&t.ns(from), Pod::Service2.app(), req)
            .await
            .unwrap_or_else(|e| panic!("h2c from {from}: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "h2c from {from}: {}", r.body);
        assert!(r.body.contains("(service2)"), "{}", r.body);
        let want = if from == Pod::Client { 1 } else { 2 };
        let spans = t
            .collector()
            .wait_trace(&trace, want, SPANS_WAIT)
            .await
            .unwrap_or_else(|e| panic!("h2c from {from} is traced: {e:#}"));
        let server = find(&spans, "service2", "SERVER");
        if from == Pod::Service1 {
            let client = find(&spans, "service1", "CLIENT");
            assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
            assert_eq!(client.parent_id.as_deref(), Some(span.as_str()));
        } else {
            assert_eq!(server.parent_id.as_deref(), Some(span.as_str()));
        }
    }
    t.check_alive().expect("every process is still running");
}

/// Envoy as the sandbox's front proxy (Zipkin tracer, shared_span_context: false) in front of
/// sidetrace sidecars: one trace, Envoy's span the parent of service1's SERVER span, and a
/// client's `b3` single header continued through every hop.
#[tokio::test]
async fn envoy_front_proxy_and_sidetrace_share_one_trace() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "envoy_front_proxy_and_sidetrace_share_one_trace",
        Options {
            front: Front::Envoy,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let (trace, span) = ids();
    let b3 = format!("{trace}-{span}-1");
    let r = t
        .get(Pod::Client, Pod::Front, "/trace/1", &[("b3", &b3)])
        .await
        .expect("Envoy answers");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("(service2)"), "{}", r.body);
    // Envoy's span(s) + service1 SERVER, CLIENT + service2 SERVER.
    t.collector()
        .wait_trace(&trace, 4, SPANS_WAIT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nenvoy log:\n{}\nservice1 proxy log:\n{}",
                t.log_tail("front-envoy", 20),
                t.log_tail("service1-proxy", 20)
            )
        });
    // Envoy reports late (its flush interval); give it a moment to add all its spans.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = t.collector().trace(&trace).await.expect("query");
    let tree = render_tree(&spans);
    eprintln!("{tree}");
    assert!(spans.iter().all(|s| s.trace_id == trace), "{tree}");
    let envoy: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service() == "front-proxy")
        .collect();
    assert!(!envoy.is_empty(), "Envoy reported its span:\n{tree}");
    assert!(
        envoy
            .iter()
            .any(|s| s.parent_id.as_deref() == Some(span.as_str())),
        "Envoy's span continues the client's b3 header:\n{tree}"
    );
    let s1_server = find(&spans, "service1", "SERVER");
    let s1_client = find(&spans, "service1", "CLIENT");
    let s2_server = find(&spans, "service2", "SERVER");
    assert!(
        envoy
            .iter()
            .any(|e| s1_server.parent_id.as_deref() == Some(e.id.as_str())),
        "service1's SERVER span is a child of Envoy's span:\n{tree}"
    );
    assert_ne!(
        Some(s1_server.id.as_str()),
        s1_server.parent_id.as_deref(),
        "no shared span context:\n{tree}"
    );
    assert_eq!(
        s1_client.parent_id.as_deref(),
        Some(s1_server.id.as_str()),
        "{tree}"
    );
    assert_eq!(
        s2_server.parent_id.as_deref(),
        Some(s1_client.id.as_str()),
        "{tree}"
    );
    assert!(
        s1_client.name().eq_ignore_ascii_case("checkStock"),
        "{tree}"
    );
    for s in [s1_server, s1_client, s2_server] {
        assert_eq!(s.tag("http.status_code"), Some("200"), "{tree}");
    }
}

/// A gRPC unary call (h2c, trailers) to service2, from outside the mesh and from inside
/// service1 (outbound then inbound capture): answered intact, status in the trailers, counted
/// as gRPC by the proxies and traced.
#[tokio::test]
async fn grpc_over_h2c_keeps_working_through_interception() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "grpc_over_h2c_keeps_working_through_interception",
        Options::default(),
    )
    .await
    else {
        return;
    };
    const S2_GRPC_IN: &str = "sidetrace_proxy_grpc_requests_total{direction=\"inbound\"}";
    const S1_GRPC_OUT: &str = "sidetrace_proxy_grpc_requests_total{direction=\"outbound\"}";
    let s2_before = t.metric(Pod::Service2, S2_GRPC_IN).await.expect("metrics");
    let s1_before = t.metric(Pod::Service1, S1_GRPC_OUT).await.expect("metrics");
    for from in [Pod::Client, Pod::Service1] {
        let (trace, span) = ids();
        let req = client::grpc_request(
            Pod::Service2.app(),
            "/demo.Echo/Say",
            b"hello through iptables",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
        )
        .expect("request");
        let r = client::send(&t.ns(from), Pod::Service2.app(), req)
            .await
            .unwrap_or_else(|e| panic!("gRPC from {from}: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "gRPC from {from}");
        assert_eq!(
            r.trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "gRPC from {from}: grpc-status trailer survives: {:?}",
            r.trailers
        );
        assert_eq!(&r.bytes[5..], b"hello through iptables");
        let want = if from == Pod::Client { 1 } else { 2 };
        let spans = t
            .collector()
            .wait_trace(&trace, want, SPANS_WAIT)
            .await
            .unwrap_or_else(|e| panic!("gRPC from {from} is traced: {e:#}"));
        let server = find(&spans, "service2", "SERVER");
        assert!(
            server
                .tag("http.path")
                .is_none_or(|p| p == "/demo.Echo/Say"),
            "{}",
            render_tree(&spans)
        );
    }
    assert_eq!(
        t.metric(Pod::Service2, S2_GRPC_IN).await.expect("metrics") - s2_before,
        2.0,
        "service2's proxy counted both calls as gRPC"
    );
    assert_eq!(
        t.metric(Pod::Service1, S1_GRPC_OUT).await.expect("metrics") - s1_before,
        1.0,
        "service1's proxy carried the outbound call as gRPC"
    );
}

/// Zipkin's localEndpoint is the host that recorded the span, remoteEndpoint the other side:
/// a SERVER span names its pod and the caller; a CLIENT span recorded by front's sidecar
/// carries front's address (the pod IP the webhook passes as SIDETRACE_POD_IP) and the callee.
#[tokio::test]
async fn span_endpoints_name_the_right_pods() {
    let _serial = SERIAL.lock().await;
    if CollectorChoice::from_env() != CollectorChoice::Zipkin {
        // Jaeger's query API returns no Zipkin endpoints, so this check belongs to the Zipkin
        // pass; `make test`'s Jaeger pass leaves it out by name (e2e/test.sh), so under CI this
        // line is never reached.
        return skip_or_fail(
            "span_endpoints_name_the_right_pods",
            "Zipkin endpoints are not in Jaeger's query API (run it in the Zipkin pass)",
        );
    }
    let Some(t) = topology("span_endpoints_name_the_right_pods", Options::default()).await else {
        return;
    };
    let (trace, span) = ids();
    let r = t
        .get(
            Pod::Client,
            Pod::Front,
            "/trace/1",
            &[
                ("x-b3-traceid", &trace),
                ("x-b3-spanid", &span),
                ("x-b3-sampled", "1"),
            ],
        )
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 5, SPANS_WAIT)
        .await
        .expect("trace");
    let tree = render_tree(&spans);
    let ip = |e: &Option<sidetrace_e2e::collector::Endpoint>| {
        e.as_ref().and_then(|e| e.ipv4.clone()).unwrap_or_default()
    };
    // SERVER spans: local is the pod itself, remote the caller (the client pod for front).
    for (callee, caller) in [
        (Pod::Front, Pod::Client),
        (Pod::Service1, Pod::Front),
        (Pod::Service2, Pod::Service1),
    ] {
        let server = find(&spans, callee.service_name(), "SERVER");
        assert_eq!(
            ip(&server.local_endpoint),
            callee.ip().to_string(),
            "{tree}"
        );
        assert_eq!(
            ip(&server.remote_endpoint),
            caller.ip().to_string(),
            "{callee}'s SERVER span: remoteEndpoint is the caller:\n{tree}"
        );
    }
    for (caller, callee) in [(Pod::Front, Pod::Service1), (Pod::Service1, Pod::Service2)] {
        let client = find(&spans, caller.service_name(), "CLIENT");
        assert_eq!(
            ip(&client.remote_endpoint),
            callee.ip().to_string(),
            "{caller}'s CLIENT span: remoteEndpoint is the callee:\n{tree}"
        );
        assert_eq!(
            ip(&client.local_endpoint),
            caller.ip().to_string(),
            "{caller}'s CLIENT span: localEndpoint.ipv4 must be the calling pod ({}), not the \
             callee ({}); the proxy records the original destination as the local address for \
             outbound connections:\n{tree}",
            caller.ip(),
            callee.ip()
        );
    }
}

/// The operator rewrites a ConfigMap; the sidecar picks it up while a client's keep-alive
/// connection stays open: the next request on that same connection gets the new operation
/// name.
#[tokio::test]
async fn config_reload_renames_operations_without_dropping_connections() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "config_reload_renames_operations_without_dropping_connections",
        Options::default(),
    )
    .await
    else {
        return;
    };
    let mut conn = client::connect_http1(&t.ns(Pod::Client), Pod::Service1.app())
        .await
        .expect("connect to service1");
    let call = |trace: &str, span: &str| {
        client::get_request(
            Pod::Service1.app(),
            "/trace/1",
            &[
                ("x-b3-traceid", trace),
                ("x-b3-spanid", span),
                ("x-b3-sampled", "1"),
            ],
            Version::HTTP_11,
        )
        .expect("request")
    };
    let outbound_name = |spans: &[Span]| find(spans, "service1", "CLIENT").name().to_owned();

    let (trace, span) = ids();
    let r = client::send_on(&mut conn, call(&trace, &span))
        .await
        .expect("first request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 3, SPANS_WAIT)
        .await
        .expect("trace");
    assert!(outbound_name(&spans).eq_ignore_ascii_case("checkStock"));

    let reloads = "sidetrace_proxy_config_reloads_total{result=\"ok\"}";
    let before = t.metric(Pod::Service1, reloads).await.expect("metrics");
    let yaml = sidetrace_e2e::netns::proxy_config_yaml(Pod::Service1)
        .expect("render")
        .expect("service1 has a config")
        .replace("checkStock", "checkInventory");
    t.update_proxy_config(Pod::Service1, &yaml)
        .expect("rewrite the config");
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    while t.metric(Pod::Service1, reloads).await.expect("metrics") <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "service1's proxy never reloaded its config:\n{}",
            t.log_tail("service1-proxy", 20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let (trace, span) = ids();
    let r = client::send_on(&mut conn, call(&trace, &span))
        .await
        .expect("the kept-alive connection survives the reload");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spans = t
        .collector()
        .wait_trace(&trace, 3, SPANS_WAIT)
        .await
        .expect("trace");
    assert!(
        outbound_name(&spans).eq_ignore_ascii_case("checkInventory"),
        "the reloaded rule names the call:\n{}",
        render_tree(&spans)
    );
}

/// Rewrites `pod`'s sidecar config to its TracedService's plus `extra` (YAML lines) and waits
/// until the proxy has reloaded it.
async fn reconfigure(t: &Topology, pod: Pod, extra: &str) {
    let reloads = "sidetrace_proxy_config_reloads_total{result=\"ok\"}";
    let before = t.metric(pod, reloads).await.expect("metrics");
    let base = sidetrace_e2e::netns::proxy_config_yaml(pod)
        .expect("render")
        .unwrap_or_default();
    t.update_proxy_config(pod, &format!("{base}{extra}"))
        .expect("rewrite the config");
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    while t.metric(pod, reloads).await.expect("metrics") <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "{pod}'s proxy never reloaded its config:\n{}",
            t.log_tail(&format!("{pod}-proxy"), 20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `n` 128-bit trace ids from a fixed seed (SplitMix64), so a run's sampling is reproducible.
fn seeded_trace_ids(seed: u64, n: usize) -> Vec<String> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| format!("{:016x}{:016x}", next(), next() | 1))
        .collect()
}

/// service2's traces, by lower-cased span name (Zipkin lower-cases names).
async fn service2_traces(t: &Topology) -> Vec<Vec<Span>> {
    t.collector()
        .traces("service2", 200)
        .await
        .expect("query service2 traces")
}

#[tokio::test]
async fn sampling_rules_are_kept_at_the_real_collector() {
    let test = "sampling_rules_are_kept_at_the_real_collector";
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(test, Options::default()).await else {
        return;
    };
    let call = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let t = &t;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = t
                .get(Pod::Client, Pod::Service2, path, &h)
                .await
                .expect("service2 answers");
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        }
    };
    let wait_for = |want: usize| {
        let t = &t;
        async move {
            let deadline = std::time::Instant::now() + SPANS_WAIT;
            loop {
                let traces = service2_traces(t).await;
                if traces.len() >= want {
                    return traces;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {want} service2 traces after {SPANS_WAIT:?}:\n{}",
                    traces.len(),
                    traces.iter().map(|t| render_tree(t)).collect::<String>()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };

    // 1. Per-operation rates over a service rate of 0: `GET /trace/{id}` always, `GET /headers`
    //    at 0.5 on seeded trace ids that arrive undecided (so the trace id's lower 64 bits
    //    decide: sampled when below 2^63), `GET /` (the service rate) never.
    reconfigure(
        &t,
        Pod::Service2,
        "samplingRate: 0\noperationSampling:\n- name: GET /trace/{id}\n  rate: 1\n- name: GET /headers\n  rate: 0.5\n",
    )
    .await;
    let ids = seeded_trace_ids(19, 16);
    let expected_half: Vec<&String> = ids
        .iter()
        .filter(|id| u64::from_str_radix(&id[16..], 16).expect("hex") < 1 << 63)
        .collect();
    for id in &ids {
        call(
            "/headers",
            vec![
                ("x-b3-traceid", id.clone()),
                ("x-b3-spanid", "a2fb4a1d1a96d312".into()),
            ],
        )
        .await;
    }
    for _ in 0..3 {
        call("/", vec![]).await;
    }
    for _ in 0..4 {
        call("/trace/2", vec![]).await;
    }
    let traces = wait_for(4 + expected_half.len()).await;
    let named = |traces: &[Vec<Span>], name: &str| {
        traces
            .iter()
            .filter(|tr| tr.iter().any(|s| s.name().eq_ignore_ascii_case(name)))
            .count()
    };
    assert_eq!(named(&traces, "GET /trace/{id}"), 4, "operation rate 1");
    let kept: std::collections::BTreeSet<&str> = traces
        .iter()
        .flatten()
        .filter(|s| s.name().eq_ignore_ascii_case("GET /headers"))
        .map(|s| s.trace_id.as_str())
        .collect();
    let want: std::collections::BTreeSet<&str> = expected_half.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        kept, want,
        "operation rate 0.5 keeps exactly the seeded ids below 2^63"
    );
    assert_eq!(
        named(&traces, "GET /"),
        0,
        "the service rate 0 for the rest"
    );
    let before_limit = traces.len();

    // 2. maxTracesPerSecond: a bucket of one token refilled every 1000 s, against a burst of
    //    12 new traces: one is kept, whatever the machine's speed.
    reconfigure(
        &t,
        Pod::Service2,
        "samplingRate: 1\nmaxTracesPerSecond: 0.001\n",
    )
    .await;
    for _ in 0..12 {
        call("/trace/2", vec![]).await;
    }
    let limited = t
        .metric(
            Pod::Service2,
            "sidetrace_proxy_sampling_decisions_total{reason=\"limit\",sampled=\"false\"}",
        )
        .await
        .expect("metrics");
    assert_eq!(limited, 11.0, "11 of the burst hit the limit");

    // 3. Untrusted callers: their sampled and debug flags are ignored both ways, their trace
    //    ids are continued. Rate 0: forced requests are not recorded; then rate 1: requests
    //    that say "not sampled" are.
    let forced = seeded_trace_ids(7, 5);
    let vetoed = seeded_trace_ids(8, 5);
    for (rate, ids, flags) in [
        (
            "0",
            &forced,
            &[("x-b3-sampled", "1"), ("x-b3-flags", "1")][..],
        ),
        ("1", &vetoed, &[("x-b3-sampled", "0")][..]),
    ] {
        reconfigure(
            &t,
            Pod::Service2,
            &format!("samplingRate: {rate}\nignoreIncomingSampling: true\n"),
        )
        .await;
        for id in ids {
            let mut headers = vec![
                ("x-b3-traceid", id.clone()),
                ("x-b3-spanid", "a2fb4a1d1a96d312".to_owned()),
            ];
            headers.extend(flags.iter().map(|(k, v)| (*k, (*v).to_owned())));
            call("/trace/2", headers).await;
        }
    }
    // The vetoed ones are the barrier: export is in order, so once they are all there every
    // earlier span is too.
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    let traces = loop {
        let traces = service2_traces(&t).await;
        let have: std::collections::BTreeSet<&str> = traces
            .iter()
            .flatten()
            .map(|s| s.trace_id.as_str())
            .collect();
        if vetoed.iter().all(|id| have.contains(id.as_str())) {
            assert!(
                forced.iter().all(|id| !have.contains(id.as_str())),
                "untrusted sampled/debug flags must not force recording:\n{}",
                traces.iter().map(|t| render_tree(t)).collect::<String>()
            );
            break traces;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "untrusted 'not sampled' requests were not all recorded with their trace ids:\n{}",
            traces.iter().map(|t| render_tree(t)).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        traces.len(),
        before_limit + 1 + vetoed.len(),
        "one trace from the limited burst, none forced:\n{}",
        traces.iter().map(|t| render_tree(t)).collect::<String>()
    );
    let untrusted = |sampled: &str| {
        format!(
            "sidetrace_proxy_sampling_decisions_total{{reason=\"untrusted\",sampled=\"{sampled}\"}}"
        )
    };
    for sampled in ["false", "true"] {
        assert_eq!(
            t.metric(Pod::Service2, &untrusted(sampled))
                .await
                .expect("metrics"),
            5.0,
            "untrusted decisions, sampled={sampled}"
        );
    }
    // The sampling in force is on the admin port's /config.
    let admin = SocketAddr::from((Pod::Service2.ip(), sidetrace_contract::defaults::ADMIN_PORT));
    let r = client::get(&t.ns(Pod::Client), admin, "/config", &[])
        .await
        .expect("/config");
    let config: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(config["sampling"]["trustIncoming"], false, "{}", r.body);
    assert_eq!(config["sampling"]["rate"], 1.0, "{}", r.body);
}

#[tokio::test]
async fn red_metrics_and_exemplars_reach_a_real_prometheus() {
    let test = "red_metrics_and_exemplars_reach_a_real_prometheus";
    let _serial = SERIAL.lock().await;
    let bin = match sidetrace_e2e::prometheus::binary() {
        Ok(b) => b,
        Err(reason) => {
            skip_or_fail(test, &reason);
            return;
        }
    };
    let Some(t) = topology(test, Options::default()).await else {
        return;
    };
    let admin = |p: Pod| SocketAddr::from((p.ip(), sidetrace_contract::defaults::ADMIN_PORT));
    let prom = sidetrace_e2e::prometheus::Prometheus::start(
        &bin,
        t.collector().namespace(),
        SocketAddr::new(
            t.collector().query_addr().ip(),
            sidetrace_e2e::prometheus::PORT,
        ),
        &[
            admin(Pod::Front),
            admin(Pod::Service1),
            admin(Pod::Service2),
        ],
        t.dir(),
    )
    .await
    .expect("prometheus starts");

    // Six sampled requests (new traces) and three the caller marks unsampled. The first one
    // alone, until Prometheus has scraped it: a counter's rate is its increase between
    // scrapes, so the series must exist before the rest arrive.
    let unsampled = seeded_trace_ids(3, 3);
    let sampled_call = || async {
        let r = t
            .get(Pod::Client, Pod::Front, "/trace/1", &[])
            .await
            .expect("front");
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    };
    // service1's outbound call is the `checkStock` rule's, counted for sampled and unsampled
    // requests alike.
    let count = "sum by (operation) (sidetrace_proxy_requests_total{direction=\"outbound\",operation=\"checkStock\"})";
    let wait_count = |want: f64| {
        let prom = &prom;
        async move {
            let deadline = std::time::Instant::now() + SPANS_WAIT;
            loop {
                let v = prom.query(count).await.expect("query");
                let n = v
                    .first()
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|s| s.parse::<f64>().ok());
                if n == Some(want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "checkStock count {n:?} (want {want}) after {SPANS_WAIT:?}: {v:?}\n{}",
                    prom.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    sampled_call().await;
    wait_count(1.0).await;
    for _ in 0..5 {
        sampled_call().await;
    }
    for id in &unsampled {
        let r = t
            .get(
                Pod::Client,
                Pod::Front,
                "/trace/1",
                &[
                    ("x-b3-traceid", id),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "0"),
                ],
            )
            .await
            .expect("front");
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    wait_count(9.0).await;
    // The request rate per operation (two scrapes since the requests make it non-zero).
    let rate =
        "sum by (operation) (rate(sidetrace_proxy_requests_total{direction=\"inbound\"}[1m]))";
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    loop {
        let v = prom.query(rate).await.expect("query");
        let positive: Vec<&str> = v
            .iter()
            .filter(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .is_some_and(|x| x > 0.0)
            })
            .filter_map(|s| s["metric"]["operation"].as_str())
            .collect();
        if positive
            .iter()
            .any(|o| o.eq_ignore_ascii_case("GET /trace/{id}"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no inbound rate for GET /trace/{{id}}: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Exemplars on the latency buckets and the counters: every one names a trace the real
    // collector holds, and none names an unsampled request.
    let deadline = std::time::Instant::now() + SPANS_WAIT;
    let exemplars = loop {
        let mut ex = prom
            .exemplars(
                "sidetrace_proxy_request_duration_seconds_bucket{operation=\"checkStock\"}",
                Duration::from_secs(600),
            )
            .await
            .expect("bucket exemplars");
        let counters = prom
            .exemplars(
                "sidetrace_proxy_requests_total{operation=\"checkStock\"}",
                Duration::from_secs(600),
            )
            .await
            .expect("counter exemplars");
        if !ex.is_empty() && !counters.is_empty() {
            ex.extend(counters);
            break ex;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exemplars after {SPANS_WAIT:?} (buckets {ex:?}, counters {counters:?}):\n{}",
            prom.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for e in &exemplars {
        let id = e["labels"]["trace_id"].as_str().unwrap_or_default();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "trace_id of 32 hex digits: {e}"
        );
        assert!(
            !unsampled.iter().any(|u| u == id),
            "an unsampled request became an exemplar: {e}"
        );
        let spans = t
            .collector()
            .wait_trace(id, 5, SPANS_WAIT)
            .await
            .unwrap_or_else(|err| panic!("exemplar {id} is no trace at the collector: {err:#}"));
        assert!(
            spans
                .iter()
                .any(|s| s.name().eq_ignore_ascii_case("checkStock")),
            "exemplar {id}'s trace has the checkStock span:\n{}",
            render_tree(&spans)
        );
    }
    eprintln!(
        "{} exemplars, each a trace at the collector",
        exemplars.len()
    );
}

// Inferred parents: apps that copy no trace headers, proxies that infer the parent of their
// calls (`inferParents`). The ground truth is each request's id at the end of its path
// (`/trace/1/<id>`), which the apps carry to every hop; the proxies never read it.

/// The span tag saying how a CLIENT span's parent was chosen.
const PARENT_TAG: &str = "sidetrace.parent";

/// Requests in flight at once are counted at these client concurrencies.
const CONCURRENCY: [usize; 5] = [1, 2, 4, 8, 16];

/// The ground truth of a span: the request id at the end of its path.
fn request_id(span: &Span) -> Option<&str> {
    span.tag("http.path")?.rsplit('/').next()
}

/// Every span of `requests` requests through the sandbox (five each), deduplicated.
async fn all_spans(t: &Topology, requests: usize) -> Vec<Span> {
    t.wait_spans(requests * 5, SPANS_WAIT)
        .await
        .expect("every span reaches the collector")
}

/// Every parent link checked against the ground truth, and the CLIENT spans counted by how
/// their parent was chosen.
#[derive(Debug, Default)]
struct Audit {
    /// CLIENT spans: the apps' outbound calls.
    calls: usize,
    inferred: usize,
    ambiguous: usize,
    absent: usize,
    /// Links that contradict the ground truth, or tags that contradict the links.
    wrong: Vec<String>,
}

impl Audit {
    fn of<'a>(spans: impl IntoIterator<Item = &'a Span>, all: &[Span]) -> Self {
        let by_id: std::collections::HashMap<(&str, &str), &Span> = all
            .iter()
            .map(|s| ((s.trace_id.as_str(), s.id.as_str()), s))
            .collect();
        let mut a = Self::default();
        for s in spans {
            let what = format!("{} {} of {:?}", s.service(), s.kind(), request_id(s));
            let parent = s
                .parent_id
                .as_deref()
                .map(|p| by_id.get(&(s.trace_id.as_str(), p)));
            match parent {
                Some(Some(p)) if request_id(p) != request_id(s) => a.wrong.push(format!(
                    "{what} is a child of {} {} of {:?}",
                    p.service(),
                    p.kind(),
                    request_id(p)
                )),
                Some(None) => a
                    .wrong
                    .push(format!("{what}: its parent was never recorded")),
                _ => {}
            }
            if s.kind() != "CLIENT" {
                continue;
            }
            a.calls += 1;
            let linked_to_own_server = matches!(parent, Some(Some(p)) if p.kind() == "SERVER" && p.service() == s.service());
            match s.tag(PARENT_TAG) {
                Some("inferred") if linked_to_own_server => a.inferred += 1,
                Some("ambiguous") if parent.is_none() => a.ambiguous += 1,
                Some("absent") if parent.is_none() => a.absent += 1,
                other => a.wrong.push(format!(
                    "{what} tagged {other:?} with parent {:?}",
                    s.parent_id
                )),
            }
        }
        a
    }

    fn linked(&self) -> f64 {
        self.inferred as f64 / self.calls.max(1) as f64
    }
}

/// Apps copying no headers, proxies inferring parents: `Options` for the tests below.
fn headerless(infer_parents: bool) -> Options {
    Options {
        copy_trace_headers: false,
        infer_parents,
        ..Options::default()
    }
}

#[tokio::test]
async fn headerless_apps_give_whole_traces_when_parents_are_inferred() {
    let _serial = SERIAL.lock().await;
    const TEST: &str = "headerless_apps_give_whole_traces_when_parents_are_inferred";
    const REQUESTS: usize = 4;
    // The apps' calls over HTTP/1.1, then over HTTP/2 (gRPC's transport).
    for h2 in [false, true] {
        let Some(t) = topology(
            TEST,
            Options {
                app_h2: h2,
                ..headerless(true)
            },
        )
        .await
        else {
            return;
        };
        for i in 0..REQUESTS {
            let r = t
                .get(Pod::Client, Pod::Front, &format!("/trace/1/seq{i}"), &[])
                .await
                .expect("front answers");
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
        let spans = all_spans(&t, REQUESTS).await;
        let mut traces: std::collections::BTreeMap<&str, Vec<Span>> = Default::default();
        for s in &spans {
            traces.entry(&s.trace_id).or_default().push(s.clone());
        }
        assert_eq!(
            traces.len(),
            REQUESTS,
            "one whole trace per request (h2: {h2}):\n{}",
            traces.values().map(|t| render_tree(t)).collect::<String>()
        );
        for trace in traces.values() {
            assert_sandbox_trace(trace);
            for s in trace.iter().filter(|s| s.kind() == "CLIENT") {
                assert_eq!(
                    s.tag(PARENT_TAG),
                    Some("inferred"),
                    "{}",
                    render_tree(trace)
                );
            }
        }
        let audit = Audit::of(&spans, &spans);
        assert!(audit.wrong.is_empty(), "{:#?}", audit.wrong);
        assert_eq!(audit.inferred, 2 * REQUESTS);
        for pod in [Pod::Front, Pod::Service1] {
            let inferred = t
                .metric(
                    pod,
                    "sidetrace_parent_inference_total{decision=\"inferred\"}",
                )
                .await
                .expect("metrics");
            assert_eq!(
                inferred, REQUESTS as f64,
                "{pod} counts its inferred parents"
            );
        }
        let h2_calls = t
            .metric(
                Pod::Service1,
                "sidetrace_proxy_detected_protocol_total{direction=\"outbound\",protocol=\"http2\"}",
            )
            .await
            .expect("metrics");
        assert_eq!(
            h2_calls > 0.0,
            h2,
            "service1's calls went over HTTP/2: {h2}"
        );
        eprintln!("{}", render_tree(traces.values().next().expect("a trace")));
    }
}

#[tokio::test]
async fn headerless_apps_break_traces_as_before_when_inference_is_off() {
    let _serial = SERIAL.lock().await;
    let Some(t) = topology(
        "headerless_apps_break_traces_as_before_when_inference_is_off",
        headerless(false),
    )
    .await
    else {
        return;
    };
    const REQUESTS: usize = 3;
    for i in 0..REQUESTS {
        let r = t
            .get(Pod::Client, Pod::Front, &format!("/trace/1/off{i}"), &[])
            .await
            .expect("front answers");
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let spans = all_spans(&t, REQUESTS).await;
    assert_eq!(spans.len(), 5 * REQUESTS);
    let tree = render_tree(&spans);
    // Off (the default), nothing is inferred: each pod's call starts a trace of its own, and
    // no span carries the inference tag.
    for s in &spans {
        assert_eq!(s.tag(PARENT_TAG), None, "{tree}");
        if s.kind() == "CLIENT" {
            assert_eq!(
                s.parent_id, None,
                "a header-less call is a new root:\n{tree}"
            );
        }
    }
    let traces: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces.len(),
        3 * REQUESTS,
        "three pieces per request:\n{tree}"
    );
    for pod in [Pod::Front, Pod::Service1] {
        let text = t.metrics(pod).await.expect("metrics");
        for decision in ["inferred", "ambiguous", "absent"] {
            let series = format!("sidetrace_parent_inference_total{{decision=\"{decision}\"}}");
            assert_eq!(
                sidetrace_e2e::netns::metric_value(&text, &series),
                Some(0.0),
                "{pod}: {series}"
            );
        }
    }
}

/// `CONCURRENCY` clients at a time, each sending its share of 32 requests one after the other,
/// through apps that copy no headers: zero wrong links at every concurrency, and the fraction
/// of calls linked printed (not asserted: it depends on how requests overlap).
async fn concurrent_requests_are_never_linked_wrongly(test: &str, app_workers: Option<usize>) {
    let Some(t) = topology(
        test,
        Options {
            app_workers,
            ..headerless(true)
        },
    )
    .await
    else {
        return;
    };
    const PER_CONCURRENCY: usize = 32;
    for n in CONCURRENCY {
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..n {
            let from = t.ns(Pod::Client);
            clients.spawn(async move {
                for r in 0..PER_CONCURRENCY / n {
                    let path = format!("/trace/1/n{n}-c{c}-r{r}");
                    let reply = client::get(&from, Pod::Front.app(), &path, &[])
                        .await
                        .unwrap_or_else(|e| panic!("{path}: {e:#}"));
                    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
    }
    let requests = CONCURRENCY.len() * PER_CONCURRENCY;
    let spans = all_spans(&t, requests).await;
    assert_eq!(spans.len(), 5 * requests, "every span recorded once");
    let app = match app_workers {
        Some(w) => format!("sync app ({w} worker)"),
        None => "async app".to_owned(),
    };
    eprintln!("{app}: clients  calls  inferred  ambiguous  absent  linked  wrong");
    let mut wrong = Vec::new();
    for n in CONCURRENCY {
        let group = format!("n{n}-");
        let a = Audit::of(
            spans
                .iter()
                .filter(|s| request_id(s).is_some_and(|id| id.starts_with(&group))),
            &spans,
        );
        assert_eq!(a.calls, 2 * PER_CONCURRENCY, "N={n}: two calls per request");
        eprintln!(
            "{app}: {n:>7}  {:>5}  {:>8}  {:>9}  {:>6}  {:>5.1}%  {:>5}",
            a.calls,
            a.inferred,
            a.ambiguous,
            a.absent,
            100.0 * a.linked(),
            a.wrong.len()
        );
        wrong.extend(a.wrong.into_iter().map(|w| format!("N={n}: {w}")));
    }
    assert!(wrong.is_empty(), "wrong links:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn concurrent_requests_to_async_apps_are_never_linked_wrongly() {
    let _serial = SERIAL.lock().await;
    concurrent_requests_are_never_linked_wrongly(
        "concurrent_requests_to_async_apps_are_never_linked_wrongly",
        None,
    )
    .await;
}

#[tokio::test]
async fn concurrent_requests_to_sync_apps_are_never_linked_wrongly() {
    let _serial = SERIAL.lock().await;
    concurrent_requests_are_never_linked_wrongly(
        "concurrent_requests_to_sync_apps_are_never_linked_wrongly",
        Some(1),
    )
    .await;
}
