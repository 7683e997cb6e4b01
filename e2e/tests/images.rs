//! The container images `make images` builds (images/build.sh), tested as artefacts: each
//! exported docker archive under `$SIDETRACE_CACHE/images` — the very file `kind load
//! image-archive` and `ctr images import` read — is unpacked into a root filesystem and run by
//! `chroot` with the image's own entrypoint and user. No container runtime is needed for that,
//! so the test is the same whichever engine (docker, podman, buildah) built the images.
//!
//! What a broken image looks like, and the test that catches it:
//! - a binary that is not static, or lacks a file it needs at start: `--version` fails;
//! - a control-plane image that would run as root: its config's `User` is checked;
//! - an init image whose iptables misses a library or an extension: `iptables-nft` and
//!   `iptables-legacy` list the nat table, and `sidetrace-init` programs its chains, inside a
//!   throwaway network namespace (the host's tables are never touched);
//! - static glibc that cannot resolve names (it cannot load NSS modules): the demo app, inside
//!   its own image, calls a peer by an /etc/hosts name and by a DNS name through the resolv.conf
//!   search list, answered by a one-name DNS responder inside the namespace;
//! - an arm64 image that holds x86-64 binaries, or an arm64 iptables missing a library: its
//!   config names the architecture, `file` names the machine of every binary, and each runs
//!   (`--version`, iptables loading an extension) under qemu-user with the image as its root.
//!
//! Prerequisites: root (chroot, netns), built images of this commit for every architecture in
//! `SIDETRACE_IMAGE_ARCHES` (default `amd64 arm64`, as `make images` builds), and
//! qemu-user-static for the foreign one. The tests never build images themselves (`make test`
//! builds them once, before every cargo test); archives of another revision than HEAD count as
//! missing: a skip, and a failure under `CI=true`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sidetrace_e2e::controlplane::peers::{cache_dir, skip_or_fail};
use sidetrace_e2e::netns::ns;

/// The images with a Rust binary, its file name and the uid the image must run as.
const RUST_IMAGES: &[(&str, &str, u32)] = &[
    ("operator", "sidetrace-operator", 65532),
    ("injector", "sidetrace-injector", 65532),
    // The proxy's uid is the one the init container's rules exempt (contract default).
    (
        "proxy",
        "sidetrace-proxy",
        sidetrace_contract::defaults::PROXY_UID,
    ),
    ("demo-app", "sidetrace-demo-app", 65532),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's appVersion: the tag of every sidetrace image.
fn app_version() -> Result<String> {
    let chart = std::fs::read_to_string(root().join("helm/sidetrace/Chart.yaml"))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&chart)?;
    v["appVersion"]
        .as_str()
        .map(str::to_owned)
        .context("Chart.yaml has no appVersion")
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The architectures under test: `SIDETRACE_IMAGE_ARCHES` as images/build.sh reads it
/// (`host` is this machine's), by default both that `make images` builds.
fn arches() -> Vec<String> {
    let list = std::env::var("SIDETRACE_IMAGE_ARCHES").unwrap_or_else(|_| "amd64 arm64".into());
    let mut out: Vec<String> = Vec::new();
    for a in list.split([' ', ',']).filter(|a| !a.is_empty()) {
        let a = if a == "host" { host_arch() } else { a };
        if !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    out
}

/// This machine's architecture, by its OCI / Debian name.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// (file's name of the machine, qemu-user program) for an architecture.
fn machine(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "arm64" => ("ARM aarch64", "qemu-aarch64-static"),
        _ => ("x86-64", "qemu-x86_64-static"),
    }
}

/// The archives images/build.sh exported for `arch`: name → (reference, archive path).
fn manifest(arch: &str) -> BTreeMap<String, (String, PathBuf)> {
    let path = cache_dir().join(format!("images/images.{arch}.tsv"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, reference, archive) = (f.next()?, f.next()?, f.next()?);
            Some((
                name.to_owned(),
                (reference.to_owned(), PathBuf::from(archive)),
            ))
        })
        .filter(|(_, (_, a))| a.is_file())
        .collect()
}

