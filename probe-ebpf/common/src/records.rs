//! Ring-buffer records: their kinds, their layouts, the names a file record carries, and when a commit wakes the reader.

use super::*;

/// Kinds of ring-buffer record: every record starts with an
/// [`EventHeader`] whose `kind` is one of these. Userspace decodes the
/// header's `kind` with zerocopy's checked conversion (an unknown value is
/// an error, never a variant), and the event stream's `type` names come
/// from [`RecordKind::stream_name`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::TryFromBytes, Immutable, KnownLayout)
)]
pub enum RecordKind {
    /// First write to a file page through a shared writable mapping.
    SharedWrite = 1,
    /// First write to a file page through a private mapping (copy-on-write).
    CowWrite = 2,
    /// A file seen for the first time, with its dentry names.
    FileSeen = 3,
    /// A second (third, ...) process writing a page another process wrote first.
    NewWriter = 4,
    /// A write fault on a page not yet mapped, which the kernel resolves
    /// by mapping the whole large folio around it writable (any order; a
    /// 2 MiB one with one PMD): every page of the span may be written
    /// without another fault, so all of them are reported.
    FolioSpan = 5,
    /// A folio of a file already seen finished writeback (function-hook
    /// backends: `folio_end_writeback`): `page` is its first page, `pages`
    /// its size.
    PagesWrittenBack = 6,
    /// Pages of a filesystem without write-notify (tmpfs, shmem) that a
    /// read fault mapped writable into a shared writable mapping: later
    /// stores to them take no fault, so they may have been written.
    PossibleWrite = 7,
    /// An msync, fsync, fdatasync or sync_file_range call returned
    /// ([`SyncEvent`]).
    Sync = 8,
    /// A process that had a shared writable mapping exited (only when
    /// [`ProbeConfig::report_exits`] is set): a plain header with
    /// no file.
    ProcessExit = 9,
}

impl RecordKind {
    /// The event stream's `type` for the records it carries as lines
    /// (README, "Event stream"); None for those it does not.
    pub const fn stream_name(self) -> Option<&'static str> {
        match self {
            Self::SharedWrite => Some("write"),
            Self::CowWrite => Some("cow_write"),
            Self::NewWriter => Some("new_writer"),
            Self::FolioSpan => Some("folio_span"),
            Self::PossibleWrite => Some("possible_write"),
            Self::PagesWrittenBack => Some("writeback"),
            Self::Sync => Some("sync"),
            Self::FileSeen | Self::ProcessExit => None,
        }
    }
}

/// The calls that ask for a file's pages to reach disk.
pub mod sync_call {
    pub const MSYNC: u32 = 1;
    pub const FSYNC: u32 = 2;
    pub const FDATASYNC: u32 = 3;
    pub const SYNC_FILE_RANGE: u32 = 4;
}

/// Common start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct EventHeader {
    pub kind: u32,
    /// Thread id of the writer.
    pub pid: u32,
    /// Process id (thread group id) of the writer.
    pub tgid: u32,
    /// Kernel `dev_t` of the file's superblock: `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
    /// `bpf_ktime_get_boot_ns()` at the fault.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// `inode.i_generation`: tells a reused inode number from the file
    /// that had it before.
    pub generation: u32,
    /// The writer's credentials at the record.
    pub creds: Credentials,
}

/// A task's user and group ids as the initial user namespace sees them
/// (a container's users are the host's numbers), and its audit login uid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct Credentials {
    pub uid: u32,
    /// The effective uid: whose rights the store used (`ps -u`'s user).
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    /// Who logged in (`/proc/PID/loginuid`, kept across su and sudo);
    /// [`UNSET_ID`] when unset or when the kernel has no audit.
    pub loginuid: u32,
}

/// An id the kernel leaves unset: `(uid_t)-1`.
pub const UNSET_ID: u32 = u32::MAX;

impl Credentials {
    /// No task's: records made outside any writer (writeback completion).
    pub const UNKNOWN: Self = Self {
        uid: UNSET_ID,
        euid: UNSET_ID,
        gid: UNSET_ID,
        egid: UNSET_ID,
        loginuid: UNSET_ID,
    };
}

/// [`RecordKind::SharedWrite`], [`RecordKind::CowWrite`],
/// [`RecordKind::NewWriter`], [`RecordKind::FolioSpan`],
/// [`RecordKind::PagesWrittenBack`] and [`RecordKind::PossibleWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct PageEvent {
    pub header: EventHeader,
    /// Page index in the file (units of the base page size); for a span,
    /// its first page.
    pub page: u64,
    /// Pages covered: 1, or the span's length.
    pub pages: u64,
    /// The writer's user stack in the `STACKS` map (`trace --stacks`), or
    /// [`NO_STACK`].
    pub stack_id: u32,
    pub _pad: u32,
}

