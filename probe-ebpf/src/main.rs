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
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_get_func_ip},
    },
    macros::{fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    counter, event_kind, filter, hooks, traced, EventHeader, FileEvent, FileKey, FileStats,
    KernelOffsets, PageEvent, PageKey, PendingFault, ProbeConfig, WriterKey, WriterStats,
    WriterStatsKey, EXT4_SUPER_MAGIC, LATENCY_BUCKETS, MAPLE_MAX_DEPTH, MAPLE_MAX_PIVOTS,
    MAPLE_NODE_MASK, MAPLE_NODE_TYPE_MASK, MAPLE_NODE_TYPE_SHIFT, MAPLE_ROOT_NODE,
    MAX_COMM_FILTERS, PATH_MAX_DEPTH, PMD_PAGES, TASK_COMM_LEN, VM_SHARED, VM_WRITE, X86_PF_WRITE,
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

/// (file, page, kind) -> tgid of the first writer.
#[map]
static PAGE_SEEN: LruHashMap<PageKey, u32> = LruHashMap::with_max_entries(1 << 20, 0);

/// (file, tgid) for processes that wrote a page another process wrote first.
#[map]
static WRITERS: LruHashMap<WriterKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
static FILE_STATS: PerCpuHashMap<FileKey, FileStats> = PerCpuHashMap::with_max_entries(1 << 16, 0);

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

/// Thread id -> its last PMD-mappable shared write fault, for
/// `writeback_dirty_folio`, which runs later in the same fault (possibly on
/// another CPU: page_mkwrite may sleep).
#[map]
static PENDING_FAULT: LruHashMap<u32, PendingFault> = LruHashMap::with_max_entries(1 << 14, 0);

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
    if tgid == config!(self_tgid) {
        return false;
    }
    let flags = config!(filter_flags);
    // SAFETY: read-only lookup of a plain u32 value.
    if flags & filter::BY_TGID != 0 && unsafe { TRACED.get(&tgid) }.is_none() {
        return false;
    }
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

/// Finds the VMA holding `address` by walking the current mm's maple tree
/// with plain kernel reads: no mmap lock, so no deferred unlock (with IRQs
/// off, as in the fault tracepoint, bpf_find_vma must queue an irq_work to
/// unlock; a self-IPI costs microseconds in a VM). Nodes and VMAs are freed
/// by RCU, under which BPF programs run; a VMA found is checked to belong to
/// this mm and to hold the address, and any doubt falls back to
/// bpf_find_vma.
#[inline(never)]
fn walk_maple_tree(address: u64, scratch: &mut FaultScratch) -> bool {
    let FaultScratch { info, pivots, .. } = scratch;
    if offset!(maple_walk) == 0 {
        return false;
    }
    // SAFETY: no arguments; the current task.
    let task = unsafe { bpf_get_current_task() };
    let Ok(mm) = read_kernel::<u64>(task, offset!(task_mm)) else {
        return false;
    };
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
            return next != 0 && vma_holds(next, mm, address, info);
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
    if info.file == 0 {
        // Anonymous: the range still has to hold the address.
        let start = read_kernel::<u64>(vma, offset!(vma_vm_start)).unwrap_or(u64::MAX);
        let end = read_kernel::<u64>(vma, offset!(vma_vm_end)).unwrap_or(0);
        return start <= address && address < end;
    }
    info.start <= address && address < info.end
}

/// What the fault path learns about the faulting mapping, filled in by
/// [`vma_callback`] while `bpf_find_vma` holds the mmap lock.
#[repr(C)]
#[derive(Default)]
struct VmaInfo {
    start: u64,
    end: u64,
    flags: u64,
    pgoff: u64,
    file: u64,
    dentry: u64,
    superblock: u64,
    ino: u64,
    dev: u32,
    _pad: u32,
}

#[inline(always)]
fn fill_vma_info(vma: u64, info: &mut VmaInfo) -> Result<(), i64> {
    info.file = read_kernel(vma, offset!(vma_vm_file))?;
    if info.file == 0 {
        return Ok(());
    }
    info.start = read_kernel(vma, offset!(vma_vm_start))?;
    info.end = read_kernel(vma, offset!(vma_vm_end))?;
    info.flags = read_kernel(vma, offset!(vma_vm_flags))?;
    info.pgoff = read_kernel(vma, offset!(vma_vm_pgoff))?;
    info.dentry = read_kernel(info.file, offset!(file_dentry))?;
    let inode: u64 = read_kernel(info.file, offset!(file_f_inode))?;
    info.ino = read_kernel(inode, offset!(inode_i_ino))?;
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
    dev: u32,
    ino: u64,
    now: u64,
    comm: &[u8; TASK_COMM_LEN],
) {
    out.kind = kind;
    out.pid = pid_tgid as u32;
    out.tgid = (pid_tgid >> 32) as u32;
    out.dev = dev;
    out.ino = ino;
    out.boot_ns = now;
    // SAFETY: no arguments; always valid in tracing programs.
    out.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    out.comm = *comm;
}

/// A record header on the stack, for records outside the fault path.
fn header(
    kind: u32,
    pid_tgid: u64,
    dev: u32,
    ino: u64,
    now: u64,
    comm: &[u8; TASK_COMM_LEN],
) -> EventHeader {
    let mut out = EventHeader::default();
    fill_header(&mut out, kind, pid_tgid, dev, ino, now, comm);
    out
}

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

/// Counts a fault for its (cgroup, filesystem, command) label set.
fn account_writer(dev: u32, comm: &[u8; TASK_COMM_LEN], shared: bool) {
    let key = WriterStatsKey {
        // SAFETY: no arguments; always valid in tracing programs.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        dev,
        _pad: 0,
        comm: *comm,
    };
    if let Some(stats) = WRITER_STATS.get_ptr_mut(&key) {
        count_writer_fault(stats, shared);
        return;
    }
    let stats = WriterStats {
        shared_write_faults: u64::from(shared),
        cow_faults: u64::from(!shared),
    };
    match WRITER_STATS.insert(&key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created it: count on this CPU's slot.
        Err(err) if err as i64 == -EEXIST => {
            if let Some(stats) = WRITER_STATS.get_ptr_mut(&key) {
                count_writer_fault(stats, shared);
            }
        }
        Err(_) => bump(counter::WRITER_STATS_FULL),
    }
}

/// One more fault on this CPU's slot of a writer's stats.
#[inline(always)]
fn count_writer_fault(stats: *mut WriterStats, shared: bool) {
    // SAFETY: a per-CPU map value slot from get_ptr_mut.
    unsafe {
        if shared {
            (*stats).shared_write_faults += 1;
        } else {
            (*stats).cow_faults += 1;
        }
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
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring-buffer memory of the right size;
    // fields are written in place because the record exceeds the BPF stack.
    unsafe {
        (*event).header = *header;
        (*event).header.kind = event_kind::FILE_SEEN;
        (*event).fs_magic = read_kernel(info.superblock, magic_offset).unwrap_or(0);
        (*event).depth = 0;
        (*event).reached_root = 0;
        let mut dentry = info.dentry;
        let mut depth = 0;
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
    }
    entry.submit(0);
    bump(counter::EVENTS_SUBMITTED);
}

/// Counts the write fault in the file's stats; creates them (and announces
/// the file) on first sight.
fn account_fault(key: &FileKey, shared: bool, now: u64, header: &EventHeader, info: &VmaInfo) {
    if let Some(stats) = FILE_STATS.get_ptr_mut(key) {
        count_file_fault(stats, shared, now);
        return;
    }
    let mut stats = FileStats {
        last_write_boot_ns: now,
        ..FileStats::default()
    };
    if shared {
        stats.shared_write_faults = 1;
    } else {
        stats.cow_faults = 1;
    }
    match FILE_STATS.insert(key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => submit_file_event(header, info),
        // Another CPU created it first: count on this CPU's slot.
        Err(err) if err as i64 == -EEXIST => {
            if let Some(stats) = FILE_STATS.get_ptr_mut(key) {
                count_file_fault(stats, shared, now);
            }
        }
        Err(_) => bump(counter::FILE_STATS_FULL),
    }
}

/// One more fault on this CPU's slot of a file's stats.
#[inline(always)]
fn count_file_fault(stats: *mut FileStats, shared: bool, now: u64) {
    // SAFETY: a per-CPU map value slot from get_ptr_mut.
    unsafe {
        if shared {
            (*stats).shared_write_faults += 1;
        } else {
            (*stats).cow_faults += 1;
        }
        (*stats).last_write_boot_ns = now;
    }
}

fn try_write_fault(address: u64, error_code: u64) -> Result<(), i64> {
    if error_code & X86_PF_WRITE == 0 || address >= USER_ADDRESS_LIMIT {
        return Ok(());
    }
    let scratch = fault_scratch()?;
    let Some(pid_tgid) = selected_current_task(&mut scratch.fault.comm)? else {
        return Ok(());
    };
    scratch.info.file = 0;
    if !walk_maple_tree(address, scratch) {
        bump(counter::VMA_WALK_FALLBACKS);
        if !find_vma_locked(address, &mut scratch.info) {
            return Ok(());
        }
    }
    if scratch.info.file == 0 {
        return Ok(());
    }
    scratch.fault.pid_tgid = pid_tgid;
    scratch.fault.address = address;
    scratch.fault.page =
        scratch.info.pgoff + ((address - scratch.info.start) >> config!(page_shift));
    record_write(scratch);
    Ok(())
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
}

/// The current task's pid_tgid if it passes the pid and comm filters; its
/// command name is left in `comm`.
#[inline(always)]
fn selected_current_task(comm: &mut [u8; TASK_COMM_LEN]) -> Result<Option<u64>, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    current_comm_into(comm)?;
    Ok(task_selected((pid_tgid >> 32) as u32, comm).then_some(pid_tgid))
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
    comm: [u8; TASK_COMM_LEN],
}

/// Records a write fault whose mapping is known. Out of line: every backend's
/// fault programs call it, and its frame stays off the lookup's call chain.
#[inline(never)]
fn record_write(scratch: &mut FaultScratch) -> i64 {
    let FaultScratch {
        info,
        fault,
        header,
        ..
    } = scratch;
    let info = &*info;
    let (pid_tgid, address, page) = (fault.pid_tgid, fault.address, fault.page);
    let comm = &fault.comm;
    let tgid = (pid_tgid >> 32) as u32;
    // Anonymous memory, or a store the kernel will refuse.
    if info.file == 0 || info.flags & VM_WRITE == 0 {
        return 0;
    }
    let shared = info.flags & VM_SHARED != 0;
    account_writer(info.dev, comm, shared);
    if !shared {
        bump(counter::COW_FAULTS);
        if config!(include_cow) == 0 {
            return 0;
        }
    } else {
        bump(counter::SHARED_WRITE_FAULTS);
    }
    let kind = if shared {
        event_kind::SHARED_WRITE
    } else {
        event_kind::COW_WRITE
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    fill_header(header, kind, pid_tgid, info.dev, info.ino, now, comm);
    let header = &*header;

    let file_key = FileKey {
        dev: info.dev,
        _pad: 0,
        ino: info.ino,
    };
    account_fault(&file_key, shared, now, header, info);

    let page_key = PageKey {
        dev: info.dev,
        kind,
        ino: info.ino,
        page,
    };
    // SAFETY: read-only lookup of a plain u32 value.
    match unsafe { PAGE_SEEN.get(&page_key) } {
        Some(&first_writer) if first_writer == tgid => {}
        // Another process copying the same page privately modifies nothing:
        // only writers of the file itself are attributed.
        Some(_) if !shared => {}
        Some(_) => {
            let writer_key = WriterKey {
                dev: info.dev,
                tgid,
                ino: info.ino,
            };
            // SAFETY: read-only lookup of a plain u8 value.
            if unsafe { WRITERS.get(&writer_key) }.is_none() {
                match WRITERS.insert(&writer_key, &1, BPF_NOEXIST as u64) {
                    Ok(()) => submit_page_event(header, event_kind::NEW_WRITER, page, 1),
                    Err(err) if err as i64 == -EEXIST => {}
                    Err(_) => bump(counter::WRITER_INSERT_FAILED),
                }
            }
        }
        None => match PAGE_SEEN.insert(&page_key, &tgid, BPF_NOEXIST as u64) {
            Ok(()) => {
                // Only a first write can bring unseen pages along in a huge
                // span: re-faults skip this bookkeeping.
                if shared {
                    remember_fault(pid_tgid, info, address, page);
                }
                bump(counter::DEDUP_INSERTS);
                submit_page_event(header, kind, page, 1);
            }
            // Another CPU reported this page an instant ago.
            Err(err) if err as i64 == -EEXIST => {}
            Err(_) => {
                // Report anyway: userspace deduplicates too.
                bump(counter::DEDUP_INSERT_FAILED);
                submit_page_event(header, kind, page, 1);
            }
        },
    }
    0
}

/// Keeps this fault for `writeback_dirty_folio`: if the fault dirties a
/// PMD-sized folio that the kernel can map with one PMD, every page of it
/// becomes writable without further faults.
fn remember_fault(pid_tgid: u64, info: &VmaInfo, address: u64, page: u64) {
    let page_shift = config!(page_shift);
    let region = PMD_PAGES << page_shift;
    let region_start = address & !(region - 1);
    let pmd_mappable = ((address >> page_shift).wrapping_sub(page)) % PMD_PAGES == 0
        && region_start >= info.start
        && region_start + region <= info.end;
    // Smaller or misaligned mappings are always mapped page by page.
    if !pmd_mappable {
        return;
    }
    let pending = PendingFault {
        pid_tgid,
        ino: info.ino,
        page,
        dev: info.dev,
        pmd_mappable: 1,
    };
    let _ = PENDING_FAULT.insert(&(pid_tgid as u32), &pending, 0);
}

// exceptions:page_fault_{user,kernel}: address@8, ip@16, error_code@24.
fn fault_tracepoint(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets from the tracepoint's format file, stable since 3.13.
    let address: u64 = unsafe { ctx.read_at(8) }.map_err(|err| err as i64)?;
    let error_code: u64 = unsafe { ctx.read_at(24) }.map_err(|err| err as i64)?;
    try_write_fault(address, error_code)
}

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    if let Err(err) = fault_tracepoint(&ctx) {
        debug!(&ctx, "page_fault_user: kernel read failed: {}", err);
    }
    0
}

/// Kernel-mode faults on user addresses: read(2) or a copy_to_user into a
/// shared mapping stores into the file just as a user store does.
#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    let _ = fault_tracepoint(&ctx);
    0
}

