//! Decoding of ring-buffer records into typed events.
//!
//! Records are checked for length and kind before use; a malformed record is
//! an error, never a panic or an out-of-bounds read.
//!
//! Over 500 lines only with its unit tests (the code is ~390).

use probe_common::{
    sync_call, walk_end, EventHeader, FileEvent, FileKey, PageEvent, RecordKind, SyncEvent,
    PATH_MAX_DEPTH,
};
use zerocopy::FromBytes;

use crate::model::names::NameBytes;

/// Identity of a file: the kernel's `dev_t` (`major << 20 | minor`), inode
/// number and the inode's generation, so that a file created with the
/// inode number of a deleted one is another file.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
    #[serde(default)]
    pub generation: u32,
}

impl FileId {
    pub fn from_key(key: &FileKey) -> Self {
        Self {
            dev: key.dev,
            ino: key.ino,
            generation: key.generation,
        }
    }

    /// Whether stat(2)'s `st_dev` and `st_ino` are this file's (the
    /// generation is not in stat; callers that need it check it apart).
    pub fn is_stat_of(&self, st_dev: u64, st_ino: u64) -> bool {
        let major = libc::major(st_dev);
        let minor = libc::minor(st_dev);
        self.major() == major && self.minor() == minor && self.ino == st_ino
    }

    /// The kernel's own encoding (MINORBITS = 20), not userspace's st_dev
    /// one that `libc::major`/`minor` decode.
    pub fn major(&self) -> u32 {
        self.dev >> 20
    }

    pub fn minor(&self) -> u32 {
        self.dev & 0xfffff
    }

    /// `MAJ:MIN` as in /proc/self/mountinfo and the JSON report.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", self.major(), self.minor())
    }
}

/// Who caused an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(default)]
    pub ids: UserIds,
}

/// A task's user and group ids as the host sees them, and its audit login
/// uid ([`probe_common::Credentials`]).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct UserIds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    /// [`probe_common::UNSET_ID`] when unset.
    pub loginuid: u32,
}

impl UserIds {
    /// The login uid, None when unset.
    pub fn login(&self) -> Option<u32> {
        (self.loginuid != probe_common::UNSET_ID).then_some(self.loginuid)
    }
}

impl From<probe_common::Credentials> for UserIds {
    fn from(creds: probe_common::Credentials) -> Self {
        let probe_common::Credentials {
            uid,
            euid,
            gid,
            egid,
            loginuid,
        } = creds;
        Self {
            uid,
            euid,
            gid,
            egid,
            loginuid,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteKind {
    /// Through a shared mapping: the file is modified.
    Shared,
    /// Through a private mapping: copy-on-write, the file is not modified.
    Cow,
}

/// A call that asks for a file's pages to reach disk.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SyncCall {
    Msync,
    Fsync,
    Fdatasync,
    SyncFileRange,
}

impl SyncCall {
    pub const ALL: [SyncCall; 4] = [
        SyncCall::Msync,
        SyncCall::Fsync,
        SyncCall::Fdatasync,
        SyncCall::SyncFileRange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SyncCall::Msync => "msync",
            SyncCall::Fsync => "fsync",
            SyncCall::Fdatasync => "fdatasync",
            SyncCall::SyncFileRange => "sync_file_range",
        }
    }

    fn from_kernel(call: u32) -> Option<Self> {
        match call {
            sync_call::MSYNC => Some(SyncCall::Msync),
            sync_call::FSYNC => Some(SyncCall::Fsync),
            sync_call::FDATASYNC => Some(SyncCall::Fdatasync),
            sync_call::SYNC_FILE_RANGE => Some(SyncCall::SyncFileRange),
            _ => None,
        }
    }
}

/// One ring-buffer record: what every record says (which file, which
/// task, when), and what its kind adds. Serializable so sessions can be
/// recorded and replayed, e.g. into the dashboard's snapshot tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The file (none for a process exit: zero).
    pub file: FileId,
    /// The task the kernel saw it in; for a writeback completion, whichever
    /// task the kernel finished it in (see [`Event::writer`]).
    pub task: Task,
    /// `bpf_ktime_get_boot_ns()` when the kernel saw it.
    pub boot_ns: u64,
    pub body: EventBody,
    /// The writer's user stack in the kernel's stack map (`--stacks`):
    /// an id, resolved to frames by `session::call_sites` while the
    /// writer lives. Absent from recordings made without stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
}

