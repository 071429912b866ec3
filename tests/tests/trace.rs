//! `mmapwatch trace` against the real kernel. Every test generates real
//! faults with `mw-workload` and asserts the exact files and pages reported.
//! Run as root, one at a time: `cargo xtask test`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use integration_tests::{
    backend_under_test, expect_one_line_failure, function_hooks_under_test, identity, in_vm,
    kernel_version, mmapwatch, mmapwatch_bin, path_arg, ranges, require_root, run, scratch_dir,
    shm_dir, start_trace, trace_command, TraceRun,
};

const COMM: &str = "mw-workload";
const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

fn trace_workload(extra: &[&str], workload: &[&str]) -> TraceRun {
    trace_command(WORKLOAD, extra, workload)
}

#[test]
fn shared_writes_report_exactly_the_pages_written() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "16",
            "--pages",
            "0,3,4,5,9",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.files().len(), 1, "{:#}", run.json);
    let entry = run.expect_file(&file);
    let (dev, ino, canonical) = identity(&file);
    assert_eq!(entry["path"], canonical.as_str());
    assert_eq!(entry["dev"], dev.as_str());
    assert_eq!(entry["ino"], ino);
    assert_eq!(entry["modified"], true);
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(0, 0), (3, 5), (9, 9)]
    );
    assert_eq!(entry["pages_written_count"], 5);
    assert_eq!(entry["write_faults"], 5);
    assert_eq!(ranges(&entry["cow_pages"]), vec![]);
    let writers = entry["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 1);
    assert_eq!(writers[0]["comm"], COMM);
    assert_eq!(writers[0]["pages"], 5);
    let first = entry["first_write_unix_ns"].as_u64().unwrap();
    let last = entry["last_write_unix_ns"].as_u64().unwrap();
    assert!(
        first > 1_600_000_000_000_000_000 && first <= last,
        "{first} {last}"
    );
    assert_eq!(run.json["version"], 1);
    match backend_under_test() {
        Some(backend) => assert_eq!(run.json["backend"], backend.as_str()),
        None => {
            // auto says what it chose and why; where only tracepoints
            // work (this project's CI host) it names what did not.
            let reason = run.json["backend_reason"].as_str().unwrap();
            assert!(reason.starts_with("auto:"), "{reason}");
            if run.json["backend"] == "tracepoint" {
                assert!(
                    reason.contains("fentry") && reason.contains("kprobe"),
                    "{reason}"
                );
            }
        }
    }
    assert_eq!(run.json["lost_events"], 0, "drops: {}", run.json["drops"]);
    assert!(run.json["duration_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn mapping_at_a_file_offset_reports_file_pages() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("offset.bin");
    // Mapping page 0 is file page 8.
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "24",
            "--offset-pages",
            "8",
            "--pages",
            "0,2,15",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(8, 8), (10, 10), (23, 23)]
    );
}

