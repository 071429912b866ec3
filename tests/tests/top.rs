//! `mmapwatch top` in a real terminal: tmux runs it over a workload, the
//! screen shows the workload's file and page count, `q` exits cleanly and
//! the terminal is restored.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    backend_under_test, mmapwatch_bin, path_arg, require_root, scratch_dir, stacks_line,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// A detached tmux session, killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        Self::start_sized(command, 120, 40)
    }

    /// A session of `columns` x `rows`.
    fn start_sized(command: &str, columns: u16, rows: u16) -> Self {
        let name = format!("mmapwatch-test-{}-{columns}x{rows}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                &columns.to_string(),
                "-y",
                &rows.to_string(),
                command,
            ])
            .status()
            .expect("tmux is needed: cargo xtask test installs it");
        assert!(status.success());
        Self { name }
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn alternate_screen(&self) -> bool {
        let output = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.name, "#{alternate_on}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim() == "1"
    }

    fn send(&self, keys: &str) {
        assert!(Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys])
            .status()
            .unwrap()
            .success());
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

/// The PAGES column of the row naming `file`.
fn pages_on_screen(screen: &str, file: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(file))?;
    let after = &line[line.find(file)? + file.len()..];
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn top_shows_the_workload_and_quits_cleanly() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("tui.bin");
    let log = dir.path().join("cmd.log");
    // CMD prints on stdout and stderr: none of it may reach the screen.
    let command = format!(
        "{} top --interval 300ms --cmd-output {} --path-prefix {} -- sh -c 'echo CMD-SAYS-HELLO; {WORKLOAD} shared --file {} --size-pages 32 --pages 0,1,2,3,4,20'; echo MMAPWATCH-EXIT=$?; sleep 60",
        mmapwatch_bin().display(),
        path_arg(&log),
        path_arg(dir.path()),
        path_arg(&file),
    );
    let tmux = Tmux::start(&command);
    let screen = tmux.wait_for("the workload's file with 6 pages", |s| {
        pages_on_screen(s, "tui.bin") == Some(6)
    });
    let backend = backend_under_test().unwrap_or_else(|| "tracepoint".into());
    assert!(
        screen.contains(&backend),
        "status bar shows the backend:\n{screen}"
    );
    assert!(
        screen.contains("lost 0"),
        "status bar shows lost events:\n{screen}"
    );
    assert!(
        tmux.alternate_screen(),
        "the dashboard runs on the alternate screen"
    );
    assert!(!screen.contains("CMD-SAYS-HELLO"), "{screen}");
    let said = std::fs::read_to_string(&log).expect("CMD's output file");
    assert!(
        said.contains("CMD-SAYS-HELLO") && said.contains("workload:"),
        "stdout and stderr of CMD go to --cmd-output: {said}"
    );

    // Detail and processes views answer keys in the real terminal too.
    tmux.send("Enter");
    tmux.wait_for("the detail view", |s| {
        s.contains("writers") && s.contains("pages 6")
    });
    tmux.send("Tab");
    tmux.wait_for("the processes view", |s| {
        s.contains("processes (") && s.contains("mw-workload")
    });
    // Filter the processes, open the writer's files, come back.
    for key in ["/", "m", "w", "Enter"] {
        tmux.send(key);
    }
    tmux.wait_for("the filtered processes", |s| {
        s.contains("processes matching /mw (1)")
    });
    tmux.send("Enter");
    tmux.wait_for("the workload's files", |s| {
        s.contains("of mw-workload[") && pages_on_screen(s, "tui.bin") == Some(6)
    });
    tmux.send("Escape");
    tmux.wait_for("the processes view again", |s| {
        s.contains("processes matching /mw (1)")
    });

    tmux.send("q");
    let screen = tmux.wait_for("a clean exit", |s| s.contains("MMAPWATCH-EXIT="));
    assert!(screen.contains("MMAPWATCH-EXIT=0"), "{screen}");
    assert!(!tmux.alternate_screen(), "the terminal is restored");
    assert!(
        screen.contains(&format!("CMD's output is in {}", path_arg(&log))),
        "{screen}"
    );
    assert!(!screen.contains("panicked"), "{screen}");
}

