//! Who wrote: several processes, descendants of CMD, `--pid` and `--comm` filters, renamed writers and exec.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use integration_tests::{
    identity, path_arg, ranges, require_root, scratch_dir, start_trace, trace_command, Cgroup2,
    Workload,
};

use super::{trace_workload, COMM, WORKLOAD};

#[test]
fn two_processes_are_both_attributed() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("shared-by-two.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &Workload::new("two-writers", &file)
            .size_pages(16)
            .option("--first", "0,1,2")
            .option("--second", "10,11"),
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
        &Workload::new("grandchild", &file)
            .size_pages(8)
            .pages("4,5"),
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

/// System-wide mode: no CMD, stop on --duration, filter by --pid.
#[test]
fn pid_filter_traces_only_that_process() {
    require_root();
    let dir = scratch_dir();
    let watched = dir.path().join("watched.bin");
    let ignored = dir.path().join("ignored.bin");
    let spawn_waiting = |file: &std::path::Path| {
        let mut child = Workload::new("wait-then-shared", file)
            .size_pages(4)
            .pages("1,2")
            .command(WORKLOAD)
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
    let workload = Workload::new("shared", &file).size_pages(4).pages(1);
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
    let workload = Workload::new("renamed-writers", &file)
        .option("--private-file", path_arg(&dir.path().join("private.bin")))
        .option("--child-name", "mw-new-child")
        .option("--parent-name", "mw-new-parent");
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

/// A cgroup made for a test, shaped as a container runtime names its
/// scopes, removed (with a cgroup2 mount made for it) when dropped.
struct ContainerCgroup {
    root: std::path::PathBuf,
    slice: std::path::PathBuf,
    scope: std::path::PathBuf,
    /// Dropped after the scope and slice (fields drop in order).
    _cgroup2: Cgroup2,
}

impl ContainerCgroup {
    fn new(id: &str) -> Self {
        let cgroup2 = Cgroup2::mounted();
        let root = cgroup2.root.clone();
        let slice = root.join(format!("mmapwatch-test-{}.slice", std::process::id()));
        let scope = slice.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("make the cgroups");
        Self {
            root,
            slice,
            scope,
            _cgroup2: cgroup2,
        }
    }

    /// The scope's path as the report gives it: under the cgroup2 root.
    fn path(&self) -> String {
        format!(
            "/{}",
            self.scope.strip_prefix(&self.root).unwrap().display()
        )
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.scope);
        let _ = std::fs::remove_dir(&self.slice);
    }
}

/// A writer in a container's cgroup is named with it: the cgroup path and
/// the container id in the JSON's writers and the event stream, and
/// `name[pid](user)@ctr:ID12` in the table, as the exporter's labels name it.
#[test]
fn a_writer_in_a_container_cgroup_is_named_by_its_container() {
    require_root();
    let id = "4f1c2a7e9b3d".repeat(5) + "0a1b";
    let cgroup = ContainerCgroup::new(&id);
    let dir = scratch_dir();
    let file = dir.path().join("in-container.bin");
    let events = dir.path().join("events.ndjson");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {WORKLOAD} shared --file {} --size-pages 4 --pages 1,2",
        path_arg(&cgroup.scope),
        path_arg(&file)
    );
    let prefix = path_arg(dir.path());
    let events_arg = path_arg(&events);
    let run = trace_command(
        "sh",
        &["--path-prefix", &prefix, "--events", &events_arg],
        &["-c", &script],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    let writer = &entry["writers"][0];
    let container = format!("container:{}", &id[..12]);
    assert_eq!(writer["cgroup"], cgroup.path().as_str(), "{entry:#}");
    assert_eq!(writer["container"], container.as_str(), "{entry:#}");
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 2)]);
    let lines = std::fs::read_to_string(&events).expect("the event stream");
    let writes: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .filter(|line: &serde_json::Value| line["type"] == "write")
        .collect();
    assert_eq!(writes.len(), 2, "{lines}");
    for line in &writes {
        assert_eq!(line["container"], container.as_str(), "{line}");
        assert_eq!(line["cgroup"], cgroup.path().as_str(), "{line}");
    }
    let table = Command::new(integration_tests::mmapwatch_bin())
        .args(["trace", "-o", "-", "--path-prefix", &prefix, "--"])
        .args(["sh", "-c", &script])
        .output()
        .expect("trace, as a table");
    let table = String::from_utf8_lossy(&table.stdout);
    let mark = format!("{COMM}[");
    let row = table
        .lines()
        .find(|line| line.contains("in-container.bin"))
        .unwrap_or_else(|| panic!("no row:\n{table}"));
    assert!(
        row.contains(&mark) && row.contains(&format!("](root)@ctr:{}:2", &id[..12])),
        "{table}"
    );
}

/// `--container ID` and `--cgroup PATH` keep only the writers inside,
/// followed into a cgroup made below the container's after the trace
/// started; the writer outside is not reported. An id no container has is
/// one line and exit 2.
#[test]
fn container_and_cgroup_filters_keep_only_the_writers_inside() {
    require_root();
    let id = "9a8b7c6d5e4f".repeat(5) + "0a1b";
    let cgroup = ContainerCgroup::new(&id);
    let child = path_arg(&cgroup.scope.join("worker"));
    let dir = scratch_dir();
    let inside = dir.path().join("inside.bin");
    let outside = dir.path().join("outside.bin");
    let script = format!(
        "mkdir {child} && \
         sh -c 'echo $$ > {child}/cgroup.procs && exec {WORKLOAD} shared --file {} --size-pages 4 --pages 1,2' && \
         {WORKLOAD} shared --file {} --size-pages 4 --pages 3; \
         rmdir {child}",
        path_arg(&inside),
        path_arg(&outside),
    );
    let slice = format!(
        "/{}",
        cgroup.slice.strip_prefix(&cgroup.root).unwrap().display()
    );
    let prefix = path_arg(dir.path());
    for selector in [["--container", &id[..12]], ["--cgroup", slice.as_str()]] {
        let mut extra = vec!["--path-prefix", &prefix];
        extra.extend(selector);
        let run = trace_command("sh", &extra, &["-c", &script]);
        assert!(run.status.success(), "{selector:?}: {}", run.stderr);
        let entry = run.expect_file(&inside);
        assert_eq!(
            ranges(&entry["pages_written"]),
            vec![(1, 2)],
            "{selector:?}"
        );
        assert_eq!(run.files().len(), 1, "{selector:?}: {:#}", run.json);
    }
    integration_tests::expect_one_line_failure(
        integration_tests::mmapwatch(&["trace", "--container", "ffffffffffff", "--", "true"])
            .stdin(std::process::Stdio::null()),
        2,
        "--container ffffffffffff: no cgroup of a running container has that id",
    );
}
