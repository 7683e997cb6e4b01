//! The proxy exporting to a real collector over TLS: the Jaeger binary `e2e/peers.sh jaeger`
//! builds, its Zipkin receiver serving HTTPS on loopback with a certificate for `localhost`
//! from a private CA made here (rcgen). The proxy verifies the certificate against
//! `--collector-ca-file`; with the system's roots it refuses the handshake, drops and counts
//! the spans, and the app's requests see nothing of it.
//!
//! Needs the Jaeger peer (`$SIDETRACE_CACHE/bin/jaeger`); without it the one skip policy
//! applies (SKIP line, a failure under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn jaeger_binary() -> Result<PathBuf, String> {
    let cache = std::env::var_os("SIDETRACE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/sidetrace")))
        .ok_or("neither SIDETRACE_CACHE nor HOME is set")?;
    let bin = cache.join("bin/jaeger");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is not built: run `e2e/peers.sh jaeger`",
            bin.display()
        ))
    }
}

/// A free loopback port (bound, then released for Jaeger to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Jaeger {
    child: tokio::process::Child,
    query: std::net::SocketAddr,
    zipkin_port: u16,
    dir: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Jaeger v2 with only the Zipkin receiver (TLS) and the query API, memory storage; returns
/// it and the CA's PEM.
async fn start_jaeger(bin: &Path) -> (Jaeger, String) {
    let dir = std::env::temp_dir().join(format!("st-tls-jaeger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
    let (zipkin_port, query_port, grpc_port) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [zipkin]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{grpc_port}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 1000
receivers:
  zipkin:
    endpoint: 127.0.0.1:{zipkin_port}
    tls:
      cert_file: {dir}/cert.pem
      key_file: {dir}/key.pem
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#,
        dir = dir.display()
    );
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).expect("config");
    let log = std::fs::File::create(dir.join("jaeger.log")).expect("log");
    let child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start jaeger");
    let jaeger = Jaeger {
        child,
        query: ([127, 0, 0, 1], query_port).into(),
        zipkin_port,
        dir,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let query_up = get(jaeger.query, "/api/services", &[])
            .await
            .is_ok_and(|(s, _, _)| s.is_success());
        let receiver_up = tokio::net::TcpStream::connect(("127.0.0.1", zipkin_port))
            .await
            .is_ok();
        if query_up && receiver_up {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jaeger did not start:\n{}",
            std::fs::read_to_string(jaeger.dir.join("jaeger.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (jaeger, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_verified_against_the_given_ca() {
    const TEST: &str = "spans_reach_a_tls_collector_verified_against_the_given_ca";
    let bin = match jaeger_binary() {
        Ok(b) => b,
        Err(reason) => return sidetrace_testkit::skip(TEST, &reason),
    };
    let (jaeger, ca_pem) = start_jaeger(&bin).await;
    let ca_file = jaeger.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("ca file");
    let endpoint = format!("https://localhost:{}/api/v2/spans", jaeger.zipkin_port);
    let app = App::http1().await;

    // Trusted: the span arrives, queried back from Jaeger.
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(endpoint.clone()),
        extra: vec!["--collector-ca-file".into(), ca_file.display().to_string()],
        ..Default::default()
    })
    .await;
    let (status, _, _) = get(proxy.inbound, "/over-tls", &[]).await.expect("proxied");
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, body) = get(jaeger.query, "/api/traces?service=service1", &[])
            .await
            .expect("query");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let names: Vec<String> = v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["operationName"].as_str().map(str::to_owned))
            .collect();
        if names.iter().any(|n| n == "GET /over-tls") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "span never reached Jaeger over TLS ({names:?}); proxy log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        proxy
            .metric("sidetrace_spans_dropped_total{reason=\"send_failed\"}")
            .await,
        0.0
    );
    drop(proxy);

    // Untrusted (the system's roots do not know the private CA): no span goes out, the
    // failure is counted, the request is unaffected.
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(endpoint),
        extra: vec!["--export-retries".into(), "0".into()],
        ..Default::default()
    })
    .await;
    let (status, _, _) = get(proxy.inbound, "/untrusted", &[])
        .await
        .expect("proxied");
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy
        .metric("sidetrace_spans_dropped_total{reason=\"send_failed\"}")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an unverifiable collector was not counted: {}",
            proxy.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.log_text().contains("certificate") || proxy.log_text().contains("UnknownIssuer"),
        "the log says why: {}",
        proxy.log_text()
    );
}
