//! Reading and writing the loaded object's maps: counters, per-file and
//! per-writer stats, the event ring, the traced processes.

use probe_common::map_name;
use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap};
use probe_common::{
    CounterTotals, FileKey, PendingCounts, WriterStats, WriterStatsKey, LATENCY_BUCKETS,
};

/// The dirty-to-writeback latency histogram, summed over CPUs: log2
/// buckets (bucket `k`: [2^k, 2^(k+1)) ns) and the latencies' sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyTotals {
    pub buckets: [u64; LATENCY_BUCKETS as usize],
    pub sum_ns: u64,
}

use super::{error::LoadError, load::Probes};
use crate::model::events::FileId;

/// The kernel's counters, and the hand-over totals the session keeps
/// beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// The per-CPU counters' totals (see probe-common's `counters`).
    pub kernel: CounterTotals,
    /// Idle files' entries the session moved out of the kernel's per-file
    /// map (it fills otherwise), and those of them still dirty, whose
    /// later writeback goes uncounted. Filled by the session, not the kernel.
    pub files_handed_over: u64,
    pub dirty_files_handed_over: u64,
    /// Files forgotten after `--retain` without a write or writeback.
    pub files_forgotten: u64,
    /// Entries in the kernel's per-file map at the last read.
    pub file_entries: u64,
}

impl KernelCounters {
    /// Everything the kernel side failed to report.
    pub fn lost(&self) -> u64 {
        self.kernel.lost()
    }
}

/// (cgroup id, kernel dev, command name) of a writer label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterLabel {
    pub cgroup_id: u64,
    pub dev: u32,
    /// The writer's effective uid.
    pub euid: u32,
    pub comm: String,
}

impl Probes {
    /// File -> address of the `->page_mkwrite` its filesystem ran.
    pub fn page_mkwrite_functions(&self) -> Result<StdHashMap<FileId, u64>, LoadError> {
        let map: HashMap<_, FileKey, u64> = self.typed_map(map_name::PAGE_MKWRITE)?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, function)| (FileId::from_key(&key), function))
            .collect())
    }

    /// Starts tracing `tgid`; with `follow_children`, its future descendants too.
    pub fn trace_tgid(&mut self, tgid: u32, follow_children: bool) -> Result<(), LoadError> {
        let mut map: HashMap<_, u32, u32> = self.typed_map_mut(map_name::TRACED)?;
        let value = if follow_children {
            probe_common::traced::FOLLOW_CHILDREN
        } else {
            probe_common::traced::EXACT
        };
        map.insert(tgid, value, 0)
            .map_err(LoadError::on_map(map_name::TRACED))
    }

    pub fn untrace_tgid(&mut self, tgid: u32) -> Result<(), LoadError> {
        let mut map: HashMap<_, u32, u32> = self.typed_map_mut(map_name::TRACED)?;
        // Already gone is fine: it may have exited.
        let _ = map.remove(&tgid);
        Ok(())
    }

    /// The event ring buffer, taken out so it can be polled on its own.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(map_name::EVENTS)
            .ok_or(LoadError::MissingMap(map_name::EVENTS))?;
        RingBuf::try_from(map).map_err(LoadError::on_map(map_name::EVENTS))
    }

    /// The writers' stacks (`--stacks`), taken out for the session's
    /// resolver.
    pub fn take_stacks(&mut self) -> Result<StackTraceMap<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(map_name::STACKS)
            .ok_or(LoadError::MissingMap(map_name::STACKS))?;
        StackTraceMap::try_from(map).map_err(LoadError::on_map(map_name::STACKS))
    }

    pub fn counters(&self) -> Result<KernelCounters, LoadError> {
        super::totals::read_counters(&self.typed_map::<PerCpuArray<_, u64>>(map_name::COUNTERS)?)
    }

    /// Each CPU's open run of fault counts, not yet in the stats maps.
    /// Read after those maps: a run closing in between is then missed for
    /// an instant, never counted twice (the kernel closes a run before it
    /// adds it to the maps).
    pub(super) fn open_runs(&self) -> Result<Vec<PendingCounts>, LoadError> {
        let map: PerCpuArray<_, PendingCounts> = self.typed_map(map_name::PENDING_COUNTS)?;
        let runs = map
            .get(&0, 0)
            .map_err(LoadError::on_map(map_name::PENDING_COUNTS))?;
        Ok(runs
            .iter()
            .filter(|run| run.shared_write_faults + run.cow_faults > 0)
            .copied()
            .collect())
    }

    /// Fault counts per (cgroup, filesystem, effective uid, command), summed
    /// over CPUs.
    pub fn writer_stats(&self) -> Result<Vec<(WriterLabel, WriterStats)>, LoadError> {
        let map: PerCpuHashMap<_, WriterStatsKey, WriterStats> =
            self.typed_map(map_name::WRITER_STATS)?;
        let mut totals: StdHashMap<WriterStatsKey, WriterStats> = StdHashMap::new();
        for item in map.iter() {
            let Ok((key, values)) = item else { continue };
            let total = totals.entry(key).or_default();
            for v in values.iter() {
                total.shared_write_faults += v.shared_write_faults;
                total.cow_faults += v.cow_faults;
            }
        }
        for run in self.open_runs()? {
            let total = totals.entry(run.writer).or_default();
            total.shared_write_faults += run.shared_write_faults;
            total.cow_faults += run.cow_faults;
        }
        let mut out = Vec::new();
        for (key, total) in totals {
            let end = key
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(key.comm.len());
            out.push((
                WriterLabel {
                    cgroup_id: key.cgroup_id,
                    dev: key.dev,
                    euid: key.euid,
                    comm: crate::model::names::comm_text(&key.comm[..end]),
                },
                total,
            ));
        }
        Ok(out)
    }

    pub(super) fn typed_map<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        name: &'static str,
    ) -> Result<T, LoadError> {
        typed(name, self.ebpf.map(name))
    }

    pub(super) fn typed_map_mut<
        'a,
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    >(
        &'a mut self,
        name: &'static str,
    ) -> Result<T, LoadError> {
        typed(name, self.ebpf.map_mut(name))
    }
}

/// The map `name` (shared or mutable) as its typed view, or why not.
fn typed<M, T: TryFrom<M, Error = aya::maps::MapError>>(
    name: &'static str,
    map: Option<M>,
) -> Result<T, LoadError> {
    let map = map.ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(LoadError::on_map(name))
}
