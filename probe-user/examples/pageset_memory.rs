//! Memory of the aggregate while tracking N distinct pages: prints the
//! process's RSS growth in KiB as JSON. Pages are spread over 1,000 files,
//! half in runs and half every third page (the sparse worst case for runs).

use probe_user::model::{
    aggregate::Aggregate,
    events::{Event, EventBody, FileId, Task, WriteKind},
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let pages: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    const FILES: u64 = 1000;
    let before = rss_kib();
    let mut aggregate = Aggregate::new();
    let task = Task {
        pid: 1,
        tgid: 1,
        comm: "bench".into(),
        cgroup_id: 1,
        ..Task::default()
    };
    let per_file = pages / FILES;
    for file in 0..FILES {
        for i in 0..per_file {
            let page = if file % 2 == 0 { i } else { i * 3 };
            aggregate.apply(&Event {
                file: FileId {
                    dev: 1,
                    ino: file,
                    generation: 0,
                },
                task: task.clone(),
                boot_ns: i,
                body: EventBody::FirstWrite {
                    page,
                    kind: WriteKind::Shared,
                },
                stack_id: None,
            });
        }
    }
    let tracked: u64 = aggregate.files().map(|(_, r)| r.pages_written.len()).sum();
    println!(
        "{{\"pages\":{tracked},\"rss_growth_kib\":{}}}",
        rss_kib().saturating_sub(before)
    );
}
