//! Handing idle files' kernel entries over to userspace, so that the
//! per-file maps (`FILE_STATS`, `DIRTY_SINCE`) never fill on a host that
//! writes millions of distinct files: the counts move into the aggregate
//! and the entry is freed. The policy (which entries) is pure and lives in
//! `model::hand_over`; this file only reads and deletes.

use probe_common::map_name;
use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, Map};
use probe_common::{FileKey, FileStats, PageChunk, PageChunkKey, PendingCounts};
use zerocopy::FromBytes as _;

use super::{error::LoadError, load::Probes};
use crate::model::events::FileId;

/// The per-file map as read, with the CPUs' open runs of faults apart (a
/// file with an open run is still being written: it is never handed over).
pub struct FileStatsSnapshot {
    pub entries: StdHashMap<FileKey, Vec<FileStats>>,
    pub open_runs: Vec<PendingCounts>,
}

/// Map entries read between two calls of a snapshot's `meanwhile`.
pub const READS_BETWEEN_BREAKS: usize = 1024;

impl Probes {
    /// Every file's per-CPU counters, and the open runs (read after them:
    /// see `open_runs`). `meanwhile` runs every [`READS_BETWEEN_BREAKS`]
    /// entries: tens of thousands of lookups outlast a busy event ring.
    pub fn file_stats_snapshot(
        &self,
        mut meanwhile: impl FnMut(),
    ) -> Result<FileStatsSnapshot, LoadError> {
        let map: aya::maps::PerCpuHashMap<_, FileKey, FileStats> =
            self.typed_map(map_name::FILE_STATS)?;
        let mut entries = StdHashMap::new();
        for (read, item) in map.iter().enumerate() {
            if read % READS_BETWEEN_BREAKS == READS_BETWEEN_BREAKS - 1 {
                meanwhile();
            }
            // An entry can vanish between listing and lookup; skip it.
            let Ok((key, values)) = item else { continue };
            entries.insert(key, values.iter().copied().collect());
        }
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
    ) -> Result<StdHashMap<FileKey, u64>, LoadError> {
        let map: HashMap<_, FileKey, u64> = self.typed_map(map_name::DIRTY_SINCE)?;
        Ok(map
            .iter()
            .enumerate()
            .inspect(|(read, _)| {
                if read % READS_BETWEEN_BREAKS == READS_BETWEEN_BREAKS - 1 {
                    meanwhile();
                }
            })
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

    /// Removes a file's per-CPU counters from the kernel map and returns
    /// them, in one step: a fault that comes after it creates a new entry
    /// from zero, so nothing is counted twice or lost (a program that looked
    /// the entry up before the removal and adds after it is the only loss;
    /// idle entries are chosen so that does not happen). None when the
    /// entry is already gone.
    ///
    /// A raw bpf(2) call: aya 0.14 offers lookup-and-delete only for maps
    /// with one value, not per-CPU ones (the kernel has it since 5.14).
    pub fn take_file_stats(&self, key: &FileKey) -> Result<Option<Vec<FileStats>>, LoadError> {
        let fail = |reason: String| LoadError::Map {
            map: map_name::FILE_STATS,
            reason,
        };
        let Some(Map::PerCpuHashMap(data)) = self.ebpf.map(map_name::FILE_STATS) else {
            return Err(fail("missing from the object".into()));
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| fail(format!("{what}: {err}")))?;
        // Per-CPU values are 8-byte aligned, one per possible CPU.
        let stride = size_of::<FileStats>().next_multiple_of(8);
        let mut values = vec![0u8; stride * cpus];
        let attr = MapElemAttr {
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: values.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's map-element layout; key and value
        // point at buffers of the map's key size and of `stride * cpus`.
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
            return Err(fail(format!("lookup-and-delete: {err}")));
        }
        let per_cpu = values
            .chunks_exact(stride)
            .map(|chunk| {
                FileStats::read_from_prefix(chunk)
                    .map(|(stats, _)| stats)
                    .map_err(|_| fail("a per-CPU value shorter than FileStats".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(per_cpu))
    }
}

impl Probes {
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
