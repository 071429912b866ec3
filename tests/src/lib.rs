//! Helpers for mmapwatch's integration tests: run the real binary as root
//! against real page faults and pick the report apart.

use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use serde_json::Value;

/// The backend the suite runs with: `MMAPWATCH_BACKEND` (set by `cargo
/// xtask vm-test`, read by mmapwatch itself), or None for `auto`.
pub fn backend_under_test() -> Option<String> {
    std::env::var("MMAPWATCH_BACKEND")
        .ok()
        .filter(|backend| backend != "auto")
}

/// The fentry and kprobe backends see what tracepoints cannot: the
/// filesystem's page_mkwrite hook and per-page writeback times.
pub fn function_hooks_under_test() -> bool {
    matches!(backend_under_test().as_deref(), Some("fentry" | "kprobe"))
}

/// Inside the VM of `cargo xtask vm-test`, whose kernel has every backend.
pub fn in_vm() -> bool {
    std::env::var_os("MMAPWATCH_IN_VM").is_some()
}

/// The running kernel's (major, minor) version, from its release string.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// The mmapwatch binary under test: `MMAPWATCH_BIN` (set by `cargo xtask
/// test`), else the workspace's debug build.
pub fn mmapwatch_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MMAPWATCH_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mmapwatch");
    assert!(
        path.exists(),
        "{} is missing: build it (cargo build -p probe-user) or set MMAPWATCH_BIN",
        path.display()
    );
    path
}

/// These tests load eBPF programs: they must run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and must run as root (cargo xtask test)"
    );
}

/// A scratch directory on the workspace's filesystem (ext4 here, so writes
/// go through page_mkwrite and writeback, unlike tmpfs).
pub fn scratch_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/itest-scratch");
    std::fs::create_dir_all(&base).expect("create scratch base");
    let base = std::fs::canonicalize(&base).expect("canonical scratch base");
    tempfile::Builder::new()
        .prefix("case-")
        .tempdir_in(&base)
        .expect("scratch dir")
}

/// A scratch directory on tmpfs.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mmapwatch-itest-")
        .tempdir_in("/dev/shm")
        .expect("shm dir")
}

/// A fresh xfs filesystem on a loop device, mounted on a scratch
/// directory and unmounted when dropped: xfs caches files in large folios
/// of other orders than ext4 and has its own page_mkwrite.
pub struct XfsDir {
    mount: tempfile::TempDir,
    image: PathBuf,
}

impl XfsDir {
    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for XfsDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// An xfs scratch filesystem (300 MiB sparse image, xfs's minimum). Needs
/// mkfs.xfs (xfsprogs, installed by `cargo xtask test`) and xfs in the
/// kernel; fails loudly without them.
pub fn xfs_dir() -> XfsDir {
    let mount = scratch_dir();
    let image = mount.path().with_extension("xfs.img");
    let file = std::fs::File::create(&image).expect("xfs image");
    file.set_len(300 << 20).expect("size the xfs image");
    drop(file);
    let made = run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&image));
    assert!(
        made.status.success(),
        "mkfs.xfs (xfsprogs): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mounted = run(Command::new("mount")
        .args(["-t", "xfs", "-o", "loop"])
        .arg(&image)
        .arg(mount.path()));
    assert!(
        mounted.status.success(),
        "mounting xfs: {}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    XfsDir { mount, image }
}

/// (dev as "MAJ:MIN", ino, canonical path) of an existing file.
pub fn identity(path: &Path) -> (String, u64, String) {
    let meta = std::fs::metadata(path).expect("stat");
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let canonical = std::fs::canonicalize(path).expect("canonicalize");
    (
        format!("{major}:{minor}"),
        meta.ino(),
        canonical.display().to_string(),
    )
}

pub struct TraceRun {
    pub status: std::process::ExitStatus,
    pub json: Value,
    pub stderr: String,
}

