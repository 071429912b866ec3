//! `mmapwatch export` against the real kernel: scraped over loopback, by a
//! real Prometheus server, and under concurrent scrapes.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    backend_under_test, mmapwatch_bin, path_arg, require_root, scratch_dir, Workload,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// A running exporter on an ephemeral loopback port; killed on drop.
struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
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
            .envs(env.iter().copied())
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
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A GET as Prometheus scrapes.
fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_accepting(port, path, PROMETHEUS_ACCEPT)
}

fn http_get_accepting(port: u16, path: &str, accept: &str) -> (u16, String) {
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

fn write_pages(file: &Path, size_pages: u64, pages: &str) {
    let status = Workload::new("shared", file)
        .size_pages(size_pages)
        .pages(pages)
        .command(WORKLOAD)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_and_healthz_over_loopback() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("exported.bin");
    let exporter = Exporter::start(&["--path-prefix", &path_arg(dir.path())]);
    assert_eq!(exporter.get("/healthz"), (200, "ok\n".to_string()));
    let (status, _) = exporter.get("/nope");
    assert_eq!(status, 404);

    write_pages(&file, 16, "0,5,6,7");
    let path = std::fs::canonicalize(&file).unwrap();
    let series = format!(
        r#"mmapwatch_file_pages_written{{path="{}",fs="ext4",mount="/"}}"#,
        path.display()
    );
    wait_for("the file's series", Duration::from_secs(10), || {
        exporter.value(&series) == 4.0
    });
    let (_, body) = exporter.get("/metrics");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text");
    assert!(
        body.contains("# TYPE mmapwatch_pages_first_written counter"),
        "{body}"
    );
    let backends: Vec<String> = match backend_under_test() {
        Some(backend) => vec![backend],
        None => ["fentry", "kprobe", "tracepoint"]
            .map(String::from)
            .to_vec(),
    };
    assert!(
        backends
            .iter()
            .any(|b| body.contains(&format!(r#"mmapwatch_backend{{backend="{b}"}} 1"#))),
        "{body}"
    );
    // The build, as `--version` names it.
    let build_info = body
        .lines()
        .find(|l| l.starts_with("mmapwatch_build_info{"))
        .unwrap_or_else(|| panic!("no mmapwatch_build_info: {body}"));
    assert!(
        build_info.contains(concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""))
            && build_info.contains("revision=\"")
            && build_info.ends_with(" 1"),
        "{build_info}"
    );
    // No label is per process.
    assert!(!body.contains("pid="), "{body}");
}

/// The issue's acceptance test: a real Prometheus scrapes the exporter while
/// a workload writes; its HTTP API shows the workload's pages.
#[test]
fn a_real_prometheus_scrapes_the_workload_pages() {
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&[]);
    let prometheus = Prometheus::start(dir.path(), exporter.port, "");
    prometheus.wait_until_up();

    // The workload's own command name labels its pages.
    let series = r#"sum(mmapwatch_pages_first_written_total{comm="mw-workload"})"#;
    let before = prometheus.query(series).unwrap_or(0.0);
    let file = dir.path().join("scraped.bin");
    write_pages(&file, 64, "0,1,2,3,10,20,30,40,50,63");
    let expected = before + 10.0;
    wait_for("the pages in Prometheus", Duration::from_secs(30), || {
        prometheus.query(series) == Some(expected)
    });
    // And they rose by exactly the pages written, no more.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(prometheus.query(series), Some(expected));
    // The label is right: Prometheus groups the pages under the workload's
    // command name, with its filesystem.
    let by_comm =
        r#"sum by (comm, fs) (mmapwatch_pages_first_written_total{comm="mw-workload",fs="ext4"})"#;
    assert_eq!(prometheus.query(by_comm), Some(expected));
}

/// Debian's Prometheus server, scraping one target every second.
struct Prometheus {
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

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Concurrent scrapes (bounded in count and time, loopback only) while a
/// workload writes: every scrape succeeds and memory stays flat.
#[test]
fn concurrent_scrapes_under_load_all_succeed_with_flat_memory() {
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&[]);
    let port = exporter.port;
    // Warm up: first scrapes allocate the series.
    for _ in 0..20 {
        assert_eq!(exporter.get("/metrics").0, 200);
    }
    let rss_before = exporter.rss_kib();

    let deadline = Instant::now() + Duration::from_secs(20);
    let writer_dir = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        for round in 0..20 {
            write_pages(
                &writer_dir.join(format!("load-{round}.bin")),
                64,
                "0,7,13,21,34,55",
            );
        }
    });
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..50 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let (status, body) = http_get(port, "/metrics");
                    assert_eq!(status, 200);
                    assert!(body.ends_with("# EOF\n"));
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let scrapes: usize = scrapers.into_iter().map(|t| t.join().unwrap()).sum();
    writer.join().unwrap();
    assert!(scrapes >= 100, "only {scrapes} scrapes in 20 s");

    // All 20 rounds x 6 pages reach the counter (the cgroup label depends on
    // where the test runs, so it is summed over).
    let pages = r#"mmapwatch_pages_first_written_total{comm="mw-workload","#;
    wait_for("all pages counted", Duration::from_secs(10), || {
        let (_, body) = exporter.get("/metrics");
        let total: f64 = body
            .lines()
            .filter(|l| l.starts_with(pages))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        total == 120.0
    });
    let rss_after = exporter.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {scrapes} scrapes"
    );
}

