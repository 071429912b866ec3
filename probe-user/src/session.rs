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
use probe_common::{WriterStats, LATENCY_BUCKETS};
use tokio::io::{unix::AsyncFd, Interest};

use crate::{
    cli::{FilterArgs, KernelPaths},
    error::UserError,
    model::{
        aggregate::{Aggregate, Applied, PathSource},
        clock::Clock,
        events::{decode, Event, FileId},
        file_handle::current_name,
        paths::{mount_ns_of, proc_maps_path, MountTable},
        report_filter::ReportFilter,
    },
    probe::{
        kallsyms::Kallsyms,
        load::{ProbeOptions, Probes},
        maps::KernelCounters,
        Selection, WriterLabel,
    },
};

/// A front end's tap on the decoded event stream, called for every event
/// as the aggregate takes it: what a front end keeps of the stream (a
/// recording, counts per interval) stays in the front end.
pub trait EventObserver {
    fn observe(&mut self, event: &Event, applied: &Applied);
}

/// Collects events from the ring buffer into the aggregate, naming files
/// while their writers are alive.
pub struct Collector {
    pub aggregate: Aggregate,
    pub undecodable: u64,
    /// Front ends' taps on the event stream (see [`EventObserver`]).
    observers: Vec<Box<dyn EventObserver>>,
    mounts: MountTable,
    proc_root: PathBuf,
}

impl Collector {
    pub fn new() -> Self {
        Self {
            aggregate: Aggregate::new(),
            undecodable: 0,
            observers: Vec::new(),
            mounts: MountTable::read(),
            proc_root: PathBuf::from("/proc"),
        }
    }

    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    fn resolve_path(&mut self, file: FileId, tgid: u32) {
        if let Some(mapped) = proc_maps_path(&self.proc_root, tgid, file) {
            self.aggregate
                .set_path(file, mapped.path, PathSource::ProcMaps);
            if mapped.deleted {
                self.aggregate.set_deleted(file);
            }
        }
    }

