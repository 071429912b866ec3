//! msync, fsync and friends, and the pages not yet on disk.

use integration_tests::{
    mmapwatch, path_arg, ranges, require_root, run, scratch_dir, trace_command,
};

/// Durability: msync, fsync, fdatasync and sync_file_range on a file
/// written through mmap are counted per call (in the report and the event
/// stream); a write(2) file's fsync is not reported; the page written last
/// and never synced is still not on disk when the trace ends (its writer
/// exited without msync), where the page cache can tell (cachestat, 6.5+).
#[test]
fn durability_calls_are_counted_and_unsynced_pages_are_not_on_disk() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("durable.bin");
    let other = dir.path().join("log.bin");
    let events = dir.path().join("events.ndjson");
    let script = format!(
        "import ctypes, mmap, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]\n\
         fd = os.open({path:?}, os.O_RDWR | os.O_CREAT)\n\
         os.ftruncate(fd, 8 * 4096)\n\
         m = mmap.mmap(fd, 8 * 4096, mmap.MAP_SHARED)\n\
         m[1 * 4096] = 1; m[5 * 4096] = 1\n\
         m.flush()\n\
         m[6 * 4096] = 1\n\
         os.fsync(fd); os.fdatasync(fd)\n\
         m[7 * 4096] = 1\n\
         assert libc.sync_file_range(fd, 0, 8 * 4096, 7) == 0\n\
         m[3 * 4096] = 1\n\
         g = os.open({other:?}, os.O_RDWR | os.O_CREAT)\n\
         os.write(g, b'x'); os.fsync(g)\n",
        path = path_arg(&file),
        other = path_arg(&other),
    );
    let run = trace_command(
        "python3",
        &[
            "--path-prefix",
            &path_arg(dir.path()),
            "--events",
            &path_arg(&events),
        ],
        &["-c", &script],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        run.files().len(),
        1,
        "only the mmap-written file: {:#}",
        run.json
    );
    let entry = run.expect_file(&file);
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(1, 1), (3, 3), (5, 7)]
    );
    let syncs = &entry["syncs"];
    for call in ["msync", "fsync", "fdatasync", "sync_file_range"] {
        assert_eq!(syncs[call]["calls"], 1, "{call}: {syncs:#}");
        assert_eq!(syncs[call]["errors"], 0, "{call}: {syncs:#}");
        assert!(syncs[call]["max_latency_ns"].as_u64().unwrap() > 0);
        assert!(syncs[call]["last_unix_ns"].as_u64().unwrap() > 0);
    }
    assert_eq!(
        run.json["probe"]["syncs_of_other_files"], 1,
        "the write(2) file's fsync"
    );
    match entry["not_yet_written_back_pages"].as_u64() {
        Some(pages) => assert_eq!(pages, 1, "page 3 was never synced: {entry:#}"),
        None => assert!(
            entry["not_yet_written_back_why"]
                .as_str()
                .is_some_and(|why| why.contains("Linux 6.5")),
            "{entry:#}"
        ),
    }
    let text = std::fs::read_to_string(&events).expect("the event stream");
    let synced: Vec<(String, u64, u64)> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter(|line| line["type"] == "sync")
        .map(|line| {
            (
                line["call"].as_str().unwrap().to_string(),
                line["first_page"].as_u64().unwrap(),
                line["pages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        synced,
        [
            ("msync".to_string(), 0, 8),
            ("fsync".to_string(), 0, 0),
            ("fdatasync".to_string(), 0, 0),
            ("sync_file_range".to_string(), 0, 8),
        ]
    );
}

/// A writer that exits before msync: the file's written pages are not on
/// disk at its exit, said on its writer entry; a later writer that msyncs
/// finds every page written back, with the msync counted.
#[test]
fn a_writer_that_exits_before_msync_leaves_its_pages_not_on_disk() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("exits.bin");
    let first = format!(
        "import mmap, os\n\
         fd = os.open({path:?}, os.O_RDWR | os.O_CREAT)\n\
         os.ftruncate(fd, 8 * 4096)\n\
         m = mmap.mmap(fd, 8 * 4096, mmap.MAP_SHARED)\n\
         m[0] = 1; m[4096] = 1\n",
        path = path_arg(&file)
    );
    let second = format!(
        "import mmap, os\n\
         fd = os.open({path:?}, os.O_RDWR)\n\
         m = mmap.mmap(fd, 8 * 4096, mmap.MAP_SHARED)\n\
         m[2 * 4096] = 1\n\
         m.flush()\n",
        path = path_arg(&file)
    );
    let script = "python3 -c \"$FIRST\"; sleep 0.3; python3 -c \"$SECOND\"";
    let output = run(mmapwatch(&[
        "trace",
        "--json",
        "-o",
        "-",
        "--path-prefix",
        &path_arg(dir.path()),
        "--",
        "sh",
        "-c",
        script,
    ])
    .env("FIRST", &first)
    .env("SECOND", &second));
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the report");
    let entry = &json["files"][0];
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, 2)], "{json:#}");
    assert_eq!(entry["syncs"]["msync"]["calls"], 1);
    let writers = entry["writers"].as_array().expect("writers");
    let by_pages = |pages: u64| {
        writers
            .iter()
            .find(|w| w["pages"] == pages)
            .unwrap_or_else(|| panic!("a writer of {pages} page(s): {entry:#}"))
    };
    let (early, late) = (by_pages(2), by_pages(1));
    for writer in [early, late] {
        assert!(writer["exited_unix_ns"].as_u64().is_some(), "{writer:#}");
    }
    if let Some(why) = early["not_on_disk_at_exit_why"].as_str() {
        assert!(why.contains("Linux 6.5"), "{why}");
        return;
    }
    assert_eq!(
        early["pages_not_on_disk_at_exit"], 2,
        "the first writer exited without msync: {entry:#}"
    );
    assert_eq!(
        late["pages_not_on_disk_at_exit"], 0,
        "the second msynced all three before exiting: {entry:#}"
    );
    assert_eq!(entry["not_yet_written_back_pages"], 0, "{entry:#}");
}

