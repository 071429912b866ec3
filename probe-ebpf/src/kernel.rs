//! Reads of kernel memory: probe reads for plain addresses, direct loads
//! through BTF-typed pointers, and the fields the programs need from
//! inodes, folios and the current task.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel};
use probe_common::{Credentials, FileKey, TASK_COMM_LEN, UNSET_ID};

pub(crate) const ENOENT: i64 = 2;
pub(crate) const EEXIST: i64 = 17;
/// Addresses at and above this are the kernel's on x86-64.
pub(crate) const USER_ADDRESS_LIMIT: u64 = 1 << 63;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub(crate) fn read_kernel<T>(base: u64, offset: u64) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel validates the address itself.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|err| err as i64)
}

#[inline(always)]
pub(crate) fn comm_words(comm: &[u8; TASK_COMM_LEN]) -> (u64, u64) {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&comm[..8]);
    high.copy_from_slice(&comm[8..]);
    (u64::from_ne_bytes(low), u64::from_ne_bytes(high))
}

#[inline(always)]
pub(crate) fn current_cgroup_id() -> u64 {
    // SAFETY: no arguments; always valid in tracing programs.
    unsafe { bpf_get_current_cgroup_id() }
}

/// The ids of `cred` (a `struct cred`) and `task`'s login uid, into
/// `out`; an id that cannot be read is [`UNSET_ID`].
#[inline(always)]
pub(crate) fn credentials_into(task: u64, cred: u64, out: &mut Credentials) {
    let id = |base: u64, offset: u64| read_kernel::<u32>(base, offset).unwrap_or(UNSET_ID);
    out.uid = id(cred, offset!(cred_uid));
    out.euid = id(cred, offset!(cred_euid));
    out.gid = id(cred, offset!(cred_gid));
    out.egid = id(cred, offset!(cred_egid));
    out.loginuid = if has_offsets!(LOGINUID) {
        id(task, offset!(task_loginuid))
    } else {
        UNSET_ID
    };
}

/// The current task's `cred` pointer and ids, by probe reads: for records
/// outside the write fault path, whose writer is not cached.
#[inline(always)]
pub(crate) fn current_credentials_into(out: &mut Credentials) {
    // SAFETY: no arguments; the current task.
    let task = unsafe { bpf_get_current_task() };
    let cred = read_kernel::<u64>(task, offset!(task_cred)).unwrap_or(0);
    credentials_into(task, cred, out);
}

/// The current task's effective uid (the `--user` filter), by probe reads.
#[inline(always)]
pub(crate) fn current_euid() -> u32 {
    // SAFETY: no arguments; the current task.
    let task = unsafe { bpf_get_current_task() };
    read_kernel::<u64>(task, offset!(task_cred))
        .and_then(|cred| read_kernel::<u32>(cred, offset!(cred_euid)))
        .unwrap_or(UNSET_ID)
}

/// The id of the current task's cgroup's ancestor at `level` (the root
/// is 0; at its own level, its own id), or 0 when the cgroup is not that
/// deep or cannot be read. By probe reads, not
/// `bpf_get_current_ancestor_cgroup_id`: raw tracepoint programs may call
/// that helper only on newer kernels (not 5.10), and a program holding it
/// is refused whole there, whether or not a filter asks for it.
#[inline(always)]
pub(crate) fn current_ancestor_cgroup_id(level: u32) -> u64 {
    // SAFETY: no arguments; the current task.
    let task = unsafe { bpf_get_current_task() };
    let cgroup = read_kernel::<u64>(task, offset!(task_cgroups))
        .and_then(|css_set| read_kernel::<u64>(css_set, offset!(css_set_dfl_cgrp)));
    let Ok(cgroup) = cgroup else {
        return 0;
    };
    let own_level = read_kernel::<i32>(cgroup, offset!(cgroup_level)).unwrap_or(-1);
    if own_level < 0 || level > own_level as u32 {
        return 0;
    }
    // Both arrays are indexed by level: 8 bytes an entry.
    let entry = offset!(cgroup_ancestors) + u64::from(level & 0xff) * 8;
    if has_offsets!(CGROUP_ANCESTOR_IDS) {
        return read_kernel::<u64>(cgroup, entry).unwrap_or(0);
    }
    if has_offsets!(CGROUP_ANCESTORS) {
        return read_kernel::<u64>(cgroup, entry)
            .and_then(|ancestor| read_kernel::<u64>(ancestor, offset!(cgroup_kn)))
            .and_then(|kn| read_kernel::<u64>(kn, offset!(kernfs_node_id)))
            .unwrap_or(0);
    }
    0
}

