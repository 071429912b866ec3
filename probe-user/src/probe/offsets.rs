//! The offsets the programs read, resolved from the kernel's BTF: each
//! kernel quirk in one place, named by the change that caused it (folios,
//! the maple tree, mm_lock_seq, backing files, renamed members).

use probe_common::{present, KernelOffsets, MemberGroup};

use super::btf::{BtfError, KernelBtf};

/// The structs and enums start-up looks up by name (kernel_offsets,
/// vma_walk_offsets, fault_hook_offsets), found in one scan.
const STARTUP_TYPES: &[&str] = &[
    "address_space",
    "backing_file",
    "cgroup",
    "cred",
    "css_set",
    "dentry",
    "file",
    "folio",
    "inode",
    "kernfs_node",
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
        self.members(offsets, MemberGroup::FaultHooks)?;
        // An enumerator since 5.13; a #define (absent from BTF) before,
        // with the same value since 2.6.
        offsets.fault_flag_write = match self.enumerator("fault_flag", "FAULT_FLAG_WRITE") {
            Ok(value) => u32::try_from(value)
                .map_err(|_| BtfError::Lookup("FAULT_FLAG_WRITE out of range".into()))?,
            Err(_) => probe_common::FAULT_FLAG_WRITE_DEFINE,
        };
        Ok(())
    }

    /// A task's cgroup ancestry (`--cgroup`, `--container`): by ids up to
    /// 5.19, by pointers since; neither group present when BTF lacks a part
    /// (the filters are then refused at load).
    fn cgroup_offsets(&self, offsets: &mut KernelOffsets) {
        let common = || -> Result<(u32, u32, u32), BtfError> {
            Ok((
                self.offset_of("task_struct", "cgroups")?,
                self.offset_of("css_set", "dfl_cgrp")?,
                self.offset_of("cgroup", "level")?,
            ))
        };
        let Ok((task_cgroups, css_set_dfl_cgrp, cgroup_level)) = common() else {
            return;
        };
        let (group, ancestors, kn, kn_id) = if let Ok(at) = self.offset_of("cgroup", "ancestor_ids")
        {
            (present::CGROUP_ANCESTOR_IDS, at, 0, 0)
        } else {
            let by_pointer = || -> Result<(u32, u32, u32), BtfError> {
                Ok((
                    self.offset_of("cgroup", "ancestors")?,
                    self.offset_of("cgroup", "kn")?,
                    self.offset_of("kernfs_node", "id")?,
                ))
            };
            let Ok((ancestors, kn, kn_id)) = by_pointer() else {
                return;
            };
            (present::CGROUP_ANCESTORS, ancestors, kn, kn_id)
        };
        offsets.task_cgroups = task_cgroups;
        offsets.css_set_dfl_cgrp = css_set_dfl_cgrp;
        offsets.cgroup_level = cgroup_level;
        offsets.cgroup_ancestors = ancestors;
        offsets.cgroup_kn = kn;
        offsets.kernfs_node_id = kn_id;
        offsets.present |= group;
    }

    /// Every [`KernelOffsets::MEMBERS`] row of `group`, looked up in BTF.
    fn members(&self, offsets: &mut KernelOffsets, group: MemberGroup) -> Result<(), BtfError> {
        for row in KernelOffsets::MEMBERS
            .iter()
            .filter(|row| row.group == group)
        {
            let at = self.offset_of(row.strukt, row.member)?;
            // The rows name their own fields (one macro declares both).
            let known = offsets.set(row.field, at);
            debug_assert!(known, "{} is no field", row.field);
        }
        Ok(())
    }

    /// All offsets the tracepoint backend needs.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        self.prefetch(STARTUP_TYPES);
        let mut offsets = KernelOffsets {
            pg_head_bit: u32::try_from(self.enumerator("pageflags", "PG_head")?)
                .map_err(|_| BtfError::Lookup("PG_head out of range".into()))?,
            pg_dirty_bit: u32::try_from(self.enumerator("pageflags", "PG_dirty")?)
                .map_err(|_| BtfError::Lookup("PG_dirty out of range".into()))?,
            large_folio_mask: self.large_folio_mask(),
            ..self.folio_offsets(self.backing_offsets(self.mount_offsets(self.fd_offsets())))?
        };
        self.members(&mut offsets, MemberGroup::Core)?;
        self.cgroup_offsets(&mut offsets);
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
