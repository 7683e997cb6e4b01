//! A real Prometheus server (built from its Go module by `e2e/peers.sh prometheus`) scraping
//! the proxies' admin ports, with exemplar storage on, and a small client for its HTTP API.
//!
//! It runs inside a network namespace the test made (the collector's, in the data-plane tier),
//! listens only on that namespace's address, and scrapes every second so a test waits seconds,
//! not minutes, for what it asks; every wait is a bounded poll. It negotiates the exposition
//! format itself (its default `scrape_protocols` put OpenMetrics first), which is what makes
//! the proxies serve exemplars.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::collector::tail;
use crate::controlplane::peers;
use crate::netns::{client, ns};

/// Where Prometheus listens in its namespace (its default port).
pub const PORT: u16 = 9090;

/// How long Prometheus may take to start (replaying an empty TSDB): a hang guard.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The cached binary, or why a test cannot run.
pub fn binary() -> Result<PathBuf, String> {
    let bin = peers::bin("prometheus");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: run `e2e/peers.sh prometheus`",
            bin.display()
        ))
    }
}

/// The config: one job scraping `targets` (host:port) every second at `/metrics`.
pub fn config_yaml(targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sidetrace-proxy\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    )
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    ns: String,
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Starts `bin` in namespace `ns` on `addr`, scraping `targets`, with its config, data and
    /// log under `dir`; returns once `/-/ready` answers.
    pub async fn start(
        bin: &Path,
        ns_name: &str,
        addr: SocketAddr,
        targets: &[SocketAddr],
        dir: &Path,
    ) -> Result<Self> {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets))
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ns::spawn_in(ns_name, cmd)?;
        let mut me = Self {
            ns: ns_name.to_owned(),
            addr,
            log,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "prometheus exited ({status}) while starting:\n{}",
                    tail(&me.log, 30)
                );
            }
            if client::get(&me.ns, me.addr, "/-/ready", &[])
                .await
                .is_ok_and(|r| r.status.is_success())
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready within {START_TIMEOUT:?}:\n{}",
                    tail(&me.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET path` on the HTTP API, its `data` when `status` is `success`.
    async fn api(&self, path: &str) -> Result<serde_json::Value> {
        let r = client::get(&self.ns, self.addr, path, &[]).await?;
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .with_context(|| format!("prometheus {path}: not JSON: {}", r.body))?;
        if v["status"] != "success" {
            bail!("prometheus {path}: {} {}", r.status, r.body);
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the `result` vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Exemplars of the series `promql` selects over the last `window`: every exemplar's
    /// labels, flattened over the series.
    pub async fn exemplars(
        &self,
        promql: &str,
        window: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let start = end - window.as_secs_f64();
        let data = self
            .api(&format!(
                "/api/v1/query_exemplars?query={}&start={start:.3}&end={:.3}",
                encode(promql),
                end + 1.0
            ))
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("sum by (operation) (rate(x{a=\"b c\"}[1m]))"),
            "sum%20by%20%28operation%29%20%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn the_config_scrapes_every_target_every_second() {
        let y = config_yaml(&["10.0.0.2:15021".parse().expect("addr")]);
        assert!(y.contains("scrape_interval: 1s"), "{y}");
        assert!(y.contains("targets: ['10.0.0.2:15021']"), "{y}");
    }
}