/// A scraper that does not ask for OpenMetrics (curl, promtool, older
/// agents) gets the Prometheus text format, which promtool accepts.
#[test]
fn a_plain_scrape_is_prometheus_text_that_promtool_accepts() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("plain.bin");
    let exporter = Exporter::start(&["--path-prefix", &path_arg(dir.path())]);
    write_pages(&file, 8, "1,2");
    let path = std::fs::canonicalize(&file).unwrap();
    let series = format!(
        r#"mmapwatch_file_pages_written{{path="{}",fs="ext4",mount="/"}}"#,
        path.display()
    );
    wait_for("the file's series", Duration::from_secs(10), || {
        exporter.value(&series) == 2.0
    });
    // An msync too: its counter and labelled histogram go through promtool.
    let status = Workload::new("shared", &file)
        .size_pages(8)
        .command(WORKLOAD)
        .args(["--pages", "3", "--msync-and-rewrite"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let msyncs = r#"mmapwatch_sync_calls_total{call="msync",fs="ext4",mount="/"}"#;
    wait_for("the msync counted", Duration::from_secs(10), || {
        exporter.value(msyncs) >= 1.0
    });
    let (status, body) = http_get_accepting(exporter.port, "/metrics", "*/*");
    assert!(
        body.contains(r#"mmapwatch_sync_seconds_count{call="msync"}"#),
        "{body}"
    );
    assert_eq!(status, 200);
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE mmapwatch_pages_first_written_total counter"),
        "{body}"
    );
    assert!(body.contains(&format!("{series} 2")), "{body}");
    assert_promtool_accepts(&body);
}

/// `promtool check metrics` passes the scrape `body`.
fn assert_promtool_accepts(body: &str) {
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

/// The shipped static scrape config is valid for Prometheus' own checker.
#[test]
fn shipped_scrape_config_is_valid() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus-static.yaml");
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Idle clients do not exhaust the exporter's descriptors: past its cap
/// of open connections, the least recently active are closed, so a
/// scrape still gets in, and its descriptors stay bounded.
#[test]
fn twenty_thousand_idle_connections_do_not_stop_metrics() {
    require_root();
    let exporter = Exporter::start(&[]);
    // Four holders of 5,000 each (a process may open 20,000 descriptors
    // here, and the exporter may too: it would run out without its cap),
    // connecting in parallel: a SYN the loopback drops costs a second.
    const HOLDERS: usize = 4;
    const PER_HOLDER: usize = 5_000;
    let port = exporter.port.to_string();
    let mut holders: Vec<Child> = (0..HOLDERS)
        .map(|_| {
            Command::new(WORKLOAD)
                .args([
                    "idle-connections",
                    "--port",
                    &port,
                    "--count",
                    &PER_HOLDER.to_string(),
                ])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the connection holder")
        })
        .collect();
    for holder in &mut holders {
        let mut line = String::new();
        BufReader::new(holder.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("workload: connected={PER_HOLDER}"));
    }
    let (status, body) = exporter.get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("mmapwatch_build_info"), "{body}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", exporter.child.id()))
        .unwrap()
        .count();
    assert!(
        fds < 1_000,
        "{fds} descriptors open with 20,000 idle clients"
    );
    assert_eq!(exporter.get("/healthz").0, 200);
    for mut holder in holders {
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
    }
}

