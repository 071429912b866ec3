//! Bad input, overload and signals: nothing is lost silently, nothing is
//! left attached, nothing panics.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    assert_fault_count, expect_one_line_failure, function_hooks_under_test, identity, in_vm,
    kernel_version, mmapwatch, path_arg, ranges, require_root, scratch_dir, shm_dir, start_trace,
    trace_command, TraceRun, Workload,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

fn trace_workload(extra: &[&str], workload: &Workload) -> TraceRun {
    trace_command(WORKLOAD, extra, &workload.args())
}

#[test]
fn corrupt_btf_is_refused_with_one_line() {
    require_root();
    let dir = scratch_dir();
    let corrupt = dir.path().join("vmlinux");
    // A BTF header (magic 0xeb9f) followed by section sizes that run past the end.
    let mut bytes = vec![
        0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 16, 0, 0, 0,
    ];
    bytes.extend_from_slice(&[0xab; 40]);
    std::fs::write(&corrupt, bytes).unwrap();
    expect_one_line_failure(
        mmapwatch(&["trace", "--duration", "1s"]).env("MMAPWATCH_BTF", &corrupt),
        4,
        "unreadable or corrupt",
    );
    expect_one_line_failure(
        mmapwatch(&["export", "--listen", "127.0.0.1:0"])
            .env("MMAPWATCH_BTF", "/nonexistent/vmlinux"),
        4,
        "CONFIG_DEBUG_INFO_BTF",
    );
}

#[test]
fn an_absent_tracepoint_is_refused_with_one_line() {
    require_root();
    // A tracefs that has every tracepoint but the write-fault one.
    let dir = scratch_dir();
    for tp in [
        "exceptions/page_fault_kernel",
        "sched/sched_process_fork",
        "sched/sched_process_exit",
    ] {
        let path = dir.path().join("events").join(tp);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("id"), "1\n").unwrap();
    }
    let mut command = mmapwatch(&["trace", "--duration", "1s"]);
    command.env("MMAPWATCH_TRACEFS", dir.path());
    if function_hooks_under_test() {
        // The function hooks see the faults: only the tracepoint backend
        // needs it (arm64 has none).
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    expect_one_line_failure(&mut command, 4, "no tracepoint exceptions:page_fault_user");
}

#[test]
fn bad_listen_addresses_are_refused_with_one_line() {
    require_root();
    expect_one_line_failure(
        &mut mmapwatch(&["export", "--listen", "localhost"]),
        2,
        "localhost",
    );
    expect_one_line_failure(
        &mut mmapwatch(&["export", "--listen", "127.0.0.1:99999"]),
        2,
        "99999",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    expect_one_line_failure(
        &mut mmapwatch(&["export", "--listen", &address]),
        6,
        "already in use",
    );
}

/// A stalled consumer (SIGSTOP) and a 4 KiB ring: 20,000 first writes
/// cannot fit, records are lost, counted, and with the pages reported they
/// account for every write.
#[test]
fn ring_overflow_is_counted_and_accounts_for_every_first_write() {
    require_root();
    const PAGES: u64 = 20_000;
    let dir = shm_dir();
    let file = dir.path().join("overflow");
    let (trace, _) = start_trace(&["--json", "--ring-bytes", "4096", "--comm", "mw-workload"]);
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(trace.id() as i32, libc::SIGSTOP) }, 0);
    let status = Workload::new("shared", &file)
        .size_pages(PAGES)
        .flag("--all")
        .command(WORKLOAD)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: signals our own child.
    unsafe {
        libc::kill(trace.id() as i32, libc::SIGCONT);
        libc::kill(trace.id() as i32, libc::SIGINT);
    }
    let output = trace.wait_with_output().unwrap();
    let rest = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{rest}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let drops = &json["drops"];
    let ring_full = drops["ringbuf_full"].as_u64().unwrap();
    // File announcements, sync-call and exit records are not page records.
    let file_events_lost = drops["ringbuf_full_file_events"].as_u64().unwrap()
        + drops["ringbuf_full_other_events"].as_u64().unwrap();
    assert!(
        ring_full > 0,
        "a 4 KiB ring with a stopped consumer must overflow: {json:#}"
    );
    assert!(json["lost_events"].as_u64().unwrap() >= ring_full);
    assert!(
        rest.contains("event(s) lost"),
        "losses are said on stderr: {rest}"
    );
    let (_, ino, _) = identity(&file);
    let entry = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ino"] == ino)
        .unwrap_or_else(|| panic!("the file is reported even when records were lost: {json:#}"));
    let reported = entry["pages_written_count"].as_u64().unwrap();
    assert_eq!(
        reported + (ring_full - file_events_lost),
        PAGES,
        "pages reported {reported} + page records lost {} must be every first write",
        ring_full - file_events_lost
    );
    // The kernel's own count saw every fault.
    assert_fault_count(&entry["write_faults"], PAGES, "write faults");
}