#[test]
fn msync_then_rewrite_is_a_new_fault_on_the_same_page() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("rewrite.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "8",
            "--pages",
            "2,6",
            "--msync-and-rewrite",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(2, 2), (6, 6)]);
    assert_eq!(entry["pages_written_count"], 2);
    // Two faults per page: the first write and the one after msync.
    assert_eq!(entry["write_faults"], 4);
    // Both rounds were written back by msync, on ext4.
    assert_eq!(entry["writeback_pages"], 4);
    assert_eq!(entry["writers"][0]["pages"], 2);
    assert!(entry["writeback_ends"].as_u64().unwrap() >= 2, "{entry:#}");
    if function_hooks_under_test() {
        // What only function hooks see: ext4's own page_mkwrite ran, and
        // both pages were written back (msync), each with a time.
        assert_eq!(entry["page_mkwrite"], "ext4_page_mkwrite", "{entry:#}");
        let written_back: Vec<(u64, u64)> = entry["page_writeback"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| {
                assert!(run["written_back_unix_ns"].as_u64().unwrap() > 0);
                (
                    run["pages"][0].as_u64().unwrap(),
                    run["pages"][1].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(written_back, vec![(2, 2), (6, 6)], "{entry:#}");
    } else {
        assert!(entry.get("page_mkwrite").is_none(), "{entry:#}");
        assert!(entry.get("page_writeback").is_none(), "{entry:#}");
    }
}

/// The same workloads under every backend that works here (in the VM: all
/// three) give the same files and pages. Shared writes reach the kernel
/// both as first faults (finish_fault) and, after msync, as write-protect
/// faults on present pages (do_wp_page); private ones as copies.
#[test]
fn every_backend_reports_the_same_files_and_pages() {
    require_root();
    // (file name, pages written, pages copied) per workload, per backend.
    type PageSets = (String, Vec<(u64, u64)>, Vec<(u64, u64)>);
    let mut results: Vec<(String, Vec<PageSets>)> = Vec::new();
    for backend in ["fentry", "kprobe", "tracepoint"] {
        let dir = scratch_dir();
        let shared = dir.path().join("shared.bin");
        let private = dir.path().join("private.bin");
        let mut sets = Vec::new();
        for (file, workload) in [
            (
                &shared,
                vec![
                    "shared",
                    "--size-pages",
                    "16",
                    "--offset-pages",
                    "2",
                    "--pages",
                    "0,3,4,11",
                    "--msync-and-rewrite",
                ],
            ),
            (
                &private,
                vec!["private", "--size-pages", "8", "--pages", "1,5,6"],
            ),
        ] {
            let mut args = workload.clone();
            let file_arg = path_arg(file);
            args.splice(1..1, ["--file", file_arg.as_str()]);
            let output = run(Command::new(mmapwatch_bin())
                .args(["trace", "--json", "--include-cow", "--backend", backend])
                .args(["--path-prefix", &path_arg(dir.path())])
                .arg("--")
                .arg(WORKLOAD)
                .args(&args));
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The VM's x86 kernels have every backend; arm64 has no fault
            // tracepoint, and Debian's 6.1 there no fentry (no ftrace
            // direct calls before 6.4).
            let may_refuse = !in_vm() || (cfg!(target_arch = "aarch64") && backend != "kprobe");
            if output.status.code() == Some(4) && may_refuse {
                // This kernel refuses the backend: one clear line says so.
                assert!(stderr.contains("does not work on this kernel"), "{stderr}");
                assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
                sets.clear();
                break;
            }
            assert!(output.status.success(), "{backend}: {stderr}");
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(json["backend"], backend);
            assert_eq!(json["lost_events"], 0, "{json:#}");
            let files = json["files"].as_array().unwrap();
            assert_eq!(files.len(), 1, "{backend}: {json:#}");
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            sets.push((
                name,
                ranges(&files[0]["pages_written"]),
                ranges(&files[0]["cow_pages"]),
            ));
        }
        if !sets.is_empty() {
            results.push((backend.to_string(), sets));
        }
    }
    let expected = vec![
        (
            "shared.bin".to_string(),
            vec![(2, 2), (5, 6), (13, 13)],
            vec![],
        ),
        ("private.bin".to_string(), vec![], vec![(1, 1), (5, 6)]),
    ];
    if cfg!(target_arch = "aarch64") {
        // No fault tracepoint there: kprobes are the backend (see above).
        assert!(
            results.iter().any(|(backend, _)| backend == "kprobe"),
            "kprobes work on arm64"
        );
    } else {
        assert!(
            results.iter().any(|(backend, _)| backend == "tracepoint"),
            "the tracepoint backend works everywhere on x86"
        );
        if in_vm() {
            assert_eq!(results.len(), 3, "every backend works in the VM");
        }
    }
    for (backend, sets) in &results {
        assert_eq!(sets, &expected, "{backend}");
    }
}

#[test]
fn private_mapping_writes_are_cow_only() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("private.bin");
    let workload = [
        "private",
        "--file",
        &path_arg(&file),
        "--size-pages",
        "8",
        "--pages",
        "1,2,7",
    ];

    let hidden = trace_workload(&["--path-prefix", &path_arg(dir.path())], &workload);
    assert!(hidden.status.success(), "{}", hidden.stderr);
    assert!(
        hidden.files().is_empty(),
        "COW is not a modification: {:#}",
        hidden.json
    );

    let shown = trace_workload(
        &["--include-cow", "--path-prefix", &path_arg(dir.path())],
        &workload,
    );
    let entry = shown.expect_file(&file);
    assert_eq!(entry["modified"], false);
    assert_eq!(ranges(&entry["pages_written"]), vec![]);
    assert_eq!(entry["pages_written_count"], 0);
    assert_eq!(ranges(&entry["cow_pages"]), vec![(1, 2), (7, 7)]);
    assert_eq!(entry["write_faults"], 0);
    assert_eq!(entry["writers"][0]["comm"], COMM);
}

/// Regression: a second process copying the same pages privately must not
/// make the file look modified.
#[test]
fn two_processes_copying_the_same_pages_are_still_cow_only() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("private-by-two.bin");
    let run = trace_workload(
        &["--include-cow", "--path-prefix", &path_arg(dir.path())],
        &[
            "two-private",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "8",
            "--pages",
            "1,2",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(entry["modified"], false, "{entry:#}");
    assert_eq!(ranges(&entry["pages_written"]), vec![]);
    assert_eq!(ranges(&entry["cow_pages"]), vec![(1, 2)]);
    assert_eq!(entry["cow_faults"], 4);
}

#[test]
fn write_syscalls_are_not_mmap_writes() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("written.bin");
    let run = trace_workload(
        &["--include-cow", "--path-prefix", &path_arg(dir.path())],
        &["pwrite", "--file", &path_arg(&file), "--pages", "0,1,5"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(file.exists());
    assert!(run.files().is_empty(), "{:#}", run.json);
}

#[test]
fn reading_a_shared_mapping_is_not_a_write() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("readonly.bin");
    let run = trace_workload(
        &["--include-cow", "--path-prefix", &path_arg(dir.path())],
        &[
            "read-shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "8",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.workload_value("read_sum").as_deref(), Some("0"));
    assert!(run.files().is_empty(), "{:#}", run.json);
}

#[test]
fn tmpfs_files_in_dev_shm_are_reported() {
    require_root();
    let dir = shm_dir();
    let file = dir.path().join("segment");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "32",
            "--pages",
            "0,1,2,31",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(entry["path"], identity(&file).2.as_str());
    assert_eq!(entry["fs"], "tmpfs");
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, 2), (31, 31)]);
    // tmpfs has no writeback.
    assert_eq!(entry["writeback_pages"], 0);
}

#[test]
fn two_processes_are_both_attributed() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("shared-by-two.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "two-writers",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "16",
            "--first",
            "0,1,2",
            "--second",
            "10,11",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let first: u64 = run.workload_value("first").unwrap().parse().unwrap();
    let second: u64 = run.workload_value("second").unwrap().parse().unwrap();
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, 2), (10, 11)]);
    let writers = entry["writers"].as_array().unwrap();
    let pages_of = |pid: u64| {
        writers
            .iter()
            .find(|w| w["pid"].as_u64() == Some(pid))
            .unwrap_or_else(|| panic!("writer {pid} missing: {writers:?}"))["pages"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(pages_of(first), 3);
    assert_eq!(pages_of(second), 2);
    assert_eq!(writers.len(), 2);
}

#[test]
fn descendants_of_the_command_are_traced() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("grandchild.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "grandchild",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "8",
            "--pages",
            "4,5",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let grandchild: u64 = run.workload_value("grandchild").unwrap().parse().unwrap();
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(4, 5)]);
    let writers = entry["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 1);
    assert_eq!(writers[0]["pid"], grandchild);
    // The grandchild may be gone before its file is named: the path comes
    // from its maps or from the kernel's dentry names; both are exact here.
    assert_eq!(entry["path"], identity(&file).2.as_str());
}