/// The table's NOT_ON_DISK column says how many written pages are not on
/// disk, as the JSON's `not_yet_written_back_pages` does for the same
/// workload: page 0 written and msynced, then page 4 written and left
/// dirty; `unknown` where the page cache cannot count them.
#[test]
fn the_table_says_how_many_written_pages_are_not_on_disk() {
    require_root();
    let report = |json: bool| {
        let dir = scratch_dir();
        let file = dir.path().join("unsynced.bin");
        let script = format!(
            "import mmap, os\n\
             fd = os.open({path:?}, os.O_RDWR | os.O_CREAT)\n\
             os.ftruncate(fd, 8 * 4096)\n\
             m = mmap.mmap(fd, 8 * 4096, mmap.MAP_SHARED)\n\
             m[0] = 1\n\
             m.flush()\n\
             m[4 * 4096] = 1\n",
            path = path_arg(&file)
        );
        let prefix = path_arg(dir.path());
        let mut args = vec!["trace", "-o", "-", "--path-prefix", &prefix];
        if json {
            args.push("--json");
        }
        args.extend(["--", "python3", "-c", &script]);
        let output = run(&mut mmapwatch(&args));
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let json: serde_json::Value = serde_json::from_str(&report(true)).expect("the report");
    let entry = &json["files"][0];
    let table = report(false);
    let row = table
        .lines()
        .find(|line| line.contains("unsynced.bin"))
        .unwrap_or_else(|| panic!("no row for the file:\n{table}"));
    let header = table
        .lines()
        .find(|line| line.contains("NOT_ON_DISK"))
        .unwrap_or_else(|| panic!("no NOT_ON_DISK column:\n{table}"));
    // Right-aligned under its header: the first word from its start.
    let start = header.find("NOT_ON_DISK").unwrap();
    let cell = row
        .get(start..)
        .and_then(|rest| rest.split_whitespace().next());
    match entry["not_yet_written_back_pages"].as_u64() {
        Some(pages) => {
            assert!(pages >= 1, "page 4 was never synced: {entry:#}");
            assert_eq!(
                cell,
                Some(pages.to_string().as_str()),
                "the table disagrees with the JSON:\n{table}"
            );
        }
        // Before Linux 6.5 the page cache cannot count them.
        None => assert_eq!(cell, Some("unknown"), "{table}"),
    }
}
