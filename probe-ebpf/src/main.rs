//! mmapwatch's eBPF programs, for three backends that share maps and records.
//!
//! - tracepoint: write faults are seen at `exceptions:page_fault_{user,kernel}`
//!   and their mapping is found by walking the mm's maple tree.
//! - fentry and kprobe: the kernel's own fault functions hand over the
//!   `struct vm_fault`: `do_wp_page` (a write to a present, write-protected
//!   page), `finish_fault` (a first write to a page not yet mapped),
//!   `wp_page_copy` (a private copy), `do_page_mkwrite` or the filesystem's
//!   `->page_mkwrite` (which hook the filesystem runs), and
//!   `folio_end_writeback` (per-page writeback times).
//!
//! Either way a file-backed `VM_SHARED` mapping is a write to the file, a
//! private one is copy-on-write. The first write to each (file, page) goes to
//! userspace through a ring buffer; per-file counters stay in a per-CPU hash
//! map. Writeback tracepoints add dirtying and writeback counts to files
//! already seen.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_get_func_ip, bpf_jiffies64},
    },
    macros::{fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    counter, event_kind, filter, hooks, mm_lock_seq_kind, traced, EventHeader, FileEvent, FileKey,
    FileStats, FolioRoom, KernelOffsets, PageChunk, PageChunkKey, PageEvent, PendingCounts,
    PendingFault, ProbeConfig, WriterKey, WriterStats, WriterStatsKey, CHUNK_PAGES,
    EXT4_SUPER_MAGIC, LATENCY_BUCKETS, MAPLE_MAX_DEPTH, MAPLE_MAX_PIVOTS, MAPLE_NODE_MASK,
    MAPLE_NODE_TYPE_MASK, MAPLE_NODE_TYPE_SHIFT, MAPLE_ROOT_NODE, MAX_COMM_FILTERS, PATH_MAX_DEPTH,
    PMD_PAGES, RAMFS_MAGIC, TASK_COMM_LEN, TMPFS_MAGIC, VM_SHARED, VM_WRITE, X86_PF_PROT,
    X86_PF_WRITE, XA_CHUNK_MASK, XA_MAX_DEPTH,
};

/// Field offsets resolved from vmlinux BTF by userspace.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZEROED;

/// Filters and options set by userspace.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::ZEROED;

// Sizes below are defaults; userspace may resize maps before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// (file, chunk of pages, kind) -> which of its pages were reported, and
/// by whom first.
#[map]
static PAGE_SEEN: LruHashMap<PageChunkKey, PageChunk> = LruHashMap::with_max_entries(1 << 16, 0);

/// What a new dedup entry starts from (an insert copies it; it is too big
/// for the fault path's stack).
static EMPTY_CHUNK: PageChunk = PageChunk {
    first_tgid: 0,
    _pad: 0,
    reported: [0; (CHUNK_PAGES / 64) as usize],
};

/// (file, tgid) for processes that wrote a page another process wrote first.
#[map]
static WRITERS: LruHashMap<WriterKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
static FILE_STATS: PerCpuHashMap<FileKey, FileStats> = PerCpuHashMap::with_max_entries(1 << 16, 0);

/// This CPU's open run of fault counts (see [`PendingCounts`]).
#[map]
static PENDING_COUNTS: PerCpuArray<PendingCounts> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// (cgroup, filesystem, command name) -> fault counts, for metrics labels.
#[map]
static WRITER_STATS: PerCpuHashMap<WriterStatsKey, WriterStats> =
    PerCpuHashMap::with_max_entries(1 << 14, 0);

/// File -> when it was first dirtied since its last completed writeback.
#[map]
static DIRTY_SINCE: HashMap<FileKey, u64> = HashMap::with_max_entries(1 << 16, 0);

/// log2 histogram of dirty-to-writeback-complete latency in nanoseconds.
#[map]
static WRITEBACK_LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(LATENCY_BUCKETS, 0);

/// Thread id -> its last shared write fault on a page not yet in the page
/// cache, for `writeback_dirty_folio`, which runs later in the same fault
/// (possibly on another CPU: page_mkwrite may sleep) with the new folio.
#[map]
static PENDING_FAULT: LruHashMap<u32, PendingFault> = LruHashMap::with_max_entries(1 << 14, 0);

/// Processes that made a shared writable mapping (seen at mmap/mprotect,
/// inherited at fork, seeded from /proc at start): only their read faults
/// are looked at, for write-notify-less files mapped writable at once.
#[map]
static SHARED_MAPPERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(1 << 15, 0);

/// This CPU's last user read fault: (pid_tgid, address), for
/// `mm_filemap_map_pages`, which runs inside that fault and must find the
/// mapping. A fault runs on one CPU until it sleeps; a mismatch (another
/// thread, a migration, a fault from get_user_pages) is handled there.
#[map]
static LAST_READ_FAULT: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// File -> address of the `->page_mkwrite` its filesystem ran (function-hook
/// backends); userspace names it from /proc/kallsyms.
#[map]
static PAGE_MKWRITE: LruHashMap<FileKey, u64> = LruHashMap::with_max_entries(1 << 14, 0);

/// One entry: bits of `hooks::*`, set by userspace as hooks attach.
#[map]
static HOOKS: Array<u32> = Array::with_max_entries(1, 0);

/// tgid -> `traced::*`, used when `filter::BY_TGID` is set.
#[map]
static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, 0);

macro_rules! config {
    ($field:ident) => {
        // SAFETY: a read of a global that the loader fills in and freezes.
        unsafe { core::ptr::read_volatile(&CONFIG.$field) }
    };
}

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of a global that the loader fills in and freezes.
        unsafe { core::ptr::read_volatile(&OFFSETS.$field) } as u64
    };
}

const ENOENT: i64 = 2;
const EEXIST: i64 = 17;
/// Addresses at and above this are the kernel's on x86-64.
const USER_ADDRESS_LIMIT: u64 = 1 << 63;

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; BPF programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u64) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel validates the address itself.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|err| err as i64)
}

#[inline(always)]
fn comm_words(comm: &[u8; TASK_COMM_LEN]) -> (u64, u64) {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&comm[..8]);
    high.copy_from_slice(&comm[8..]);
    (u64::from_ne_bytes(low), u64::from_ne_bytes(high))
}

/// Whether the current task passes the pid and comm filters.
#[inline(always)]
fn task_selected(tgid: u32, comm: &[u8; TASK_COMM_LEN]) -> bool {
    if !tgid_selected(tgid) {
        return false;
    }
    let flags = config!(filter_flags);
    if flags & filter::BY_COMM != 0 {
        let count = config!(comm_count) as usize;
        let wanted = comm_words(comm);
        let mut index = 0;
        while index < MAX_COMM_FILTERS {
            if index >= count {
                return false;
            }
            // SAFETY: a read of a global that the loader fills in and freezes.
            let filter_comm = unsafe { core::ptr::read_volatile(&CONFIG.comms[index]) };
            if comm_words(&filter_comm) == wanted {
                return true;
            }
            index += 1;
        }
        return false;
    }
    true
}

/// The process filters alone (not ourselves; --pid, -- CMD), which need
/// no command name.
#[inline(always)]
fn tgid_selected(tgid: u32) -> bool {
    if tgid == config!(self_tgid) {
        return false;
    }
    // SAFETY: read-only lookup of a plain u32 value.
    config!(filter_flags) & filter::BY_TGID == 0 || unsafe { TRACED.get(&tgid) }.is_some()
}

