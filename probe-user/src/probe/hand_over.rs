//! Handing idle files' kernel entries over to userspace, so that the
//! per-file maps (`FILE_STATS`, `DIRTY_SINCE`) never fill on a host that
//! writes millions of distinct files: the counts move into the aggregate
//! and the entry is freed. The policy (which entries) is pure and lives in
//! `model::hand_over`; this file only reads and deletes.

use probe_common::map_name;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::maps::{HashMap, Map};
use probe_common::{FileKey, FileStats, PageChunk, PageChunkKey, PendingCounts};
use zerocopy::FromBytes as _;

use super::{error::LoadError, load::Probes, map_batch};
use crate::model::{events::FileId, hand_over::KernelEntries};

/// The per-file map as read, with the CPUs' open runs of faults apart (a
/// file with an open run is still being written: it is never handed over).
pub struct FileStatsSnapshot {
    pub entries: KernelEntries<FileStats>,
    pub open_runs: Vec<PendingCounts>,
}

/// Map entries read between two calls of a snapshot's `meanwhile`.
pub const READS_BETWEEN_BREAKS: usize = 1024;

impl Probes {
    /// Every file's counters, and the open runs (read after them: see
    /// `open_runs`). `meanwhile` runs every [`READS_BETWEEN_BREAKS`]
    /// entries: tens of thousands of lookups outlast a busy event ring.
    pub fn file_stats_snapshot(
        &self,
        mut meanwhile: impl FnMut(),
    ) -> Result<FileStatsSnapshot, LoadError> {
        let entries = self.read_whole_map(map_name::FILE_STATS, &mut meanwhile)?;
        Ok(FileStatsSnapshot {
            entries,
            open_runs: self.open_runs()?,
        })
    }

    /// Files with dirty pages not yet written back, and since when;
    /// `meanwhile` as for [`Self::file_stats_snapshot`].
    pub fn dirty_since(
        &self,
        mut meanwhile: impl FnMut(),
    ) -> Result<KernelEntries<u64>, LoadError> {
        self.read_whole_map(map_name::DIRTY_SINCE, &mut meanwhile)
    }

    /// Every entry of a file-keyed hash map: in batches where the kernel
    /// has them (5.6+), else one lookup at a time. `meanwhile` runs every
    /// [`READS_BETWEEN_BREAKS`] entries.
    fn read_whole_map<V>(
        &self,
        name: &'static str,
        meanwhile: &mut impl FnMut(),
    ) -> Result<KernelEntries<V>, LoadError>
    where
        V: aya::Pod + zerocopy::FromBytes,
    {
        let mut entries: Vec<(FileKey, V)> = Vec::new();
        let batched = map_batch::read_all(
            self.map_fd(name)?,
            size_of::<FileKey>(),
            size_of::<V>(),
            |keys, values| {
                entries.extend(
                    keys.chunks_exact(size_of::<FileKey>())
                        .zip(values.chunks_exact(size_of::<V>()))
                        .filter_map(|(key, value)| {
                            Some((
                                FileKey::read_from_bytes(key).ok()?,
                                V::read_from_bytes(value).ok()?,
                            ))
                        }),
                );
            },
            &mut *meanwhile,
        )
        .map_err(|source| LoadError::MapSyscall {
            map: name,
            operation: "batch lookup",
            source,
        })?;
        if batched {
            return Ok(KernelEntries::new(entries));
        }
        let map: HashMap<_, FileKey, V> = self.typed_map(name)?;
        Ok(map
            .iter()
            .enumerate()
            .inspect(|(read, _)| {
                if read % READS_BETWEEN_BREAKS == READS_BETWEEN_BREAKS - 1 {
                    meanwhile();
                }
            })
            // An entry can vanish between listing and lookup; skip it.
            .filter_map(|(_, item)| item.ok())
            .collect())
    }

    /// Forgets when a file was first dirtied (its entry was handed over,
    /// so its writeback completion will not be seen to close it).
    pub fn forget_dirty(&mut self, key: &FileKey) -> Result<(), LoadError> {
        let mut map: HashMap<_, FileKey, u64> = self.typed_map_mut(map_name::DIRTY_SINCE)?;
        // Already gone is fine: its writeback completed meanwhile.
        let _ = map.remove(key);
        Ok(())
    }

    /// Removes a file's counters from the kernel map and returns them, in
    /// one step: a fault that comes after it creates a new entry from zero,
    /// so nothing is counted twice or lost (a program that looked the entry
    /// up before the removal and adds after it is the only loss; idle
    /// entries are chosen so that does not happen). None when the entry is
    /// already gone.
    ///
    /// A raw bpf(2) call: aya 0.14 offers lookup-and-delete only for queues
    /// and stacks (the kernel has it for hash maps since 5.14).
    pub fn take_file_stats(&self, key: &FileKey) -> Result<Option<FileStats>, LoadError> {
        let map_fd = self.map_fd(map_name::FILE_STATS)?;
        let mut stats = FileStats::default();
        let attr = MapElemAttr {
            map_fd: map_fd.as_raw_fd() as u32,
            pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: std::ptr::from_mut(&mut stats) as u64,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's map-element layout; key and value
        // point at a FileKey and a FileStats, the map's key and value.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const MapElemAttr,
                size_of::<MapElemAttr>(),
            )
        };
        if result < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(LoadError::MapSyscall {
                map: map_name::FILE_STATS,
                operation: "lookup-and-delete",
                source: err,
            });
        }
        Ok(Some(stats))
    }
}

impl Probes {
    /// A map's descriptor, borrowed.
    fn map_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, LoadError> {
        let data = match self.ebpf.map(name) {
            Some(Map::PerCpuHashMap(data) | Map::HashMap(data)) => data,
            _ => return Err(LoadError::MissingMap(name)),
        };
        Ok(data.fd().as_fd())
    }

    /// Removes forgotten files' pages from the kernel's first-write dedup
    /// map, so that a forgotten file written again is reported as a new
    /// one, all its pages included. Returns the entries removed.
    pub fn forget_pages_of(
        &mut self,
        files: &std::collections::HashSet<FileId>,
    ) -> Result<usize, LoadError> {
        let mut map: HashMap<_, PageChunkKey, PageChunk> =
            self.typed_map_mut(map_name::PAGE_SEEN)?;
        let stale: Vec<PageChunkKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|key| files.contains(&FileId::from_key(&key.file)))
            .collect();
        // One already evicted by the kernel is fine.
        Ok(stale.iter().filter(|key| map.remove(key).is_ok()).count())
    }
}

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// `union bpf_attr` as BPF_MAP_*_ELEM commands read it.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
