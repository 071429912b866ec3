//! A running tracing session shared by every front end: probes loaded and
//! attached, the ring buffer drained into an aggregate, kernel counters
//! refreshed on demand, and an optional traced command.

use std::{
    ffi::OsString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Instant,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use probe_common::{WriterStats, FILE_STATS_ENTRIES, READER_POLL_MS};
use tokio::io::{unix::AsyncFd, Interest};

mod cgroup_filter;
mod cgroups;
mod collector;
mod kernel_files;
mod naming;
pub mod page_cache;
pub mod stacks;
mod stop;
mod users;
pub use cgroups::{container_name, CgroupNames};
pub use collector::{Collector, EventObserver};
pub use kernel_files::HandOverCounts;
pub use stop::{ticker, StopSignals};
pub use users::{parse_user, user_name};

use crate::{
    cli::{FilterArgs, KernelPaths},
    error::UserError,
    model::{clock::Clock, hand_over::worth_reading_again, report_filter::ReportFilter},
    probe::{
        kallsyms::Kallsyms,
        load::{ProbeOptions, Probes},
        maps::KernelCounters,
        Selection, WriterLabel,
    },
};

pub fn probe_options(
    kernel: &KernelPaths,
    filter: &FilterArgs,
    include_cow: bool,
    follow: bool,
    report_exits: bool,
    user_stacks: bool,
) -> Result<ProbeOptions, UserError> {
    Ok(ProbeOptions {
        btf_path: kernel.btf.clone(),
        tracefs_override: kernel.tracefs.clone(),
        filter_by_tgid: follow || !filter.writers.pids.is_empty(),
        comms: filter.writers.comms.clone(),
        users: filter.writers.users.clone(),
        cgroups: cgroup_filter::cgroup_filters(&filter.cgroups, &filter.containers)?,
        include_cow,
        ring_bytes: filter.ring_bytes,
        dedup_entries: filter.dedup_entries,
        kernel_debug_logs: log::log_enabled!(log::Level::Debug),
        report_exits,
        user_stacks,
    })
}

pub fn check_pids(pids: &[u32]) -> Result<(), UserError> {
    for &pid in pids {
        if !Path::new("/proc").join(pid.to_string()).exists() {
            return Err(UserError::NoSuchProcess(pid));
        }
    }
    Ok(())
}

/// Finds CMD the way a shell would, so a missing command is reported before
/// anything is loaded.
pub fn resolve_command(program: &std::ffi::OsStr) -> Result<PathBuf, UserError> {
    use std::os::unix::fs::PermissionsExt;
    let name = program.to_string_lossy().into_owned();
    let candidate = Path::new(program);
    let found = if candidate.components().count() > 1 {
        candidate.exists().then(|| candidate.to_path_buf())
    } else {
        // A name alone: the first executable of that name on PATH.
        which::which(program).ok()
    };
    let path = found.ok_or_else(|| UserError::CommandNotFound(name.clone()))?;
    let executable = std::fs::metadata(&path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(UserError::CommandNotExecutable(
            name,
            "permission denied".into(),
        ));
    }
    Ok(path)
}

/// The exit code a shell would report for this status.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

/// What to trace.
#[derive(Debug, Default)]
pub struct SessionOptions {
    pub kernel: KernelPaths,
    pub filter: FilterArgs,
    pub include_cow: bool,
    /// `-- CMD ARGS`: run it and trace it with its descendants.
    pub command: Vec<OsString>,
    /// Where CMD's stdout and stderr go; inherited when None.
    pub command_output: Option<std::fs::File>,
    /// Forget files idle this long (`export`, `top`); a trace keeps all.
    pub retain: Option<std::time::Duration>,
    /// Look at each writer's files when it exits (what is not on disk
    /// yet): `trace`, whose report says it per writer.
    pub report_writer_exits: bool,
    /// Take each first write's user stack and name its call site
    /// (`--stacks`).
    pub stacks: bool,
}

pub struct Session {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    child: Option<tokio::process::Child>,
    /// `--pid` targets still alive, each a pidfd that turns readable
    /// when its process exits.
    targets: Vec<AsyncFd<OwnedFd>>,
    pub collector: Collector,
    pub started: Instant,
    pub clock: Clock,
    pub counters: KernelCounters,
    /// Read on first need: naming `->page_mkwrite` functions.
    kallsyms: Option<Kallsyms>,
    /// Idle files' kernel entries moved into the aggregate.
    pub hand_over: HandOverCounts,
    retain: Option<std::time::Duration>,
    /// When the ring is next read whether or not it woke us: records are
    /// committed without a wakeup until a batch waits
    /// (`probe_common::ring_commit_flags`).
    next_poll: tokio::time::Instant,
    /// `collector.files_announced` when the per-file map was last read.
    files_announced_at_last_pull: u64,
}

/// How often the ring is read whatever it signalled.
const READER_POLL: std::time::Duration = std::time::Duration::from_millis(READER_POLL_MS);

impl Session {
    /// Checks the input, loads and attaches the probes, and starts the
    /// command if there is one.
    pub fn start(options: &SessionOptions) -> anyhow::Result<Self> {
        check_pids(&options.filter.writers.pids)?;
        let command = match options.command.split_first() {
            Some((program, rest)) => Some((resolve_command(program)?, rest.to_vec())),
            None => None,
        };
        let probe_options = probe_options(
            &options.kernel,
            &options.filter,
            options.include_cow,
            command.is_some(),
            options.report_writer_exits,
            options.stacks,
        )?;
        let mut probes = Probes::load(&probe_options)?;
        probes.attach(options.filter.backend)?;
        // Each target with the children it forks from now on, as
        // `strace -f -p` does; the trace ends when all targets have exited.
        let mut targets = Vec::new();
        for &pid in &options.filter.writers.pids {
            probes.trace_tgid(pid, true)?;
            targets.push(exit_watch(pid)?);
        }
        // SAFETY: the ring buffer owns its map fd until it is dropped, and
        // as_raw_fd always returns that fd.
        let ring =
            unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
                .map_err(|err| anyhow::anyhow!("polling the event ring buffer: {err}"))?;
        let mut collector = Collector::new();
        if options.stacks {
            collector.stacks = Some(std::rc::Rc::new(std::cell::RefCell::new(
                stacks::StackResolver::new(probes.take_stacks()?),
            )));
        }
        let child = match command {
            Some((path, args)) => Some(spawn_followed(
                &mut probes,
                &path,
                &args,
                options.command_output.as_ref(),
            )?),
            None => None,
        };
        Ok(Self {
            probes,
            ring,
            child,
            targets,
            collector,
            started: Instant::now(),
            clock: Clock::now(),
            counters: KernelCounters::default(),
            kallsyms: None,
            hand_over: HandOverCounts::default(),
            retain: options.retain,
            next_poll: tokio::time::Instant::now(),
            files_announced_at_last_pull: 0,
        })
    }

    /// The backend attached (fentry, kprobe or tracepoint).
    pub fn backend(&self) -> &'static str {
        self.probes.selection.backend
    }

    /// Why that backend: requested, or what `auto` found.
    pub fn backend_reason(&self) -> &str {
        &self.probes.selection.reason
    }

    pub fn attached_programs(&self) -> usize {
        self.probes.attached.programs.len()
    }

    pub fn attach_time(&self) -> std::time::Duration {
        self.probes.attached.attach_time
    }

    pub fn dedup_capacity(&self) -> u32 {
        self.probes.dedup_capacity
    }

    /// Optional tracepoints this kernel lacks.
    pub fn missing_tracepoints(&self) -> &[String] {
        &self.probes.attached.missing
    }

    /// Waits until records arrive (then reads all of them) or the traced
    /// command exits. Cancel-safe. After a burst of new files, reads the
    /// kernel's per-file map at once rather than at the next refresh, so
    /// that it never fills.
    pub async fn next_activity(&mut self) -> anyhow::Result<Activity> {
        let activity = self.wait_for_activity().await?;
        self.keep_file_map_from_filling()?;
        Ok(activity)
    }

    /// Reads the kernel's per-file map now if a burst of new files came
    /// since it was last read.
    fn keep_file_map_from_filling(&mut self) -> anyhow::Result<()> {
        let since = self.collector.files_announced - self.files_announced_at_last_pull;
        if worth_reading_again(since, FILE_STATS_ENTRIES) {
            self.pull_file_stats()?;
        }
        Ok(())
    }

    async fn wait_for_activity(&mut self) -> anyhow::Result<Activity> {
        let Self {
            ring,
            child,
            targets,
            collector,
            next_poll,
            ..
        } = self;
        tokio::select! {
            () = tokio::time::sleep_until(*next_poll) => {
                *next_poll = tokio::time::Instant::now() + READER_POLL;
                Ok(Activity::Events(collector.drain(ring.get_mut())))
            }
            exited = first_exit(targets) => {
                targets.remove(exited);
                Ok(if targets.is_empty() { Activity::TargetsExited } else { Activity::Events(0) })
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let count = collector.drain(guard.get_inner_mut());
                guard.clear_ready();
                *next_poll = tokio::time::Instant::now() + READER_POLL;
                Ok(Activity::Events(count))
            }
            status = wait_for(child) => {
                *child = None;
                Ok(Activity::CommandExited(status?))
            }
        }
    }

    /// Reads whatever records are there now, without waiting (and the
    /// per-file map, after a burst of new files: a front end's long step,
    /// such as the exporter's update of 300,000 files' series, calls this
    /// between its parts).
    pub fn drain_now(&mut self) -> usize {
        let count = self.drain_ring();
        if let Err(err) = self.keep_file_map_from_filling() {
            // The next refresh reads the map again and reports its error.
            log::warn!("reading the kernel's per-file map: {err:#}");
        }
        count
    }

    fn drain_ring(&mut self) -> usize {
        self.collector.drain(self.ring.get_mut())
    }

    pub fn has_command(&self) -> bool {
        self.child.is_some()
    }

    /// Pulls the kernel's per-file stats and counters into the aggregate.
    pub fn refresh(&mut self) -> anyhow::Result<KernelCounters> {
        let started = Instant::now();
        self.pull_file_stats()?;
        log::debug!("per-file stats read in {:?}", started.elapsed());
        if self.probes.selection.page_mkwrite {
            for (file, function) in self.probes.page_mkwrite_functions()? {
                if self.collector.aggregate.has_page_mkwrite(file) {
                    continue;
                }
                let symbols = self.kallsyms.get_or_insert_with(Kallsyms::read);
                let name = symbols
                    .name_of(function)
                    .map_or_else(|| format!("{function:#x}"), str::to_string);
                self.collector.aggregate.set_page_mkwrite(file, name);
            }
        }
        self.counters = KernelCounters {
            files_handed_over: self.hand_over.files,
            dirty_files_handed_over: self.hand_over.dirty_files,
            files_forgotten: self.hand_over.forgotten,
            file_entries: self.hand_over.live_entries,
            ..self.probes.counters()?
        };
        Ok(self.counters)
    }

    /// The kernel functions hooked and the fallbacks taken.
    pub fn selection(&self) -> &Selection {
        &self.probes.selection
    }

    /// Fault counts per (cgroup, filesystem, command).
    pub fn writer_stats(&self) -> anyhow::Result<Vec<(WriterLabel, WriterStats)>> {
        Ok(self.probes.writer_stats()?)
    }

    /// A reader of the kernel's running totals for another thread (the
    /// exporter reads them at scrape time).
    pub fn totals_reader(&self) -> anyhow::Result<crate::probe::totals::KernelTotalsReader> {
        Ok(self.probes.totals_reader()?)
    }

    /// The event ring's size in bytes.
    pub fn ring_bytes(&self) -> u32 {
        self.probes.ring_bytes
    }
}

