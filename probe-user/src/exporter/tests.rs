//! The exporter's labels, series and increments on a real aggregate.
//!
//! Over 500 lines: eleven tests of metric families and label rules, all
//! on the one fixture (an exporter on a registry and a real aggregate) at
//! the top; split, each file would start by repeating it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use probe_common::{counter, CounterTotals, LATENCY_BUCKETS};
use prometheus_client::registry::Registry;

use super::{collect::*, labels::*, metrics::*, scrape::*};
use crate::{
    model::{
        aggregate::Aggregate,
        events::{Event, EventBody, FileId, Task, WriteKind},
        paths::MountTable,
    },
    probe::{
        maps::{KernelCounters, LatencyTotals, WriterLabel},
        LoadError,
    },
};

/// The kernel's side of a scrape, as a test sets it; the session's side
/// is whatever the exporter last set.
#[derive(Debug)]
struct FixedTotals {
    kernel: Arc<Mutex<Totals>>,
    session: SharedSessionTotals,
}

impl TotalsSource for FixedTotals {
    fn read(&self) -> Result<Totals, LoadError> {
        let kernel = self.kernel.lock().unwrap().clone();
        Ok(Totals {
            session: *self.session.lock().unwrap(),
            ..kernel
        })
    }
}

fn no_totals() -> Totals {
    Totals {
        kernel: KernelCounters::default(),
        session: SessionTotals::default(),
        ring_bytes: 1 << 20,
        latency: LatencyTotals {
            buckets: [0; LATENCY_BUCKETS as usize],
            sum_ns: 0,
        },
        programs: Vec::new(),
    }
}

const MOUNTINFO: &str =
    "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n30 22 0:25 / /dev/shm rw - tmpfs tmpfs rw\n";

fn exporter(top: usize, prefixes: Vec<PathBuf>) -> (Registry, Exporter) {
    let (registry, exporter, _) = exporter_with_totals(top, prefixes);
    (registry, exporter)
}

/// Also returns the kernel totals the scrape-time collector reads.
fn exporter_with_totals(
    top: usize,
    prefixes: Vec<PathBuf>,
) -> (Registry, Exporter, Arc<Mutex<Totals>>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let exporter = Exporter::new(
        metrics,
        top,
        prefixes,
        MountTable::parse(MOUNTINFO.as_bytes()),
        &super::LabelPins::default(),
    );
    let kernel = Arc::new(Mutex::new(no_totals()));
    registry.register_collector(Box::new(ScrapeCollector(Box::new(FixedTotals {
        kernel: kernel.clone(),
        session: exporter.session_totals(),
    }))));
    (registry, exporter, kernel)
}

fn write(agg: &mut Aggregate, dev: u32, ino: u64, page: u64, path: &str) {
    let file = FileId {
        dev,
        ino,
        generation: 0,
    };
    agg.apply(&Event {
        file,
        task: Task {
            pid: 1,
            tgid: 1,
            comm: "db".into(),
            cgroup_id: 1,
            ..Task::default()
        },
        boot_ns: 1,
        body: EventBody::FirstWrite {
            page,
            kind: WriteKind::Shared,
        },
        stack_id: None,
    });
    agg.set_path(
        file,
        path.into(),
        crate::model::file_record::PathSource::ProcMaps,
    );
}