impl TraceRun {
    /// Workload lines `workload: key=value` from stderr.
    pub fn workload_value(&self, key: &str) -> Option<String> {
        self.stderr.lines().find_map(|line| {
            line.strip_prefix("workload: ")
                .and_then(|kv| kv.strip_prefix(key))
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        })
    }

    pub fn files(&self) -> &Vec<Value> {
        self.json["files"].as_array().expect("files array")
    }

    /// The report entry for `path` (matched by inode and device).
    pub fn file(&self, path: &Path) -> Option<&Value> {
        let (dev, ino, _) = identity(path);
        self.files()
            .iter()
            .find(|f| f["ino"].as_u64() == Some(ino) && f["dev"].as_str() == Some(dev.as_str()))
    }

    pub fn expect_file(&self, path: &Path) -> &Value {
        self.file(path).unwrap_or_else(|| {
            panic!(
                "{} not in the report:\n{}\nstderr:\n{}",
                path.display(),
                serde_json::to_string_pretty(&self.json).unwrap_or_default(),
                self.stderr
            )
        })
    }
}

pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"))
}

/// The arguments of one `mw-workload` run, said as what it stores: a
/// mode, its file, its size and the pages it writes, and the mode's own
/// flags. The tests build it instead of spelling the command line.
#[derive(Clone, Debug)]
pub struct Workload {
    args: Vec<String>,
}

impl Workload {
    /// `MODE --file FILE`.
    pub fn new(mode: &str, file: &Path) -> Self {
        Self::mode(mode).option("--file", path_arg(file))
    }

    /// A mode that works on no one file (`many-files --dir DIR`).
    pub fn mode(mode: &str) -> Self {
        Self {
            args: vec![mode.into()],
        }
    }

    /// The file's size in pages.
    pub fn size_pages(self, pages: u64) -> Self {
        self.option("--size-pages", pages)
    }

    /// The pages stored to, as mw-workload reads them (`2,6` or `0-3`).
    pub fn pages(self, pages: impl std::fmt::Display) -> Self {
        self.option("--pages", pages)
    }

    /// A flag of the mode (`--read-first`).
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.into());
        self
    }

    /// An option of the mode with its value.
    pub fn option(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.args.push(name.into());
        self.args.push(value.to_string());
        self
    }

    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// The run as a command of `workload_bin`, not started.
    pub fn command(&self, workload_bin: &str) -> Command {
        let mut command = Command::new(workload_bin);
        command.args(&self.args);
        command
    }
}

/// `mmapwatch trace --json -o - [extra] -- WORKLOAD_BIN [workload]`: the
/// report on stdout (with `-- CMD` it goes to stderr by default), the
/// workload's own lines on stderr.
pub fn trace_command(workload_bin: &str, extra: &[&str], workload: &[&str]) -> TraceRun {
    let output = run(Command::new(mmapwatch_bin())
        .args(["trace", "--json", "-o", "-"])
        .args(extra)
        .arg("--")
        .arg(workload_bin)
        .args(workload));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "mmapwatch printed no JSON ({err}); status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        )
    });
    TraceRun {
        status: output.status,
        json,
        stderr,
    }
}

/// Inclusive ranges from the report, as tuples.
pub fn ranges(value: &Value) -> Vec<(u64, u64)> {
    value
        .as_array()
        .expect("ranges array")
        .iter()
        .map(|r| (r[0].as_u64().expect("first"), r[1].as_u64().expect("last")))
        .collect()
}

/// Asserts a fault counter: at least one fault per store the workload made
/// to a write-protected page, and at most 1% more. The kernel can take a
/// store's fault twice: `page_mkwrite` runs with the page table unlocked,
/// and when the entry changed meanwhile (reclaim clearing its accessed bit,
/// writeback) `finish_mkwrite_fault` returns VM_FAULT_NOPAGE and the store
/// faults again. Both are real faults, and every backend counts both. Under
/// 100 faults the count must be exact, so a double count still shows.
pub fn assert_fault_count(counted: &Value, expected: u64, what: &str) {
    let counted = counted
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: not a count: {counted}"));
    let retries = expected / 100;
    assert!(
        (expected..=expected + retries).contains(&counted),
        "{what}: {counted} faults, expected {expected} (plus up to {retries} retried by the kernel)"
    );
}

