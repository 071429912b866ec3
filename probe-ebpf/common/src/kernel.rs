//! What the programs know of the kernel's layout: the offsets read from BTF at load time, and the constants of the kernel's own headers they rely on.

#[cfg(feature = "user")]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Pages in a PMD-mapped folio (2 MiB / 4 KiB on x86-64).
pub const PMD_PAGES: u64 = 512;

/// Declares [`KernelOffsets`] from one row per field: its doc, its name
/// and, for a field that is one struct member every kernel has, the group
/// that needs it and the member (`Core("inode", "i_ino")`). From the rows:
/// the field, the all-zero value the object is built with, the names, and
/// [`KernelOffsets::MEMBERS`], which userspace looks up in BTF. The other
/// fields are looked up by code in `probe::offsets`: names that changed
/// across versions, enumerators, array lengths, and the optional groups,
/// which stand or fall together ([`present`]).
macro_rules! kernel_offsets {
    ($( $(#[$doc:meta])* $field:ident $(= $group:ident($strukt:literal, $member:literal))?, )*) => {
        /// Kernel struct field offsets (bytes) and constants resolved from
        /// vmlinux BTF in userspace. Rust eBPF has no CO-RE relocations, so
        /// these are passed as a global.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
        pub struct KernelOffsets {
            $( $(#[$doc])* pub $field: u32, )*
        }

        impl KernelOffsets {
            /// All zero: the value compiled into the object before
            /// userspace overrides it.
            pub const ZEROED: Self = Self { $( $field: 0, )* };
            /// The fields' names, in order.
            pub const FIELDS: &'static [&'static str] = &[$( stringify!($field), )*];
            /// The fields that are one member each, with the group that
            /// needs them.
            pub const MEMBERS: &'static [Member] = &[$($(
                Member {
                    field: stringify!($field),
                    group: MemberGroup::$group,
                    strukt: $strukt,
                    member: $member,
                },
            )?)*];

            /// Sets the field named `field` (one of [`Self::FIELDS`]);
            /// false for a name that is none.
            pub fn set(&mut self, field: &str, value: u32) -> bool {
                match field {
                    $( stringify!($field) => self.$field = value, )*
                    _ => return false,
                }
                true
            }
        }
    };
}

/// A field of [`KernelOffsets`] that is the offset of one struct member
/// (a dotted path through embedded structs: `f_path.dentry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub field: &'static str,
    pub group: MemberGroup,
    pub strukt: &'static str,
    pub member: &'static str,
}

/// Who needs a [`Member`]: a kernel without it cannot run that part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberGroup {
    /// Every backend.
    Core,
    /// The function-hook backends (fentry, kprobe): `struct vm_fault`.
    FaultHooks,
}

