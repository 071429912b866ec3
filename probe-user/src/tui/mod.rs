//! `mmapwatch top`: a live dashboard of files modified through mmap.
//!
//! Elm style: [`app::App`] is the model, [`app::Message`] the only way it
//! changes ([`app::update`]), and [`view::render`] draws it. This module is
//! the loop that turns probe data, keys and ticks into messages.

pub mod app;
pub mod batch;
pub mod processes;
pub mod snapshot;
pub mod view;
mod view_call_sites;
mod view_processes;

use std::time::Instant;

use anyhow::Context as _;
use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt as _;

use self::{
    app::{update, Action, App, Info, Message, SnapshotMessage},
    snapshot::Snapshot,
};
use crate::{
    cli::{KernelPaths, TopArgs},
    model::{clock::boot_ns, events::FileId, paths::MountTable, report_filter::ReportFilter},
    output_file::{open_named, PrivateLog},
    session::{exit_code_of, ticker, Activity, Session, SessionOptions, StopSignals},
    trace::final_report::{end_recording, start_recording},
};

/// Filesystems without writeback: their pages are never "written back".
pub fn has_writeback(mounts: &MountTable, file: FileId) -> bool {
    crate::model::paths::fs_has_writeback(mounts.fs_type(file))
}

/// Files named afresh at each refresh: the most recently active, more
/// than a screen or a batch table shows.
const NAMED_EACH_TICK: usize = 256;

/// The snapshot of what the report filter keeps.
/// The file's size in pages, from its name now (one stat, for the file
/// whose detail is shown): its heatmap covers the whole file.
fn file_pages(record: &crate::model::file_record::FileRecord) -> Option<u64> {
    let path = record.path.as_deref()?;
    let size = std::fs::metadata(path).ok()?.len();
    Some(size.div_ceil(probe_common::PAGE_SIZE))
}

pub fn snapshot(
    session: &Session,
    filter: &ReportFilter,
    selected: Option<FileId>,
    now_boot_ns: u64,
) -> Snapshot {
    let mounts = session.collector.mounts();
    let mut snapshot = Snapshot::build(
        &session.collector.aggregate,
        selected,
        session.counters,
        now_boot_ns,
        &|record| filter.keeps(record),
        &|file| has_writeback(mounts, file),
        &file_pages,
    );
    snapshot.lost_events += session.collector.undecodable;
    if let Some(detail) = snapshot.detail.as_mut() {
        let id = detail.row.id;
        detail.not_on_disk = session
            .collector
            .aggregate
            .file(&id)
            .and_then(|record| session.collector.pages_not_on_disk(id, record).ok());
        detail.call_sites = session
            .collector
            .stacks
            .as_ref()
            .map(|stacks| stacks.borrow_mut().named_sites(&id, DETAIL_CALL_SITES));
    }
    snapshot
}

/// Call sites the detail view lists (`--stacks`).
const DETAIL_CALL_SITES: usize = 4;

/// Runs `top`; returns the traced command's exit code, or 0.
pub async fn run(kernel: &KernelPaths, args: TopArgs) -> anyhow::Result<u8> {
    use std::io::IsTerminal as _;
    if !args.batch && (!std::io::stdin().is_terminal() || !std::io::stdout().is_terminal()) {
        return Err(crate::error::UserError::Usage(
            "top draws on a terminal: run it in one, or use --batch for plain text".into(),
        )
        .into());
    }
    crate::probe::env::check_privileges()?;
    // CMD's output would draw over the dashboard, or mix into the batch
    // tables: it goes to a file, named on stderr. Unnamed, a new private
    // one (never a predictable name in the shared temporary directory).
    let command_log = if args.command.is_empty() {
        None
    } else {
        Some(match &args.cmd_output {
            Some(path) => CommandLog::Named(
                open_named(path).context("cannot write CMD's output")?,
                path.clone(),
            ),
            None => CommandLog::Private(
                PrivateLog::create("mmapwatch-top-")
                    .context("cannot create a file for CMD's output")?,
            ),
        })
    };
    let options = SessionOptions {
        kernel: kernel.clone(),
        filter: args.filter.clone(),
        // The COW column needs COW pages; COW-only files stay hidden
        // without --include-cow.
        include_cow: true,
        command: args.command.clone(),
        command_output: command_log.as_ref().map(CommandLog::handle).transpose()?,
        retain: Some(args.retain),
        // The processes view marks exited writers.
        report_writer_exits: true,
        stacks: args.stacks,
    };
    // Load before taking over the terminal: errors print as one plain line.
    let mut session = Session::start(&options)?;
    if let (Some(log), true) = (&command_log, args.batch) {
        eprintln!("mmapwatch: CMD's output goes to {}", log.path().display());
    }
    let filter = ReportFilter::new(args.include_cow, &args.filter.path_prefixes);
    let recording = args
        .record
        .as_deref()
        .map(|path| start_recording(path, &mut session, &filter))
        .transpose()?;
    let result = if args.batch {
        batch::run(&mut session, &filter, &args).await
    } else {
        // ratatui::init restores the terminal on panic too.
        let mut terminal = ratatui::init();
        let result = event_loop(&mut terminal, &mut session, &filter, &args).await;
        ratatui::restore();
        result
    };
    if let Some(path) = command_log.and_then(CommandLog::finish) {
        eprintln!("mmapwatch: CMD's output is in {}", path.display());
    }
    if let Some(recording) = &recording {
        end_recording(recording, &mut session, &filter)?;
    }
    result
}

