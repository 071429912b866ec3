//! Memory the aggregate keeps per file and per page, counted by the
//! allocator (bytes live after the events, not RSS: deterministic, so it
//! is a test, not a benchmark).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use probe_user::model::{
    aggregate::Aggregate,
    events::{Event, EventBody, FileId, Task, WriteKind},
    file_record::PathSource,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held while a test measures: tests run on parallel threads, and the
/// count is of the whole process.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn task() -> Task {
    Task {
        pid: 4242,
        tgid: 4242,
        comm: "writer".into(),
        cgroup_id: 1,
        ..Task::default()
    }
}

fn file(index: u64) -> FileId {
    FileId {
        dev: 0x803,
        ino: 1_000_000 + index,
        generation: 7,
    }
}

/// New files, one page each, as the kernel announces them.
fn new_files(aggregate: &mut Aggregate, files: u64) {
    for index in 0..files {
        aggregate.apply(&Event {
            file: file(index),
            task: task(),
            boot_ns: index,
            body: EventBody::FirstWrite {
                page: index % 2,
                kind: WriteKind::Shared,
            },
            stack_id: None,
        });
        aggregate.set_path(
            file(index),
            PathBuf::from(format!("/srv/build/out/obj-{index}.o")),
            PathSource::Dentry,
        );
    }
}

/// Bytes an aggregate holds once `fill` has applied its events, measured
/// alone (see `MEASURING`).
fn bytes_kept_by(fill: impl FnOnce(&mut Aggregate)) -> u64 {
    let _alone = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = LIVE.load(Ordering::Relaxed);
    let mut aggregate = Aggregate::new();
    fill(&mut aggregate);
    let kept = LIVE.load(Ordering::Relaxed) - before;
    drop(aggregate);
    kept as u64
}

#[test]
fn a_new_file_with_one_page_costs_the_aggregate_under_500_bytes() {
    const FILES: u64 = 20_000;
    let per_file = bytes_kept_by(|aggregate| new_files(aggregate, FILES)) / FILES;
    eprintln!("{per_file} bytes per file");
    assert!(per_file < 500, "{per_file} bytes per file");
}

/// A large file written at random pages (a memory-mapped index, a sparse
/// 1 TiB mapping): a few bytes per page, whatever the pattern.
#[test]
fn a_page_written_at_random_in_a_huge_file_costs_a_few_bytes() {
    const PAGES: u64 = 100_000;
    let kept = bytes_kept_by(|aggregate| {
        // A fixed-seed xorshift over 2^28 pages (1 TiB of 4 KiB pages).
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..PAGES {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            aggregate.apply(&Event {
                file: file(0),
                task: task(),
                boot_ns: 1,
                body: EventBody::FirstWrite {
                    page: state & ((1 << 28) - 1),
                    kind: WriteKind::Shared,
                },
                stack_id: None,
            });
        }
    });
    let per_page = kept as f64 / PAGES as f64;
    eprintln!("{per_page:.1} bytes per page");
    assert!(per_page < 8.0, "{per_page:.1} bytes per page");
}
