//! Types shared by the eBPF programs and userspace.
//!
//! Every type is `#[repr(C)]` with explicit padding so that its layout is the
//! same on both sides and userspace can decode ring-buffer records from bytes
//! without guessing. Userspace decodes with length checks (zerocopy), never by
//! transmuting.
#![no_std]

#[cfg(feature = "user")]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Prefixes `name` with the object's name prefix (`mw_`): every program
/// and map of the eBPF object is named so, and `bpftool prog show`,
/// `bpftool map show` and bpftop then say whose they are. The eBPF side's
/// attribute macros take only literals, so it spells the names out;
/// userspace's test `the_object_names_every_program_and_map_with_the_prefix`
/// checks the built object against these.
#[macro_export]
macro_rules! mw_name {
    ($name:literal) => {
        concat!("mw_", $name)
    };
}

pub const OBJECT_NAME_PREFIX: &str = mw_name!("");

pub mod arith;
mod counters;
pub use counters::{counter, Counter, CounterRole, CounterTotals, KERNEL_COUNTERS};

/// The object's maps, by the names userspace looks them up with.
pub mod map_name {
    pub const EVENTS: &str = mw_name!("events");
    pub const PAGE_SEEN: &str = mw_name!("page_seen");
    pub const WRITERS: &str = mw_name!("writers");
    pub const FILE_STATS: &str = mw_name!("file_stats");
    pub const PENDING_COUNTS: &str = mw_name!("pending_counts");
    pub const COUNTERS: &str = mw_name!("counters");
    pub const WRITER_STATS: &str = mw_name!("writer_stats");
    pub const DIRTY_SINCE: &str = mw_name!("dirty_since");
    pub const WRITEBACK_LATENCY: &str = mw_name!("writeback_latency");
    pub const PENDING_FAULT: &str = mw_name!("pending_fault");
    pub const PENDING_SYNC: &str = mw_name!("pending_sync");
    pub const SHARED_MAPPERS: &str = mw_name!("shared_mappers");
    pub const LAST_READ_FAULT: &str = mw_name!("last_read_fault");
    pub const PAGE_MKWRITE: &str = mw_name!("page_mkwrite");
    pub const HOOKS: &str = mw_name!("hooks");
    pub const TRACED: &str = mw_name!("traced");
    pub const SCRATCH: &str = mw_name!("scratch");
    pub const FILE_NAMES: &str = mw_name!("file_names");
    pub const IDENTITY_CHANGES: &str = mw_name!("identity_changes");
    pub const FOLIO_WALK: &str = mw_name!("folio_walk");
    /// Every one of them, for the check against the object.
    pub const ALL: [&str; 20] = [
        EVENTS,
        PAGE_SEEN,
        WRITERS,
        FILE_STATS,
        PENDING_COUNTS,
        COUNTERS,
        WRITER_STATS,
        DIRTY_SINCE,
        WRITEBACK_LATENCY,
        PENDING_FAULT,
        PENDING_SYNC,
        SHARED_MAPPERS,
        LAST_READ_FAULT,
        PAGE_MKWRITE,
        HOOKS,
        TRACED,
        SCRATCH,
        FILE_NAMES,
        IDENTITY_CHANGES,
        FOLIO_WALK,
    ];
}

pub const TASK_COMM_LEN: usize = 16;
/// Bytes kept of each path component the kernel sends for a newly seen
/// file: NAME_MAX (255) and the NUL, so no name is ever cut.
pub const PATH_COMPONENT_LEN: usize = 256;
/// Path components (dentries) walked towards the filesystem root. Deeper
/// files are named from /proc instead (and marked when that fails).
pub const PATH_MAX_DEPTH: usize = 32;
/// `--comm` filters evaluated in the kernel.
pub const MAX_COMM_FILTERS: usize = 8;

