//! `trace --stacks`: the code that wrote each page. C writers with known
//! functions and lines (built by build.rs with and without frame
//! pointers), Python's mmap, and LMDB with MDB_WRITEMAP.

use std::path::Path;

use integration_tests::{
    mmapwatch, path_arg, require_root, run, scratch_dir, stacks_line as line_of, trace_command,
};
use serde_json::Value;

const WITH_FRAME_POINTERS: &str = concat!(env!("OUT_DIR"), "/stacks-fp");
const WITHOUT_FRAME_POINTERS: &str = concat!(env!("OUT_DIR"), "/stacks-nofp");

/// The report's entry for `path`.
fn file_of<'a>(report: &'a Value, path: &Path) -> &'a Value {
    let path = path.to_str().expect("utf-8 path");
    report["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|file| file["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the report: {report}"))
}

fn stacks_of(file: &Value) -> &Vec<Value> {
    file["stacks"].as_array().expect("stacks array")
}

/// (symbol, line) of each frame.
fn frames(stack: &Value) -> Vec<(String, Option<u64>)> {
    stack["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|frame| {
            (
                frame["symbol"].as_str().unwrap_or("?").to_string(),
                frame["line"].as_u64(),
            )
        })
        .collect()
}

/// The call site whose innermost frame is `symbol`.
fn site<'a>(stacks: &'a [Value], symbol: &str) -> &'a Value {
    stacks
        .iter()
        .find(|stack| stack["frames"][0]["symbol"] == symbol)
        .unwrap_or_else(|| panic!("no call site in {symbol}: {stacks:?}"))
}

/// Every written page is in exactly the call sites' pages: each first
/// write came with its stack.
fn assert_sites_cover_the_pages(file: &Value, report: &Value) {
    let pages: u64 = stacks_of(file)
        .iter()
        .map(|stack| stack["pages"].as_u64().expect("pages"))
        .sum();
    assert_eq!(
        pages,
        file["pages_written_count"].as_u64().unwrap(),
        "{file}"
    );
    assert_eq!(report["call_sites"]["writes_without_stack"], 0, "{report}");
}

#[test]
fn with_frame_pointers_each_call_site_is_named_to_its_lines() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    let run = trace_command(
        WITH_FRAME_POINTERS,
        &["--stacks"],
        &[&path_arg(&target), "8", "300"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let file = file_of(&run.json, &target);
    let stacks = stacks_of(file);
    assert_eq!(stacks.len(), 2, "{stacks:?}");
    assert_sites_cover_the_pages(file, &run.json);
    let even = site(stacks, "store_page");
    assert_eq!(even["pages"], 4);
    assert_eq!(
        frames(even)[..3],
        [
            ("store_page".into(), Some(line_of("store_page"))),
            ("write_even".into(), Some(line_of("write_even"))),
            ("main".into(), Some(line_of("main_even"))),
        ]
    );
    assert_eq!(even["partial"], false, "{even}");
    let odd = site(stacks, "write_odd");
    assert_eq!(odd["pages"], 4);
    assert_eq!(
        frames(odd)[..2],
        [
            ("write_odd".into(), Some(line_of("write_odd"))),
            ("main".into(), Some(line_of("main_odd"))),
        ]
    );
    assert_eq!(odd["partial"], false, "{odd}");
    for stack in stacks {
        let writers = stack["writers"].as_array().expect("writers");
        assert_eq!(writers.len(), 1);
        assert_eq!(writers[0]["comm"], "stacks-fp");
        let object = stack["frames"][0]["object"].as_str().expect("object");
        assert!(object.ends_with("/stacks-fp"), "{object}");
    }
}

#[test]
fn without_frame_pointers_the_innermost_frame_is_right_and_no_caller_misnamed() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    let run = trace_command(
        WITHOUT_FRAME_POINTERS,
        &["--stacks"],
        &[&path_arg(&target), "6", "300"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let file = file_of(&run.json, &target);
    let stacks = stacks_of(file);
    assert_sites_cover_the_pages(file, &run.json);
    for (symbol, mark) in [("store_page", "store_page"), ("write_odd", "write_odd")] {
        let stack = site(stacks, symbol);
        assert_eq!(stack["pages"], 3, "{stack}");
        assert_eq!(frames(stack)[0], (symbol.to_string(), Some(line_of(mark))));
        // The walk may skip callers, never name code that is not one.
        for (caller, _) in &frames(stack)[1..] {
            assert!(
                ["write_even", "main", "?"].contains(&caller.as_str())
                    || caller.contains("libc_start")
                    || caller == "_start",
                "{caller} in {stack}"
            );
        }
        // x86-64: the C library keeps no frame pointer, the walk ends
        // short. (arm64's keeps its frame records: the walk reaches
        // __libc_start_main past the frameless callers, complete-looking.)
        if cfg!(target_arch = "x86_64") {
            assert_eq!(stack["partial"], true, "{stack}");
        }
    }
}

#[test]
fn a_writer_gone_before_its_stack_is_read_is_said_so_never_misnamed() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    // No pause: the writer exits at once; its stacks may be read before
    // or after.
    let run = trace_command(
        WITH_FRAME_POINTERS,
        &["--stacks"],
        &[&path_arg(&target), "4"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let file = file_of(&run.json, &target);
    assert_sites_cover_the_pages(file, &run.json);
    for stack in stacks_of(file) {
        let innermost = &stack["frames"][0];
        match innermost["symbol"].as_str() {
            Some(symbol) => assert!(["store_page", "write_odd"].contains(&symbol), "{stack}"),
            None => {
                assert!(stack["unresolved"].is_string(), "{stack}");
                assert!(innermost["addr"].as_u64().unwrap() > 0, "{stack}");
            }
        }
    }
}

/// `mmapwatch report` of a recording and of the event stream of a trace
/// with `--stacks`: the recording gives the trace's call sites, field for
/// field; the stream names each stack in a `stack` line before the first
/// event that gives its id, and replays into the same call sites.
#[test]
fn recordings_and_streams_keep_the_call_sites() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    let recording = dir.path().join("trace.rec");
    let stream = dir.path().join("events.jsonl");
    let run_trace = trace_command(
        WITH_FRAME_POINTERS,
        &[
            "--stacks",
            "--record",
            &path_arg(&recording),
            "--events",
            &path_arg(&stream),
        ],
        // Two seconds: the stream names each stack as it is read, and the
        // first look at an object's symbols takes long under QEMU (README:
        // a writer gone before its stacks are read leaves them unresolved).
        &[&path_arg(&target), "6", "2000"],
    );
    assert!(run_trace.status.success(), "{}", run_trace.stderr);
    let live = file_of(&run_trace.json, &target);
    assert_eq!(stacks_of(live).len(), 2, "{live}");
    let replay = |input: &Path| -> Value {
        let output = run(&mut mmapwatch(&["report", "--json", &path_arg(input)]));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("report JSON")
    };
    let replayed = replay(&recording);
    assert_eq!(file_of(&replayed, &target)["stacks"], live["stacks"]);
    assert_eq!(replayed["call_sites"], run_trace.json["call_sites"]);

    let text = std::fs::read_to_string(&stream).expect("stream");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("stream line"))
        .collect();
    let mut named = std::collections::HashSet::new();
    for line in &lines {
        match line["type"].as_str() {
            Some("stack") => {
                assert!(named.insert((line["pid"].clone(), line["stack_id"].clone())));
                assert!(line["frames"][0]["symbol"].is_string(), "{line}");
            }
            Some("write") => {
                let key = (line["pid"].clone(), line["stack_id"].clone());
                assert!(named.contains(&key), "no stack line before {line}");
            }
            _ => {}
        }
    }
    assert_eq!(named.len(), 2, "{text}");
    let from_stream = replay(&stream);
    let sites = |file: &Value| -> Vec<(Value, Value)> {
        stacks_of(file)
            .iter()
            .map(|s| (s["pages"].clone(), s["frames"].clone()))
            .collect()
    };
    assert_eq!(sites(file_of(&from_stream, &target)), sites(live));
}

#[test]
fn without_the_flag_no_stack_is_taken() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    let run = trace_command(WITH_FRAME_POINTERS, &[], &[&path_arg(&target), "2"]);
    let file = file_of(&run.json, &target);
    assert_eq!(file["pages_written_count"], 2);
    assert!(file.get("stacks").is_none(), "{file}");
    assert!(run.json.get("call_sites").is_none());
}