/// `top --batch` prints plain tables with no terminal: the written file
/// with its exact page count, numbers right-aligned, and CMD's exit code.
#[test]
fn batch_mode_prints_tables_without_a_terminal() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("batch.bin");
    let script = format!(
        "echo CMD-SAYS-HELLO; {WORKLOAD} shared --file {} --size-pages 8 --pages 1,2,6; exit 3",
        path_arg(&file)
    );
    let output = std::process::Command::new(mmapwatch_bin())
        .args(["top", "--batch", "--interval", "200ms", "--path-prefix"])
        .arg(dir.path())
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run top --batch");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{text}");
    // CMD's output goes to a file that stderr names, never into the tables.
    assert!(!text.contains("CMD-SAYS-HELLO"), "{text}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = stderr
        .lines()
        .find_map(|l| l.strip_prefix("mmapwatch: CMD's output goes to "))
        .unwrap_or_else(|| panic!("no CMD output file named: {stderr}"));
    let said = std::fs::read_to_string(log).expect("CMD's output file");
    assert!(said.contains("CMD-SAYS-HELLO"), "{said}");
    let _ = std::fs::remove_file(log);
    assert!(text.starts_with("mmapwatch top: "), "{text}");
    let row = text
        .lines()
        .rev()
        .find(|line| line.ends_with(&path_arg(&file)))
        .unwrap_or_else(|| panic!("no row for the file:\n{text}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[0], "3", "pages written: {row}");
    assert_eq!(columns[4], "1", "writers: {row}");
    // The workload's one msync (memmap2's flush) at its end.
    assert_eq!(columns[5], "1", "syncs: {row}");
    // The writer by name and pid, as `top -b` shows commands.
    assert!(
        columns.iter().any(|c| c.starts_with("mw-workload[")),
        "writer named: {row}"
    );
    // Each table says when (UTC, RFC 3339), as `top -b` heads each frame.
    let heading = text.lines().next().unwrap_or_default();
    let when = heading
        .strip_prefix("mmapwatch top: ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(when).is_ok(),
        "no time in the heading: {heading}"
    );
}

/// `top --batch --record FILE`: `mmapwatch report FILE` gives what the
/// session saw, exact pages, writer and sync, as `trace` would.
#[test]
fn batch_mode_records_a_session_that_report_replays() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("recorded.bin");
    let recording = dir.path().join("top.rec");
    let script = format!(
        "{WORKLOAD} shared --file {} --size-pages 8 --pages 1,2,6",
        path_arg(&file)
    );
    let output = std::process::Command::new(mmapwatch_bin())
        .args(["top", "--batch", "-d", "200ms", "--record"])
        .arg(&recording)
        .arg("--path-prefix")
        .arg(dir.path())
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run top --batch");
    assert!(output.status.success(), "{output:?}");
    let replay = std::process::Command::new(mmapwatch_bin())
        .args(["report", "--json"])
        .arg(&recording)
        .output()
        .expect("run report");
    assert!(replay.status.success(), "{replay:?}");
    let report: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{report:#}");
    let entry = &files[0];
    assert_eq!(
        entry["path"],
        path_arg(&std::fs::canonicalize(&file).unwrap())
    );
    assert_eq!(entry["exact_pages"], serde_json::json!([[1, 2], [6, 6]]));
    assert_eq!(entry["writers"][0]["comm"], "mw-workload");
    assert_eq!(entry["syncs"]["msync"]["calls"], 1, "{entry:#}");
}

/// `top --batch | head -1`: once the reader is gone, top ends quietly with
/// exit 0, as `top -b | head` does (it panicked on the broken pipe).
#[test]
fn batch_mode_into_a_reader_that_leaves_ends_quietly() {
    use std::io::{BufRead as _, BufReader};
    require_root();
    let dir = scratch_dir();
    let mut top = Command::new(mmapwatch_bin())
        .args(["top", "--batch", "-d", "0.2", "--path-prefix"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run top --batch");
    let mut first = String::new();
    BufReader::new(top.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a first line");
    assert!(first.starts_with("mmapwatch top:"), "{first}");
    // The reader left (the BufReader and its pipe are dropped above).
    let deadline = Instant::now() + Duration::from_secs(20);
    while top.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "top --batch kept running with no reader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = top.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A file renamed after its write is shown under its name as it is now, at
/// the next refresh.
#[test]
fn batch_mode_shows_a_renamed_file_by_its_new_name() {
    require_root();
    let dir = scratch_dir();
    let old = dir.path().join("before-rename.bin");
    let new = dir.path().join("after-rename.bin");
    let script = "import mmap,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nm=mmap.mmap(fd,4*4096)\nm[4096]=1\nm.flush()\ntime.sleep(0.5)\nos.rename(sys.argv[1],sys.argv[2])\ntime.sleep(0.8)";
    let output = std::process::Command::new(mmapwatch_bin())
        .args([
            "top",
            "--batch",
            "-T",
            "--interval",
            "200ms",
            "--path-prefix",
        ])
        .arg(dir.path())
        .args(["--", "python3", "-c", script])
        .arg(&old)
        .arg(&new)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run top --batch");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    // The last table: after the rename.
    let last = text.rsplit("mmapwatch top: ").next().unwrap_or_default();
    assert!(
        last.lines().any(|l| l.ends_with(&path_arg(&new))),
        "the new name is shown:\n{text}"
    );
    assert!(
        !last.lines().any(|l| l.ends_with(&path_arg(&old))),
        "the old name is gone:\n{text}"
    );
    // Before the rename, the name it was written under.
    assert!(
        text.lines().any(|l| l.ends_with(&path_arg(&old))),
        "the first tables show the old name:\n{text}"
    );
    // -T: every row starts with its table's time, as `vmstat -t`.
    for table in text.split("mmapwatch top: ").skip(1) {
        let when = table.split(',').next().unwrap_or_default();
        for row in table.lines().filter(|l| l.contains(".bin")) {
            assert!(row.starts_with(when), "row without its time {when}: {row}");
        }
        assert!(humantime::parse_rfc3339(when).is_ok(), "{table}");
    }
}

/// The dashboard at the smallest and a large common terminal: the file's
/// row with its exact pages, the column titles and the status bar, then a
/// clean exit; at 80 columns the path keeps its file name.
#[test]
fn the_dashboard_reads_at_80x24_and_200x60() {
    require_root();
    for (columns, rows) in [(80u16, 24u16), (200, 60)] {
        let dir = scratch_dir();
        let file = dir.path().join(format!("sized-{columns}x{rows}.bin"));
        let command = format!(
            "{} top --interval 300ms --path-prefix {} -- sh -c '{WORKLOAD} shared --file {} --size-pages 16 --pages 0,3,9; sleep 30'; echo MMAPWATCH-EXIT=$?; sleep 60",
            mmapwatch_bin().display(),
            path_arg(dir.path()),
            path_arg(&file),
        );
        let tmux = Tmux::start_sized(&command, columns, rows);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let screen = tmux.wait_for("the file with its 3 pages", |s| {
            pages_on_screen(s, &name) == Some(3)
        });
        assert!(
            screen.contains("PATH") && screen.contains("PAGES"),
            "{screen}"
        );
        assert!(screen.contains("? help"), "the status bar:\n{screen}");
        assert!(
            screen
                .lines()
                .all(|l| l.chars().count() <= columns as usize),
            "nothing past the edge:\n{screen}"
        );
        tmux.send("q");
        let screen = tmux.wait_for("a clean exit", |s| s.contains("MMAPWATCH-EXIT="));
        assert!(!screen.contains("panicked"), "{screen}");
        assert!(!tmux.alternate_screen(), "the terminal is restored");
    }
}

/// `top --stacks`: the detail view names the code that wrote the file,
/// to its lines (the C writer of the trace suite's stacks tests).
#[test]
fn the_detail_view_names_the_call_sites_with_stacks() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("stk.bin");
    let writer = concat!(env!("OUT_DIR"), "/stacks-fp");
    let command = format!(
        "{} top --interval 300ms --stacks --cmd-output {} --path-prefix {} -- {writer} {} 8 300; echo MMAPWATCH-EXIT=$?; sleep 60",
        mmapwatch_bin().display(),
        path_arg(&dir.path().join("cmd.log")),
        path_arg(dir.path()),
        path_arg(&file),
    );
    let tmux = Tmux::start(&command);
    tmux.wait_for("the writer's file with 8 pages", |s| {
        pages_on_screen(s, "stk.bin") == Some(8)
    });
    tmux.send("Enter");
    let even = format!(
        "store_page (stacks.c:{}) < write_even (stacks.c:{})",
        stacks_line("store_page"),
        stacks_line("write_even")
    );
    let odd = format!(
        "write_odd (stacks.c:{}) < main (stacks.c:{})",
        stacks_line("write_odd"),
        stacks_line("main_odd")
    );
    let screen = tmux.wait_for("its call sites", |s| s.contains(&even) && s.contains(&odd));
    for line in screen.lines().filter(|l| l.contains("(stacks.c:")) {
        assert!(
            line.trim_start().starts_with("4 "),
            "4 pages a site: {line}"
        );
    }
    tmux.send("q");
    tmux.wait_for("a clean exit", |s| s.contains("MMAPWATCH-EXIT="));
}
