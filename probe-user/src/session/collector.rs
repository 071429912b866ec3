//! The collector: ring-buffer records decoded into the aggregate, files
//! named while their writers are alive, and the front ends' taps on the
//! event stream.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, RingBuf};

use crate::{
    model::{
        aggregate::{Aggregate, Applied},
        events::{decode, Event, EventBody, FileId, WalkEnd},
        file_handle::current_name,
        file_record::{FileRecord, PathSource},
        paths::{fs_has_writeback, mount_ns_of, proc_maps_path, MountTable},
    },
    session::page_cache::written_pages_not_on_disk,
};

/// Files looked at when one writer exits (a cachestat call per written
/// range each).
const MAX_FILES_AT_EXIT: usize = 1024;

/// A front end's tap on the decoded event stream, called for every event
/// once the aggregate has taken it and the file is named (`file` is its
/// record then): what a front end keeps of the stream (a recording, counts
/// per interval) stays in the front end.
pub trait EventObserver {
    fn observe(&mut self, event: &Event, applied: &Applied, file: Option<&FileRecord>);
}

/// Collects events from the ring buffer into the aggregate, naming files
/// while their writers are alive.
pub struct Collector {
    pub aggregate: Aggregate,
    pub undecodable: u64,
    /// Front ends' taps on the event stream (see [`EventObserver`]).
    observers: Vec<Box<dyn EventObserver>>,
    mounts: MountTable,
    proc_root: PathBuf,
    /// Our mount namespace: a writer's path in the same one is ours too.
    own_mount_ns: Option<u64>,
    /// Files the kernel announced (each has taken an entry in its
    /// per-file map).
    pub files_announced: u64,
}

impl Collector {
    pub fn new() -> Self {
        Self {
            aggregate: Aggregate::new(),
            undecodable: 0,
            observers: Vec::new(),
            mounts: MountTable::read(),
            proc_root: PathBuf::from("/proc"),
            own_mount_ns: mount_ns_of(Path::new("/proc"), std::process::id()),
            files_announced: 0,
        }
    }

    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    fn resolve_path(&mut self, file: FileId, tgid: u32) {
        // Through overlayfs the kernel's walk gave the path the writer
        // opened; /proc may show the layer's file instead.
        if self
            .aggregate
            .file(&file)
            .is_some_and(|record| record.details().through_overlay)
        {
            return;
        }
        if let Some(mapped) = proc_maps_path(&self.proc_root, tgid, file) {
            self.aggregate
                .set_path(file, mapped.path, PathSource::ProcMaps);
            if mapped.deleted {
                self.aggregate.set_deleted(file);
            }
        }
    }

    /// Names every file as it is now (renamed, deleted or as first seen),
    /// for a report made now.
    pub fn name_files_now(&mut self) {
        let files: Vec<_> = self
            .aggregate
            .files()
            .map(|(file, record)| (*file, record.fs_magic(), record.path.clone()))
            .collect();
        self.name_now(files);
    }

    /// Names as they are now the `limit` files written last: what a
    /// dashboard shows at each refresh (~2 syscalls a file), without the
    /// cost of naming every file a long run has seen.
    pub fn name_recent_files_now(&mut self, limit: usize) {
        let mut files: Vec<_> = self
            .aggregate
            .files()
            .map(|(file, record)| (record.last_activity_boot_ns(), *file))
            .collect();
        if files.len() > limit {
            files.select_nth_unstable_by(limit, |a, b| b.cmp(a));
            files.truncate(limit);
        }
        let files = files
            .into_iter()
            .filter_map(|(_, file)| {
                let record = self.aggregate.file(&file)?;
                Some((file, record.fs_magic(), record.path.clone()))
            })
            .collect();
        self.name_now(files);
    }

