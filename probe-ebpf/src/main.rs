//! mmapwatch's tracepoint backend.
//!
//! Write faults are seen at `exceptions:page_fault_{user,kernel}` and
//! classified with `bpf_find_vma`: a file-backed `VM_SHARED` mapping is a
//! write to the file, a private one is copy-on-write. The first write to each
//! (file, page) goes to userspace through a ring buffer; per-file counters stay
//! in a per-CPU hash map. Writeback tracepoints add dirtying and writeback
//! counts to files already seen.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf},
    },
    macros::{fentry, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    counter, event_kind, filter, traced, EventHeader, FileEvent, FileKey, FileStats, KernelOffsets,
    PageEvent, PageKey, PendingFault, ProbeConfig, WriterKey, WriterStats, WriterStatsKey,
    EXT4_SUPER_MAGIC, LATENCY_BUCKETS, MAPLE_MAX_DEPTH, MAPLE_MAX_PIVOTS, MAPLE_NODE_MASK,
    MAPLE_NODE_TYPE_MASK, MAPLE_NODE_TYPE_SHIFT, MAPLE_ROOT_NODE, MAX_COMM_FILTERS, PATH_MAX_DEPTH,
    PMD_PAGES, TASK_COMM_LEN, VM_SHARED, VM_WRITE, X86_PF_WRITE,
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
fn walk_maple_tree(address: u64, info: &mut VmaInfo) -> bool {
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
        let Ok(pivots) = read_kernel::<[u64; MAPLE_MAX_PIVOTS]>(node, pivots_at) else {
            return false;
        };
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

fn header(kind: u32, pid_tgid: u64, dev: u32, ino: u64, now: u64, comm: [u8; 16]) -> EventHeader {
    EventHeader {
        kind,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        dev,
        ino,
        boot_ns: now,
        // SAFETY: no arguments; always valid in tracing programs.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    }
}

fn submit_page_event(header: EventHeader, page: u64, pages: u64) {
    match EVENTS.reserve::<PageEvent>(0) {
        Some(mut entry) => {
            entry.write(PageEvent {
                header,
                page,
                pages,
            });
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
fn submit_file_event(header: EventHeader, info: &VmaInfo) {
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
        (*event).header = header;
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
fn account_fault(key: &FileKey, shared: bool, now: u64, header: EventHeader, info: &VmaInfo) {
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
        Ok(()) => submit_file_event(
            EventHeader {
                kind: event_kind::FILE_SEEN,
                ..header
            },
            info,
        ),
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

fn try_write_fault<C: EbpfContext>(ctx: &C, address: u64, error_code: u64) -> Result<(), i64> {
    if error_code & X86_PF_WRITE == 0 || address >= USER_ADDRESS_LIMIT {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let comm = bpf_get_current_comm().map_err(|err| err as i64)?;
    if !task_selected(tgid, &comm) {
        return Ok(());
    }

    let mut info = VmaInfo::default();
    if walk_maple_tree(address, &mut info) {
        return record_write(ctx, pid_tgid, comm, address, &info);
    }
    bump(counter::VMA_WALK_FALLBACKS);
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
    if found != 0 {
        // No VMA: the fault will end in SIGSEGV, nothing was written.
        if found != -ENOENT {
            bump(counter::VMA_LOOKUP_FAILED);
            debug!(ctx, "bpf_find_vma failed: {}", found);
        }
        return Ok(());
    }
    record_write(ctx, pid_tgid, comm, address, &info)
}

/// Records a write fault whose mapping is known.
fn record_write<C: EbpfContext>(
    _ctx: &C,
    pid_tgid: u64,
    comm: [u8; TASK_COMM_LEN],
    address: u64,
    info: &VmaInfo,
) -> Result<(), i64> {
    let tgid = (pid_tgid >> 32) as u32;
    // Anonymous memory, or a store the kernel will refuse.
    if info.file == 0 || info.flags & VM_WRITE == 0 {
        return Ok(());
    }
    let shared = info.flags & VM_SHARED != 0;
    account_writer(info.dev, &comm, shared);
    if !shared {
        bump(counter::COW_FAULTS);
        if config!(include_cow) == 0 {
            return Ok(());
        }
    } else {
        bump(counter::SHARED_WRITE_FAULTS);
    }
    let kind = if shared {
        event_kind::SHARED_WRITE
    } else {
        event_kind::COW_WRITE
    };
    // The fault address, not the folio, decides the page: ext4 uses large
    // folios, and one folio spans many pages.
    let page = info.pgoff + ((address - info.start) >> config!(page_shift));
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let header = header(kind, pid_tgid, info.dev, info.ino, now, comm);

    let file_key = FileKey {
        dev: info.dev,
        _pad: 0,
        ino: info.ino,
    };
    account_fault(&file_key, shared, now, header, &info);

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
                    Ok(()) => submit_page_event(
                        EventHeader {
                            kind: event_kind::NEW_WRITER,
                            ..header
                        },
                        page,
                        1,
                    ),
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
                submit_page_event(header, page, 1);
            }
            // Another CPU reported this page an instant ago.
            Err(err) if err as i64 == -EEXIST => {}
            Err(_) => {
                // Report anyway: userspace deduplicates too.
                bump(counter::DEDUP_INSERT_FAILED);
                submit_page_event(header, page, 1);
            }
        },
    }
    Ok(())
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
    try_write_fault(ctx, address, error_code)
}

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    let _ = fault_tracepoint(&ctx);
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
    let flags_1: u64 = read_kernel(folio, offset!(folio_flags_1))?;
    Ok(1u64 << (flags_1 & 0xff & 63))
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
    let header = header(event_kind::HUGE_SPAN, pid_tgid, key.dev, key.ino, now, comm);
    submit_page_event(header, index, pages);
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

// writeback:sb_{mark,clear}_inode_writeback: dev@8 (u32), ino@16.
fn try_inode_writeback(ctx: &TracePointContext, started: bool) -> Result<(), i64> {
    // SAFETY: offsets from the tracepoint's format file.
    let key = unsafe {
        FileKey {
            dev: ctx.read_at(8).map_err(|err| err as i64)?,
            _pad: 0,
            ino: ctx.read_at(16).map_err(|err| err as i64)?,
        }
    };
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
#[tracepoint]
pub fn sb_mark_inode_writeback(ctx: TracePointContext) -> u32 {
    let _ = try_inode_writeback(&ctx, true);
    0
}

/// The inode's last folio under writeback completed.
#[tracepoint]
pub fn sb_clear_inode_writeback(ctx: TracePointContext) -> u32 {
    let _ = try_inode_writeback(&ctx, false);
    0
}

// sched:sched_process_fork: child_pid@20.
fn try_process_fork(ctx: &TracePointContext) -> Result<(), i64> {
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    // The tracepoint runs in the parent; its parent_pid field is a thread id.
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain u32 value.
    match unsafe { TRACED.get(&parent_tgid) } {
        Some(&traced::FOLLOW_CHILDREN) => {}
        _ => return Ok(()),
    }
    // SAFETY: offset from the tracepoint's format file.
    let child: u32 = unsafe { ctx.read_at(20) }.map_err(|err| err as i64)?;
    TRACED
        .insert(&child, &traced::FOLLOW_CHILDREN, 0)
        .map_err(|err| err as i64)
}

/// Follows `-- CMD`'s descendants.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_process_fork(&ctx);
    0
}

// sched:sched_process_exit: pid@24, group_dead@32.
fn try_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    if config!(filter_flags) & filter::BY_TGID == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    // SAFETY: offset from the tracepoint's format file.
    let group_dead: u8 = unsafe { ctx.read_at(32) }.map_err(|err| err as i64)?;
    // A thread's entry (forks record thread ids too) or, once the whole
    // group is gone, the process's: ids are reused.
    if pid != tgid {
        let _ = TRACED.remove(&pid);
    }
    if group_dead != 0 {
        let _ = TRACED.remove(&tgid);
    }
    Ok(())
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_process_exit(&ctx);
    0
}

/// Loaded only by `mmapwatch doctor`, to learn whether this kernel accepts
/// fentry programs (lockdown and missing BTF trampolines refuse them).
#[fentry(function = "do_wp_page")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
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
