//! Which mapping holds a faulting address: a per-CPU cache checked by the
//! mm's `mm_lock_seq`, a lock-free walk of the maple tree (6.1+) or the
//! VMA rbtree (before), and `bpf_find_vma` (5.17+) as the slow path.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_find_vma, bpf_get_current_task_btf};
use probe_common::{
    arith::MappedRange, counter, mm_lock_seq_kind, vma_walk_kind, FileKey, MAPLE_MAX_DEPTH,
    MAPLE_MAX_PIVOTS, MAPLE_NODE_MASK, MAPLE_NODE_TYPE_MASK, MAPLE_NODE_TYPE_SHIFT,
    MAPLE_ROOT_NODE, RBTREE_MAX_DEPTH, VM_SHARED,
};

use crate::{
    compat::current_mm,
    kernel::{read_kernel, ENOENT},
    maps::bump,
    scratch::FaultScratch,
};

/// Finds the VMA holding `address` by walking the current mm's maple tree
/// with plain kernel reads: no mmap lock, so no deferred unlock (with IRQs
/// off, as in the fault tracepoint, bpf_find_vma must queue an irq_work to
/// unlock; a self-IPI costs microseconds in a VM). Nodes and VMAs are freed
/// by RCU, under which BPF programs run; a VMA found is checked to belong to
/// this mm and to hold the address, and any doubt falls back to
/// bpf_find_vma.
#[inline(never)]
pub(crate) fn walk_maple_tree(address: u64, mm: u64, scratch: &mut FaultScratch) -> bool {
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

/// Finds the VMA holding `address` in the current mm's red-black tree of
/// VMAs (before 6.1), as the kernel's `find_vma` does, with plain kernel
/// reads and no mmap lock. Those kernels free VMAs without RCU: a node
/// read after its VMA was freed is slab memory read through
/// bpf_probe_read_kernel (stale values, never a crash), so the VMA found
/// is checked to belong to this mm and to hold the address; a walk that a
/// concurrent change sends astray ends in a wrong gap at worst, as a
/// racing maple walk would.
#[inline(never)]
pub(crate) fn walk_rbtree(address: u64, mm: u64, info: &mut VmaInfo) -> bool {
    let Ok(mut node) = read_kernel::<u64>(mm, offset!(mm_mm_rb)) else {
        return false;
    };
    let (vm_rb, left, right) = (
        offset!(vma_vm_rb),
        offset!(rb_node_left),
        offset!(rb_node_right),
    );
    // The lowest VMA ending above the address: it holds the address, or
    // the address lies in the gap below it.
    let mut above = 0u64;
    let mut depth = 0;
    while node != 0 {
        if depth >= RBTREE_MAX_DEPTH || node < 4096 || node < vm_rb {
            return false;
        }
        depth += 1;
        let vma = node - vm_rb;
        let Ok(end) = read_kernel::<u64>(vma, offset!(vma_vm_end)) else {
            return false;
        };
        let next = if end > address {
            above = vma;
            let Ok(start) = read_kernel::<u64>(vma, offset!(vma_vm_start)) else {
                return false;
            };
            if start <= address {
                break;
            }
            left
        } else {
            right
        };
        let Ok(child) = read_kernel::<u64>(node, next) else {
            return false;
        };
        node = child;
    }
    if above == 0 {
        // Above every mapping: nothing there.
        *info = VmaInfo::default();
        return true;
    }
    if read_kernel::<u64>(above, offset!(vma_vm_mm)) != Ok(mm)
        || fill_vma_info(above, info).is_err()
    {
        return false;
    }
    if info.start <= address && address < info.end {
        return true;
    }
    if address < info.start {
        // A gap: no mapping (see walk_maple_tree).
        *info = VmaInfo::default();
        return true;
    }
    // The VMA changed under the walk.
    false
}

/// Fills `info` from `vma` if it is this mm's and holds `address`.
pub(crate) fn vma_holds(vma: u64, mm: u64, address: u64, info: &mut VmaInfo) -> bool {
    if read_kernel::<u64>(vma, offset!(vma_vm_mm)) != Ok(mm) || fill_vma_info(vma, info).is_err() {
        return false;
    }
    info.start <= address && address < info.end
}

/// The mm's `mm_lock_seq` if a VMA cached under it can be trusted now:
/// None on kernels without it, and while the mmap write lock is held (a
/// seqcount is odd then).
#[inline(always)]
pub(crate) fn mm_sequence(mm: *const u8) -> Option<u64> {
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
pub(crate) struct VmaCache {
    pub(crate) mm: u64,
    /// The mm's `mm_lock_seq` when cached.
    pub(crate) seq: u64,
    /// With the mm: a freed mm's memory may come back as another
    /// process's, whose sequence could happen to match.
    pub(crate) tgid: u64,
    pub(crate) info: VmaInfo,
}

/// Where a faulting address lies, as far as the fault path cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Anonymous memory or no mapping: no file is written. Nothing in the
    /// scratch memory was written (most faults on a host end here).
    Anonymous,
    /// A file mapping, described in `scratch.info`.
    File,
    /// Not found by the cache or the walk: the caller may fall back to
    /// `bpf_find_vma`.
    Unknown,
}

/// The current task, as a BTF pointer the verifier lets us load from
/// (5.11+: see `compat`).
#[inline(always)]
pub(crate) fn current_task() -> *const u8 {
    // SAFETY: no arguments; the current task, valid while the program runs.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// `task.tgid` by a direct load (a helper call costs more).
#[inline(always)]
pub(crate) fn task_tgid(task: *const u8) -> u32 {
    let at = offset!(task_tgid) as usize;
    // SAFETY: `task_struct.tgid`, at its BTF offset (see find_mapping).
    unsafe { core::ptr::read_volatile(task.add(at) as *const u32) }
}

/// Finds the mapping holding `address` of the current task (of process
/// `tgid`): from this CPU's cache while the mm's mappings have not
/// changed, else by the lock-free walk (then cached). A file mapping is
/// left in `scratch.info` and its mm in `scratch.fault.mm` (0 when not
/// looked up).
///
/// The cache hit of an anonymous fault, the common case, reads one cache
/// line of the scratch memory and writes none.
#[inline(always)]
pub(crate) fn find_mapping<const SINCE_5_17: bool>(
    address: u64,
    tgid: u32,
    scratch: &mut FaultScratch,
) -> Mapping {
    let walk = offset!(vma_walk) as u32;
    if walk == vma_walk_kind::NONE {
        scratch.fault.mm = 0;
        return Mapping::Unknown;
    }
    // Direct loads through the task's BTF pointer where the kernel has
    // one, not bpf_probe_read_kernel calls (~45 ns each here): the
    // verifier checks them against the kernel's BTF (the offsets are
    // constants of the frozen .rodata) and the JIT guards them (a fault
    // reads 0).
    let (mm, seq) = current_mm::<SINCE_5_17>();
    if mm == 0 {
        scratch.fault.mm = 0;
        return Mapping::Unknown;
    }
    let tgid = u64::from(tgid);
    let cache = &scratch.cache;
    if let Some(seq) = seq {
        if cache.mm == mm
            && cache.seq == seq
            && cache.tgid == tgid
            && cache.info.start <= address
            && address < cache.info.end
        {
            if cache.info.file == 0 {
                return Mapping::Anonymous;
            }
            // `size` may be stale: it changes without the mmap lock
            // (truncate, extending writes). Read it afresh where it matters.
            scratch.info = cache.info;
            scratch.fault.mm = mm;
            return Mapping::File;
        }
    }
    scratch.fault.mm = mm;
    let found = if walk == vma_walk_kind::MAPLE {
        walk_maple_tree(address, mm, scratch)
    } else {
        walk_rbtree(address, mm, &mut scratch.info)
    };
    if !found {
        return Mapping::Unknown;
    }
    if let Some(seq) = seq {
        scratch.cache.mm = mm;
        scratch.cache.seq = seq;
        scratch.cache.tgid = tgid;
        scratch.cache.info = scratch.info;
    }
    if scratch.info.file == 0 {
        Mapping::Anonymous
    } else {
        Mapping::File
    }
}

/// What the fault path learns about the faulting mapping, filled in by
/// [`vma_callback`] while `bpf_find_vma` holds the mmap lock.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct VmaInfo {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u64,
    pub(crate) pgoff: u64,
    pub(crate) file: u64,
    /// `file.f_mapping` of a shared mapping (0 otherwise): the page cache,
    /// fixed for the open file.
    pub(crate) mapping: u64,
    pub(crate) superblock: u64,
    pub(crate) ino: u64,
    pub(crate) dev: u32,
    pub(crate) generation: u32,
    /// `inode.i_size` in bytes.
    pub(crate) size: u64,
    pub(crate) inode: u64,
}

impl VmaInfo {
    /// The mapping's addresses and first file page, for `arith`.
    #[inline(always)]
    pub(crate) fn mapped_range(&self) -> MappedRange {
        MappedRange {
            start: self.start,
            end: self.end,
            pgoff: self.pgoff,
        }
    }

    pub(crate) fn file_key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            generation: self.generation,
            ino: self.ino,
        }
    }
}