/// The shipped dashboard's `$node` picker applies to every metric of
/// every panel.
#[test]
fn shipped_dashboard_filters_every_metric_by_node() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect();
    assert!(!exprs.is_empty());
    for expr in exprs {
        let selectors = expr.matches("mmapwatch_").count();
        let filtered = expr.matches("{node=~\"$node\"").count();
        assert_eq!(
            selectors, filtered,
            "a metric without the $node filter: {expr}"
        );
    }
}

/// A stuck export loop (here a test hook blocks it 15 s, as a long cgroup
/// walk would) turns /healthz unhealthy, while /metrics, served on a
/// thread of its own, still answers; the loop recovers and so does /healthz.
#[test]
fn healthz_fails_while_the_export_loop_is_stuck_and_metrics_still_answer() {
    require_root();
    let exporter = Exporter::start_with_env(&[], &[("MMAPWATCH_TEST_STALL_SECS", "15")]);
    let started = Instant::now();
    // Unhealthy past ten seconds without a turn (the limit at --interval 200ms).
    wait_for("/healthz to fail", Duration::from_secs(14), || {
        let (status, body) = exporter.get("/healthz");
        status == 503 && body.starts_with("stalled: ")
    });
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before the limit"
    );
    let (status, body) = exporter.get("/metrics");
    assert_eq!(status, 200, "/metrics answers while the loop is stuck");
    assert!(body.contains("mmapwatch_build_info"), "{body}");
    wait_for("/healthz to recover", Duration::from_secs(20), || {
        exporter.get("/healthz").0 == 200
    });
}