/// Finds the VMA holding `address` by walking the current mm's maple tree
/// with plain kernel reads: no mmap lock, so no deferred unlock (with IRQs
/// off, as in the fault tracepoint, bpf_find_vma must queue an irq_work to
/// unlock; a self-IPI costs microseconds in a VM). Nodes and VMAs are freed
/// by RCU, under which BPF programs run; a VMA found is checked to belong to
/// this mm and to hold the address, and any doubt falls back to
/// bpf_find_vma.
#[inline(never)]
fn walk_maple_tree(address: u64, mm: u64, scratch: &mut FaultScratch) -> bool {
    let FaultScratch { info, pivots, .. } = scratch;
    let Ok(root) = read_kernel::<u64>(mm, offset!(mm_ma_root)) else {
        return false;
    };
    // Only the root pointer is tagged (MAPLE_ROOT_NODE, 0b10); without the
    // tag the tree holds a single entry, not nodes.
    if root & 3 != MAPLE_ROOT_NODE || root < 4096 {
        return false;
    }
    let mut enode = root & !MAPLE_ROOT_NODE;
    let (range64, arange64) = (offset!(maple_range_64), offset!(maple_arange_64));
    let mut depth = 0;
    while depth < MAPLE_MAX_DEPTH {
        depth += 1;
        let node = enode & !MAPLE_NODE_MASK;
        let kind = (enode >> MAPLE_NODE_TYPE_SHIFT) & MAPLE_NODE_TYPE_MASK;
        let (pivots_at, slots_at, count) = if kind == arange64 {
            (
                offset!(arange64_pivots),
                offset!(arange64_slots),
                offset!(arange64_pivot_count),
            )
        } else {
            (
                offset!(range64_pivots),
                offset!(range64_slots),
                offset!(range64_pivot_count),
            )
        };
        // Into scratch memory: 128 bytes more of stack would break the
        // 512-byte limit on the fault path's call chain.
        // SAFETY: `pivots` is a map value of exactly this size; the helper
        // validates the kernel address.
        let read = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                pivots.as_mut_ptr() as *mut c_void,
                (MAPLE_MAX_PIVOTS * 8) as u32,
                (node + pivots_at) as *const c_void,
            )
        };
        if read != 0 {
            return false;
        }
        // The first slot whose pivot (its range's last index) reaches the
        // address; a zero pivot past the first ends the node's data, and
        // the slot there runs to the node's end.
        let mut slot = 0u64;
        while slot < count && (slot as usize) < MAPLE_MAX_PIVOTS {
            let pivot = pivots[slot as usize];
            if pivot >= address || (pivot == 0 && slot > 0) {
                break;
            }
            slot += 1;
        }
        let Ok(next) = read_kernel::<u64>(node, slots_at + slot * 8) else {
            return false;
        };
        // Leaves (types below maple_range_64) hold VMA pointers; internal
        // nodes hold their children, whose type is in the pointer's bits.
        if kind < range64 {
            if next == 0 {
                // A gap: no mapping here. The fault grows the stack (anonymous
                // memory) or ends in SIGSEGV; either way no file is written,
                // and bpf_find_vma would find nothing either.
                *info = VmaInfo::default();
                return true;
            }
            return vma_holds(next, mm, address, info);
        }
        if next < 4096 {
            return false;
        }
        enode = next;
    }
    false
}

/// Fills `info` from `vma` if it is this mm's and holds `address`.
fn vma_holds(vma: u64, mm: u64, address: u64, info: &mut VmaInfo) -> bool {
    if read_kernel::<u64>(vma, offset!(vma_vm_mm)) != Ok(mm) || fill_vma_info(vma, info).is_err() {
        return false;
    }
    info.start <= address && address < info.end
}

/// The mm's `mm_lock_seq` if a VMA cached under it can be trusted now:
/// None on kernels without it, and while the mmap write lock is held (a
/// seqcount is odd then).
#[inline(always)]
fn mm_sequence(mm: *const u8) -> Option<u64> {
    let kind = offset!(mm_lock_seq_kind) as u32;
    if kind == mm_lock_seq_kind::NONE {
        return None;
    }
    let at = offset!(mm_lock_seq) as usize;
    // SAFETY: a direct load through the mm's BTF pointer (see find_mapping).
    let seq = unsafe { core::ptr::read_volatile(mm.add(at) as *const u32) };
    if kind == mm_lock_seq_kind::SEQCOUNT && seq & 1 != 0 {
        return None;
    }
    Some(u64::from(seq))
}

/// The last mapping a fault was found in on this CPU. Faults come in runs
/// on one mapping (a loop over a buffer, first touches of a heap), and the
/// mm's sequence tells cheaply whether any mapping changed since.
#[repr(C)]
struct VmaCache {
    mm: u64,
    /// The mm's `mm_lock_seq` when cached.
    seq: u64,
    /// With the mm: a freed mm's memory may come back as another
    /// process's, whose sequence could happen to match.
    tgid: u64,
    info: VmaInfo,
}

/// Finds the mapping holding `address` of the current task into
/// `scratch.info`: from this CPU's cache while the mm's mappings have not
/// changed, else by walking the maple tree (then cached). False when
/// neither finds it; the caller may fall back to `bpf_find_vma`.
#[inline(always)]
fn find_mapping(address: u64, tgid: u64, scratch: &mut FaultScratch) -> bool {
    if offset!(maple_walk) == 0 {
        return false;
    }
    // Direct loads through the task's BTF pointer, not bpf_probe_read_kernel
    // calls (~45 ns each here): the verifier checks them against the
    // kernel's BTF (the offsets are constants of the frozen .rodata) and
    // the JIT guards them (a fault reads 0).
    // SAFETY: no arguments; the current task, valid while the program runs.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let at = offset!(task_mm) as usize;
    // SAFETY: `task_struct.mm`, at its BTF offset.
    let mm_ptr = unsafe { core::ptr::read_volatile(task.add(at) as *const *const u8) };
    if mm_ptr.is_null() {
        return false;
    }
    let mm = mm_ptr as u64;
    let seq = mm_sequence(mm_ptr);
    let cache = &scratch.cache;
    if let Some(seq) = seq {
        if cache.mm == mm
            && cache.seq == seq
            && cache.tgid == tgid
            && cache.info.start <= address
            && address < cache.info.end
        {
            // Anonymous: the caller needs to know only that.
            if cache.info.file == 0 {
                scratch.info.file = 0;
                return true;
            }
            // `size` may be stale: it changes without the mmap lock
            // (truncate, extending writes). Read it afresh where it matters.
            scratch.info = cache.info;
            return true;
        }
    }
    if !walk_maple_tree(address, mm, scratch) {
        return false;
    }
    if let Some(seq) = seq {
        scratch.cache.mm = mm;
        scratch.cache.seq = seq;
        scratch.cache.tgid = tgid;
        scratch.cache.info = scratch.info;
    }
    true
}

/// What the fault path learns about the faulting mapping, filled in by
/// [`vma_callback`] while `bpf_find_vma` holds the mmap lock.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VmaInfo {
    start: u64,
    end: u64,
    flags: u64,
    pgoff: u64,
    file: u64,
    superblock: u64,
    ino: u64,
    dev: u32,
    generation: u32,
    /// `inode.i_size` in bytes.
    size: u64,
    inode: u64,
}

impl VmaInfo {
    fn file_key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            generation: self.generation,
            ino: self.ino,
        }
    }
}

#[inline(always)]
fn fill_vma_info(vma: u64, info: &mut VmaInfo) -> Result<(), i64> {
    // The range and flags of anonymous mappings too: the cache keeps them,
    // so that their faults end after a range check.
    info.start = read_kernel(vma, offset!(vma_vm_start))?;
    info.end = read_kernel(vma, offset!(vma_vm_end))?;
    info.flags = read_kernel(vma, offset!(vma_vm_flags))?;
    info.file = read_kernel(vma, offset!(vma_vm_file))?;
    if info.file == 0 {
        return Ok(());
    }
    info.pgoff = read_kernel(vma, offset!(vma_vm_pgoff))?;
    let inode: u64 = read_kernel(info.file, offset!(file_f_inode))?;
    info.inode = inode;
    info.ino = read_kernel(inode, offset!(inode_i_ino))?;
    info.generation = read_kernel(inode, offset!(inode_i_generation))?;
    info.size = read_kernel(inode, offset!(inode_i_size))?;
    info.superblock = read_kernel(inode, offset!(inode_i_sb))?;
    info.dev = read_kernel(info.superblock, offset!(sb_s_dev))?;
    Ok(())
}

/// `bpf_find_vma` callback. Runs as its own BPF subprogram.
#[inline(never)]
extern "C" fn vma_callback(_task: *mut c_void, vma: *mut c_void, data: *mut c_void) -> i64 {
    // SAFETY: `data` is the `VmaInfo` on the caller's stack passed to bpf_find_vma.
    let info = unsafe { &mut *(data as *mut VmaInfo) };
    if fill_vma_info(vma as u64, info).is_err() {
        info.file = 0;
    }
    0
}

/// Fills a record header in place (scratch memory, not the stack).
#[inline(always)]
fn fill_header(
    out: &mut EventHeader,
    kind: u32,
    pid_tgid: u64,
    file: &FileKey,
    now: u64,
    comm: &[u8; TASK_COMM_LEN],
    cgroup_id: u64,
) {
    out.kind = kind;
    out.pid = pid_tgid as u32;
    out.tgid = (pid_tgid >> 32) as u32;
    out.dev = file.dev;
    out.ino = file.ino;
    out.generation = file.generation;
    out.boot_ns = now;
    out.cgroup_id = cgroup_id;
    out.comm = *comm;
}

/// The file a record header names.
#[inline(always)]
fn header_file(header: &EventHeader) -> FileKey {
    FileKey {
        dev: header.dev,
        generation: header.generation,
        ino: header.ino,
    }
}

/// The (cgroup, filesystem, command) label set of a record header.
#[inline(always)]
fn header_writer(header: &EventHeader) -> WriterStatsKey {
    WriterStatsKey {
        cgroup_id: header.cgroup_id,
        dev: header.dev,
        _pad: 0,
        comm: header.comm,
    }
}

#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: no arguments; always valid in tracing programs.
    unsafe { bpf_get_current_cgroup_id() }
}