kernel_offsets! {
    // What every user write fault reads, anonymous ones included, comes
    // first: one cache line of .rodata, not three.
    /// Bits of [`present`]: the optional groups of offsets this kernel
    /// has. An absent group's offsets stay 0 and are never read.
    present,
    /// How the fault path finds a VMA without the mmap lock: one of
    /// [`vma_walk_kind`].
    vma_walk,
    task_mm,
    /// `task_struct.tgid`: a direct load, not a helper call.
    task_tgid = Core("task_struct", "tgid"),
    /// `mm_struct.mm_lock_seq` (Linux 6.4+), which changes whenever the
    /// mm's mappings change: a cached VMA is valid while it is unchanged.
    mm_lock_seq,
    /// One of [`mm_lock_seq_kind`].
    mm_lock_seq_kind,
    vma_vm_start = Core("vm_area_struct", "vm_start"),
    vma_vm_end = Core("vm_area_struct", "vm_end"),
    vma_vm_flags = Core("vm_area_struct", "vm_flags"),
    vma_vm_pgoff = Core("vm_area_struct", "vm_pgoff"),
    vma_vm_file = Core("vm_area_struct", "vm_file"),
    file_f_inode = Core("file", "f_inode"),
    file_dentry = Core("file", "f_path.dentry"),
    inode_i_ino = Core("inode", "i_ino"),
    inode_i_sb = Core("inode", "i_sb"),
    sb_s_dev = Core("super_block", "s_dev"),
    sb_s_magic = Core("super_block", "s_magic"),
    dentry_name = Core("dentry", "d_name.name"),
    dentry_d_parent = Core("dentry", "d_parent"),
    /// `folio.flags` (first word of the head page's flags).
    folio_flags,
    folio_index,
    mapping_host = Core("address_space", "host"),
    wbc_nr_to_write = Core("writeback_control", "nr_to_write"),
    /// Bit number of `PG_head` in `enum pageflags`.
    pg_head_bit,
    /// Bit number of `PG_dirty` in `enum pageflags`.
    pg_dirty_bit,
    /// `mm_struct.mm_mt.ma_root`.
    mm_ma_root,
    vma_vm_mm,
    range64_pivots,
    range64_slots,
    range64_pivot_count,
    arange64_pivots,
    arange64_slots,
    arange64_pivot_count,
    /// `enum maple_type` values.
    maple_range_64,
    maple_arange_64,
    /// The byte holding a large folio's order: `folio._folio_order` (up to
    /// 6.5) or the low byte of `folio._flags_1` (little-endian); group
    /// [`present::FOLIOS`].
    folio_order_byte,
    /// `folio.mapping`.
    folio_mapping,
    /// A large folio's count of whole-folio (PMD) mappings, less one:
    /// `folio._entire_mapcount` (6.3+) or `_compound_mapcount`; group
    /// [`present::PMD_MAPCOUNT`].
    folio_entire_mapcount,
    /// Function-hook backends: `struct vm_fault` fields.
    vmf_vma = FaultHooks("vm_fault", "vma"),
    vmf_pgoff = FaultHooks("vm_fault", "pgoff"),
    vmf_address = FaultHooks("vm_fault", "address"),
    vmf_flags = FaultHooks("vm_fault", "flags"),
    /// `FAULT_FLAG_WRITE` from `enum fault_flag`.
    fault_flag_write,
    vma_vm_ops = FaultHooks("vm_area_struct", "vm_ops"),
    /// `vm_operations_struct.page_mkwrite`.
    vm_ops_page_mkwrite = FaultHooks("vm_operations_struct", "page_mkwrite"),
    /// `task_struct.pid`, `task_struct.signal`, `signal_struct.live`.
    task_pid = Core("task_struct", "pid"),
    task_signal = Core("task_struct", "signal"),
    signal_live = Core("signal_struct", "live"),
    /// A writer's ids: `task_struct.cred`, `cred.uid`, `euid`, `gid`,
    /// `egid`, and `task_struct.loginuid` (group [`present::LOGINUID`]).
    task_cred = Core("task_struct", "cred"),
    cred_uid = Core("cred", "uid"),
    cred_euid = Core("cred", "euid"),
    cred_gid = Core("cred", "gid"),
    cred_egid = Core("cred", "egid"),
    task_loginuid,
    inode_i_generation = Core("inode", "i_generation"),
    inode_i_size = Core("inode", "i_size"),
    file_f_mapping = Core("file", "f_mapping"),
    /// `address_space.i_pages.xa_head`: the page cache's xarray root.
    mapping_xa_head = Core("address_space", "i_pages.xa_head"),
    /// `address_space.i_mmap_writable`: shared writable mappings of the file.
    mapping_i_mmap_writable = Core("address_space", "i_mmap_writable"),
    xa_node_shift = Core("xa_node", "shift"),
    xa_node_slots = Core("xa_node", "slots"),
    /// `vm_area_struct.vm_page_prot`: writable without write-notify?
    vma_vm_page_prot = Core("vm_area_struct", "vm_page_prot"),
    /// `address_space.flags`, and the bits of it that allow large folios
    /// (`AS_LARGE_FOLIO_SUPPORT`, or `AS_FOLIO_ORDER_MAX`'s field from
    /// 6.10); 0: unknown, every file may have them.
    mapping_flags = Core("address_space", "flags"),
    large_folio_mask,
    /// fd to file, for fsync and friends: `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.fd` and `fdtable.max_fds`; group
    /// [`present::FD_TABLE`].
    task_files,
    files_fdt,
    fdtable_fd,
    fdtable_max_fds,
    /// Mount crossing in the path walk, so a file is named as its
    /// writer's mount namespace shows it even after that namespace is
    /// gone: `file.f_path.mnt`, `struct mount`'s `mnt` (the embedded
    /// vfsmount), `mnt_parent`, `mnt_mountpoint` and `mnt_ns`, and
    /// `vfsmount.mnt_root`; group [`present::MOUNT_CROSSING`].
    file_mnt,
    mount_mnt,
    mount_mnt_parent,
    mount_mnt_mountpoint,
    mount_mnt_ns,
    vfsmount_mnt_root,
    /// `mnt_namespace.ns.inum`: the namespace's number.
    mnt_namespace_inum,
    /// overlayfs (6.6+): the file a mapping holds is its layer's (a
    /// backing file); the path its writer opened is
    /// `backing_file.user_path`. `dentry.d_sb` tells either kind of
    /// stacked file (6.1's fake path too) from the file's own inode.
    /// Groups [`present::BACKING_FILES`] (with `path`'s members) and
    /// [`present::STACKED_SB`].
    backing_file_user_path,
    path_mnt,
    path_dentry,
    dentry_d_sb,
    /// The VMA red-black tree (before 6.1): `mm_struct.mm_rb` (its root
    /// node pointer first), `vm_area_struct.vm_rb`, and `rb_node`'s
    /// children.
    mm_mm_rb,
    vma_vm_rb,
    rb_node_left,
    rb_node_right,
    /// A task's cgroup (v2) and its ancestors, for `--cgroup`:
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.level`, and
    /// `cgroup.ancestor_ids` (ids by level, up to 5.19: group
    /// [`present::CGROUP_ANCESTOR_IDS`]) or `cgroup.ancestors` (pointers
    /// by level, 6.0+, read with `cgroup.kn` and `kernfs_node.id`: group
    /// [`present::CGROUP_ANCESTORS`]).
    task_cgroups,
    css_set_dfl_cgrp,
    cgroup_level,
    cgroup_ancestors,
    cgroup_kn,
    kernfs_node_id,
}

/// Bits of [`KernelOffsets::present`]: the optional groups of offsets,
/// each found whole or not at all. Explicit, not an offset of 0: 0 is a
/// legal offset (`path.mnt`).
pub mod present {
    /// `folio` (5.16+): its order byte; before, every page-cache page of a
    /// written file is one page.
    pub const FOLIOS: u32 = 1 << 0;
    /// A large folio's whole-folio (PMD) mapcount.
    pub const PMD_MAPCOUNT: u32 = 1 << 1;
    /// `vm_area_struct.vm_mm`: the function-hook backends tell an exec's
    /// new mm from the old.
    pub const VMA_MM: u32 = 1 << 2;
    /// fd to file (`task_struct.files` ... `fdtable.max_fds`): fsync,
    /// fdatasync and sync_file_range are seen.
    pub const FD_TABLE: u32 = 1 << 3;
    /// Mount crossing in the path walk (`struct mount`, `mnt_namespace`).
    pub const MOUNT_CROSSING: u32 = 1 << 4;
    /// `dentry.d_sb`: a stacked file is told from the file's own inode.
    pub const STACKED_SB: u32 = 1 << 5;
    /// Backing files (overlayfs, 6.6+): `backing_file.user_path`.
    pub const BACKING_FILES: u32 = 1 << 6;
    /// `task_struct.loginuid` (CONFIG_AUDIT).
    pub const LOGINUID: u32 = 1 << 7;
    /// A cgroup's ancestors' ids by level (`cgroup.ancestor_ids`, to 5.19).
    pub const CGROUP_ANCESTOR_IDS: u32 = 1 << 8;
    /// A cgroup's ancestors by level (`cgroup.ancestors`, 6.0+).
    pub const CGROUP_ANCESTORS: u32 = 1 << 9;
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

/// What `mm_struct.mm_lock_seq` is on this kernel.
pub mod mm_lock_seq_kind {
    /// Absent (before 6.4): every fault walks the maple tree.
    pub const NONE: u32 = 0;
    /// An int bumped when the mmap write lock is released (6.4 to 6.12).
    pub const COUNTER: u32 = 1;
    /// A seqcount, odd while the mmap write lock is held (6.13+).
    pub const SEQCOUNT: u32 = 2;
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

/// Where a syscall tracepoint's record holds its `n`th argument (and a
/// `sys_exit_*` record its `ret`, at n = 0): after the 8-byte common
/// fields and `__syscall_nr` padded to 8, every argument takes 8 bytes.
/// Userspace checks it against the tracepoints' format files before
/// loading.
pub const fn syscall_arg_at(n: usize) -> usize {
    16 + 8 * n
}

/// The page size the programs and reports count in: page indexes are of
/// 4 KiB pages, and a PMD maps [`PMD_PAGES`] of them. Userspace refuses
/// other page sizes at load time.
pub const PAGE_SIZE: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_one_u32_field_and_the_groups_are_distinct_bits() {
        assert_eq!(
            core::mem::size_of::<KernelOffsets>(),
            KernelOffsets::FIELDS.len() * 4
        );
        assert_eq!(KernelOffsets::FIELDS[0], "present");
        let groups = [
            present::FOLIOS,
            present::PMD_MAPCOUNT,
            present::VMA_MM,
            present::FD_TABLE,
            present::MOUNT_CROSSING,
            present::STACKED_SB,
            present::BACKING_FILES,
            present::LOGINUID,
            present::CGROUP_ANCESTOR_IDS,
            present::CGROUP_ANCESTORS,
        ];
        let all = groups.iter().fold(0, |all, bit| {
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(all & bit, 0, "bit {bit:#x} used twice");
            all | bit
        });
        assert_eq!(all.count_ones() as usize, groups.len());
    }

    #[test]
    fn each_member_row_sets_its_own_field_once() {
        let rows = KernelOffsets::MEMBERS;
        for (value, row) in (1..).zip(rows) {
            let named = rows.iter().filter(|other| other.field == row.field).count();
            assert_eq!(named, 1, "{} in {named} rows", row.field);
            let mut offsets = KernelOffsets::ZEROED;
            assert!(offsets.set(row.field, value), "{}", row.field);
            // SAFETY: repr(C) and every field a u32 (the test above checks
            // the size), so the struct is exactly this array.
            let words: [u32; KernelOffsets::FIELDS.len()] =
                unsafe { core::mem::transmute(offsets) };
            let changed = words.iter().filter(|&&word| word != 0).count();
            assert_eq!(changed, 1, "{} sets one field", row.field);
        }
        let mut offsets = KernelOffsets::ZEROED;
        assert!(!offsets.set("no_such_field", 1));
        assert_eq!(offsets, KernelOffsets::ZEROED);
    }
}