/// ext4 caches a file filled by write(2) in large folios. A 2 MiB-aligned
/// mapping of a 2 MiB folio is mapped writable whole by the first write
/// fault (one PMD): later stores never fault, so every page of it is
/// reported. The workload says whether that happened.
#[test]
fn large_folio_mapped_by_one_pmd_reports_the_whole_span() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("large-folios.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "fill-then-map",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "512",
            "--pages",
            "7,40,41,300",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    let pmd_mapped_kb: u64 = run
        .workload_value("pmd_mapped_kb")
        .unwrap()
        .parse()
        .unwrap();
    if pmd_mapped_kb == 2048 {
        assert_eq!(ranges(&entry["pages_written"]), vec![(0, 511)], "{entry:#}");
        assert_eq!(entry["huge_mapped_spans"], 1);
        assert_eq!(entry["write_faults"], 1);
        assert_eq!(entry["writers"][0]["pages"], 512);
    } else {
        // Mapped page by page: each store faulted.
        assert_eq!(pmd_mapped_kb, 0);
        assert_eq!(
            ranges(&entry["pages_written"]),
            vec![(7, 7), (40, 41), (300, 300)]
        );
        assert_eq!(entry["huge_mapped_spans"], 0);
        assert_eq!(entry["write_faults"], 4);
    }
    assert!(entry["folios_dirtied"].as_u64().unwrap() >= 1, "{entry:#}");
}

/// A file read through a shared mapping first: the kernel maps its 2 MiB
/// folios read-only, one PMD each. The first store to each makes all 512
/// pages writable at once (the PMD is dropped and mapped again writable),
/// and the other 511 stores never fault: each folio is reported whole, as a
/// labelled span, with the faulting page exact.
#[test]
fn pmd_mapped_folios_read_then_written_are_reported_whole() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("read-then-written.bin");
    const PAGES: u64 = 16_384;
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "fill-then-map",
            "--file",
            &path_arg(&file),
            "--size-pages",
            &PAGES.to_string(),
            "--all-pages",
            "--read-first",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    // Every page was stored to, however the kernel mapped them.
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(0, PAGES - 1)],
        "{entry:#}"
    );
    assert_eq!(entry["writers"][0]["pages"], PAGES);
    let pmd_mapped_kb: u64 = run
        .workload_value("pmd_mapped_after_read_kb")
        .unwrap()
        .parse()
        .unwrap();
    let huge_folios = pmd_mapped_kb / 2048;
    assert_eq!(entry["huge_mapped_spans"], huge_folios, "{entry:#}");
    if huge_folios > 0 {
        // The faulting page of each is exact; the rest is span.
        assert_eq!(entry["span_pages_count"], huge_folios * 511, "{entry:#}");
    }
}

