//! `trace --record FILE`: a recording that `mmapwatch report` replays into
//! the report the trace printed (`perf record` / `perf report`).
//!
//! JSON lines, each one of [`Line`]: a `start` (format, clock, the trace's
//! report filter), every decoded kernel record as an `event` (raw device
//! numbers, boot-clock times: the aggregate's own input), then at the end
//! one `file` per file (what its record holds besides its events: names,
//! kernel counts; see `model::file_state`) and an `end` with what the report
//! asked the machine and the kernel ([`ReportFacts`], [`Answers`]). A replay
//! asks nothing of the machine it runs on.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashSet},
    path::PathBuf,
};

use probe_common::{CounterTotals, KERNEL_COUNTERS};
use serde::{Deserialize, Serialize};

use crate::{
    model::{
        aggregate::Applied,
        call_sites::ProcessStack,
        clock::Clock,
        events::{Event, FileId},
        file_record::{FileRecord, PathSource},
        file_state::FileState,
        names::NameBytes,
    },
    probe::maps::KernelCounters,
    session::EventObserver,
    trace::{json_lines::JsonLines, report::ReportContext},
};

/// Bumped when a line changes meaning; a replay refuses other formats.
pub const FORMAT: u32 = 1;

/// One line of a recording, as read back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Start(Start),
    Event(Event),
    Name(Name),
    File(FileState),
    /// `--stacks`: a stack the events name, as the trace named it.
    Stack(ProcessStack),
    End(Box<ReportFacts>),
}

/// One line of a recording, as written (borrowed: nothing is copied per
/// event). Its tags are [`Line`]'s; a unit test holds them together.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineRef<'a> {
    Start(&'a Start),
    Event(&'a Event),
    Name(&'a Name),
    File(&'a FileState),
    Stack(&'a ProcessStack),
    End(&'a ReportFacts),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub format: u32,
    /// The mmapwatch version that recorded it.
    pub mmapwatch: String,
    /// Unix time minus the kernel's boot clock: the events' times.
    pub clock_offset_ns: i64,
    /// The trace's report filter (`--include-cow`, `--path-prefix`).
    pub include_cow: bool,
    pub path_prefixes: Vec<NameBytes>,
    /// The trace took stacks (`--stacks`): its events' call sites are in
    /// `stack` lines before the end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stacks: bool,
}

impl Start {
    pub fn new(clock: Clock, include_cow: bool, path_prefixes: &[PathBuf]) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        Self {
            format: FORMAT,
            mmapwatch: env!("CARGO_PKG_VERSION").into(),
            clock_offset_ns: i64::try_from(clock.offset_ns()).unwrap_or(0),
            include_cow,
            path_prefixes: path_prefixes
                .iter()
                .map(|p| NameBytes(p.as_os_str().as_bytes().to_vec()))
                .collect(),
            stacks: false,
        }
    }

    pub fn clock(&self) -> Clock {
        Clock::with_offset(i128::from(self.clock_offset_ns))
    }
}

/// A file's first name, once the session found it (after the event that
/// made it known): a recording cut before its end still names its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Name {
    pub file: FileId,
    pub path: NameBytes,
    pub source: PathSource,
}

/// Everything a report takes besides the aggregate and the machine's
/// answers ([`ReportContext`]'s plain values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportFacts {
    pub backend: String,
    pub backend_reason: String,
    pub hooks: Vec<String>,
    pub fallbacks: Vec<String>,
    pub page_writeback: bool,
    pub duration_s: f64,
    #[serde(with = "counters_by_name")]
    pub counters: KernelCounters,
    pub dedup_capacity: u32,
    pub undecodable_records: u64,
    pub warnings: Vec<String>,
    pub answers: Answers,
}

/// What the report asked the machine, as answered. Live, each question is
/// asked once and its answer kept; replayed, only kept answers are given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    #[serde(skip)]
    live: bool,
    #[serde(with = "pairs")]
    fs_types: RefCell<BTreeMap<FileId, Option<String>>>,
    #[serde(with = "pairs")]
    cgroup_paths: RefCell<BTreeMap<u64, Option<String>>>,
    #[serde(with = "pairs")]
    not_on_disk: RefCell<BTreeMap<FileId, Result<u64, String>>>,
    #[serde(with = "pairs")]
    user_names: RefCell<BTreeMap<u32, Option<String>>>,
}

/// Why a replay cannot tell what the machine was not asked live.
pub const NOT_RECORDED: &str = "not in the recording";

impl Answers {
    pub fn live() -> Self {
        Self {
            live: true,
            ..Self::default()
        }
    }

    fn answer<K: Ord + Copy, V: Clone>(
        &self,
        map: &RefCell<BTreeMap<K, V>>,
        key: K,
        ask: impl FnOnce() -> V,
        unknown: V,
    ) -> V {
        if let Some(value) = map.borrow().get(&key) {
            return value.clone();
        }
        if !self.live {
            return unknown;
        }
        let value = ask();
        map.borrow_mut().insert(key, value.clone());
        value
    }

    pub fn fs_type(&self, file: FileId, ask: impl FnOnce() -> Option<String>) -> Option<String> {
        self.answer(&self.fs_types, file, ask, None)
    }

    pub fn cgroup_path(&self, id: u64, ask: impl FnOnce() -> Option<String>) -> Option<String> {
        self.answer(&self.cgroup_paths, id, ask, None)
    }

    pub fn not_on_disk(
        &self,
        file: FileId,
        ask: impl FnOnce() -> Result<u64, String>,
    ) -> Result<u64, String> {
        self.answer(&self.not_on_disk, file, ask, Err(NOT_RECORDED.into()))
    }

    pub fn user_name(&self, uid: u32, ask: impl FnOnce() -> Option<String>) -> Option<String> {
        self.answer(&self.user_names, uid, ask, None)
    }
}

/// The machine's side of a report: how it names a file's filesystem, a
/// cgroup and a user, and counts a file's pages not on disk.
pub struct Lookups<'a> {
    pub fs_type: &'a dyn Fn(FileId) -> Option<String>,
    pub cgroup_path: &'a dyn Fn(u64) -> Option<String>,
    pub not_on_disk: &'a dyn Fn(FileId, &FileRecord) -> Result<u64, String>,
    pub user_name: &'a dyn Fn(u32) -> Option<String>,
}