/// The current task's command name, into scratch memory (a by-value copy
/// is spilled byte by byte onto the stack).
#[inline(always)]
pub(crate) fn current_comm_into(comm: &mut [u8; TASK_COMM_LEN]) -> Result<(), i64> {
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

/// Pages a file of `size` bytes has, the last one partial.
#[inline(always)]
pub(crate) fn pages_of(size: u64) -> u64 {
    probe_common::arith::pages_of(size, config!(page_shift))
}

/// Reads (dev, generation, ino) of an inode.
#[inline(always)]
pub(crate) fn inode_key(inode: u64) -> Result<(FileKey, u64), i64> {
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
pub(crate) fn folio_pages(folio: u64) -> Result<u64, i64> {
    // Before folios: single pages (see KernelOffsets::folio_order_byte).
    if !has_offsets!(FOLIOS) {
        return Ok(1);
    }
    let flags: u64 = read_kernel(folio, offset!(folio_flags))?;
    if flags & (1u64 << offset!(pg_head_bit)) == 0 {
        return Ok(1);
    }
    let order: u8 = read_kernel(folio, offset!(folio_order_byte))?;
    Ok(1u64 << (order & 63))
}

/// Loads a `T` at `offset` bytes into a kernel object reached through a
/// BTF-typed pointer (a tp_btf argument or a field loaded from one).
///
/// # Safety
/// `offset` must be a field of `base`'s type whose size is that of `T`:
/// the verifier checks it against the kernel's BTF (the offset is a
/// constant of the frozen .rodata) and refuses the program otherwise. The
/// JIT guards the load: a fault reads 0.
#[inline(always)]
pub(crate) unsafe fn load_typed<T: Copy>(base: *const u8, offset: u64) -> T {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// (dev, generation, ino) of an inode, by direct loads.
#[inline(always)]
pub(crate) fn typed_inode_key(inode: *const u8) -> Option<FileKey> {
    if inode.is_null() {
        return None;
    }
    let (i_sb, s_dev) = (offset!(inode_i_sb), offset!(sb_s_dev));
    let (i_generation, i_ino) = (offset!(inode_i_generation), offset!(inode_i_ino));
    // SAFETY: `inode.i_sb`, `super_block.s_dev`, `inode.i_generation` and
    // `inode.i_ino`, at their BTF offsets and sizes.
    unsafe {
        let superblock: *const u8 = load_typed(inode, i_sb);
        if superblock.is_null() {
            return None;
        }
        Some(FileKey {
            dev: load_typed(superblock, s_dev),
            generation: load_typed(inode, i_generation),
            ino: load_typed(inode, i_ino),
        })
    }
}

/// Pages in a folio, by direct loads (see [`folio_pages`]).
#[inline(always)]
pub(crate) fn typed_folio_pages(folio: *const u8) -> u64 {
    let (flags_at, head_bit, order_at) = (
        offset!(folio_flags),
        offset!(pg_head_bit),
        offset!(folio_order_byte),
    );
    // Before folios the argument is a `struct page`, whose order lies in
    // the next page: not a load the verifier allows, nor one needed.
    if !has_offsets!(FOLIOS) {
        return 1;
    }
    // SAFETY: `folio.flags`, at its BTF offset.
    let flags: u64 = unsafe { load_typed(folio, flags_at) };
    if flags & (1u64 << head_bit) == 0 {
        return 1;
    }
    // SAFETY: the order byte of `folio._flags_1`, inside that field.
    let order: u8 = unsafe { load_typed(folio, order_at) };
    1u64 << (order & 63)
}