/// Kinds of ring-buffer record: every record starts with an
/// [`EventHeader`] whose `kind` is one of these. Userspace decodes the
/// header's `kind` with zerocopy's checked conversion (an unknown value is
/// an error, never a variant), and the event stream's `type` names come
/// from [`RecordKind::stream_name`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::TryFromBytes, Immutable, KnownLayout)
)]
pub enum RecordKind {
    /// First write to a file page through a shared writable mapping.
    SharedWrite = 1,
    /// First write to a file page through a private mapping (copy-on-write).
    CowWrite = 2,
    /// A file seen for the first time, with its dentry names.
    FileSeen = 3,
    /// A second (third, ...) process writing a page another process wrote first.
    NewWriter = 4,
    /// A write fault on a page not yet mapped, which the kernel resolves
    /// by mapping the whole large folio around it writable (any order; a
    /// 2 MiB one with one PMD): every page of the span may be written
    /// without another fault, so all of them are reported.
    FolioSpan = 5,
    /// A folio of a file already seen finished writeback (function-hook
    /// backends: `folio_end_writeback`): `page` is its first page, `pages`
    /// its size.
    PagesWrittenBack = 6,
    /// Pages of a filesystem without write-notify (tmpfs, shmem) that a
    /// read fault mapped writable into a shared writable mapping: later
    /// stores to them take no fault, so they may have been written.
    PossibleWrite = 7,
    /// An msync, fsync, fdatasync or sync_file_range call returned
    /// ([`SyncEvent`]).
    Sync = 8,
    /// A process that had a shared writable mapping exited (only when
    /// [`ProbeConfig::report_exits`] is set): a plain header with
    /// no file.
    ProcessExit = 9,
}

impl RecordKind {
    /// The event stream's `type` for the records it carries as lines
    /// (README, "Event stream"); None for those it does not.
    pub const fn stream_name(self) -> Option<&'static str> {
        match self {
            Self::SharedWrite => Some("write"),
            Self::CowWrite => Some("cow_write"),
            Self::NewWriter => Some("new_writer"),
            Self::FolioSpan => Some("folio_span"),
            Self::PossibleWrite => Some("possible_write"),
            Self::PagesWrittenBack => Some("writeback"),
            Self::Sync => Some("sync"),
            Self::FileSeen | Self::ProcessExit => None,
        }
    }
}

/// The calls that ask for a file's pages to reach disk.
pub mod sync_call {
    pub const MSYNC: u32 = 1;
    pub const FSYNC: u32 = 2;
    pub const FDATASYNC: u32 = 3;
    pub const SYNC_FILE_RANGE: u32 = 4;
}

/// Bits of the `HOOKS` map's one entry: which function hooks are attached,
/// so that each fault is recorded by exactly one of them. A map, not part
/// of the frozen config: it is known only once hooks attach.
pub mod hooks {
    /// `wp_page_copy` records copy-on-write of present pages; `do_wp_page`
    /// then records shared writes only.
    pub const COW_AT_WP_PAGE_COPY: u32 = 1;
}

/// Pages in a PMD-mapped folio (2 MiB / 4 KiB on x86-64).
pub const PMD_PAGES: u64 = 512;

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
    pub _pad: u32,
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

/// Bits of [`ProbeConfig::filter_flags`].
pub mod filter {
    /// Only tasks whose tgid is in the `TRACED` map.
    pub const BY_TGID: u32 = 1;
    /// Only tasks whose comm matches one of [`super::ProbeConfig::comms`].
    pub const BY_COMM: u32 = 2;
}

/// Value of a `TRACED` map entry.
pub mod traced {
    /// Trace this tgid only.
    pub const EXACT: u32 = 1;
    /// Trace this tgid and every process it forks, recursively.
    pub const FOLLOW_CHILDREN: u32 = 2;
}

/// Common start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct EventHeader {
    pub kind: u32,
    /// Thread id of the writer.
    pub pid: u32,
    /// Process id (thread group id) of the writer.
    pub tgid: u32,
    /// Kernel `dev_t` of the file's superblock: `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
    /// `bpf_ktime_get_boot_ns()` at the fault.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// `inode.i_generation`: tells a reused inode number from the file
    /// that had it before.
    pub generation: u32,
    pub _pad: u32,
}

/// [`RecordKind::SharedWrite`], [`RecordKind::CowWrite`],
/// [`RecordKind::NewWriter`], [`RecordKind::FolioSpan`],
/// [`RecordKind::PagesWrittenBack`] and [`RecordKind::PossibleWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct PageEvent {
    pub header: EventHeader,
    /// Page index in the file (units of the base page size); for a span,
    /// its first page.
    pub page: u64,
    /// Pages covered: 1, or the span's length.
    pub pages: u64,
}