/// What each kind of record adds to [`Event`]'s header.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventBody {
    /// First write to a page (per kind).
    FirstWrite { page: u64, kind: WriteKind },
    /// A process writing (shared) a page that another process wrote first.
    NewWriter { page: u64 },
    /// A write fault that made a whole large folio writable at once:
    /// stores to any of its pages cause no further fault.
    FolioSpan { first_page: u64, pages: u64 },
    /// Pages a read fault mapped writable into a shared writable mapping of
    /// a file without write-notify (tmpfs): stores to them take no fault,
    /// so they may have been written.
    PossibleWrite { first_page: u64, pages: u64 },
    /// Pages of a file finished writeback (a folio: `pages` from
    /// `first_page`); function-hook backends only.
    WrittenBack { first_page: u64, pages: u64 },
    /// An msync, fsync, fdatasync or sync_file_range call returned:
    /// `pages` from `first_page` (0: the whole file), `result` 0 or a
    /// negative errno; the header's time is when it returned.
    Sync {
        call: SyncCall,
        first_page: u64,
        pages: u64,
        latency_ns: u64,
        result: i64,
    },
    /// A process that had a shared writable mapping exited (`trace`).
    ProcessExit,
    /// A file seen for the first time, with its dentry names, leaf first.
    FileSeen {
        fs_magic: u64,
        components: Vec<NameBytes>,
        walk: WalkEnd,
        /// The names are of the path the writer opened through overlayfs;
        /// the file itself is one of its layers'.
        #[serde(default)]
        through_overlay: bool,
        /// The mount namespace the names are in, from the kernel (None:
        /// not known there; the writer's /proc is asked instead).
        #[serde(default)]
        mount_ns: Option<u64>,
    },
}

/// Where the kernel's walk of a file's names stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkEnd {
    /// Out of slots: the names are the path's last part only.
    Cut,
    /// The root of the file's filesystem: a path inside it, to be put
    /// under a mount of it.
    FsRoot,
    /// The root of the writer's mount namespace, across its mounts: the
    /// whole path as the writer saw it.
    NamespaceRoot,
}

impl Event {
    /// The task whose doing the record is (a writeback completion is
    /// nobody's: the kernel's).
    pub fn writer(&self) -> Option<&Task> {
        match self.body {
            EventBody::WrittenBack { .. } => None,
            _ => Some(&self.task),
        }
    }

