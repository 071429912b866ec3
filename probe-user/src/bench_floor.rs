//! `mmapwatch bench-floor` (hidden): empty programs on the attach points of
//! mmapwatch's fault path, until SIGINT or SIGTERM. `cargo xtask bench`
//! measures the cost of any program there with it, the floor mmapwatch's
//! own cost is compared with.

use anyhow::Context as _;
use aya::{programs::RawTracePoint, EbpfLoader};
use probe_common::mw_name;
use tokio::signal::unix::SignalKind;

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
    eprintln!(
        "mmapwatch: floor attached (empty programs on page_fault_user, writeback_dirty_folio)"
    );
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(0)
}
