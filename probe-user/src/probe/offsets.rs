//! The offsets the programs read, resolved from the kernel's BTF: each
//! kernel quirk in one place, named by the change that caused it (folios,
//! the maple tree, mm_lock_seq, backing files, renamed members).

use probe_common::{present, KernelOffsets};

use super::btf::{BtfError, KernelBtf};

/// The structs and enums start-up looks up by name (kernel_offsets,
/// vma_walk_offsets, fault_hook_offsets), found in one scan.
const STARTUP_TYPES: &[&str] = &[
    "address_space",
    "backing_file",
    "cred",
    "dentry",
    "file",
    "folio",
    "inode",
    "mm_struct",
    "mnt_namespace",
    "mount",
    "path",
    "signal_struct",
    "super_block",
    "task_struct",
    "vm_area_struct",
    "vm_fault",
    "vm_operations_struct",
    "vfsmount",
    "writeback_control",
    "xa_node",
    "page",
    "rb_node",
    "maple_range_64",
    "maple_arange_64",
    "fault_flag",
    "maple_type",
    "mapping_flags",
    "pageflags",
    "zoneflags",
];

impl KernelBtf {
    /// Offsets for walking the mm's VMAs without the mmap lock: its maple
    /// tree (6.1+) or, before, its red-black tree. An error means neither
    /// is readable: faults use bpf_find_vma instead.
    pub fn vma_walk_offsets(&self, offsets: &mut KernelOffsets) -> Result<(), BtfError> {
        use probe_common::vma_walk_kind;
        offsets.task_mm = self.offset_of("task_struct", "mm")?;
        offsets.vma_vm_mm = self.offset_of("vm_area_struct", "vm_mm")?;
        offsets.present |= present::VMA_MM;
        match self.maple_offsets(offsets) {
            Ok(()) => offsets.vma_walk = vma_walk_kind::MAPLE,
            Err(maple) => {
                self.rbtree_offsets(offsets).map_err(|rbtree| {
                    BtfError::Lookup(format!("no maple tree ({maple}), no VMA rbtree ({rbtree})"))
                })?;
                offsets.vma_walk = vma_walk_kind::RBTREE;
            }
        }
        self.mm_lock_seq(offsets);
        Ok(())
    }

    fn maple_offsets(&self, offsets: &mut KernelOffsets) -> Result<(), BtfError> {
        offsets.mm_ma_root = self.offset_of("mm_struct", "mm_mt.ma_root")?;
        offsets.range64_pivots = self.offset_of("maple_range_64", "pivot")?;
        offsets.range64_slots = self.offset_of("maple_range_64", "slot")?;
        offsets.range64_pivot_count = self.array_len("maple_range_64", "pivot")?;
        offsets.arange64_pivots = self.offset_of("maple_arange_64", "pivot")?;
        offsets.arange64_slots = self.offset_of("maple_arange_64", "slot")?;
        offsets.arange64_pivot_count = self.array_len("maple_arange_64", "pivot")?;
        let kind = |name: &str| {
            self.enumerator("maple_type", name).and_then(|v| {
                u32::try_from(v).map_err(|_| BtfError::Lookup(format!("{name} out of range")))
            })
        };
        offsets.maple_range_64 = kind("maple_range_64")?;
        offsets.maple_arange_64 = kind("maple_arange_64")?;
        // The walk reads pivots into a fixed 16-element buffer.
        if offsets.range64_pivot_count as usize > probe_common::MAPLE_MAX_PIVOTS
            || offsets.arange64_pivot_count as usize > probe_common::MAPLE_MAX_PIVOTS
        {
            return Err(BtfError::Lookup("maple nodes wider than expected".into()));
        }
        Ok(())
    }

    /// The VMA red-black tree of Linux up to 6.0 (`mm_struct.mm_rb`).
    fn rbtree_offsets(&self, offsets: &mut KernelOffsets) -> Result<(), BtfError> {
        offsets.mm_mm_rb = self.offset_of("mm_struct", "mm_rb")?;
        offsets.vma_vm_rb = self.offset_of("vm_area_struct", "vm_rb")?;
        offsets.rb_node_left = self.offset_of("rb_node", "rb_left")?;
        offsets.rb_node_right = self.offset_of("rb_node", "rb_right")?;
        Ok(())
    }

    /// `mm_struct.mm_lock_seq`, which validates the fault path's cached
    /// VMA; without it (before 6.4) every fault walks the tree.
    fn mm_lock_seq(&self, offsets: &mut KernelOffsets) {
        use probe_common::mm_lock_seq_kind;
        let found = self
            .composite("mm_struct")
            .and_then(|mm| self.member(&mm, "mm_struct", "mm_lock_seq", 0));
        let Ok(Some((offset, ty))) = found else {
            offsets.mm_lock_seq_kind = mm_lock_seq_kind::NONE;
            return;
        };
        offsets.mm_lock_seq = offset;
        // seqcount_t's first member is the sequence; an int is the count.
        offsets.mm_lock_seq_kind = if self.resolve_composite(ty, "mm_lock_seq").is_ok() {
            mm_lock_seq_kind::SEQCOUNT
        } else {
            mm_lock_seq_kind::COUNTER
        };
    }