/// [`RecordKind::Sync`]: one call, sent when it returns. The header's
/// `boot_ns` is the return time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct SyncEvent {
    pub header: EventHeader,
    /// One of [`sync_call`].
    pub call: u32,
    pub _pad: u32,
    /// The syscall's return value (0, or a negative errno).
    pub ret: i64,
    pub latency_ns: u64,
    /// The file pages asked for (msync, sync_file_range); `pages` 0 for
    /// the whole file (fsync, fdatasync, sync_file_range to the end).
    pub first_page: u64,
    pub pages: u64,
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

/// [`RecordKind::FileSeen`]: sent once per file, when its stats entry is
/// created, so a path survives the writer's exit. The record is followed
/// by `names_len` bytes of names: `depth` NUL-terminated dentry names, leaf
/// first (an empty one marks a mount the walk crossed). Only the bytes a
/// path uses travel: tens of bytes for a usual path, where a slot per
/// component at its longest took 8 KiB and a burst of new files filled the
/// ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct FileEvent {
    pub header: EventHeader,
    /// `super_block.s_magic`: the filesystem type.
    pub fs_magic: u64,
    /// Names that follow the record.
    pub depth: u32,
    /// One of [`walk_end`]: where the walk stopped within `PATH_MAX_DEPTH`.
    pub reached_root: u32,
    /// The mount namespace (its inode number, as /proc/PID/ns/mnt shows
    /// it) of the mount the walk started in; 0 when it has none.
    pub mount_ns: u32,
    /// Bytes of names that follow the record.
    pub names_len: u32,
}

/// The most bytes of names a [`FileEvent`] carries: every component at its
/// longest, NUL included.
pub const FILE_NAMES_MAX: usize = PATH_COMPONENT_LEN * PATH_MAX_DEPTH;

/// The buffer a walk packs its names into: twice [`FILE_NAMES_MAX`], so
/// that the masked offsets below stay inside it whatever the verifier
/// assumes of the bytes used so far (it does not track them: they live in
/// memory, which keeps the walk's loop to one state per step).
pub const FILE_NAMES_BUFFER: usize = 2 * FILE_NAMES_MAX;

/// Where the next name goes, given the bytes of names used so far: a name
/// is read there with room for [`PATH_COMPONENT_LEN`] bytes. The walk uses
/// at most `FILE_NAMES_MAX - PATH_COMPONENT_LEN` bytes before its last
/// name, so the mask never changes a real offset.
#[inline(always)]
pub const fn next_name_offset(names_used: u32) -> usize {
    names_used as usize & (FILE_NAMES_MAX - 1)
}

/// The bytes of names sent, given those used: at most the buffer's size,
/// so the record's length is bounded for the verifier; the walk never uses
/// more than [`FILE_NAMES_MAX`], so the mask never changes a real length.
#[inline(always)]
pub const fn names_sent(names_used: u32) -> usize {
    names_used as usize & (FILE_NAMES_BUFFER - 1)
}

const _: () = assert!(
    FILE_NAMES_MAX.is_power_of_two()
        && FILE_NAMES_BUFFER.is_power_of_two()
        && FILE_NAMES_MAX - 1 + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER
        && core::mem::size_of::<FileEvent>().is_multiple_of(8)
);

/// How the reader learns of records. A wakeup from the ring is an
/// interrupt on the writer's CPU (irq_work: a self-IPI, in a VM an exit),
/// several microseconds the writer waits, once per record whenever the
/// reader keeps up, which a burst of new files, each announced alone,
/// paid in full. So records are committed without one, but the record that
/// takes the unread bytes to `ring_wakeup_bytes` wakes the reader; the
/// reader also reads every [`READER_POLL_MS`] whatever it was told, so a
/// trickle of records waits at most that long.
pub mod ring_flag {
    /// `BPF_RB_NO_WAKEUP`.
    pub const NO_WAKEUP: u64 = 1;
    /// `BPF_RB_FORCE_WAKEUP`.
    pub const FORCE_WAKEUP: u64 = 2;
    /// `BPF_RB_AVAIL_DATA`, for `bpf_ringbuf_query`: bytes not yet read.
    pub const AVAIL_DATA: u64 = 0;
}

/// Bytes of the ring a record of `len` bytes takes: the kernel's 8-byte
/// record header, and the whole rounded up to 8.
#[inline(always)]
pub const fn ring_bytes(len: u64) -> u64 {
    (len + 8).next_multiple_of(8)
}

/// How often the reader reads the ring whatever it was told.
pub const READER_POLL_MS: u64 = 50;

