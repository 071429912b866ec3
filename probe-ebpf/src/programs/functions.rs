//! The fentry and kprobe backends: the kernel's fault functions hand
//! over the `struct vm_fault` of each write fault.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_get_func_ip},
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
    EbpfContext,
};
use probe_common::{hooks, Credentials, RecordKind, NO_STACK, TASK_COMM_LEN, VM_SHARED, VM_WRITE};

use crate::{
    filter::{current_writer, selected_current_task},
    kernel::{folio_pages, inode_key, read_kernel},
    maps::{count_failure, FILE_STATS, HOOKS, PAGE_MKWRITE},
    record::{header, record_write, submit_page_event},
    scratch::fault_scratch,
    stacks::CallSite,
    vma::fill_vma_info,
};

// ---- Function hooks: the fentry and kprobe backends ----
//
// Each write fault is recorded by exactly one of them: `do_wp_page` for a
// present page (shared writes; private ones too unless `wp_page_copy` is
// attached), `finish_fault` for a page not yet mapped (its vm_fault carries
// FAULT_FLAG_WRITE), `wp_page_copy` for private copies of present pages.
// The mkwrite and writeback hooks only add what the fault hooks cannot see.

/// The fault hook a program stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultHook {
    WpPage,
    FinishFault,
    WpPageCopy,
}

/// Argument `index` of an fentry program, as a plain number. fentry
/// arguments are typed pointers to the verifier, which refuses offsets
/// known only at load time on them; a probe read yields an untyped copy.
#[inline(always)]
pub(crate) fn fentry_arg(ctx: &FEntryContext, index: u64) -> Result<u64, i64> {
    read_kernel::<u64>(ctx.as_ptr() as u64, index * 8)
}

pub(crate) fn try_vmf_write<const TAKE_STACKS: bool>(
    site: CallSite<TAKE_STACKS>,
    vmf: u64,
    hook: FaultHook,
) -> Result<(), i64> {
    if hook == FaultHook::FinishFault {
        let flags: u32 = read_kernel(vmf, offset!(vmf_flags))?;
        if u64::from(flags) & offset!(fault_flag_write) == 0 {
            return Ok(());
        }
    }
    let scratch = fault_scratch()?;
    let vma: u64 = read_kernel(vmf, offset!(vmf_vma))?;
    fill_vma_info(vma, &mut scratch.info)?;
    // Anonymous memory or a refused store: no more work.
    if scratch.info.file == 0 || scratch.info.flags & VM_WRITE == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // The mapping's mm, which exec replaces (0 where its offset is unknown).
    let mm = if has_offsets!(VMA_MM) {
        read_kernel::<u64>(vma, offset!(vma_vm_mm)).unwrap_or(0)
    } else {
        0
    };
    let Some(now) = current_writer::<false>(pid_tgid, mm, scratch)? else {
        return Ok(());
    };
    let shared = scratch.info.flags & VM_SHARED != 0;
    let cow_at_copy = HOOKS
        .get(0)
        .is_some_and(|bits| bits & hooks::COW_AT_WP_PAGE_COPY != 0);
    match hook {
        FaultHook::WpPage if !shared && cow_at_copy => return Ok(()),
        FaultHook::WpPageCopy if shared => return Ok(()),
        _ => {}
    }
    scratch.fault.pid_tgid = pid_tgid;
    scratch.fault.now = now;
    scratch.fault.address = read_kernel(vmf, offset!(vmf_address))?;
    // The kernel's own page index for this fault (linear_page_index).
    scratch.fault.page = read_kernel(vmf, offset!(vmf_pgoff))?;
    // finish_fault maps a page that was not mapped, and may map the whole
    // large folio around it.
    scratch.fault.not_present = u64::from(hook == FaultHook::FinishFault);
    record_write(site, scratch);
    Ok(())
}

/// Remembers which `->page_mkwrite` the file's filesystem runs: `hook_fn`
/// when the program sits on that function itself, else the mapping's
/// `vm_ops->page_mkwrite` (the program is on `do_page_mkwrite`).
pub(crate) fn try_page_mkwrite(vmf: u64, hook_fn: u64) -> Result<(), i64> {
    let mut comm = [0u8; TASK_COMM_LEN];
    if !selected_current_task(bpf_get_current_pid_tgid(), &mut comm)? {
        return Ok(());
    }
    let vma: u64 = read_kernel(vmf, offset!(vmf_vma))?;
    let file: u64 = read_kernel(vma, offset!(vma_vm_file))?;
    if file == 0 {
        return Ok(());
    }
    let inode: u64 = read_kernel(file, offset!(file_f_inode))?;
    let (key, _) = inode_key(inode)?;
    // SAFETY: read-only lookup of a plain u64 value.
    if unsafe { PAGE_MKWRITE.get(&key) }.is_some() {
        return Ok(());
    }
    let function = if hook_fn != 0 {
        hook_fn
    } else {
        let ops: u64 = read_kernel(vma, offset!(vma_vm_ops))?;
        read_kernel(ops, offset!(vm_ops_page_mkwrite))?
    };
    PAGE_MKWRITE
        .insert(&key, &function, 0)
        .map_err(|err| err as i64)
}