#[inline(always)]
pub(crate) fn fill_vma_info(vma: u64, info: &mut VmaInfo) -> Result<(), i64> {
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
    // Only shared mappings' folio spans are looked up (record_write).
    info.mapping = if info.flags & VM_SHARED != 0 {
        read_kernel(info.file, offset!(file_f_mapping))?
    } else {
        0
    };
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
pub(crate) extern "C" fn vma_callback(
    _task: *mut c_void,
    vma: *mut c_void,
    data: *mut c_void,
) -> i64 {
    // SAFETY: `data` is the `VmaInfo` on the caller's stack passed to bpf_find_vma.
    let info = unsafe { &mut *(data as *mut VmaInfo) };
    if fill_vma_info(vma as u64, info).is_err() {
        info.file = 0;
    }
    0
}

/// What `bpf_find_vma` found at an address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmaLookup {
    Found,
    /// No mapping there.
    Absent,
    /// The mmap lock was held or wanted by a writer (another thread
    /// mapping or unmapping): `bpf_find_vma` only tries to take it.
    Busy,
}

/// As [`find_vma_locked`], without counting a busy lock as a loss: for a
/// caller that can look again later. Without `bpf_find_vma` (before 5.17)
/// the lookup is busy for good.
pub(crate) fn try_find_vma<const SINCE_5_17: bool>(address: u64, out: &mut VmaInfo) -> VmaLookup {
    if !SINCE_5_17 {
        return VmaLookup::Busy;
    }
    match find_vma(address, out) {
        0 => VmaLookup::Found,
        found if found == -ENOENT => VmaLookup::Absent,
        _ => VmaLookup::Busy,
    }
}

/// `bpf_find_vma`, the slow path; a busy mmap lock is counted
/// (`VMA_LOOKUP_FAILED`).
pub(crate) fn find_vma_locked<const SINCE_5_17: bool>(address: u64, out: &mut VmaInfo) -> bool {
    match try_find_vma::<SINCE_5_17>(address, out) {
        VmaLookup::Found => true,
        VmaLookup::Absent => false,
        VmaLookup::Busy => {
            bump(counter::VMA_LOOKUP_FAILED);
            false
        }
    }
}

/// `bpf_find_vma`'s result. Out of line so that its callback's frame is
/// not stacked on the recording path's (Linux 6.1's verifier counts them
/// together against the 512-byte limit).
#[inline(never)]
fn find_vma(address: u64, out: &mut VmaInfo) -> i64 {
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
    *out = info;
    found
}
