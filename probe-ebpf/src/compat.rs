//! What a program may call, by kernel version, in one place (as
//! libbpf-tools' core_fixes.bpf.h). The kernel refuses a whole program at
//! load for a helper it lacks or a callback subprogram it cannot count,
//! so a run-time flag cannot hide them: the programs that use them are
//! built twice, with `SINCE_5_17` true and false, and userspace loads the
//! first variant the kernel accepts (`probe::catalog`).
//!
//! `SINCE_5_17`: `bpf_find_vma` (5.17) with its callback (callback
//! subprograms: 5.13) and `bpf_get_current_task_btf` (5.11). The other
//! variant, for 5.10 to 5.16, reads the task through
//! `bpf_probe_read_kernel` and finds VMAs by the lock-free walk only.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task};

use crate::{
    kernel::read_kernel,
    vma::{current_task, mm_sequence, task_tgid},
};

/// The current process's tgid: a direct load through the task's BTF
/// pointer where the kernel gives one (a helper call costs more).
#[inline(always)]
pub(crate) fn current_tgid<const SINCE_5_17: bool>() -> u32 {
    if SINCE_5_17 {
        task_tgid(current_task())
    } else {
        (bpf_get_current_pid_tgid() >> 32) as u32
    }
}

/// The current task's mm (0 for a kernel thread, or when unreadable) and,
/// where the kernel keeps one, the sequence that says whether its
/// mappings changed (see [`mm_sequence`]).
#[inline(always)]
pub(crate) fn current_mm<const SINCE_5_17: bool>() -> (u64, Option<u64>) {
    if SINCE_5_17 {
        let at = offset!(task_mm) as usize;
        // SAFETY: `task_struct.mm`, at its BTF offset: a direct load the
        // verifier checks against the kernel's BTF.
        let mm = unsafe { core::ptr::read_volatile(current_task().add(at) as *const *const u8) };
        if mm.is_null() {
            return (0, None);
        }
        (mm as u64, mm_sequence(mm))
    } else {
        // SAFETY: no arguments; the current task.
        let task = unsafe { bpf_get_current_task() };
        // `mm_lock_seq` is 6.4+: no sequence on these kernels.
        (read_kernel(task, offset!(task_mm)).unwrap_or(0), None)
    }
}

/// The current task and its `cred` pointer, which every change of its ids
/// replaces (`commit_creds`): a direct load where the kernel gives a BTF
/// task pointer.
#[inline(always)]
pub(crate) fn current_cred<const SINCE_5_17: bool>() -> (u64, u64) {
    if SINCE_5_17 {
        let task = current_task();
        let at = offset!(task_cred) as usize;
        // SAFETY: `task_struct.cred`, at its BTF offset: a direct load the
        // verifier checks against the kernel's BTF.
        let cred = unsafe { core::ptr::read_volatile(task.add(at) as *const *const u8) };
        (task as u64, cred as u64)
    } else {
        // SAFETY: no arguments; the current task.
        let task = unsafe { bpf_get_current_task() };
        (task, read_kernel(task, offset!(task_cred)).unwrap_or(0))
    }
}
