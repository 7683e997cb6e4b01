//! `--native-sidecars=auto` against a stand-in apiserver that answers `/version` (and 404 to
//! everything else, so the caches never sync and readiness falls back after the timeout).
//! The real apiserver tier lives in the e2e crate; this checks the injector's side of it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::*;

/// Serves `/version` with the given minor until the process ends (the thread is detached).
fn fake_apiserver(minor: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path == "/version" {
                let body = serde_json::json!({
                    "major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"),
                    "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
                });
                ("200 OK", body.to_string())
            } else {
                ("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_owned())
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

async fn mode_for(minor: &'static str) -> (Vec<String>, Injector) {
    let port = fake_apiserver(minor);
    let cert = self_signed();
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("kubeconfig");
    let inj =
        Injector::start_with_kubeconfig(&cert, &["--cache-sync-timeout-secs", "1"], &kubeconfig);
    let tls = client_config(&cert.der, false);
    let body = serde_json::to_vec(&review("uid-v", "shop", plain_pod())).expect("json");
    let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body)
        .await
        .expect("request");
    let resp: Value = serde_json::from_slice(&reply.body).expect("json");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["response"]["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&patch).expect("json");
    let paths = patch
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["path"].as_str().map(str::to_owned))
        .collect();
    // Caches never sync against this server: /readyz turns ready after the 1 s timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(inj.addr, tls.clone(), "GET", "/readyz", vec![])
            .await
            .expect("readyz");
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(dir);
    (paths, inj)
}

#[tokio::test]
async fn auto_detects_native_sidecars_from_1_29() {
    let (paths, _inj) = mode_for("30+").await;
    assert_eq!(paths[0], "/spec/initContainers", "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("/spec/containers")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn auto_uses_classic_sidecars_before_1_29() {
    let (paths, _inj) = mode_for("28").await;
    assert!(paths.iter().any(|p| p == "/spec/containers/0"), "{paths:?}");
}