/// Reads (dev, ino) of an inode.
#[inline(always)]
fn inode_key(inode: u64) -> Result<(FileKey, u64), i64> {
    let superblock: u64 = read_kernel(inode, offset!(inode_i_sb))?;
    let key = FileKey {
        dev: read_kernel(superblock, offset!(sb_s_dev))?,
        _pad: 0,
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
    // Only the first dirtying since the last completed writeback counts.
    let _ = DIRTY_SINCE.insert(&key, &now, BPF_NOEXIST as u64);
    if pages == PMD_PAGES {
        let index: u64 = read_kernel(folio, offset!(folio_index))?;
        report_huge_span(&key, index, pages, now);
    }
    Ok(())
}

/// A write fault of this task dirtied this PMD-sized folio, and its region
/// could be mapped with one PMD: the kernel maps it writable whole, so later
/// stores to any of its pages never fault. Report the whole span.
fn report_huge_span(key: &FileKey, index: u64, pages: u64, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let thread = pid_tgid as u32;
    // SAFETY: read-only lookup of a plain value, copied out at once.
    let Some(pending) = (unsafe { PENDING_FAULT.get(&thread) }).copied() else {
        return;
    };
    let ours = pending.pid_tgid == pid_tgid
        && pending.dev == key.dev
        && pending.ino == key.ino
        && pending.page >= index
        && pending.page < index + pages;
    if !ours || pending.pmd_mappable == 0 {
        return;
    }
    let _ = PENDING_FAULT.remove(&thread);
    bump(counter::HUGE_SPANS);
    let Ok(comm) = bpf_get_current_comm() else {
        return;
    };
    let header = header(
        event_kind::HUGE_SPAN,
        pid_tgid,
        key.dev,
        key.ino,
        now,
        &comm,
    );
    submit_page_event(&header, event_kind::HUGE_SPAN, index, pages);
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

// ext4:ext4_writepages_result: dev@8 (u32), ino@16, pages_written@28 (i32).
fn try_ext4_writepages_result(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets from the tracepoint's format file.
    let key = unsafe {
        FileKey {
            dev: ctx.read_at(8).map_err(|err| err as i64)?,
            _pad: 0,
            ino: ctx.read_at(16).map_err(|err| err as i64)?,
        }
    };
    let written: i32 = unsafe { ctx.read_at(28) }.map_err(|err| err as i64)?;
    if written > 0 {
        add_written_back(&key, written as u64);
    }
    Ok(())
}

#[tracepoint]
pub fn ext4_writepages_result(ctx: TracePointContext) -> u32 {
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

/// Raw `sched_process_fork(parent, child)`: the classic format moved its
/// fields between kernels (comm arrays became dynamic strings).
fn try_process_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // The tracepoint runs in the parent.
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
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
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let task: u64 = ctx.arg(0);
    let signal: u64 = read_kernel(task, offset!(task_signal))?;
    let live: i32 = read_kernel(signal, offset!(signal_live))?;
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
    let Some(pid_tgid) = selected_current_task(&mut scratch.fault.comm)? else {
        return Ok(());
    };
    let vma: u64 = read_kernel(vmf, offset!(vmf_vma))?;
    fill_vma_info(vma, &mut scratch.info)?;
    if scratch.info.file == 0 {
        return Ok(());
    }
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
    scratch.fault.address = read_kernel(vmf, offset!(vmf_address))?;
    // The kernel's own page index for this fault (linear_page_index).
    scratch.fault.page = read_kernel(vmf, offset!(vmf_pgoff))?;
    record_write(scratch);
    Ok(())
}

/// Remembers which `->page_mkwrite` the file's filesystem runs: `hook_fn`
/// when the program sits on that function itself, else the mapping's
/// `vm_ops->page_mkwrite` (the program is on `do_page_mkwrite`).
fn try_page_mkwrite(vmf: u64, hook_fn: u64) -> Result<(), i64> {
    let mut comm = [0u8; TASK_COMM_LEN];
    if selected_current_task(&mut comm)?.is_none() {
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
        key.dev,
        key.ino,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
