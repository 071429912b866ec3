//! From a write fault whose mapping is known to the records userspace
//! reads: headers, page and file records, the ring buffer.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_probe_read_kernel_str},
};
use probe_common::{
    counter, names_sent, next_name_offset, ring_bytes, ring_commit_flags, ring_flag, walk_end,
    Credentials, EventHeader, FileEvent, FileKey, PageEvent, RecordKind, WriterStatsKey,
    PATH_COMPONENT_LEN, PATH_MAX_DEPTH, TASK_COMM_LEN, VM_SHARED, VM_WRITE,
};

use crate::{
    dedup::{cache_chunk, report_first_use, reported_here},
    folio::{folio_room, may_hold_large_folios, note_folio_span, pmd_mapped_folio},
    kernel::{current_cgroup_id, pages_of, read_kernel, EEXIST},
    maps::{bump, COUNTERS, EMPTY_FILE_STATS, EVENTS, FILE_NAMES, FILE_STATS},
    scratch::FaultScratch,
    stacks::CallSite,
    stats::{add_writer_faults, count_in_run, keep_later},
    vma::VmaInfo,
};

/// Who a record is about: the writer's name, cgroup and ids.
#[derive(Clone, Copy)]
pub(crate) struct WriterIdentity<'a> {
    pub(crate) comm: &'a [u8; TASK_COMM_LEN],
    pub(crate) cgroup_id: u64,
    pub(crate) creds: &'a Credentials,
}

/// Fills a record header in place (scratch memory, not the stack).
#[inline(always)]
pub(crate) fn fill_header(
    out: &mut EventHeader,
    kind: RecordKind,
    pid_tgid: u64,
    file: &FileKey,
    now: u64,
    writer: WriterIdentity,
) {
    let WriterIdentity {
        comm,
        cgroup_id,
        creds,
    } = writer;
    out.kind = kind as u32;
    out.pid = pid_tgid as u32;
    out.tgid = (pid_tgid >> 32) as u32;
    out.dev = file.dev;
    out.ino = file.ino;
    out.generation = file.generation;
    out.boot_ns = now;
    out.cgroup_id = cgroup_id;
    out.comm = *comm;
    out.creds = *creds;
}

/// The file a record header names.
#[inline(always)]
pub(crate) fn header_file(header: &EventHeader) -> FileKey {
    FileKey {
        dev: header.dev,
        generation: header.generation,
        ino: header.ino,
    }
}

/// The (cgroup, filesystem, command) label set of a record header.
#[inline(always)]
pub(crate) fn header_writer(header: &EventHeader) -> WriterStatsKey {
    WriterStatsKey {
        cgroup_id: header.cgroup_id,
        dev: header.dev,
        euid: header.creds.euid,
        comm: header.comm,
    }
}

/// A record header on the stack, for records outside the fault path.
pub(crate) fn header(
    kind: RecordKind,
    pid_tgid: u64,
    file: &FileKey,
    now: u64,
    comm: &[u8; TASK_COMM_LEN],
    creds: &Credentials,
) -> EventHeader {
    let mut out = EventHeader::default();
    fill_header(
        &mut out,
        kind,
        pid_tgid,
        file,
        now,
        WriterIdentity {
            comm,
            cgroup_id: current_cgroup_id(),
            creds,
        },
    );
    out
}