    /// The file the record is about (a process exit is about none).
    pub fn file(&self) -> Option<FileId> {
        match self.body {
            EventBody::ProcessExit => None,
            _ => Some(self.file),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} its kind needs")]
    Short { len: usize, need: usize },
    #[error("record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("sync record has unknown call {0}")]
    UnknownSyncCall(u32),
    #[error("span record of {pages} pages from page {first_page} is not a huge page")]
    BadSpan { first_page: u64, pages: u64 },
    #[error("file record claims {depth} names but its {len} bytes of names hold fewer")]
    BadNames { depth: u32, len: u32 },
}

/// The largest span a record may claim: a 1 GiB (PUD) page of 4 KiB pages.
/// The kernel sends 2 MiB spans; anything larger is corrupt, and trusting it
/// would make the aggregate insert billions of pages.
pub const MAX_SPAN_PAGES: u64 = 1 << 18;

/// A sync's range is only reported, never expanded into pages; capped so
/// a corrupt one stays a number.
const MAX_SYNC_PAGES: u64 = 1 << 52;

/// A record of `pages` pages from `page` (a huge span, a folio written
/// back): at least one page, at most [`MAX_SPAN_PAGES`], not past the end of
/// the page index space.
fn read_span(bytes: &[u8]) -> Result<PageEvent, DecodeError> {
    let event: PageEvent = read(bytes)?;
    check_span(event.page, event.pages)?;
    Ok(event)
}

fn check_span(first_page: u64, pages: u64) -> Result<(), DecodeError> {
    if pages == 0 || pages > MAX_SPAN_PAGES || first_page.checked_add(pages).is_none() {
        return Err(DecodeError::BadSpan { first_page, pages });
    }
    Ok(())
}

impl Event {
    /// Holds an event read from elsewhere than the ring (a recording) to
    /// what [`decode`] lets through: a span the aggregate can expand, a
    /// sync's range a number, at most the kernel's depth of names.
    pub fn check(&self) -> Result<(), DecodeError> {
        match &self.body {
            EventBody::FolioSpan { first_page, pages }
            | EventBody::PossibleWrite { first_page, pages }
            | EventBody::WrittenBack { first_page, pages } => check_span(*first_page, *pages),
            EventBody::Sync {
                first_page, pages, ..
            } if *pages > MAX_SYNC_PAGES || first_page.checked_add(*pages).is_none() => {
                Err(DecodeError::BadSpan {
                    first_page: *first_page,
                    pages: *pages,
                })
            }
            EventBody::FileSeen { components, .. } if components.len() > PATH_MAX_DEPTH => {
                Err(DecodeError::BadNames {
                    depth: u32::try_from(components.len()).unwrap_or(u32::MAX),
                    len: 0,
                })
            }
            _ => Ok(()),
        }
    }
}

/// The bytes before the first NUL.
fn c_bytes(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

fn task(header: &EventHeader) -> Task {
    Task {
        pid: header.pid,
        tgid: header.tgid,
        comm: super::names::comm_text(c_bytes(&header.comm)),
        cgroup_id: header.cgroup_id,
        ids: header.creds.into(),
    }
}

fn read<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
    bytes: &[u8],
) -> Result<T, DecodeError> {
    T::read_from_prefix(bytes)
        .map(|(value, _rest)| value)
        .map_err(|_| DecodeError::Short {
            len: bytes.len(),
            need: std::mem::size_of::<T>(),
        })
}

/// The names that follow a FILE_SEEN record, leaf first: `depth` of them,
/// each NUL-terminated, in `names_len` bytes. An empty name is a mount the
/// walk crossed, not a name, and is left out.
fn file_names(bytes: &[u8], event: &FileEvent) -> Result<Vec<NameBytes>, DecodeError> {
    let head = std::mem::size_of::<FileEvent>();
    let need = head + event.names_len as usize;
    let names = bytes.get(head..need).ok_or(DecodeError::Short {
        len: bytes.len(),
        need,
    })?;
    let bad = || DecodeError::BadNames {
        depth: event.depth,
        len: event.names_len,
    };
    if event.depth as usize > PATH_MAX_DEPTH {
        return Err(bad());
    }
    if event.depth == 0 {
        return Ok(Vec::new());
    }
    // Split on the NULs, the last one ending the last name, not starting
    // another.
    let Some((0, names)) = names.split_last() else {
        return Err(bad());
    };
    let steps: Vec<&[u8]> = names
        .split(|&byte| byte == 0)
        .take(event.depth as usize)
        .collect();
    if steps.len() < event.depth as usize {
        return Err(bad());
    }
    Ok(steps
        .into_iter()
        .filter(|name| !name.is_empty())
        .map(|name| NameBytes(name.to_vec()))
        .collect())
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind: RecordKind =
        zerocopy::try_transmute!(header.kind).map_err(|_| DecodeError::UnknownKind(header.kind))?;
    let mut stack_id = None;
    let body = match kind {
        RecordKind::SharedWrite | RecordKind::CowWrite => {
            let event: PageEvent = read(bytes)?;
            stack_id = stack_of(&event);
            EventBody::FirstWrite {
                page: event.page,
                kind: if kind == RecordKind::SharedWrite {
                    WriteKind::Shared
                } else {
                    WriteKind::Cow
                },
            }
        }
        RecordKind::NewWriter => {
            let event: PageEvent = read(bytes)?;
            stack_id = stack_of(&event);
            EventBody::NewWriter { page: event.page }
        }
        RecordKind::FolioSpan | RecordKind::PossibleWrite | RecordKind::PagesWrittenBack => {
            let span = read_span(bytes)?;
            stack_id = stack_of(&span);
            let (first_page, pages) = (span.page, span.pages);
            match kind {
                RecordKind::FolioSpan => EventBody::FolioSpan { first_page, pages },
                RecordKind::PossibleWrite => EventBody::PossibleWrite { first_page, pages },
                _ => EventBody::WrittenBack { first_page, pages },
            }
        }
        RecordKind::Sync => {
            let event: SyncEvent = read(bytes)?;
            let call = SyncCall::from_kernel(event.call)
                .ok_or(DecodeError::UnknownSyncCall(event.call))?;
            EventBody::Sync {
                call,
                first_page: event.first_page,
                pages: event.pages.min(MAX_SYNC_PAGES),
                latency_ns: event.latency_ns,
                result: event.ret,
            }
        }
        RecordKind::ProcessExit => EventBody::ProcessExit,
        RecordKind::FileSeen => {
            let event: FileEvent = read(bytes)?;
            EventBody::FileSeen {
                fs_magic: event.fs_magic,
                components: file_names(bytes, &event)?,
                walk: match event.reached_root & walk_end::END_MASK {
                    walk_end::FS_ROOT => WalkEnd::FsRoot,
                    walk_end::NAMESPACE_ROOT => WalkEnd::NamespaceRoot,
                    _ => WalkEnd::Cut,
                },
                through_overlay: event.reached_root & walk_end::STACKED != 0,
                mount_ns: (event.mount_ns != 0).then_some(u64::from(event.mount_ns)),
            }
        }
    };
    let file = match body {
        EventBody::ProcessExit => FileId::default(),
        _ => FileId {
            dev: header.dev,
            ino: header.ino,
            generation: header.generation,
        },
    };
    Ok(Event {
        file,
        task: task(&header),
        boot_ns: header.boot_ns,
        body,
        stack_id,
    })
}

impl Event {
    /// A write of pages: a first write, a new writer, a span or a
    /// possible write (the records that carry a stack).
    pub fn is_page_write(&self) -> bool {
        matches!(
            self.body,
            EventBody::FirstWrite { .. }
                | EventBody::NewWriter { .. }
                | EventBody::FolioSpan { .. }
                | EventBody::PossibleWrite { .. }
        )
    }
}

/// A page record's stack id, None for [`probe_common::NO_STACK`].
fn stack_of(event: &PageEvent) -> Option<u32> {
    (event.stack_id != probe_common::NO_STACK).then_some(event.stack_id)
}

#[cfg(test)]
mod tests {
    use probe_common::TASK_COMM_LEN;
    use zerocopy::IntoBytes;

