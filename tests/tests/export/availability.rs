//! The exporter under pressure: idle connections by the thousand, a stuck export loop.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::require_root;

use super::{wait_for, Exporter, WORKLOAD};

/// Idle clients do not exhaust the exporter's descriptors: past its cap
/// of open connections, the least recently active are closed, so a
/// scrape still gets in, and its descriptors stay bounded.
#[test]
fn twenty_thousand_idle_connections_do_not_stop_metrics() {
    require_root();
    let exporter = Exporter::start(&[]);
    // Four holders of 5,000 each (a process may open 20,000 descriptors
    // here, and the exporter may too: it would run out without its cap),
    // connecting in parallel: a SYN the loopback drops costs a second.
    const HOLDERS: usize = 4;
    const PER_HOLDER: usize = 5_000;
    let port = exporter.port.to_string();
    let mut holders: Vec<Child> = (0..HOLDERS)
        .map(|_| {
            Command::new(WORKLOAD)
                .args([
                    "idle-connections",
                    "--port",
                    &port,
                    "--count",
                    &PER_HOLDER.to_string(),
                ])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the connection holder")
        })
        .collect();
    for holder in &mut holders {
        let mut line = String::new();
        BufReader::new(holder.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("workload: connected={PER_HOLDER}"));
    }
    let (status, body) = exporter.get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("mmapwatch_build_info"), "{body}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", exporter.child.id()))
        .unwrap()
        .count();
    assert!(
        fds < 1_000,
        "{fds} descriptors open with 20,000 idle clients"
    );
    assert_eq!(exporter.get("/healthz").0, 200);
    for mut holder in holders {
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
    }
}

/// A stuck export loop (here a test hook blocks it 15 s, as a long cgroup
/// walk would) turns /healthz unhealthy, while /metrics, served on a
/// thread of its own, still answers; the loop recovers and so does /healthz.
#[test]
fn healthz_fails_while_the_export_loop_is_stuck_and_metrics_still_answer() {
    require_root();
    let exporter = Exporter::start(&[]);
    wait_for("/healthz to pass", Duration::from_secs(10), || {
        exporter.get("/healthz").0 == 200
    });
    // The export loop runs on the main thread, the HTTP server on its own:
    // stopping the main thread alone is the loop stuck (as a long walk of
    // /sys/fs/cgroup would leave it), with no hook in the exporter.
    let frozen = FrozenThread::stop(exporter.child.id() as i32);
    let started = Instant::now();
    // Unhealthy past ten seconds without a turn (the limit at --interval 200ms).
    wait_for("/healthz to fail", Duration::from_secs(14), || {
        let (status, body) = exporter.get("/healthz");
        status == 503 && body.starts_with("stalled: ")
    });
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before the limit"
    );
    let (status, body) = exporter.get("/metrics");
    assert_eq!(status, 200, "/metrics answers while the loop is stuck");
    assert!(body.contains("mmapwatch_build_info"), "{body}");
    drop(frozen);
    wait_for("/healthz to recover", Duration::from_secs(20), || {
        exporter.get("/healthz").0 == 200
    });
}

/// One thread of a child process stopped with ptrace (a seized thread
/// stops alone, not its whole process), resumed when dropped.
struct FrozenThread(i32);

impl FrozenThread {
    fn stop(tid: i32) -> Self {
        // SAFETY: ptrace and waitpid on a thread of our own child, with
        // no pointers passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE"
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                0,
                "PTRACE_INTERRUPT"
            );
            let mut status = 0;
            assert_eq!(
                libc::waitpid(tid, &mut status, libc::__WALL),
                tid,
                "waitpid"
            );
        }
        Self(tid)
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        // SAFETY: as above; detaching resumes the stopped thread.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}