/// The same large folios through a window that holds no whole 2 MiB region
/// (file pages 1..=600): the kernel maps page by page, every page faults on
/// its own, and exactly those pages are reported.
#[test]
fn large_folio_mapped_page_by_page_reports_exact_pages() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("large-folios-offset.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "fill-then-map",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "1024",
            "--offset-pages",
            "1",
            "--len-pages",
            "600",
            "--pages",
            "7,40,41,599",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.workload_value("pmd_mapped_kb").as_deref(), Some("0"));
    let entry = run.expect_file(&file);
    // Mapping page N is file page N + 1.
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(8, 8), (41, 42), (600, 600)]
    );
    assert_eq!(entry["huge_mapped_spans"], 0);
    assert_eq!(entry["write_faults"], 4);
    // Dirtying works per folio: a folio can hold many of these pages
    // (ext4 on 6.18), or one (6.1, where a page still dirty from write(2)
    // is not dirtied again).
    let folios = entry["folios_dirtied"].as_u64().unwrap();
    assert!(folios >= 1, "{entry:#}");
    assert!(
        entry["pages_dirtied"].as_u64().unwrap() >= folios,
        "{entry:#}"
    );
}

#[test]
fn read_syscall_into_a_shared_mapping_modifies_the_file() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("read-target.bin");
    let source = dir.path().join("source.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "read-into",
            "--file",
            &path_arg(&file),
            "--source",
            &path_arg(&source),
            "--size-pages",
            "8",
            "--pages",
            "3,6",
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(3, 3), (6, 6)]);
    assert_eq!(
        run.files().len(),
        1,
        "the source is only read: {:#}",
        run.json
    );
}

#[test]
fn command_exit_code_is_passed_through() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("fails.bin");
    // Page 99 is outside the mapping: the workload exits 1 before writing.
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &[
            "shared",
            "--file",
            &path_arg(&file),
            "--size-pages",
            "4",
            "--pages",
            "99",
        ],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.files().is_empty());
}

/// System-wide mode: no CMD, stop on --duration, filter by --pid.
#[test]
fn pid_filter_traces_only_that_process() {
    require_root();
    let dir = scratch_dir();
    let watched = dir.path().join("watched.bin");
    let ignored = dir.path().join("ignored.bin");
    let spawn_waiting = |file: &std::path::Path| {
        let mut child = Command::new(WORKLOAD)
            .args([
                "wait-then-shared",
                "--file",
                &path_arg(file),
                "--size-pages",
                "4",
                "--pages",
                "1,2",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("workload: waiting="), "{line}");
        child
    };
    let mut target = spawn_waiting(&watched);
    let mut other = spawn_waiting(&ignored);

    let target_pid = target.id().to_string();
    let (trace, _) = start_trace(&[
        "--json",
        "--duration",
        "3s",
        "--pid",
        &target_pid,
        "--path-prefix",
        &path_arg(dir.path()),
    ]);

    for child in [&mut target, &mut other] {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        assert!(child.wait().unwrap().success());
    }
    let output = trace.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{json:#}");
    assert_eq!(files[0]["ino"], identity(&watched).1);
    assert_eq!(ranges(&files[0]["pages_written"]), vec![(1, 2)]);
    assert_eq!(files[0]["writers"][0]["pid"], target.id());
}

#[test]
fn comm_filter_keeps_only_matching_processes() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("comm.bin");
    let workload = [
        "shared",
        "--file",
        &path_arg(&file),
        "--size-pages",
        "4",
        "--pages",
        "1",
    ];
    let other = trace_workload(
        &[
            "--comm",
            "not-this-one",
            "--path-prefix",
            &path_arg(dir.path()),
        ],
        &workload,
    );
    assert!(other.files().is_empty(), "{:#}", other.json);
    let same = trace_workload(
        &["--comm", COMM, "--path-prefix", &path_arg(dir.path())],
        &workload,
    );
    assert_eq!(
        ranges(&same.expect_file(&file)["pages_written"]),
        vec![(1, 1)]
    );
}

/// Writers are named as they are at the store: a forked child that renames
/// itself (prctl) and stores at once, right after a fault that showed the
/// tracer its old name, is named and selected by its new name; so is the
/// parent renamed after it. `--comm` with the old name selects neither.
#[test]
fn a_writer_renamed_just_before_its_store_is_named_and_selected_by_its_new_name() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("renamed.bin");
    let workload = [
        "renamed-writers",
        "--file",
        &path_arg(&file),
        "--private-file",
        &path_arg(&dir.path().join("private.bin")),
        "--child-name",
        "mw-new-child",
        "--parent-name",
        "mw-new-parent",
    ];
    let prefix = path_arg(dir.path());
    let all = trace_workload(&["--path-prefix", &prefix], &workload);
    assert!(all.status.success(), "{}", all.stderr);
    let pid = |role: &str| -> u64 { all.workload_value(role).unwrap().parse().unwrap() };
    let entry = all.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, 1)], "{entry:#}");
    let mut writers: Vec<(u64, String, u64)> = entry["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["pid"].as_u64().unwrap(),
                w["comm"].as_str().unwrap().to_string(),
                w["pages"].as_u64().unwrap(),
            )
        })
        .collect();
    writers.sort();
    let mut expected = vec![
        (pid("child"), "mw-new-child".to_string(), 1),
        (pid("parent"), "mw-new-parent".to_string(), 1),
    ];
    expected.sort();
    assert_eq!(writers, expected);

    let child_only = trace_workload(
        &["--comm", "mw-new-child", "--path-prefix", &prefix],
        &workload,
    );
    let entry = child_only.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 1)], "{entry:#}");
    assert_eq!(entry["writers"][0]["comm"], "mw-new-child");

    let old_name = trace_workload(&["--comm", COMM, "--path-prefix", &prefix], &workload);
    assert!(
        old_name
            .files()
            .iter()
            .all(|f| f["path"] != path_arg(&file)),
        "{:#}",
        old_name.json
    );
}

