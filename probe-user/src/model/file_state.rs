//! What a file's record holds besides what its events made: its names as
//! last looked at, the kernel's counts for it, its `->page_mkwrite`, and
//! what its exited writers left unwritten. A recording (`trace --record`)
//! keeps this per file at the end, so that a replay (`mmapwatch report`)
//! rebuilds the record from the events and this, without the machine.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::PathBuf};

use probe_common::FileStats;
use serde::{Deserialize, Serialize};

use super::{
    aggregate::Aggregate,
    events::FileId,
    file_record::{FileRecord, PathSource},
    names::NameBytes,
};

/// The kernel's counts of a file, field by field in the order
/// `probe_common::FileStats` declares them.
const STATS_FIELDS: usize = size_of::<FileStats>() / size_of::<u64>();

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub file: FileId,
    pub path: Option<NameBytes>,
    pub path_source: Option<PathSource>,
    pub deleted: bool,
    pub renamed_from: Option<NameBytes>,
    pub through_overlay: bool,
    pub backing_path: Option<NameBytes>,
    pub mount_ns: u64,
    pub fs_magic: u64,
    pub kernel: [u64; STATS_FIELDS],
    pub page_mkwrite: Option<String>,
    /// Per exited writer (by process id): its file's pages not on disk
    /// when it exited, or why that is unknown.
    pub not_on_disk_at_exit: Vec<(u32, Result<u64, String>)>,
}

fn bytes_of(path: Option<&std::path::Path>) -> Option<NameBytes> {
    path.map(|path| NameBytes(path.as_os_str().as_bytes().to_vec()))
}

fn path_of(bytes: &Option<NameBytes>) -> Option<PathBuf> {
    bytes
        .as_ref()
        .map(|name| PathBuf::from(OsStr::from_bytes(&name.0)))
}

impl FileState {
    pub fn of(file: FileId, record: &FileRecord) -> Self {
        let details = record.details();
        let mut exits: Vec<(u32, Result<u64, String>)> = record
            .writers
            .values()
            .filter_map(|writer| {
                let exit = writer.exit.as_deref()?;
                Some((writer.tgid, exit.not_on_disk.clone()?))
            })
            .collect();
        exits.sort_by_key(|(tgid, _)| *tgid);
        exits.dedup_by_key(|(tgid, _)| *tgid);
        Self {
            file,
            path: bytes_of(record.path.as_deref()),
            path_source: record.path_source,
            deleted: record.deleted,
            renamed_from: bytes_of(details.renamed_from.as_deref()),
            through_overlay: details.through_overlay,
            backing_path: bytes_of(details.backing_path.as_deref()),
            mount_ns: record.mount_ns,
            fs_magic: record.fs_magic,
            kernel: zerocopy::transmute!(record.kernel),
            page_mkwrite: record.page_mkwrite.as_deref().map(str::to_owned),
            not_on_disk_at_exit: exits,
        }
    }
}

impl Aggregate {
    /// Puts back what [`FileState::of`] took from a record whose events
    /// were applied again. `create`: a file no event named gets a record
    /// (as the kernel's counts alone make one live); a replay that leaves
    /// writers out passes false, so their files stay out.
    pub fn restore(&mut self, state: &FileState, create: bool) {
        if !create && self.file(&state.file).is_none() {
            return;
        }
        let (record, _) = self.record(state.file);
        record.path = path_of(&state.path);
        record.path_source = state.path_source;
        record.deleted = state.deleted;
        record.mount_ns = state.mount_ns;
        record.fs_magic = state.fs_magic;
        record.kernel = zerocopy::transmute!(state.kernel);
        record.page_mkwrite = state.page_mkwrite.as_deref().map(Into::into);
        let (renamed_from, backing_path) =
            (path_of(&state.renamed_from), path_of(&state.backing_path));
        if renamed_from.is_some() || backing_path.is_some() || state.through_overlay {
            let details = record.details_mut();
            details.renamed_from = renamed_from;
            details.backing_path = backing_path;
            details.through_overlay = state.through_overlay;
        }
        for (tgid, not_on_disk) in &state.not_on_disk_at_exit {
            for writer in record.writers.of_process_mut(*tgid) {
                if let Some(exit) = writer.exit.as_deref_mut() {
                    exit.not_on_disk = Some(not_on_disk.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        events::{Event, EventBody, Task, WriteKind},
        file_record::CurrentName,
    };

    const FILE: FileId = FileId {
        dev: (8 << 20) | 3,
        ino: 77,
        generation: 2,
    };

    fn events() -> Vec<Event> {
        let task = Task {
            pid: 9,
            tgid: 9,
            comm: "w".into(),
            cgroup_id: 4,
            ..Task::default()
        };
        vec![
            Event {
                file: FILE,
                task: task.clone(),
                boot_ns: 10,
                body: EventBody::FirstWrite {
                    page: 3,
                    kind: WriteKind::Shared,
                },
                stack_id: None,
            },
            Event {
                file: FileId::default(),
                task,
                boot_ns: 20,
                body: EventBody::ProcessExit,
                stack_id: None,
            },
        ]
    }

    /// The live side: events, then what the session learnt apart.
    fn live() -> Aggregate {
        let mut live = Aggregate::new();
        for event in events() {
            live.apply(&event);
        }
        live.set_path(FILE, "/d/a\u{ff}".into(), PathSource::ProcMaps);
        live.set_current_name(
            FILE,
            CurrentName::Linked(PathBuf::from(OsStr::from_bytes(b"/d/b\xfe"))),
        );
        live.set_mount_ns(FILE, 4026531841);
        live.set_page_mkwrite(FILE, "ext4_page_mkwrite".into());
        live.set_not_on_disk_at_exit(FILE, 9, Err("no cachestat".into()));
        let stats = FileStats {
            shared_write_faults: 2,
            folios_dirtied: 1,
            last_writeback_end_boot_ns: 30,
            ..FileStats::default()
        };
        live.set_kernel_stats(FILE, [&stats]);
        live
    }

    #[test]
    fn events_and_the_state_give_back_the_record() {
        let live = live();
        let state = FileState::of(FILE, live.file(&FILE).expect("live file"));
        // Through JSON, as a recording keeps it.
        let json = serde_json::to_string(&state).expect("serializes");
        let state: FileState = serde_json::from_str(&json).expect("deserializes");
        let mut replayed = Aggregate::new();
        for event in events() {
            replayed.apply(&event);
        }
        replayed.restore(&state, true);
        let record = replayed.file(&FILE).expect("replayed file");
        assert_eq!(FileState::of(FILE, record), state);
        assert_eq!(
            record.path.as_deref().map(|p| p.as_os_str().as_bytes()),
            Some(&b"/d/b\xfe"[..])
        );
        assert_eq!(
            record.details().renamed_from.as_deref(),
            Some(std::path::Path::new("/d/a\u{ff}"))
        );
        assert_eq!(record.kernel.folios_dirtied, 1);
        assert_eq!(
            record
                .writers
                .values()
                .next()
                .and_then(|w| w.exit.clone())
                .map(|e| e.not_on_disk),
            Some(Some(Err("no cachestat".to_string())))
        );
    }

    #[test]
    fn a_file_no_event_named_is_made_only_when_asked() {
        let state = FileState::of(FILE, live().file(&FILE).expect("live file"));
        let mut narrowed = Aggregate::new();
        narrowed.restore(&state, false);
        assert!(narrowed.is_empty());
        narrowed.restore(&state, true);
        assert_eq!(narrowed.len(), 1);
    }
}