/// A [`PageEvent`] without a stack: stacks off, a record outside any
/// writer (writeback), or a stack the kernel could not take.
pub const NO_STACK: u32 = u32::MAX;

/// [`RecordKind::Sync`]: one call, sent when it returns. The header's
/// `boot_ns` is the return time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct SyncEvent {
    pub header: EventHeader,
    /// One of [`sync_call`].
    pub call: u32,
    pub _pad: u32,
    /// The syscall's return value (0, or a negative errno).
    pub ret: i64,
    pub latency_ns: u64,
    /// The file pages asked for (msync, sync_file_range); `pages` 0 for
    /// the whole file (fsync, fdatasync, sync_file_range to the end).
    pub first_page: u64,
    pub pages: u64,
}

/// [`RecordKind::FileSeen`]: sent once per file, when its stats entry is
/// created, so a path survives the writer's exit. The record is followed
/// by `names_len` bytes of names: `depth` NUL-terminated dentry names, leaf
/// first (an empty one marks a mount the walk crossed). Only the bytes a
/// path uses travel: tens of bytes for a usual path, where a slot per
/// component at its longest took 8 KiB and a burst of new files filled the
/// ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
pub struct FileEvent {
    pub header: EventHeader,
    /// `super_block.s_magic`: the filesystem type.
    pub fs_magic: u64,
    /// Names that follow the record.
    pub depth: u32,
    /// One of [`walk_end`]: where the walk stopped within `PATH_MAX_DEPTH`.
    pub reached_root: u32,
    /// The mount namespace (its inode number, as /proc/PID/ns/mnt shows
    /// it) of the mount the walk started in; 0 when it has none.
    pub mount_ns: u32,
    /// Bytes of names that follow the record.
    pub names_len: u32,
}

/// The most bytes of names a [`FileEvent`] carries: every component at its
/// longest, NUL included.
pub const FILE_NAMES_MAX: usize = PATH_COMPONENT_LEN * PATH_MAX_DEPTH;

/// The buffer a walk packs its names into: twice [`FILE_NAMES_MAX`], so
/// that the masked offsets below stay inside it whatever the verifier
/// assumes of the bytes used so far (it does not track them: they live in
/// memory, which keeps the walk's loop to one state per step).
pub const FILE_NAMES_BUFFER: usize = 2 * FILE_NAMES_MAX;

/// Where the next name goes, given the bytes of names used so far: a name
/// is read there with room for [`PATH_COMPONENT_LEN`] bytes. The walk uses
/// at most `FILE_NAMES_MAX - PATH_COMPONENT_LEN` bytes before its last
/// name, so the mask never changes a real offset.
#[inline(always)]
pub const fn next_name_offset(names_used: u32) -> usize {
    names_used as usize & (FILE_NAMES_MAX - 1)
}

/// The bytes of names sent, given those used: at most the buffer's size,
/// so the record's length is bounded for the verifier; the walk never uses
/// more than [`FILE_NAMES_MAX`], so the mask never changes a real length.
#[inline(always)]
pub const fn names_sent(names_used: u32) -> usize {
    names_used as usize & (FILE_NAMES_BUFFER - 1)
}

const _: () = assert!(
    FILE_NAMES_MAX.is_power_of_two()
        && FILE_NAMES_BUFFER.is_power_of_two()
        && FILE_NAMES_MAX - 1 + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER
        && core::mem::size_of::<FileEvent>().is_multiple_of(8)
);

/// How the reader learns of records. A wakeup from the ring is an
/// interrupt on the writer's CPU (irq_work: a self-IPI, in a VM an exit),
/// several microseconds the writer waits, once per record whenever the
/// reader keeps up, which a burst of new files, each announced alone,
/// paid in full. So records are committed without one, but the record that
/// takes the unread bytes to `ring_wakeup_bytes` wakes the reader; the
/// reader also reads every [`READER_POLL_MS`] whatever it was told, so a
/// trickle of records waits at most that long.
pub mod ring_flag {
    /// `BPF_RB_NO_WAKEUP`.
    pub const NO_WAKEUP: u64 = 1;
    /// `BPF_RB_FORCE_WAKEUP`.
    pub const FORCE_WAKEUP: u64 = 2;
    /// `BPF_RB_AVAIL_DATA`, for `bpf_ringbuf_query`: bytes not yet read.
    pub const AVAIL_DATA: u64 = 0;
}