/// A record header on the stack, for records outside the fault path.
fn header(
    kind: u32,
    pid_tgid: u64,
    file: &FileKey,
    now: u64,
    comm: &[u8; TASK_COMM_LEN],
) -> EventHeader {
    let mut out = EventHeader::default();
    fill_header(
        &mut out,
        kind,
        pid_tgid,
        file,
        now,
        comm,
        current_cgroup_id(),
    );
    out
}

#[inline(always)]
fn submit_page_event(header: &EventHeader, kind: u32, page: u64, pages: u64) {
    match EVENTS.reserve::<PageEvent>(0) {
        Some(mut entry) => {
            let event = entry.as_mut_ptr();
            // SAFETY: reserved ring-buffer memory of the right size, filled
            // in place (a record built on the stack would cost its size in
            // the 512-byte stack).
            unsafe {
                (*event).header = *header;
                (*event).header.kind = kind;
                (*event).page = page;
                (*event).pages = pages;
            }
            entry.submit(0);
            bump(counter::EVENTS_SUBMITTED);
            note_ring_fill();
        }
        None => bump(counter::RINGBUF_DROPS),
    }
}

/// Keeps the highest ring-buffer fill seen on this CPU.
#[inline(always)]
fn note_ring_fill() {
    // BPF_RB_AVAIL_DATA: bytes submitted and not yet consumed.
    let used = EVENTS.query(0);
    if let Some(peak) = COUNTERS.get_ptr_mut(counter::RING_PEAK_BYTES) {
        // SAFETY: per-CPU slot.
        unsafe {
            if used > *peak {
                *peak = used;
            }
        }
    }
}

/// Adds faults to a (cgroup, filesystem, command) label set's counts.
fn add_writer_faults(key: &WriterStatsKey, shared: u64, cow: u64) {
    if let Some(stats) = WRITER_STATS.get_ptr_mut(key) {
        count_writer_faults(stats, shared, cow);
        return;
    }
    let stats = WriterStats {
        shared_write_faults: shared,
        cow_faults: cow,
    };
    match WRITER_STATS.insert(key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created it: count on this CPU's slot.
        Err(err) if err as i64 == -EEXIST => {
            if let Some(stats) = WRITER_STATS.get_ptr_mut(key) {
                count_writer_faults(stats, shared, cow);
            }
        }
        Err(_) => bump(counter::WRITER_STATS_FULL),
    }
}

#[inline(always)]
fn count_writer_faults(stats: *mut WriterStats, shared: u64, cow: u64) {
    // SAFETY: a per-CPU map value slot from get_ptr_mut.
    unsafe {
        (*stats).shared_write_faults += shared;
        (*stats).cow_faults += cow;
    }
}

/// Sends the file's dentry names (leaf first) so userspace can name files
/// whose writers have already exited.
fn submit_file_event(header: &EventHeader, info: &VmaInfo) {
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        bump(counter::RINGBUF_DROPS);
        bump(counter::RINGBUF_DROPS_FILE_EVENTS);
        return;
    };
    let (magic_offset, parent_offset, name_offset) = (
        offset!(sb_s_magic),
        offset!(dentry_d_parent),
        offset!(dentry_name),
    );
    // No file (a window found without its mapping): no names to send.
    let dentry_offset = offset!(file_dentry);
    let dentry: u64 = if info.file == 0 {
        0
    } else {
        read_kernel(info.file, dentry_offset).unwrap_or(0)
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring-buffer memory of the right size;
    // fields are written in place because the record exceeds the BPF stack.
    unsafe {
        (*event).header = *header;
        (*event).header.kind = event_kind::FILE_SEEN;
        (*event).fs_magic = read_kernel(info.superblock, magic_offset).unwrap_or(0);
        (*event).depth = 0;
        (*event).reached_root = 0;
        let mut dentry = dentry;
        let mut depth = if dentry == 0 { PATH_MAX_DEPTH } else { 0 };
        while depth < PATH_MAX_DEPTH {
            let parent: u64 = read_kernel(dentry, parent_offset).unwrap_or(dentry);
            if parent == dentry {
                (*event).reached_root = 1;
                break;
            }
            let component = &mut (*event).components[depth];
            component[0] = 0;
            let name: u64 = read_kernel(dentry, name_offset).unwrap_or(0);
            let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, component);
            depth += 1;
            (*event).depth = depth as u32;
            dentry = parent;
        }
        // Every slot used: the walk still reached the root if the last
        // parent is the root itself.
        if depth == PATH_MAX_DEPTH && dentry != 0 {
            let parent: u64 = read_kernel(dentry, parent_offset).unwrap_or(0);
            if parent == dentry {
                (*event).reached_root = 1;
            }
        }
    }
    entry.submit(0);
    bump(counter::EVENTS_SUBMITTED);
}

/// Creates the file's stats (and announces the file) if it has none yet,
/// without counting a fault.
fn announce_file(key: &FileKey, now: u64, header: &EventHeader, info: &VmaInfo) {
    if FILE_STATS.get_ptr(key).is_some() {
        return;
    }
    let stats = FileStats {
        last_write_boot_ns: now,
        ..FileStats::default()
    };
    match FILE_STATS.insert(key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => submit_file_event(header, info),
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => bump(counter::FILE_STATS_FULL),
    }
}

/// Counts a write fault, the one `header` describes, in this CPU's open
/// run of faults (no map update) when it continues that run. False when
/// it opens a new run: the run so far is then added to the maps.
#[inline(always)]
fn count_in_run(header: &EventHeader, shared: bool, closing: &mut PendingCounts) -> bool {
    let Some(run) = PENDING_COUNTS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of a one-entry per-CPU array; programs on
    // one CPU do not interleave on it (see FaultScratch).
    let run = unsafe { &mut *run };
    let continues = run.file == header_file(header)
        && run.writer.cgroup_id == header.cgroup_id
        && comm_words(&run.writer.comm) == comm_words(&header.comm);
    if !continues {
        // Closed before it is added to the maps: a reader (the maps first,
        // then the runs) may miss a run for an instant, never count it twice.
        *closing = *run;
        run.file = header_file(header);
        run.writer = header_writer(header);
        run.shared_write_faults = 0;
        run.cow_faults = 0;
    }
    if shared {
        run.shared_write_faults += 1;
    } else {
        run.cow_faults += 1;
    }
    run.last_write_boot_ns = header.boot_ns;
    if !continues {
        close_run(closing);
    }
    continues
}

/// Adds a closed run of faults to its file's and writer's stats.
#[inline(never)]
fn close_run(run: &PendingCounts) {
    if run.shared_write_faults == 0 && run.cow_faults == 0 {
        return;
    }
    match FILE_STATS.get_ptr_mut(&run.file) {
        // SAFETY: this CPU's slot of a per-CPU map value.
        Some(stats) => unsafe {
            (*stats).shared_write_faults += run.shared_write_faults;
            (*stats).cow_faults += run.cow_faults;
            if run.last_write_boot_ns > (*stats).last_write_boot_ns {
                (*stats).last_write_boot_ns = run.last_write_boot_ns;
            }
        },
        None => {
            let stats = FileStats {
                shared_write_faults: run.shared_write_faults,
                cow_faults: run.cow_faults,
                last_write_boot_ns: run.last_write_boot_ns,
                ..FileStats::default()
            };
            // The file was announced when its run opened; its entry is
            // missing only when the map was full then, and still is.
            if FILE_STATS
                .insert(&run.file, &stats, BPF_NOEXIST as u64)
                .is_err()
            {
                bump(counter::FILE_STATS_FULL);
            }
        }
    }
    add_writer_faults(&run.writer, run.shared_write_faults, run.cow_faults);
}

