//! Component tests of the proxy's life around the data path: configuration errors, the admin
//! port, collector outages, config reload, graceful drain, and hostile clients.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin())
            .args([
                "--listen-address",
                "127.0.0.1",
                "--admin-address",
                "127.0.0.1",
            ])
            .args(args)
            .env_clear()
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_64_naming_the_flag() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--sampling", "2"], "--sampling"),
        (vec!["--inbound-port", "abc"], "--inbound-port"),
        (
            vec!["--inbound-port", "7000", "--outbound-port", "7000"],
            "--outbound-port",
        ),
        (vec!["--collector", "not a url"], "--collector"),
        (vec!["--drain-timeout", "soon"], "--drain-timeout"),
        (vec!["--config", "/"], "--config"),
        (vec!["--log-level", "foo=notalevel"], "--log-level"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_to_exit(&args).await;
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr does not name {needle}: {stderr}"
        );
    }
    let (code, stdout_or_err) = run_to_exit(&["--help"]).await;
    assert_eq!(code, Some(0), "{stdout_or_err}");
}

/// The config file comes from a TracedService: nothing in it may stop a pod. A file the proxy
/// cannot use at start (a bad value, an unknown field from a newer operator) leaves it
/// running on its flags, ready and proxying, with the reason in `/config` and counted as a
/// failed reload; the next good version of the file is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_it_cannot_use_keeps_the_proxy_running_on_its_flags() {
    for (name, text, needle) in [
        (
            "bad",
            "serviceName: cart\nsamplingRate: 7\n",
            "samplingRate",
        ),
        ("unknown", "servicename: cart\n", "servicename"),
    ] {
        let app = App::http1().await;
        let path = write_config(name, text);
        let proxy = Proxy::start(ProxyOpts {
            inbound_to: Some(app.addr),
            config: Some(path.clone()),
            ..Default::default()
        })
        .await;
        let (status, body, _) = get(proxy.inbound, "/through", &[]).await.expect("proxied");
        assert_eq!((status.as_u16(), body.is_empty()), (200, false), "{name}");
        let (code, config) = admin_get(proxy.admin, "/config").await.expect("config");
        assert_eq!(code, 200);
        let config: serde_json::Value = serde_json::from_str(&config).expect("json");
        let reason = config["configFileError"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "{name}: {config}");
        assert_eq!(
            proxy
                .metric("sidetrace_proxy_config_reloads_total{result=\"failed\"}")
                .await,
            1.0,
            "{name}"
        );
        // The next valid version is used, and the error clears.
        std::fs::write(&path, "serviceName: fixed\n").expect("write");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, config) = admin_get(proxy.admin, "/config").await.expect("config");
            let config: serde_json::Value = serde_json::from_str(&config).expect("json");
            if config["serviceName"] == "fixed" && config["configFileError"].is_null() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: never reloaded: {config}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_config_and_metrics() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    assert_eq!(
        admin_get(proxy.admin, "/healthz").await.expect("healthz"),
        (200, "ok\n".into())
    );
    assert_eq!(
        admin_get(proxy.admin, "/ready").await.expect("ready"),
        (200, "ready\n".into())
    );
    assert_eq!(admin_get(proxy.admin, "/nope").await.expect("404").0, 404);
    assert_eq!(
        admin_get(proxy.admin, "/shutdown")
            .await
            .expect("GET shutdown")
            .0,
        405
    );
    let (status, config) = admin_get(proxy.admin, "/config").await.expect("config");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(config["inboundPort"], proxy.inbound.port());
    assert_eq!(config["inboundForwardTo"], app.addr.to_string());
    assert_eq!(config["serviceName"], "service1");
    assert_eq!(config["samplingRate"], 1.0);

    assert_eq!(get(proxy.inbound, "/", &[]).await.expect("request").0, 200);
    let m = proxy.metrics().await;
    for series in [
        "sidetrace_proxy_requests_total{direction=\"inbound\",operation=\"GET /\",status_class=\"2xx\"} 1",
        "sidetrace_proxy_request_errors_total{direction=\"inbound\",operation=\"GET /\"} 0",
        "sidetrace_proxy_request_duration_seconds_count{direction=\"inbound\",operation=\"GET /\",status_class=\"2xx\"} 1",
        "sidetrace_proxy_request_duration_seconds_bucket{direction=\"inbound\",operation=\"GET /\",status_class=\"2xx\",le=\"+Inf\"} 1",
        "sidetrace_proxy_detected_protocol_total{direction=\"inbound\",protocol=\"http1\"} 1",
        "sidetrace_span_queue_capacity 2048",
        "sidetrace_span_names_overflow_total 0",
        "sidetrace_trace_context_malformed_total 0",
    ] {
        assert!(m.lines().any(|l| l == series), "missing {series}:\n{m}");
    }

    // Malformed context is counted by this proxy, exactly once per request that carried it.
    let junk = [("b3", "junk")];
    assert_eq!(
        get(proxy.inbound, "/", &junk).await.expect("request").0,
        200
    );
    let m = proxy.metrics().await;
    let series = "sidetrace_trace_context_malformed_total 1";
    assert!(m.lines().any(|l| l == series), "missing {series}:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_leaves_requests_alone_and_counts_dropped_spans() {
    let app = App::http1().await;
    let dead = loopback(free_port());
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(format!("http://{dead}/api/v2/spans")),
        extra: vec!["--export-retries".into(), "0".into()],
        ..Default::default()
    })
    .await;
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    for i in 0..5 {
        let (status, _, body) = c.get(&format!("/r{i}"), &[]).await.expect("request");
        assert_eq!(status, 200);
        assert_eq!(body, "hello from app");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let dropped = proxy
            .metric("sidetrace_spans_dropped_total{reason=\"send_failed\"}")
            .await;
        if dropped >= 5.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drops never counted:\n{}",
            proxy.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.metric("sidetrace_spans_exported_total").await, 0.0);
    // Still serving.
    assert_eq!(c.get("/after", &[]).await.expect("after").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_changes_span_names_and_rejects_invalid_files() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let config = write_config("reload", "operations: [{name: first, pathPrefix: /op}]\n");
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(config.clone()),
        ..Default::default()
    })
    .await;
    // One keep-alive connection across the reload: it must survive.
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    assert_eq!(c.get("/op", &[]).await.expect("first").0, 200);
    assert_eq!(collector.wait_spans(1).await[0]["name"], "first");

    // ConfigMap-style update: write a new file and rename it over the old path.
    let tmp = config.with_extension("new");
    std::fs::write(
        &tmp,
        "serviceName: renamed\noperations: [{name: second, pathPrefix: /op}]\n",
    )
    .expect("write");
    std::fs::rename(&tmp, &config).expect("swap");
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy
        .metric("sidetrace_proxy_config_reloads_total{result=\"ok\"}")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never happened:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get("/op", &[]).await.expect("second").0, 200);
    let spans = collector.wait_spans(2).await;
    assert_eq!(spans[1]["name"], "second");
    assert_eq!(spans[1]["localEndpoint"]["serviceName"], "renamed");

    // An invalid file is rejected; the previous config stays.
    std::fs::write(&config, "operations: [{name: ''}]\n").expect("write");
    while proxy
        .metric("sidetrace_proxy_config_reloads_total{result=\"failed\"}")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad file never noticed:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get("/op", &[]).await.expect("third").0, 200);
    assert_eq!(collector.wait_spans(3).await[2]["name"], "second");
    assert!(
        proxy.log_text().contains("operations[0].name"),
        "{}",
        proxy.log_text()
    );
    assert!(
        app.seen().iter().all(|s| s.conn == 1),
        "connections kept across reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_flushes_spans_and_exits_zero() {
    drain_on_sigterm("2").await;
}

