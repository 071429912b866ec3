//! Empty programs on the fault path's attach points (`mmapwatch
//! bench-floor`): the least any program there costs.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

/// `mmapwatch bench-floor`: empty programs on the fault path's attach
/// points, the floor `cargo xtask bench` compares mmapwatch's cost with.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn mw_floor_page_fault_user(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn mw_floor_writeback_dirty_folio(_ctx: RawTracePointContext) -> i32 {
    0
}