pub fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// `mmapwatch ARGS`, not started.
pub fn mmapwatch(args: &[&str]) -> Command {
    let mut command = Command::new(mmapwatch_bin());
    command.args(args);
    command
}

/// `mmapwatch trace ARGS` in the background, returned once its probes are
/// attached, with the "tracing ..." line it printed. Only that line is read
/// from stderr (byte by byte: nothing else is buffered away), so the rest
/// is still there for `wait_with_output`.
pub fn start_trace(args: &[&str]) -> (Child, String) {
    let mut child = mmapwatch(&["trace"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mmapwatch trace");
    let stderr = child.stderr.as_mut().expect("piped stderr");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stderr.read(&mut byte).expect("read stderr") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    assert!(
        line.contains("tracing"),
        "mmapwatch did not start tracing: {line}"
    );
    (child, line)
}

/// Bad input: one line on stderr containing `needle`, exit `code`, and no
/// panic or backtrace.
pub fn expect_one_line_failure(command: &mut Command, code: i32, needle: &str) {
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{command:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{command:?}: one line expected:\n{stderr}"
    );
    assert!(stderr.contains(needle), "{command:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

/// A user for the test: made with useradd where the host's passwd can be
/// written (and removed after), else a bare uid no passwd names (VM guests
/// share the host's root read-only): the kernel's ids are tested either
/// way, the name where the test could make one.
pub struct TestUser {
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn new(tag: &str, fallback_uid: u32) -> Self {
        let name = format!("mwt{tag}{}", std::process::id() % 100_000);
        let made = std::process::Command::new("useradd")
            .args([
                "--no-create-home",
                "--user-group",
                "--shell",
                "/bin/false",
                &name,
            ])
            .output()
            .is_ok_and(|out| out.status.success());
        if !made {
            assert!(in_vm(), "useradd {name} failed on the host");
            return Self {
                name: None,
                uid: fallback_uid,
                gid: fallback_uid,
            };
        }
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, &name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        Self {
            uid: id("-u"),
            gid: id("-g"),
            name: Some(name),
        }
    }

    pub fn spec(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// What `--user` takes: the name where there is one.
    pub fn arg(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = std::process::Command::new("userdel").arg(name).output();
        }
    }
}

/// The cgroup2 hierarchy: where it is mounted, or a mount made for the
/// test where there is none (a VM guest, a host of cgroup v1), undone
/// when dropped. `--cgroup` and `--container` need it.
pub struct Cgroup2 {
    pub root: PathBuf,
    own_mount: Option<tempfile::TempDir>,
}

impl Cgroup2 {
    pub fn mounted() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let mounted = mounts
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| fields.len() > 2 && fields[2] == "cgroup2")
            .map(|fields| PathBuf::from(fields[1]));
        match mounted {
            Some(root) => Self {
                root,
                own_mount: None,
            },
            None => {
                let dir = scratch_dir();
                let status = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(dir.path())
                    .status()
                    .expect("mount cgroup2");
                assert!(status.success(), "mounting cgroup2");
                Self {
                    root: dir.path().to_path_buf(),
                    own_mount: Some(dir),
                }
            }
        }
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Some(dir) = &self.own_mount {
            let _ = Command::new("umount").arg(dir.path()).status();
        }
    }
}

/// The call-site tests' C writer (tests/c/stacks.c).
pub const STACKS_SOURCE: &str = include_str!("../c/stacks.c");

/// The line of stacks.c that holds `MARK name`.
pub fn stacks_line(mark: &str) -> u64 {
    let needle = format!("MARK {mark} ");
    STACKS_SOURCE
        .lines()
        .position(|line| line.contains(&needle))
        .unwrap_or_else(|| panic!("no MARK {mark} in stacks.c")) as u64
        + 1
}
