//! Snapshots of every dashboard view at 80x24 and 160x48, drawn from a real
//! aggregate: events recorded from a real run (the `event` lines of `mmapwatch trace --record`
//! over a workload: a database file written by two processes, a log with
//! msync, a large-folio cache file, a /dev/shm segment, a private mapping),
//! replayed through the same aggregate the live dashboard uses.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use probe_user::{
    model::{
        aggregate::Aggregate,
        events::{Event, EventBody},
        file_record::PathSource,
        paths::MountTable,
        report_filter::ReportFilter,
    },
    probe::KernelCounters,
    tui::{
        app::{update, App, Info, Message, SnapshotMessage, View},
        has_writeback,
        snapshot::Snapshot,
        view::render,
    },
};
use ratatui::{backend::TestBackend, Terminal};

const EVENTS: &str = include_str!("fixtures/demo-events.jsonl");
const MOUNTINFO: &str = include_str!("fixtures/demo-mountinfo.txt");

fn replay() -> (Aggregate, MountTable, u64) {
    let mounts = MountTable::parse(MOUNTINFO.as_bytes());
    let mut aggregate = Aggregate::new();
    let mut last_ns = 0;
    for line in EVENTS.lines() {
        let event: Event = serde_json::from_str(line).expect("recorded event");
        aggregate.apply(&event);
        match &event.body {
            EventBody::FileSeen {
                components, walk, ..
            } => aggregate.set_path(
                event.file,
                mounts.dentry_full_path(event.file, components, *walk),
                PathSource::Dentry,
            ),
            EventBody::FirstWrite { .. }
            | EventBody::NewWriter { .. }
            | EventBody::FolioSpan { .. }
            | EventBody::PossibleWrite { .. } => last_ns = last_ns.max(event.boot_ns),
            EventBody::WrittenBack { .. } | EventBody::Sync { .. } | EventBody::ProcessExit => {}
        }
    }
    (aggregate, mounts, last_ns)
}

/// A fixed "now": 2.5 s after the last recorded write.
fn tick(app: &App, aggregate: &Aggregate, mounts: &MountTable, last_ns: u64) -> Message {
    let filter = ReportFilter::default();
    let mut snapshot = Snapshot::build(
        aggregate,
        app.detail_target(),
        KernelCounters::default(),
        last_ns + 2_500_000_000,
        &|record| filter.keeps(record),
        &|file| has_writeback(mounts, file),
        // The recorded files are gone: their size is not known here.
        &|_| None,
    );
    // What the session asks the page cache: no written page of the
    // recording reached disk (its files are dirty).
    if let Some(detail) = snapshot.detail.as_mut() {
        detail.not_on_disk = Some(detail.row.pages);
    }
    Message::Tick(Box::new(SnapshotMessage {
        snapshot,
        interval_s: 1.0,
    }))
}