/// `--retain`: a file idle that long (written back, no write) leaves the
/// per-file series and `mmapwatch_files_tracked`; counters already
/// exported do not go back; written again, it is reported anew, all its
/// pages included.
#[test]
fn idle_files_are_forgotten_after_retain_and_counters_stay() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("forgotten.bin");
    let exporter = Exporter::start(&["--retain", "2s", "--path-prefix", &path_arg(dir.path())]);
    write_pages(&file, 8, "1,3,5");
    let path = std::fs::canonicalize(&file).unwrap();
    let series = format!(
        r#"mmapwatch_file_pages_written{{path="{}",fs="ext4",mount="/"}}"#,
        path.display()
    );
    wait_for("the file's series", Duration::from_secs(10), || {
        exporter.value(&series) == 3.0
    });
    let first_written = |exporter: &Exporter| -> f64 {
        let (_, body) = exporter.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with("mmapwatch_pages_first_written_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = first_written(&exporter);
    assert!(before >= 3.0, "{before}");
    // Written back, the file is idle: handed over from the kernel (2 s),
    // then forgotten (2 s more). Each CPU's last file stays counted in an
    // open run until that CPU takes a write fault on another file: give
    // every CPU one, outside --path-prefix.
    assert!(Command::new("sync").status().unwrap().success());
    let elsewhere = scratch_dir();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu in 0..cpus {
        let other = elsewhere.path().join(format!("cpu-{cpu}.bin"));
        let status = Command::new("taskset")
            .args(["-c", &cpu.to_string(), WORKLOAD, "shared", "--file"])
            .arg(&other)
            .args(["--size-pages", "1", "--pages", "0"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(Command::new("sync").status().unwrap().success());
    wait_for("the file to be forgotten", Duration::from_secs(20), || {
        let (_, body) = exporter.get("/metrics");
        !body.contains(&series) && exporter.value("mmapwatch_files_forgotten_total") >= 1.0
    });
    assert!(first_written(&exporter) >= before, "counters never go back");
    // Written again (other pages, and one of the old ones): a new file.
    write_pages(&file, 8, "3,6");
    wait_for("the file's series again", Duration::from_secs(10), || {
        exporter.value(&series) == 2.0
    });
}

/// The issue's fairness case on the real kernel: 40 short-lived commands
/// that only copy-on-write (more than the 32 `comm` slots), then a real
/// shared writer. Shared and COW writers are admitted apart, so
/// `dbwriter` is exported under its own name; a pinned command keeps its
/// own label too.
#[test]
fn cow_only_commands_do_not_push_a_shared_writer_into_other() {
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&["--keep-comm", "^pinned-"]);
    let link = |name: &str| {
        let path = dir.path().join(name);
        std::os::unix::fs::symlink(WORKLOAD, &path).expect("a symlink: the comm is its name");
        path
    };
    for i in 0..40 {
        let program = link(&format!("cow{i:02}"));
        let status = Command::new(&program)
            .args([
                "private",
                "--file",
                &path_arg(&dir.path().join(format!("cow{i:02}.bin"))),
                "--size-pages",
                "4",
                "--pages",
                "0,1",
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    wait_for(
        "the COW-only commands counted",
        Duration::from_secs(20),
        || {
            let (_, body) = exporter.get("/metrics");
            body.lines().any(|l| {
                l.starts_with("mmapwatch_cow_faults_total{comm=\"cow39\"")
                    || l.starts_with("mmapwatch_cow_faults_total{comm=\"other\"")
            })
        },
    );
    for name in ["dbwriter", "pinned-writer"] {
        let status = Command::new(link(name))
            .args([
                "shared",
                "--file",
                &path_arg(&dir.path().join(format!("{name}.bin"))),
                "--size-pages",
                "8",
                "--pages",
                "0,3,5",
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let pages_of = |comm: &str, body: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "mmapwatch_pages_first_written_total{{comm=\"{comm}\""
                ))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_for(
        "the shared writers under their own names",
        Duration::from_secs(20),
        || {
            let (_, body) = exporter.get("/metrics");
            pages_of("dbwriter", &body) == 3.0 && pages_of("pinned-writer", &body) == 3.0
        },
    );
}

/// Turns `kernel.bpf_stats_enabled` on, and back as it was on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Self {
        let before = std::fs::read_to_string(Self::PATH).expect("read bpf_stats_enabled");
        std::fs::write(Self::PATH, "1").expect("enable bpf_stats");
        Self(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// The kernel's totals are read when `/metrics` is scraped, not when the
/// export loop last refreshed: with an interval of an hour, the programs'
/// runs and the ring's peak still move between two scrapes around a
/// workload's faults, while a total only the loop sets does not.
#[test]
fn kernel_totals_are_read_at_scrape_time() {
    require_root();
    let dir = scratch_dir();
    let stats = BpfStats::enable();
    let exporter = Exporter::start(&["--interval", "1h"]);
    let runs = |exporter: &Exporter| -> f64 {
        let (status, body) = exporter.get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| l.starts_with("mmapwatch_bpf_program_runs_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    // The loop's first refreshes (at start and its first tick) are over
    // once files_tracked has been set; nothing is written yet.
    std::thread::sleep(Duration::from_millis(500));
    let runs_before = runs(&exporter);
    let tracked_before = exporter.value("mmapwatch_files_tracked");
    write_pages(&dir.path().join("scraped.bin"), 16, "0,3,9");
    let runs_after = runs(&exporter);
    assert!(
        runs_after > runs_before,
        "program runs did not move between scrapes: {runs_before} -> {runs_after}"
    );
    assert!(exporter.value("mmapwatch_ringbuf_peak_used_bytes") > 0.0);
    // Set by the loop only: still what its last refresh saw.
    assert_eq!(exporter.value("mmapwatch_files_tracked"), tracked_before);
    drop(stats);
}

/// YAML documents as JSON values, read by `yq` (a jq wrapper).
/// The DaemonSet of deploy/daemonset.yaml.
fn shipped_daemonset() -> serde_json::Value {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    yaml_documents(&deploy.join("daemonset.yaml"))
        .into_iter()
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
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

/// The shipped PodMonitor selects the DaemonSet's pods in their namespace,
/// scrapes the port the exporter listens on, and labels series by node
/// as the dashboard's `$node` expects.
#[test]
fn shipped_pod_monitor_scrapes_the_daemonset() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let daemonset = shipped_daemonset();
    let [monitor] = &yaml_documents(&deploy.join("podmonitor.yaml"))[..] else {
        panic!("podmonitor.yaml: one document expected");
    };
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    let namespace = &daemonset["metadata"]["namespace"];
    assert_eq!(&monitor["metadata"]["namespace"], namespace);
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        *namespace
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(pod_labels.get(label), Some(value), "selector {label}");
    }
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let listen_port: u64 = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|arg| {
            arg.as_str()?
                .strip_prefix("--listen=")?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .expect("--listen=ADDRESS:PORT in the DaemonSet");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|port| port["name"] == endpoint["port"])
        .expect("the endpoint's port is a named port of the container");
    assert_eq!(port["containerPort"], listen_port);
    assert_eq!(endpoint["path"], "/metrics");
    let relabelings = endpoint["relabelings"].as_array().unwrap();
    assert!(
        relabelings.iter().any(|r| {
            r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name" && r["targetLabel"] == "node"
        }),
        "no node label: {relabelings:?}"
    );
}

/// Hostile names: a file named `a # b`, a process named `c" # {x="1"}`, a
/// path that is not UTF-8 next to one that literally reads as its escaped
/// form. Every plain-text scrape passes promtool, and each keeps its own
/// series with its own pages.
#[test]
fn hostile_file_and_process_names_keep_scrapes_valid_and_series_apart() {
    use std::os::unix::ffi::OsStrExt as _;
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&["--path-prefix", &path_arg(dir.path())]);
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    let hashed = dir.join("a # b");
    let invalid = dir.join(std::ffi::OsStr::from_bytes(b"n\xff"));
    let literal = dir.join("n\\xff");
    let comm = r#"c" # {x="1"}"#;
    for (file, pages) in [(&hashed, "0"), (&invalid, "0,1"), (&literal, "0,1,2")] {
        let status = Command::new(WORKLOAD)
            .args(["--rename", comm, "shared", "--file"])
            .arg(file)
            .args(["--size-pages", "4", "--pages", pages])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let escaped_dir = dir.display().to_string().replace('\\', "\\\\");
    let series = [
        (
            format!(
                r#"mmapwatch_file_pages_written{{path="{escaped_dir}/a # b",fs="ext4",mount="/"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"mmapwatch_file_pages_written{{path="{escaped_dir}/n\\xff",fs="ext4",mount="/",path_bytes_hex="{}"}}"#,
                invalid
                    .as_os_str()
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            2.0,
        ),
        (
            format!(
                r#"mmapwatch_file_pages_written{{path="{escaped_dir}/n\\xff",fs="ext4",mount="/"}}"#
            ),
            3.0,
        ),
    ];
    wait_for("the three files' series", Duration::from_secs(10), || {
        series.iter().all(|(s, pages)| exporter.value(s) == *pages)
    });
    let (status, body) = http_get_accepting(exporter.port, "/metrics", "*/*");
    assert_eq!(status, 200);
    for (s, pages) in &series {
        assert!(body.contains(&format!("{s} {pages}")), "{s}\n{body}");
    }
    // The process keeps its name whole, escaped as the format says.
    let writer = r#"mmapwatch_pages_first_written_total{comm="c\" # {x=\"1\"}","#;
    let pages: f64 = body
        .lines()
        .filter(|l| l.starts_with(writer) && l.contains(r#"mount="/""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(pages, 6.0, "{body}");
    assert_promtool_accepts(&body);
}

/// A certificate authority and a server certificate for 127.0.0.1, and a
/// client certificate, made by openssl in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=mmapwatch test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        let extensions = format!("{name}.ext");
        std::fs::write(
            dir.join(&extensions),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{san}"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &extensions,
        ]);
    }
}

/// curl's HTTP status for /metrics (0: no HTTP answer at all).
fn curl_status(url: &str, extra: &[&str]) -> u16 {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `--web.config.file` in the exporter toolkit's format: a real
/// Prometheus scrapes over TLS with basic auth and sees the workload's
/// pages; without credentials, or with a wrong password, a scrape gets 401;
/// plain HTTP gets no answer; /healthz needs no password.
#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    require_root();
    let dir = scratch_dir();
    make_certificates(dir.path());
    let hash = bcrypt::hash("s3cret pass", 10).unwrap();
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prom: '{hash}'\n"),
    )
    .unwrap();
    let exporter = Exporter::start(&["--web.config.file", &path_arg(&web_config)]);
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    let ca = path_arg(&dir.path().join("ca.crt"));
    assert_eq!(curl_status(&url, &["--cacert", &ca]), 401);
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "prom:wrong"]),
        401
    );
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "eve:s3cret pass"]),
        401
    );
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "prom:s3cret pass"]),
        200
    );
    assert_eq!(curl_status(&url.replace("https", "http"), &[]), 0);
    assert_eq!(
        curl_status(&url.replace("/metrics", "/healthz"), &["--cacert", &ca]),
        200
    );

    let prometheus = Prometheus::start(
        dir.path(),
        exporter.port,
        &format!("    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prom\n      password: 's3cret pass'\n"),
    );
    prometheus.wait_until_up();
    let file = dir.path().join("over-tls.bin");
    write_pages(&file, 16, "0,5,9");
    let pages = r#"sum(mmapwatch_pages_first_written_total{comm="mw-workload",fs="ext4"})"#;
    wait_for(
        "the pages over TLS in Prometheus",
        Duration::from_secs(30),
        || prometheus.query(pages) == Some(3.0),
    );
}