pub enum Activity {
    /// This many records were read.
    Events(usize),
    CommandExited(ExitStatus),
    /// Every `--pid` target has exited.
    TargetsExited,
}

/// A pidfd for `pid`, readable once the process exits.
fn exit_watch(pid: u32) -> anyhow::Result<AsyncFd<OwnedFd>> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let fd = raw.ok_or(UserError::NoSuchProcess(pid)).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|_| UserError::NoSuchProcess(pid.as_raw_nonzero().get() as u32))
    })?;
    // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd
    // from here on, and as_raw_fd always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("watching pid {pid}: {err}"))
}

/// The index of the first target to exit; never resolves without targets.
async fn first_exit(targets: &[AsyncFd<OwnedFd>]) -> usize {
    if targets.is_empty() {
        return std::future::pending().await;
    }
    let waits = targets.iter().map(|fd| Box::pin(fd.readable()));
    let (_, index, _) = futures_util::future::select_all(waits).await;
    index
}

/// The command's exit; never resolves without a command.
async fn wait_for(child: &mut Option<tokio::process::Child>) -> std::io::Result<ExitStatus> {
    match child.as_mut() {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// Spawns CMD so that the kernel follows it from its first instruction: we
/// mark ourselves "follow children" for the instant of the fork (we are
/// never traced ourselves: self_tgid), so the fork tracepoint adds the child.
fn spawn_followed(
    probes: &mut Probes,
    path: &Path,
    args: &[OsString],
    output: Option<&std::fs::File>,
) -> anyhow::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(path);
    command.args(args).kill_on_drop(false);
    if let Some(file) = output {
        command
            .stdout(file.try_clone().context("CMD's output file")?)
            .stderr(file.try_clone().context("CMD's output file")?);
    }
    let me = std::process::id();
    probes.trace_tgid(me, true)?;
    let spawned = command.spawn();
    probes.untrace_tgid(me)?;
    Ok(spawned.map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => UserError::CommandNotFound(path.display().to_string()),
        _ => UserError::CommandNotExecutable(path.display().to_string(), err.to_string()),
    })?)
}

/// The report filter matching a session's options.
pub fn report_filter(options: &SessionOptions) -> ReportFilter {
    ReportFilter::new(options.include_cow, &options.filter.path_prefixes)
}