/// Out of line, as are the paths below it: Linux 6.1's verifier adds the
/// frames of the deepest call chain against 512 bytes.
#[inline(never)]
fn try_write_fault(address: u64, error_code: u64) -> Result<(), i64> {
    if address >= USER_ADDRESS_LIMIT {
        return Ok(());
    }
    if error_code & X86_PF_WRITE == 0 {
        return read_fault(address);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // Processes outside --pid / -- CMD: no lookup at all.
    if !tgid_selected((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let scratch = fault_scratch()?;
    scratch.info.file = 0;
    if !find_mapping(address, pid_tgid >> 32, scratch) {
        bump(counter::VMA_WALK_FALLBACKS);
        if !find_vma_locked(address, &mut scratch.info) {
            return Ok(());
        }
    }
    // Anonymous memory (most faults on a host), or a store the kernel
    // will refuse: done before any other work.
    if scratch.info.file == 0 || scratch.info.flags & VM_WRITE == 0 {
        return Ok(());
    }
    let Some(now) = current_writer(pid_tgid, scratch)? else {
        return Ok(());
    };
    scratch.fault.pid_tgid = pid_tgid;
    scratch.fault.now = now;
    scratch.fault.address = address;
    scratch.fault.page =
        scratch.info.pgoff + ((address - scratch.info.start) >> config!(page_shift));
    // Not a protection fault: no page was mapped there. The kernel may map
    // the whole large folio around it.
    scratch.fault.not_present = u64::from(error_code & X86_PF_PROT == 0);
    record_write(scratch);
    Ok(())
}

/// A read fault of a process with a shared writable mapping: on a file
/// without write-notify (tmpfs, shmem, ramfs) the fault maps the page and
/// its fault-around window writable, and later stores take no fault. They
/// are reported as possibly written.
///
/// Out of line, and without the bpf_find_vma fallback: Linux 6.1's verifier
/// adds every frame of the deepest call chain against 512 bytes. A walk
/// that fails is counted (`VMA_WALK_FALLBACKS`) and the fault skipped.
#[inline(never)]
fn try_read_fault(address: u64) -> Result<(), i64> {
    let scratch = fault_scratch()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected_current_task(pid_tgid, &mut scratch.fault.comm)? {
        return Ok(());
    }
    scratch.info.file = 0;
    if !find_mapping(address, pid_tgid >> 32, scratch) {
        bump(counter::VMA_WALK_FALLBACKS);
        return Ok(());
    }
    let info = &scratch.info;
    if info.file == 0 || info.flags & (VM_SHARED | VM_WRITE) != VM_SHARED | VM_WRITE {
        return Ok(());
    }
    let magic: u64 = read_kernel(info.superblock, offset!(sb_s_magic))?;
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Ok(());
    }
    // mm/memory.c do_fault_around: the aligned window of page-table
    // entries around the fault, clipped to the mapping and the table.
    let shift = config!(page_shift);
    let window = u64::from(config!(fault_around_pages)).max(1);
    let page = info.pgoff + ((address - info.start) >> shift);
    let table_offset = (address >> shift) & (PMD_PAGES - 1);
    let vma_offset = (address - info.start) >> shift;
    let vma_pages = (info.end - info.start) >> shift;
    let from = (table_offset & !(window - 1)).max(table_offset - table_offset.min(vma_offset));
    let to = (from + window)
        .min(PMD_PAGES)
        .min(table_offset + vma_pages - vma_offset)
        - 1;
    let first = page - (table_offset - from);
    // Afresh: a cached mapping's size may be stale.
    let size: u64 = read_kernel(info.inode, offset!(inode_i_size))?;
    let last = (page + (to - table_offset)).min(pages_of(size).saturating_sub(1));
    if first > last {
        return Ok(());
    }
    report_possible_write(scratch, pid_tgid, first, last);
    Ok(())
}

/// Reports pages `first..=last` of the file in `scratch.info` as possibly
/// written by the current task.
fn report_possible_write(scratch: &mut FaultScratch, pid_tgid: u64, first: u64, last: u64) {
    bump(counter::POSSIBLE_WRITE_WINDOWS);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let FaultScratch {
        info,
        fault,
        header,
        ..
    } = scratch;
    let key = info.file_key();
    fill_header(
        header,
        event_kind::POSSIBLE_WRITE,
        pid_tgid,
        &key,
        now,
        &fault.comm,
        current_cgroup_id(),
    );
    announce_file(&key, now, header, info);
    // Not through report_first_use: one frame less for Linux 6.1's
    // 512-byte call-chain limit. Userspace deduplicates the pages.
    submit_page_event(header, event_kind::POSSIBLE_WRITE, first, last - first + 1);
}

/// A read fault: only those of processes with a shared writable mapping
/// can map pages writable without a later write fault.
#[inline(always)]
fn read_fault(address: u64) -> Result<(), i64> {
    note_read_fault(address);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain u8 value.
    if unsafe { SHARED_MAPPERS.get(&tgid) }.is_some() {
        return try_read_fault(address);
    }
    Ok(())
}

/// Remembers a user read fault for `mm_filemap_map_pages`.
#[inline(always)]
fn note_read_fault(address: u64) {
    if let Some(slot) = LAST_READ_FAULT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a one-entry per-CPU array.
        unsafe { *slot = [bpf_get_current_pid_tgid(), address] };
    }
}

/// Per-CPU working memory of the fault programs: the BPF stack is 512
/// bytes for a whole call chain (Linux 6.1 counts callbacks in it too).
/// Programs on one CPU do not interleave here: the fault programs do not
/// run in interrupts, and a BPF program is not preempted by another fault
/// program on its CPU.
#[repr(C)]
struct FaultScratch {
    info: VmaInfo,
    pivots: [u64; MAPLE_MAX_PIVOTS],
    fault: WriteFault,
    header: EventHeader,
    /// Built here, not on the stack (see above).
    pending: PendingFault,
    cache: VmaCache,
    writer: WriterCache,
    chunk_cache: ChunkCache,
    closing_run: PendingCounts,
}

/// Whether the current task (`pid_tgid`) passes the pid and comm
/// filters; its command name is left in `comm`.
#[inline(always)]
fn selected_current_task(pid_tgid: u64, comm: &mut [u8; TASK_COMM_LEN]) -> Result<bool, i64> {
    current_comm_into(comm)?;
    Ok(task_selected((pid_tgid >> 32) as u32, comm))
}

/// The current task's command name, into scratch memory (a by-value copy
/// is spilled byte by byte onto the stack).
#[inline(always)]
fn current_comm_into(comm: &mut [u8; TASK_COMM_LEN]) -> Result<(), i64> {
    // On Linux 6.1 the helper copies with strscpy, which does not pad: bytes
    // after the NUL would be a previous task's name, and comparisons of all
    // 16 bytes (the --comm filter, map keys) would fail.
    *comm = [0; TASK_COMM_LEN];
    // SAFETY: `comm` is writable memory of TASK_COMM_LEN bytes.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(
            comm.as_mut_ptr() as *mut c_void,
            TASK_COMM_LEN as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

#[map]
static SCRATCH: PerCpuArray<FaultScratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn fault_scratch() -> Result<&'static mut FaultScratch, i64> {
    let slot = SCRATCH.get_ptr_mut(0).ok_or(-ENOENT)?;
    // SAFETY: this CPU's slot of a one-entry per-CPU array (see above).
    Ok(unsafe { &mut *slot })
}

/// `bpf_find_vma`, the slow path. Out of line so that its callback's frame
/// is not stacked on the recording path's (Linux 6.1's verifier counts
/// them together against the 512-byte limit).
#[inline(never)]
fn find_vma_locked(address: u64, out: &mut VmaInfo) -> bool {
    // The callback's context must be on the stack, not in a map.
    let mut info = VmaInfo::default();
    // SAFETY: the task pointer comes from the kernel; the callback is a
    // subprogram with the signature bpf_find_vma expects.
    let found = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            address,
            vma_callback as *mut c_void,
            &mut info as *mut VmaInfo as *mut c_void,
            0,
        )
    };
    // -ENOENT: no VMA, the fault ends in SIGSEGV and nothing was written.
    if found != 0 && found != -ENOENT {
        bump(counter::VMA_LOOKUP_FAILED);
    }
    *out = info;
    found == 0
}

/// A write fault whose page is known.
#[repr(C)]
struct WriteFault {
    pid_tgid: u64,
    address: u64,
    /// File page index.
    page: u64,
    /// 1: no page was mapped at the address (not a protection fault).
    not_present: u64,
    now: u64,
    cgroup_id: u64,
    comm: [u8; TASK_COMM_LEN],
}

/// This CPU's last writing thread: its command name, cgroup and filter
/// verdict. Read afresh when another thread faults here, and at least
/// every [`WRITER_CACHE_NS`]: a thread can rename itself (prctl) or move
/// to another cgroup, and is labelled by its old ones for at most that.
#[repr(C)]
struct WriterCache {
    pid_tgid: u64,
    /// The clock tick (jiffies) when read.
    tick: u64,
    /// The boot clock then.
    boot_ns: u64,
    selected: u64,
    cgroup_id: u64,
    comm: [u8; TASK_COMM_LEN],
}

/// The time of the fault, if the current thread (`pid_tgid`) passes the
/// filters; its command name and cgroup are left in `scratch.fault`.
///
/// The cache is read afresh when another thread faults here and on every
/// clock tick: a thread renamed (prctl) or moved to another cgroup is
/// labelled by its old ones for at most a tick. The time is that of the
/// thread's first fault on this CPU in this tick, so within a tick: the
/// boot clock reads the TSC, ~110 ns per call in a VM here, and the coarse
/// clock is not for tracing programs. Records of first writes carry the
/// fine time (see record_write).
#[inline(always)]
fn current_writer(pid_tgid: u64, scratch: &mut FaultScratch) -> Result<Option<u64>, i64> {
    let FaultScratch { writer, fault, .. } = scratch;
    // SAFETY: no arguments.
    let tick = unsafe { bpf_jiffies64() };
    if writer.pid_tgid != pid_tgid || writer.tick != tick {
        current_comm_into(&mut writer.comm)?;
        writer.cgroup_id = current_cgroup_id();
        writer.selected = u64::from(task_selected((pid_tgid >> 32) as u32, &writer.comm));
        writer.pid_tgid = pid_tgid;
        writer.tick = tick;
        // SAFETY: no arguments.
        writer.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    }
    if writer.selected == 0 {
        return Ok(None);
    }
    fault.comm = writer.comm;
    fault.cgroup_id = writer.cgroup_id;
    Ok(Some(writer.boot_ns))
}