/// `client_auth_type: RequireAndVerifyClientCert`: only a client holding a
/// certificate from the configured CA gets an answer.
#[test]
fn client_certificates_are_required_when_configured() {
    require_root();
    let dir = scratch_dir();
    make_certificates(dir.path());
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
    )
    .unwrap();
    let exporter = Exporter::start(&["--web.config.file", &path_arg(&web_config)]);
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    let file = |name: &str| path_arg(&dir.path().join(name));
    assert_eq!(curl_status(&url, &["--cacert", &file("ca.crt")]), 0);
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--cert",
                &file("client.crt"),
                "--key",
                &file("client.key")
            ]
        ),
        200
    );
    // The server's own certificate is no client certificate.
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--cert",
                &file("server.crt"),
                "--key",
                &file("server.key")
            ]
        ),
        0
    );
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--tls-max",
                "1.2",
                "--cert",
                &file("client.crt"),
                "--key",
                &file("client.key")
            ]
        ),
        0
    );
}

/// A bad web config is one line and exit 2, before anything is loaded.
#[test]
fn a_bad_web_config_is_one_line() {
    require_root();
    let dir = scratch_dir();
    let web_config = dir.path().join("web.yml");
    std::fs::write(&web_config, "basic_auth_users:\n  prom: plaintext\n").unwrap();
    integration_tests::expect_one_line_failure(
        Command::new(mmapwatch_bin()).args(["export", "--web.config.file", &path_arg(&web_config)]),
        2,
        "basic_auth_users.prom: not a bcrypt hash",
    );
    integration_tests::expect_one_line_failure(
        Command::new(mmapwatch_bin()).args(["export", "--web.config.file", "/nonexistent/web.yml"]),
        2,
        "--web.config.file /nonexistent/web.yml",
    );
}