fn key(code: KeyCode) -> Message {
    Message::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn app_in(view: View) -> App {
    let (aggregate, mounts, last_ns) = replay();
    let mut app = App::new(Info {
        backend: "tracepoint".into(),
        interval_ms: 1000,
    });
    let message = tick(&app, &aggregate, &mounts, last_ns);
    update(&mut app, message);
    match view {
        View::Files => {}
        View::Detail => {
            // The database file: second by pages, after the cache file.
            update(&mut app, key(KeyCode::Down));
            update(&mut app, key(KeyCode::Enter));
            let message = tick(&app, &aggregate, &mounts, last_ns);
            update(&mut app, message);
        }
        View::Processes => {
            update(&mut app, key(KeyCode::Tab));
        }
    }
    assert_eq!(app.view, view);
    app
}

fn draw(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    terminal.draw(|frame| render(app, frame)).expect("draw");
    terminal.backend().to_string()
}

#[test]
fn files_view() {
    let app = app_in(View::Files);
    let small = draw(&app, 80, 24);
    assert!(small.contains("orders.db"), "{small}");
    insta::assert_snapshot!("files_80x24", small);
    insta::assert_snapshot!("files_160x48", draw(&app, 160, 48));
    // Narrow: the path stays (its end, the file name whole), the less
    // telling columns go.
    let narrow = draw(&app, 50, 16);
    assert!(narrow.contains("orders.db"), "{narrow}");
    assert!(
        narrow.contains("1PATH") && !narrow.contains("5COW"),
        "{narrow}"
    );
    insta::assert_snapshot!("files_50x16", narrow);
}

#[test]
fn detail_view() {
    let app = app_in(View::Detail);
    let detail = app.detail.as_ref().expect("detail of the selected file");
    assert!(detail.row.path.ends_with("orders.db"));
    assert_eq!(detail.row.pages, 24);
    assert_eq!(detail.writers.len(), 2);
    insta::assert_snapshot!("detail_80x24", draw(&app, 80, 24));
    insta::assert_snapshot!("detail_160x48", draw(&app, 160, 48));
}

#[test]
fn processes_view() {
    let app = app_in(View::Processes);
    insta::assert_snapshot!("processes_80x24", draw(&app, 80, 24));
    insta::assert_snapshot!("processes_160x48", draw(&app, 160, 48));
}

#[test]
fn help_and_filter_overlays() {
    let mut app = app_in(View::Files);
    update(&mut app, key(KeyCode::Char('/')));
    for c in "shm".chars() {
        update(&mut app, key(KeyCode::Char(c)));
    }
    insta::assert_snapshot!("filter_80x24", draw(&app, 80, 24));
    update(&mut app, key(KeyCode::Enter));
    update(&mut app, key(KeyCode::Char('?')));
    insta::assert_snapshot!("help_80x24", draw(&app, 80, 24));
}

/// The processes view sorts, filters by command, and opens one process's
/// files; Esc comes back to the processes.
#[test]
fn a_process_opens_its_files() {
    let mut app = app_in(View::Processes);
    let pids = |app: &App| app.processes.visible().map(|p| p.tgid).collect::<Vec<_>>();
    update(&mut app, key(KeyCode::Char('1')));
    assert_eq!(pids(&app), [5942, 5943, 5944, 5945, 5946], "by pid");
    update(&mut app, key(KeyCode::Char('/')));
    for c in "db".chars() {
        update(&mut app, key(KeyCode::Char(c)));
    }
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(pids(&app), [5942, 5943]);
    insta::assert_snapshot!("processes_filtered_80x24", draw(&app, 80, 24));
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view, View::Files);
    let files: Vec<&str> = app
        .visible_files()
        .iter()
        .map(|f| f.row.path.as_str())
        .collect();
    assert_eq!(
        files,
        ["/tmp/mmapwatch-demo/data/orders.db"],
        "5943's files"
    );
    insta::assert_snapshot!("process_files_80x24", draw(&app, 80, 24));
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.view, View::Processes);
    assert_eq!(app.visible_files().len(), 4, "all files again");
}

/// Scale: 10,000 files and 1,000,000 pages go through a snapshot, an update
/// and a render; drawing shows only what fits, and the heatmap is built
/// from buckets, not pages.
#[test]
fn ten_thousand_files_and_a_million_pages() {
    use probe_user::model::events::{EventBody, FileId, Task, WriteKind};
    let mut aggregate = Aggregate::new();
    let task = Task {
        pid: 7,
        tgid: 7,
        comm: "db".into(),
        cgroup_id: 1,
        ..Task::default()
    };
    for ino in 0..10_000u64 {
        for page in 0..100u64 {
            aggregate.apply(&Event {
                file: FileId {
                    dev: 1 << 20,
                    ino,
                    generation: 0,
                },
                task: task.clone(),
                boot_ns: page,
                body: EventBody::FirstWrite {
                    page: page * 2,
                    kind: WriteKind::Shared,
                },
                stack_id: None,
            });
        }
    }
    let mounts = MountTable::parse(MOUNTINFO.as_bytes());
    let mut app = App::new(Info {
        backend: "tracepoint".into(),
        interval_ms: 1000,
    });
    let started = std::time::Instant::now();
    let message = tick(&app, &aggregate, &mounts, 1_000);
    update(&mut app, message);
    update(&mut app, key(KeyCode::Enter));
    let message = tick(&app, &aggregate, &mounts, 1_000);
    update(&mut app, message);
    let screen = draw(&app, 160, 48);
    eprintln!(
        "snapshot + update + detail + render of 10,000 files: {:?}",
        started.elapsed()
    );
    assert_eq!(app.files.len(), 10_000);
    assert_eq!(
        app.processes.visible().next().map(|p| p.pages),
        Some(1_000_000)
    );
    let detail = app.detail.as_ref().expect("detail");
    assert_eq!(detail.row.pages, 100);
    assert_eq!(detail.heatmap.written.iter().sum::<u64>(), 100);
    assert!(screen.contains("pages 0..198"), "{screen}");
}
