//! Per file: the calls that asked for its pages to reach disk (msync,
//! fsync, fdatasync, sync_file_range), with how long they took.

use std::collections::BTreeMap;

use crate::model::events::SyncCall;

/// One kind of call on one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub calls: u64,
    /// Calls that returned an error (`-EIO` is a lost write).
    pub errors: u64,
    pub total_latency_ns: u64,
    pub max_latency_ns: u64,
    /// When the latest call returned.
    pub last_boot_ns: u64,
    /// The latest error, as a positive errno (0: none yet).
    pub last_errno: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Syncs(pub BTreeMap<SyncCall, SyncStats>);

impl Syncs {
    pub const NONE: Syncs = Syncs(BTreeMap::new());

    pub fn note(&mut self, call: SyncCall, latency_ns: u64, result: i64, boot_ns: u64) {
        let stats = self.0.entry(call).or_default();
        stats.calls += 1;
        stats.total_latency_ns = stats.total_latency_ns.saturating_add(latency_ns);
        stats.max_latency_ns = stats.max_latency_ns.max(latency_ns);
        stats.last_boot_ns = stats.last_boot_ns.max(boot_ns);
        if result < 0 {
            stats.errors += 1;
            stats.last_errno = u32::try_from(result.unsigned_abs()).unwrap_or(u32::MAX);
        }
    }

    pub fn calls(&self) -> u64 {
        self.0.values().map(|s| s.calls).sum()
    }

    /// The latest call of any kind, when one returned.
    pub fn last_boot_ns(&self) -> Option<u64> {
        self.0.values().map(|s| s.last_boot_ns).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_with_latency_and_errors() {
        let mut syncs = Syncs::default();
        assert_eq!(syncs.calls(), 0);
        syncs.note(SyncCall::Msync, 2_000, 0, 10);
        syncs.note(SyncCall::Msync, 5_000, 0, 30);
        syncs.note(SyncCall::Fsync, 9_000, -5, 20);
        let msync = syncs.0[&SyncCall::Msync];
        assert_eq!(
            (
                msync.calls,
                msync.total_latency_ns,
                msync.max_latency_ns,
                msync.last_boot_ns
            ),
            (2, 7_000, 5_000, 30)
        );
        let fsync = syncs.0[&SyncCall::Fsync];
        assert_eq!((fsync.errors, fsync.last_errno), (1, 5));
        assert_eq!(syncs.calls(), 3);
        assert_eq!(syncs.last_boot_ns(), Some(30));
    }
}