/// After attaching, every thread of the agent holds only CAP_BPF,
/// CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE and CAP_DAC_READ_SEARCH (none to
/// regain: the bounding set is the same), and with them it still names
/// and counts a file that another user writes in a directory of its own.
#[test]
fn the_agent_keeps_only_the_capabilities_it_needs() {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&["--path-prefix", &path_arg(dir.path())]);
    // bits 2 (DAC_READ_SEARCH), 19 (SYS_PTRACE), 39 (BPF), 40 (CHECKPOINT_RESTORE)
    let expected: u64 = (1 << 2) | (1 << 19) | (1 << 39) | (1 << 40);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", exporter.child.id())).unwrap();
    let mut threads = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:")))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            let want = if matches!(set, "CapInh" | "CapAmb") {
                0
            } else {
                expected
            };
            assert_eq!(value, want, "{set} of a thread:\n{status}");
        }
        threads += 1;
    }
    assert!(threads >= 2, "the HTTP thread too");

    // nobody's own directory and a 0600 file in it, written by nobody.
    let private = dir.path().join("nobody");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&private, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = private.join("secret.bin");
    let status = Workload::new("shared", &file)
        .size_pages(8)
        .pages("1,6")
        .command(WORKLOAD)
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let series = format!(
        r#"mmapwatch_file_pages_written{{path="{}",fs="ext4",mount="/"}}"#,
        std::fs::canonicalize(&file).unwrap().display()
    );
    wait_for("nobody's file, named", Duration::from_secs(10), || {
        exporter.value(&series) == 2.0
    });
}

/// The shipped NetworkPolicy closes the DaemonSet's pods to everything
/// but the scraper, on the metrics port only.
#[test]
fn shipped_network_policy_admits_only_the_scraper() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let daemonset = shipped_daemonset();
    let [policy] = &yaml_documents(&deploy.join("networkpolicy.yaml"))[..] else {
        panic!("networkpolicy.yaml: one document expected");
    };
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(
        policy["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selected = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selected.is_empty());
    for (label, value) in selected {
        assert_eq!(pod_labels.get(label), Some(value), "podSelector {label}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "one rule: the scraper");
    // A source is named (an empty `from` would admit everyone) ...
    let sources = rules[0]["from"].as_array().unwrap();
    assert!(!sources.is_empty());
    for source in sources {
        assert!(
            source["podSelector"]["matchLabels"].is_object()
                || source["namespaceSelector"]["matchLabels"].is_object(),
            "{source}"
        );
    }
    // ... and only the container's metrics port is open.
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let port_names: Vec<&serde_json::Value> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    let ports = rules[0]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert!(port_names.contains(&&ports[0]["port"]), "{ports:?}");
}
