//! `top --batch`: the files view as plain text, one table per interval
//! (as `top -b` and `cachestat 1 5` print), for logs, pipes and machines
//! without a terminal. The same model as the dashboard: snapshots go
//! through `update`, rows come from the files view.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Instant, SystemTime},
};

use anyhow::Context as _;

use super::{
    app::{App, FileLine},
    new_app,
    snapshot::FOLDED_WRITERS_TGID,
    Ticker,
};
use crate::{
    cli::TopArgs,
    model::report_filter::ReportFilter,
    session::{exit_code_of, Activity, Session},
};

/// Prints a table every interval until `--count` tables, CMD's exit,
/// or SIGINT/SIGTERM.
pub async fn run(
    session: &mut Session,
    filter: &ReportFilter,
    args: &TopArgs,
) -> anyhow::Result<u8> {
    let mut app = new_app(session, args);
    let mut ticker = Ticker::new(args)?;
    // The first tick is immediate: skip it, so that each table covers one
    // whole interval.
    ticker.tick.tick().await;
    ticker.last_tick = Instant::now();
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
            _ = ticker.tick.tick() => {
                let interval_s = ticker.take_snapshot(&mut app, session, filter)?;
                if !emit(&table(&app, interval_s, SystemTime::now(), args.timestamps))? {
                    return Ok(exit_code);
                }
                printed += 1;
                if args.count.is_some_and(|count| printed >= count) {
                    return Ok(exit_code);
                }
            }
            _ = ticker.stop_signals.recv() => break,
        }
    }
    // What the last partial interval saw.
    session.drain_now();
    let interval_s = ticker.take_snapshot(&mut app, session, filter)?;
    emit(&table(&app, interval_s, SystemTime::now(), args.timestamps))?;
    Ok(exit_code)
}

/// Writes a table to standard output; false once no one reads it (`| head`
/// closed the pipe): the run then ends quietly, as `top -b | head` does.
fn emit(table: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(table.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("writing to standard output"),
    }
}

/// One interval's table: a heading line with the time (UTC, as logs
/// want it), then a row per file, numbers right-aligned (zeros shown);
/// with `timestamps`, the time starts every row too.
pub fn table(app: &App, interval_s: f64, now: SystemTime, timestamps: bool) -> String {
    let rows = app.visible_files();
    let time = humantime::format_rfc3339_seconds(now).to_string();
    let time_column = |text: &str| {
        if timestamps {
            format!("{text:<20} ")
        } else {
            String::new()
        }
    };
    let mut out = format!(
        "mmapwatch top: {time}, {} file(s), {} event(s), lost {}, interval {interval_s:.1}s, backend {}\n",
        rows.len(),
        app.events,
        app.lost_events,
        app.info.backend
    );
    out.push_str(&time_column("TIME"));
    out.push_str(&format!(
        "{:>8} {:>8} {:>10} {:>6} {:>7} {:>6} {:>9}  {:<24}  PATH\n",
        "PAGES", "+PAGES", "FAULTS/S", "COW", "WRITERS", "SYNCS", "WRITEBACK", "BY"
    ));
    let comms: HashMap<u32, (&str, &str)> = app
        .processes
        .visible()
        .map(|process| (process.tgid, (process.comm.as_str(), process.user.as_str())))
        .collect();
    for FileLine {
        row,
        pages_interval,
        faults_per_sec,
    } in rows
    {
        out.push_str(&time_column(&time));
        out.push_str(&format!(
            "{:>8} {:>8} {:>10.1} {:>6} {:>7} {:>6} {:>9}  {:<24}  {}\n",
            row.marks.token(),
            pages_interval,
            faults_per_sec,
            row.cow_pages,
            row.writers,
            row.syncs,
            row.writeback.label(),
            writers_by_name(&row.writer_tgids, &comms),
            row.path
        ));
    }
    out.push('\n');
    out
}

/// Writers shown by name in a table row: the first few (lowest pids).
const NAMED_WRITERS: usize = 3;

/// `postgres[42](postgres),pg_dump[77](alice)+2`: each writer with its
/// user, as one token (spaces as `_`), so the columns split on whitespace;
/// folded writers count in the `+N`.
fn writers_by_name(tgids: &[u32], comms: &HashMap<u32, (&str, &str)>) -> String {
    let named: Vec<String> = tgids
        .iter()
        .filter(|&&tgid| tgid != FOLDED_WRITERS_TGID)
        .take(NAMED_WRITERS)
        .map(|tgid| {
            let (comm, user) = comms.get(tgid).copied().unwrap_or(("?", "?"));
            let (comm, user) = (comm.replace(' ', "_"), user.replace(' ', "_"));
            format!("{comm}[{tgid}]({user})")
        })
        .collect();
    let rest = tgids.len() - named.len();
    let mut text = named.join(",");
    if rest > 0 {
        text.push_str(&format!("+{rest}"));
    }
    if text.is_empty() {
        text.push('-');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_its_first_writers_and_counts_the_rest() {
        let comms = HashMap::from([
            (7, ("sh", "root")),
            (42, ("Web Content", "alice")),
            (99, ("python3", "100000,bob")),
            (100, ("ld", "root")),
        ]);
        assert_eq!(writers_by_name(&[7], &comms), "sh[7](root)");
        assert_eq!(
            writers_by_name(&[7, 42, 99, 100], &comms),
            "sh[7](root),Web_Content[42](alice),python3[99](100000,bob)+1"
        );
        // Folded writers have no name: counted in the rest.
        assert_eq!(
            writers_by_name(&[7, FOLDED_WRITERS_TGID], &comms),
            "sh[7](root)+1"
        );
        assert_eq!(writers_by_name(&[], &comms), "-");
    }
}
