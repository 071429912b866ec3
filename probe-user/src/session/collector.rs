//! The collector: ring-buffer records decoded into the aggregate, each new
//! file handed to the namer (`naming`), and the front ends' taps on the
//! event stream.

use std::{cell::RefCell, rc::Rc};

use aya::maps::{MapData, RingBuf};

use crate::{
    model::{
        aggregate::{Aggregate, Applied},
        events::{decode, Event, EventBody, FileId},
        file_record::FileRecord,
        paths::{fs_has_writeback, MountTable},
    },
    session::{naming::Namer, page_cache::written_pages_not_on_disk, stacks::StackResolver},
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
    namer: Namer,
    /// Files the kernel announced (each has taken an entry in its
    /// per-file map).
    pub files_announced: u64,
    /// The call sites of first writes (`--stacks`), shared with the
    /// event stream (its `stack` lines).
    pub stacks: Option<Rc<RefCell<StackResolver>>>,
}

impl Collector {
    pub fn new() -> Self {
        Self {
            aggregate: Aggregate::new(),
            undecodable: 0,
            observers: Vec::new(),
            namer: Namer::new(),
            files_announced: 0,
            stacks: None,
        }
    }

    pub fn mounts(&self) -> &MountTable {
        self.namer.mounts()
    }

    /// Names every file as it is now (renamed, deleted or as first seen),
    /// for a report made now.
    pub fn name_files_now(&mut self) {
        let files = self.aggregate.files().map(|(file, _)| *file).collect();
        self.namer.name_now(&mut self.aggregate, files);
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
        let files = files.into_iter().map(|(_, file)| file).collect();
        self.namer.name_now(&mut self.aggregate, files);
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
        let applied = self.aggregate.apply(&event);
        if let Some(stacks) = &self.stacks {
            stacks.borrow_mut().observe(&event);
        }
        match &event.body {
            EventBody::FileSeen { .. } => {
                self.files_announced += 1;
                self.namer.name_announced(&mut self.aggregate, &event);
            }
            _ => {
                if let Some((file, tgid)) = applied.new_file {
                    self.namer.name_from_proc(&mut self.aggregate, file, tgid);
                }
            }
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
        let mounts = self.namer.mounts();
        let mount_point = mounts.mount_of(file).map(|m| m.mount_point.clone());
        let has_writeback = fs_has_writeback(mounts.fs_type(file));
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
        if let Some(stacks) = self.stacks.clone() {
            return self.drain_locating_stacks(ring, &stacks);
        }
        let mut count = 0;
        while let Some(item) = ring.next() {
            self.record(&item);
            count += 1;
        }
        count
    }

    /// [`Collector::drain`] with stacks: every record waiting is read
    /// first and its stack located, then the records are taken in order.
    /// The event stream names stacks as it writes them, and the first look
    /// at an object's symbols takes a while: the writers of the records
    /// behind it may exit meanwhile, and their stacks are located already.
    fn drain_locating_stacks(
        &mut self,
        ring: &mut RingBuf<MapData>,
        stacks: &RefCell<StackResolver>,
    ) -> usize {
        let mut waiting = Vec::new();
        while let Some(item) = ring.next() {
            waiting.push(item.to_vec());
        }
        {
            let mut stacks = stacks.borrow_mut();
            for bytes in &waiting {
                if let Ok(event) = decode(bytes) {
                    stacks.locate_stack_of(&event);
                }
            }
        }
        for bytes in &waiting {
            self.record(bytes);
        }
        waiting.len()
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}
