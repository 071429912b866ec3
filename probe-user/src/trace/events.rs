//! `trace --events FILE|-`: the public event stream, one JSON object per
//! line as the kernel reports it, for `jq` and log shippers. The schema is
//! in README.md ("Event stream"); its pages add up to the report's.

use std::{
    borrow::Cow,
    cell::RefCell,
    collections::HashSet,
    rc::Rc,
    time::{Duration, UNIX_EPOCH},
};

use probe_common::RecordKind;
use serde::Serialize;

use crate::{
    model::{
        aggregate::Applied,
        call_sites::ProcessStack,
        clock::Clock,
        events::{Event, EventBody, WriteKind},
        file_record::FileRecord,
        names,
        report_filter::ReportFilter,
    },
    session::{container_name, stacks::StackResolver, CgroupNames, EventObserver},
    trace::{json_lines::JsonLines, report::WriterIds},
};

/// One line of the stream.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StreamEvent<'a> {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub unix_ns: u64,
    #[serde(rename = "type", serialize_with = "stream_type")]
    pub kind: RecordKind,
    /// The file's name when the event was read (as the report's `path`:
    /// `\xNN` for bytes that are not UTF-8, exact bytes in
    /// `path_bytes_hex`); null when it could not be named.
    pub path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes_hex: Option<String>,
    pub dev: String,
    pub ino: u64,
    pub generation: u32,
    /// Pages `first_page .. first_page + pages - 1` (4 KiB page indexes).
    pub first_page: u64,
    pub pages: u64,
    /// Who: process id, thread id, command, cgroup id; null on writeback
    /// (done by the kernel on nobody's behalf).
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    /// The writer's cgroup path and the container it shows (as the
    /// report's `writers[]`); null on writeback, for a cgroup gone, or one
    /// that is no container's.
    pub cgroup: Option<String>,
    pub container: Option<String>,
    /// The writer's ids and user (as the report's `writers[]`).
    #[serde(flatten)]
    pub ids: WriterIds,
    /// `sync` lines: which call, how long it took, what it returned (0 or
    /// a negative errno). `pages` 0 there means the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<i64>,
    /// `--stacks`: the writer's stack, whose frames a `stack` line of
    /// this `pid` and `stack_id` gave before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
}

/// A `stack` line: the frames of a process's stack, written once before
/// the first event that names it.
#[derive(Serialize)]
struct StackLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    stack: &'a ProcessStack,
}

/// A line's `type`: the record kind's stream name, declared with the kind
/// in probe-common ([`RecordKind::stream_name`]).
fn stream_type<S: serde::Serializer>(kind: &RecordKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.stream_name().unwrap_or("other"))
}

/// The stream's line for an event, or None for events it does not carry
/// (a file seen, a first write the aggregate already had) or files the
/// filters leave out.
pub fn stream_event<'a>(
    event: &Event,
    applied: &Applied,
    file: Option<&'a FileRecord>,
    filter: &ReportFilter,
    clock: &Clock,
) -> Option<StreamEvent<'a>> {
    let mut sync = None;
    let (kind, first_page, pages) = match &event.body {
        EventBody::FirstWrite {
            page,
            kind: WriteKind::Shared,
        } => {
            // The kernel reports a page again when its dedup entry was
            // evicted; the stream keeps first writes first.
            if applied.new_pages == 0 {
                return None;
            }
            (RecordKind::SharedWrite, *page, 1)
        }
        EventBody::FirstWrite {
            page,
            kind: WriteKind::Cow,
        } => {
            if !filter.include_cow {
                return None;
            }
            (RecordKind::CowWrite, *page, 1)
        }
        EventBody::NewWriter { page } => (RecordKind::NewWriter, *page, 1),
        EventBody::FolioSpan { first_page, pages } => (RecordKind::FolioSpan, *first_page, *pages),
        EventBody::PossibleWrite { first_page, pages } => {
            (RecordKind::PossibleWrite, *first_page, *pages)
        }
        EventBody::WrittenBack { first_page, pages } => {
            (RecordKind::PagesWrittenBack, *first_page, *pages)
        }
        EventBody::Sync {
            call,
            first_page,
            pages,
            latency_ns,
            result,
        } => {
            // As in the report: only files written through a mapping.
            file?;
            sync = Some((call.name(), *latency_ns, *result));
            (RecordKind::Sync, *first_page, *pages)
        }
        EventBody::FileSeen { .. } | EventBody::ProcessExit => return None,
    };
    let (id, task, boot_ns) = (event.file, event.writer(), event.boot_ns);
    if file.is_some_and(|record| !filter.keeps_name(record))
        || (file.is_none() && !filter.path_prefixes.is_empty())
    {
        return None;
    }
    let path = file.and_then(|record| record.path.as_deref());
    let unix_ns = clock.unix_ns(boot_ns);
    Some(StreamEvent {
        time: rfc3339(unix_ns),
        unix_ns,
        kind,
        path: path.map(names::json_text),
        path_bytes_hex: path.and_then(names::hex_if_not_utf8),
        dev: id.dev_string(),
        ino: id.ino,
        generation: id.generation,
        first_page,
        pages,
        pid: task.map(|t| t.tgid),
        tid: task.map(|t| t.pid),
        comm: task.map(|t| t.comm.clone()),
        cgroup_id: task.map(|t| t.cgroup_id),
        // Named by the stream's tap, which keeps the cgroup names.
        cgroup: None,
        container: None,
        ids: task.map(|t| WriterIds::of(&t.ids)).unwrap_or_default(),
        call: sync.map(|s| s.0),
        latency_ns: sync.map(|s| s.1),
        result: sync.map(|s| s.2),
        stack_id: event.stack_id,
    })
}

