//! The command line's contract: exit codes, signals, bad input, closed pipes, where the report and the stream go, completions, version, privileges.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use integration_tests::{
    expect_one_line_failure, function_hooks_under_test, identity, mmapwatch, mmapwatch_bin,
    path_arg, ranges, require_root, run, scratch_dir, start_trace, Workload,
};

use super::{trace_workload, COMM, WORKLOAD};

#[test]
fn command_exit_code_is_passed_through() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("fails.bin");
    // Page 99 is outside the mapping: the workload exits 1 before writing.
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &Workload::new("shared", &file).size_pages(4).pages(99),
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.files().is_empty());
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
        let status = Workload::new("shared", &file)
            .size_pages(4)
            .pages("2,3")
            .command(WORKLOAD)
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
        &["trace", "-o", "-", "--", "true"][..],
        &["trace", "--duration", "1s"][..],
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

/// Without `-o`, a traced command's standard output stays its own, byte
/// for byte, and the report goes to standard error, as strace and `perf
/// stat` do; `-o -` puts it on standard output after CMD's.
#[test]
fn a_traced_commands_stdout_stays_its_own_and_the_report_goes_to_stderr() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let script = say_hi_then_write_pages_1_and_6(&file);
    let traced = |extra: &[&str]| {
        let mut args = vec!["trace", "-j", "--path-prefix"];
        let prefix = path_arg(dir.path());
        args.push(&prefix);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let output = run(&mut mmapwatch(&args));
        assert!(output.status.success(), "{output:?}");
        output
    };
    let pages_of = |report: &str| {
        let json: serde_json::Value = serde_json::from_str(report).expect("the report is JSON");
        assert_eq!(json["files"].as_array().map(Vec::len), Some(1), "{json:#}");
        ranges(&json["files"][0]["pages_written"])
    };
    let output = traced(&[]);
    assert_eq!(output.stdout, b"hi\n", "stdout is CMD's alone");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = stderr
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no report on stderr: {stderr}"));
    assert_eq!(pages_of(report), vec![(1, 1), (6, 6)]);

    let output = traced(&["-o", "-"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout
        .strip_prefix("hi\n")
        .unwrap_or_else(|| panic!("CMD's line first: {stdout}"));
    assert_eq!(pages_of(report.trim()), vec![(1, 1), (6, 6)]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains('{'));

    expect_one_line_failure(
        &mut mmapwatch(&["trace", "-o", "-", "--events", "-", "--", "true"]),
        2,
        "standard output",
    );
}

/// `trace --events - [extra] --path-prefix DIR -- sh -c ...`, CMD saying
/// hi and writing pages 1 and 6 of `file`; it must succeed.
fn stream_of_pages_1_and_6(
    dir: &std::path::Path,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let script = say_hi_then_write_pages_1_and_6(file);
    let prefix = path_arg(dir);
    let mut args = vec!["trace", "--events", "-"];
    args.extend(extra);
    args.extend(["--path-prefix", &prefix, "--", "sh", "-c", &script]);
    let output = run(&mut mmapwatch(&args));
    assert!(output.status.success(), "{output:?}");
    output
}

/// `--events -`: standard output is the event stream alone, one JSON
/// object per line (`jq` reads it), with the exact pages and the writer;
/// CMD's own output and the report go to standard error.
#[test]
fn the_event_stream_on_stdout_carries_nothing_else() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("data.bin");
    let output = stream_of_pages_1_and_6(dir.path(), &file, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l == "hi"), "CMD's output: {stderr}");
    assert!(stderr.contains(&path_arg(&file)), "the report: {stderr}");
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

/// `--events-format text`: a header, then a readable line per event
/// (as bcc's tools print them) with the same events as the JSON lines.
#[test]
fn the_text_stream_is_a_readable_line_per_event() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("text-stream.bin");
    let output = stream_of_pages_1_and_6(dir.path(), &file, &["--events-format", "text"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["TIME", "TYPE", "WRITER", "USER", "PAGES", "DETAIL", "PATH"]
    );
    let path = path_arg(&file);
    let events: Vec<(String, String, String, String)> = lines
        .filter(|line| !line.contains(" writeback "))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert!(
                line.ends_with(&format!("  {path}")),
                "the path last, whole: {line}"
            );
            let writer = columns[2].split('[').next().unwrap().to_string();
            (
                columns[1].into(),
                writer,
                columns[3].into(),
                columns[4].into(),
            )
        })
        .collect();
    let event = |kind: &str, pages: &str| (kind.into(), COMM.into(), "root".into(), pages.into());
    assert_eq!(
        events,
        [
            event("write", "1"),
            event("write", "6"),
            event("sync", "0-7")
        ],
        "{stdout}"
    );
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
    for command in ["trace", "top", "export", "report", "doctor"] {
        assert!(roff.contains(command), "no {command} in the man page");
        // And a page of its own, with examples.
        let man = run(&mut mmapwatch(&["manpage", command]));
        let page = String::from_utf8_lossy(&man.stdout);
        assert!(man.status.success(), "{man:?}");
        assert!(
            page.contains(&format!(".TH mmapwatch-{command} 1")),
            "{page}"
        );
        assert!(page.contains(".SH EXAMPLES"), "{page}");
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
