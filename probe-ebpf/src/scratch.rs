//! Per-CPU working memory of the fault path (the BPF stack is 512 bytes
//! for a whole call chain).

use probe_common::{
    Credentials, EventHeader, FileEvent, PendingCounts, PendingFault, FILE_NAMES_BUFFER,
    MAPLE_MAX_PIVOTS, TASK_COMM_LEN,
};

use crate::{
    dedup::ChunkCache,
    filter::WriterCache,
    folio::LargeFolioCache,
    kernel::ENOENT,
    maps::SCRATCH,
    vma::{VmaCache, VmaInfo},
};

/// Per-CPU working memory of the fault programs: the BPF stack is 512
/// bytes for a whole call chain (Linux 6.1 counts callbacks in it too).
/// Programs on one CPU do not interleave here: the fault programs do not
/// run in interrupts, and a BPF program is not preempted by another fault
/// program on its CPU.
#[repr(C)]
pub(crate) struct FaultScratch {
    /// First: all an anonymous fault reads of this struct lies in its
    /// first 64 bytes (see `find_mapping`).
    pub(crate) cache: VmaCache,
    pub(crate) info: VmaInfo,
    pub(crate) pivots: [u64; MAPLE_MAX_PIVOTS],
    pub(crate) fault: WriteFault,
    pub(crate) header: EventHeader,
    /// Built here, not on the stack (see above).
    pub(crate) pending: PendingFault,
    pub(crate) writer: WriterCache,
    pub(crate) chunk_cache: ChunkCache,
    pub(crate) closing_run: PendingCounts,
    pub(crate) large_folios: LargeFolioCache,
}

/// A new file's record as it is built: the record, then its names packed
/// back to back (sent: the record and the names used), then where the walk
/// starts (not sent). Its own per-CPU slot: the fault path's scratch is in
/// use when a fault announces a file.
#[repr(C)]
pub(crate) struct FileNames {
    pub(crate) event: FileEvent,
    pub(crate) names: [u8; FILE_NAMES_BUFFER],
    pub(crate) walk_start: [u64; 3],
}

#[inline(always)]
pub(crate) fn fault_scratch() -> Result<&'static mut FaultScratch, i64> {
    let slot = SCRATCH.get_ptr_mut(0).ok_or(-ENOENT)?;
    // SAFETY: this CPU's slot of a one-entry per-CPU array (see above).
    Ok(unsafe { &mut *slot })
}

/// A write fault whose page is known.
#[repr(C)]
pub(crate) struct WriteFault {
    pub(crate) pid_tgid: u64,
    /// The faulting task's mm, as the mapping lookup found it (0 when it
    /// did not look).
    pub(crate) mm: u64,
    pub(crate) address: u64,
    /// File page index.
    pub(crate) page: u64,
    /// 1: no page was mapped at the address (not a protection fault).
    pub(crate) not_present: u64,
    pub(crate) now: u64,
    pub(crate) cgroup_id: u64,
    pub(crate) comm: [u8; TASK_COMM_LEN],
    pub(crate) creds: Credentials,
}