/// The issue's own acceptance case: a Python script writing through mmap.
#[test]
fn python_mmap_script_reports_exactly_its_pages() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("python.bin");
    let script = format!(
        "import mmap, os\n\
         fd = os.open({path:?}, os.O_RDWR | os.O_CREAT)\n\
         os.ftruncate(fd, 32 * 4096)\n\
         m = mmap.mmap(fd, 32 * 4096, mmap.MAP_SHARED)\n\
         for page in (0, 1, 2, 17, 31):\n    m[page * 4096 + 100] = 7\n\
         m.flush()\n",
        path = path_arg(&file)
    );
    let run = trace_command(
        "python3",
        &["--path-prefix", &path_arg(dir.path())],
        &["-c", &script],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.files().len(), 1, "{:#}", run.json);
    let entry = run.expect_file(&file);
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(0, 2), (17, 17), (31, 31)]
    );
    assert_eq!(entry["writers"][0]["comm"], "python3");
    assert_eq!(entry["writeback_pages"], 5);
}

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

/// The table's WRITEBACK column says how many written pages are not on
/// disk, as the JSON's `not_yet_written_back_pages` does for the same
/// workload: page 0 written and msynced, then page 4 written and left
/// dirty.
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
        let mut args = vec!["trace", "--path-prefix", &prefix];
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
    match entry["not_yet_written_back_pages"].as_u64() {
        Some(pages) => {
            assert!(pages >= 1, "page 4 was never synced: {entry:#}");
            assert!(
                row.contains(&format!(" {pages} not on disk")),
                "the table disagrees with the JSON ({pages}):\n{table}"
            );
        }
        // Before Linux 6.5 the page cache cannot count them.
        None => assert!(!row.contains("not on disk"), "{table}"),
    }
}

/// The fault path finds mappings by walking the maple tree without locks
/// (bpf_find_vma costs microseconds with IRQs off). A process with hundreds
/// of mappings has a multi-level tree: every fault must still be resolved
/// by the walk, with exact pages.
#[test]
fn the_lock_free_vma_walk_resolves_deep_trees() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("deep.bin");
    let script = format!(
        "import mmap, os\n\
         fd = os.open({path:?}, os.O_RDWR | os.O_CREAT)\n\
         os.ftruncate(fd, 64 * 4096)\n\
         # Alternating protections keep 600 mappings from merging.\n\
         keep = [mmap.mmap(-1, 4096, prot=(mmap.PROT_READ if i % 2 else mmap.PROT_READ | mmap.PROT_WRITE)) for i in range(600)]\n\
         m = mmap.mmap(fd, 64 * 4096)\n\
         for page in (0, 5, 63):\n    m[page * 4096] = 1\n\
         assert sum(1 for _ in open('/proc/self/maps')) > 600\n",
        path = path_arg(&file)
    );
    let run = trace_command(
        "python3",
        &["--path-prefix", &path_arg(dir.path())],
        &["-c", &script],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        ranges(&run.expect_file(&file)["pages_written"]),
        vec![(0, 0), (5, 5), (63, 63)]
    );
    assert_eq!(
        run.json["probe"]["vma_walk_fallbacks"], 0,
        "{:#}",
        run.json["probe"]
    );
}