/// A dedup map far smaller than the pages written: evicted pages written
/// again are reported again, and deduplicated here: no page twice, no file lost.
/// (An entry holds a chunk of 512 pages: 1,500 pages need 3.)
#[test]
fn a_small_dedup_map_never_double_counts_or_loses_a_file() {
    require_root();
    const PAGES: u64 = 1500;
    let dir = scratch_dir();
    let file = dir.path().join("pressure.bin");
    let run = trace_workload(
        &[
            "--dedup-entries",
            "2",
            "--path-prefix",
            &path_arg(dir.path()),
        ],
        &Workload::new("shared", &file)
            .size_pages(PAGES)
            .flag("--all")
            .flag("--msync-and-rewrite"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, PAGES - 1)]);
    assert_eq!(entry["pages_written_count"], PAGES);
    assert_eq!(
        entry["writers"][0]["pages"], PAGES,
        "each page counted once for its writer"
    );
    assert_fault_count(
        &entry["write_faults"],
        2 * PAGES,
        "msync made every page fault again",
    );
    let drops = &run.json["drops"];
    assert!(drops["dedup_evictions"].as_u64().unwrap() > 0, "{drops}");
    assert!(drops["dedup_repeats"].as_u64().unwrap() > 0, "{drops}");
    assert_eq!(
        run.json["lost_events"], 0,
        "evictions are not losses: {drops}"
    );
}

/// More distinct files than the kernel's per-file map holds (65,536),
/// made as fast as one process can (no pacing: ~10,000 a second on ext4
/// here, ~70,000 on tmpfs): idle files' entries are handed over to
/// userspace while tracing, sooner once a burst half fills the map, so
/// every file is reported with its exact page and nothing is lost.
#[test]
fn more_files_than_the_kernel_map_holds_at_full_speed_are_all_reported() {
    require_root();
    if in_vm() {
        // 200,000 files under emulation take longer than the VM stage's budget.
        eprintln!("host only: 200,000 files are too slow under QEMU TCG");
        return;
    }
    for dir in [scratch_dir(), shm_dir()] {
        every_one_of_many_new_files_is_reported(dir.path(), 200_000);
    }
}

fn every_one_of_many_new_files_is_reported(dir: &Path, files: u64) {
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir)],
        &Workload::mode("many-files")
            .option("--dir", path_arg(dir))
            .option("--files", files)
            .option("--per-second", 1_000_000_000)
            .option("--sync-every", 1_000_000_000),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let drops = &run.json["drops"];
    assert_eq!(run.json["lost_events"], 0, "{}: {drops}", dir.display());
    let probe = &run.json["probe"];
    let handed_over = probe["files_handed_over"].as_u64().unwrap();
    assert!(
        handed_over >= files - (1 << 16),
        "the kernel map was emptied while tracing: {probe}"
    );
    let by_path: HashMap<&str, &serde_json::Value> = run
        .files()
        .iter()
        .filter_map(|f| Some((f["path"].as_str()?, f)))
        .collect();
    assert_eq!(run.files().len() as u64, files, "one entry per file");
    let mut faults = 0;
    for index in 0..files {
        let path = dir.join(format!("many-{index}"));
        let entry = by_path
            .get(path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not reported", path.display()));
        let page = index % 2;
        assert_eq!(
            ranges(&entry["pages_written"]),
            vec![(page, page)],
            "{entry}"
        );
        faults += entry["write_faults"].as_u64().unwrap();
    }
    // One store per file; counts taken from the kernel before and after
    // each hand-over add up.
    assert_fault_count(&faults.into(), files, "write faults over all files");
}

