//! `mmapwatch report STREAM`: an event stream (`trace --events FILE`, JSON
//! lines) read back into the aggregate, for whoever kept only the stream
//! (a log shipper's copy). Its pages, writers (names, ids, cgroups), times,
//! writebacks and syncs are the trace's; what the stream never carried
//! (kernel counts, filesystems, losses, pages not on disk) is said missing
//! in the report's warnings. A recording (`--record`) replays whole.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::PathBuf};

use probe_common::{RecordKind, UNSET_ID};
use serde::Deserialize;

use crate::{
    error::UserError,
    model::call_sites::ProcessStack,
    model::{
        aggregate::Aggregate,
        events::{Event, EventBody, FileId, SyncCall, Task, UserIds, WriteKind},
        file_record::PathSource,
    },
    trace::recording::{Answers, ReportFacts},
};

/// One line of the stream, as `trace::events::StreamEvent` writes it.
#[derive(Debug, Deserialize)]
pub struct StreamLine {
    unix_ns: u64,
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    path_bytes_hex: Option<String>,
    dev: String,
    ino: u64,
    generation: u32,
    first_page: u64,
    pages: u64,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    cgroup: Option<String>,
    uid: Option<u32>,
    euid: Option<u32>,
    gid: Option<u32>,
    egid: Option<u32>,
    loginuid: Option<u32>,
    user: Option<String>,
    call: Option<String>,
    latency_ns: Option<u64>,
    result: Option<i64>,
    #[serde(default)]
    stack_id: Option<u32>,
}

/// A line of the stream: an event, or a `stack` line (`--stacks`) naming
/// the frames of the stack its process's later events give by id.
pub enum StreamItem {
    Event(Box<StreamLine>),
    Stack(ProcessStack),
}

#[derive(Deserialize)]
struct StackLine {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    stack: ProcessStack,
}

/// The record kind a stream line's `type` names (the names are declared
/// with the kinds, `RecordKind::stream_name`).
fn kind_named(name: &str) -> Option<RecordKind> {
    (0..64u32)
        .filter_map(|value| zerocopy::try_transmute!(value).ok())
        .find(|kind: &RecordKind| kind.stream_name() == Some(name))
}