    fn name_now(&mut self, files: Vec<(FileId, Option<u64>, Option<std::path::PathBuf>)>) {
        // Each mount point opened once, not once per file.
        let mut opened: HashMap<PathBuf, Option<std::fs::File>> = HashMap::new();
        for (file, fs_magic, recorded) in files {
            let mount = self.mounts.mount_of(file).and_then(|m| {
                opened
                    .entry(m.mount_point.clone())
                    .or_insert_with(|| std::fs::File::open(&m.mount_point).ok())
                    .as_ref()
            });
            if let Some(name) = current_name(file, fs_magic, recorded.as_deref(), mount) {
                self.aggregate.set_current_name(file, name);
            }
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        let event = match decode(bytes) {
            Ok(event) => event,
            Err(err) => {
                self.undecodable += 1;
                log::warn!("undecodable record: {err}");
                return;
            }
        };
        if let EventBody::FileSeen {
            components,
            walk,
            through_overlay,
            mount_ns,
            ..
        } = &event.body
        {
            let file = event.file;
            self.files_announced += 1;
            // A mount made after start-up: read the table again.
            if self.mounts.fs_type(file).is_none() {
                self.mounts = MountTable::read();
            }
            let tgid = event.task.tgid;
            // Not mounted in our view and not named whole by the kernel: a
            // mount of the writer's namespace (a container's tmpfs), named
            // as the writer sees it while it lives.
            let writers_mounts = (*walk != WalkEnd::NamespaceRoot
                && self.mounts.fs_type(file).is_none())
            .then(|| MountTable::of_process(&self.proc_root, tgid))
            .flatten();
            let path = writers_mounts
                .as_ref()
                .unwrap_or(&self.mounts)
                .dentry_full_path(file, components, *walk);
            let applied = self.aggregate.apply(&event);
            self.aggregate.set_path(file, path, PathSource::Dentry);
            if *through_overlay {
                self.aggregate.set_through_overlay(file);
            }
            // The kernel's number holds after the writer is gone.
            if let Some(mount_ns) = mount_ns.or_else(|| mount_ns_of(&self.proc_root, tgid)) {
                self.aggregate.set_mount_ns(file, mount_ns);
            }
            // The kernel named it whole, in the view we share with its
            // writer: /proc adds nothing, and reading the writer's maps
            // takes its mmap lock and ~10 syscalls, per new file. Renames
            // and unlinks since are seen when the report is made.
            let named_whole = *walk == WalkEnd::NamespaceRoot
                && !*through_overlay
                && mount_ns.is_some_and(|ns| Some(ns) == self.own_mount_ns);
            if !named_whole {
                self.resolve_path(file, tgid);
            }
            self.notify(&event, &applied);
            return;
        }
        let applied = self.aggregate.apply(&event);
        if let Some((file, tgid)) = applied.new_file {
            self.resolve_path(file, tgid);
        }
        if event.body == EventBody::ProcessExit {
            self.look_at_pages_of(event.task.tgid, &applied.exited_writer_of);
        }
        self.notify(&event, &applied);
    }

    /// A writer exited: how much of what was written to each of its files
    /// is not on disk yet (the first [`MAX_FILES_AT_EXIT`]; a process
    /// writing more files than that is told of as unknown for the rest).
    fn look_at_pages_of(&mut self, tgid: u32, files: &[FileId]) {
        for (index, &file) in files.iter().enumerate() {
            let pages = if index < MAX_FILES_AT_EXIT {
                let Some(record) = self.aggregate.file(&file) else {
                    continue;
                };
                self.pages_not_on_disk(file, record)
            } else {
                Err(format!(
                    "not looked at: the process wrote more than {MAX_FILES_AT_EXIT} files"
                ))
            };
            self.aggregate.set_not_on_disk_at_exit(file, tgid, pages);
        }
    }

    /// Written pages of `file` not on disk yet, or why that is unknown.
    pub fn pages_not_on_disk(&self, file: FileId, record: &FileRecord) -> Result<u64, String> {
        let mount_point = self.mounts.mount_of(file).map(|m| m.mount_point.clone());
        let has_writeback = fs_has_writeback(self.mounts.fs_type(file));
        written_pages_not_on_disk(file, record, mount_point.as_deref(), has_writeback)
    }

    /// Observers hear of an event after the file is named, so what they
    /// keep (an event stream's path) is the name the report would give now.
    fn notify(&mut self, event: &Event, applied: &Applied) {
        if self.observers.is_empty() {
            return;
        }
        let file = event.file().and_then(|id| self.aggregate.file(&id));
        for observer in &mut self.observers {
            observer.observe(event, applied, file);
        }
    }

    /// Adds a tap on the event stream.
    pub fn observe(&mut self, observer: Box<dyn EventObserver>) {
        self.observers.push(observer);
    }

    /// Reads every record available now.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut count = 0;
        while let Some(item) = ring.next() {
            self.record(&item);
            count += 1;
        }
        count
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}
