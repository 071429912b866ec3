//! mmapwatch's eBPF programs, for three backends that share maps and records.
//!
//! - tracepoint: write faults are seen at `exceptions:page_fault_{user,kernel}`
//!   and their mapping is found by walking the mm's maple tree.
//! - fentry and kprobe: the kernel's own fault functions hand over the
//!   `struct vm_fault`: `do_wp_page` (a write to a present, write-protected
//!   page), `finish_fault` (a first write to a page not yet mapped),
//!   `wp_page_copy` (a private copy), `do_page_mkwrite` or the filesystem's
//!   `->page_mkwrite` (which hook the filesystem runs), and
//!   `folio_end_writeback` (per-page writeback times).
//!
//! Either way a file-backed `VM_SHARED` mapping is a write to the file, a
//! private one is copy-on-write. The first write to each (file, page) goes to
//! userspace through a ring buffer; per-file counters stay in a hash map. Writeback tracepoints add dirtying and writeback counts to files
//! already seen.
//!
//! The data path, one module each:
//! - `programs/`: the entry points, one file per family (faults, writeback,
//!   processes, function hooks, the benchmark's empty floor);
//! - `filter` (is this task traced?), `vma` (which mapping holds the
//!   address?), `folio` (how many pages does the fault map writable?);
//! - `record` (the records a fault sends), `dedup` (first writes only),
//!   `stats` (per-file and per-writer counts);
//! - `maps`, `scratch` (per-CPU working memory), `kernel` (kernel reads).
#![no_std]
#![no_main]
// BPF has an atomic add but no compare-and-swap before cpu v3, so
// `core::sync::atomic` offers it no `fetch_add`: the intrinsic does
// (`stats::add_shared`).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// aya-ebpf's map methods take keys and values as `impl Borrow`: a
// reference passes a pointer to the caller's copy instead of moving another
// copy onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use probe_common::{KernelOffsets, ProbeConfig};

/// Field offsets resolved from vmlinux BTF by userspace.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZEROED;

/// Filters and options set by userspace.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::ZEROED;

/// A field of [`CONFIG`]. Defined before the modules, which use it.
macro_rules! config {
    ($field:ident) => {
        // SAFETY: a read of a global that the loader fills in and freezes.
        unsafe { core::ptr::read_volatile(&$crate::CONFIG.$field) }
    };
}

/// A field of [`OFFSETS`], as a u64. Known to the verifier as a constant
/// (the .rodata map is frozen), so it may be added to typed pointers.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of a global that the loader fills in and freezes.
        unsafe { core::ptr::read_volatile(&$crate::OFFSETS.$field) } as u64
    };
}

/// Whether this kernel has an optional group of offsets
/// (`probe_common::present`); an absent group's offsets are never read.
macro_rules! has_offsets {
    ($group:ident) => {
        // SAFETY: a read of a global that the loader fills in and freezes.
        (unsafe { core::ptr::read_volatile(&$crate::OFFSETS.present) }
            & probe_common::present::$group)
            != 0
    };
}

mod compat;
mod dedup;
mod filter;
mod folio;
mod kernel;
mod maps;
mod programs;
mod record;
mod scratch;
mod stacks;
mod stats;
mod vma;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