impl ReportFacts {
    /// Facts for a replay whose input never held the kernel's side (a
    /// recording cut short, an event stream): `why` as the backend's
    /// reason, `missing` as the first warning, the answers it carried.
    pub fn without_the_kernel(why: &str, missing: &str, answers: Answers) -> Self {
        Self {
            backend: "unknown".into(),
            backend_reason: why.into(),
            hooks: Vec::new(),
            fallbacks: Vec::new(),
            page_writeback: false,
            duration_s: 0.0,
            counters: KernelCounters::default(),
            dedup_capacity: 0,
            undecodable_records: 0,
            warnings: vec![missing.into()],
            answers,
        }
    }

    pub fn context<'a>(&'a self, clock: Clock, lookups: Lookups<'a>) -> ReportContext<'a> {
        ReportContext {
            backend: &self.backend,
            backend_reason: &self.backend_reason,
            hooks: &self.hooks,
            fallbacks: &self.fallbacks,
            page_writeback: self.page_writeback,
            duration_s: self.duration_s,
            counters: self.counters,
            dedup_capacity: self.dedup_capacity,
            undecodable_records: self.undecodable_records,
            warnings: self.warnings.clone(),
            clock,
            fs_type: lookups.fs_type,
            cgroup_path: lookups.cgroup_path,
            not_on_disk: lookups.not_on_disk,
            user_name: lookups.user_name,
        }
    }
}

/// Writes a recording: the start when opened, each event from the
/// session's tap ([`Recording::tap`]), and the end from
/// [`Recording::finish`].
pub struct Recording(JsonLines);

impl Recording {
    pub fn new(lines: JsonLines, start: &Start) -> Self {
        lines.write(&LineRef::Start(start));
        Self(lines)
    }

    /// The session's tap: each event, and each file's first name.
    pub fn tap(&self) -> RecordingTap {
        RecordingTap {
            lines: self.0.clone(),
            named: HashSet::new(),
        }
    }

    /// The end: every file's state, then the facts; flushed.
    pub fn finish<'a>(
        &self,
        files: impl Iterator<Item = (&'a FileId, &'a FileRecord)>,
        stacks: &[ProcessStack],
        facts: &ReportFacts,
    ) -> std::io::Result<()> {
        for (id, record) in files {
            self.0.write(&LineRef::File(&FileState::of(*id, record)));
        }
        for stack in stacks {
            self.0.write(&LineRef::Stack(stack));
        }
        self.0.write(&LineRef::End(facts));
        self.0.finish()
    }
}

pub struct RecordingTap {
    lines: JsonLines,
    /// Files whose name is written already.
    named: HashSet<FileId>,
}

impl EventObserver for RecordingTap {
    fn observe(&mut self, event: &Event, _applied: &Applied, file: Option<&FileRecord>) {
        use std::os::unix::ffi::OsStrExt as _;
        self.lines.write(&LineRef::Event(event));
        let (Some(id), Some(record)) = (event.file(), file) else {
            return;
        };
        if let (Some(path), Some(source)) = (&record.path, record.path_source) {
            if self.named.insert(id) {
                self.lines.write(&LineRef::Name(&Name {
                    file: id,
                    path: NameBytes(path.as_os_str().as_bytes().to_vec()),
                    source,
                }));
            }
        }
    }
}

/// Maps as lists of `[key, value]` pairs: a JSON object's keys are
/// strings, and a file's identity is not one.
mod pairs {
    use std::{cell::RefCell, collections::BTreeMap};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &RefCell<BTreeMap<K, V>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.borrow().iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<RefCell<BTreeMap<K, V>>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(deserializer)?;
        Ok(RefCell::new(pairs.into_iter().collect()))
    }
}

