//! `mmapwatch bench-floor` (hidden): empty programs on the attach points of
//! mmapwatch's fault path, until SIGINT or SIGTERM. `cargo xtask bench`
//! measures the cost of any program there with it, the floor mmapwatch's
//! own cost is compared with.

use crate::session::StopSignals;
use anyhow::Context as _;
use aya::{programs::RawTracePoint, EbpfLoader};
use probe_common::mw_name;

use crate::probe::load::PROBES_OBJECT;

/// (program, raw tracepoint): the fault path's attach points.
const FLOOR_PROGRAMS: [(&str, &str); 2] = [
    (mw_name!("floor_page_fault_user"), "page_fault_user"),
    (
        mw_name!("floor_writeback_dirty_folio"),
        "writeback_dirty_folio",
    ),
];

pub async fn run() -> anyhow::Result<u8> {
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .load(PROBES_OBJECT)
        .context("loading the eBPF object")?;
    for (name, tracepoint) in FLOOR_PROGRAMS {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(tracepoint)
            .with_context(|| format!("attaching {name}"))?;
    }
    // Handlers before the line a caller waits for.
    let mut stop_signals = StopSignals::install()?;
    eprintln!(
        "mmapwatch: floor attached (empty programs on page_fault_user, writeback_dirty_folio)"
    );
    stop_signals.recv().await;
    Ok(0)
}
