//! mmapwatch runs as root on shared hosts: an unprivileged local user
//! (nobody, uid 65534) plants links, FIFOs, directories and files where
//! mmapwatch writes, and root's files must stay untouched, with nothing
//! hanging.

use std::{
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{mmapwatch, mmapwatch_bin, path_arg, require_root, scratch_dir};

const NOBODY: u32 = 65534;
const VICTIM_TEXT: &str = "root's own file, never to be overwritten\n";
const CMD_TEXT: &str = "CMD-OUTPUT-FROM-ROOT";

/// A world-writable sticky directory, as /tmp is, and a root-only file
/// an attacker would like root to overwrite.
struct SharedTmp {
    _scratch: tempfile::TempDir,
    tmp: PathBuf,
    victim: PathBuf,
}

impl SharedTmp {
    fn new() -> Self {
        let scratch = scratch_dir();
        // nobody must reach the shared directory through the scratch one.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = scratch.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let private = scratch.path().join("root-only");
        std::fs::create_dir(&private).unwrap();
        let victim = private.join("victim");
        std::fs::write(&victim, VICTIM_TEXT).unwrap();
        Self {
            _scratch: scratch,
            tmp,
            victim,
        }
    }

    /// Runs a shell script as nobody in the shared directory.
    fn as_attacker(&self, script: &str) {
        let status = Command::new("sh")
            .args(["-ec", script])
            .current_dir(&self.tmp)
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .unwrap();
        assert!(status.success(), "attacker script failed: {script}");
    }

    /// `top --batch -- CMD` with this directory as TMPDIR, one table.
    fn top_batch_running(&self, command: &[&str]) -> Output {
        run_bounded(
            Command::new(mmapwatch_bin())
                .env("TMPDIR", &self.tmp)
                .args([
                    "top",
                    "--batch",
                    "--count",
                    "1",
                    "--interval",
                    "200ms",
                    "--",
                ])
                .args(command),
            Duration::from_secs(60),
        )
    }

    fn assert_victim_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.victim).unwrap(), VICTIM_TEXT);
    }
}

/// Runs a command with a deadline: a planted FIFO must never hang it.
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mmapwatch");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().ok();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{command:?} hung for {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The old predictable log name, planted at the next 2,000 pids as
/// links to root's file, FIFOs, directories and attacker-owned files:
/// `top -- CMD` must put CMD's output in a new private file of its own.
#[test]
fn top_never_opens_a_planted_name_for_cmds_output() {
    require_root();
    let shared = SharedTmp::new();
    let next_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let victim = shared.victim.display();
    // Four kinds in turn, so each pid's name has one of them.
    shared.as_attacker(&format!(
        "i={next_pid}; end=$((i + 2000)); while [ $i -lt $end ]; do
           n=mmapwatch-top-$i.log
           case $((i % 4)) in
             0) ln -s {victim} $n ;;
             1) mkfifo $n ;;
             2) mkdir $n ;;
             3) : > $n ;;
           esac
           i=$((i + 1))
         done"
    ));
    let output = shared.top_batch_running(&["sh", "-c", &format!("echo {CMD_TEXT}")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    shared.assert_victim_untouched();
    // Every planted file is as the attacker left it: empty, or not a file.
    for entry in std::fs::read_dir(&shared.tmp).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.uid() == NOBODY && meta.is_file() {
            assert_eq!(meta.len(), 0, "{} was written", entry.path().display());
        }
    }
    // CMD's output is in the private file named on stderr.
    let named = stderr
        .lines()
        .find_map(|line| line.strip_prefix("mmapwatch: CMD's output is in "))
        .unwrap_or_else(|| panic!("the log is not named: {stderr}"));
    let log = Path::new(named);
    assert_eq!(log.parent(), Some(shared.tmp.as_path()), "{stderr}");
    let meta = log.symlink_metadata().unwrap();
    assert!(meta.is_file());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(std::fs::read_to_string(log).unwrap().trim(), CMD_TEXT);
}

/// A CMD that says nothing leaves no log behind.
#[test]
fn top_removes_an_empty_log() {
    require_root();
    let shared = SharedTmp::new();
    let output = shared.top_batch_running(&["true"]);
    assert!(output.status.success());
    assert_eq!(std::fs::read_dir(&shared.tmp).unwrap().count(), 0);
}

/// Links, FIFOs and files that nobody planted at the names root gave to
/// `-o`, `-e` and `--cmd-output` in a shared directory are refused, with
/// one line, before anything is written or truncated.
#[test]
fn named_outputs_refuse_what_another_user_planted() {
    require_root();
    let shared = SharedTmp::new();
    let victim = shared.victim.display();
    shared.as_attacker(&format!(
        "ln -s {victim} report.json; mkfifo events.jsonl; echo attacker > cmd.log"
    ));
    let report = path_arg(&shared.tmp.join("report.json"));
    let events = path_arg(&shared.tmp.join("events.jsonl"));
    let cmd_log = path_arg(&shared.tmp.join("cmd.log"));
    let cases: [(&[&str], &str); 3] = [
        (
            &["trace", "--duration", "1s", "-o", &report],
            "symbolic link owned by uid 65534",
        ),
        (
            &["trace", "--duration", "1s", "--events", &events],
            "belongs to uid 65534",
        ),
        (
            &["top", "--batch", "--cmd-output", &cmd_log, "--", "true"],
            "belongs to uid 65534",
        ),
    ];
    for (args, needle) in cases {
        let output = run_bounded(&mut mmapwatch(args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    shared.assert_victim_untouched();
    assert_eq!(
        std::fs::read_to_string(shared.tmp.join("cmd.log")).unwrap(),
        "attacker\n"
    );
    // Root's own link in the same directory is followed, as `>` would.
    let own = shared.tmp.join("own.json");
    let target = shared.tmp.join("own-target.json");
    std::os::unix::fs::symlink(&target, &own).unwrap();
    let output = run_bounded(
        &mut mmapwatch(&["trace", "--duration", "1s", "--json", "-o", &path_arg(&own)]),
        Duration::from_secs(60),
    );
    assert!(output.status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
    assert!(report["files"].is_array(), "{report}");
}

/// An unprivileged run changes nothing: FILE keeps its bytes.
#[test]
fn an_unprivileged_run_leaves_its_output_files_untouched() {
    require_root();
    let shared = SharedTmp::new();
    let file = shared.tmp.join("existing");
    std::fs::write(&file, "precious").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let file = path_arg(&file);
    for args in [
        &["trace", "--duration", "1s", "-o", &file][..],
        &["trace", "--duration", "1s", "--events", &file],
        &["top", "--batch", "--cmd-output", &file, "--", "true"],
        &["export", "--listen", "127.0.0.1:0"],
    ] {
        let mut command = mmapwatch(args);
        command.uid(NOBODY).gid(NOBODY);
        let output = run_bounded(&mut command, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("must run as root"), "{stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(shared.tmp.join("existing")).unwrap(),
        "precious"
    );
}