/// The revision images/build.sh labels images with: this tree's HEAD.
fn head_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `org.opencontainers.image.revision` label of a docker archive, read without unpacking
/// its layers.
fn archive_revision(archive: &Path) -> Result<String> {
    let dir = std::env::temp_dir().join(format!(
        "st-{}-rev-{}",
        std::process::id(),
        archive.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        run({
            let mut c = Command::new("tar");
            c.arg("-xf")
                .arg(archive)
                .arg("-C")
                .arg(&dir)
                .arg("manifest.json");
            c
        })?;
        let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
        let config = m[0]["Config"]
            .as_str()
            .context("manifest Config")?
            .to_owned();
        run({
            let mut c = Command::new("tar");
            c.arg("-xf").arg(archive).arg("-C").arg(&dir).arg(&config);
            c
        })?;
        let c: Value = serde_json::from_slice(&std::fs::read(dir.join(&config))?)?;
        Ok(c["config"]["Labels"]["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The archives the test needs for `arch`, or `None` after applying the skip-or-fail rule.
/// Never builds: `make test` built them once, before any cargo test ran.
fn images_or_skip(
    test: &str,
    names: &[&str],
    arch: &str,
) -> Option<BTreeMap<String, (String, PathBuf)>> {
    if let Err(reason) = sidetrace_testkit::e2e_allowed() {
        skip_or_fail(test, &reason);
        return None;
    }
    if !is_root() {
        skip_or_fail(
            test,
            "needs root (chroot into the image, network namespaces)",
        );
        return None;
    }
    let m = manifest(arch);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !m.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        skip_or_fail(
            test,
            &format!(
                "{arch} images not built: {} (run `make images`)",
                missing.join(", ")
            ),
        );
        return None;
    }
    // Images of another commit would test someone else's code: CI must see this tree's.
    if let Some(head) = head_revision() {
        for n in names {
            let archive = &m[*n].1;
            match archive_revision(archive) {
                Ok(rev) if rev == head => {}
                Ok(rev) => {
                    skip_or_fail(
                        test,
                        &format!(
                            "{} is of revision {rev:?}, this tree is {head} (run `make images`)",
                            archive.display()
                        ),
                    );
                    return None;
                }
                Err(e) => panic!("{test}: reading {}: {e:#}", archive.display()),
            }
        }
    }
    Some(m)
}

/// A docker archive unpacked into `rootfs`, with the image's config; removed on drop.
struct Unpacked {
    dir: PathBuf,
    config: Value,
    repo_tags: Vec<String>,
}

impl Unpacked {
    fn new(name: &str, archive: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("st-{}-img-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let raw = dir.join("archive");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&raw)?;
        std::fs::create_dir_all(&rootfs)?;
        // Built first so that Drop removes the directory whatever fails below.
        let mut me = Self {
            dir,
            config: Value::Null,
            repo_tags: Vec::new(),
        };
        tar_x(archive, &raw)?;
        let manifest: Value = serde_json::from_slice(&std::fs::read(raw.join("manifest.json"))?)
            .context("manifest.json of the archive")?;
        let entry = &manifest[0];
        let config: Value = serde_json::from_slice(&std::fs::read(
            raw.join(entry["Config"].as_str().context("manifest Config")?),
        )?)?;
        for layer in entry["Layers"].as_array().context("manifest Layers")? {
            tar_x(&raw.join(layer.as_str().context("layer name")?), &rootfs)?;
        }
        me.repo_tags = entry["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        me.config = config;
        // A container runtime gives every container a /dev; chroot does not. Without
        // /dev/null, `Command::stdin(Stdio::null())` fails with ENOENT — which sidetrace-init
        // rightly reports as "iptables not installed".
        let dev = rootfs.join("dev");
        std::fs::create_dir_all(&dev)?;
        for (node, minor) in [
            ("null", "3"),
            ("zero", "5"),
            ("random", "8"),
            ("urandom", "9"),
        ] {
            run({
                let mut c = Command::new("mknod");
                c.args(["-m", "666"])
                    .arg(dev.join(node))
                    .args(["c", "1", minor]);
                c
            })?;
        }
        Ok(me)
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn cfg(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    fn label(&self, key: &str) -> &str {
        self.cfg("Labels")[key].as_str().unwrap_or_default()
    }

    /// The configured `User` as (uid, gid); numeric, as kubelets need for runAsNonRoot.
    fn user(&self) -> Result<(u32, u32)> {
        let u = self.cfg("User").as_str().unwrap_or_default();
        let (uid, gid) = u.split_once(':').unwrap_or((u, u));
        Ok((
            uid.parse()
                .with_context(|| format!("User {u:?} is not numeric"))?,
            gid.parse()
                .with_context(|| format!("User {u:?} is not numeric"))?,
        ))
    }

    fn entrypoint(&self) -> Vec<String> {
        self.cfg("Entrypoint")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `chroot` into the rootfs as `user`, with the image's environment only.
    fn command(&self, user: (u32, u32), argv: &[String]) -> Command {
        let mut c = Command::new(host_bin("chroot"));
        c.arg(format!("--userspec={}:{}", user.0, user.1))
            .arg(self.rootfs())
            .args(argv)
            .env_clear();
        for kv in self.cfg("Env").as_array().into_iter().flatten() {
            if let Some((k, v)) = kv.as_str().and_then(|s| s.split_once('=')) {
                c.env(k, v);
            }
        }
        c
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A host program's absolute path, so that a command whose environment is the image's (its
/// PATH names the image's directories) still starts it.
fn host_bin(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn tar_x(archive: &Path, into: &Path) -> Result<()> {
    let out = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .context("running tar")?;
    ensure!(
        out.status.success(),
        "tar -xf {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Run to completion; Ok(stdout+stderr) on success, Err with the output otherwise.
fn run(mut c: Command) -> Result<String> {
    let what = format!("{c:?}");
    let out = c.output().with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

/// A named network namespace with only `lo` (up), deleted on drop (with what runs in it).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Self> {
        let name = format!("st-{}-{tag}", std::process::id());
        ns::ip(&["netns", "add", &name])?;
        let me = Self(name);
        ns::ip(&["-n", &me.0, "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// `ip netns exec NS` + `inner`'s program and arguments, keeping its environment.
    fn wrap(&self, inner: &Command) -> Command {
        let mut c = Command::new(host_bin("ip"));
        c.args(["netns", "exec", &self.0])
            .arg(inner.get_program())
            .args(inner.get_args())
            .env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ns::destroy(&self.0);
    }
}

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn rust_images_run_their_binary_as_a_non_root_user() -> Result<()> {
    let names: Vec<&str> = RUST_IMAGES.iter().map(|(n, _, _)| *n).collect();
    let Some(m) = images_or_skip(
        "rust_images_run_their_binary_as_a_non_root_user",
        &names,
        host_arch(),
    ) else {
        return Ok(());
    };
    let version = app_version()?;
    for (name, binary, uid) in RUST_IMAGES {
        let (reference, archive) = &m[*name];
        let img = Unpacked::new(name, archive)?;
        ensure!(
            img.config["architecture"] == host_arch() && img.config["os"] == "linux",
            "{name}: config says {}/{}, expected linux/{}",
            img.config["os"],
            img.config["architecture"],
            host_arch()
        );
        // Labels and tag: what `helm install` asks for is what was built.
        ensure!(
            reference.ends_with(&format!("/sidetrace/{name}:{version}")),
            "{reference} is not tagged with the chart's appVersion {version}"
        );
        ensure!(
            img.repo_tags
                .iter()
                .any(|t| t.ends_with(&format!("sidetrace/{name}:{version}"))),
            "{name}: archive RepoTags {:?} do not name sidetrace/{name}:{version}",
            img.repo_tags
        );
        ensure!(
            img.label("org.opencontainers.image.title") == *binary,
            "{name}: title label"
        );
        ensure!(
            img.label("org.opencontainers.image.version") == version,
            "{name}: version label"
        );
        for l in [
            "org.opencontainers.image.source",
            "org.opencontainers.image.description",
        ] {
            ensure!(!img.label(l).is_empty(), "{name}: label {l} missing");
        }
        // Non-root by configuration, with the uid the pod specs expect.
        let user = img.user()?;
        ensure!(
            user == (*uid, *uid),
            "{name}: User is {user:?}, expected {uid}:{uid}"
        );
        let entry = img.entrypoint();
        ensure!(
            entry == [format!("/usr/local/bin/{binary}")],
            "{name}: entrypoint {entry:?}"
        );
        // The binary starts in the bare image as that user. The demo app has no --version.
        let flag = if *name == "demo-app" {
            "--help"
        } else {
            "--version"
        };
        let mut argv = entry.clone();
        argv.push(flag.to_owned());
        let out = run(img.command(user, &argv)).with_context(|| format!("image {name}"))?;
        ensure!(out.contains(binary), "{name} {flag}: {out}");
        if flag == "--version" {
            ensure!(out.contains(&version), "{name} --version: {out}");
        }
        let first = out.lines().next().unwrap_or_default();
        eprintln!(
            "ok: {reference}: `{flag}` says {first:?} as {}:{}",
            user.0, user.1
        );
    }
    Ok(())
}

/// One HTTP/1.1 request from inside `netns`; (status, body).
fn http_in(
    netns: &str,
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    ns::run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(&body)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        Ok((status, body.unwrap_or_default()))
    })
}

#[test]
fn jaeger_image_serves_zipkin_and_the_query_api_on_its_pod_address() -> Result<()> {
    const TEST: &str = "jaeger_image_serves_zipkin_and_the_query_api_on_its_pod_address";
    if !manifest(host_arch()).contains_key("jaeger") && !cache_dir().join("bin/jaeger").exists() {
        skip_or_fail(
            TEST,
            "no Jaeger binary: run `e2e/peers.sh jaeger` (a long Go build), then `make images`",
        );
        return Ok(());
    }
    let Some(m) = images_or_skip(TEST, &["jaeger"], host_arch()) else {
        return Ok(());
    };
    let (reference, archive) = &m["jaeger"];
    let img = Unpacked::new("jaeger", archive)?;
    let user = img.user()?;
    ensure!(user.0 != 0, "jaeger runs as root");
    // A "pod" address that is not loopback: what other pods and the kubelet's probes reach.
    let netns = Netns::new("jaeger")?;
    let pod_ip = Ipv4Addr::new(10, 250, 99, 1);
    // A veth pair with both ends inside (this kernel has no dummy driver).
    for args in [
        &["link", "add", "st0", "type", "veth", "peer", "name", "st1"][..],
        &["addr", "add", "10.250.99.1/32", "dev", "st0"],
        &["link", "set", "st0", "up"],
        &["link", "set", "st1", "up"],
    ] {
        let mut a = vec!["-n", netns.0.as_str()];
        a.extend_from_slice(args);
        ns::ip(&a)?;
    }
    let log = img.dir.join("jaeger.log");
    let mut c = netns.wrap(&img.command(user, &img.entrypoint()));
    c.stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?);
    let _jaeger = Running(c.spawn().context("starting jaeger in its image")?);
    let tail = || std::fs::read_to_string(&log).unwrap_or_default();
    // Health (the readiness probe's target): healthcheckv2 on 13133, /status.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = http_in(
            &netns.0,
            SocketAddr::from((pod_ip, 13133)),
            "GET",
            "/status".into(),
            vec![],
        );
        if matches!(health, Ok((200, _))) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "jaeger never became healthy: {health:?}\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A Zipkin v2 span, as the sidecars post it, read back from the query API.
    let trace_id = format!("{:032x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros();
    let span = serde_json::json!([{
        "traceId": trace_id, "id": "00000000000000a1", "name": "images-probe", "kind": "SERVER",
        "timestamp": now_us as u64, "duration": 1000,
        "localEndpoint": {"serviceName": "images-test"}
    }]);
    let (status, body) = http_in(
        &netns.0,
        SocketAddr::from((pod_ip, 9411)),
        "POST",
        "/api/v2/spans".into(),
        serde_json::to_vec(&span)?,
    )?;
    ensure!(status == 202, "zipkin POST: {status} {body}\n{}", tail());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = http_in(
            &netns.0,
            SocketAddr::from((pod_ip, 16686)),
            "GET",
            format!("/api/traces/{trace_id}"),
            vec![],
        )?;
        if got.0 == 200 && got.1.contains("images-probe") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "span not queryable: {got:?}\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "ok: {reference} as {}:{}: healthy, Zipkin span stored and queried on {pod_ip}",
        user.0, user.1
    );
    Ok(())
}

#[test]
fn init_image_iptables_both_backends_in_a_throwaway_netns() -> Result<()> {
    let Some(m) = images_or_skip(
        "init_image_iptables_both_backends_in_a_throwaway_netns",
        &["init"],
        host_arch(),
    ) else {
        return Ok(());
    };
    let (reference, archive) = &m["init"];
    let img = Unpacked::new("init", archive)?;
    // The init container needs root (NET_ADMIN in the pod's namespace); the image says so.
    ensure!(img.user()? == (0, 0), "init image User {:?}", img.user());
    ensure!(
        img.entrypoint() == ["/usr/local/bin/sidetrace-init"],
        "entrypoint {:?}",
        img.entrypoint()
    );
    let netns = Netns::new("init")?;
    let sh = |argv: &[&str]| -> Result<String> {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        run(netns.wrap(&img.command((0, 0), &argv)))
    };
    let v = sh(&["iptables", "--version"])?;
    ensure!(v.starts_with("iptables v"), "iptables --version: {v}");
    for backend in ["nft", "legacy"] {
        for family in ["iptables", "ip6tables"] {
            let out = sh(&[&format!("{family}-{backend}"), "-t", "nat", "-L", "-n"])?;
            ensure!(
                out.contains("Chain OUTPUT"),
                "{family}-{backend} -t nat -L: {out}"
            );
        }
    }
    // A rule that needs extensions (tcp, owner, REDIRECT) loads them from the image.
    sh(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "1337",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ])?;
    // The real entrypoint with the injector's arguments programs its chains (SIDETRACE_*,
    // init-iptables' chain prefix) and exits 0. The legacy rule above makes it pick legacy,
    // the backend that "holds rules"; either way its chains must appear in that backend.
    let mut argv = img.entrypoint();
    argv.extend(
        [
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--exclude-inbound-ports",
            "15021",
        ]
        .map(str::to_owned),
    );
    let out = run(netns.wrap(&img.command((0, 0), &argv)))?;
    let saved = format!(
        "{}{}",
        sh(&["iptables-legacy-save", "-t", "nat"])?,
        sh(&["iptables-nft-save", "-t", "nat"])?
    );
    ensure!(
        saved.contains(":SIDETRACE_"),
        "sidetrace-init ran ({out}) but no SIDETRACE_ chain exists:\n{saved}"
    );
    eprintln!(
        "ok: {reference}: {} nft+legacy, sidetrace-init programmed its chains",
        v.trim()
    );
    Ok(())
}

/// A one-name DNS responder on 127.0.0.1:53 inside `netns`: A 127.0.0.1 for `name`, an empty
/// answer for its other types, NXDOMAIN for anything else. Returns the queries it saw.
fn dns_responder(
    netns: &str,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Vec<String>>> {
    let sock = ns::run_in(netns, || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 53)).context("binding 127.0.0.1:53")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    })?;
    Ok(std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some((qname, qtype, qend)) = parse_question(&buf[..n]) else {
                continue;
            };
            seen.push(format!("{qname} type {qtype}"));
            let hit = qname.eq_ignore_ascii_case(name);
            let mut r = Vec::with_capacity(n + 16);
            r.extend_from_slice(&buf[..2]); // id
            r.extend_from_slice(&[0x81, if hit { 0x80 } else { 0x83 }]); // response, RD+RA, rcode
            r.extend_from_slice(&[0, 1, 0, u8::from(hit && qtype == 1), 0, 0, 0, 0]);
            r.extend_from_slice(&buf[12..qend]);
            if hit && qtype == 1 {
                // Name by pointer to the question, A IN, ttl 30, 127.0.0.1.
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, from);
        }
        seen
    }))
}

/// (name, qtype, end of the question section) of a DNS query.
fn parse_question(p: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(p.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*p.get(i + 1)?, *p.get(i + 2)?]);
    Some((labels.join("."), qtype, i + 5))
}

/// GET `path` from `addr` inside `netns`; the whole response.
fn http_get_in(netns: &str, addr: SocketAddr, path: &'static str) -> Result<String> {
    ns::run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn static_binaries_resolve_hosts_and_dns_names_in_a_scratch_image() -> Result<()> {
    let Some(m) = images_or_skip(
        "static_binaries_resolve_hosts_and_dns_names_in_a_scratch_image",
        &["demo-app"],
        host_arch(),
    ) else {
        return Ok(());
    };
    let img = Unpacked::new("demo-app-dns", &m["demo-app"].1)?;
    let rootfs = img.rootfs();
    // What a kubelet mounts into a pod: hosts, and a resolv.conf with the cluster's search list.
    std::fs::write(
        rootfs.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.0.1 leaf.sidetrace.test\n",
    )?;
    std::fs::write(
        rootfs.join("etc/resolv.conf"),
        "search demo.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:2\n",
    )?;
    let netns = Netns::new("dns")?;
    let stop = Arc::new(AtomicBool::new(false));
    let queries = dns_responder(
        &netns.0,
        "jaeger-collector.sidetrace-system.svc.cluster.local",
        Arc::clone(&stop),
    )?;
    let user = img.user()?;
    let entry = img.entrypoint();
    let start = |args: &[&str]| -> Result<Running> {
        let mut argv = entry.clone();
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let mut c = netns.wrap(&img.command(user, &argv));
        c.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(Running(
            c.spawn().context("starting the demo app in its image")?,
        ))
    };
    let _leaf = start(&["--listen", "127.0.0.1:18081", "--name", "leaf"])?;
    let _caller = start(&[
        "--listen",
        "127.0.0.1:18080",
        "--name",
        "caller",
        "--route",
        "/hosts=http://leaf.sidetrace.test:18081/",
        "--route",
        // Resolved like the proxy's collector URL: a short name through the search list.
        "/dns=http://jaeger-collector.sidetrace-system:18081/",
    ])?;
    let caller = SocketAddr::from((Ipv4Addr::LOCALHOST, 18080));
    let deadline = Instant::now() + Duration::from_secs(10);
    for path in ["/hosts", "/dns"] {
        let mut last;
        loop {
            match http_get_in(&netns.0, caller, path) {
                Ok(r) if r.contains("(leaf)") => break,
                Ok(r) => last = r,
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("{path}: the static demo app did not reach its peer by name: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("ok: {path} resolved and reached the peer");
    }
    stop.store(true, Ordering::Relaxed);
    let seen = queries.join().unwrap_or_default();
    ensure!(
        seen.iter()
            .any(|q| q.starts_with("jaeger-collector.sidetrace-system.svc.cluster.local type 1")),
        "the name was not resolved through the search list: {seen:?}"
    );
    Ok(())
}

/// `file`'s description of `path`.
fn file_says(path: &Path) -> Result<String> {
    let out = run({
        let mut c = Command::new("file");
        c.arg("-b").arg(path);
        c
    })?;
    Ok(out.trim().to_owned())
}

/// Every image of the other architecture (arm64 on an x86-64 machine): the image's config
/// names it, `file` names its machine for every binary, each binary runs under qemu-user with
/// the image as its root, and the init image's own iptables (from that architecture's Debian
/// packages) starts, with both backends, and loads an extension (so its libraries and
/// xtables modules are all there). qemu-user is run directly (no binfmt registration, no
/// chroot): the foreign loader and libraries are found through `-L <rootfs>`.
#[test]
fn foreign_arch_images_hold_binaries_of_their_architecture() -> Result<()> {
    const TEST: &str = "foreign_arch_images_hold_binaries_of_their_architecture";
    let foreign: Vec<String> = arches().into_iter().filter(|a| a != host_arch()).collect();
    if foreign.is_empty() {
        skip_or_fail(
            TEST,
            &format!(
                "SIDETRACE_IMAGE_ARCHES={:?} names no architecture but this machine's",
                std::env::var("SIDETRACE_IMAGE_ARCHES").unwrap_or_default()
            ),
        );
        return Ok(());
    }
    let version = app_version()?;
    for arch in &foreign {
        let mut names: Vec<&str> = RUST_IMAGES.iter().map(|(n, _, _)| *n).collect();
        names.push("init");
        let Some(m) = images_or_skip(TEST, &names, arch) else {
            return Ok(());
        };
        let (file_machine, qemu) = machine(arch);
        let qemu = host_bin(qemu);
        if !qemu.is_file() {
            skip_or_fail(
                TEST,
                &format!(
                    "{} is not installed (Debian's qemu-user-static; images/build.sh installs it)",
                    qemu.display()
                ),
            );
            return Ok(());
        }
        let under_qemu = |img: &Unpacked, argv: &[&str]| -> Result<String> {
            let mut c = Command::new(&qemu);
            c.arg("-L").arg(img.rootfs());
            c.arg(img.rootfs().join(argv[0].trim_start_matches('/')));
            c.args(&argv[1..]);
            run(c)
        };
        let mut binaries: Vec<(&str, &str)> =
            RUST_IMAGES.iter().map(|(n, b, _)| (*n, *b)).collect();
        binaries.push(("init", "sidetrace-init"));
        for (name, binary) in binaries {
            let (reference, archive) = &m[name];
            let img = Unpacked::new(&format!("{name}-{arch}"), archive)?;
            ensure!(
                img.config["architecture"] == arch.as_str() && img.config["os"] == "linux",
                "{name} ({arch}): config says {}/{}",
                img.config["os"],
                img.config["architecture"]
            );
            ensure!(
                img.repo_tags
                    .iter()
                    .any(|t| t.ends_with(&format!("sidetrace/{name}:{version}"))),
                "{name} ({arch}): archive RepoTags {:?}",
                img.repo_tags
            );
            let exe = format!("/usr/local/bin/{binary}");
            let says = file_says(&img.rootfs().join(exe.trim_start_matches('/')))?;
            ensure!(
                says.contains(file_machine)
                    && (says.contains("statically linked") || says.contains("static-pie linked")),
                "{name} ({arch}): {exe} is {says}"
            );
            let flag = if name == "demo-app" {
                "--help"
            } else {
                "--version"
            };
            let out =
                under_qemu(&img, &[&exe, flag]).with_context(|| format!("{name} ({arch})"))?;
            ensure!(out.contains(binary), "{name} ({arch}) {flag}: {out}");
            if flag == "--version" {
                ensure!(out.contains(&version), "{name} ({arch}) --version: {out}");
            }
            eprintln!(
                "ok: {reference} ({arch}): {binary} is {}; `{flag}` under qemu: {:?}",
                says.split(", BuildID").next().unwrap_or_default(),
                out.lines().next().unwrap_or_default()
            );
            if name != "init" {
                continue;
            }
            // The image's own dynamic loader resolves every library of both backends inside
            // the image (`ld.so --list` fails naming a missing one). The nft backend cannot
            // run further under qemu-user, which has no NETLINK_NETFILTER sockets ("Failed to
            // initialize nft: Protocol not supported"); the legacy one runs.
            let loader = match arch.as_str() {
                "arm64" => "/usr/lib/ld-linux-aarch64.so.1",
                _ => "/usr/lib64/ld-linux-x86-64.so.2",
            };
            for multi in ["xtables-nft-multi", "xtables-legacy-multi"] {
                let path = format!("/usr/sbin/{multi}");
                let says = file_says(&img.rootfs().join(path.trim_start_matches('/')))?;
                ensure!(
                    says.contains(file_machine) && says.contains("dynamically linked"),
                    "init ({arch}): {path} is {says}"
                );
                let libs = under_qemu(
                    &img,
                    &[
                        loader,
                        "--list",
                        &img.rootfs().join(&path[1..]).to_string_lossy(),
                    ],
                )?;
                ensure!(
                    libs.contains("libxtables.so.12 =>"),
                    "init ({arch}): {multi}'s libraries: {libs}"
                );
            }
            let legacy = "/usr/sbin/xtables-legacy-multi";
            let v = under_qemu(&img, &[legacy, "iptables", "--version"])?;
            ensure!(
                v.starts_with("iptables v") && v.contains("legacy"),
                "init ({arch}): {v}"
            );
            // `-m owner -h` dlopen()s libxt_owner.so from the image's xtables directory and
            // prints its options: the extension and the libraries it needs are there.
            let help = under_qemu(
                &img,
                &[legacy, "iptables", "-p", "tcp", "-m", "owner", "-h"],
            )?;
            ensure!(
                help.contains("--uid-owner"),
                "init ({arch}): the owner extension did not load:\n{help}"
            );
            eprintln!(
                "ok: {reference} ({arch}): iptables libraries resolve in the image (nft, legacy); \
                 {} under qemu, owner extension loads",
                v.trim()
            );
        }
    }
    Ok(())
}

/// `curl` GET of a registry API URL with an Accept header; the body, or an error.
fn registry_get(url: &str, accept: &str) -> Result<Value> {
    let out = run({
        let mut c = Command::new("curl");
        c.args(["-sSf", "--max-time", "10", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(url);
        c
    })?;
    serde_json::from_str(&out).with_context(|| format!("{url}: {out}"))
}

/// `make images REGISTRY=... PUSH=1`, on a real registry (the CNCF distribution registry from
/// Debian, `e2e/peers.sh registry`, on loopback with plain http): images/build.sh --push-only
/// pushes what `make images` built, and every sidetrace image then is one manifest list naming
/// linux/amd64 and linux/arm64, each entry's config saying that architecture and this commit.
/// What a user's cluster pulls is checked through the registry's own API, not the engine's.
#[test]
fn push_makes_one_multi_arch_manifest_list_per_image() -> Result<()> {
    const TEST: &str = "push_makes_one_multi_arch_manifest_list_per_image";
    let registry = cache_dir().join("bin/docker-registry");
    if !registry.is_file() {
        skip_or_fail(
            TEST,
            "no registry to push to: run `e2e/peers.sh registry` (Debian's docker-registry)",
        );
        return Ok(());
    }
    let names = ["operator", "injector", "proxy", "init", "demo-app"];
    let arches = arches();
    for arch in &arches {
        if images_or_skip(TEST, &names, arch).is_none() {
            return Ok(());
        }
    }
    let head = head_revision().context("git rev-parse HEAD")?;
    let version = app_version()?;
    let dir = std::env::temp_dir().join(format!("st-{}-registry", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(dir.clone());
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )?;
    let log = dir.join("registry.log");
    let _registry = Running(
        Command::new(&registry)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting docker-registry")?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while registry_get(&format!("{base}/v2/"), "application/json").is_err() {
        ensure!(
            Instant::now() < deadline,
            "registry did not answer: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let prefix = format!("127.0.0.1:{port}/team");
    let out = Command::new(root().join("images/build.sh"))
        .args([
            "--push-only",
            "--registry",
            &prefix,
            "--arch",
            &arches.join(","),
        ])
        .args(names)
        .env("SIDETRACE_PUSH_TLS_VERIFY", "false")
        .output()
        .context("images/build.sh --push-only")?;
    ensure!(
        out.status.success(),
        "images/build.sh --push-only failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    const INDEX: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    for name in names {
        let repo = format!("{base}/v2/team/sidetrace/{name}");
        let index = registry_get(&format!("{repo}/manifests/{version}"), INDEX)?;
        let entries = index["manifests"]
            .as_array()
            .with_context(|| format!("{name}: not a manifest list: {index}"))?;
        let mut seen: Vec<String> = Vec::new();
        for e in entries {
            let arch = e["platform"]["architecture"].as_str().unwrap_or_default();
            ensure!(e["platform"]["os"] == "linux", "{name}: {e}");
            let digest = e["digest"].as_str().context("digest")?;
            let manifest = registry_get(&format!("{repo}/manifests/{digest}"), MANIFEST)?;
            let config_digest = manifest["config"]["digest"].as_str().context("config")?;
            let config = registry_get(&format!("{repo}/blobs/{config_digest}"), "*/*")?;
            ensure!(
                config["architecture"] == arch,
                "{name}: the {arch} entry's config says {}",
                config["architecture"]
            );
            ensure!(
                config["config"]["Labels"]["org.opencontainers.image.revision"] == head.as_str(),
                "{name} ({arch}): pushed image is not of this commit: {}",
                config["config"]["Labels"]
            );
            seen.push(arch.to_owned());
        }
        seen.sort();
        let mut want = arches.clone();
        want.sort();
        ensure!(
            seen == want,
            "{name}: manifest list has {seen:?}, expected {want:?}"
        );
        eprintln!("ok: {prefix}/sidetrace/{name}:{version} lists {seen:?}");
    }
    Ok(())
}