/// The share of the ring unread at which a record wakes the reader: an
/// eighth, far from full, and more than a poll interval of a busy machine's
/// records, so that a wakeup is rare.
pub const RING_WAKEUP_FRACTION: u32 = 8;

/// The flags to commit a record of `len` bytes with, when `unread` bytes
/// were waiting before it: only the record that crosses `wake_at` wakes the
/// reader (one wakeup per batch; a missed one is made up by the poll).
#[inline(always)]
pub const fn ring_commit_flags(unread: u64, len: u64, wake_at: u64) -> u64 {
    if unread < wake_at && unread + len >= wake_at {
        ring_flag::FORCE_WAKEUP
    } else {
        ring_flag::NO_WAKEUP
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

/// Kernel struct field offsets (bytes) resolved from vmlinux BTF in userspace.
/// Rust eBPF has no CO-RE relocations, so these are passed as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct KernelOffsets {
    // What every user write fault reads, anonymous ones included, comes
    // first: one cache line of .rodata, not three.
    /// How the fault path finds a VMA without the mmap lock: one of
    /// [`vma_walk_kind`].
    pub vma_walk: u32,
    pub task_mm: u32,
    /// `task_struct.tgid`: a direct load, not a helper call.
    pub task_tgid: u32,
    /// `mm_struct.mm_lock_seq` (Linux 6.4+), which changes whenever the
    /// mm's mappings change: a cached VMA is valid while it is unchanged.
    pub mm_lock_seq: u32,
    /// One of [`mm_lock_seq_kind`].
    pub mm_lock_seq_kind: u32,
    pub vma_vm_start: u32,
    pub vma_vm_end: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_pgoff: u32,
    pub vma_vm_file: u32,
    pub file_f_inode: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    pub dentry_d_parent: u32,
    /// `folio.flags` (first word of the head page's flags).
    pub folio_flags: u32,
    pub folio_index: u32,
    pub mapping_host: u32,
    pub wbc_nr_to_write: u32,
    /// Bit number of `PG_head` in `enum pageflags`.
    pub pg_head_bit: u32,
    /// Bit number of `PG_dirty` in `enum pageflags`.
    pub pg_dirty_bit: u32,
    /// `mm_struct.mm_mt.ma_root`.
    pub mm_ma_root: u32,
    pub vma_vm_mm: u32,
    pub range64_pivots: u32,
    pub range64_slots: u32,
    pub range64_pivot_count: u32,
    pub arange64_pivots: u32,
    pub arange64_slots: u32,
    pub arange64_pivot_count: u32,
    /// `enum maple_type` values.
    pub maple_range_64: u32,
    pub maple_arange_64: u32,
    /// The byte holding a large folio's order: `folio._folio_order` (up to
    /// 6.5) or the low byte of `folio._flags_1` (little-endian). 0 before
    /// folios (5.16): every page-cache page of a written file is one page.
    pub folio_order_byte: u32,
    /// `folio.mapping`.
    pub folio_mapping: u32,
    /// A large folio's count of whole-folio (PMD) mappings, less one:
    /// `folio._entire_mapcount` (6.3+) or `_compound_mapcount`; 0 when
    /// absent (it lies past the head page, never at offset 0).
    pub folio_entire_mapcount: u32,
    /// Function-hook backends: `struct vm_fault` fields.
    pub vmf_vma: u32,
    pub vmf_pgoff: u32,
    pub vmf_address: u32,
    pub vmf_flags: u32,
    /// `FAULT_FLAG_WRITE` from `enum fault_flag`.
    pub fault_flag_write: u32,
    pub vma_vm_ops: u32,
    /// `vm_operations_struct.page_mkwrite`.
    pub vm_ops_page_mkwrite: u32,
    /// `task_struct.pid`, `task_struct.signal`, `signal_struct.live`.
    pub task_pid: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub inode_i_generation: u32,
    pub inode_i_size: u32,
    pub file_f_mapping: u32,
    /// `address_space.i_pages.xa_head`: the page cache's xarray root.
    pub mapping_xa_head: u32,
    /// `address_space.i_mmap_writable`: shared writable mappings of the file.
    pub mapping_i_mmap_writable: u32,
    pub xa_node_shift: u32,
    pub xa_node_slots: u32,
    /// `vm_area_struct.vm_page_prot`: writable without write-notify?
    pub vma_vm_page_prot: u32,
    /// `address_space.flags`, and the bits of it that allow large folios
    /// (`AS_LARGE_FOLIO_SUPPORT`, or `AS_FOLIO_ORDER_MAX`'s field from
    /// 6.10); 0: unknown, every file may have them.
    pub mapping_flags: u32,
    pub large_folio_mask: u32,
    /// fd to file, for fsync and friends: `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.fd` and `fdtable.max_fds`; zero
    /// `task_files` when BTF lacks one (those calls are then not seen).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    /// Mount crossing in the path walk, so a file is named as its
    /// writer's mount namespace shows it even after that namespace is
    /// gone: `file.f_path.mnt`, `struct mount`'s `mnt` (the embedded
    /// vfsmount), `mnt_parent`, `mnt_mountpoint` and `mnt_ns`, and
    /// `vfsmount.mnt_root`. Zero `mount_mnt_parent`: no crossing.
    pub file_mnt: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub mount_mnt_ns: u32,
    pub vfsmount_mnt_root: u32,
    /// `mnt_namespace.ns.inum`: the namespace's number.
    pub mnt_namespace_inum: u32,
    /// overlayfs (6.6+): the file a mapping holds is its layer's (a
    /// backing file); the path its writer opened is
    /// `backing_file.user_path`. `dentry.d_sb` tells either kind of
    /// stacked file (6.1's fake path too) from the file's own inode.
    /// Zero `backing_file_user_path`: no backing files on this kernel.
    pub backing_file_user_path: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_sb: u32,
    /// The VMA red-black tree (before 6.1): `mm_struct.mm_rb` (its root
    /// node pointer first), `vm_area_struct.vm_rb`, and `rb_node`'s
    /// children.
    pub mm_mm_rb: u32,
    pub vma_vm_rb: u32,
    pub rb_node_left: u32,
    pub rb_node_right: u32,
}

/// How a kernel's VMAs are walked lock-free ([`KernelOffsets::vma_walk`]).
pub mod vma_walk_kind {
    /// Neither: only `bpf_find_vma` finds them.
    pub const NONE: u32 = 0;
    /// The mm's maple tree (6.1+).
    pub const MAPLE: u32 = 1;
    /// The mm's red-black tree of VMAs (up to 6.0).
    pub const RBTREE: u32 = 2;
}

/// How far a [`FileEvent`]'s walk got (`reached_root`).
pub mod walk_end {
    /// Out of slots before a root.
    pub const CUT: u32 = 0;
    /// The root of the file's filesystem: the path is relative to it.
    pub const FS_ROOT: u32 = 1;
    /// The root of the writer's mount namespace, across its mounts: the
    /// path is whole, as the writer saw it; an empty component is a
    /// mount crossed.
    pub const NAMESPACE_ROOT: u32 = 2;
    /// A flag beside the above: the names are of a path through a stacking
    /// filesystem (overlayfs), not of the file's own filesystem: the file
    /// is one of its layers' (upper or lower).
    pub const STACKED: u32 = 0x100;
    /// The bits of the above values.
    pub const END_MASK: u32 = 0xff;
}

/// What `mm_struct.mm_lock_seq` is on this kernel.
pub mod mm_lock_seq_kind {
    /// Absent (before 6.4): every fault walks the maple tree.
    pub const NONE: u32 = 0;
    /// An int bumped when the mmap write lock is released (6.4 to 6.12).
    pub const COUNTER: u32 = 1;
    /// A seqcount, odd while the mmap write lock is held (6.13+).
    pub const SEQCOUNT: u32 = 2;
}

/// Run-time configuration, a global set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct ProbeConfig {
    /// Bits of [`filter`].
    pub filter_flags: u32,
    /// Non-zero: classify and report private (COW) writes too.
    pub include_cow: u32,
    /// Our own tgid, never traced.
    pub self_tgid: u32,
    /// log2 of the base page size.
    pub page_shift: u32,
    /// Entries used in `comms`.
    pub comm_count: u32,
    /// Pages a read fault maps around the faulting one (the kernel's
    /// fault_around_bytes / page size; 16 by default).
    pub fault_around_pages: u32,
    /// Non-zero: send [`RecordKind::ProcessExit`] records (`trace`, which
    /// reports each writer's unwritten pages at its exit).
    pub report_exits: u32,
    /// Unread ring bytes at which a record wakes the reader (see
    /// [`ring_commit_flags`]).
    pub ring_wakeup_bytes: u32,
    pub comms: [[u8; TASK_COMM_LEN]; MAX_COMM_FILTERS],
}