/// A process with 20,000 threads (a JVM's or a database's count) forks a
/// child that writes: the child is followed under `-- CMD` and its pages
/// are reported (threads take no room in the follow map), and nothing is
/// counted as a child that could not be followed.
#[test]
fn a_fork_after_twenty_thousand_threads_is_followed() {
    require_root();
    if in_vm() {
        // A 2 GiB guest's kernel.threads-max is about 16,000.
        eprintln!("host only: 20,000 threads exceed the guest's threads-max");
        return;
    }
    let dir = scratch_dir();
    let file = dir.path().join("forked.bin");
    let threads = "20000";
    let run = trace_workload(
        &[],
        &Workload::mode("threads-then-fork")
            .option("--threads", threads)
            .option("--file", path_arg(&file))
            .size_pages(8)
            .pages("2,5"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("workload: threads={threads}")),
        "{}",
        run.stderr
    );
    let drops = &run.json["drops"];
    assert_eq!(drops["children_not_followed"], 0, "{drops}");
    assert_eq!(run.json["lost_events"], 0, "{drops}");
    let entry = run.expect_file(&file);
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(2, 2), (5, 5)],
        "{entry}"
    );
    let child: u64 = run
        .stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("child="))
        .and_then(|pid| pid.parse().ok())
        .expect("the child's pid");
    let writers = entry["writers"].as_array().unwrap();
    assert!(
        writers.iter().any(|w| w["pid"] == child && w["pages"] == 2),
        "the child wrote both pages: {entry}"
    );
}

/// mmapwatch's programs, by name: each carries the `mw_` prefix (this
/// bpftool cannot list owning pids; the tests run one at a time, so these
/// names are ours).
const PROGRAMS: [&str; 19] = [
    "mw_page_fault_user",
    "mw_sys_enter_mmap",
    "mw_sys_enter_mprotect",
    "mw_sys_enter_mprotect_folios",
    "mw_sys_enter_msync",
    "mw_sys_enter_fsync",
    "mw_sys_enter_fdatasync",
    "mw_sys_enter_sync_file_range",
    "mw_sys_exit_sync",
    "mw_task_rename",
    "mw_cgroup_attach_task",
    "mw_mm_filemap_map_pages",
    "mw_sched_process_fork",
    "mw_sched_process_exit",
    "mw_sb_mark_inode_writeback",
    "mw_sb_clear_inode_writeback",
    "mw_ext4_writepages_result",
    "mw_writeback_dirty_folio",
    "mw_writeback_single_inode",
];

/// The programs of [`PROGRAMS`] this kernel loads: before 5.17 the
/// mprotect folio walk (bpf_loop) is refused and left out.
fn expected_programs() -> Vec<&'static str> {
    PROGRAMS
        .into_iter()
        .filter(|name| kernel_version() >= (5, 17) || *name != "mw_sys_enter_mprotect_folios")
        .collect()
}

/// Whether a loaded program's name is `program`'s, or its variant's for
/// Linux 5.10 to 5.16 (`_5_10`).
fn is_program(name: &str, program: &str) -> bool {
    name.strip_prefix(program)
        .is_some_and(|rest| rest.is_empty() || rest == "_5_10")
}

/// Ids of loaded programs with our names.
fn our_program_ids() -> Vec<u64> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool (installed by cargo xtask test)");
    let programs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    programs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|name| PROGRAMS.iter().any(|program| is_program(name, program)))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn after_sigkill_nothing_stays_attached_or_pinned() {
    require_root();
    let (mut trace, _) = start_trace(&["--comm", "nothing-matches"]);
    let ids = our_program_ids();
    let expected = expected_programs();
    if ids.len() != expected.len() {
        // Not left running by a failed assertion (it would hold its
        // programs, and the next run would count them too).
        trace.kill().ok();
        trace.wait().ok();
        panic!(
            "bpftool lists {} programs of ours while we run, not {}: {ids:?}",
            ids.len(),
            expected.len()
        );
    }

    trace.kill().unwrap(); // SIGKILL: no cleanup code runs.
    trace.wait().unwrap();
    let start = Instant::now();
    while ids.iter().any(|&id| program_exists(id)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "programs still loaded after SIGKILL: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(our_program_ids().is_empty());
    // Nothing pinned: mmapwatch never pins, so bpffs holds nothing of ours.
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_lowercase();
            assert!(
                !name.contains("mmapwatch") && !name.contains("page_seen"),
                "pinned: {name}"
            );
        }
    }
}
