//! `mmapwatch trace`: attach, collect until the end condition, report once.

use std::{cell::RefCell, collections::HashSet, process::ExitStatus, rc::Rc, time::Duration};

use anyhow::Context as _;
use probe_common::CounterRole;

use crate::{
    cli::{EventsFormat, KernelPaths, TraceArgs},
    error::UserError,
    output_file::open_named,
};

pub mod call_sites_report;
pub mod events;
pub mod final_report;
pub mod json_lines;
pub mod recording;
pub mod replay;
pub mod report;
pub mod stream_replay;
pub mod table;

use events::EventStream;
use final_report::{final_report, finish_recording, start_recording};
use json_lines::JsonLines;

use crate::{
    model::{aggregate::Applied, events::Event, file_record::FileRecord},
    session::{
        exit_code_of, report_filter, ticker, Activity, CgroupNames, EventObserver, Session,
        SessionOptions, StopSignals,
    },
};

const REFRESH_EVERY: Duration = Duration::from_secs(1);

enum Stop {
    Duration,
    Signal(&'static str),
    CommandExited(ExitStatus),
    /// Every `--pid` target exited.
    TargetsExited,
}

/// Runs `trace`; returns the process exit code.
pub async fn run(kernel: &KernelPaths, args: TraceArgs) -> anyhow::Result<u8> {
    crate::probe::env::check_privileges()?;
    let events_to_stdout = args.events.as_deref() == Some(std::path::Path::new("-"));
    let options = SessionOptions {
        kernel: kernel.clone(),
        filter: args.filter.clone(),
        include_cow: args.include_cow,
        command: args.command.clone(),
        // trace -o keeps the report apart; CMD's output stays the user's,
        // except that a stream on stdout carries nothing else.
        command_output: if events_to_stdout {
            Some(stderr_file()?)
        } else {
            None
        },
        retain: None,
        report_writer_exits: true,
        stacks: args.stacks,
    };
    // Opened first: a path that cannot be written fails before CMD runs.
    let report_to = ReportTo::choose(&args, events_to_stdout)?;
    let event_lines = match &args.events {
        Some(_) if events_to_stdout => Some(JsonLines::new(Box::new(std::io::stdout()))),
        Some(path) => Some(JsonLines::new(Box::new(
            open_named(path).context("cannot write events")?,
        ))),
        None => None,
    };
    let mut session = Session::start(&options)?;
    let recording = args
        .record
        .as_deref()
        .map(|path| start_recording(path, &mut session, &report_filter(&options)))
        .transpose()?;
    // Named at event time for the stream (while cgroups live), and again
    // from the same cache for the report.
    let cgroups = Rc::new(RefCell::new(CgroupNames::new(session.collector.mounts())));
    session.collector.observe(Box::new(CgroupsWhileTheyLive {
        cgroups: cgroups.clone(),
        asked: HashSet::new(),
    }));
    if let Some(lines) = &event_lines {
        let text = args.events_format == EventsFormat::Text;
        if text {
            lines.write_text(events::TEXT_HEADER);
        }
        session.collector.observe(Box::new(EventStream {
            lines: lines.clone(),
            text,
            filter: report_filter(&options),
            clock: session.clock,
            cgroups: cgroups.clone(),
            stacks: session.collector.stacks.clone(),
            stacks_written: HashSet::new(),
        }));
    }
    // Handlers first: whoever reads "tracing" may signal at once.
    let mut stop_signals = StopSignals::install()?;
    if !session.has_command() {
        announce(&session, &args);
    }
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    // Kernel counters are read each second, not only at the end: idle
    // files' entries then leave the kernel's per-file map before it fills.
    let mut refresh = ticker(REFRESH_EVERY);
    let stop = loop {
        tokio::select! {
            _ = refresh.tick() => {
                session.refresh().context("reading kernel counters")?;
            }
            activity = session.next_activity() => {
                match activity.context("tracing")? {
                    Activity::CommandExited(status) => break Stop::CommandExited(status),
                    Activity::TargetsExited => break Stop::TargetsExited,
                    Activity::Events(_) => {
                        if let Some(lines) = &event_lines {
                            lines.flush();
                        }
                    }
                }
            }
            _ = sleep_until(deadline) => break Stop::Duration,
            name = stop_signals.recv() => break Stop::Signal(name),
        }
    };
    if let Stop::Signal(name) = &stop {
        log::info!("stopped by {name}");
    }
    let (report, facts) = final_report(&mut session, &report_filter(&options), &cgroups)?;
    if let Some(recording) = &recording {
        finish_recording(recording, &session, &facts)?;
    }
    if let Some(lines) = &event_lines {
        lines.finish().context("writing the event stream")?;
    }
    drop(session);
    let text = report::render(&report, args.json)?;
    report_to.write(&text)?;
    warn_of_losses(&report);
    Ok(match stop {
        Stop::CommandExited(status) => exit_code_of(status),
        Stop::Duration | Stop::Signal(_) | Stop::TargetsExited => 0,
    })
}

/// Names each writer's cgroup when its first record is read, while the
/// cgroup exists: a container gone before the trace ends is still named
/// in the report. Each cgroup is asked once.
struct CgroupsWhileTheyLive {
    cgroups: Rc<RefCell<CgroupNames>>,
    asked: HashSet<u64>,
}

impl EventObserver for CgroupsWhileTheyLive {
    fn observe(&mut self, event: &Event, _: &Applied, _: Option<&FileRecord>) {
        if let Some(task) = event.writer() {
            if self.asked.insert(task.cgroup_id) {
                self.cgroups.borrow_mut().path(task.cgroup_id);
            }
        }
    }
}

/// Where the report goes. As strace and `perf stat` do, a traced command's
/// standard output stays its own (and so does a stream on standard
/// output): the report then goes to standard error, unless `-o FILE` (or
/// `-o -`, standard output) says otherwise.
enum ReportTo {
    File(std::fs::File),
    Stdout,
    Stderr,
}

impl ReportTo {
    fn choose(args: &TraceArgs, events_to_stdout: bool) -> anyhow::Result<Self> {
        let stdout_taken = events_to_stdout || !args.command.is_empty();
        Ok(match args.output.as_deref() {
            Some(path) if path == std::path::Path::new("-") => {
                if events_to_stdout {
                    return Err(UserError::Usage(
                        "-o - and --events - cannot both write to standard output; send one to a file".into(),
                    )
                    .into());
                }
                ReportTo::Stdout
            }
            Some(path) => ReportTo::File(open_named(path).context("cannot write the report")?),
            None if stdout_taken => ReportTo::Stderr,
            None => ReportTo::Stdout,
        })
    }