    /// Names every file as it is now (renamed, deleted or as first seen),
    /// for a report made now.
    pub fn name_files_now(&mut self) {
        let files: Vec<_> = self
            .aggregate
            .files()
            .map(|(file, record)| (*file, record.fs_magic, record.path.clone()))
            .collect();
        for (file, fs_magic, recorded) in files {
            let mount_point = self
                .mounts
                .mount_of(file)
                .map(|m| PathBuf::from(&m.mount_point));
            if let Some(name) =
                current_name(file, fs_magic, recorded.as_deref(), mount_point.as_deref())
            {
                self.aggregate.set_current_name(file, name);
            }
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        let event = match decode(bytes) {
            Ok(event) => event,
            Err(err) => {
                self.undecodable += 1;
                log::warn!("undecodable record: {err}");
                return;
            }
        };
        if let Event::FileSeen {
            file,
            components,
            reached_root,
            ..
        } = &event
        {
            // A mount made after start-up: read the table again.
            if self.mounts.fs_type(*file).is_none() {
                self.mounts = MountTable::read();
            }
            let tgid = event.task().map(|task| task.tgid);
            // Not mounted in our view: a mount of the writer's namespace
            // (a container's tmpfs), named as the writer sees it.
            let writers_mounts = match tgid {
                Some(tgid) if self.mounts.fs_type(*file).is_none() => {
                    MountTable::of_process(&self.proc_root, tgid)
                }
                _ => None,
            };
            let path = writers_mounts
                .as_ref()
                .unwrap_or(&self.mounts)
                .dentry_full_path(*file, components, *reached_root);
            let applied = self.aggregate.apply(&event);
            self.notify(&event, &applied);
            self.aggregate.set_path(*file, path, PathSource::Dentry);
            if let Some(tgid) = tgid {
                if let Some(mount_ns) = mount_ns_of(&self.proc_root, tgid) {
                    self.aggregate.set_mount_ns(*file, mount_ns);
                }
                self.resolve_path(*file, tgid);
            }
            return;
        }
        if let Some((file, tgid)) = self.apply(&event).new_file {
            self.resolve_path(file, tgid);
        }
    }

    fn apply(&mut self, event: &Event) -> Applied {
        let applied = self.aggregate.apply(event);
        self.notify(event, &applied);
        applied
    }

    fn notify(&mut self, event: &Event, applied: &Applied) {
        for observer in &mut self.observers {
            observer.observe(event, applied);
        }
    }

    /// Adds a tap on the event stream.
    pub fn observe(&mut self, observer: Box<dyn EventObserver>) {
        self.observers.push(observer);
    }

    /// Reads every record available now.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut count = 0;
        while let Some(item) = ring.next() {
            self.record(&item);
            count += 1;
        }
        count
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

pub fn probe_options(
    kernel: &KernelPaths,
    filter: &FilterArgs,
    include_cow: bool,
    follow: bool,
) -> ProbeOptions {
    ProbeOptions {
        btf_path: kernel.btf.clone(),
        tracefs_override: kernel.tracefs.clone(),
        filter_by_tgid: follow || !filter.pids.is_empty(),
        comms: filter.comms.clone(),
        include_cow,
        ring_bytes: filter.ring_bytes,
        dedup_entries: filter.dedup_entries,
        kernel_debug_logs: log::log_enabled!(log::Level::Debug),
    }
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
}

impl Session {
    /// Checks the input, loads and attaches the probes, and starts the
    /// command if there is one.
    pub fn start(options: &SessionOptions) -> anyhow::Result<Self> {
        check_pids(&options.filter.pids)?;
        let command = match options.command.split_first() {
            Some((program, rest)) => Some((resolve_command(program)?, rest.to_vec())),
            None => None,
        };
        let probe_options = probe_options(
            &options.kernel,
            &options.filter,
            options.include_cow,
            command.is_some(),
        );
        let mut probes = Probes::load(&probe_options)?;
        probes.attach(options.filter.backend)?;
        // Each target with the children it forks from now on, as
        // `strace -f -p` does; the trace ends when all targets have exited.
        let mut targets = Vec::new();
        for &pid in &options.filter.pids {
            probes.trace_tgid(pid, true)?;
            targets.push(exit_watch(pid)?);
        }
        // SAFETY: the ring buffer owns its map fd until it is dropped, and
        // as_raw_fd always returns that fd.
        let ring =
            unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
                .map_err(|err| anyhow::anyhow!("polling the event ring buffer: {err}"))?;
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
            collector: Collector::new(),
            started: Instant::now(),
            clock: Clock::now(),
            counters: KernelCounters::default(),
            kallsyms: None,
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
    /// command exits. Cancel-safe.
    pub async fn next_activity(&mut self) -> anyhow::Result<Activity> {
        let Self {
            ring,
            child,
            targets,
            collector,
            ..
        } = self;
        tokio::select! {
            exited = first_exit(targets) => {
                targets.remove(exited);
                Ok(if targets.is_empty() { Activity::TargetsExited } else { Activity::Events(0) })
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let count = collector.drain(guard.get_inner_mut());
                guard.clear_ready();
                Ok(Activity::Events(count))
            }
            status = wait_for(child) => {
                *child = None;
                Ok(Activity::CommandExited(status?))
            }
        }
    }

    /// Reads whatever records are there now, without waiting.
    pub fn drain_now(&mut self) -> usize {
        self.collector.drain(self.ring.get_mut())
    }

    pub fn has_command(&self) -> bool {
        self.child.is_some()
    }

    /// Pulls the kernel's per-file stats and counters into the aggregate.
    pub fn refresh(&mut self) -> anyhow::Result<KernelCounters> {
        for (file, per_cpu) in self.probes.file_stats()? {
            self.collector.aggregate.set_kernel_stats(file, &per_cpu);
        }
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
        self.counters = self.probes.counters()?;
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

    /// The dirty-to-written-back latency histogram (log2 ns buckets).
    pub fn writeback_latency(&self) -> anyhow::Result<[u64; LATENCY_BUCKETS as usize]> {
        Ok(self.probes.writeback_latency()?)
    }

    /// Run time and runs of each program (with kernel.bpf_stats_enabled).
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        self.probes.program_stats()
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
