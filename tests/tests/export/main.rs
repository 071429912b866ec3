//! `mmapwatch export` against the real kernel: scraped over loopback, by a
//! real Prometheus server, and under concurrent scrapes.
//!
//! One test target (`--test export`), a module per concern; the exporter, Prometheus and HTTP helpers are here.

mod availability;
mod deploy;
mod scrape;
mod security;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{mmapwatch_bin, Workload};

pub(crate) const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// A running exporter on an ephemeral loopback port; killed on drop.
pub(crate) struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(extra: &[&str]) -> Self {
        // A short refresh interval unless the test gives its own.
        let interval: &[&str] = if extra.contains(&"--interval") {
            &[]
        } else {
            &["--interval", "200ms"]
        };
        let mut child = Command::new(mmapwatch_bin())
            .args(["export", "--listen", "127.0.0.1:0"])
            .args(interval)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mmapwatch export");
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "mmapwatch: serving metrics on http[s]://127.0.0.1:PORT/metrics (...)"
        let port = line
            .split("://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no address in: {line}"));
        Self { child, port }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }

    /// The value of one exact series, or 0 if absent.
    fn value(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Waits until `file`'s own series shows `pages` written (an ext4 file
    /// on /, as the scratch directories are); returns the series.
    fn wait_for_file_pages(&self, file: &Path, pages: f64) -> String {
        let series = format!(
            r#"mmapwatch_file_pages_written{{path="{}",fs="ext4",mount="/"}}"#,
            std::fs::canonicalize(file).unwrap().display()
        );
        wait_for("the file's series", Duration::from_secs(10), || {
            self.value(&series) == pages
        });
        series
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over loopback: the status and the body, whatever the status.
/// What Prometheus sends: OpenMetrics first.
pub(crate) const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A GET as Prometheus scrapes.
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_accepting(port, path, PROMETHEUS_ACCEPT)
}

pub(crate) fn http_get_accepting(port: u16, path: &str, accept: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("Accept", accept)
        .call()
        .expect("GET");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("read the body");
    (status, body)
}

pub(crate) fn write_pages(file: &Path, size_pages: u64, pages: &str) {
    let status = Workload::new("shared", file)
        .size_pages(size_pages)
        .pages(pages)
        .command(WORKLOAD)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's Prometheus server, scraping one target every second.
pub(crate) struct Prometheus {
    _server: KillOnDrop,
    port: u16,
}

impl Prometheus {
    /// `job` is added to the scrape job's YAML (scheme, tls_config, ...).
    fn start(dir: &Path, target_port: u16, job: &str) -> Self {
        let prometheus = Path::new("/usr/bin/prometheus");
        assert!(
            prometheus.exists(),
            "Debian's prometheus is missing: cargo xtask test installs it"
        );
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mmapwatch\n{job}    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let server = KillOnDrop(
            Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus"),
        );
        Self {
            _server: server,
            port,
        }
    }

    /// The first value of an instant query, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        // Refused until Prometheus listens: treated as "no answer yet".
        TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    fn wait_until_up(&self) {
        wait_for(
            "Prometheus to scrape mmapwatch",
            Duration::from_secs(60),
            || self.query("up{job=\"mmapwatch\"}") == Some(1.0),
        );
    }
}

pub(crate) struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` passes the scrape `body`.
pub(crate) fn assert_promtool_accepts(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// YAML documents as JSON values, read by `yq` (a jq wrapper).
/// The DaemonSet of deploy/daemonset.yaml.
pub(crate) fn shipped_daemonset() -> serde_json::Value {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    yaml_documents(&deploy.join("daemonset.yaml"))
        .into_iter()
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

pub(crate) fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let output = Command::new("yq")
        .args(["-c", "."])
        .arg(path)
        .output()
        .expect("yq");
    assert!(
        output.status.success(),
        "yq {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
