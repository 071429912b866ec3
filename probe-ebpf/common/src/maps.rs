//! Keys and values of the object's maps.

use super::*;

/// Entries of the per-file stats map (`FILE_STATS`); userspace hands idle
/// files over sooner when it is half full.
pub const FILE_STATS_ENTRIES: u32 = 1 << 16;

/// Buckets of the dirty-to-writeback latency histogram: bucket `k` counts
/// latencies in [2^k, 2^(k+1)) nanoseconds.
pub const LATENCY_BUCKETS: u32 = 64;

/// The slot after the buckets holds the latencies' sum in nanoseconds, so
/// the exported histogram's `_sum` is the real one, not bucket bounds.
pub const LATENCY_SUM_SLOT: u32 = LATENCY_BUCKETS;

/// Key of the per-writer fault counters: bounded label sets for metrics
/// (command name, cgroup, filesystem), never per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct WriterStatsKey {
    pub cgroup_id: u64,
    pub dev: u32,
    /// The writer's effective uid (`export --label-user`).
    pub euid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// This CPU's current run of write faults by one writer (command name and
/// cgroup) on one file, not yet added to the per-file and per-writer
/// stats: a repeated fault then updates no hash map. A run ends when
/// another writer or file faults on this CPU, and is added to the maps
/// then; userspace adds the runs still open when it reads those maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct PendingCounts {
    pub file: FileKey,
    /// `writer.dev` is the file's.
    pub writer: WriterStatsKey,
    pub shared_write_faults: u64,
    pub cow_faults: u64,
    pub last_write_boot_ns: u64,
}

/// Per-CPU value of the per-writer fault counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct WriterStats {
    pub shared_write_faults: u64,
    pub cow_faults: u64,
}

/// A sync call entered and not yet returned, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSync {
    pub file: FileKey,
    pub call: u32,
    /// Non-zero: an msync whose mapping could not be looked up on entry
    /// (the mmap lock was busy); `first_page` and `pages` hold its address
    /// and length until it is looked up again on return.
    pub unresolved: u32,
    pub start_ns: u64,
    pub first_page: u64,
    pub pages: u64,
}

/// A thread's last shared write fault on a page not yet mapped, kept for
/// the dirty-folio program that runs inside the same fault when the fault
/// brings a new folio into the page cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingFault {
    pub pid_tgid: u64,
    pub file: FileKey,
    pub page: u64,
    /// Where the kernel may map a folio around the page: pages of the
    /// mapping before the faulting one, and from it to the mapping's end.
    pub room: FolioRoom,
}

/// How far a folio around a faulting page may reach and still be mapped
/// whole by the fault: the kernel maps a large folio at once only if it
/// lies inside the mapping and inside one page table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolioRoom {
    /// Pages of room before the faulting page.
    pub before: u64,
    /// Pages of room from the faulting page on (itself included).
    pub from: u64,
}

impl FolioRoom {
    /// Whether a folio of `pages` pages starting at file page `first`
    /// would be mapped whole by a fault on file page `page`.
    pub fn fits(&self, page: u64, first: u64, pages: u64) -> bool {
        if page < first || page - first >= pages {
            return false;
        }
        let index = page - first;
        index <= self.before && pages - index <= self.from
    }
}

/// Key of the per-file stats map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct FileKey {
    pub dev: u32,
    /// `inode.i_generation`: a reused inode number is another file.
    pub generation: u32,
    pub ino: u64,
}

/// Pages per entry of the dedup LRU: one entry holds a bitmap of 512
/// consecutive pages (2 MiB of file with 4 KiB pages), so that faults on
/// neighbouring pages hit one hot entry rather than 512 cold ones.
pub const CHUNK_PAGES: u64 = 512;

/// Key of the dedup LRU: one entry per (file, chunk of [`CHUNK_PAGES`], kind).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct PageChunkKey {
    pub file: FileKey,
    /// Page index / [`CHUNK_PAGES`]; for spans, that of their first page.
    pub chunk: u64,
    /// [`RecordKind::SharedWrite`], [`RecordKind::CowWrite`] or
    /// [`RecordKind::FolioSpan`].
    pub kind: u32,
    pub _pad: u32,
}

/// Value of the dedup LRU: which pages of the chunk were reported, and
/// the process that reported the chunk's first page. A page reported by
/// another process is checked against the writer LRU (a new writer of
/// the file is reported once); the chunk's own first writer is already
/// a writer of the file, so its faults need no more work.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct PageChunk {
    pub first_tgid: u32,
    pub _pad: u32,
    pub reported: [u64; (CHUNK_PAGES / 64) as usize],
}

/// Key of the writer LRU: one entry per (file, process) beyond the first writer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct WriterKey {
    pub file: FileKey,
    pub tgid: u32,
    pub _pad: u32,
}

/// Per-CPU value of the per-file stats map. Userspace sums counters and takes
/// the maximum of timestamps across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct FileStats {
    pub shared_write_faults: u64,
    pub cow_faults: u64,
    /// Clean-to-dirty folio transitions (`writeback_dirty_folio`).
    pub folios_dirtied: u64,
    /// Pages in those folios (large folios count all their pages).
    pub pages_dirtied: u64,
    /// Pages the filesystem reported written back.
    pub writeback_pages: u64,
    /// Times the inode went under writeback (`sb_mark_inode_writeback`).
    pub writeback_starts: u64,
    /// Times the inode's writeback completed (`sb_clear_inode_writeback`).
    pub writeback_ends: u64,
    /// Boot-clock times of the latest events of each kind.
    pub last_write_boot_ns: u64,
    pub last_writeback_start_boot_ns: u64,
    pub last_writeback_end_boot_ns: u64,
}

impl FileStats {
    pub const ZEROED: Self = Self {
        shared_write_faults: 0,
        cow_faults: 0,
        folios_dirtied: 0,
        pages_dirtied: 0,
        writeback_pages: 0,
        writeback_starts: 0,
        writeback_ends: 0,
        last_write_boot_ns: 0,
        last_writeback_start_boot_ns: 0,
        last_writeback_end_boot_ns: 0,
    };
}
