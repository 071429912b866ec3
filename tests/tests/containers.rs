//! Real containers traced from the host: podman runs `mw-workload` from an
//! image imported from a local tarball (nothing is pulled), and
//! `trace --container ID` keeps that container's writes only. Host only:
//! the VM guests have no container runtime (`cargo xtask test` installs
//! podman and runc on the host).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{path_arg, ranges, require_root, scratch_dir, start_trace, Cgroup2};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_mw-workload");

/// runc: crun refuses hosts whose cgroups are mixed v1 and v2. Limits
/// within the host's: raising them needs CAP_SYS_RESOURCE.
const RUN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--network",
    "none",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// An image of `mw-workload` and the libraries it loads, imported from a
/// tarball made here; removed when dropped.
struct WorkloadImage {
    tag: String,
}

impl WorkloadImage {
    fn build() -> Self {
        let root = scratch_dir();
        let binary = Path::new(WORKLOAD);
        let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
        let libraries: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(PathBuf::from)
            .collect();
        for file in libraries.iter().map(PathBuf::as_path).chain([binary]) {
            let inside = if file == binary {
                root.path().join("bin/mw-workload")
            } else {
                root.path().join(file.strip_prefix("/").unwrap())
            };
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::copy(file, &inside).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        }
        std::fs::create_dir_all(root.path().join("data")).unwrap();
        let tarball = scratch_dir();
        let tar = tarball.path().join("rootfs.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(packed.success());
        let tag = format!("localhost/mmapwatch-test-workload:{}", std::process::id());
        let imported = Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(&tag)
            .output()
            .expect("podman (cargo xtask test installs it)");
        assert!(imported.status.success(), "podman import: {imported:?}");
        Self { tag }
    }
}

impl Drop for WorkloadImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// A container whose workload waits for a line on its stdin, then writes
/// `pages` of `/data/NAME` through a shared mapping.
struct Container {
    child: Child,
    id: String,
}

impl Container {
    fn start(image: &WorkloadImage, data: &Path, name: &str, pages: &str) -> Self {
        let ids = scratch_dir();
        let cidfile = ids.path().join("cid");
        let child = Command::new("podman")
            .args(["run", "--rm", "-i"])
            .args(RUN_FLAGS)
            .arg("--cidfile")
            .arg(&cidfile)
            .arg(format!("--volume={}:/data", path_arg(data)))
            .arg(&image.tag)
            .args(["/bin/mw-workload", "wait-then-shared", "--size-pages", "8"])
            .arg("--file")
            .arg(format!("/data/{name}"))
            .args(["--pages", pages])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman run");
        // Running once its cgroup holds the workload.
        let start = Instant::now();
        let id = loop {
            let id = std::fs::read_to_string(&cidfile).unwrap_or_default();
            let running = !id.is_empty()
                && Command::new("podman")
                    .args(["inspect", "--format", "{{.State.Pid}}", id.trim()])
                    .output()
                    .is_ok_and(|out| {
                        String::from_utf8_lossy(&out.stdout)
                            .trim()
                            .parse::<u32>()
                            .is_ok_and(|pid| pid > 0)
                    });
            if running {
                break id.trim().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the container did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Self { child, id }
    }

    /// Lets the workload write, and waits for it.
    fn write_and_wait(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let output = self.child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
}

#[test]
fn trace_with_container_id_reports_only_that_containers_files() {
    require_root();
    // --container finds the container's cgroup under cgroup2.
    let _cgroup2 = Cgroup2::mounted();
    let image = WorkloadImage::build();
    let data = scratch_dir();
    let traced = Container::start(&image, data.path(), "traced.bin", "1,2");
    let other = Container::start(&image, data.path(), "other.bin", "3");
    let (trace, _) = start_trace(&["--json", "--container", &traced.id]);
    let traced_id = traced.id.clone();
    traced.write_and_wait();
    other.write_and_wait();
    // And a writer on the host, outside any container.
    let host_file = data.path().join("host.bin");
    let status = Command::new(WORKLOAD)
        .args(["shared", "--size-pages", "8", "--pages", "4", "--file"])
        .arg(&host_file)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: a signal to the trace this test started and still waits for.
    assert_eq!(unsafe { libc::kill(trace.id() as i32, libc::SIGINT) }, 0);
    let output = trace.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        1,
        "only the traced container's file: {report:#}"
    );
    let entry = &files[0];
    // Named from the host, by its handle: the volume's file.
    let host_path = std::fs::canonicalize(data.path().join("traced.bin")).unwrap();
    assert_eq!(entry["path"], path_arg(&host_path), "{entry:#}");
    assert_eq!(ranges(&entry["pages_written"]), [(1, 2)]);
    let writer = &entry["writers"][0];
    assert_eq!(writer["comm"], "mw-workload");
    let container = writer["container"].as_str().unwrap_or_default();
    assert!(
        container.contains(&traced_id[..12]),
        "the writer's container: {entry:#}"
    );
    assert_eq!(report["lost_events"], 0);
}
