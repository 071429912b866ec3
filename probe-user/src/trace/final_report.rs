//! The report at the end of a session: `trace`'s, and the one a `--record`
//! of `top` or `export` ends with. What it asks the machine is kept with
//! its facts, so a recording replays into this very report.

use std::{cell::RefCell, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{
    model::{file_record::FileRecord, report_filter::ReportFilter},
    output_file::open_named,
    probe::maps::KernelCounters,
    session::{CgroupNames, Session},
    trace::{
        call_sites_report,
        json_lines::JsonLines,
        recording::{Answers, Lookups, Recording, ReportFacts, Start},
        report::{self, Report},
    },
};

/// Drains the ring, reads the counters, names every file as it is now and
/// builds the report of everything the session saw.
pub fn final_report(
    session: &mut Session,
    filter: &ReportFilter,
    cgroups: &RefCell<CgroupNames>,
) -> anyhow::Result<(Report, ReportFacts)> {
    let duration = session.started.elapsed();
    // Records submitted before the stop are still in the ring.
    session.drain_now();
    let counters = session.refresh().context("reading kernel counters")?;
    session.collector.name_files_now();
    let mut warnings = probes_warnings(&counters);
    warnings.extend(
        session
            .missing_tracepoints()
            .iter()
            .map(|tp| format!("tracepoint {tp} is absent on this kernel")),
    );
    let facts = ReportFacts {
        backend: session.backend().into(),
        backend_reason: session.backend_reason().into(),
        hooks: session.selection().hooks.clone(),
        fallbacks: session.selection().fallbacks.clone(),
        page_writeback: session.selection().page_writeback,
        duration_s: round_seconds(duration),
        counters,
        dedup_capacity: session.dedup_capacity(),
        undecodable_records: session.collector.undecodable,
        warnings,
        answers: Answers::live(),
    };
    let answers = &facts.answers;
    let mounts = session.collector.mounts();
    let fs_type = |file| answers.fs_type(file, || mounts.fs_type(file).map(str::to_string));
    let cgroup_path = |id| answers.cgroup_path(id, || cgroups.borrow_mut().path(id));
    let collector = &session.collector;
    let not_on_disk = |file, record: &FileRecord| {
        answers.not_on_disk(file, || collector.pages_not_on_disk(file, record))
    };
    let user_name = |uid| {
        answers.user_name(uid, || {
            crate::session::user_name(uid).map(|name| name.to_string())
        })
    };
    let mut report = report::build(
        &session.collector.aggregate,
        filter,
        facts.context(
            session.clock,
            Lookups {
                fs_type: &fs_type,
                cgroup_path: &cgroup_path,
                not_on_disk: &not_on_disk,
                user_name: &user_name,
            },
        ),
    );
    if let Some(stacks) = &session.collector.stacks {
        let mut stacks = stacks.borrow_mut();
        stacks.symbolize();
        call_sites_report::attach(&mut report, &stacks.call_sites);
    }
    Ok((report, facts))
}

/// Starts a recording of the session to `path` (see `recording`).
pub fn start_recording(
    path: &Path,
    session: &mut Session,
    filter: &ReportFilter,
) -> anyhow::Result<Recording> {
    let file = open_named(path).context("cannot write the recording")?;
    let start = Start {
        stacks: session.collector.stacks.is_some(),
        ..Start::new(session.clock, filter.include_cow, &filter.path_prefixes)
    };
    let recording = Recording::new(JsonLines::new(Box::new(file)), &start);
    session.collector.observe(Box::new(recording.tap()));
    Ok(recording)
}

/// Ends a `top` or `export` recording with the report the session would
/// give now (built for its answers, not printed).
pub fn end_recording(
    recording: &Recording,
    session: &mut Session,
    filter: &ReportFilter,
) -> anyhow::Result<()> {
    let cgroups = RefCell::new(CgroupNames::new(session.collector.mounts()));
    let (_, facts) = final_report(session, filter, &cgroups)?;
    finish_recording(recording, session, &facts)
}

/// Writes a recording's end: each file's state, the stacks its events
/// name (`--stacks`), the report's facts.
pub fn finish_recording(
    recording: &Recording,
    session: &Session,
    facts: &ReportFacts,
) -> anyhow::Result<()> {
    let stacks = session
        .collector
        .stacks
        .as_ref()
        .map(|stacks| stacks.borrow_mut().named_stacks())
        .unwrap_or_default();
    recording
        .finish(session.collector.aggregate.files(), &stacks, facts)
        .context("writing the recording")
}

fn round_seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn probes_warnings(counters: &KernelCounters) -> Vec<String> {
    let mut warnings = Vec::new();
    let refused = counters.kernel.dedup_insert_failed();
    if refused > 0 {
        warnings.push(format!(
            "the first-write dedup map refused {refused} insert(s); pages were still reported"
        ));
    }
    warnings
}