/// This CPU's copy of the dedup entry it used last. Bits only ever get
/// set, so a bit set here was reported: a repeated fault on the page by
/// the chunk's first writer needs no map lookup.
#[repr(C)]
struct ChunkCache {
    key: PageChunkKey,
    chunk: PageChunk,
}

/// Whether this CPU's copy of the dedup entry shows page `page` of
/// `kind` reported, with nothing left to do for this writer.
#[inline(always)]
fn reported_here(cache: &ChunkCache, header: &EventHeader, kind: u32, page: u64) -> bool {
    let key = &cache.key;
    if key.chunk != page / CHUNK_PAGES || key.kind != kind || key.file != header_file(header) {
        return false;
    }
    let Some(word) = cache
        .chunk
        .reported
        .get(((page % CHUNK_PAGES) / 64) as usize)
    else {
        return false;
    };
    word & (1u64 << (page % 64)) != 0
        && (cache.chunk.first_tgid == header.tgid || kind == event_kind::COW_WRITE)
}

/// Copies the dedup entry of `page` into this CPU's cache.
#[inline(never)]
fn cache_chunk(cache: &mut ChunkCache, header: &EventHeader, kind: u32, page: u64) {
    cache.key = PageChunkKey {
        file: header_file(header),
        chunk: page / CHUNK_PAGES,
        kind,
        _pad: 0,
    };
    // SAFETY: a plain value of the dedup map, copied out at once.
    match unsafe { PAGE_SEEN.get(&cache.key) } {
        Some(chunk) => cache.chunk = *chunk,
        // Not kept (the map refused it): nothing cached.
        None => cache.key.kind = 0,
    }
}

/// Records a write fault whose mapping is known. Out of line: every backend's
/// fault programs call it, and its frame stays off the lookup's call chain.
#[inline(never)]
fn record_write(scratch: &mut FaultScratch) -> i64 {
    let FaultScratch {
        info,
        fault,
        header,
        pending,
        chunk_cache,
        closing_run,
        ..
    } = scratch;
    let info = &*info;
    let (pid_tgid, page, now) = (fault.pid_tgid, fault.page, fault.now);
    let comm = &fault.comm;
    // Anonymous memory, or a store the kernel will refuse.
    if info.file == 0 || info.flags & VM_WRITE == 0 {
        return 0;
    }
    let shared = info.flags & VM_SHARED != 0;
    let kind = if shared {
        event_kind::SHARED_WRITE
    } else {
        event_kind::COW_WRITE
    };
    let file_key = info.file_key();
    fill_header(
        header,
        kind,
        pid_tgid,
        &file_key,
        now,
        comm,
        fault.cgroup_id,
    );
    // A repeated fault of the page's writer: only counted. Otherwise the
    // page is reported, if it lies inside the file: past the end the fault
    // ends in SIGBUS and nothing is written. (The size is read afresh: a
    // cached mapping's is not. A repeated fault skips the check; if the
    // file shrank under it, that fault is counted but no page reported.)
    let reported = reported_here(chunk_cache, header, kind, page);
    if !reported {
        let size = read_kernel(info.inode, offset!(inode_i_size)).unwrap_or(info.size);
        if page >= pages_of(size) {
            bump(counter::FAULTS_PAST_EOF);
            return 0;
        }
        // Records carry the fine time.
        // SAFETY: no arguments.
        header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    }
    let header = &*header;
    if !shared {
        bump(counter::COW_FAULTS);
        if config!(include_cow) == 0 {
            // Counted per writer only: the file is not reported.
            add_writer_faults(&header_writer(header), 0, 1);
            return 0;
        }
    } else {
        bump(counter::SHARED_WRITE_FAULTS);
    }
    if !count_in_run(header, shared, closing_run) {
        announce_file(&file_key, now, header, info);
    }
    if !reported {
        report_first_use(header, kind, page, 1);
        cache_chunk(chunk_cache, header, kind, page);
    }
    if shared && fault.not_present != 0 {
        pending.room = folio_room(info, fault.address);
        pending.page = page;
        if let Some((first, pages)) = note_folio_span(header, info.file, pending) {
            bump(counter::FOLIO_SPANS);
            report_first_use(header, event_kind::FOLIO_SPAN, first, pages);
        }
    }
    0
}

/// Pages a file of `size` bytes has, the last one partial.
#[inline(always)]
fn pages_of(size: u64) -> u64 {
    let shift = config!(page_shift);
    (size + (1 << shift) - 1) >> shift
}

/// Reports `pages` pages from `page` (one page, a folio span or a
/// possibly-written window) unless this process reported them already.
/// Another process touching them is reported as a new writer.
fn report_first_use(header: &EventHeader, kind: u32, page: u64, pages: u64) {
    let tgid = header.tgid;
    let file = header_file(header);
    let chunk_key = PageChunkKey {
        file,
        chunk: page / CHUNK_PAGES,
        kind,
        _pad: 0,
    };
    let word = ((page % CHUNK_PAGES) / 64) as usize;
    let bit = 1u64 << (page % 64);
    let Some(chunk) = PAGE_SEEN.get_ptr_mut(&chunk_key) else {
        new_chunk(&chunk_key, header, kind, page, pages);
        return;
    };
    // SAFETY: a value of the shared dedup map. Other CPUs may update the
    // same word at once; a bit lost that way only makes its page be
    // reported again, which userspace deduplicates (no atomic OR in BPF
    // before cpu v3).
    let chunk = unsafe { &mut *chunk };
    let Some(reported) = chunk.reported.get_mut(word) else {
        return;
    };
    if *reported & bit == 0 {
        *reported |= bit;
        submit_page_event(header, kind, page, pages);
        return;
    }
    match chunk.first_tgid {
        // The chunk's first writer already writes this file.
        first_writer if first_writer == tgid => {}
        // Another process copying the same page privately modifies nothing:
        // only writers of the file itself are attributed.
        _ if kind == event_kind::COW_WRITE => {}
        _ => {
            let writer_key = WriterKey {
                file,
                tgid,
                _pad: 0,
            };
            // SAFETY: read-only lookup of a plain u8 value.
            if unsafe { WRITERS.get(&writer_key) }.is_none() {
                match WRITERS.insert(&writer_key, &1, BPF_NOEXIST as u64) {
                    // A span or window goes out again whole: its pages are
                    // this process's too.
                    Ok(()) if kind == event_kind::SHARED_WRITE => {
                        submit_page_event(header, event_kind::NEW_WRITER, page, 1)
                    }
                    Ok(()) => submit_page_event(header, kind, page, pages),
                    Err(err) if err as i64 == -EEXIST => {}
                    Err(_) => bump(counter::WRITER_INSERT_FAILED),
                }
            }
        }
    }
}

/// The first page reported of a chunk: creates its dedup entry (evicting
/// the least recently used one when full) and reports the page.
#[inline(never)]
fn new_chunk(key: &PageChunkKey, header: &EventHeader, kind: u32, page: u64, pages: u64) {
    match PAGE_SEEN.insert(key, &EMPTY_CHUNK, BPF_NOEXIST as u64) {
        Ok(()) => bump(counter::DEDUP_INSERTS),
        // Another CPU created it an instant ago: mark the page there.
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => bump(counter::DEDUP_INSERT_FAILED),
    }
    if let Some(chunk) = PAGE_SEEN.get_ptr_mut(key) {
        // SAFETY: a value of the shared dedup map (see report_first_use).
        let chunk = unsafe { &mut *chunk };
        if chunk.first_tgid == 0 {
            chunk.first_tgid = header.tgid;
        }
        if let Some(reported) = chunk.reported.get_mut(((page % CHUNK_PAGES) / 64) as usize) {
            *reported |= 1u64 << (page % 64);
        }
    }
    // Reported even when the entry could not be made: userspace
    // deduplicates too.
    submit_page_event(header, kind, page, pages);
}

/// How far a folio around the faulting page may reach and still be mapped
/// whole: inside the mapping and inside the page table (2 MiB of address
/// space) that holds the address.
#[inline(always)]
fn folio_room(info: &VmaInfo, address: u64) -> FolioRoom {
    let shift = config!(page_shift);
    let vma_offset = (address - info.start) >> shift;
    let vma_pages = (info.end - info.start) >> shift;
    let table_offset = (address >> shift) & (PMD_PAGES - 1);
    FolioRoom {
        before: vma_offset.min(table_offset),
        from: (vma_pages - vma_offset).min(PMD_PAGES - table_offset),
    }
}