/// Without CMD: SIGINT and SIGTERM stop tracing and still print the report.
#[test]
fn signals_stop_tracing_and_still_report() {
    require_root();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = scratch_dir();
        let file = dir.path().join("signalled.bin");
        let (trace, line) = start_trace(&[
            "--json",
            "--comm",
            COMM,
            "--path-prefix",
            &path_arg(dir.path()),
        ]);
        assert!(line.contains("until Ctrl-C"), "{line}");
        let status = Command::new(WORKLOAD)
            .args([
                "shared",
                "--file",
                &path_arg(&file),
                "--size-pages",
                "4",
                "--pages",
                "2,3",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(trace.id() as i32, signal) }, 0);
        let output = trace.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "signal {signal}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("a report after the signal");
        let files = json["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{json:#}");
        assert_eq!(files[0]["ino"], identity(&file).1);
        assert_eq!(ranges(&files[0]["pages_written"]), vec![(2, 3)]);
    }
}

#[test]
fn bad_input_gets_one_line_and_a_distinct_exit_code() {
    require_root();
    expect_one_line_failure(&mut mmapwatch(&["trace", "--bogus"]), 2, "--bogus");
    expect_one_line_failure(&mut mmapwatch(&["trace", "--duration", "soon"]), 2, "soon");
    expect_one_line_failure(&mut mmapwatch(&["trace", "--backend", "magic"]), 2, "magic");
    // strace's expression flag is no flag here: refused, no file made.
    let cwd = scratch_dir();
    expect_one_line_failure(
        mmapwatch(&["trace", "-e", "trace=msync", "--", "true"]).current_dir(cwd.path()),
        2,
        "'-e'",
    );
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    // clap's message whole on its one line: the missing flag named.
    expect_one_line_failure(
        &mut mmapwatch(&["top", "-n", "2"]),
        2,
        "not provided: --batch",
    );
    expect_one_line_failure(&mut mmapwatch(&["top", "-b", "-n", "0"]), 2, "at least 1");
    expect_one_line_failure(
        &mut mmapwatch(&["export", "--keep-comm", "("]),
        2,
        "not a regular expression",
    );
    expect_one_line_failure(
        &mut mmapwatch(&["trace", "--pid", "999999999"]),
        5,
        "no process with pid 999999999",
    );
    expect_one_line_failure(
        &mut mmapwatch(&["trace", "--", "/nonexistent/cmd"]),
        127,
        "command not found",
    );
    expect_one_line_failure(
        &mut mmapwatch(&["trace", "--btf", "/nonexistent/vmlinux", "--", "true"]),
        4,
        "BTF",
    );
}

/// Odd environments get one line and an exit code, never a panic: a
/// duration too long for the clock, too many --comm, a BTF "file" that is a
/// device, `top` without a terminal.
#[test]
fn odd_environments_get_one_line_not_a_panic() {
    require_root();
    expect_one_line_failure(
        &mut mmapwatch(&["trace", "--duration", "18446744073709551615s"]),
        2,
        "longer than ten years",
    );
    let mut nine = vec!["trace", "--duration", "1s"];
    for _ in 0..9 {
        nine.extend(["--comm", "x"]);
    }
    expect_one_line_failure(&mut mmapwatch(&nine), 2, "at most 8 --comm");
    expect_one_line_failure(
        &mut mmapwatch(&["trace", "--path-prefix", "/nonexistent/dir", "--", "true"]),
        2,
        "--path-prefix /nonexistent/dir: no such file or directory",
    );
    let mut zero = mmapwatch(&["trace", "--duration", "1s"]);
    zero.env("MMAPWATCH_BTF", "/dev/zero");
    expect_one_line_failure(&mut zero, 4, "not a regular file");
    let mut top = mmapwatch(&["top"]);
    top.stdin(std::process::Stdio::null());
    expect_one_line_failure(&mut top, 2, "terminal");
}

