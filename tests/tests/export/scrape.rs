//! What a scrape says: the workload's pages and faults, losses, totals read at scrape time, hostile names kept valid, forgetting after --retain, as Prometheus and promtool read it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    backend_under_test, path_arg, require_root, scratch_dir, TestUser, Workload,
};

use super::{
    assert_promtool_accepts, http_get, http_get_accepting, wait_for, write_pages, Exporter,
    Prometheus, WORKLOAD,
};

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
    exporter.wait_for_file_pages(&file, 4.0);
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
    let series = exporter.wait_for_file_pages(&file, 2.0);
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
    // 2 pages, or 3 once a refresh has read the msync run's page (the
    // sync counter is read at scrape time, the file's series at refresh).
    assert!(
        body.contains(&format!("{series} 2")) || body.contains(&format!("{series} 3")),
        "{body}"
    );
    assert_promtool_accepts(&body);
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
    let series = exporter.wait_for_file_pages(&file, 3.0);
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

#[test]
fn with_label_user_writers_series_carry_their_user() {
    require_root();
    let alice = TestUser::new("x", 61_011);
    let dir = scratch_dir();
    // alice reaches her file, not the directory's listing.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let exporter = Exporter::start(&["--label-user", "--path-prefix", &path_arg(dir.path())]);
    write_pages(&dir.path().join("root.bin"), 8, "0,1");
    let hers = dir.path().join("alice.bin");
    std::fs::File::create(&hers)
        .and_then(|f| f.set_len(8 * 4096))
        .unwrap();
    std::os::unix::fs::chown(&hers, Some(alice.uid), Some(alice.gid)).unwrap();
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={}", alice.uid),
            &format!("--regid={}", alice.gid),
            "--clear-groups",
            WORKLOAD,
        ])
        .args(
            Workload::new("shared", &hers)
                .size_pages(8)
                .pages("2,3,4")
                .args(),
        )
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let sum_for_user = |body: &str, metric: &str, user: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .filter(|l| l.contains(&format!(",user=\"{user}\"}}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let user = alice.arg();
    wait_for(
        "each user's pages under its label",
        Duration::from_secs(20),
        || {
            let (_, body) = exporter.get("/metrics");
            let pages = "mmapwatch_pages_first_written_total";
            sum_for_user(&body, pages, "root") == 2.0 && sum_for_user(&body, pages, &user) == 3.0
        },
    );
    let (_, body) = exporter.get("/metrics");
    assert!(
        sum_for_user(&body, "mmapwatch_write_faults_total", &user) >= 3.0,
        "alice's faults under her label:\n{body}"
    );
    // Every writer series has the label: none is left without it.
    for line in body
        .lines()
        .filter(|l| l.starts_with("mmapwatch_pages_first_written_total{"))
    {
        assert!(line.contains(",user=\""), "{line}");
    }
    let (_, text) = http_get_accepting(exporter.port, "/metrics", "*/*");
    assert_promtool_accepts(&text);
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

/// `export --record FILE`, stopped as a service manager stops it (SIGTERM):
/// `mmapwatch report FILE` gives the files it saw, with their pages and
/// writers, as `trace` would.
#[test]
fn a_recording_of_the_exporter_replays_into_its_files() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("recorded.bin");
    let recording = dir.path().join("export.rec");
    let mut exporter = Exporter::start(&[
        "--record",
        &path_arg(&recording),
        "--path-prefix",
        &path_arg(dir.path()),
    ]);
    write_pages(&file, 8, "3,5");
    exporter.wait_for_file_pages(&file, 2.0);
    let pid = exporter.child.id() as i32;
    // SAFETY: a signal to the exporter this test started and still waits for.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let status = exporter.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let output = integration_tests::run(&mut integration_tests::mmapwatch(&[
        "report",
        &path_arg(&recording),
        "-j",
        "--path-prefix",
        &path_arg(dir.path()),
    ]));
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{report:#}");
    assert_eq!(
        files[0]["path"],
        path_arg(&std::fs::canonicalize(&file).unwrap())
    );
    assert_eq!(files[0]["exact_pages"], serde_json::json!([[3, 3], [5, 5]]));
    assert_eq!(files[0]["writers"][0]["comm"], "mw-workload");
    assert_eq!(report["lost_events"], 0, "{report:#}");
}