/// `--worker-threads 1` runs a current-thread runtime (everything on the main thread): the
/// same proxying, tracing and drain must work there, and the process really has one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_traces_and_drains_on_a_single_thread() {
    drain_on_sigterm("1").await;
}

async fn drain_on_sigterm(worker_threads: &str) {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let mut proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        // A long interval: only the shutdown flush can deliver the span in time.
        extra: vec![
            "--export-interval".into(),
            "60s".into(),
            "--worker-threads".into(),
            worker_threads.into(),
        ],
        ..Default::default()
    })
    .await;
    let pid = proxy.child.id().expect("running");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .count();
    let expected = if worker_threads == "1" { 1 } else { 3 };
    assert_eq!(
        threads, expected,
        "--worker-threads {worker_threads}: threads of the proxy process"
    );
    let inbound = proxy.inbound;
    let slow = tokio::spawn(async move { get(inbound, "/slow", &[]).await });
    tokio::time::timeout(WAIT, app.slow_arrived.notified())
        .await
        .expect("slow request reached the app");
    proxy.sigterm();
    // Draining: not ready, listeners closed, the in-flight request still pending.
    let deadline = tokio::time::Instant::now() + WAIT;
    while admin_get(proxy.admin, "/ready").await.expect("ready") != (503, "draining\n".into()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while TcpStream::connect(inbound).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!slow.is_finished());
    app.slow_release.notify_one();
    let (status, _, body) = slow
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!(status, 200);
    assert_eq!(body, "slow done");
    let exit = proxy.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", proxy.log_text());
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "span flushed on shutdown: {spans:?}");
    assert_eq!(spans[0]["name"], "GET /slow");
}

