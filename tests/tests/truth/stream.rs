//! The event stream, read with jq, adds up to the report.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use integration_tests::{mmapwatch, path_arg, require_root, run, scratch_dir, shm_dir};
use serde_json::Value;

use super::{pages, RANDOM_WORKLOAD};

/// `jq -r FILTER FILE`'s output lines; jq fails on any line that is not JSON.
fn jq_lines(filter: &str, file: &Path) -> Vec<String> {
    let output = run(std::process::Command::new("jq")
        .args(["-r", filter])
        .arg(file));
    assert!(
        output.status.success(),
        "jq {filter}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// (dev, ino, generation) -> pages, from `jq` lines `DEV INO GEN FIRST PAGES`.
type StreamPages = BTreeMap<(String, u64, u64), BTreeSet<u64>>;

fn stream_pages(lines: &[String]) -> StreamPages {
    let mut files = StreamPages::new();
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| fields[i].parse::<u64>().expect("a number");
        let (first, count) = (number(3), number(4));
        files
            .entry((fields[0].to_string(), number(1), number(2)))
            .or_default()
            .extend(first..first + count);
    }
    files
}

fn report_pages(report: &Value, field: &str) -> StreamPages {
    report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            let key = (
                f["dev"].as_str().expect("dev").to_string(),
                f["ino"].as_u64().expect("ino"),
                f["generation"].as_u64().expect("generation"),
            );
            (key, pages(&f[field]))
        })
        .filter(|(_, pages)| !pages.is_empty())
        .collect()
}

/// `trace --events FILE`: the stream, read by `jq`, adds up to the report
/// (written pages, possibly written ones, COW ones, each file's path), on
/// seeded random workloads over ext4 and tmpfs.
#[test]
fn the_event_stream_read_by_jq_adds_up_to_the_report() {
    require_root();
    const KEY: &str = r#""\(.dev) \(.ino) \(.generation) \(.first_page) \(.pages)""#;
    for seed in [3_u64, 7, 11] {
        let ext4 = scratch_dir();
        let tmpfs = shm_dir();
        let log = ext4.path().join("log");
        let events = ext4.path().join("events.ndjson");
        let report_file = ext4.path().join("report.json");
        let output = run(&mut mmapwatch(&[
            "trace",
            "--json",
            "--include-cow",
            "-o",
            &path_arg(&report_file),
            "--events",
            &path_arg(&events),
            "--path-prefix",
            &path_arg(ext4.path()),
            "--path-prefix",
            &path_arg(tmpfs.path()),
            "--",
            RANDOM_WORKLOAD,
            &seed.to_string(),
            &path_arg(ext4.path()),
            &path_arg(tmpfs.path()),
            &path_arg(&log),
        ]));
        assert!(output.status.success(), "seed {seed}: {output:?}");
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
                .expect("the report is JSON");
        assert_eq!(report["lost_events"], 0, "seed {seed}: {}", report["drops"]);

        let written = stream_pages(&jq_lines(
            &format!(
                r#"select(.type == "write" or .type == "folio_span" or .type == "new_writer") | {KEY}"#
            ),
            &events,
        ));
        assert!(!written.is_empty(), "seed {seed}: no writes streamed");
        assert_eq!(
            written,
            report_pages(&report, "pages_written"),
            "seed {seed}: streamed written pages differ from the report"
        );
        let mut possible = stream_pages(&jq_lines(
            &format!(r#"select(.type == "possible_write") | {KEY}"#),
            &events,
        ));
        // The report lists possibly written pages apart from written ones.
        for (key, pages) in &mut possible {
            if let Some(written) = written.get(key) {
                pages.retain(|page| !written.contains(page));
            }
        }
        possible.retain(|_, pages| !pages.is_empty());
        assert_eq!(
            possible,
            report_pages(&report, "possibly_written_pages"),
            "seed {seed}: streamed possible writes differ from the report"
        );
        assert_eq!(
            stream_pages(&jq_lines(
                &format!(r#"select(.type == "cow_write") | {KEY}"#),
                &events
            )),
            report_pages(&report, "cow_pages"),
            "seed {seed}: streamed COW pages differ from the report"
        );

        // Every line names its file as the report does (mw-random never
        // renames), and says when and who: the writer, or nobody for a
        // page's writeback (function-hook backends; it ends in whatever
        // context completes the I/O).
        const WHO_AND_WHEN: &str = r#"select(((.type == "writeback" and .pid == null and .comm == null) or ((.comm == "mw-random" or (.comm | test("^mw[rt][0-9]+$"))) and .pid > 0)) and .unix_ns > 0 and (.time | endswith("Z")))"#;
        let paths: BTreeSet<String> = jq_lines(
            // As JSON strings: a name may hold a newline.
            &format!(r#"{WHO_AND_WHEN} | "\(.dev) \(.ino) \(.path_bytes_hex // .path | @json)""#),
            &events,
        )
        .into_iter()
        .collect();
        let streamed_lines = jq_lines("1", &events).len();
        let checked_lines = jq_lines(&format!("{WHO_AND_WHEN} | 1"), &events).len();
        assert_eq!(
            checked_lines, streamed_lines,
            "seed {seed}: a line without its writer or time"
        );
        for file in report["files"].as_array().expect("files") {
            let name = if file["path_bytes_hex"].is_string() {
                &file["path_bytes_hex"]
            } else {
                &file["path"]
            };
            let line = format!("{} {} {name}", file["dev"].as_str().unwrap(), file["ino"]);
            assert!(
                paths.contains(&line),
                "seed {seed}: no event names {line}; streamed: {paths:?}"
            );
        }
    }
}