impl KernelOffsets {
    /// All zero: the value compiled into the object before userspace overrides it.
    pub const ZEROED: Self = Self {
        task_tgid: 0,
        vma_vm_start: 0,
        vma_vm_end: 0,
        vma_vm_flags: 0,
        vma_vm_pgoff: 0,
        vma_vm_file: 0,
        file_f_inode: 0,
        file_dentry: 0,
        inode_i_ino: 0,
        inode_i_sb: 0,
        sb_s_dev: 0,
        sb_s_magic: 0,
        dentry_name: 0,
        dentry_d_parent: 0,
        folio_flags: 0,
        folio_index: 0,
        mapping_host: 0,
        wbc_nr_to_write: 0,
        pg_head_bit: 0,
        pg_dirty_bit: 0,
        vma_walk: 0,
        task_mm: 0,
        mm_ma_root: 0,
        vma_vm_mm: 0,
        range64_pivots: 0,
        range64_slots: 0,
        range64_pivot_count: 0,
        arange64_pivots: 0,
        arange64_slots: 0,
        arange64_pivot_count: 0,
        maple_range_64: 0,
        maple_arange_64: 0,
        folio_order_byte: 0,
        folio_mapping: 0,
        folio_entire_mapcount: 0,
        vmf_vma: 0,
        vmf_pgoff: 0,
        vmf_address: 0,
        vmf_flags: 0,
        fault_flag_write: 0,
        vma_vm_ops: 0,
        vm_ops_page_mkwrite: 0,
        task_pid: 0,
        task_signal: 0,
        signal_live: 0,
        inode_i_generation: 0,
        inode_i_size: 0,
        file_f_mapping: 0,
        mapping_xa_head: 0,
        mapping_i_mmap_writable: 0,
        xa_node_shift: 0,
        xa_node_slots: 0,
        vma_vm_page_prot: 0,
        mm_lock_seq: 0,
        mm_lock_seq_kind: 0,
        mapping_flags: 0,
        large_folio_mask: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        fdtable_max_fds: 0,
        file_mnt: 0,
        mount_mnt: 0,
        mount_mnt_parent: 0,
        mount_mnt_mountpoint: 0,
        mount_mnt_ns: 0,
        vfsmount_mnt_root: 0,
        mnt_namespace_inum: 0,
        backing_file_user_path: 0,
        path_mnt: 0,
        path_dentry: 0,
        dentry_d_sb: 0,
        mm_mm_rb: 0,
        vma_vm_rb: 0,
        rb_node_left: 0,
        rb_node_right: 0,
    };
}

