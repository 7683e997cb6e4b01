//! Component tests of the real `sidetrace-injector` binary over HTTPS with a self-signed
//! certificate generated here: admission round trip, errors, body limit, certificate rotation,
//! and garbage bodies.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn admission_review_round_trip_injects_a_plain_pod() {
    let cert = self_signed();
    let inj = Injector::start(&cert, &["--native-sidecars", "true"]);
    let tls = client_config(&cert.der, false);
    let body = serde_json::to_vec(&review("uid-1", "shop", plain_pod())).expect("json");
    let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body)
        .await
        .expect("request");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let out = parse(&reply.body);
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let resp = &out["response"];
    assert_eq!(resp["uid"], "uid-1");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch is a base64 string"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).expect("JSON Patch");
    let mut pod = plain_pod();
    json_patch::patch(&mut pod, &patch).expect("patch applies");
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(inits, ["sidetrace-init", "sidetrace-proxy"]);
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert!(pod["metadata"]["annotations"]["sidetrace.dev/status"].is_string());

    // Reinvocation with the patched pod: allowed, no patch.
    let body = serde_json::to_vec(&review("uid-2", "shop", pod)).expect("json");
    let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body)
        .await
        .expect("request");
    let resp = &parse(&reply.body)["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "{resp}");

    // Invalid annotation: still admitted and patched, with a warning naming the annotation.
    let mut pod = plain_pod();
    pod["metadata"]["annotations"] = json!({"sidetrace.dev/sampling": "lots"});
    let body = serde_json::to_vec(&review("uid-3", "shop", pod)).expect("json");
    let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body)
        .await
        .expect("request");
    let resp = &parse(&reply.body)["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_string());
    let warnings = resp["warnings"].as_array().expect("warnings");
    assert!(
        warnings[0]
            .as_str()
            .expect("str")
            .starts_with("sidetrace.dev/sampling:"),
        "{warnings:?}"
    );

    // Metrics count what happened.
    let reply = request(inj.addr, tls, "GET", "/metrics", vec![])
        .await
        .expect("metrics");
    let text = String::from_utf8(reply.body).expect("utf8");
    assert!(
        text.contains("sidetrace_injector_admissions_total{outcome=\"injected\",reason=\"\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("{outcome=\"skipped\",reason=\"already-injected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sidetrace_injector_admission_duration_seconds_count 3"),
        "{text}"
    );
}

#[tokio::test]
async fn auto_mode_without_an_apiserver_uses_classic_sidecars() {
    let cert = self_signed();
    let inj = Injector::start(&cert, &[]);
    let tls = client_config(&cert.der, true);
    let body = serde_json::to_vec(&review("uid-c", "shop", plain_pod())).expect("json");
    // TLS 1.2 only client: still served.
    let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body)
        .await
        .expect("TLS 1.2 request");
    let resp = &parse(&reply.body)["response"];
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&patch).expect("json");
    let paths: Vec<&str> = patch
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["path"].as_str())
        .collect();
    assert!(paths.contains(&"/spec/containers/0"), "{paths:?}");
    for path in ["/healthz", "/readyz"] {
        let reply = request(inj.addr, tls.clone(), "GET", path, vec![])
            .await
            .expect(path);
        assert_eq!(reply.status, 200, "{path}");
    }
}