fn rfc3339(unix_ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

/// The text stream's header (`--events-format text`).
pub const TEXT_HEADER: &str = "TIME                           TYPE           WRITER                   USER             PAGES  DETAIL  PATH";

/// One event as a line of text, columns as [`TEXT_HEADER`]: the writer
/// `comm[pid]` (`-` for writeback), its user (name, else uid), the pages
/// (`first` or `first-last`; `all` for a sync of the whole file), a sync's
/// call, latency and result (`-` otherwise), and the path last, whole
/// (names escaped: a control character never reaches the terminal).
pub fn text_line(event: &StreamEvent) -> String {
    let writer = match (&event.comm, event.pid) {
        (Some(comm), Some(pid)) => {
            format!("{}[{pid}]", names::terminal_text(comm).replace(' ', "_"))
        }
        _ => "-".into(),
    };
    let user = match (&event.ids.user, event.ids.euid) {
        (Some(name), _) => names::terminal_text(name).replace(' ', "_"),
        (None, Some(euid)) => euid.to_string(),
        (None, None) => "-".into(),
    };
    let pages = match event.pages {
        0 => "all".to_string(),
        1 => event.first_page.to_string(),
        n => format!(
            "{}-{}",
            event.first_page,
            event.first_page.saturating_add(n - 1)
        ),
    };
    let detail = match (event.call, event.latency_ns, event.result) {
        (Some(call), Some(latency_ns), Some(result)) => {
            format!("{call},{}us,{result}", latency_ns / 1_000)
        }
        _ => "-".into(),
    };
    let path = event.path.as_deref().map_or_else(
        || "?".into(),
        |path| names::terminal_text(path).into_owned(),
    );
    let kind = event.kind.stream_name().unwrap_or("?");
    format!(
        "{:<30} {kind:<14} {writer:<24} {user:<10} {pages:>11}  {detail:<6}  {path}",
        event.time
    )
}

/// The session's tap that writes the stream.
pub struct EventStream {
    pub lines: JsonLines,
    /// Text lines instead of JSON (`--events-format text`).
    pub text: bool,
    pub filter: ReportFilter,
    pub clock: Clock,
    /// Shared with the report: one cache of names, each cgroup read once.
    pub cgroups: Rc<RefCell<CgroupNames>>,
    /// `--stacks`: the session's stacks, and those written already.
    pub stacks: Option<Rc<RefCell<StackResolver>>>,
    pub stacks_written: HashSet<(u32, u32)>,
}

impl EventStream {
    /// The `stack` line of the stack `line` names, the first time (JSON
    /// only: a text line has no room for frames). Named now, while the
    /// stream is read: it costs the reader the first lookup of each
    /// object's symbols.
    fn write_stack_of(&mut self, line: &StreamEvent) {
        let (Some(stacks), Some(pid), Some(stack_id)) = (&self.stacks, line.pid, line.stack_id)
        else {
            return;
        };
        if self.text || !self.stacks_written.insert((pid, stack_id)) {
            return;
        }
        if let Some(stack) = stacks.borrow_mut().named_stack(pid, stack_id) {
            self.lines.write(&StackLine {
                kind: "stack",
                stack: &ProcessStack {
                    pid,
                    stack_id,
                    stack,
                },
            });
        }
    }
}

impl EventObserver for EventStream {
    fn observe(&mut self, event: &Event, applied: &Applied, file: Option<&FileRecord>) {
        if let Some(mut line) = stream_event(event, applied, file, &self.filter, &self.clock) {
            if let Some(id) = line.cgroup_id {
                line.cgroup = self.cgroups.borrow_mut().path(id);
                line.container = line.cgroup.as_deref().and_then(container_name);
            }
            self.write_stack_of(&line);
            if self.text {
                self.lines.write_text(&text_line(&line));
            } else {
                self.lines.write(&line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::events::{FileId, Task};

    fn task() -> Task {
        Task {
            pid: 11,
            tgid: 10,
            comm: "db".into(),
            cgroup_id: 7,
            ..Task::default()
        }
    }

    const FILE: FileId = FileId {
        dev: (8 << 20) | 1,
        ino: 42,
        generation: 3,
    };

    fn named(path: impl Into<PathBuf>) -> FileRecord {
        let mut record = FileRecord::default();
        record.path = Some(path.into());
        record
    }

    fn new_page() -> Applied {
        Applied {
            new_pages: 1,
            ..Applied::default()
        }
    }

    fn first_write(kind: WriteKind, page: u64, boot_ns: u64) -> Event {
        Event {
            file: FILE,
            task: task(),
            boot_ns,
            body: EventBody::FirstWrite { page, kind },
            stack_id: None,
        }
    }

    #[test]
    fn a_first_write_carries_who_where_and_when() {
        let record = named("/data/db");
        let event = first_write(WriteKind::Shared, 5, 1_000);
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let line = stream_event(
            &event,
            &new_page(),
            Some(&record),
            &ReportFilter::default(),
            &clock,
        )
        .expect("a line");
        let json = serde_json::to_value(&line).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.000001000Z",
                "unix_ns": 1_700_000_000_000_001_000_u64,
                "type": "write",
                "path": "/data/db",
                "dev": "8:1",
                "ino": 42,
                "generation": 3,
                "first_page": 5,
                "pages": 1,
                "pid": 10,
                "tid": 11,
                "comm": "db",
                "cgroup_id": 7,
                // Named by the stream's tap (`EventStream`).
                "cgroup": null,
                "container": null,
                "uid": 0,
                "euid": 0,
                "gid": 0,
                "egid": 0,
                "loginuid": 0,
                "user": "root",
            })
        );
    }

    #[test]
    fn a_page_reported_again_is_not_a_first_write() {
        let record = named("/data/db");
        let event = first_write(WriteKind::Shared, 5, 1);
        let again = stream_event(
            &event,
            &Applied::default(),
            Some(&record),
            &ReportFilter::default(),
            &Clock::with_offset(0),
        );
        assert_eq!(again, None);
    }

    #[test]
    fn cow_writes_only_with_include_cow() {
        let record = named("/lib/x.so");
        let event = first_write(WriteKind::Cow, 0, 1);
        let clock = Clock::with_offset(0);
        let without = ReportFilter::default();
        let with = ReportFilter {
            include_cow: true,
            ..ReportFilter::default()
        };
        let applied = Applied::default();
        assert_eq!(
            stream_event(&event, &applied, Some(&record), &without, &clock),
            None
        );
        let line =
            stream_event(&event, &applied, Some(&record), &with, &clock).expect("a COW line");
        assert_eq!(line.kind, RecordKind::CowWrite);
    }

    #[test]
    fn path_prefixes_filter_the_stream_as_the_report() {
        let event = Event {
            file: FILE,
            task: task(),
            boot_ns: 1,
            body: EventBody::FolioSpan {
                first_page: 16,
                pages: 16,
            },
            stack_id: None,
        };
        let filter = ReportFilter {
            include_cow: false,
            path_prefixes: vec![PathBuf::from("/data")],
        };
        let clock = Clock::with_offset(0);
        let inside = named("/data/db");
        let outside = named("/tmp/x");
        let line = stream_event(&event, &new_page(), Some(&inside), &filter, &clock)
            .expect("kept under /data");
        assert_eq!(
            (line.kind, line.first_page, line.pages),
            (RecordKind::FolioSpan, 16, 16)
        );
        assert_eq!(
            stream_event(&event, &new_page(), Some(&outside), &filter, &clock),
            None
        );
    }

    #[test]
    fn a_sync_line_says_which_call_how_long_and_its_result() {
        let record = named("/data/db");
        let event = Event {
            file: FILE,
            task: task(),
            boot_ns: 1,
            body: EventBody::Sync {
                call: crate::model::events::SyncCall::Msync,
                first_page: 2,
                pages: 3,
                latency_ns: 4_000,
                result: 0,
            },
            stack_id: None,
        };
        let filter = ReportFilter::default();
        let clock = Clock::with_offset(0);
        let line = stream_event(&event, &Applied::default(), Some(&record), &filter, &clock)
            .expect("a sync line");
        let json = serde_json::to_value(&line).expect("serializes");
        assert_eq!(json["type"], "sync");
        assert_eq!(json["call"], "msync");
        assert_eq!(json["latency_ns"], 4_000);
        assert_eq!(json["result"], 0);
        assert_eq!(
            (json["first_page"].as_u64(), json["pages"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(
            stream_event(&event, &Applied::default(), None, &filter, &clock),
            None,
            "a file never written through a mapping"
        );
    }

    #[test]
    fn writeback_has_no_writer_and_names_that_are_not_utf8_are_exact() {
        use std::os::unix::ffi::OsStrExt as _;
        let record = named(std::ffi::OsStr::from_bytes(b"/d/a\xffb"));
        let event = Event {
            file: FILE,
            task: Task::default(),
            boot_ns: 1,
            body: EventBody::WrittenBack {
                first_page: 0,
                pages: 4,
            },
            stack_id: None,
        };
        let line = stream_event(
            &event,
            &Applied::default(),
            Some(&record),
            &ReportFilter::default(),
            &Clock::with_offset(0),
        )
        .expect("a writeback line");
        assert_eq!(line.kind, RecordKind::PagesWrittenBack);
        assert_eq!((line.pid, line.comm.as_deref()), (None, None));
        assert_eq!(line.path.as_deref(), Some("/d/a\\xffb"));
        assert_eq!(line.path_bytes_hex.as_deref(), Some("2f642f61ff62"));
        let text = text_line(&line);
        assert!(text.contains(" writeback "), "{text}");
        assert!(text.ends_with(" 0-3  -       /d/a\\\\xffb"), "{text:?}");
    }

    #[test]
    fn a_text_line_holds_the_writer_its_user_the_pages_and_the_path_last() {
        let record = named("/data/my db\u{1b}[2J");
        let sync = Event {
            file: FILE,
            task: task(),
            boot_ns: 1,
            body: EventBody::Sync {
                call: crate::model::events::SyncCall::Msync,
                first_page: 0,
                pages: 0,
                latency_ns: 4_000,
                result: -5,
            },
            stack_id: None,
        };
        let clock = Clock::with_offset(0);
        let filter = ReportFilter::default();
        let line = stream_event(&sync, &Applied::default(), Some(&record), &filter, &clock)
            .expect("a sync line");
        let text = text_line(&line);
        let columns: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            columns[1..6],
            ["sync", "db[10]", "root", "all", "msync,4us,-5"],
            "{text}"
        );
        // The path is last and whole (its space kept), its escape escaped.
        assert!(text.ends_with("  /data/my db\\u{1b}[2J"), "{text:?}");
        assert_eq!(
            TEXT_HEADER.split_whitespace().collect::<Vec<_>>(),
            ["TIME", "TYPE", "WRITER", "USER", "PAGES", "DETAIL", "PATH"]
        );
    }
}