/// A shared write fault on a page not mapped yet: the kernel maps the
/// whole large folio holding the page writable when it fits the room, and
/// later stores to its other pages never fault. A folio already in the
/// page cache is found now (returned as its first page and size, when the
/// fault maps it whole); a new one when the fault dirties it.
#[inline(never)]
fn note_folio_span(
    header: &EventHeader,
    file: u64,
    pending: &mut PendingFault,
) -> Option<(u64, u64)> {
    let (page, room) = (pending.page, pending.room);
    let mapping = read_kernel::<u64>(file, offset!(file_f_mapping)).ok()?;
    // A file that cannot have large folios (tmpfs without huge=, most
    // filesystems before 6.16) needs no page-cache walk.
    let mask = offset!(large_folio_mask);
    if mask != 0 {
        let flags: u64 = read_kernel(mapping, offset!(mapping_flags)).ok()?;
        if flags & mask == 0 {
            return None;
        }
    }
    match page_cache_folio(mapping, page) {
        Some(folio) => {
            let pages = folio_pages(folio).ok()?;
            let first = read_kernel::<u64>(folio, offset!(folio_index)).ok()?;
            (pages > 1 && room.fits(page, first, pages)).then_some((first, pages))
        }
        None => {
            pending.pid_tgid = (u64::from(header.tgid) << 32) | u64::from(header.pid);
            pending.file = header_file(header);
            // An LRU map evicts an old entry rather than fail.
            let _ = PENDING_FAULT.insert(&header.pid, pending, 0);
            None
        }
    }
}

/// The folio caching `index` of a file, from its page-cache xarray
/// (lib/xarray.c's encoding), or None when the page is not cached. Nodes
/// and folios are freed by RCU, under which BPF programs run; the folio is
/// checked to still belong to the mapping.
#[inline(never)]
fn page_cache_folio(mapping: u64, index: u64) -> Option<u64> {
    let mut entry: u64 = read_kernel(mapping, offset!(mapping_xa_head)).ok()?;
    let mut depth = 0;
    // An internal entry (low bits 0b10) above 4096 is a node.
    while entry & 3 == 2 && entry > 4096 && depth < XA_MAX_DEPTH {
        depth += 1;
        let node = entry - 2;
        let shift: u8 = read_kernel(node, offset!(xa_node_shift)).ok()?;
        let shift = u64::from(shift);
        if shift < 64 && depth == 1 && (index >> shift) > XA_CHUNK_MASK {
            return None;
        }
        let slot = (index >> (shift & 63)) & XA_CHUNK_MASK;
        let slots = offset!(xa_node_slots);
        entry = read_kernel(node, slots + slot * 8).ok()?;
        // A sibling entry points at the slot holding a multi-slot folio.
        if entry & 3 == 2 && entry < (XA_CHUNK_MASK << 2) + 2 {
            entry = read_kernel(node, slots + ((entry >> 2) & XA_CHUNK_MASK) * 8).ok()?;
        }
        if shift == 0 {
            break;
        }
    }
    // A head that is no node holds index 0 only.
    if depth == 0 && index != 0 {
        return None;
    }
    // Empty, a value (shadow) entry or another internal entry.
    if entry < 4096 || entry & 3 != 0 {
        return None;
    }
    let owner: u64 = read_kernel(entry, offset!(folio_mapping)).ok()?;
    (owner == mapping).then_some(entry)
}

/// `exceptions:page_fault_{user,kernel}` as raw tracepoints: (address,
/// regs, error_code), read straight from the context. The classic
/// tracepoint would first copy its record through the perf buffer.
#[inline(always)]
fn fault_args(ctx: &RawTracePointContext) -> (u64, u64) {
    (ctx.arg(0), ctx.arg(2))
}

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(ctx: RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(&ctx);
    if let Err(err) = try_write_fault(address, error_code) {
        debug!(&ctx, "page_fault_user: kernel read failed: {}", err);
    }
    0
}

/// Kernel-mode faults on user addresses: read(2) or a copy_to_user into a
/// shared mapping stores into the file just as a user store does.
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(&ctx);
    let _ = try_write_fault(address, error_code);
    0
}

/// The function-hook backends' read faults (their hooks see the writes):
/// tmpfs pages a read fault maps writable are possibly written.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user_reads(ctx: RawTracePointContext) -> i32 {
    let (address, error_code) = fault_args(&ctx);
    if address < USER_ADDRESS_LIMIT && error_code & X86_PF_WRITE == 0 {
        let _ = read_fault(address);
    }
    0
}

/// Reads (dev, generation, ino) of an inode.
#[inline(always)]
fn inode_key(inode: u64) -> Result<(FileKey, u64), i64> {
    let superblock: u64 = read_kernel(inode, offset!(inode_i_sb))?;
    let key = FileKey {
        dev: read_kernel(superblock, offset!(sb_s_dev))?,
        generation: read_kernel(inode, offset!(inode_i_generation))?,
        ino: read_kernel(inode, offset!(inode_i_ino))?,
    };
    Ok((key, superblock))
}

/// Pages in a folio: `1 << order` for a large folio, else 1.
#[inline(always)]
fn folio_pages(folio: u64) -> Result<u64, i64> {
    let flags: u64 = read_kernel(folio, offset!(folio_flags))?;
    if flags & (1u64 << offset!(pg_head_bit)) == 0 {
        return Ok(1);
    }
    let order: u8 = read_kernel(folio, offset!(folio_order_byte))?;
    Ok(1u64 << (order & 63))
}

fn try_dirty_folio(ctx: &RawTracePointContext) -> Result<(), i64> {
    let folio: u64 = ctx.arg(0);
    let mapping: u64 = ctx.arg(1);
    let host: u64 = read_kernel(mapping, offset!(mapping_host))?;
    let (key, _) = inode_key(host)?;
    // Only files already seen through a write fault: write(2) traffic never
    // creates entries.
    let Some(stats) = FILE_STATS.get_ptr_mut(&key) else {
        return Ok(());
    };
    let pages = folio_pages(folio)?;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: this CPU's value slot.
    unsafe {
        (*stats).folios_dirtied += 1;
        (*stats).pages_dirtied += pages;
        (*stats).last_dirty_boot_ns = now;
    }
    // Only the first dirtying since the last completed writeback counts. A
    // lookup first: most dirtyings find the entry, and a refused insert
    // takes the bucket lock.
    // SAFETY: read-only lookup of a plain u64 value.
    if unsafe { DIRTY_SINCE.get(&key) }.is_none() {
        let _ = DIRTY_SINCE.insert(&key, &now, BPF_NOEXIST as u64);
    }
    if pages > 1 {
        let index: u64 = read_kernel(folio, offset!(folio_index))?;
        report_new_folio_span(&key, index, pages, now);
    }
    Ok(())
}

/// A shared write fault of this thread on a page not yet cached brought
/// in this large folio, and dirties it now: if the folio fits the fault's
/// room, the kernel maps it writable whole, so later stores to any of its
/// pages never fault. Report the whole span.
fn report_new_folio_span(key: &FileKey, index: u64, pages: u64, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = pid_tgid as u32;
    // SAFETY: read-only lookup of a plain value, copied out at once.
    let Some(pending) = (unsafe { PENDING_FAULT.get(&thread) }).copied() else {
        return;
    };
    if pending.pid_tgid != pid_tgid || pending.file != *key {
        return;
    }
    let _ = PENDING_FAULT.remove(&thread);
    if !pending.room.fits(pending.page, index, pages) {
        return;
    }
    bump(counter::FOLIO_SPANS);
    let Ok(comm) = bpf_get_current_comm() else {
        return;
    };
    let header = header(event_kind::FOLIO_SPAN, pid_tgid, key, now, &comm);
    report_first_use(&header, event_kind::FOLIO_SPAN, index, pages);
}

/// A folio went clean to dirty (`folio_account_dirtied`). A raw tracepoint,
/// not tp_btf: its arguments are plain values, so offsets known only at load
/// time can be added to them (the verifier forbids that on typed pointers).
#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn writeback_dirty_folio(ctx: RawTracePointContext) -> i32 {
    let _ = try_dirty_folio(&ctx);
    0
}

fn add_written_back(key: &FileKey, pages: u64) {
    if pages == 0 {
        return;
    }
    if let Some(stats) = FILE_STATS.get_ptr_mut(key) {
        // SAFETY: this CPU's value slot.
        unsafe { (*stats).writeback_pages += pages };
    }
}