    use super::*;

    fn comm(name: &str) -> [u8; TASK_COMM_LEN] {
        let mut out = [0; TASK_COMM_LEN];
        out[..name.len()].copy_from_slice(name.as_bytes());
        out
    }

    fn header(kind: RecordKind) -> EventHeader {
        raw_header(kind as u32)
    }

    fn raw_header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            pid: 11,
            tgid: 10,
            dev: (254 << 20) | 1,
            ino: 4242,
            boot_ns: 99,
            cgroup_id: 7,
            comm: comm("writer"),
            generation: 0,
            creds: probe_common::Credentials {
                uid: 1000,
                euid: 1001,
                gid: 100,
                egid: 101,
                loginuid: probe_common::UNSET_ID,
            },
        }
    }

    #[test]
    fn a_sync_record_decodes_with_its_call_and_latency() {
        let record = SyncEvent {
            header: header(RecordKind::Sync),
            call: sync_call::FDATASYNC,
            _pad: 0,
            ret: -5,
            latency_ns: 1_500,
            first_page: 0,
            pages: 0,
        };
        let event = decode(record.as_bytes()).expect("decodes");
        let EventBody::Sync {
            call,
            latency_ns,
            result,
            ..
        } = event.body
        else {
            panic!("not a sync: {event:?}");
        };
        assert_eq!((call, latency_ns, result), (SyncCall::Fdatasync, 1_500, -5));
        assert_eq!(event.task.comm, "writer");
        let unknown = SyncEvent { call: 99, ..record };
        assert_eq!(
            decode(unknown.as_bytes()),
            Err(DecodeError::UnknownSyncCall(99))
        );
        assert!(matches!(
            decode(&record.as_bytes()[..40]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_shared_first_write() {
        let record = PageEvent {
            header: header(RecordKind::SharedWrite),
            page: 17,
            pages: 1,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        let event = decode(record.as_bytes()).unwrap();
        assert_eq!(
            event,
            Event {
                file: FileId {
                    dev: (254 << 20) | 1,
                    ino: 4242,
                    generation: 0
                },
                task: Task {
                    pid: 11,
                    tgid: 10,
                    comm: "writer".into(),
                    cgroup_id: 7,
                    ids: UserIds {
                        uid: 1000,
                        euid: 1001,
                        gid: 100,
                        egid: 101,
                        loginuid: probe_common::UNSET_ID,
                    },
                },
                boot_ns: 99,
                body: EventBody::FirstWrite {
                    page: 17,
                    kind: WriteKind::Shared
                },
                stack_id: None,
            }
        );
    }

    #[test]
    fn decodes_cow_and_new_writer() {
        let cow = PageEvent {
            header: header(RecordKind::CowWrite),
            page: 3,
            pages: 1,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert!(matches!(
            decode(cow.as_bytes()).unwrap().body,
            EventBody::FirstWrite {
                kind: WriteKind::Cow,
                page: 3,
                ..
            }
        ));
        let writer = PageEvent {
            header: header(RecordKind::NewWriter),
            page: 5,
            pages: 1,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert!(matches!(
            decode(writer.as_bytes()).unwrap().body,
            EventBody::NewWriter { page: 5, .. }
        ));
        let span = PageEvent {
            header: header(RecordKind::FolioSpan),
            page: 512,
            pages: 512,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert!(matches!(
            decode(span.as_bytes()).unwrap().body,
            EventBody::FolioSpan {
                first_page: 512,
                pages: 512,
                ..
            }
        ));
    }

    #[test]
    fn decodes_written_back_folios_and_refuses_empty_ones() {
        let folio = PageEvent {
            header: header(RecordKind::PagesWrittenBack),
            page: 16,
            pages: 4,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert!(matches!(
            decode(folio.as_bytes()).unwrap().body,
            EventBody::WrittenBack {
                first_page: 16,
                pages: 4,
                ..
            }
        ));
        let empty = PageEvent { pages: 0, ..folio };
        assert!(matches!(
            decode(empty.as_bytes()),
            Err(DecodeError::BadSpan { .. })
        ));
    }

    /// A FILE_SEEN record's bytes: the record, then these names packed as
    /// the walk packs them, each NUL-terminated.
    fn file_seen_bytes(names: &[&[u8]], depth: u32, reached_root: u32) -> Vec<u8> {
        let packed: Vec<u8> = names
            .iter()
            .flat_map(|name| name.iter().copied().chain([0]))
            .collect();
        let record = FileEvent {
            header: header(RecordKind::FileSeen),
            fs_magic: 0xEF53,
            depth,
            reached_root,
            mount_ns: 0,
            names_len: packed.len() as u32,
        };
        [record.as_bytes(), &packed].concat()
    }

    /// A FILE_SEEN record with these names, decoded to (names, walk end,
    /// through overlayfs).
    fn decoded_file_seen(
        names: &[&[u8]],
        depth: u32,
        reached_root: u32,
    ) -> (Vec<NameBytes>, WalkEnd, bool) {
        match decode(&file_seen_bytes(names, depth, reached_root))
            .unwrap()
            .body
        {
            EventBody::FileSeen {
                components,
                walk,
                through_overlay,
                fs_magic,
                ..
            } => {
                assert_eq!(fs_magic, 0xEF53);
                (components, walk, through_overlay)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_file_record_whose_names_do_not_hold_up_is_refused() {
        // Names cut short by the record's end.
        let whole = file_seen_bytes(&[b"data.bin", b"tmp"], 2, walk_end::FS_ROOT);
        assert!(matches!(
            decode(&whole[..whole.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        // More names claimed than the bytes hold.
        assert!(matches!(
            decode(&file_seen_bytes(&[b"data.bin"], 2, walk_end::FS_ROOT)),
            Err(DecodeError::BadNames { depth: 2, .. })
        ));
        assert!(matches!(
            decode(&file_seen_bytes(&[], PATH_MAX_DEPTH as u32 + 1, 0)),
            Err(DecodeError::BadNames { .. })
        ));
        // A last name without its NUL.
        let mut unterminated = whole.clone();
        unterminated.pop();
        let names_len = std::mem::offset_of!(FileEvent, names_len);
        let len = u32::from_ne_bytes(unterminated[names_len..names_len + 4].try_into().unwrap());
        unterminated[names_len..names_len + 4].copy_from_slice(&(len - 1).to_ne_bytes());
        assert!(matches!(
            decode(&unterminated),
            Err(DecodeError::BadNames { .. })
        ));
        // No names at all: a window found without its mapping.
        assert!(matches!(
            decode(&file_seen_bytes(&[], 0, walk_end::CUT)).unwrap().body,
            EventBody::FileSeen { components, .. } if components.is_empty()
        ));
    }

    #[test]
    fn decodes_file_components_up_to_depth() {
        // Garbage beyond `depth` must be ignored.
        let (names, walk, through_overlay) =
            decoded_file_seen(&[b"data.bin", b"tmp", b"junk"], 2, walk_end::FS_ROOT);
        assert_eq!(names, vec!["data.bin", "tmp"]);
        assert_eq!(walk, WalkEnd::FsRoot);
        assert!(!through_overlay);
    }

    #[test]
    fn a_walk_across_mounts_drops_its_crossing_marks() {
        // /data/f on a mount at /data: "f", crossing, "data".
        let (names, walk, through_overlay) = decoded_file_seen(
            &[b"f", b"", b"data"],
            3,
            walk_end::NAMESPACE_ROOT | walk_end::STACKED,
        );
        assert_eq!(names, vec!["f", "data"]);
        assert_eq!(walk, WalkEnd::NamespaceRoot);
        assert!(through_overlay);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let record = PageEvent {
            header: header(RecordKind::SharedWrite),
            page: 1,
            pages: 1,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        let bytes = record.as_bytes();
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        // A header alone is too short for a page event.
        assert!(matches!(
            decode(&bytes[..std::mem::size_of::<EventHeader>()]),
            Err(DecodeError::Short { .. })
        ));
        let file_header = header(RecordKind::FileSeen);
        assert!(matches!(
            decode(file_header.as_bytes()),
            Err(DecodeError::Short { .. })
        ));
        let unknown = PageEvent {
            header: raw_header(99),
            page: 1,
            pages: 1,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert_eq!(
            decode(unknown.as_bytes()),
            Err(DecodeError::UnknownKind(99))
        );
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn rejects_spans_that_are_not_huge_pages() {
        let span = |page, pages| PageEvent {
            header: header(RecordKind::FolioSpan),
            page,
            pages,
            stack_id: probe_common::NO_STACK,
            _pad: 0,
        };
        assert!(decode(span(0, 512).as_bytes()).is_ok());
        for (page, pages) in [(0, 0), (0, MAX_SPAN_PAGES + 1), (u64::MAX - 10, 512)] {
            assert_eq!(
                decode(span(page, pages).as_bytes()),
                Err(DecodeError::BadSpan {
                    first_page: page,
                    pages
                })
            );
        }
        // Found by the fuzzer: a span of ~1.7e19 pages ran out of memory
        // (the header's credentials, added since, are zero; so is the
        // stack id after it: none).
        let found = b"\x05\x00\x00\x00\x00\x00\x00\x4c\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xe2\xea\xea\xea\xea\xa2\xa2\xa2\xa2\xa2\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\xea\x0a\x01\x00\x00\x00\x00\x00\x00\xea\xea\x00\x27\x27\x27\x27\x27\x27\x67\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x27\x27\x01\x00\x00\x00\x27\xea\xea\x4c\xea\xea\xea\xea\xea\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00";
        assert!(matches!(decode(found), Err(DecodeError::BadSpan { .. })));
    }
}