#[tokio::test]
async fn non_pods_and_non_creates_are_allowed_without_a_patch() {
    let cert = self_signed();
    let inj = Injector::start(&cert, &["--native-sidecars", "false"]);
    let tls = client_config(&cert.der, false);
    let mut cm = review(
        "uid-cm",
        "shop",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
    );
    cm["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let mut update = review("uid-up", "shop", plain_pod());
    update["request"]["operation"] = json!("UPDATE");
    for (uid, r) in [("uid-cm", cm), ("uid-up", update)] {
        let reply = request(
            inj.addr,
            tls.clone(),
            "POST",
            "/mutate",
            serde_json::to_vec(&r).expect("json"),
        )
        .await
        .expect("request");
        assert_eq!(reply.status, 200);
        let resp = &parse(&reply.body)["response"];
        assert_eq!(resp["uid"], uid);
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none());
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_rejected_clearly() {
    let cert = self_signed();
    let inj = Injector::start(&cert, &["--native-sidecars", "true"]);
    let tls = client_config(&cert.der, false);
    let reply = request(
        inj.addr,
        tls.clone(),
        "POST",
        "/mutate",
        b"{not json".to_vec(),
    )
    .await
    .expect("request");
    assert_eq!(reply.status, 400);
    let msg = String::from_utf8_lossy(&reply.body);
    assert!(msg.contains("not an AdmissionReview"), "{msg}");

    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let reply = request(
        inj.addr,
        tls.clone(),
        "POST",
        "/mutate",
        serde_json::to_vec(&no_request).expect("json"),
    )
    .await
    .expect("request");
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("no request"));

    // A body over the 2 MiB limit is refused from its Content-Length, before it is read.
    let head = raw_exchange(
        inj.addr,
        tls.clone(),
        format!(
            "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            3 * 1024 * 1024
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Chunked (no Content-Length) bodies are cut off at the limit too.
    let chunk = "x".repeat(64 * 1024);
    let mut req =
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
    // Just over the limit: the unread remainder fits in socket buffers, so writing never
    // blocks on a server that has stopped reading.
    for _ in 0..33 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let head = raw_exchange(inj.addr, tls.clone(), req).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let reply = request(inj.addr, tls, "GET", "/mutate", vec![])
        .await
        .expect("request");
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let first = self_signed();
    let inj = Injector::start(&first, &["--native-sidecars", "true"]);
    let reply = request(
        inj.addr,
        client_config(&first.der, false),
        "GET",
        "/healthz",
        vec![],
    )
    .await
    .expect("first cert served");
    assert_eq!(reply.server_cert, first.der);

    // A half-written rotation (new cert, old key) must not break serving.
    let second = self_signed();
    std::fs::write(&inj.cert_path, &second.cert_pem).expect("write cert");
    // The injector has looked at the inconsistent pair once it counts a failed reload.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = request(
            inj.addr,
            client_config(&first.der, false),
            "GET",
            "/metrics",
            vec![],
        )
        .await
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
        if text.contains("sidetrace_injector_tls_reloads_total{result=\"error\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the half-written rotation was never read: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = request(
        inj.addr,
        client_config(&first.der, false),
        "GET",
        "/healthz",
        vec![],
    )
    .await
    .expect("old cert still served while the pair is inconsistent");
    assert_eq!(reply.server_cert, first.der);

    std::fs::write(&inj.key_path, &second.key_pem).expect("write key");
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_tls = client_config(&second.der, false);
    loop {
        match request(inj.addr, new_tls.clone(), "GET", "/healthz", vec![]).await {
            Ok(reply) => {
                assert_eq!(reply.server_cert, second.der);
                assert_eq!(reply.status, 200);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("new certificate never served: {e}"),
        }
    }
    let reply = request(inj.addr, new_tls, "GET", "/metrics", vec![])
        .await
        .expect("metrics");
    let text = String::from_utf8(reply.body).expect("utf8");
    assert!(
        text.contains("sidetrace_injector_tls_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
}

/// xorshift64*: deterministic garbage without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn garbage_bodies_never_crash_the_server() {
    let cert = self_signed();
    let mut inj = Injector::start(&cert, &["--native-sidecars", "true"]);
    let tls = client_config(&cert.der, false);
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let valid = serde_json::to_vec(&review("uid-g", "shop", plain_pod())).expect("json");
    let mut bodies: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"AdmissionReview\"".to_vec(),
        "[".repeat(100_000).into_bytes(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#
            .to_vec(),
        serde_json::to_vec(&review(
            "u",
            "shop",
            json!({"spec": {"containers": "nope"}}),
        ))
        .expect("json"),
        serde_json::to_vec(&review(
            "u",
            "shop",
            json!({"metadata": {"annotations": {"sidetrace.dev/sampling": 5}}}),
        ))
        .expect("json"),
        serde_json::to_vec(&review("u", "shop", json!(42))).expect("json"),
    ];
    for i in 0..40 {
        // Random bytes, and the valid review truncated or with bytes flipped.
        let n = 1 + (rng.next() % 4096) as usize;
        bodies.push(rng.bytes(n));
        let cut = (rng.next() as usize) % valid.len();
        bodies.push(valid[..cut].to_vec());
        let mut flipped = valid.clone();
        for _ in 0..(1 + i % 8) {
            let at = (rng.next() as usize) % flipped.len();
            flipped[at] = rng.next() as u8;
        }
        bodies.push(flipped);
    }
    for body in bodies {
        let reply = request(inj.addr, tls.clone(), "POST", "/mutate", body.clone())
            .await
            .unwrap_or_else(|e| panic!("no answer for a {}-byte body: {e}", body.len()));
        assert!(
            reply.status == 200 || reply.status == 400,
            "status {} for {:?}",
            reply.status,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        if reply.status == 200 {
            assert_eq!(parse(&reply.body)["response"]["allowed"], true);
        }
    }
    assert!(inj.alive(), "the server died");
    let reply = request(inj.addr, tls, "GET", "/healthz", vec![])
        .await
        .expect("healthz");
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn sigterm_turns_unready_keeps_serving_then_exits() {
    let cert = self_signed();
    let mut inj = Injector::start(
        &cert,
        &["--native-sidecars", "true", "--shutdown-delay-secs", "5"],
    );
    let tls = client_config(&cert.der, false);
    let reply = request(inj.addr, tls.clone(), "GET", "/readyz", vec![])
        .await
        .expect("readyz");
    assert_eq!(reply.status, 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &inj.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // During the delay: unready, but admissions are still answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_unready = false;
    while Instant::now() < deadline && !saw_unready {
        let reply = request(inj.addr, tls.clone(), "GET", "/readyz", vec![])
            .await
            .expect("readyz");
        saw_unready = reply.status == 503;
    }
    assert!(saw_unready, "/readyz never turned 503 after SIGTERM");
    let body = serde_json::to_vec(&review("uid-t", "shop", plain_pod())).expect("json");
    let reply = request(inj.addr, tls, "POST", "/mutate", body)
        .await
        .expect("served while draining");
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = inj.child.try_wait() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running long after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let dir = TempDir::new("badcfg");
    let missing = dir.0.join("missing.pem");
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--tls-cert".into(),
            missing.display().to_string(),
            "--tls-key".into(),
            missing.display().to_string(),
        ],
        vec![
            "--tls-cert".into(),
            garbage.display().to_string(),
            "--tls-key".into(),
            garbage.display().to_string(),
        ],
        vec!["--plain-http".into(), "--sampling".into(), "2".into()],
        vec![
            "--plain-http".into(),
            "--proxy-memory-limit".into(),
            "lots".into(),
        ],
        vec![
            "--plain-http".into(),
            "--native-sidecars".into(),
            "maybe".into(),
        ],
        vec!["--listen".into(), "127.0.0.1:0".into()],
    ];
    for args in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidetrace-injector"))
            .args(&args)
            .args(
                ["--watch-traced-services=false", "--native-sidecars=false"]
                    .iter()
                    .filter(|_| !args.contains(&"--native-sidecars".to_owned())),
            )
            // Missing files are otherwise waited for (the operator writes them after start).
            .arg("--tls-wait-secs=0")
            .env("KUBECONFIG", dir.0.join("none"))
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?} bound a port");
    }
}

#[test]
fn a_failure_at_run_time_exits_1_not_64() {
    let dir = TempDir::new("taken");
    // The port is taken: the flags are fine, serving fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidetrace-injector"))
        .args(["--plain-http", "--listen", &addr])
        .args(["--watch-traced-services=false", "--native-sidecars=false"])
        .env("KUBECONFIG", dir.0.join("none"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("binding --listen"), "{stderr}");
}

/// A Secret volume as the kubelet writes it: `tls.crt -> ..data/tls.crt`, `..data ->
/// ..<timestamp>`, rotated by atomically renaming a new `..data` symlink over the old one.
#[tokio::test]
async fn secret_volume_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let first = self_signed();
    let inj = Injector::start(&first, &["--native-sidecars", "true"]);
    // Rebuild the injector's files as a Secret volume layout in place.
    let dir = inj.cert_path.parent().expect("dir").to_path_buf();
    let v1 = dir.join("..2026_01_01_00_00_00.1");
    std::fs::create_dir(&v1).expect("mkdir v1");
    std::fs::write(v1.join("tls.crt"), &first.cert_pem).expect("write");
    std::fs::write(v1.join("tls.key"), &first.key_pem).expect("write");
    symlink(&v1, dir.join("..data")).expect("..data");
    for f in ["tls.crt", "tls.key"] {
        let tmp = dir.join(format!("{f}.tmp"));
        symlink(format!("..data/{f}"), &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join(f)).expect("swap in symlink");
    }
    let reply = request(
        inj.addr,
        client_config(&first.der, false),
        "GET",
        "/healthz",
        vec![],
    )
    .await
    .expect("first cert served");
    assert_eq!(reply.server_cert, first.der);

    let second = self_signed();
    let v2 = dir.join("..2026_01_02_00_00_00.2");
    std::fs::create_dir(&v2).expect("mkdir v2");
    std::fs::write(v2.join("tls.crt"), &second.cert_pem).expect("write");
    std::fs::write(v2.join("tls.key"), &second.key_pem).expect("write");
    symlink(&v2, dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("atomic swap");

    let deadline = Instant::now() + Duration::from_secs(15);
    let new_tls = client_config(&second.der, false);
    loop {
        match request(inj.addr, new_tls.clone(), "GET", "/healthz", vec![]).await {
            Ok(reply) => {
                assert_eq!(reply.server_cert, second.der);
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "new certificate never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// In a cluster the chart's Secret is empty until the operator fills it: the injector waits
/// for the files instead of exiting into the kubelet's restart back-off.
#[tokio::test]
async fn empty_certificate_files_are_waited_for() {
    use std::io::BufRead as _;
    let cert = self_signed();
    let dir = TempDir::new("wait");
    let (cert_path, key_path) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert_path, "").expect("empty cert");
    std::fs::write(&key_path, "").expect("empty key");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidetrace-injector"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .args([
            "--tls-wait-secs",
            "30",
            "--watch-traced-services=false",
            "--native-sidecars=false",
        ])
        .env("KUBECONFIG", dir.0.join("none"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The injector says it waits; read its log (and keep draining it) rather than guess a time.
    let stderr = child.stderr.take().expect("stderr");
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("waiting for the webhook certificate") {
                let _ = waiting_tx.send(());
            }
        }
    });
    // Twice: it kept waiting after its first look rather than giving up.
    for _ in 0..2 {
        waiting_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the injector never said it waits for the certificate");
    }
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "exited instead of waiting for the certificate"
    );
    std::fs::write(&key_path, &cert.key_pem).expect("key");
    std::fs::write(&cert_path, &cert.cert_pem).expect("cert");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .expect("join")
    .expect("listening line");
    let addr: std::net::SocketAddr = line
        .trim()
        .rsplit("://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let reply = request(
        addr,
        client_config(&cert.der, false),
        "GET",
        "/healthz",
        vec![],
    )
    .await
    .expect("healthz over the late certificate");
    assert_eq!(reply.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}