/// A folio finished writeback: its pages' writeback time, for files already
/// seen. Runs at I/O completion, often in interrupt context: no task
/// filters apply, only the file's.
pub(crate) fn try_folio_written_back(folio: u64) -> Result<(), i64> {
    let mapping: u64 = read_kernel(folio, offset!(folio_mapping))?;
    // Anonymous (swap) and movable folios tag the pointer's low bits.
    if mapping == 0 || mapping & 3 != 0 {
        return Ok(());
    }
    let host: u64 = read_kernel(mapping, offset!(mapping_host))?;
    let (key, _) = inode_key(host)?;
    if FILE_STATS.get_ptr(&key).is_none() {
        return Ok(());
    }
    let index: u64 = read_kernel(folio, offset!(folio_index))?;
    let pages = folio_pages(folio)?;
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let header = header(
        RecordKind::PagesWrittenBack,
        bpf_get_current_pid_tgid(),
        &key,
        now,
        &[0; TASK_COMM_LEN],
        &Credentials::UNKNOWN,
    );
    submit_page_event(
        &header,
        RecordKind::PagesWrittenBack,
        index,
        pages,
        NO_STACK,
    );
    Ok(())
}

/// The function a kprobe or fentry program is attached to.
#[inline(always)]
pub(crate) fn attached_function<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the context pointer of a tracing or kprobe program.
    unsafe { bpf_get_func_ip(ctx.as_ptr()) }
}

/// The write-fault hooks, each with its twin taking call-site stacks
/// (`--stacks`; see `stacks`), for fentry and for kprobes. An fentry
/// program's target is given when it loads (the backend's hook table): the
/// `function` here only names the section, as in `fentry_fs_mkwrite`.
macro_rules! fault_hooks {
    ($($hook:ident: $fentry:ident, $fentry_stacks:ident, $kprobe:ident, $kprobe_stacks:ident;)*) => {$(
        #[fentry(function = "do_wp_page")]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            fentry_fault::<false>(&ctx, FaultHook::$hook)
        }

        #[fentry(function = "do_wp_page")]
        pub fn $fentry_stacks(ctx: FEntryContext) -> u32 {
            fentry_fault::<true>(&ctx, FaultHook::$hook)
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            kprobe_fault::<false>(&ctx, FaultHook::$hook)
        }

        #[kprobe]
        pub fn $kprobe_stacks(ctx: ProbeContext) -> u32 {
            kprobe_fault::<true>(&ctx, FaultHook::$hook)
        }
    )*};
}
fault_hooks! {
    WpPage: mw_fentry_do_wp_page, mw_fentry_do_wp_page_stacks,
        mw_kprobe_do_wp_page, mw_kprobe_do_wp_page_stacks;
    FinishFault: mw_fentry_finish_fault, mw_fentry_finish_fault_stacks,
        mw_kprobe_finish_fault, mw_kprobe_finish_fault_stacks;
    WpPageCopy: mw_fentry_wp_page_copy, mw_fentry_wp_page_copy_stacks,
        mw_kprobe_wp_page_copy, mw_kprobe_wp_page_copy_stacks;
}

#[inline(always)]
fn fentry_fault<const TAKE_STACKS: bool>(ctx: &FEntryContext, hook: FaultHook) -> u32 {
    let site = CallSite::<TAKE_STACKS>::of(ctx);
    count_failure(fentry_arg(ctx, 0).and_then(|vmf| try_vmf_write(site, vmf, hook)));
    0
}

#[inline(always)]
fn kprobe_fault<const TAKE_STACKS: bool>(ctx: &ProbeContext, hook: FaultHook) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        count_failure(try_vmf_write(CallSite::<TAKE_STACKS>::of(ctx), vmf, hook));
    }
    0
}

#[fentry(function = "do_page_mkwrite")]
pub fn mw_fentry_do_page_mkwrite(ctx: FEntryContext) -> u32 {
    count_failure(fentry_arg(&ctx, 0).and_then(|vmf| try_page_mkwrite(vmf, 0)));
    0
}

// Where do_page_mkwrite is inlined, the filesystems' own hooks. An fentry
// program is bound to one function when it loads, so there is one program
// per hook (the loader picks the targets present in BTF).
macro_rules! fentry_fs_mkwrite {
    ($($name:ident),*) => {$(
        #[fentry(function = "filemap_page_mkwrite")]
        pub fn $name(ctx: FEntryContext) -> u32 {
            count_failure(
                fentry_arg(&ctx, 0).and_then(|vmf| try_page_mkwrite(vmf, attached_function(&ctx))),
            );
            0
        }
    )*};
}
fentry_fs_mkwrite!(
    mw_fentry_fs_mkwrite_0,
    mw_fentry_fs_mkwrite_1,
    mw_fentry_fs_mkwrite_2,
    mw_fentry_fs_mkwrite_3
);

#[fentry(function = "folio_end_writeback")]
pub fn mw_fentry_folio_end_writeback(ctx: FEntryContext) -> u32 {
    count_failure(fentry_arg(&ctx, 0).and_then(try_folio_written_back));
    0
}

#[kprobe]
pub fn mw_kprobe_do_page_mkwrite(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        count_failure(try_page_mkwrite(vmf, 0));
    }
    0
}

/// One program, attached to each filesystem hook present; the probed
/// address tells them apart.
#[kprobe]
pub fn mw_kprobe_fs_mkwrite(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        count_failure(try_page_mkwrite(vmf, attached_function(&ctx)));
    }
    0
}

#[kprobe]
pub fn mw_kprobe_folio_end_writeback(ctx: ProbeContext) -> u32 {
    if let Some(folio) = ctx.arg::<u64>(0) {
        count_failure(try_folio_written_back(folio));
    }
    0
}
