//! The maps the programs share with each other and with userspace, and
//! the per-CPU counters.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use probe_common::{
    counter, EventHeader, FileKey, FileStats, PageChunk, PageChunkKey, PendingCounts, PendingFault,
    PendingSync, WriterKey, WriterStats, WriterStatsKey, CHUNK_PAGES, FILE_STATS_ENTRIES,
    LATENCY_BUCKETS,
};

use crate::scratch::{FaultScratch, FileNames};

// Sizes below are defaults; userspace may resize maps before load.
#[map(name = "mw_events")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Writers' user stacks by id (`--stacks`); one entry unless userspace
/// sizes it for stacks.
#[map(name = "mw_stacks")]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// (file, chunk of pages, kind) -> which of its pages were reported, and
/// by whom first.
#[map(name = "mw_page_seen")]
pub(crate) static PAGE_SEEN: LruHashMap<PageChunkKey, PageChunk> =
    LruHashMap::with_max_entries(1 << 16, 0);

/// What a new dedup entry starts from (an insert copies it; it is too big
/// for the fault path's stack).
pub(crate) static EMPTY_CHUNK: PageChunk = PageChunk {
    first_tgid: 0,
    _pad: 0,
    reported: [0; (CHUNK_PAGES / 64) as usize],
};

/// What a new per-file stats entry starts from (an insert copies it; on
/// the stack it would lengthen the fault path's deepest frame chain).
pub(crate) static EMPTY_FILE_STATS: FileStats = FileStats::ZEROED;

/// What a new per-writer stats entry starts from (as above).
pub(crate) static EMPTY_WRITER_STATS: WriterStats = WriterStats {
    shared_write_faults: 0,
    cow_faults: 0,
};

/// (file, tgid) for processes that wrote a page another process wrote first.
#[map(name = "mw_writers")]
pub(crate) static WRITERS: LruHashMap<WriterKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

/// File -> its counts. One value for all CPUs, added to atomically, and
/// preallocated (~9 MiB whatever the CPUs): an entry is made for every new
/// file, on the writer's fault, and a per-CPU hash allocates each entry's
/// per-CPU memory then (~9 us of the writer's time per new file here; a
/// preallocated per-CPU one costs its size times the CPUs).
#[map(name = "mw_file_stats")]
pub(crate) static FILE_STATS: HashMap<FileKey, FileStats> =
    HashMap::with_max_entries(FILE_STATS_ENTRIES, 0);

/// This CPU's open run of fault counts (see [`PendingCounts`]).
#[map(name = "mw_pending_counts")]
pub(crate) static PENDING_COUNTS: PerCpuArray<PendingCounts> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "mw_counters")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// (cgroup, filesystem, command name) -> fault counts, for metrics labels.
#[map(name = "mw_writer_stats")]
pub(crate) static WRITER_STATS: PerCpuHashMap<WriterStatsKey, WriterStats> =
    PerCpuHashMap::with_max_entries(1 << 14, BPF_F_NO_PREALLOC);

/// File -> when it was first dirtied since its last completed writeback.
#[map(name = "mw_dirty_since")]
pub(crate) static DIRTY_SINCE: HashMap<FileKey, u64> = HashMap::with_max_entries(1 << 16, 0);

/// log2 histogram of dirty-to-writeback-complete latency in nanoseconds,
/// then their sum (`LATENCY_SUM_SLOT`).
#[map(name = "mw_writeback_latency")]
pub(crate) static WRITEBACK_LATENCY: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(LATENCY_BUCKETS + 1, 0);

/// Thread id -> its last shared write fault on a page not yet in the page
/// cache, for `writeback_dirty_folio`, which runs later in the same fault
/// (possibly on another CPU: page_mkwrite may sleep) with the new folio.
#[map(name = "mw_pending_fault")]
pub(crate) static PENDING_FAULT: LruHashMap<u32, PendingFault> =
    LruHashMap::with_max_entries(1 << 14, 0);

/// Thread id -> the msync/fsync/fdatasync/sync_file_range call it is in
/// (its file and start time), until the call returns. LRU: a thread that
/// never returns (killed in the call) does not hold an entry for good.
#[map(name = "mw_pending_sync")]
pub(crate) static PENDING_SYNC: LruHashMap<u32, PendingSync> =
    LruHashMap::with_max_entries(1 << 12, 0);

/// Processes that made a shared writable mapping (seen at mmap/mprotect,
/// inherited at fork, seeded from /proc at start): only their read faults
/// are looked at, for write-notify-less files mapped writable at once.
#[map(name = "mw_shared_mappers")]
pub(crate) static SHARED_MAPPERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(1 << 15, 0);

/// This CPU's last user read fault: (pid_tgid, address), for
/// `mm_filemap_map_pages`, which runs inside that fault and must find the
/// mapping. A fault runs on one CPU until it sleeps; a mismatch (another
/// thread, a migration, a fault from get_user_pages) is handled there.
#[map(name = "mw_last_read_fault")]
pub(crate) static LAST_READ_FAULT: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// File -> address of the `->page_mkwrite` its filesystem ran (function-hook
/// backends); userspace names it from /proc/kallsyms.
#[map(name = "mw_page_mkwrite")]
pub(crate) static PAGE_MKWRITE: LruHashMap<FileKey, u64> = LruHashMap::with_max_entries(1 << 14, 0);

/// One entry: tasks renamed (prctl, exec, /proc/PID/comm) or moved to
/// another cgroup so far. The fault path's per-CPU cache of the writer's
/// name and cgroup is read afresh when it changes.
#[map(name = "mw_identity_changes")]
pub(crate) static IDENTITY_CHANGES: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU: the range of an mprotect call whose dirty large folios the
/// second program on the call walks (see `try_mprotect_folios`), left by
/// the first, with the record header it filled.
#[map(name = "mw_folio_walk")]
pub(crate) static FOLIO_WALK: PerCpuArray<FolioWalkRequest> = PerCpuArray::with_max_entries(1, 0);

/// An mprotect's range of a file's pages for [`FOLIO_WALK`].
#[repr(C)]
pub(crate) struct FolioWalkRequest {
    /// The calling thread; 0 once taken.
    pub(crate) pid_tgid: u64,
    /// `address_space` of the file.
    pub(crate) mapping: u64,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) header: EventHeader,
}

/// One entry: bits of `hooks::*`, set by userspace as hooks attach.
#[map(name = "mw_hooks")]
pub(crate) static HOOKS: Array<u32> = Array::with_max_entries(1, 0);

/// tgid -> `traced::*`, used when `filter::BY_TGID` is set. Sized at load
/// from the machine (processes it can hold), allocated as used.
#[map(name = "mw_traced")]
pub(crate) static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, BPF_F_NO_PREALLOC);

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; BPF programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Counts a probe's failure instead of dropping it: no error path in the
/// programs goes uncounted.
#[inline(always)]
pub(crate) fn count_failure<T>(result: Result<T, i64>) {
    if result.is_err() {
        bump(counter::PROBE_ERRORS);
    }
}

#[map(name = "mw_scratch")]
pub(crate) static SCRATCH: PerCpuArray<FaultScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where a new file's record is built before only its used bytes are sent.
#[map(name = "mw_file_names")]
pub(crate) static FILE_NAMES: PerCpuArray<FileNames> = PerCpuArray::with_max_entries(1, 0);