impl ProbeConfig {
    /// All zero: the value compiled into the object before userspace overrides it.
    pub const ZEROED: Self = Self {
        filter_flags: 0,
        include_cow: 0,
        self_tgid: 0,
        page_shift: 0,
        comm_count: 0,
        fault_around_pages: 0,
        report_exits: 0,
        ring_wakeup_bytes: 0,
        comms: [[0; TASK_COMM_LEN]; MAX_COMM_FILTERS],
    };
}

/// Maple-tree pointer encoding (include/linux/maple_tree.h, lib/maple_tree.c):
/// #defines, unchanged since the maple tree landed in 6.1.
pub const MAPLE_NODE_MASK: u64 = 255;
/// Tag of the root node pointer in `maple_tree.ma_root`.
pub const MAPLE_ROOT_NODE: u64 = 0x02;
pub const MAPLE_NODE_TYPE_SHIFT: u64 = 3;
pub const MAPLE_NODE_TYPE_MASK: u64 = 0x0f;
/// Deepest maple tree walked (a tree of 16-wide nodes: 16^8 VMAs).
pub const MAPLE_MAX_DEPTH: usize = 8;
/// Widest node's pivots (maple_range_64 has 15).
pub const MAPLE_MAX_PIVOTS: usize = 16;
/// Deepest VMA red-black tree walked: a red-black tree of n nodes is at
/// most 2 log2(n + 1) deep, 32 for the default `vm.max_map_count`.
pub const RBTREE_MAX_DEPTH: usize = 40;

/// `FAULT_FLAG_WRITE` where it is a #define (before 5.13), not in BTF.
pub const FAULT_FLAG_WRITE_DEFINE: u32 = 0x01;