/// The kernel counters by their declared names (probe-common's
/// `KERNEL_COUNTERS`), so a recording reads the same after a counter is
/// added or its slot moves; an unknown name is refused.
mod counters_by_name {
    use std::collections::BTreeMap;

    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

    use super::{CounterTotals, KernelCounters, KERNEL_COUNTERS};

    #[derive(Serialize, Deserialize)]
    struct Recorded {
        kernel: BTreeMap<String, u64>,
        files_handed_over: u64,
        dirty_files_handed_over: u64,
        files_forgotten: u64,
        file_entries: u64,
    }

    pub fn serialize<S: Serializer>(
        counters: &KernelCounters,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Recorded {
            kernel: counters
                .kernel
                .iter()
                .map(|(counter, total)| (counter.name.to_string(), total))
                .collect(),
            files_handed_over: counters.files_handed_over,
            dirty_files_handed_over: counters.dirty_files_handed_over,
            files_forgotten: counters.files_forgotten,
            file_entries: counters.file_entries,
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<KernelCounters, D::Error> {
        let recorded = Recorded::deserialize(deserializer)?;
        let mut kernel = CounterTotals::default();
        for (name, total) in recorded.kernel {
            let counter = KERNEL_COUNTERS
                .iter()
                .find(|counter| counter.name == name)
                .ok_or_else(|| D::Error::custom(format!("unknown kernel counter '{name}'")))?;
            kernel = kernel.with(counter.index, total);
        }
        Ok(KernelCounters {
            kernel,
            files_handed_over: recorded.files_handed_over,
            dirty_files_handed_over: recorded.dirty_files_handed_over,
            files_forgotten: recorded.files_forgotten,
            file_entries: recorded.file_entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::counter;

    fn facts() -> ReportFacts {
        let answers = Answers::live();
        let file = FileId {
            dev: 1,
            ino: 2,
            generation: 3,
        };
        assert_eq!(
            answers.fs_type(file, || Some("ext4".into())),
            Some("ext4".into())
        );
        assert_eq!(
            answers.not_on_disk(file, || Err("no cachestat".into())),
            Err("no cachestat".into())
        );
        assert_eq!(
            answers.user_name(0, || Some("root".into())),
            Some("root".into())
        );
        assert_eq!(answers.cgroup_path(9, || None), None);
        ReportFacts {
            backend: "tracepoint".into(),
            backend_reason: "only one".into(),
            hooks: vec![],
            fallbacks: vec!["x".into()],
            page_writeback: false,
            duration_s: 1.25,
            counters: KernelCounters {
                kernel: CounterTotals::default()
                    .with(counter::RINGBUF_FULL, 3)
                    .with(counter::DEDUP_INSERTS, 7),
                files_handed_over: 4,
                ..KernelCounters::default()
            },
            dedup_capacity: 8,
            undecodable_records: 1,
            warnings: vec!["w".into()],
            answers,
        }
    }

    fn asked<T>() -> T {
        panic!("a replay asks nothing")
    }

    #[test]
    fn the_end_reads_back_as_written_and_answers_only_what_was_asked() {
        let facts = facts();
        let json = serde_json::to_string(&LineRef::End(&facts)).expect("serializes");
        let Line::End(back) = serde_json::from_str(&json).expect("reads back") else {
            panic!("not an end line: {json}");
        };
        let mut expected = facts.clone();
        expected.answers.live = false;
        assert_eq!(*back, expected);
        let file = FileId {
            dev: 1,
            ino: 2,
            generation: 3,
        };
        assert_eq!(back.answers.fs_type(file, asked), Some("ext4".into()));
        assert_eq!(back.answers.user_name(0, asked), Some("root".into()));
        assert_eq!(
            back.answers.not_on_disk(FileId::default(), asked),
            Err(NOT_RECORDED.into())
        );
    }

    #[test]
    fn every_line_kind_keeps_its_tag() {
        let start = Start::new(Clock::with_offset(5), true, &[PathBuf::from("/d")]);
        let json = serde_json::to_string(&LineRef::Start(&start)).expect("serializes");
        assert!(json.starts_with("{\"start\":"), "{json}");
        let Line::Start(back) = serde_json::from_str(&json).expect("reads back") else {
            panic!("not a start line");
        };
        assert_eq!(back, start);
        let event = Event {
            file: FileId::default(),
            task: crate::model::events::Task::default(),
            boot_ns: 1,
            body: crate::model::events::EventBody::ProcessExit,
            stack_id: None,
        };
        let json = serde_json::to_string(&LineRef::Event(&event)).expect("serializes");
        assert!(matches!(serde_json::from_str(&json), Ok(Line::Event(e)) if e == event));
    }

    #[test]
    fn an_unknown_counter_is_refused() {
        let mut json = serde_json::to_value(LineRef::End(&facts())).expect("serializes");
        json["end"]["counters"]["kernel"]["no_such_counter"] = 1.into();
        let err = serde_json::from_value::<Line>(json).expect_err("refused");
        assert!(err.to_string().contains("no_such_counter"), "{err}");
    }
}