/// Where `top -- CMD` sends CMD's stdout and stderr.
enum CommandLog {
    /// `--cmd-output FILE`: the user's, kept.
    Named(std::fs::File, std::path::PathBuf),
    /// Nothing named: a private file, removed at the end if CMD said nothing.
    Private(PrivateLog),
}

impl CommandLog {
    fn handle(&self) -> anyhow::Result<std::fs::File> {
        match self {
            CommandLog::Named(file, _) => file.try_clone(),
            CommandLog::Private(log) => log.handle(),
        }
        .context("sharing CMD's output file")
    }

    fn path(&self) -> &std::path::Path {
        match self {
            CommandLog::Named(_, path) => path,
            CommandLog::Private(log) => log.path(),
        }
    }

    /// The file to name at the end, if one is left.
    fn finish(self) -> Option<std::path::PathBuf> {
        match self {
            CommandLog::Named(_, path) => Some(path),
            CommandLog::Private(log) => log.keep_if_written(),
        }
    }
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    session: &mut Session,
    filter: &ReportFilter,
    args: &TopArgs,
) -> anyhow::Result<u8> {
    let mut app = new_app(session, args);
    let mut keys = EventStream::new();
    let mut ticker = Ticker::new(args)?;
    let mut exit_code = 0;

    loop {
        let mut redraw = true;
        tokio::select! {
            activity = session.next_activity() => {
                match activity.context("tracing")? {
                    Activity::CommandExited(status) => {
                        exit_code = exit_code_of(status);
                        update(&mut app, Message::CommandExited(exit_code));
                    }
                    // The screen changes on ticks, not on every record;
                    // with its --pid targets gone it keeps what they wrote.
                    Activity::Events(_) | Activity::TargetsExited => redraw = false,
                }
            }
            _ = ticker.tick.tick() => {
                ticker.take_snapshot(&mut app, session, filter)?;
            }
            event = keys.next() => match event {
                Some(Ok(TermEvent::Key(key))) => match update(&mut app, Message::Key(key)) {
                    Action::Quit => break,
                    Action::LoadDetail => {
                        let snapshot = snapshot(session, filter, app.detail_target(), boot_ns());
                        update(&mut app, Message::Detail(Box::new(snapshot.detail)));
                    }
                    Action::None => {}
                },
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err).context("reading the terminal"),
                None => break,
            },
            _ = ticker.stop_signals.recv() => break,
        }
        if redraw {
            terminal
                .draw(|frame| view::render(&app, frame))
                .context("drawing")?;
        }
    }
    Ok(exit_code)
}

fn new_app(session: &Session, args: &TopArgs) -> App {
    App::new(Info {
        backend: session.backend().to_string(),
        interval_ms: args.interval.as_millis() as u64,
    })
}

/// What the dashboard and batch mode both run on: the refresh interval and
/// the signals that end them.
struct Ticker {
    tick: tokio::time::Interval,
    last_tick: Instant,
    stop_signals: StopSignals,
}

impl Ticker {
    fn new(args: &TopArgs) -> anyhow::Result<Self> {
        Ok(Self {
            tick: ticker(args.interval),
            last_tick: Instant::now(),
            stop_signals: StopSignals::install()?,
        })
    }

    /// Reads the kernel's counts and gives the model a snapshot of the
    /// interval since the last one; returns that interval in seconds.
    fn take_snapshot(
        &mut self,
        app: &mut App,
        session: &mut Session,
        filter: &ReportFilter,
    ) -> anyhow::Result<f64> {
        session.refresh()?;
        // A file renamed (or deleted) since it was written is shown as it
        // is now.
        session.collector.name_recent_files_now(NAMED_EACH_TICK);
        let interval_s = self.last_tick.elapsed().as_secs_f64();
        self.last_tick = Instant::now();
        let snapshot = snapshot(session, filter, app.detail_target(), boot_ns());
        update(
            app,
            Message::Tick(Box::new(SnapshotMessage {
                snapshot,
                interval_s,
            })),
        );
        Ok(interval_s)
    }
}