    /// What the fentry and kprobe backends read from a `struct vm_fault`.
    pub fn fault_hook_offsets(&self, offsets: &mut KernelOffsets) -> Result<(), BtfError> {
        offsets.vmf_vma = self.offset_of("vm_fault", "vma")?;
        offsets.vmf_pgoff = self.offset_of("vm_fault", "pgoff")?;
        offsets.vmf_address = self.offset_of("vm_fault", "address")?;
        offsets.vmf_flags = self.offset_of("vm_fault", "flags")?;
        // An enumerator since 5.13; a #define (absent from BTF) before,
        // with the same value since 2.6.
        offsets.fault_flag_write = match self.enumerator("fault_flag", "FAULT_FLAG_WRITE") {
            Ok(value) => u32::try_from(value)
                .map_err(|_| BtfError::Lookup("FAULT_FLAG_WRITE out of range".into()))?,
            Err(_) => probe_common::FAULT_FLAG_WRITE_DEFINE,
        };
        offsets.vma_vm_ops = self.offset_of("vm_area_struct", "vm_ops")?;
        offsets.vm_ops_page_mkwrite = self.offset_of("vm_operations_struct", "page_mkwrite")?;
        Ok(())
    }

    /// All offsets the tracepoint backend needs.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        self.prefetch(STARTUP_TYPES);
        let mut offsets = KernelOffsets {
            vma_vm_start: self.offset_of("vm_area_struct", "vm_start")?,
            vma_vm_end: self.offset_of("vm_area_struct", "vm_end")?,
            vma_vm_flags: self.offset_of("vm_area_struct", "vm_flags")?,
            vma_vm_pgoff: self.offset_of("vm_area_struct", "vm_pgoff")?,
            vma_vm_file: self.offset_of("vm_area_struct", "vm_file")?,
            file_f_inode: self.offset_of("file", "f_inode")?,
            file_dentry: self.offset_of("file", "f_path.dentry")?,
            inode_i_ino: self.offset_of("inode", "i_ino")?,
            inode_i_sb: self.offset_of("inode", "i_sb")?,
            sb_s_dev: self.offset_of("super_block", "s_dev")?,
            sb_s_magic: self.offset_of("super_block", "s_magic")?,
            dentry_name: self.offset_of("dentry", "d_name.name")?,
            dentry_d_parent: self.offset_of("dentry", "d_parent")?,
            task_pid: self.offset_of("task_struct", "pid")?,
            task_tgid: self.offset_of("task_struct", "tgid")?,
            task_signal: self.offset_of("task_struct", "signal")?,
            signal_live: self.offset_of("signal_struct", "live")?,
            task_cred: self.offset_of("task_struct", "cred")?,
            cred_uid: self.offset_of("cred", "uid")?,
            cred_euid: self.offset_of("cred", "euid")?,
            cred_gid: self.offset_of("cred", "gid")?,
            cred_egid: self.offset_of("cred", "egid")?,
            mapping_host: self.offset_of("address_space", "host")?,
            wbc_nr_to_write: self.offset_of("writeback_control", "nr_to_write")?,
            pg_head_bit: u32::try_from(self.enumerator("pageflags", "PG_head")?)
                .map_err(|_| BtfError::Lookup("PG_head out of range".into()))?,
            pg_dirty_bit: u32::try_from(self.enumerator("pageflags", "PG_dirty")?)
                .map_err(|_| BtfError::Lookup("PG_dirty out of range".into()))?,
            inode_i_generation: self.offset_of("inode", "i_generation")?,
            inode_i_size: self.offset_of("inode", "i_size")?,
            file_f_mapping: self.offset_of("file", "f_mapping")?,
            mapping_xa_head: self.offset_of("address_space", "i_pages.xa_head")?,
            mapping_i_mmap_writable: self.offset_of("address_space", "i_mmap_writable")?,
            xa_node_shift: self.offset_of("xa_node", "shift")?,
            xa_node_slots: self.offset_of("xa_node", "slots")?,
            vma_vm_page_prot: self.offset_of("vm_area_struct", "vm_page_prot")?,
            mapping_flags: self.offset_of("address_space", "flags")?,
            large_folio_mask: self.large_folio_mask(),
            ..self.folio_offsets(self.backing_offsets(self.mount_offsets(self.fd_offsets())))?
        };
        // CONFIG_AUDIT: without it every login uid is unset.
        if let Ok(at) = self.offset_of("task_struct", "loginuid") {
            offsets.task_loginuid = at;
            offsets.present |= present::LOGINUID;
        }
        Ok(offsets)
    }

    /// `struct folio` (5.16+), or before it the head `struct page`, whose
    /// first fields a folio overlays. Without folios the page cache of
    /// files that may be written through write faults holds single pages
    /// (only shmem has huge pages, and no write-notify): the order byte
    /// and the PMD mapcount stay 0, and every folio counts one page.
    fn folio_offsets(&self, base: KernelOffsets) -> Result<KernelOffsets, BtfError> {
        if self.composite("folio").is_err() {
            return Ok(KernelOffsets {
                folio_flags: self.offset_of("page", "flags")?,
                folio_index: self.offset_of("page", "index")?,
                folio_mapping: self.offset_of("page", "mapping")?,
                ..base
            });
        }
        // Renamed in 6.3; without either, a read-only PMD mapping made
        // writable is not seen as one (its pages are reported as they
        // fault).
        let entire_mapcount = self
            .offset_of("folio", "_entire_mapcount")
            .or_else(|_| self.offset_of("folio", "_compound_mapcount"))
            .ok();
        Ok(KernelOffsets {
            present: base.present
                | present::FOLIOS
                | entire_mapcount.map_or(0, |_| present::PMD_MAPCOUNT),
            folio_flags: self.offset_of("folio", "flags")?,
            folio_index: self.offset_of("folio", "index")?,
            // Up to 6.5 the order had a byte of its own; since, it is the
            // low byte (first, on little-endian) of _flags_1.
            folio_order_byte: self
                .offset_of("folio", "_folio_order")
                .or_else(|_| self.offset_of("folio", "_flags_1"))?,
            folio_mapping: self.offset_of("folio", "mapping")?,
            folio_entire_mapcount: entire_mapcount.unwrap_or(0),
            ..base
        })
    }

    /// Stacked files (overlayfs): `dentry.d_sb` always, the backing file's
    /// user path where the kernel has backing files (6.6+).
    fn backing_offsets(&self, base: KernelOffsets) -> KernelOffsets {
        let Ok(dentry_d_sb) = self.offset_of("dentry", "d_sb") else {
            return base;
        };
        let with_sb = KernelOffsets {
            present: base.present | present::STACKED_SB,
            dentry_d_sb,
            ..base
        };
        let offsets = || -> Result<KernelOffsets, BtfError> {
            Ok(KernelOffsets {
                present: with_sb.present | present::BACKING_FILES,
                backing_file_user_path: self.offset_of("backing_file", "user_path")?,
                path_mnt: self.offset_of("path", "mnt")?,
                path_dentry: self.offset_of("path", "dentry")?,
                ..with_sb
            })
        };
        offsets().unwrap_or(with_sb)
    }

    /// Mount crossing for the path walk; without it (all zero) a file is
    /// named from its filesystem's root and the mount tables, as before.
    fn mount_offsets(&self, base: KernelOffsets) -> KernelOffsets {
        let offsets = || -> Result<KernelOffsets, BtfError> {
            Ok(KernelOffsets {
                present: base.present | present::MOUNT_CROSSING,
                file_mnt: self.offset_of("file", "f_path.mnt")?,
                mount_mnt: self.offset_of("mount", "mnt")?,
                mount_mnt_parent: self.offset_of("mount", "mnt_parent")?,
                mount_mnt_mountpoint: self.offset_of("mount", "mnt_mountpoint")?,
                mount_mnt_ns: self.offset_of("mount", "mnt_ns")?,
                vfsmount_mnt_root: self.offset_of("vfsmount", "mnt_root")?,
                mnt_namespace_inum: self.offset_of("mnt_namespace", "ns.inum")?,
                ..base
            })
        };
        offsets().unwrap_or_else(|err| {
            log::info!("paths are named through mount tables only: {err}");
            base
        })
    }

    /// fd to file (fsync and friends); all zero when one is missing, and
    /// then those calls are not seen (the rest works).
    fn fd_offsets(&self) -> KernelOffsets {
        let offsets = || -> Result<KernelOffsets, BtfError> {
            Ok(KernelOffsets {
                present: present::FD_TABLE,
                task_files: self.offset_of("task_struct", "files")?,
                files_fdt: self.offset_of("files_struct", "fdt")?,
                fdtable_fd: self.offset_of("fdtable", "fd")?,
                fdtable_max_fds: self.offset_of("fdtable", "max_fds")?,
                ..KernelOffsets::default()
            })
        };
        offsets().unwrap_or_else(|err| {
            log::warn!("fsync, fdatasync and sync_file_range are not traced: {err}");
            KernelOffsets::default()
        })
    }

    /// The bits of `address_space.flags` that allow a file large folios;
    /// 0 when this kernel says neither way (every file is then looked up).
    fn large_folio_mask(&self) -> u32 {
        let flag = |name: &str| self.enumerator("mapping_flags", name).ok();
        let mask = match (
            flag("AS_LARGE_FOLIO_SUPPORT"),
            flag("AS_FOLIO_ORDER_MAX"),
            flag("AS_FOLIO_ORDER_BITS"),
        ) {
            (Some(bit), _, _) => 1u64.checked_shl(bit as u32).unwrap_or(0),
            (None, Some(shift), Some(bits)) => ((1u64 << bits.min(32)) - 1)
                .checked_shl(shift as u32)
                .unwrap_or(0),
            _ => 0,
        };
        u32::try_from(mask).unwrap_or(0)
    }
}