fn try_writeback_single_inode(ctx: &RawTracePointContext) -> Result<(), i64> {
    let inode: u64 = ctx.arg(0);
    let wbc: u64 = ctx.arg(1);
    let nr_to_write: i64 = ctx.arg(2);
    let (key, superblock) = inode_key(inode)?;
    // ext4 reports its pages itself (ext4_writepages_result), on every path
    // including fsync and msync; counting here too would count twice.
    let magic: u64 = read_kernel(superblock, offset!(sb_s_magic))?;
    if magic == EXT4_SUPER_MAGIC {
        return Ok(());
    }
    let left: i64 = read_kernel(wbc, offset!(wbc_nr_to_write))?;
    if nr_to_write > left {
        add_written_back(&key, (nr_to_write - left) as u64);
    }
    Ok(())
}

/// The flusher (or sync(2)) wrote an inode's pages.
#[raw_tracepoint(tracepoint = "writeback_single_inode")]
pub fn writeback_single_inode(ctx: RawTracePointContext) -> i32 {
    let _ = try_writeback_single_inode(&ctx);
    0
}

/// Raw `ext4_writepages_result(inode, wbc, ret, pages_written)`: the inode
/// pointer gives the generation, which the classic format lacks.
fn try_ext4_writepages_result(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (key, _) = inode_key(ctx.arg(0))?;
    let written: i64 = ctx.arg(3);
    let written = written as i32;
    if written > 0 {
        add_written_back(&key, written as u64);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "ext4_writepages_result")]
pub fn ext4_writepages_result(ctx: RawTracePointContext) -> i32 {
    let _ = try_ext4_writepages_result(&ctx);
    0
}

/// Raw tracepoints `sb_{mark,clear}_inode_writeback(struct inode *)`: the
/// classic formats differ between kernels (6.1 has no device number).
fn try_inode_writeback(ctx: &RawTracePointContext, started: bool) -> Result<(), i64> {
    let (key, _) = inode_key(ctx.arg(0))?;
    let Some(stats) = FILE_STATS.get_ptr_mut(&key) else {
        return Ok(());
    };
    // SAFETY: this CPU's value slot.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        if started {
            (*stats).writeback_starts += 1;
            (*stats).last_writeback_start_boot_ns = now;
        } else {
            (*stats).writeback_ends += 1;
            (*stats).last_writeback_end_boot_ns = now;
            record_writeback_latency(&key, now);
        }
    }
    Ok(())
}

/// The file's writeback completed: how long since it was first dirtied?
fn record_writeback_latency(key: &FileKey, now: u64) {
    // SAFETY: read-only lookup of a plain u64, copied out at once.
    let Some(since) = (unsafe { DIRTY_SINCE.get(key) }).copied() else {
        return;
    };
    let _ = DIRTY_SINCE.remove(key);
    let bucket = log2(now.saturating_sub(since));
    if let Some(slot) = WRITEBACK_LATENCY.get_ptr_mut(bucket) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

/// floor(log2(value)), 0 for 0: a branch-only binary search the verifier
/// follows easily.
#[inline(always)]
fn log2(mut value: u64) -> u32 {
    let mut result = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if value >> shift != 0 {
            value >>= shift;
            result += shift;
        }
    }
    result
}

/// The inode's first folio went under writeback.
#[raw_tracepoint(tracepoint = "sb_mark_inode_writeback")]
pub fn sb_mark_inode_writeback(ctx: RawTracePointContext) -> i32 {
    let _ = try_inode_writeback(&ctx, true);
    0
}

/// The inode's last folio under writeback completed.
#[raw_tracepoint(tracepoint = "sb_clear_inode_writeback")]
pub fn sb_clear_inode_writeback(ctx: RawTracePointContext) -> i32 {
    let _ = try_inode_writeback(&ctx, false);
    0
}

/// Raw `mm_filemap_map_pages(mapping, index, last_index)`: fault-around
/// mapped cached pages `index..=last_index` of a file. On a filesystem
/// without write-notify (tmpfs, shmem, ramfs) a shared writable mapping
/// gets them writable at once, so stores to them never fault: they are
/// reported as possibly written. Most calls end at the first check: files
/// nobody maps shared and writable.
fn try_filemap_map_pages(ctx: &RawTracePointContext) -> Result<(), i64> {
    let mapping: u64 = ctx.arg(0);
    let writable_mappings: i32 = read_kernel(mapping, offset!(mapping_i_mmap_writable))?;
    if writable_mappings <= 0 {
        return Ok(());
    }
    let host: u64 = read_kernel(mapping, offset!(mapping_host))?;
    let (key, superblock) = inode_key(host)?;
    let magic: u64 = read_kernel(superblock, offset!(sb_s_magic))?;
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Ok(());
    }
    let scratch = fault_scratch()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected_current_task(pid_tgid, &mut scratch.fault.comm)? {
        return Ok(());
    }
    // A fault-around inside a user read fault of this thread was handled
    // at the fault tracepoint, which knows the mapping. Any other (from
    // get_user_pages, or after the task moved CPU) cannot tell which
    // mapping it fills: the file's shared writable mapping is taken to be
    // the one, and the window is reported as unverified.
    let last_fault = LAST_READ_FAULT.get(0).copied().unwrap_or([0, 0]);
    if last_fault[0] == pid_tgid {
        return Ok(());
    }
    bump(counter::POSSIBLE_WRITE_UNVERIFIED);
    let (first, last): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    scratch.info = VmaInfo::default();
    scratch.info.superblock = superblock;
    scratch.info.dev = key.dev;
    scratch.info.generation = key.generation;
    scratch.info.ino = key.ino;
    scratch.info.size = read_kernel(host, offset!(inode_i_size))?;
    let pages = pages_of(scratch.info.size);
    if first >= pages || last < first {
        return Ok(());
    }
    report_possible_write(scratch, pid_tgid, first, last.min(pages - 1));
    Ok(())
}

#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn mm_filemap_map_pages(ctx: RawTracePointContext) -> i32 {
    let _ = try_filemap_map_pages(&ctx);
    0
}

const MAP_SHARED: u64 = 0x01;
const PROT_WRITE: u64 = 0x2;

/// `syscalls:sys_enter_{mmap,mprotect}`: a process that may now have a
/// shared writable mapping. prot@32 for both; mmap's flags@40.
fn try_note_shared_mapper(ctx: &TracePointContext, shared: bool) -> Result<(), i64> {
    // SAFETY: offsets from the tracepoints' format files.
    let prot: u64 = unsafe { ctx.read_at(32) }.map_err(|err| err as i64)?;
    if prot & PROT_WRITE == 0 || !shared {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    SHARED_MAPPERS
        .insert(&tgid, &1, 0)
        .map_err(|err| err as i64)
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    let flags: u64 = unsafe { ctx.read_at(40) }.unwrap_or(0);
    let _ = try_note_shared_mapper(&ctx, flags & MAP_SHARED != 0);
    0
}

/// mprotect can make a shared mapping writable; whether it is shared is
/// checked at the fault.
#[tracepoint]
pub fn sys_enter_mprotect(ctx: TracePointContext) -> u32 {
    let _ = try_note_shared_mapper(&ctx, true);
    0
}

/// Raw `sched_process_fork(parent, child)`: the classic format moved its
/// fields between kernels (comm arrays became dynamic strings).
fn try_process_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    // The tracepoint runs in the parent.
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain u8 value.
    if unsafe { SHARED_MAPPERS.get(&parent_tgid) }.is_some() {
        // The child inherits the parent's shared mappings.
        let child_pid: u32 = read_kernel(ctx.arg::<u64>(1), offset!(task_pid))?;
        let _ = SHARED_MAPPERS.insert(&child_pid, &1, 0);
    }
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // SAFETY: read-only lookup of a plain u32 value.
    match unsafe { TRACED.get(&parent_tgid) } {
        Some(&traced::FOLLOW_CHILDREN) => {}
        _ => return Ok(()),
    }
    let child: u64 = ctx.arg(1);
    // The child's thread id: for a new process, its tgid.
    let child_pid: u32 = read_kernel(child, offset!(task_pid))?;
    TRACED
        .insert(&child_pid, &traced::FOLLOW_CHILDREN, 0)
        .map_err(|err| err as i64)
}

/// Follows `-- CMD`'s descendants.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_process_fork(&ctx);
    0
}

/// Raw `sched_process_exit(task, ...)`, in the exiting task. Whether the
/// whole group is dead comes from `signal->live` (already decremented
/// here), not a `group_dead` field that older kernels lack.
fn try_process_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let task: u64 = ctx.arg(0);
    let signal: u64 = read_kernel(task, offset!(task_signal))?;
    let live: i32 = read_kernel(signal, offset!(signal_live))?;
    if live == 0 {
        let _ = SHARED_MAPPERS.remove(&tgid);
    }
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // A thread's entry (forks record thread ids too) or, once the whole
    // group is gone, the process's: ids are reused.
    if pid != tgid {
        let _ = TRACED.remove(&pid);
    }
    if live == 0 {
        let _ = TRACED.remove(&tgid);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_process_exit(&ctx);
    0
}

