//! The kernel's running totals (counters, the writeback latency histogram,
//! per-program run time), read from the maps' own file descriptors so
//! that another thread (the exporter's HTTP server, at scrape time) can
//! read them while the session owns the loaded object.

use probe_common::map_name;
use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    time::Duration,
};

use aya::maps::{Map, MapData, PerCpuArray};
use probe_common::{counter, CounterTotals, LATENCY_BUCKETS, LATENCY_SUM_SLOT};

use super::{
    error::LoadError,
    load::Probes,
    maps::{KernelCounters, LatencyTotals},
};

/// (program name, run time, run count), with kernel.bpf_stats_enabled.
pub type ProgramStats = Vec<(String, Duration, u64)>;

/// The per-CPU counters, each totalled as its declaration says.
/// The fields userspace fills (hand-over, file entries) are 0.
pub(super) fn read_counters<T: Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<KernelCounters, LoadError> {
    let mut kernel = CounterTotals::default();
    for slot in 0..counter::COUNT {
        let values = map
            .get(&slot, 0)
            .map_err(LoadError::on_map(map_name::COUNTERS))?;
        kernel.set_from_cpus(slot, values.iter().copied());
    }
    Ok(KernelCounters {
        kernel,
        ..KernelCounters::default()
    })
}

/// The latency histogram summed over CPUs.
fn read_latency<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<LatencyTotals, LoadError> {
    let total = |index: u32| -> Result<u64, LoadError> {
        let values = map
            .get(&index, 0)
            .map_err(LoadError::on_map(map_name::WRITEBACK_LATENCY))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    };
    let mut totals = LatencyTotals {
        buckets: [0; LATENCY_BUCKETS as usize],
        sum_ns: total(LATENCY_SUM_SLOT)?,
    };
    for (index, bucket) in (0u32..).zip(totals.buckets.iter_mut()) {
        *bucket = total(index)?;
    }
    Ok(totals)
}

/// Reads the kernel's totals on any thread: it holds duplicates of the
/// maps' and the programs' file descriptors, not the loaded object.
pub struct KernelTotalsReader {
    counters: PerCpuArray<MapData, u64>,
    latency: PerCpuArray<MapData, u64>,
    /// The name the object gives each program (the kernel keeps only 15
    /// bytes of a name), with a descriptor of it.
    programs: Vec<(String, OwnedFd)>,
}

impl std::fmt::Debug for KernelTotalsReader {
    // aya's typed maps do not implement Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTotalsReader")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

impl KernelTotalsReader {
    pub fn counters(&self) -> Result<KernelCounters, LoadError> {
        read_counters(&self.counters)
    }

    pub fn writeback_latency(&self) -> Result<LatencyTotals, LoadError> {
        read_latency(&self.latency)
    }

    /// Run time and runs of each of our programs, sorted by name, from
    /// /proc/self/fdinfo of our own descriptors: needs no capability
    /// (walking the loaded programs' ids, as aya's `loaded_programs` does,
    /// needs CAP_SYS_ADMIN, which the agent drops after attaching).
    pub fn program_stats(&self) -> ProgramStats {
        let mut stats: ProgramStats = self
            .programs
            .iter()
            .filter_map(|(name, fd)| {
                let fdinfo =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                        .ok()?;
                let (run_time, runs) = program_runs(&fdinfo)?;
                Some((name.clone(), run_time, runs))
            })
            .collect();
        stats.sort();
        stats
    }
}

/// `run_time_ns` and `run_cnt` of a BPF program's fdinfo (Linux 5.1+;
/// both 0 while kernel.bpf_stats_enabled is off).
fn program_runs(fdinfo: &str) -> Option<(Duration, u64)> {
    let field = |key: &str| -> Option<u64> {
        fdinfo
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some((
        Duration::from_nanos(field("run_time_ns")?),
        field("run_cnt")?,
    ))
}

impl Probes {
    /// A reader of the kernel's totals for another thread.
    pub fn totals_reader(&self) -> Result<KernelTotalsReader, LoadError> {
        let duplicate =
            |name: &'static str| -> Result<PerCpuArray<MapData, u64>, LoadError> {
                let Some(Map::PerCpuArray(data)) = self.ebpf.map(name) else {
                    return Err(LoadError::MissingMap(name));
                };
                let fd = data.fd().as_fd().try_clone_to_owned().map_err(|source| {
                    LoadError::MapSyscall {
                        map: name,
                        operation: "duplicating its descriptor",
                        source,
                    }
                })?;
                let data = MapData::from_fd(fd).map_err(LoadError::on_map(name))?;
                PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(LoadError::on_map(name))
            };
        let programs = self
            .ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
                Some((name.to_string(), fd))
            })
            .collect();
        Ok(KernelTotalsReader {
            counters: duplicate(map_name::COUNTERS)?,
            latency: duplicate(map_name::WRITEBACK_LATENCY)?,
            programs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_runs_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\t8f3a\nprog_id:\t77\nrun_time_ns:\t123456\nrun_cnt:\t42\nrecursion_misses:\t0\n";
        assert_eq!(
            program_runs(fdinfo),
            Some((Duration::from_nanos(123_456), 42))
        );
        assert_eq!(program_runs("prog_id:\t77\n"), None);
    }
}