/// Bytes of the ring a record of `len` bytes takes: the kernel's 8-byte
/// record header, and the whole rounded up to 8.
#[inline(always)]
pub const fn ring_bytes(len: u64) -> u64 {
    (len + 8).next_multiple_of(8)
}

/// How often the reader reads the ring whatever it was told.
pub const READER_POLL_MS: u64 = 50;

/// The share of the ring unread at which a record wakes the reader: an
/// eighth, far from full, and more than a poll interval of a busy machine's
/// records, so that a wakeup is rare.
pub const RING_WAKEUP_FRACTION: u32 = 8;

/// The flags to commit a record of `len` bytes with, when `unread` bytes
/// were waiting before it: only the record that crosses `wake_at` wakes the
/// reader (one wakeup per batch; a missed one is made up by the poll).
#[inline(always)]
pub const fn ring_commit_flags(unread: u64, len: u64, wake_at: u64) -> u64 {
    if unread < wake_at && unread + len >= wake_at {
        ring_flag::FORCE_WAKEUP
    } else {
        ring_flag::NO_WAKEUP
    }
}

/// How far a [`FileEvent`]'s walk got (`reached_root`).
pub mod walk_end {
    /// Out of slots before a root.
    pub const CUT: u32 = 0;
    /// The root of the file's filesystem: the path is relative to it.
    pub const FS_ROOT: u32 = 1;
    /// The root of the writer's mount namespace, across its mounts: the
    /// path is whole, as the writer saw it; an empty component is a
    /// mount crossed.
    pub const NAMESPACE_ROOT: u32 = 2;
    /// A flag beside the above: the names are of a path through a stacking
    /// filesystem (overlayfs), not of the file's own filesystem: the file
    /// is one of its layers' (upper or lower).
    pub const STACKED: u32 = 0x100;
    /// The bits of the above values.
    pub const END_MASK: u32 = 0xff;
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// Every offset and length a walk can reach is left as it is by the
    /// masks: names of any length, mounts crossed (one byte each) anywhere.
    #[test]
    fn the_name_masks_never_change_a_reachable_offset_or_length() {
        for name_len in 1..=PATH_COMPONENT_LEN as u32 {
            let mut used = 0u32;
            for _ in 0..PATH_MAX_DEPTH {
                let at = next_name_offset(used);
                assert_eq!(at, used as usize);
                assert!(at + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER);
                used += name_len;
            }
            assert!(used as usize <= FILE_NAMES_MAX);
            assert_eq!(names_sent(used), used as usize);
        }
    }

    #[test]
    fn a_record_takes_its_header_and_is_rounded_to_eight() {
        assert_eq!(ring_bytes(80), 88);
        assert_eq!(ring_bytes(81), 96);
        assert_eq!(ring_bytes(0), 8);
    }

    #[test]
    fn only_the_record_that_crosses_the_mark_wakes_the_reader() {
        let wake_at = 1 << 20;
        let flags: std::vec::Vec<u64> = (0..3000u64)
            .map(|n| ring_commit_flags(n * 1000, 1000, wake_at))
            .collect();
        let wakeups: std::vec::Vec<usize> = (0..flags.len())
            .filter(|&n| flags[n] == ring_flag::FORCE_WAKEUP)
            .collect();
        assert_eq!(wakeups, [1048]);
        assert!(flags
            .iter()
            .all(|&f| f == ring_flag::FORCE_WAKEUP || f == ring_flag::NO_WAKEUP));
        // A record landing exactly on the mark wakes it too.
        assert_eq!(
            ring_commit_flags(wake_at - 8, 8, wake_at),
            ring_flag::FORCE_WAKEUP
        );
        // A reader told to wake for nothing (mark 0): never woken.
        assert_eq!(ring_commit_flags(0, 8, 0), ring_flag::NO_WAKEUP);
    }

    /// Whatever the verifier assumes of the bytes used, a name's room and
    /// the record's names stay inside the buffer.
    #[test]
    fn the_name_masks_bound_any_value_to_the_buffer() {
        for used in [0, 1, 255, 8191, 8192, 16383, 16384, u32::MAX] {
            assert!(next_name_offset(used) + PATH_COMPONENT_LEN <= FILE_NAMES_BUFFER);
            assert!(names_sent(used) <= FILE_NAMES_BUFFER);
        }
    }
}