/// Python's mmap stores through its extension module's code: that frame
/// is there, in Python's own objects (Debian's Python has no frame
/// pointers: the stack is partial).
#[cfg(target_arch = "x86_64")]
#[test]
fn a_python_writer_shows_the_interpreter_code_that_stored() {
    require_root();
    let dir = scratch_dir();
    let target = dir.path().join("pages");
    let script = "import mmap, os, sys, time\n\
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)\n\
        os.ftruncate(fd, 4 * 4096)\n\
        m = mmap.mmap(fd, 4 * 4096)\n\
        for page in range(4):\n    m[page * 4096] = 120\n\
        time.sleep(0.3)\n";
    let run = trace_command(
        "/usr/bin/python3",
        &["--stacks"],
        &["-c", script, &path_arg(&target)],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let file = file_of(&run.json, &target);
    assert_eq!(file["pages_written_count"], 4);
    assert_sites_cover_the_pages(file, &run.json);
    for stack in stacks_of(file) {
        let object = stack["frames"][0]["object"].as_str().unwrap_or("");
        assert!(object.contains("python3"), "{stack}");
    }
}

/// LMDB with MDB_WRITEMAP stores into data.mdb's mapping itself: its
/// call sites are in liblmdb (Debian's is stripped of its static
/// functions: those frames are named by object and offset), and each
/// page written has one.
#[cfg(target_arch = "x86_64")]
#[test]
fn lmdb_with_writemap_shows_its_page_writing_call_sites() {
    require_root();
    let writer = concat!(env!("OUT_DIR"), "/lmdb-writer");
    assert!(
        Path::new(writer).exists(),
        "the LMDB writer was not built: install liblmdb-dev (cargo xtask test does) and rebuild"
    );
    let dir = scratch_dir();
    let run = trace_command(
        writer,
        &["--stacks"],
        &[&path_arg(dir.path()), "300", "300"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let data = file_of(&run.json, &dir.path().join("data.mdb"));
    assert!(data["pages_written_count"].as_u64().unwrap() > 10, "{data}");
    assert_sites_cover_the_pages(data, &run.json);
    for stack in stacks_of(data) {
        let innermost = &stack["frames"][0];
        let object = innermost["object"].as_str().unwrap_or("");
        assert!(object.contains("liblmdb.so"), "{stack}");
        assert!(
            innermost["symbol"].is_string() || innermost["offset"].is_u64(),
            "{stack}"
        );
    }
}
