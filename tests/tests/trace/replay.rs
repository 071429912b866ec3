//! `trace --record FILE` and `mmapwatch report FILE`: the replay is the
//! report the trace printed; filters narrow it; what is no recording is
//! refused in one line. (The randomized test in the truth suite checks
//! replay against live for every seed.)

use std::io::Write as _;

use integration_tests::{
    expect_one_line_failure, mmapwatch, path_arg, ranges, require_root, run, scratch_dir, Workload,
};
use serde_json::Value;

use super::{trace_workload, COMM};

/// `mmapwatch report ARGS` that must succeed: its stdout and stderr.
fn report(args: &[&str]) -> (String, String) {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let output = run(&mut mmapwatch(&all));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "report {args:?}: {stderr}");
    (stdout, stderr)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[test]
fn a_recording_replays_into_the_report_trace_printed() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let recording = dir.path().join("trace.rec");
    let stream = dir.path().join("events.jsonl");
    let (prefix, recording_arg) = (path_arg(dir.path()), path_arg(&recording));
    let stream_arg = path_arg(&stream);
    let live = trace_workload(
        &[
            "--record",
            &recording_arg,
            "--events",
            &stream_arg,
            "--path-prefix",
            &prefix,
        ],
        &Workload::new("shared", &file)
            .size_pages(16)
            .pages("1,6,9")
            .flag("--msync-and-rewrite"),
    );
    assert!(live.status.success(), "{}", live.stderr);
    let entry = live.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), [(1, 1), (6, 6), (9, 9)]);

    // Field for field, times and names included.
    let (replayed, _) = report(&[&recording_arg, "--json"]);
    assert_eq!(json(&replayed), live.json);

    // The table, from standard input.
    let table = mmapwatch(&["report", "-"])
        .stdin(std::fs::File::open(&recording).unwrap())
        .output()
        .expect("report - runs");
    let table_text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    let row = table_text
        .lines()
        .find(|line| line.contains(&path_arg(&file)))
        .unwrap_or_else(|| panic!("no row for the file: {table_text}"));
    assert!(row.contains(" 1,6,9 ") && row.contains(COMM), "{row}");

    // Filters narrow it: the writer's command keeps the file, another
    // command, pid or directory keeps nothing.
    let pid = entry["writers"][0]["pid"].as_u64().unwrap().to_string();
    let (kept, _) = report(&[&recording_arg, "-j", "--comm", COMM, "--pid", &pid]);
    let kept = json(&kept);
    assert_eq!(kept["files"][0]["pages_written"], entry["pages_written"]);
    for narrower in [
        vec!["--comm", "nobody-else"],
        vec!["--pid", "1"],
        vec!["--path-prefix", "/nonexistent/dir"],
    ] {
        let mut args = vec![recording_arg.as_str(), "-j"];
        args.extend(&narrower);
        let (none, _) = report(&args);
        assert_eq!(json(&none)["files"], serde_json::json!([]), "{narrower:?}");
    }

    // The event stream alone replays its pages, writers, first writes and
    // syncs, and says what it lacks.
    let (from_stream, _) = report(&[&stream_arg, "-j"]);
    let from_stream = json(&from_stream);
    let streamed = &from_stream["files"][0];
    for key in [
        "path",
        "dev",
        "ino",
        "generation",
        "pages_written",
        "exact_pages",
        // Not the last write: the stream has first writes only, the
        // kernel's counts every fault.
        "first_write_unix_ns",
    ] {
        assert_eq!(streamed[key], entry[key], "{key}: {from_stream:#}");
    }
    assert_eq!(
        streamed["syncs"]["msync"]["calls"],
        entry["syncs"]["msync"]["calls"]
    );
    for key in ["pid", "comm", "pages", "uid", "euid", "user", "cgroup"] {
        assert_eq!(
            streamed["writers"][0][key], entry["writers"][0][key],
            "writer's {key}: {from_stream:#}"
        );
    }
    assert!(
        from_stream["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("event stream")),
        "{from_stream:#}"
    );

    // Cut short (the trace killed before its end): the pages and writers
    // are still there, and the report says what is missing.
    let text = std::fs::read_to_string(&recording).unwrap();
    let cut: String = text
        .lines()
        .filter(|line| !line.starts_with("{\"file\"") && !line.starts_with("{\"end\""))
        .map(|line| format!("{line}\n"))
        .collect();
    let cut_path = dir.path().join("cut.rec");
    std::fs::write(&cut_path, cut).unwrap();
    let (cut_report, _) = report(&[&path_arg(&cut_path), "-j"]);
    let cut_report = json(&cut_report);
    let cut_entry = &cut_report["files"][0];
    assert_eq!(cut_entry["pages_written"], entry["pages_written"]);
    assert_eq!(cut_entry["writers"][0]["comm"], COMM);
    assert!(
        cut_report["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("ends before the trace did")),
        "{cut_report:#}"
    );
}

#[test]
fn report_refuses_what_is_not_a_recording_in_one_line() {
    let dir = scratch_dir();
    let write = |name: &str, lines: &[&str]| {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        path_arg(&path)
    };
    let start = r#"{"start":{"format":1,"mmapwatch":"0","clock_offset_ns":0,"include_cow":false,"path_prefixes":[]}}"#;
    let stream = write(
        "stream.jsonl",
        &[r#"{"time":"2026-12-06T15:13:32Z","type":"write","path":"/x"}"#],
    );
    expect_one_line_failure(
        &mut mmapwatch(&["report", &stream]),
        2,
        "neither a recording",
    );
    let corrupt = write("corrupt.rec", &[start, "{\"event\":"]);
    expect_one_line_failure(
        &mut mmapwatch(&["report", &corrupt]),
        2,
        "line 2: not a recording line",
    );
    // A span no kernel sends: refused, not expanded into pages.
    let huge = r#"{"event":{"file":{"dev":1,"ino":2},"task":{"pid":1,"tgid":1,"comm":"x","cgroup_id":1},"boot_ns":1,"body":{"FolioSpan":{"first_page":0,"pages":4294967296}}}}"#;
    let span = write("span.rec", &[start, huge]);
    expect_one_line_failure(&mut mmapwatch(&["report", &span]), 2, "line 2: span record");
    let newer = write(
        "newer.rec",
        &[&start.replace("\"format\":1", "\"format\":99")],
    );
    expect_one_line_failure(&mut mmapwatch(&["report", &newer]), 2, "format 99");
    // Endless bytes without a newline: refused at the line cap, not read
    // into memory whole.
    expect_one_line_failure(
        &mut mmapwatch(&["report", "/dev/zero"]),
        2,
        "line 1: longer than 256 MiB",
    );
    expect_one_line_failure(
        &mut mmapwatch(&["report", "/nonexistent/trace.rec"]),
        2,
        "cannot read /nonexistent/trace.rec",
    );
}