/// `MAJ:MIN` back into the kernel's encoding (see `FileId::dev_string`).
fn kernel_dev(text: &str) -> Option<u32> {
    let (major, minor) = text.split_once(':')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    (major < (1 << 12) && minor < (1 << 20)).then_some((major << 20) | minor)
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

impl StreamLine {
    /// The event the line was written from (its time as the boot clock of
    /// a clock whose offset is 0), or why it cannot be one.
    pub fn event(&self) -> Result<Event, String> {
        let kind = kind_named(&self.kind).ok_or_else(|| format!("unknown type '{}'", self.kind))?;
        let (first_page, pages) = (self.first_page, self.pages);
        let body = match kind {
            RecordKind::SharedWrite => EventBody::FirstWrite {
                page: first_page,
                kind: WriteKind::Shared,
            },
            RecordKind::CowWrite => EventBody::FirstWrite {
                page: first_page,
                kind: WriteKind::Cow,
            },
            RecordKind::NewWriter => EventBody::NewWriter { page: first_page },
            RecordKind::FolioSpan => EventBody::FolioSpan { first_page, pages },
            RecordKind::PossibleWrite => EventBody::PossibleWrite { first_page, pages },
            RecordKind::PagesWrittenBack => EventBody::WrittenBack { first_page, pages },
            RecordKind::Sync => EventBody::Sync {
                call: SyncCall::ALL
                    .into_iter()
                    .find(|call| Some(call.name()) == self.call.as_deref())
                    .ok_or("a sync line without a known call")?,
                first_page,
                pages,
                latency_ns: self.latency_ns.unwrap_or(0),
                result: self.result.unwrap_or(0),
            },
            RecordKind::FileSeen | RecordKind::ProcessExit => {
                return Err(format!("type '{}' is not a stream line's", self.kind))
            }
        };
        let known = |id: Option<u32>| id.unwrap_or(UNSET_ID);
        let pid = self.pid.unwrap_or(0);
        Ok(Event {
            file: FileId {
                dev: kernel_dev(&self.dev).ok_or_else(|| format!("bad dev '{}'", self.dev))?,
                ino: self.ino,
                generation: self.generation,
            },
            task: Task {
                pid: self.tid.unwrap_or(pid),
                tgid: pid,
                comm: self.comm.clone().unwrap_or_default(),
                cgroup_id: self.cgroup_id.unwrap_or(0),
                ids: UserIds {
                    uid: known(self.uid),
                    euid: known(self.euid),
                    gid: known(self.gid),
                    egid: known(self.egid),
                    loginuid: known(self.loginuid),
                },
            },
            boot_ns: self.unix_ns,
            body,
            stack_id: self.stack_id,
        })
    }

    /// What the line tells besides its event: the file's name, its
    /// writer's cgroup path and user name.
    pub fn learn(&self, event: &Event, aggregate: &mut Aggregate, answers: &Answers) {
        let bytes = match (&self.path_bytes_hex, &self.path) {
            (Some(hex), _) => hex_bytes(hex),
            (None, Some(path)) => Some(path.as_bytes().to_vec()),
            (None, None) => None,
        };
        if let (Some(bytes), Some(_)) = (bytes, aggregate.file(&event.file)) {
            let path = PathBuf::from(OsStr::from_bytes(&bytes));
            aggregate.set_path(event.file, path, PathSource::ProcMaps);
        }
        if let Some(id) = self.cgroup_id {
            answers.cgroup_path(id, || self.cgroup.clone());
        }
        if let Some(euid) = self.euid {
            answers.user_name(euid, || self.user.clone());
        }
    }
}

/// The facts of a report replayed from a stream: none of the kernel's,
/// said so; the names the lines carried.
pub fn stream_facts(answers: Answers) -> ReportFacts {
    ReportFacts::without_the_kernel(
        "replayed from an event stream (trace --events)",
        "replayed from an event stream: kernel counts, filesystems, losses and pages not on disk are not in it (trace --record keeps them)",
        answers,
    )
}

/// Reads a stream line, or says why it is none.
pub fn parse(line: &str) -> Result<StreamItem, UserError> {
    if let Ok(StackLine { kind, stack }) = serde_json::from_str::<StackLine>(line) {
        if kind == "stack" {
            return Ok(StreamItem::Stack(stack));
        }
    }
    serde_json::from_str(line)
        .map(|line| StreamItem::Event(Box::new(line)))
        .map_err(|err| UserError::Usage(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event a stream line reads back as.
    fn event_of(json: &str) -> Event {
        match parse(json).expect("parses") {
            StreamItem::Event(line) => line.event().expect("an event"),
            StreamItem::Stack(_) => panic!("a stack line: {json}"),
        }
    }

    #[test]
    fn a_stack_line_reads_back_as_its_stack() {
        let json = r#"{"type":"stack","pid":7,"stack_id":3,"frames":[{"addr":4096,"symbol":"store","object":"/w","offset":16,"file":"/w.c","line":12}],"partial":false}"#;
        let StreamItem::Stack(stack) = parse(json).expect("parses") else {
            panic!("not a stack line");
        };
        assert_eq!((stack.pid, stack.stack_id), (7, 3));
        assert_eq!(stack.stack.frames[0].line, Some(12));
        assert_eq!(stack.stack.frames[0].offset, Some(16));
    }
    use crate::{
        model::{
            aggregate::Applied, clock::Clock, file_record::FileRecord, report_filter::ReportFilter,
        },
        trace::events::stream_event,
    };

    fn record(path: &[u8]) -> FileRecord {
        let mut record = FileRecord::default();
        record.path = Some(PathBuf::from(OsStr::from_bytes(path)));
        record
    }

    /// Each kind of line the stream writes reads back as its event.
    #[test]
    fn stream_lines_read_back_as_the_events_they_came_from() {
        let task = Task {
            pid: 11,
            tgid: 10,
            comm: "db".into(),
            cgroup_id: 7,
            ids: UserIds {
                uid: 1,
                euid: 2,
                gid: 3,
                egid: 4,
                loginuid: UNSET_ID,
            },
        };
        let file = FileId {
            dev: (259 << 20) | 3,
            ino: 42,
            generation: 9,
        };
        let bodies = [
            EventBody::FirstWrite {
                page: 5,
                kind: WriteKind::Shared,
            },
            EventBody::FirstWrite {
                page: 6,
                kind: WriteKind::Cow,
            },
            EventBody::NewWriter { page: 5 },
            EventBody::FolioSpan {
                first_page: 16,
                pages: 16,
            },
            EventBody::PossibleWrite {
                first_page: 0,
                pages: 4,
            },
            EventBody::Sync {
                call: SyncCall::SyncFileRange,
                first_page: 0,
                pages: 0,
                latency_ns: 5_000,
                result: -5,
            },
        ];
        let clock = Clock::with_offset(0);
        let filter = ReportFilter {
            include_cow: true,
            path_prefixes: Vec::new(),
        };
        let named = record(b"/d/a\xffb");
        let new_page = Applied {
            new_pages: 1,
            ..Applied::default()
        };
        for body in bodies {
            let event = Event {
                file,
                task: task.clone(),
                boot_ns: 1_700_000_000_000_000_123,
                body,
                stack_id: Some(4),
            };
            let line = stream_event(&event, &new_page, Some(&named), &filter, &clock)
                .expect("a stream line");
            let json = serde_json::to_string(&line).expect("serializes");
            let back = event_of(&json);
            assert_eq!(back, event, "{json}");
        }
        // Writeback is nobody's: its task reads back empty.
        let writeback = Event {
            file,
            task: Task::default(),
            boot_ns: 5,
            body: EventBody::WrittenBack {
                first_page: 0,
                pages: 4,
            },
            stack_id: None,
        };
        let line = stream_event(&writeback, &new_page, Some(&named), &filter, &clock)
            .expect("a writeback line");
        let back = event_of(&serde_json::to_string(&line).unwrap());
        assert_eq!(back.body, writeback.body);
        assert_eq!(back.writer(), None);
    }

    #[test]
    fn a_name_that_is_not_utf8_is_taken_exactly_and_bad_fields_are_refused() {
        assert_eq!(hex_bytes("2f61ff"), Some(vec![b'/', b'a', 0xff]));
        assert_eq!(hex_bytes("2f6"), None);
        assert_eq!(hex_bytes("zz"), None);
        assert_eq!(kernel_dev("8:1"), Some((8 << 20) | 1));
        assert_eq!(kernel_dev("8"), None);
        assert_eq!(kernel_dev("4096:0"), None);
        assert_eq!(kind_named("write"), Some(RecordKind::SharedWrite));
        assert_eq!(kind_named("nothing"), None);
    }
}