/// The shipped Grafana dashboard queries only metrics that exist.
#[test]
fn dashboard_queries_only_exported_metrics() {
    let (registry, mut exporter, kernel) = exporter_with_totals(1, vec![]);
    // Families without series print nothing: give each one.
    {
        let mut totals = kernel.lock().unwrap();
        totals.latency.buckets[25] = 1;
        totals.latency.sum_ns = 40_000_000;
        totals.programs = vec![("page_fault_user".into(), Duration::from_millis(3), 10)];
    }
    exporter
        .metrics
        .backend
        .get_or_create(&BackendLabels {
            backend: "tracepoint".into(),
        })
        .set(1);
    let label = WriterLabel {
        euid: 0,
        cgroup_id: 1,
        dev: 25,
        comm: "db".into(),
    };
    exporter.add_writer_stats(vec![(
        label,
        probe_common::WriterStats {
            shared_write_faults: 1,
            cow_faults: 1,
        },
    )]);
    let mut counts = HashMap::new();
    counts.insert(("db".to_string(), 1, 25, 0), 1);
    exporter.add_page_counts(counts);
    let mut agg = Aggregate::new();
    write(&mut agg, 25, 1, 0, "/dev/shm/x");
    exporter.update_files(&agg, &|_, _| Some(1));
    let body = render(&registry).unwrap();
    let exported: HashSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
    let mut referenced = 0;
    for (start, _) in dashboard.match_indices("mmapwatch_") {
        let name: String = dashboard[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Series suffixes of counters and histograms.
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        if family == "mmapwatch_" {
            continue;
        }
        assert!(
            exported.contains(family),
            "dashboard uses {name}, not exported"
        );
        referenced += 1;
    }
    assert!(referenced >= 9, "{referenced}");
}

#[test]
fn unmounted_devices_are_labelled_unknown() {
    let (registry, mut exporter) = exporter(10, vec![]);
    let mut counts = HashMap::new();
    // Device 0:1 (an internal mount, as memfd's) is in no mountinfo.
    counts.insert(("db".to_string(), 1, 1, 0), 3);
    exporter.add_page_counts(counts.clone());
    exporter.add_page_counts(counts);
    assert!(exporter.unmounted_devs.contains(&1));
    let series = sorted_series(&render(&registry).unwrap());
    assert_eq!(
        series[r#"mmapwatch_pages_first_written_total{comm="db",cgroup="id:1",fs="unknown",mount="unknown"}"#],
        6.0
    );
}

#[test]
fn page_counts_become_labelled_counters() {
    let (registry, mut exporter) = exporter(10, vec![]);
    let mut counts = HashMap::new();
    counts.insert(("postgres".to_string(), 999_999_999, (254 << 20) | 1, 0), 7);
    counts.insert(("redis".to_string(), 999_999_999, 25, 0), 2);
    exporter.add_page_counts(counts);
    let series = sorted_series(&render(&registry).unwrap());
    assert_eq!(
        series[r#"mmapwatch_pages_first_written_total{comm="postgres",cgroup="id:999999999",fs="ext4",mount="/"}"#],
        7.0
    );
    assert_eq!(
        series[r#"mmapwatch_pages_first_written_total{comm="redis",cgroup="id:999999999",fs="tmpfs",mount="/dev/shm"}"#],
        2.0
    );
}

#[test]
fn kernel_totals_become_increments() {
    let (registry, mut exporter) = exporter(10, vec![]);
    let label = WriterLabel {
        euid: 0,
        cgroup_id: 424_242,
        dev: 25,
        comm: "db".into(),
    };
    let stats = |shared, cow| probe_common::WriterStats {
        shared_write_faults: shared,
        cow_faults: cow,
    };
    exporter.add_writer_stats(vec![(label.clone(), stats(5, 1))]);
    exporter.add_writer_stats(vec![(label, stats(8, 1))]);
    let series = sorted_series(&render(&registry).unwrap());
    let key = r#"{comm="db",cgroup="id:424242",fs="tmpfs",mount="/dev/shm"}"#;
    assert_eq!(series[&format!("mmapwatch_write_faults_total{key}")], 8.0);
    assert_eq!(series[&format!("mmapwatch_cow_faults_total{key}")], 1.0);
}

/// The issue's case: 40 short-lived commands that only copy-on-write their
/// libraries, then a real shared writer. COW and shared writers are
/// admitted apart, so the shared writer keeps its own `comm`.
#[test]
fn cow_only_commands_never_push_a_shared_writer_into_other() {
    let (registry, mut exporter) = exporter(10, vec![]);
    let writer = |comm: &str| WriterLabel {
        euid: 0,
        cgroup_id: 1,
        dev: 25,
        comm: comm.into(),
    };
    let stats = |shared, cow| probe_common::WriterStats {
        shared_write_faults: shared,
        cow_faults: cow,
    };
    let cow_only: Vec<_> = (0..40)
        .map(|i| (writer(&format!("cmd{i}")), stats(0, 3)))
        .collect();
    exporter.add_writer_stats(cow_only);
    exporter.add_writer_stats(vec![(writer("dbwriter"), stats(7, 0))]);
    let series = sorted_series(&render(&registry).unwrap());
    let shared = |comm: &str| {
        series
            .get(&format!(
                r#"mmapwatch_write_faults_total{{comm="{comm}",cgroup="id:1",fs="tmpfs",mount="/dev/shm"}}"#
            ))
            .copied()
    };
    assert_eq!(shared("dbwriter"), Some(7.0));
    assert_eq!(shared("other"), None, "no shared writer was folded");
    let cow = |comm: &str| {
        series
            .get(&format!(
                r#"mmapwatch_cow_faults_total{{comm="{comm}",cgroup="id:1",fs="tmpfs",mount="/dev/shm"}}"#
            ))
            .copied()
    };
    assert_eq!(cow("cmd0"), Some(3.0));
    assert_eq!(cow("other"), Some(8.0 * 3.0), "COW writers past 32 slots");
}

#[test]
fn per_file_series_are_bounded_to_top_n_and_prefixes() {
    let (registry, mut exporter) = exporter(1, vec![PathBuf::from("/srv")]);
    let mut agg = Aggregate::new();
    for page in 0..5 {
        write(&mut agg, (254 << 20) | 1, 1, page, "/big");
    }
    write(&mut agg, (254 << 20) | 1, 2, 0, "/srv/watched");
    write(&mut agg, (254 << 20) | 1, 3, 0, "/small-a");
    write(&mut agg, (254 << 20) | 1, 3, 1, "/small-a");
    write(&mut agg, (254 << 20) | 1, 4, 0, "/small-b");
    // The page cache knows /big (half its pages not on disk), not /srv/watched.
    exporter.update_files(&agg, &|id, record| {
        (id.ino == 1).then(|| record.pages_written.len() / 2)
    });
    exporter.set_session_totals(&KernelCounters::default(), &agg, 0);
    let series = sorted_series(&render(&registry).unwrap());
    let pages: BTreeMap<_, _> = series
        .iter()
        .filter(|(k, _)| k.starts_with("mmapwatch_file_pages_written{"))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(
        series[r#"mmapwatch_file_pages_written{path="/big",fs="ext4",mount="/"}"#],
        5.0
    );
    assert_eq!(
        series[r#"mmapwatch_file_pages_written{path="/srv/watched",fs="ext4",mount="/"}"#],
        1.0
    );
    assert_eq!(
        series[r#"mmapwatch_file_pages_written{path="other",fs="other",mount="other"}"#],
        3.0
    );
    assert_eq!(series["mmapwatch_files_tracked"], 4.0);
    let not_on_disk: Vec<_> = series
        .iter()
        .filter(|(k, _)| k.starts_with("mmapwatch_file_pages_not_on_disk{"))
        .collect();
    assert_eq!(
        not_on_disk,
        [(
            &r#"mmapwatch_file_pages_not_on_disk{path="/big",fs="ext4",mount="/"}"#.to_string(),
            &2.0
        )],
        "only shown files the page cache could tell"
    );
}

/// Per-file fault counts are counters: a file's own series moves by what
/// it did from the refresh that first showed it; the rest, and everything
/// a file did while not shown, adds to path="other": the sum over all
/// series is every fault, whoever is shown.
#[test]
fn per_file_counters_move_by_increments_wherever_the_file_is_shown() {
    let (registry, mut exporter) = exporter(1, vec![]);
    let mut agg = Aggregate::new();
    let dev = (254 << 20) | 1;
    for page in 0..3 {
        write(&mut agg, dev, 1, page, "/a");
    }
    write(&mut agg, dev, 2, 0, "/b");
    exporter.update_files(&agg, &|_, _| None);
    // /a is shown: 2 more faults are its own.
    for page in 3..5 {
        write(&mut agg, dev, 1, page, "/a");
    }
    exporter.update_files(&agg, &|_, _| None);
    // /b overtakes /a with 6 new faults, made before it was shown.
    for page in 1..7 {
        write(&mut agg, dev, 2, page, "/b");
    }
    exporter.update_files(&agg, &|_, _| None);
    // /b is shown now: 2 more faults are its own.
    for page in 7..9 {
        write(&mut agg, dev, 2, page, "/b");
    }
    exporter.update_files(&agg, &|_, _| None);
    let series = sorted_series(&render(&registry).unwrap());
    let faults = |path: &str| {
        series
            .get(&format!(
                r#"mmapwatch_file_write_faults_total{{path="{path}",fs="ext4",mount="/"}}"#
            ))
            .copied()
    };
    assert_eq!(faults("/a"), None, "/a left the top 1");
    assert_eq!(faults("/b"), Some(2.0), "only what /b did while shown");
    assert_eq!(
        series[r#"mmapwatch_file_write_faults_total{path="other",fs="other",mount="other"}"#],
        4.0 + 6.0,
        "the first refresh's 4 faults and /b's 6 while /a was shown"
    );
    // /a's 2 faults were counted while shown (its series gone with it):
    // 2 + 2 + 10 = 14, every fault.
    assert!(render(&registry)
        .unwrap()
        .contains("# TYPE mmapwatch_file_write_faults counter"));
}

#[test]
fn latency_buckets_map_onto_histogram_bounds() {
    let (registry, _exporter, kernel) = exporter_with_totals(1, vec![]);
    {
        let latency = &mut kernel.lock().unwrap().latency;
        latency.buckets[20] = 2; // [1.05 ms, 2.1 ms)
        latency.buckets[30] = 1; // [1.07 s, 2.1 s)
        latency.sum_ns = 1_500_000 + 1_600_000 + 1_200_000_000;
    }
    let first = sorted_series(&render(&registry).unwrap());
    // Scraped again with the same totals: the same values, nothing added.
    let series = sorted_series(&render(&registry).unwrap());
    assert_eq!(first, series);
    assert_eq!(series["mmapwatch_dirty_to_writeback_seconds_count"], 3.0);
    // The kernel's own sum, not bucket bounds (which would make 2.15 s).
    assert!(
        (series["mmapwatch_dirty_to_writeback_seconds_sum"] - 1.2031).abs() < 1e-9,
        "{series:?}"
    );
    assert_eq!(
        series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="0.001048576"}"#],
        0.0
    );
    assert_eq!(
        series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="0.002097152"}"#],
        2.0
    );
    assert_eq!(
        series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="2.147483648"}"#],
        3.0
    );
    // Latencies under the first bound and beyond the last are counted.
    {
        let latency = &mut kernel.lock().unwrap().latency;
        latency.buckets[3] = 1;
        latency.buckets[50] = 1;
    }
    let series = sorted_series(&render(&registry).unwrap());
    assert_eq!(series["mmapwatch_dirty_to_writeback_seconds_count"], 5.0);
    assert_eq!(
        series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="+Inf"}"#],
        5.0
    );
    assert_eq!(
        series[r#"mmapwatch_dirty_to_writeback_seconds_bucket{le="0.001048576"}"#],
        1.0
    );
}

#[test]
fn losses_are_counted_by_reason() {
    let (registry, exporter, kernel) = exporter_with_totals(1, vec![]);
    kernel.lock().unwrap().kernel = KernelCounters {
        kernel: CounterTotals::default()
            .with(counter::RINGBUF_FULL, 4)
            .with(counter::WRITER_STATS_FULL, 2)
            .with(counter::RING_PEAK_BYTES, 4096),
        ..KernelCounters::default()
    };
    exporter.set_session_totals(&KernelCounters::default(), &Aggregate::new(), 1);
    let body = render(&registry).unwrap();
    let series = sorted_series(&body);
    assert_eq!(
        series[r#"mmapwatch_lost_events_total{reason="ringbuf_full"}"#],
        4.0
    );
    assert_eq!(
        series[r#"mmapwatch_lost_events_total{reason="undecodable_records"}"#],
        1.0
    );
    // Lost from the per-writer fault counts only: a reason here, where
    // those counts are shown.
    assert_eq!(
        series[r#"mmapwatch_lost_events_total{reason="writer_stats_full"}"#],
        2.0
    );
    // Every reason the declaration names is a series, 0 or not; details
    // of a loss and tallies are not.
    for counter in probe_common::KERNEL_COUNTERS {
        let name = format!(
            r#"mmapwatch_lost_events_total{{reason="{}"}}"#,
            counter.name
        );
        assert_eq!(
            series.contains_key(&name),
            counter.role.is_metric_reason(),
            "{name}"
        );
    }
    assert_eq!(series["mmapwatch_ringbuf_peak_used_bytes"], 4096.0);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
}

/// Totals are read when scraped, not replayed as increments: a scrape
/// shows the kernel's count at that moment however often it is scraped,
/// and the session's totals as the export loop last set them.
#[test]
fn scrapes_read_the_totals_as_they_are_then() {
    let (registry, exporter, kernel) = exporter_with_totals(1, vec![]);
    let drops = r#"mmapwatch_lost_events_total{reason="ringbuf_full"}"#;
    for total in [4, 4, 10] {
        kernel.lock().unwrap().kernel.kernel =
            CounterTotals::default().with(counter::RINGBUF_FULL, total);
        let series = sorted_series(&render(&registry).unwrap());
        assert_eq!(series[drops], total as f64);
    }
    kernel.lock().unwrap().programs =
        vec![("page_fault_user".into(), Duration::from_millis(3), 10)];
    let mut agg = Aggregate::new();
    write(&mut agg, 25, 1, 0, "/dev/shm/a");
    write(&mut agg, 25, 2, 0, "/dev/shm/b");
    let handed_over = KernelCounters {
        files_handed_over: 7,
        dirty_files_handed_over: 2,
        files_forgotten: 3,
        file_entries: 900,
        ..KernelCounters::default()
    };
    exporter.set_session_totals(&handed_over, &agg, 0);
    let series = sorted_series(&render(&registry).unwrap());
    for (name, value) in [
        ("mmapwatch_files_tracked", 2.0),
        ("mmapwatch_events_total", agg.events() as f64),
        ("mmapwatch_kernel_files_handed_over_total", 7.0),
        ("mmapwatch_kernel_dirty_files_handed_over_total", 2.0),
        ("mmapwatch_files_forgotten_total", 3.0),
        ("mmapwatch_kernel_file_entries", 900.0),
        ("mmapwatch_ringbuf_size_bytes", f64::from(1u32 << 20)),
        (
            r#"mmapwatch_bpf_program_runs_total{program="page_fault_user"}"#,
            10.0,
        ),
        (
            r#"mmapwatch_bpf_program_run_seconds_total{program="page_fault_user"}"#,
            0.003,
        ),
    ] {
        assert_eq!(series.get(name), Some(&value), "{name}");
    }
}

/// Series name (with labels) -> value, from rendered metrics. Not a
/// parser crate: `prometheus-parse` reads the 0.0.4 text format, not the
/// OpenMetrics this renders (`# EOF`, `# UNIT`).
fn sorted_series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Any bytes as file and process names: every plain-text scrape passes
/// `promtool check metrics`, and every name comes back from the text
/// exactly as the exporter labelled it, one series per distinct name.
mod any_bytes_in_labels {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };

    use proptest::prelude::*;

    use super::*;
    use crate::{
        exporter::text_format::to_prometheus_text,
        model::names::{comm_text, hex_if_not_utf8, json_text, path_from_bytes},
    };

    /// Names made mostly of what breaks text formats.
    fn hostile_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b" # ".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"{x=\"1\"}".to_vec()),
            Just("\u{fffd}".as_bytes().to_vec()),
            Just(b"\\xff".to_vec()),
            Just(vec![0xff]),
            Just(vec![0xc3]),
            Just(b"\r\t\x1b".to_vec()),
            proptest::collection::vec(1u8..=255, 1..4),
        ];
        proptest::collection::vec(piece, 1..6).prop_map(move |pieces| {
            let mut name = pieces.concat();
            name.truncate(max);
            name
        })
    }

    /// The samples of one family in Prometheus text: label sets (values
    /// unescaped) and values.
    fn samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            let Some(mut rest) = rest.strip_prefix('{') else {
                continue;
            };
            let mut labels = BTreeMap::new();
            while !rest.starts_with('}') {
                let (key, after) = rest.split_once("=\"").expect("label");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    let (i, c) = chars.next().expect("closing quote");
                    match c {
                        '"' => break i,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        c => value.push(c),
                    }
                };
                labels.insert(key.to_string(), value);
                rest = after[end + 1..].trim_start_matches(',');
            }
            let value = rest[1..].trim().parse().expect("value");
            out.push((labels, value));
        }
        out
    }

    fn promtool_accepts(text: &str) -> Result<(), String> {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus; cargo xtask test installs it)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = promtool.wait_with_output().unwrap();
        // Lint findings (exit 3) are advice; a parse error is exit 1.
        match output.status.code() {
            Some(0) | Some(3) => Ok(()),
            _ => Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn scrapes_stay_valid_and_names_round_trip(
            paths in proptest::collection::vec(hostile_bytes(64), 1..6),
            comms in proptest::collection::vec(hostile_bytes(15), 1..6),
        ) {
            let (registry, mut exporter) = exporter(100, vec![]);
            let mut agg = Aggregate::new();
            let mut expected_files = BTreeMap::new();
            // Distinct names (one file each; two inodes at one path share
            // a series by design).
            let names: std::collections::BTreeSet<Vec<u8>> = paths
                .iter()
                .map(|name| {
                    let mut bytes = b"/data/".to_vec();
                    bytes.extend(name.iter().filter(|&&b| b != 0));
                    bytes
                })
                .collect();
            for (ino, bytes) in names.iter().enumerate() {
                let path = path_from_bytes(bytes);
                let file = FileId { dev: (254 << 20) | 1, ino: ino as u64 + 1, generation: 0 };
                agg.apply(&Event {
                    file,
                    task: Task { pid: 1, tgid: 1, comm: "db".into(), cgroup_id: 1, ..Task::default() },
                    boot_ns: 1,
                    body: EventBody::FirstWrite { page: 0, kind: WriteKind::Shared }, stack_id: None, });
                agg.set_path(file, path.clone(), crate::model::file_record::PathSource::ProcMaps);
                expected_files.insert((json_text(&path).into_owned(), hex_if_not_utf8(&path)), 1.0);
            }
            exporter.update_files(&agg, &|_, _| None);
            let mut counts = HashMap::new();
            let mut expected_comms = BTreeMap::new();
            for (i, name) in comms.iter().enumerate() {
                let raw: Vec<u8> = name.iter().copied().filter(|&b| b != 0).collect();
                let comm = comm_text(&raw);
                let file = FileId { dev: (254 << 20) | 1, ino: 1000 + i as u64, generation: 0 };
                *counts.entry((comm.clone(), 1, file.dev, 0)).or_insert(0) += 1;
                *expected_comms.entry(comm).or_insert(0.0) += 1.0;
            }
            exporter.add_page_counts(counts);

            let openmetrics = render(&registry).unwrap();
            let text = to_prometheus_text(&openmetrics);
            prop_assert!(promtool_accepts(&text).is_ok(), "{:?}\n{text}", promtool_accepts(&text));

            let mut files = BTreeMap::new();
            for (labels, value) in samples(&text, "mmapwatch_file_pages_written") {
                // The sum of files not shown, here none.
                if labels["path"] == OTHER && labels["fs"] == OTHER {
                    continue;
                }
                let key = (labels["path"].clone(), labels.get("path_bytes_hex").cloned());
                prop_assert!(files.insert(key, value).is_none(), "two series share {labels:?}");
            }
            prop_assert_eq!(&files, &expected_files);
            let mut comms_seen = BTreeMap::new();
            for (labels, value) in samples(&text, "mmapwatch_pages_first_written_total") {
                *comms_seen.entry(labels["comm"].clone()).or_insert(0.0) += value;
            }
            prop_assert_eq!(comms_seen, expected_comms);
            // Every name is its own series: as many as distinct names.
            prop_assert_eq!(files.len(), names.len());
            // OpenMetrics carries the same series.
            prop_assert_eq!(
                samples(&openmetrics, "mmapwatch_file_pages_written"),
                samples(&text, "mmapwatch_file_pages_written")
            );
        }
    }
}
