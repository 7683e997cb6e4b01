//! Admission latency over loopback HTTPS, open loop: requests are scheduled at a fixed rate
//! and each latency is measured from its scheduled start (so a slow server cannot hide its
//! queueing), through a pool of keep-alive connections as the apiserver uses.
//!
//! `cargo run --release -p sidetrace-injector --example admission_bench [-- SECONDS]`
//!
//! The server is the crate's own router and TLS loop on a separate runtime thread; the pod is a
//! Deployment pod that gets injected (the expensive path).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sidetrace_injector::metrics::Metrics;
use sidetrace_injector::review::StaticView;
use sidetrace_injector::server::{self, AppState};
use sidetrace_injector::{Settings, tls};
use tokio::sync::mpsc;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

const POOL: usize = 32;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_pem, key_pem) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    let p = std::path::Path::new("bench");
    let key = tls::certified_key(cert_pem.as_bytes(), key_pem.as_bytes(), (p, p))?;
    let config = tls::server_config(Arc::new(tls::ReloadingResolver::new(key)))?;

    // Server: its own one-worker runtime, like the deployed binary on a small node.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        settings: Settings::default(),
        view: Arc::new(StaticView::default()),
        metrics: Arc::clone(&metrics),
        ready: Arc::new(AtomicBool::new(true)),
    });
    server_rt.spawn(server::serve_tls(
        listener,
        config,
        server::router(state),
        std::future::pending(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone())?;
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-7d9c8b5f4-", "labels": {"app": "web", "pod-template-hash": "7d9c8b5f4"}},
                "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]}},
            "oldObject": null
        }
    }))?);

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    client_rt.block_on(async move {
        let (pool_tx, pool_rx) = mpsc::channel::<Sender>(POOL);
        for _ in 0..POOL {
            pool_tx.send(connect(addr, client_config.clone()).await?).await?;
        }
        let pool_rx = Arc::new(tokio::sync::Mutex::new(pool_rx));
        println!("admission latency, open loop, loopback HTTPS, keep-alive pool of {POOL}, {seconds} s per rate");
        println!("{:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}", "rate/s", "n", "p50 µs", "p90 µs", "p99 µs", "max µs", "errors");
        // Warm-up.
        run(100, 1, &body, &pool_tx, &pool_rx).await;
        for rate in [100u64, 1000] {
            let (mut lat, errors) = run(rate, seconds, &body, &pool_tx, &pool_rx).await;
            lat.sort_unstable();
            let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
            println!("{rate:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {errors:>8}",
                lat.len(), pct(0.50), pct(0.90), pct(0.99), lat.last().copied().unwrap_or(0));
        }
        anyhow::Ok(())
    })?;
    drop(server_rt);
    // Time inside the handler (parse, decide, build, serialise), without TLS, HTTP and
    // scheduling: the share of the latency that is the webhook's own work.
    let text = metrics.render();
    let get = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (sum, count) = (
        get("sidetrace_injector_admission_duration_seconds_sum "),
        get("sidetrace_injector_admission_duration_seconds_count "),
    );
    if count > 0.0 {
        println!(
            "handler time: mean {:.0} µs over {count} admissions",
            sum / count * 1e6
        );
    }
    Ok(())
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `rate` requests per second for `seconds`; returns latencies in µs and the error count.
async fn run(
    rate: u64,
    seconds: u64,
    body: &Bytes,
    pool_tx: &mpsc::Sender<Sender>,
    pool_rx: &Arc<tokio::sync::Mutex<mpsc::Receiver<Sender>>>,
) -> (Vec<u64>, usize) {
    let total = rate * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (body, pool_tx, pool_rx) = (body.clone(), pool_tx.clone(), Arc::clone(pool_rx));
        tasks.push(tokio::spawn(async move {
            let mut sender = pool_rx.lock().await.recv().await?;
            let req = hyper::Request::post("/mutate")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(body))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            let ok = resp.status().is_success();
            let _ = resp.into_body().collect().await.ok()?;
            let elapsed = scheduled.elapsed();
            let _ = pool_tx.send(sender).await;
            ok.then_some(elapsed.as_micros() as u64)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Some(us)) => lat.push(us),
            _ => errors += 1,
        }
    }
    (lat, errors)
}