/// A report written into a pipe whose reader is gone ends quietly (killed
/// by SIGPIPE, as `cat` is), not with a panic.
#[test]
fn a_closed_pipe_ends_the_report_quietly() {
    require_root();
    for args in [
        &["trace", "--", "true"][..],
        &["trace", "--events", "-", "--", "true"][..],
        &["doctor"][..],
    ] {
        let mut child = mmapwatch(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn mmapwatch");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt as _;
        assert!(
            output.status.signal() == Some(libc::SIGPIPE) || output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A shell script for `sh -c`: CMD's own output ("hi"), then the
/// workload writing pages 1 and 6 of an 8-page `file` (and msyncing it).
fn say_hi_then_write_pages_1_and_6(file: &std::path::Path) -> String {
    format!(
        "echo hi; exec {WORKLOAD} shared --file {} --size-pages 8 --pages 1,6",
        path_arg(file)
    )
}

/// `-o FILE` keeps the report apart from CMD's own output: the file is
/// the JSON report with the exact pages, stdout is CMD's alone.
#[test]
fn output_file_keeps_the_report_apart_from_the_commands_output() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let report = dir.path().join("report.json");
    let script = say_hi_then_write_pages_1_and_6(&file);
    let output = run(&mut mmapwatch(&[
        "trace",
        "-j",
        "-o",
        &path_arg(&report),
        "--path-prefix",
        &path_arg(dir.path()),
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{:?}", output);
    assert!(stdout.starts_with("hi\n"), "{stdout}");
    assert!(
        !stdout.contains("version"),
        "the report went to stdout: {stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report file"))
            .expect("the report file is JSON");
    let files = json["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{json:#}");
    assert_eq!(ranges(&files[0]["pages_written"]), vec![(1, 1), (6, 6)]);
}

/// `--events -`: standard output is the event stream alone, one JSON
/// object per line (`jq` reads it), with the exact pages and the writer;
/// CMD's own output goes to standard error, the report nowhere.
#[test]
fn the_event_stream_on_stdout_carries_nothing_else() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let script = say_hi_then_write_pages_1_and_6(&file);
    let output = run(&mut mmapwatch(&[
        "trace",
        "--events",
        "-",
        "--path-prefix",
        &path_arg(dir.path()),
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l == "hi"), "CMD's output: {stderr}");
    let mut jq = Command::new("jq")
        .args([
            "-r",
            r#""\(.type) \(.path) \(.first_page) \(.pages) \(.comm) \(.pid > 0)""#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jq");
    jq.stdin
        .take()
        .expect("jq's stdin")
        .write_all(&output.stdout)
        .expect("feeding jq");
    let parsed = jq.wait_with_output().expect("jq ran");
    assert!(
        parsed.status.success(),
        "stdout is not JSON lines: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&parsed.stderr)
    );
    let path = path_arg(&file);
    let lines: Vec<String> = String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut expected = vec![
        format!("write {path} 1 1 {COMM} true"),
        format!("write {path} 6 1 {COMM} true"),
    ];
    // The workload msyncs its whole 8-page mapping before exiting: the
    // function-hook backends see each page's writeback complete (done by
    // the kernel, for no process) before the msync returns.
    if function_hooks_under_test() {
        expected.push(format!("writeback {path} 1 1 null false"));
        expected.push(format!("writeback {path} 6 1 null false"));
    }
    expected.push(format!("sync {path} 0 8 {COMM} true"));
    assert_eq!(lines, expected);
}

/// `--pid P` follows the children P forks after the trace starts (as
/// `strace -f -p` does) and ends the trace by itself when P exits.
#[test]
fn a_pid_is_followed_into_its_children_and_ends_the_trace() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("child.bin");
    let ready = dir.path().join("ready");
    // The target waits for the trace, then forks the writer (no exec: the
    // writer is a child, not the target itself) and exits after it.
    let script = format!(
        "while [ ! -e {ready} ]; do sleep 0.05; done; {WORKLOAD} shared --file {file} --size-pages 8 --pages 2,5; true",
        ready = path_arg(&ready),
        file = path_arg(&file),
    );
    let mut target = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawn the target");
    let pid = target.id().to_string();
    let (trace, _) = start_trace(&["--json", "-p", &pid, "--path-prefix", &path_arg(dir.path())]);
    std::fs::write(&ready, b"").expect("signal the target");
    assert!(target.wait().expect("wait for the target").success());
    // No --duration and no signal: the trace ends because its target did.
    let output = trace.wait_with_output().expect("the trace ends");
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the report is JSON");
    let files = json["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{json:#}");
    assert_eq!(ranges(&files[0]["pages_written"]), vec![(2, 2), (5, 5)]);
    assert_eq!(files[0]["writers"][0]["comm"], COMM);
}

/// Completions and the man page come from the command line's definition:
/// they name the real flags, and bash accepts the script.
#[test]
fn completions_and_man_page_are_generated_from_the_flags() {
    let bash = run(&mut mmapwatch(&["completions", "bash"]));
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.status.success(), "{bash:?}");
    for flag in [
        "--path-prefix",
        "--duration",
        "--json",
        "--output",
        "--backend",
    ] {
        assert!(script.contains(flag), "no {flag} in the bash completions");
    }
    let dir = scratch_dir();
    let path = dir.path().join("mmapwatch.bash");
    std::fs::write(&path, script.as_bytes()).unwrap();
    let syntax = run(Command::new("bash").arg("-n").arg(&path));
    assert!(syntax.status.success(), "{syntax:?}");
    let man = run(&mut mmapwatch(&["manpage"]));
    let roff = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success() && roff.contains(".TH mmapwatch 1"),
        "{roff}"
    );
    for command in ["trace", "top", "export", "doctor"] {
        assert!(roff.contains(command), "no {command} in the man page");
    }
}

/// A program started by exec in the same process is named as itself: the
/// writer cache must not keep the shell's name for the new program's
/// writes (exec keeps the thread id). Several runs: the stale name showed
/// only when both faults fell in one clock tick.
#[test]
fn writes_after_exec_carry_the_new_programs_name() {
    require_root();
    for round in 0..5 {
        let dir = scratch_dir();
        let file = dir.path().join("exec.bin");
        let script = format!(
            "exec {WORKLOAD} shared --file {} --size-pages 8 --pages 1,6",
            path_arg(&file)
        );
        let run = trace_command(
            "sh",
            &["--path-prefix", &path_arg(dir.path())],
            &["-c", &script],
        );
        assert!(run.status.success(), "{}", run.stderr);
        let entry = run.expect_file(&file);
        let writers = entry["writers"].as_array().expect("writers");
        assert_eq!(writers.len(), 1, "round {round}: {entry:#}");
        assert_eq!(writers[0]["comm"], COMM, "round {round}: {entry:#}");
    }
}

/// `--version` names the commit it was built from, as bug reports need.
#[test]
fn version_names_the_git_revision() {
    let output = run(&mut mmapwatch(&["--version"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let revision = text
        .trim()
        .strip_prefix(concat!("mmapwatch ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {text}"));
    assert!(
        revision == "unknown"
            || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}

#[test]
fn non_root_is_refused_with_one_line() {
    require_root();
    let mut command = Command::new(mmapwatch_bin());
    command.args(["trace", "--duration", "1s"]);
    // Drop to nobody with no capabilities.
    use std::os::unix::process::CommandExt as _;
    command.uid(65534).gid(65534);
    let output = run(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("must run as root"), "{stderr}");
}

/// `doctor --json` gives the same checks as the table, as data: what a
/// fleet script or a container's health check reads.
#[test]
fn doctor_json_lists_every_check_with_its_status() {
    require_root();
    let output = run(&mut mmapwatch(&["doctor", "--json"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("doctor --json is JSON");
    assert_eq!(json["ok"], true, "{json:#}");
    let checks = json["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for needed in [
        "kernel",
        "privileges",
        "btf",
        "tracefs",
        "programs",
        "backend auto",
    ] {
        assert!(names.contains(&needed), "no {needed} check: {json:#}");
    }
    for check in checks {
        let status = check["status"].as_str().unwrap_or("");
        assert!(["ok", "fail", "no"].contains(&status), "{check}");
        assert!(check["detail"].is_string(), "{check}");
    }
    // The table shows the same checks, one line each.
    let table = run(&mut mmapwatch(&["doctor"]));
    assert_eq!(
        String::from_utf8_lossy(&table.stdout).lines().count(),
        checks.len()
    );
}

/// `doctor` checks the running kernel for real: the programs load, the
/// backend choice is explained, optional features are "no", not failures.
#[test]
fn doctor_reports_what_this_kernel_supports() {
    require_root();
    let output = run(&mut mmapwatch(&["doctor"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    assert!(line("programs").contains(" ok "), "{text}");
    // The maple tree came in 6.1; before, the VMA rbtree.
    let walk = if kernel_version() >= (6, 1) {
        "maple-tree walk"
    } else {
        "VMA rbtree"
    };
    assert!(line("vma lookup").contains(walk), "{text}");
    assert!(!line("backend auto").contains("no privileges"), "{text}");
    // x86 only: arm64 has no exceptions events.
    let fault_tracepoint = if cfg!(target_arch = "x86_64") {
        " ok "
    } else {
        " no "
    };
    assert!(
        line("tracepoint exceptions:page_fault_user").contains(fault_tracepoint),
        "{text}"
    );
    let auto = line("backend auto");
    if in_vm() && cfg!(target_arch = "aarch64") {
        // Debian's arm64 6.1: kprobes, no fentry (see above).
        assert!(auto.contains("kprobe hooks"), "{text}");
        assert!(line("kprobe").contains(" ok "), "{text}");
    } else if in_vm() {
        assert!(auto.contains("fentry"), "{text}");
        assert!(line("fentry").contains(" ok "), "{text}");
        assert!(line("kprobe").contains(" ok "), "{text}");
    } else if auto.contains("tracepoint") {
        // Says why: what each function-hook backend hit.
        assert!(
            auto.contains("fentry does not attach") && auto.contains("kprobe does not attach"),
            "{text}"
        );
    }
    for optional in ["fentry", "kprobe"] {
        let status = line(optional);
        assert!(
            status.contains(" ok ") || status.contains(" no "),
            "{status}"
        );
    }
    assert!(
        !text.contains("FAIL"),
        "nothing required is missing here:\n{text}"
    );
}