    fn write(self, text: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let written = match self {
            ReportTo::File(mut file) => file.write_all(text.as_bytes()).and_then(|()| file.flush()),
            ReportTo::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            ReportTo::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
        };
        match written {
            // A closed pipe (`| head`) ends the report quietly.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing the report"),
        }
    }
}

/// Our standard error as a file of its own, for CMD's output.
fn stderr_file() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsFd as _;
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard error for CMD")?;
    Ok(std::fs::File::from(fd))
}

/// Sleeps until the deadline; forever without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One line on stderr once the probes are attached: users (and tests) know
/// from when on writes are seen.
fn announce(session: &Session, args: &TraceArgs) {
    let scope = if args.filter.writers.pids.is_empty() {
        "system-wide".to_string()
    } else {
        let pids: Vec<String> = args
            .filter
            .writers
            .pids
            .iter()
            .map(u32::to_string)
            .collect();
        format!("pid {}", pids.join(","))
    };
    let until = match args.duration {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => "until Ctrl-C".to_string(),
    };
    eprintln!(
        "mmapwatch: tracing {scope} {until} ({} programs attached in {} ms)",
        session.attached_programs(),
        session.attach_time().as_millis()
    );
}

/// One line on standard error when the report is incomplete.
fn warn_of_losses(report: &report::Report) {
    if report.lost_events > 0 {
        eprintln!(
            "mmapwatch: {} event(s) lost ({}); the report is incomplete",
            report.lost_events,
            loss_reasons(&report.drops)
        );
    }
}

/// The reasons of a loss, as `drops` names them: `ringbuf_full 3, probe_errors 1`.
fn loss_reasons(drops: &report::Drops) -> String {
    let kernel = drops
        .kernel_reasons()
        .filter(|(counter, total)| counter.role == CounterRole::Loss && *total > 0)
        .map(|(counter, total)| (counter.name, total));
    let reasons: Vec<String> = kernel
        .chain([("undecodable_records", drops.undecodable_records)])
        .filter(|(_, total)| *total > 0)
        .map(|(name, total)| format!("{name} {total}"))
        .collect();
    reasons.join(", ")
}
