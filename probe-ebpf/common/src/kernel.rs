//! What the programs know of the kernel's layout: the offsets read from BTF at load time, and the constants of the kernel's own headers they rely on.

#[cfg(feature = "user")]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Pages in a PMD-mapped folio (2 MiB / 4 KiB on x86-64).
pub const PMD_PAGES: u64 = 512;

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
    /// A writer's ids: `task_struct.cred`, `cred.uid`, `euid`, `gid`,
    /// `egid`, and `task_struct.loginuid` (zero: no audit, the login uid
    /// is unset).
    pub task_cred: u32,
    pub cred_uid: u32,
    pub cred_euid: u32,
    pub cred_gid: u32,
    pub cred_egid: u32,
    pub task_loginuid: u32,
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

/// What `mm_struct.mm_lock_seq` is on this kernel.
pub mod mm_lock_seq_kind {
    /// Absent (before 6.4): every fault walks the maple tree.
    pub const NONE: u32 = 0;
    /// An int bumped when the mmap write lock is released (6.4 to 6.12).
    pub const COUNTER: u32 = 1;
    /// A seqcount, odd while the mmap write lock is held (6.13+).
    pub const SEQCOUNT: u32 = 2;
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
        task_cred: 0,
        cred_uid: 0,
        cred_euid: 0,
        cred_gid: 0,
        cred_egid: 0,
        task_loginuid: 0,
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