// ---- Function hooks: the fentry and kprobe backends ----
//
// Each write fault is recorded by exactly one of them: `do_wp_page` for a
// present page (shared writes; private ones too unless `wp_page_copy` is
// attached), `finish_fault` for a page not yet mapped (its vm_fault carries
// FAULT_FLAG_WRITE), `wp_page_copy` for private copies of present pages.
// The mkwrite and writeback hooks only add what the fault hooks cannot see.

/// The fault hook a program stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FaultHook {
    WpPage,
    FinishFault,
    WpPageCopy,
}

/// Argument `index` of an fentry program, as a plain number. fentry
/// arguments are typed pointers to the verifier, which refuses offsets
/// known only at load time on them; a probe read yields an untyped copy.
#[inline(always)]
fn fentry_arg(ctx: &FEntryContext, index: u64) -> Result<u64, i64> {
    read_kernel::<u64>(ctx.as_ptr() as u64, index * 8)
}

fn try_vmf_write(vmf: u64, hook: FaultHook) -> Result<(), i64> {
    if hook == FaultHook::FinishFault {
        let flags: u32 = read_kernel(vmf, offset!(vmf_flags))?;
        if u64::from(flags) & offset!(fault_flag_write) == 0 {
            return Ok(());
        }
    }
    let scratch = fault_scratch()?;
    let vma: u64 = read_kernel(vmf, offset!(vmf_vma))?;
    fill_vma_info(vma, &mut scratch.info)?;
    // Anonymous memory or a refused store: no more work.
    if scratch.info.file == 0 || scratch.info.flags & VM_WRITE == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(now) = current_writer(pid_tgid, scratch)? else {
        return Ok(());
    };
    let shared = scratch.info.flags & VM_SHARED != 0;
    let cow_at_copy = HOOKS
        .get(0)
        .is_some_and(|bits| bits & hooks::COW_AT_WP_PAGE_COPY != 0);
    match hook {
        FaultHook::WpPage if !shared && cow_at_copy => return Ok(()),
        FaultHook::WpPageCopy if shared => return Ok(()),
        _ => {}
    }
    scratch.fault.pid_tgid = pid_tgid;
    scratch.fault.now = now;
    scratch.fault.address = read_kernel(vmf, offset!(vmf_address))?;
    // The kernel's own page index for this fault (linear_page_index).
    scratch.fault.page = read_kernel(vmf, offset!(vmf_pgoff))?;
    // finish_fault maps a page that was not mapped, and may map the whole
    // large folio around it.
    scratch.fault.not_present = u64::from(hook == FaultHook::FinishFault);
    record_write(scratch);
    Ok(())
}

/// Remembers which `->page_mkwrite` the file's filesystem runs: `hook_fn`
/// when the program sits on that function itself, else the mapping's
/// `vm_ops->page_mkwrite` (the program is on `do_page_mkwrite`).
fn try_page_mkwrite(vmf: u64, hook_fn: u64) -> Result<(), i64> {
    let mut comm = [0u8; TASK_COMM_LEN];
    if !selected_current_task(bpf_get_current_pid_tgid(), &mut comm)? {
        return Ok(());
    }
    let vma: u64 = read_kernel(vmf, offset!(vmf_vma))?;
    let file: u64 = read_kernel(vma, offset!(vma_vm_file))?;
    if file == 0 {
        return Ok(());
    }
    let inode: u64 = read_kernel(file, offset!(file_f_inode))?;
    let (key, _) = inode_key(inode)?;
    // SAFETY: read-only lookup of a plain u64 value.
    if unsafe { PAGE_MKWRITE.get(&key) }.is_some() {
        return Ok(());
    }
    let function = if hook_fn != 0 {
        hook_fn
    } else {
        let ops: u64 = read_kernel(vma, offset!(vma_vm_ops))?;
        read_kernel(ops, offset!(vm_ops_page_mkwrite))?
    };
    PAGE_MKWRITE
        .insert(&key, &function, 0)
        .map_err(|err| err as i64)
}

/// A folio finished writeback: its pages' writeback time, for files already
/// seen. Runs at I/O completion, often in interrupt context: no task
/// filters apply, only the file's.
fn try_folio_written_back(folio: u64) -> Result<(), i64> {
    let mapping: u64 = read_kernel(folio, offset!(folio_mapping))?;
    // Anonymous (swap) and movable folios tag the pointer's low bits.
    if mapping == 0 || mapping & 3 != 0 {
        return Ok(());
    }
    let host: u64 = read_kernel(mapping, offset!(mapping_host))?;
    let (key, _) = inode_key(host)?;
    if FILE_STATS.get_ptr(&key).is_none() {
        return Ok(());
    }
    let index: u64 = read_kernel(folio, offset!(folio_index))?;
    let pages = folio_pages(folio)?;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let header = header(
        event_kind::PAGES_WRITTEN_BACK,
        bpf_get_current_pid_tgid(),
        &key,
        now,
        &[0; TASK_COMM_LEN],
    );
    submit_page_event(&header, event_kind::PAGES_WRITTEN_BACK, index, pages);
    Ok(())
}

/// The function a kprobe or fentry program is attached to.
#[inline(always)]
fn attached_function<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the context pointer of a tracing or kprobe program.
    unsafe { bpf_get_func_ip(ctx.as_ptr()) }
}

#[fentry(function = "do_wp_page")]
pub fn fentry_do_wp_page(ctx: FEntryContext) -> u32 {
    if let Ok(vmf) = fentry_arg(&ctx, 0) {
        let _ = try_vmf_write(vmf, FaultHook::WpPage);
    }
    0
}

#[fentry(function = "finish_fault")]
pub fn fentry_finish_fault(ctx: FEntryContext) -> u32 {
    if let Ok(vmf) = fentry_arg(&ctx, 0) {
        let _ = try_vmf_write(vmf, FaultHook::FinishFault);
    }
    0
}

#[fentry(function = "wp_page_copy")]
pub fn fentry_wp_page_copy(ctx: FEntryContext) -> u32 {
    if let Ok(vmf) = fentry_arg(&ctx, 0) {
        let _ = try_vmf_write(vmf, FaultHook::WpPageCopy);
    }
    0
}

#[fentry(function = "do_page_mkwrite")]
pub fn fentry_do_page_mkwrite(ctx: FEntryContext) -> u32 {
    if let Ok(vmf) = fentry_arg(&ctx, 0) {
        let _ = try_page_mkwrite(vmf, 0);
    }
    0
}

// Where do_page_mkwrite is inlined, the filesystems' own hooks. An fentry
// program is bound to one function when it loads, so there is one program
// per hook (the loader picks the targets present in BTF).
macro_rules! fentry_fs_mkwrite {
    ($($name:ident),*) => {$(
        #[fentry(function = "filemap_page_mkwrite")]
        pub fn $name(ctx: FEntryContext) -> u32 {
            if let Ok(vmf) = fentry_arg(&ctx, 0) {
                let _ = try_page_mkwrite(vmf, attached_function(&ctx));
            }
            0
        }
    )*};
}
fentry_fs_mkwrite!(
    fentry_fs_mkwrite_0,
    fentry_fs_mkwrite_1,
    fentry_fs_mkwrite_2,
    fentry_fs_mkwrite_3
);

#[fentry(function = "folio_end_writeback")]
pub fn fentry_folio_end_writeback(ctx: FEntryContext) -> u32 {
    if let Ok(folio) = fentry_arg(&ctx, 0) {
        let _ = try_folio_written_back(folio);
    }
    0
}

#[kprobe]
pub fn kprobe_do_wp_page(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        let _ = try_vmf_write(vmf, FaultHook::WpPage);
    }
    0
}

#[kprobe]
pub fn kprobe_finish_fault(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        let _ = try_vmf_write(vmf, FaultHook::FinishFault);
    }
    0
}

#[kprobe]
pub fn kprobe_wp_page_copy(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        let _ = try_vmf_write(vmf, FaultHook::WpPageCopy);
    }
    0
}

#[kprobe]
pub fn kprobe_do_page_mkwrite(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        let _ = try_page_mkwrite(vmf, 0);
    }
    0
}

/// One program, attached to each filesystem hook present; the probed
/// address tells them apart.
#[kprobe]
pub fn kprobe_fs_mkwrite(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        let _ = try_page_mkwrite(vmf, attached_function(&ctx));
    }
    0
}

#[kprobe]
pub fn kprobe_folio_end_writeback(ctx: ProbeContext) -> u32 {
    if let Some(folio) = ctx.arg::<u64>(0) {
        let _ = try_folio_written_back(folio);
    }
    0
}

/// `mmapwatch bench-floor`: empty programs on the fault path's attach
/// points, the floor `cargo xtask bench` compares mmapwatch's cost with.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn floor_page_fault_user(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn floor_writeback_dirty_folio(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