/// Sends a page record; `stack_id` from [`CallSite::stack_id`], taken by
/// the caller only for a record that goes out.
#[inline(always)]
pub(crate) fn submit_page_event(
    header: &EventHeader,
    kind: RecordKind,
    page: u64,
    pages: u64,
    stack_id: u32,
) {
    let flags = commit_flags(size_of::<PageEvent>());
    match EVENTS.reserve::<PageEvent>(0) {
        Some(mut entry) => {
            let event = entry.as_mut_ptr();
            // SAFETY: reserved ring-buffer memory of the right size, filled
            // in place (a record built on the stack would cost its size in
            // the 512-byte stack).
            unsafe {
                (*event).header = *header;
                (*event).header.kind = kind as u32;
                (*event).page = page;
                (*event).pages = pages;
                (*event).stack_id = stack_id;
                (*event)._pad = 0;
            }
            entry.submit(flags);
            count_submitted(size_of::<PageEvent>());
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

/// Counts a record of `len` bytes submitted, and the ring bytes it took.
#[inline(always)]
pub(crate) fn count_submitted(len: usize) {
    bump(counter::RECORDS_SUBMITTED);
    if let Some(bytes) = COUNTERS.get_ptr_mut(counter::RING_BYTES_SUBMITTED) {
        // SAFETY: per-CPU slot.
        unsafe { *bytes += ring_bytes(len as u64) };
    }
}

/// The flags to commit a record of `len` bytes with (whether it wakes the
/// reader: see [`ring_commit_flags`]); keeps the highest ring fill seen on
/// this CPU on the way.
#[inline(always)]
pub(crate) fn commit_flags(len: usize) -> u64 {
    let unread = EVENTS.query(ring_flag::AVAIL_DATA);
    let len = len as u64;
    if let Some(peak) = COUNTERS.get_ptr_mut(counter::RING_PEAK_BYTES) {
        // SAFETY: per-CPU slot.
        unsafe {
            if unread + len > *peak {
                *peak = unread + len;
            }
        }
    }
    // With stacks, every record lets the kernel wake the reader as soon as
    // it has caught up (its own rule, flags 0): a stack is symbolized
    // while its writer lives, which a batched wakeup would outlast.
    if config!(user_stacks) != 0 {
        return 0;
    }
    ring_commit_flags(unread, len, u64::from(config!(ring_wakeup_bytes)))
}

/// The mount a walk starts in, for crossing to its parents; 0 when this
/// kernel's BTF lacks the offsets or the file has no mount we can follow.
#[inline(always)]
fn mount_of_file(file: u64) -> u64 {
    if !has_offsets!(MOUNT_CROSSING) || file == 0 {
        return 0;
    }
    let vfsmount: u64 = read_kernel(file, offset!(file_mnt)).unwrap_or(0);
    if vfsmount == 0 {
        return 0;
    }
    attached_mount(vfsmount - offset!(mount_mnt))
}

/// `mount` when it belongs to a mount namespace, else 0: overlayfs's
/// private clones of its layers (and other detached mounts: memfd's, SysV
/// shm's) have none, and their root is not a root of anyone's view. Their
/// files are walked to their filesystem's root and named through the mount
/// tables, or, overlayfs's, from the path opened through the overlay
/// ([`walk_start`]).
#[inline(always)]
fn attached_mount(mount: u64) -> u64 {
    let namespace: u64 = read_kernel(mount, offset!(mount_mnt_ns)).unwrap_or(0);
    // NULL, or an error pointer (MNT_NS_INTERNAL).
    if namespace == 0 || namespace >= (-4095i64) as u64 {
        0
    } else {
        mount
    }
}

/// The number of `mount`'s namespace (0: none, or a detached mount): the
/// view the file's name is in, known even after the writer is gone.
#[inline(always)]
fn namespace_number(mount: u64) -> u32 {
    if mount == 0 || !has_offsets!(MOUNT_CROSSING) {
        return 0;
    }
    let namespace: u64 = read_kernel(mount, offset!(mount_mnt_ns)).unwrap_or(0);
    if namespace == 0 || namespace >= (-4095i64) as u64 {
        return 0;
    }
    read_kernel(namespace, offset!(mnt_namespace_inum)).unwrap_or(0)
}

/// `super_block.s_magic` of overlayfs.
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Where the walk of a file's names starts: its dentry and its mount (0:
/// none to cross from). An overlayfs mapping holds its layer's file (a
/// backing file, 6.6+) on a detached clone of the layer's mount; the path
/// its writer opened, through the overlay mount, is the backing file's
/// `user_path`, taken only when it is an overlayfs path on an attached
/// mount (a detached file that is no backing file, a memfd, fails both).
#[inline(always)]
fn walk_start(file: u64) -> (u64, u64) {
    if file == 0 {
        return (0, 0);
    }
    let dentry: u64 = read_kernel(file, offset!(file_dentry)).unwrap_or(0);
    let mount = mount_of_file(file);
    if mount != 0 || !has_offsets!(BACKING_FILES) {
        return (dentry, mount);
    }
    let user_path = file + offset!(backing_file_user_path);
    let user_dentry: u64 = read_kernel(user_path, offset!(path_dentry)).unwrap_or(0);
    let user_vfsmount: u64 = read_kernel(user_path, offset!(path_mnt)).unwrap_or(0);
    if user_dentry == 0 || user_vfsmount == 0 {
        return (dentry, 0);
    }
    let user_sb: u64 = read_kernel(user_dentry, offset!(dentry_d_sb)).unwrap_or(0);
    let magic: u64 = read_kernel(user_sb, offset!(sb_s_magic)).unwrap_or(0);
    if magic != OVERLAYFS_SUPER_MAGIC {
        return (dentry, 0);
    }
    match attached_mount(user_vfsmount - offset!(mount_mnt)) {
        0 => (dentry, 0),
        user_mount => (user_dentry, user_mount),
    }
}

/// Whether the walk's names are of another filesystem than the file's
/// inode: a path through overlayfs (a backing file's user path, or 6.1's
/// fake path on the layer's file).
#[inline(always)]
fn stacked(dentry: u64, superblock: u64) -> bool {
    if !has_offsets!(STACKED_SB) || dentry == 0 {
        return false;
    }
    let sb: u64 = read_kernel(dentry, offset!(dentry_d_sb)).unwrap_or(superblock);
    sb != superblock
}

/// Sends the file's dentry names (leaf first) so userspace can name files
/// whose writers have already exited (through overlayfs, the path the
/// writer opened, marked `STACKED`). The walk crosses mounts up to the
/// root of the writer's mount namespace (an empty name marks each mount
/// crossed), so the name is whole as the writer saw it, even when that
/// namespace is gone by the time userspace reads the record. The names are
/// packed in per-CPU memory and only the bytes used are sent. A function
/// of its own (not inlined): the verifier walks its loop once per program
/// and prunes the other calls, instead of once per inlined copy.
#[inline(never)]
pub(crate) fn submit_file_event(header: &EventHeader, info: &VmaInfo) {
    let Some(record) = FILE_NAMES.get_ptr_mut(0) else {
        bump(counter::PROBE_ERRORS);
        return;
    };
    let (magic_offset, parent_offset, name_offset) = (
        offset!(sb_s_magic),
        offset!(dentry_d_parent),
        offset!(dentry_name),
    );
    let (mnt_root_offset, mount_embedded, mount_parent_offset, mountpoint_offset) = (
        offset!(vfsmount_mnt_root),
        offset!(mount_mnt),
        offset!(mount_mnt_parent),
        offset!(mount_mnt_mountpoint),
    );
    // No file (a window found without its mapping): no names to send.
    let (dentry, mut mount) = walk_start(info.file);
    // SAFETY: this CPU's slot of a one-entry per-CPU array; programs on one
    // CPU do not interleave (see `FileNames`).
    unsafe {
        let event = &raw mut (*record).event;
        (*event).header = *header;
        (*event).header.kind = RecordKind::FileSeen as u32;
        (*event).fs_magic = read_kernel(info.superblock, magic_offset).unwrap_or(0);
        (*event).depth = 0;
        (*event).mount_ns = namespace_number(mount);
        (*event).names_len = 0;
        // The flag goes into the record now, not kept across the loop: a
        // value live through it would double the verifier's states.
        (*event).reached_root = if stacked(dentry, info.superblock) {
            walk_end::STACKED
        } else {
            walk_end::CUT
        };
        let mut depth = if dentry == 0 { PATH_MAX_DEPTH } else { 0 };
        // The root of the current mount; no dentry is at u64::MAX, so
        // without a mount to follow the walk never crosses.
        let root: u64 = if mount == 0 {
            u64::MAX
        } else {
            read_kernel(mount + mount_embedded, mnt_root_offset).unwrap_or(u64::MAX)
        };
        // Passed through memory: the verifier does not track values there,
        // so the loop starts from one state instead of one per way the
        // start was found, which tripled its work. The bytes of names used
        // live in the record for the same reason (read back as any value,
        // then masked).
        let start = &raw mut (*record).walk_start;
        (&raw mut (*start)[0]).write_volatile(dentry);
        (&raw mut (*start)[1]).write_volatile(mount);
        (&raw mut (*start)[2]).write_volatile(root);
        let mut dentry = (&raw const (*start)[0]).read_volatile();
        mount = (&raw const (*start)[1]).read_volatile();
        let mut root = (&raw const (*start)[2]).read_volatile();
        let names = (&raw mut (*record).names).cast::<u8>();
        let used = &raw mut (*event).names_len;
        // One name per step, a crossing included, and no branch on the
        // mount itself: the verifier walks this loop once per step, with
        // few states.
        while depth < PATH_MAX_DEPTH {
            let name_at = names.add(next_name_offset(used.read_volatile()));
            if dentry == root {
                let parent: u64 = read_kernel(mount, mount_parent_offset).unwrap_or(mount);
                if parent == mount {
                    (*event).reached_root |= walk_end::NAMESPACE_ROOT;
                    break;
                }
                // Into the parent mount, at the directory this one is
                // mounted on (an attached mount's parents are attached);
                // the empty name marks the crossing.
                name_at.write(0);
                used.write_volatile(used.read_volatile() + 1);
                dentry = read_kernel(mount, mountpoint_offset).unwrap_or(0);
                mount = parent;
                root = read_kernel(mount + mount_embedded, mnt_root_offset).unwrap_or(u64::MAX);
                depth += 1;
                (*event).depth = depth as u32;
                continue;
            }
            let parent: u64 = read_kernel(dentry, parent_offset).unwrap_or(dentry);
            if parent == dentry {
                (*event).reached_root |= walk_end::FS_ROOT;
                break;
            }
            let name: u64 = read_kernel(dentry, name_offset).unwrap_or(0);
            // Bytes copied, NUL included; on failure, an empty name (the
            // depth still counts the step).
            let copied = bpf_probe_read_kernel_str(
                name_at.cast(),
                PATH_COMPONENT_LEN as u32,
                name as *const c_void,
            );
            let copied = if copied > 0 {
                copied as u32
            } else {
                name_at.write(0);
                1
            };
            used.write_volatile(used.read_volatile() + copied);
            depth += 1;
            (*event).depth = depth as u32;
            dentry = parent;
        }
        // Every slot used: the walk still reached a root if it stands on
        // one (of a mount without a parent, or of the filesystem).
        if depth == PATH_MAX_DEPTH && dentry != 0 {
            if dentry == root {
                let parent: u64 = read_kernel(mount, mount_parent_offset).unwrap_or(0);
                if parent == mount {
                    (*event).reached_root |= walk_end::NAMESPACE_ROOT;
                }
            } else if read_kernel::<u64>(dentry, parent_offset).unwrap_or(0) == dentry {
                (*event).reached_root |= walk_end::FS_ROOT;
            }
        }
        let len = size_of::<FileEvent>() + names_sent(used.read_volatile());
        let bytes = core::slice::from_raw_parts(record.cast::<u8>(), len);
        if EVENTS.output::<[u8]>(bytes, commit_flags(len)).is_err() {
            bump(counter::RINGBUF_FULL);
            bump(counter::RINGBUF_FULL_FILE_EVENTS);
            return;
        }
        count_submitted(len);
    }
}

/// Creates the file's stats (and announces the file) if it has none yet,
/// without counting a fault. A file the full map has no room for is
/// announced all the same (at each run of its faults: userspace keeps one
/// entry per file): its counts are lost, and counted so, but not its name.
pub(crate) fn announce_file(key: &FileKey, now: u64, header: &EventHeader, info: &VmaInfo) {
    if FILE_STATS.get_ptr(key).is_some() {
        return;
    }
    match FILE_STATS.insert(key, &EMPTY_FILE_STATS, BPF_NOEXIST as u64) {
        Ok(()) => {
            if let Some(stats) = FILE_STATS.get_ptr_mut(key) {
                // SAFETY: a value of the shared per-file map.
                unsafe { keep_later(&raw mut (*stats).last_write_boot_ns, now) };
            }
            submit_file_event(header, info)
        }
        Err(err) if err as i64 == -EEXIST => {}
        Err(_) => {
            bump(counter::FILE_STATS_FULL);
            submit_file_event(header, info)
        }
    }
}

/// Records a write fault whose mapping is known. Out of line: every backend's
/// fault programs call it, and its frame stays off the lookup's call chain.
#[inline(never)]
pub(crate) fn record_write<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    scratch: &mut FaultScratch,
) -> i64 {
    let FaultScratch {
        info,
        fault,
        header,
        pending,
        chunk_cache,
        closing_run,
        writer,
        large_folios,
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
        RecordKind::SharedWrite
    } else {
        RecordKind::CowWrite
    };
    let file_key = info.file_key();
    fill_header(
        header,
        kind,
        pid_tgid,
        &file_key,
        now,
        WriterIdentity {
            comm,
            cgroup_id: fault.cgroup_id,
            creds: &fault.creds,
        },
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
        report_first_use(site, header, kind, page, 1);
        cache_chunk(chunk_cache, header, kind, page);
    }
    // A repeated fault on a mapped page makes only that page writable;
    // the first one may be a PMD's.
    let may_span = fault.not_present != 0 || !reported;
    if shared && may_span && may_hold_large_folios(info.mapping, writer.tick, large_folios) {
        pending.room = folio_room(info, fault.address);
        pending.page = page;
        let span = if fault.not_present != 0 {
            note_folio_span(header, info.mapping, pending)
        } else {
            pmd_mapped_folio(info.mapping, page, pending.room)
        };
        if let Some((first, pages)) = span {
            bump(counter::FOLIO_SPANS);
            report_first_use(site, header, RecordKind::FolioSpan, first, pages);
        }
    }
    0
}