/// `VM_WRITE`, `VM_SHARED` and `VM_MAYWRITE` from include/linux/mm.h:
/// #defines, so not in BTF, but unchanged since Linux 2.x.
pub const VM_WRITE: u64 = 0x2;
pub const VM_SHARED: u64 = 0x8;
pub const VM_MAYWRITE: u64 = 0x20;
/// x86 page fault error code bits: the page was present (a protection
/// fault), the access was a write.
pub const X86_PF_PROT: u64 = 0x1;
pub const X86_PF_WRITE: u64 = 0x2;
/// x86 `_PAGE_RW` in a `pgprot_t`: a mapping whose pages are mapped
/// writable at once, with no write-notify fault before the first store.
pub const X86_PAGE_RW: u64 = 0x2;
/// xarray entry encoding (include/linux/xarray.h): #defines, stable since
/// the xarray replaced the radix tree (4.20).
pub const XA_CHUNK_SHIFT: u64 = 6;
pub const XA_CHUNK_MASK: u64 = 63;
/// Deepest page-cache xarray walked: 64^6 pages (1 EiB of 4 KiB pages).
pub const XA_MAX_DEPTH: usize = 6;
/// Filesystems whose shared mappings never write-protect clean pages.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// ext4's superblock magic: ext4 reports its own written pages.
pub const EXT4_SUPER_MAGIC: u64 = 0xEF53;

#[cfg(feature = "user")]
mod pod {
    macro_rules! pod {
        ($($shared:ident),*) => {$(
            // SAFETY: repr(C), only integers and byte arrays, and no
            // implicit padding (zerocopy's IntoBytes derive checks that).
            unsafe impl aya::Pod for super::$shared {}
        )*};
    }
    pod!(
        FileKey,
        PageChunkKey,
        PageChunk,
        PendingCounts,
        WriterKey,
        FileStats,
        WriterStatsKey,
        WriterStats,
        KernelOffsets,
        ProbeConfig
    );
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// Every offset and length a walk can reach is left as it is by the
    /// masks: names of any length, mounts crossed (one byte each) anywhere.
    #[test]
    fn the_name_masks_never_change_a_reachable_offset_or_length() {
        for name_len in 1..=PATH_COMPONENT_LEN as u32 {
            let mut used = 0u32;
            for _ in 0..PATH_MAX_DEPTH {
                let at = next_name_offset(used);
                assert_eq!(at, used as usize);
                assert!(at + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER);
                used += name_len;
            }
            assert!(used as usize <= FILE_NAMES_MAX);
            assert_eq!(names_sent(used), used as usize);
        }
    }

    #[test]
    fn a_record_takes_its_header_and_is_rounded_to_eight() {
        assert_eq!(ring_bytes(80), 88);
        assert_eq!(ring_bytes(81), 96);
        assert_eq!(ring_bytes(0), 8);
    }

    #[test]
    fn only_the_record_that_crosses_the_mark_wakes_the_reader() {
        let wake_at = 1 << 20;
        let flags: std::vec::Vec<u64> = (0..3000u64)
            .map(|n| ring_commit_flags(n * 1000, 1000, wake_at))
            .collect();
        let wakeups: std::vec::Vec<usize> = (0..flags.len())
            .filter(|&n| flags[n] == ring_flag::FORCE_WAKEUP)
            .collect();
        assert_eq!(wakeups, [1048]);
        assert!(flags
            .iter()
            .all(|&f| f == ring_flag::FORCE_WAKEUP || f == ring_flag::NO_WAKEUP));
        // A record landing exactly on the mark wakes it too.
        assert_eq!(
            ring_commit_flags(wake_at - 8, 8, wake_at),
            ring_flag::FORCE_WAKEUP
        );
        // A reader told to wake for nothing (mark 0): never woken.
        assert_eq!(ring_commit_flags(0, 8, 0), ring_flag::NO_WAKEUP);
    }

    /// Whatever the verifier assumes of the bytes used, a name's room and
    /// the record's names stay inside the buffer.
    #[test]
    fn the_name_masks_bound_any_value_to_the_buffer() {
        for used in [0, 1, 255, 8191, 8192, 16383, 16384, u32::MAX] {
            assert!(next_name_offset(used) + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER);
            assert!(names_sent(used) <= FILE_NAMES_BUFFER);
        }
    }
}
