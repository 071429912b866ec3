//! `mmapwatch trace`: attach, collect until the end condition, report once.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::SignalKind,
};

use crate::{
    aggregate::{Aggregate, Applied, PathSource},
    cli::{BackendChoice, FilterArgs, TraceArgs},
    error::UserError,
    events::{decode, Event, FileId},
    loader::{ProbeOptions, Probes},
    paths::{proc_maps_path, MountTable},
    report::{self, Clock, ReportContext, ReportFilter},
};

/// The chosen backend and why (only the tracepoint backend exists so far).
pub fn choose_backend(choice: BackendChoice) -> (&'static str, String) {
    match choice {
        BackendChoice::Tracepoint => ("tracepoint", "requested with --backend tracepoint".into()),
        BackendChoice::Auto => (
            "tracepoint",
            "auto: the tracepoint backend is the one this build provides; it needs only tracepoints, raw tracepoints and bpf_find_vma".into(),
        ),
    }
}

/// Collects events from the ring buffer into the aggregate, naming files
/// while their writers are alive.
pub struct Collector {
    pub aggregate: Aggregate,
    pub undecodable: u64,
    mounts: MountTable,
    proc_root: PathBuf,
}

impl Collector {
    pub fn new() -> Self {
        Self {
            aggregate: Aggregate::new(),
            undecodable: 0,
            mounts: MountTable::read(),
            proc_root: PathBuf::from("/proc"),
        }
    }

    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    fn resolve_path(&mut self, file: FileId, tgid: u32) {
        if let Some(path) = proc_maps_path(&self.proc_root, tgid, file) {
            self.aggregate.set_path(file, path, PathSource::ProcMaps);
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
            let path = self
                .mounts
                .dentry_full_path(*file, components, *reached_root);
            self.aggregate.apply(&event);
            self.aggregate.set_path(*file, path, PathSource::Dentry);
            if let Some(tgid) = event_tgid(&event) {
                self.resolve_path(*file, tgid);
            }
            return;
        }
        if let Applied::NewFile { file, tgid } = self.aggregate.apply(&event) {
            self.resolve_path(file, tgid);
        }
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

fn event_tgid(event: &Event) -> Option<u32> {
    match event {
        Event::FirstWrite { task, .. }
        | Event::NewWriter { task, .. }
        | Event::HugeSpan { task, .. }
        | Event::FileSeen { task, .. } => Some(task.tgid),
    }
}

pub fn probe_options(
    btf: &Path,
    filter: &FilterArgs,
    include_cow: bool,
    follow: bool,
) -> ProbeOptions {
    ProbeOptions {
        btf_path: btf.to_path_buf(),
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
fn resolve_command(program: &std::ffi::OsStr) -> Result<PathBuf, UserError> {
    use std::os::unix::fs::PermissionsExt;
    let name = program.to_string_lossy().into_owned();
    let candidate = Path::new(program);
    let found = if candidate.components().count() > 1 {
        candidate.exists().then(|| candidate.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
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

enum Stop {
    Duration,
    Signal(&'static str),
    CommandExited(ExitStatus),
}

/// Runs `trace`; returns the process exit code.
pub async fn run(btf: &Path, args: TraceArgs) -> anyhow::Result<u8> {
    check_pids(&args.filter.pids)?;
    let command = match args.command.split_first() {
        Some((program, rest)) => Some((resolve_command(program)?, rest.to_vec())),
        None => None,
    };
    let (backend, backend_reason) = choose_backend(args.filter.backend);

    let options = probe_options(btf, &args.filter, args.include_cow, command.is_some());
    let mut probes = Probes::load(&options)?;
    probes.attach()?;
    for &pid in &args.filter.pids {
        probes.trace_tgid(pid, false)?;
    }
    // SAFETY: the ring buffer owns its map fd until it is dropped, and
    // as_raw_fd always returns that fd.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("polling the event ring buffer: {err}"))?;
    let started = Instant::now();
    let clock = Clock::now();
    if command.is_none() {
        let scope = if args.filter.pids.is_empty() {
            "system-wide".to_string()
        } else {
            format!(
                "pid {}",
                args.filter
                    .pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let until = match args.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".to_string(),
        };
        eprintln!(
            "mmapwatch: tracing {scope} {until} ({} programs attached in {} ms)",
            probes.attached.programs.len(),
            probes.attached.attach_time.as_millis()
        );
    }

    let mut child = match command {
        Some((path, rest)) => {
            // Mark ourselves "follow children" for the instant of the fork:
            // the kernel then adds the child before it runs a single
            // instruction. We are never traced ourselves (self_tgid).
            let me = std::process::id();
            probes.trace_tgid(me, true)?;
            let spawned = tokio::process::Command::new(&path)
                .args(&rest)
                .kill_on_drop(false)
                .spawn();
            probes.untrace_tgid(me)?;
            Some(spawned.map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => {
                    UserError::CommandNotFound(path.display().to_string())
                }
                _ => UserError::CommandNotExecutable(path.display().to_string(), err.to_string()),
            })?)
        }
        None => None,
    };

    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut collector = Collector::new();

    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                collector.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                break Stop::CommandExited(status.context("waiting for CMD")?);
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                break Stop::Duration;
            }
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
        }
    };
    let duration = started.elapsed();
    // Records submitted before the stop are still in the ring.
    collector.drain(ring.get_mut());
    for (file, per_cpu) in probes.file_stats()? {
        // Only files the report can name: a file whose every record was
        // dropped still shows up, with its kernel counters.
        collector.aggregate.set_kernel_stats(file, &per_cpu);
    }
    let counters = probes.counters()?;
    let dedup_capacity = probes.dedup_capacity;
    let mut warnings: Vec<String> = probes_warnings(&counters);
    warnings.extend(
        probes
            .attached
            .missing
            .iter()
            .map(|tp| format!("tracepoint {tp} is absent on this kernel")),
    );
    drop(probes);

    if let Stop::Signal(name) = &stop {
        log::info!("stopped by {name}");
    }
    let mounts = collector.mounts().clone();
    let fs_type = move |file: FileId| mounts.fs_type(file).map(str::to_string);
    let report = report::build(
        &collector.aggregate,
        &ReportFilter {
            include_cow: args.include_cow,
            path_prefixes: args
                .filter
                .path_prefixes
                .iter()
                .map(|p| canonical_prefix(p))
                .collect(),
        },
        ReportContext {
            backend,
            backend_reason: &backend_reason,
            duration_s: round_seconds(duration),
            counters,
            dedup_capacity,
            undecodable_records: collector.undecodable,
            warnings,
            clock,
            fs_type: &fs_type,
        },
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serializing the report")?
        );
    } else {
        print!("{}", report::render_table(&report));
    }
    if report.lost_events > 0 {
        eprintln!(
            "mmapwatch: {} event(s) lost (ring buffer full: {}, mapping lookups failed: {}, stats map full: {}); the report is incomplete",
            report.lost_events, report.drops.ringbuf_full, report.drops.vma_lookup_failed, report.drops.file_stats_full
        );
    }
    Ok(match stop {
        Stop::CommandExited(status) => exit_code_of(status),
        Stop::Duration | Stop::Signal(_) => 0,
    })
}

/// Reports carry canonical paths, so prefixes are made canonical too
/// (relative paths, `..` and symlinks); one that does not exist yet is made
/// absolute.
pub fn canonical_prefix(prefix: &Path) -> PathBuf {
    std::fs::canonicalize(prefix)
        .unwrap_or_else(|_| std::path::absolute(prefix).unwrap_or_else(|_| prefix.to_path_buf()))
}

fn round_seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn probes_warnings(counters: &crate::loader::KernelCounters) -> Vec<String> {
    let mut warnings = Vec::new();
    if counters.dedup_insert_failed > 0 {
        warnings.push(format!(
            "the first-write dedup map refused {} insert(s); pages were still reported",
            counters.dedup_insert_failed
        ));
    }
    warnings
}