/// SIGTERM reaches the app and a classic sidecar together. The inbound side stops at once,
/// but the outbound side keeps serving (new connections included) through the drain period,
/// so the app's own calls while it shuts down still work and are traced; once the period is
/// over and nothing is open, the proxy exits by itself, well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_during_the_apps_shutdown_succeed_and_are_traced() {
    let backend = App::http1().await;
    let collector = Collector::start().await;
    let mut proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(backend.addr),
        outbound_to: Some(backend.addr),
        collector: Some(collector.endpoint()),
        extra: vec![
            "--drain-period".into(),
            "5s".into(),
            "--drain-timeout".into(),
            "60s".into(),
        ],
        ..Default::default()
    })
    .await;
    proxy.sigterm();
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(proxy.inbound).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "inbound listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The app's shutdown: a call every 100 ms, each on a new connection.
    const CALLS: usize = 8;
    for i in 0..CALLS {
        let (status, _, _) = get(proxy.outbound, &format!("/during-shutdown/{i}"), &[])
            .await
            .unwrap_or_else(|e| {
                panic!("outbound call {i} after SIGTERM: {e}\n{}", proxy.log_text())
            });
        assert_eq!(status, 200, "call {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = proxy.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", proxy.log_text());
    let traced = collector
        .spans()
        .iter()
        .filter(|s| {
            s["kind"] == "CLIENT"
                && s["tags"]["http.path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/during-shutdown/"))
        })
        .count();
    assert_eq!(
        traced,
        CALLS,
        "every call during the drain is traced: {:?}",
        collector.spans()
    );
    assert!(
        TcpStream::connect(proxy.outbound).await.is_err(),
        "the outbound listener is closed after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_from_loopback_drains_and_exits_zero() {
    let app = App::http1().await;
    let mut proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    let (status, body) = admin_call(proxy.admin, "POST", "/shutdown")
        .await
        .expect("shutdown");
    assert_eq!((status, body.as_str()), (202, "draining\n"));
    let exit = proxy.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", proxy.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connections_without_a_forward_target_are_refused_not_looped() {
    let proxy = Proxy::start(ProxyOpts::default()).await;
    let out = raw_exchange(proxy.outbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false)
        .await
        .expect("closed");
    assert!(
        out.is_empty(),
        "refused without a response: {}",
        String::from_utf8_lossy(&out)
    );
    let m = proxy.metrics().await;
    let refused = metric_value(
        &m,
        "sidetrace_proxy_connections_refused_total{direction=\"outbound\",reason=\"loop\"}",
    ) + metric_value(
        &m,
        "sidetrace_proxy_connections_refused_total{direction=\"outbound\",reason=\"no_original_dst\"}",
    );
    assert_eq!(refused, 1.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_connections_total{direction=\"outbound\"}"
        ),
        1.0
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("sidetrace_proxy_requests_total{direction=\"outbound\"")),
        "no request was proxied: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_headers_half_close_and_slowloris_do_not_hurt_the_proxy() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        extra: vec![
            "--header-read-timeout".into(),
            "300ms".into(),
            "--max-header-bytes".into(),
            "16384".into(),
        ],
        ..Default::default()
    })
    .await;

    // Garbage that looks like HTTP at first: hyper answers 400 or closes.
    let out = raw_exchange(
        proxy.inbound,
        b"GET \x00\x01\x02 nonsense\r\n\xff\xfe\r\n\r\n",
        false,
    )
    .await
    .expect("garbage");
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");

    // Oversized request head.
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let out = raw_exchange(proxy.inbound, &big, false)
        .await
        .expect("oversized");
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // Half-closed client: the request is complete, then the write side shuts; the response
    // must still arrive.
    let out = raw_exchange(
        proxy.inbound,
        b"GET /half HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        true,
    )
    .await
    .expect("half close");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello from app"), "{text}");

    // Connect and close at once; send half a request and close.
    drop(TcpStream::connect(proxy.inbound).await.expect("connect"));
    let mut s = TcpStream::connect(proxy.inbound).await.expect("connect");
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    drop(s);

    // Slowloris: an unfinished head is cut off by the header read timeout.
    let mut s = TcpStream::connect(proxy.inbound).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("slow client cut off");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&rest).contains("200"),
        "{rest:?}"
    );

    // A burst of hostile connections at once: random bytes, half requests, instant closes.
    let mut burst = Vec::new();
    for i in 0..100u32 {
        let addr = proxy.inbound;
        burst.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let junk: Vec<u8> = (0..(i * 37 % 700)).map(|j| (j * 31 + i) as u8).collect();
            let prefix: &[u8] = match i % 4 {
                0 => b"GET /",
                1 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                2 => b"\x16\x03\x01",
                _ => b"",
            };
            let _ = s.write_all(prefix).await;
            let _ = s.write_all(&junk).await;
            if i % 2 == 0 {
                let _ = s.shutdown().await;
            }
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        }));
    }
    for t in burst {
        t.await.expect("client task");
    }

    // Still serving, still alive.
    let (status, _, body) = get(proxy.inbound, "/after", &[]).await.expect("after");
    assert_eq!((status.as_u16(), body.as_str()), (200, "hello from app"));
    assert_eq!(
        admin_get(proxy.admin, "/healthz").await.expect("healthz").0,
        200
    );
    // Every one of those connections was released (no leaked tasks or sockets).
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy
        .metric("sidetrace_proxy_connections_open{direction=\"inbound\"}")
        .await
        != 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never released:\n{}",
            proxy.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_appears_later_is_picked_up() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let config = write_config("late", "");
    std::fs::remove_file(&config).expect("remove");
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(config.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(get(proxy.inbound, "/x", &[]).await.expect("first").0, 200);
    assert_eq!(collector.wait_spans(1).await[0]["name"], "GET /x");
    std::fs::write(&config, "operations: [{name: late-rule}]\n").expect("write");
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy
        .metric("sidetrace_proxy_config_reloads_total{result=\"ok\"}")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "file never picked up:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(proxy.inbound, "/x", &[]).await.expect("second").0, 200);
    assert_eq!(collector.wait_spans(2).await[1]["name"], "late-rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_runtime_failure_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, stderr) = run_to_exit(&[
        "--inbound-port",
        &port,
        "--outbound-port",
        &free_port().to_string(),
        "--admin-port",
        &free_port().to_string(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// The webhook rewrites an app's tcpSocket probes to `GET /app-health/tcp/<port>` on the
/// admin port: with interception the kubelet's own dial would always be accepted by the
/// proxy. The check succeeds exactly while the app accepts connections on that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_checks_follow_the_app_not_the_proxy() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    let path = format!("/app-health/tcp/{}", app.addr.port());
    let (code, body) = admin_get(proxy.admin, &path).await.expect("probe");
    assert_eq!(code, 200, "{body}");
    // A port nobody listens on: what a stopped app looks like.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let (code, body) = admin_get(proxy.admin, &format!("/app-health/tcp/{closed}"))
        .await
        .expect("probe");
    assert_eq!(code, 503, "{body}");
    let (code, _) = admin_get(proxy.admin, "/app-health/tcp/notaport")
        .await
        .expect("probe");
    assert_eq!(code, 404);
}
