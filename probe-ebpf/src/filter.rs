//! Whether the current task is traced (`--pid`, `-- CMD`, `--comm`), and
//! this CPU's cache of the last writing thread's name, cgroup and verdict.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, generated::bpf_jiffies64};
use probe_common::{
    filter, Credentials, MAX_CGROUP_FILTERS, MAX_COMM_FILTERS, MAX_USER_FILTERS, TASK_COMM_LEN,
};

use crate::{
    compat::current_cred,
    kernel::{
        comm_words, credentials_into, current_ancestor_cgroup_id, current_cgroup_id,
        current_comm_into, current_euid,
    },
    maps::{IDENTITY_CHANGES, TRACED},
    scratch::FaultScratch,
    stats::add_shared,
};

/// Renames and cgroup moves so far (see [`IDENTITY_CHANGES`]).
#[inline(always)]
fn identity_changes() -> u64 {
    IDENTITY_CHANGES.get(0).copied().unwrap_or(0)
}

/// A task was renamed or moved to another cgroup: every CPU's cached
/// writer name and cgroup is read afresh at its next fault.
#[inline(always)]
pub(crate) fn note_identity_change() {
    if let Some(count) = IDENTITY_CHANGES.get_ptr_mut(0) {
        // SAFETY: the one entry of an array map, 8-byte aligned.
        unsafe { add_shared(count, 1) };
    }
}

/// Whether the current task passes the pid, comm and user filters; `euid`
/// gives its effective uid, asked only when `--user` is on.
#[inline(always)]
pub(crate) fn task_selected(
    tgid: u32,
    comm: &[u8; TASK_COMM_LEN],
    euid: impl FnOnce() -> u32,
) -> bool {
    if !tgid_selected(tgid) {
        return false;
    }
    let flags = config!(filter_flags);
    if flags & filter::BY_USER != 0 && !user_selected(euid()) {
        return false;
    }
    if flags & filter::BY_CGROUP != 0 && !cgroup_selected() {
        return false;
    }
    if flags & filter::BY_COMM != 0 {
        let count = config!(comm_count) as usize;
        let wanted = comm_words(comm);
        let mut index = 0;
        while index < MAX_COMM_FILTERS {
            if index >= count {
                return false;
            }
            // SAFETY: a read of a global that the loader fills in and freezes.
            let filter_comm = unsafe { core::ptr::read_volatile(&crate::CONFIG.comms[index]) };
            if comm_words(&filter_comm) == wanted {
                return true;
            }
            index += 1;
        }
        return false;
    }
    true
}

/// Whether `euid` is one of `--user`'s.
#[inline(always)]
fn user_selected(euid: u32) -> bool {
    let count = config!(user_count) as usize;
    let mut index = 0;
    while index < MAX_USER_FILTERS {
        if index >= count {
            return false;
        }
        // SAFETY: a read of a global that the loader fills in and freezes.
        if unsafe { core::ptr::read_volatile(&crate::CONFIG.users[index]) } == euid {
            return true;
        }
        index += 1;
    }
    false
}

/// Whether the current task is in one of `--cgroup`'s (or a container's)
/// cgroups or below one: its ancestor at that cgroup's level is it.
#[inline(always)]
fn cgroup_selected() -> bool {
    let count = config!(cgroup_count) as usize;
    let mut index = 0;
    while index < MAX_CGROUP_FILTERS {
        if index >= count {
            return false;
        }
        // SAFETY: a read of a global that the loader fills in and freezes.
        let wanted = unsafe { core::ptr::read_volatile(&crate::CONFIG.cgroups[index]) };
        if current_ancestor_cgroup_id(wanted.level) == wanted.id {
            return true;
        }
        index += 1;
    }
    false
}

/// The process filters alone (not ourselves; --pid, -- CMD), which need
/// no command name.
#[inline(always)]
pub(crate) fn tgid_selected(tgid: u32) -> bool {
    if tgid == config!(self_tgid) {
        return false;
    }
    // SAFETY: read-only lookup of a plain u32 value.
    config!(filter_flags) & filter::BY_TGID == 0 || unsafe { TRACED.get(&tgid) }.is_some()
}

/// Whether the current task (`pid_tgid`) passes the pid and comm
/// filters; its command name is left in `comm`.
#[inline(always)]
pub(crate) fn selected_current_task(
    pid_tgid: u64,
    comm: &mut [u8; TASK_COMM_LEN],
) -> Result<bool, i64> {
    current_comm_into(comm)?;
    Ok(task_selected((pid_tgid >> 32) as u32, comm, current_euid))
}

/// This CPU's last writing thread: its command name, cgroup and filter
/// verdict (see [`current_writer`] for when it is read afresh).
#[repr(C)]
pub(crate) struct WriterCache {
    pub(crate) pid_tgid: u64,
    /// The thread's mm when read: exec keeps the thread id but replaces
    /// the mm (and the command name).
    pub(crate) mm: u64,
    /// The clock tick (jiffies) when read.
    pub(crate) tick: u64,
    /// [`IDENTITY_CHANGES`] when read.
    pub(crate) identity_changes: u64,
    /// The boot clock then.
    pub(crate) boot_ns: u64,
    pub(crate) selected: u64,
    pub(crate) cgroup_id: u64,
    pub(crate) comm: [u8; TASK_COMM_LEN],
    /// The thread's `cred` when read: any change of its ids replaces it.
    pub(crate) cred: u64,
    pub(crate) creds: Credentials,
}

/// The time of the fault, if the current thread (`pid_tgid`, running in
/// `mm`; 0 where unknown) passes the filters; its command name and cgroup
/// are left in `scratch.fault`.
///
/// The cache is read afresh when another thread faults here, after an
/// exec (a new mm: the old name must not label the new program's writes),
/// after any task was renamed or moved to another cgroup (a forked child
/// that names itself and stores at once is named as it is at the store),
/// after the thread's ids changed (setresuid: a new `cred`) and on every
/// clock tick. The time is that of the
/// thread's first fault on this CPU in this tick, so within a tick: the
/// boot clock reads the TSC, ~110 ns per call in a VM here, and the coarse
/// clock is not for tracing programs. Records of first writes carry the
/// fine time (see record_write).
#[inline(always)]
pub(crate) fn current_writer<const SINCE_5_17: bool>(
    pid_tgid: u64,
    mm: u64,
    scratch: &mut FaultScratch,
) -> Result<Option<u64>, i64> {
    let FaultScratch { writer, fault, .. } = scratch;
    // SAFETY: no arguments.
    let tick = unsafe { bpf_jiffies64() };
    let identity_changes = identity_changes();
    let (task, cred) = current_cred::<SINCE_5_17>();
    if writer.pid_tgid != pid_tgid
        || writer.mm != mm
        || writer.tick != tick
        || writer.identity_changes != identity_changes
        || writer.cred != cred
    {
        current_comm_into(&mut writer.comm)?;
        writer.cgroup_id = current_cgroup_id();
        credentials_into(task, cred, &mut writer.creds);
        writer.cred = cred;
        let euid = writer.creds.euid;
        writer.selected = u64::from(task_selected((pid_tgid >> 32) as u32, &writer.comm, || {
            euid
        }));
        writer.pid_tgid = pid_tgid;
        writer.mm = mm;
        writer.tick = tick;
        writer.identity_changes = identity_changes;
        // SAFETY: no arguments.
        writer.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    }
    if writer.selected == 0 {
        return Ok(None);
    }
    fault.comm = writer.comm;
    fault.cgroup_id = writer.cgroup_id;
    fault.creds = writer.creds;
    Ok(Some(writer.boot_ns))
}
