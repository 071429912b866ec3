//! `top --batch`: the files view as plain text, one table per interval
//! (as `top -b` and `cachestat 1 5` print), for logs, pipes and machines
//! without a terminal. The same model as the dashboard: snapshots go
//! through `update`, rows come from the files view.

use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::SignalKind;

use super::{
    app::{update, App, FileLine, Info, Message, SnapshotMessage},
    snapshot,
};
use crate::{
    cli::TopArgs,
    model::{clock::boot_ns, report_filter::ReportFilter},
    session::{exit_code_of, Activity, Session},
};

/// Prints a table every interval until `--count` tables, CMD's exit,
/// or SIGINT/SIGTERM.
pub async fn run(
    session: &mut Session,
    filter: &ReportFilter,
    args: &TopArgs,
) -> anyhow::Result<u8> {
    let mut app = App::new(Info {
        backend: session.backend().to_string(),
        interval_ms: args.interval.as_millis() as u64,
    });
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: skip it, so that each table covers one
    // whole interval.
    tick.tick().await;
    let mut last_tick = Instant::now();
    let mut printed = 0u64;
    let mut exit_code = 0;
    loop {
        tokio::select! {
            activity = session.next_activity() => {
                if let Activity::CommandExited(status) = activity.context("tracing")? {
                    exit_code = exit_code_of(status);
                    break;
                }
            }
            _ = tick.tick() => {
                session.refresh()?;
                let interval_s = last_tick.elapsed().as_secs_f64();
                last_tick = Instant::now();
                let snapshot = snapshot(session, filter, None, boot_ns());
                update(&mut app, Message::Tick(Box::new(SnapshotMessage { snapshot, interval_s })));
                print!("{}", table(&app, interval_s));
                printed += 1;
                if args.count.is_some_and(|count| printed >= count) {
                    return Ok(exit_code);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // What the last partial interval saw.
    session.drain_now();
    session.refresh()?;
    let interval_s = last_tick.elapsed().as_secs_f64();
    let snapshot = snapshot(session, filter, None, boot_ns());
    update(
        &mut app,
        Message::Tick(Box::new(SnapshotMessage {
            snapshot,
            interval_s,
        })),
    );
    print!("{}", table(&app, interval_s));
    Ok(exit_code)
}

/// One interval's table: a heading line, then a row per file, numbers
/// right-aligned (zeros shown).
pub fn table(app: &App, interval_s: f64) -> String {
    let rows = app.visible_files();
    let mut out = format!(
        "mmapwatch top: {} file(s), {} event(s), lost {}, interval {interval_s:.1}s, backend {}\n",
        rows.len(),
        app.events,
        app.lost_events,
        app.info.backend
    );
    out.push_str(&format!(
        "{:>8} {:>8} {:>10} {:>6} {:>7} {:>9}  PATH\n",
        "PAGES", "+PAGES", "FAULTS/S", "COW", "WRITERS", "WRITEBACK"
    ));
    for FileLine {
        row,
        pages_interval,
        faults_per_sec,
    } in rows
    {
        out.push_str(&format!(
            "{:>8} {:>8} {:>10.1} {:>6} {:>7} {:>9}  {}\n",
            row.pages,
            pages_interval,
            faults_per_sec,
            row.cow_pages,
            row.writers,
            row.writeback.label(),
            row.path
        ));
    }
    out.push('\n');
    out
}
