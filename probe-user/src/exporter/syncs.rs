//! Sync calls (msync, fsync, fdatasync, sync_file_range) on files written
//! through mmap, tapped from the session's event stream until a refresh
//! turns them into metrics.

use std::{cell::RefCell, rc::Rc};

use crate::{
    model::{
        aggregate::Applied,
        events::{Event, EventBody, FileId, SyncCall},
        file_record::FileRecord,
    },
    session::EventObserver,
};

pub struct SyncSeen {
    pub file: FileId,
    pub call: SyncCall,
    pub latency_ns: u64,
    pub failed: bool,
}

#[derive(Clone, Default)]
pub struct SyncTap(Rc<RefCell<Vec<SyncSeen>>>);

impl SyncTap {
    pub fn take(&self) -> Vec<SyncSeen> {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

impl EventObserver for SyncTap {
    fn observe(&mut self, event: &Event, _applied: &Applied, file: Option<&FileRecord>) {
        // As in the report: only files written through a mapping.
        if let (
            EventBody::Sync {
                call,
                latency_ns,
                result,
                ..
            },
            Some(_),
        ) = (&event.body, file)
        {
            self.0.borrow_mut().push(SyncSeen {
                file: event.file,
                call: *call,
                latency_ns: *latency_ns,
                failed: *result < 0,
            });
        }
    }
}
