//! Command-line interface: the contract every front end shares.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::probe::{btf::VMLINUX_BTF, BackendChoice};

#[derive(Debug, Parser)]
#[command(
    name = "mmapwatch",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MMAPWATCH_REVISION"), ")"),
    about = "Which memory-mapped files were modified through mmap, which pages, by whom, and when they were written back"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Kernel BTF to read struct layouts from (for testing other kernels).
    #[arg(long, global = true, hide = true, env = "MMAPWATCH_BTF", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Look tracepoints up under this directory instead of tracefs (tests
    /// simulate a kernel that lacks one).
    #[arg(long, global = true, hide = true, env = "MMAPWATCH_TRACEFS")]
    pub tracefs: Option<PathBuf>,
}

/// Where mmapwatch reads the kernel's facts (overridable for tests).
#[derive(Clone, Debug, Default)]
pub struct KernelPaths {
    pub btf: PathBuf,
    pub tracefs: Option<PathBuf>,
}

impl Cli {
    pub fn kernel_paths(&self) -> KernelPaths {
        KernelPaths {
            btf: self.btf.clone(),
            tracefs: self.tracefs.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace mmap writes, then print one report.
    Trace(TraceArgs),
    /// Live dashboard of files modified through mmap.
    Top(TopArgs),
    /// Serve Prometheus metrics (OpenMetrics) until stopped.
    Export(ExportArgs),
    /// Show what this kernel supports and which backend `auto` picks.
    Doctor(DoctorArgs),
    /// Replay a recording (`trace --record FILE`) into the report that
    /// trace printed, or into a narrower one with filters; or an event
    /// stream (`trace --events FILE`) into the report of what it holds.
    Report(ReportArgs),
    /// Empty programs on the fault path's attach points until stopped: the
    /// floor `cargo xtask bench` compares mmapwatch's cost with.
    #[command(hide = true)]
    BenchFloor,
    /// Print shell completions (for packaging: `cargo xtask docs`).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page, roff (for packaging: `cargo xtask docs`):
    /// mmapwatch(1), or with a subcommand's name its own page
    /// (mmapwatch-trace(1), ...); `--list` names the subcommands that
    /// have one.
    #[command(hide = true)]
    Manpage {
        subcommand: Option<String>,
        #[arg(long, conflicts_with = "subcommand")]
        list: bool,
    },
}

#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    /// The recording, from `trace --record FILE`, or an event stream from
    /// `trace --events FILE` (JSON) ('-': standard input).
    #[arg(value_name = "FILE|-")]
    pub recording: PathBuf,

    /// Print one JSON document instead of a table.
    #[arg(short = 'j', long)]
    pub json: bool,

    /// Write the report to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub writers: WriterArgs,

    /// Only files under this directory, by their recorded names (repeatable).
    #[arg(long = "path-prefix", value_name = "DIR")]
    pub path_prefixes: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Args)]
pub struct DoctorArgs {
    /// Print the checks as one JSON document.
    #[arg(short = 'j', long)]
    pub json: bool,

    /// Mount tracefs and securityfs where they are not (otherwise doctor
    /// changes nothing and says what is missing).
    #[arg(long)]
    pub mount: bool,
}

#[derive(Clone, Debug, Args)]
pub struct TopArgs {
    /// Screen refresh interval (`-d`/`--delay` as top's; a bare number is
    /// seconds).
    #[arg(short = 'd', long, visible_alias = "delay", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Forget files idle longer than this (no write, no writeback): their
    /// rows and per-file series go; totals already counted stay.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub retain: Duration,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Record the session to FILE for `mmapwatch report FILE`: the report
    /// of everything it saw, as `trace` would print it, when it ends.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Also list files only written through private mappings (copy-on-write).
    #[arg(long)]
    pub include_cow: bool,

    /// Name the code that wrote each file, in its detail view: its call
    /// sites with most pages (as `trace --stacks`).
    #[arg(long)]
    pub stacks: bool,

    /// Plain text instead of the dashboard: one table per interval on
    /// stdout (no terminal needed).
    #[arg(short = 'b', long)]
    pub batch: bool,

    /// Where CMD's stdout and stderr go (default: a new private file,
    /// mmapwatch-top-RANDOM.log in the temporary directory, named on stderr
    /// and removed if CMD wrote nothing): never over the screen.
    #[arg(long, value_name = "FILE")]
    pub cmd_output: Option<PathBuf>,

    /// With --batch: each row starts with the table's time (UTC, RFC
    /// 3339), so a row grepped out of a log still says when (as vmstat -t).
    #[arg(short = 'T', long, requires = "batch")]
    pub timestamps: bool,

    /// With --batch: stop after this many tables.
    #[arg(short = 'n', long, requires = "batch", value_parser = parse_count)]
    pub count: Option<u64>,

    /// Run CMD and trace it and all its descendants.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// Address to serve /metrics and /healthz on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9979")]
    pub listen: std::net::SocketAddr,

    /// Per-file series for this many files with the most pages written
    /// (plus files under --path-prefix); the rest are summed in path="other".
    #[arg(long, default_value_t = 20)]
    pub per_file_top: usize,

    /// How often kernel counters are read into the metrics.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Forget files idle longer than this (no write, no writeback): their
    /// rows and per-file series go; totals already counted stay.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub retain: Duration,

    /// Commands matching this regular expression always get a `comm`
    /// label of their own (others share 32 slots by activity, the rest
    /// count under comm="other").
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub keep_comm: Option<regex::Regex>,

    /// cgroup paths matching this regular expression always get a
    /// `cgroup` label of their own (others share 64 slots by activity).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub keep_cgroup: Option<regex::Regex>,

    /// Label writers' series by user too (`user`: the effective user's
    /// name, else its uid), 32 slots shared by activity as `comm`'s.
    #[arg(long)]
    pub label_user: bool,

    /// Record the session to FILE for `mmapwatch report FILE`: the report
    /// of everything it saw (files forgotten after --retain included), as
    /// `trace` would print it, when it stops.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// TLS and basic auth for /metrics, in the format of the Prometheus
    /// exporter toolkit's web config (tls_server_config, basic_auth_users).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    #[command(flatten)]
    pub filter: FilterArgs,
}

fn parse_regex(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|err| {
        let why = err.to_string();
        let last = why.lines().last().unwrap_or("invalid").trim().to_string();
        format!("'{text}' is not a regular expression ({last})")
    })
}

/// Which writers: live, selected in the kernel; in a replay, their writes
/// kept (by the name and ids each write was made under).
#[derive(Clone, Debug, Default, Args)]
pub struct WriterArgs {
    /// Only this process (repeatable, or a comma-separated list as ps and
    /// perf take).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Only processes with this command name, as in /proc/PID/comm
    /// (repeatable, up to 8 live).
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,

    /// Only processes whose effective user is this name or uid, as `ps -u`
    /// and `top -u` take (repeatable, or a comma-separated list, up to 8
    /// live).
    #[arg(short = 'u', long = "user", value_name = "USER", value_delimiter = ',', value_parser = crate::session::parse_user)]
    pub users: Vec<u32>,
}

/// Which processes and files to watch; shared by every front end.
#[derive(Clone, Debug, Default, Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub writers: WriterArgs,

    /// Only processes in this cgroup or below it: a path under the cgroup2
    /// root, as the report's `cgroup` gives it (`/system.slice/nginx.service`),
    /// or the directory itself (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Only processes in this container (its id or a unique prefix, as the
    /// `container` field and the exporter's label show it), followed into
    /// the cgroups it makes (repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Only files under this directory (repeatable).
    #[arg(long = "path-prefix", value_name = "DIR")]
    pub path_prefixes: Vec<PathBuf>,

    /// Probe backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "MMAPWATCH_BACKEND")]
    pub backend: BackendChoice,

    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Capacity of the kernel's first-write dedup map, in chunks of 512 pages.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub dedup_entries: Option<u32>,
}

#[derive(Clone, Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. 10s, 1m30s); without it and without CMD, run until Ctrl-C.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Also report files only written through private mappings (copy-on-write).
    #[arg(long)]
    pub include_cow: bool,

    /// Name the code that wrote each file: the writer's user stack at each
    /// first write, symbolized (function, source line) while the writer
    /// lives; per file its call sites with their pages and writers. Code
    /// built without frame pointers gives partial stacks (README).
    #[arg(long)]
    pub stacks: bool,

    /// Print one JSON document instead of a table.
    #[arg(short = 'j', long)]
    pub json: bool,

    /// Write the report to FILE ('-': standard output). Without it the
    /// report goes to standard output, or to standard error when a command
    /// is traced (-- CMD) or the event stream takes standard output: CMD's
    /// own output stays CMD's, as with strace and perf stat.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stream events as JSON lines to FILE, or to standard output with
    /// '-' (the report then goes to standard error or -o FILE, and CMD's
    /// output to standard error): first writes, folio spans, new writers, possible
    /// writes, COW writes with --include-cow, writebacks. Schema in README.
    /// (No `-e`: strace's and bpftrace's habit `-e trace=msync` would
    /// silently create a file of that name.)
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<PathBuf>,

    /// The event stream's format: json (a JSON object a line, the schema
    /// in README) or text (a readable line an event, for tail -f).
    #[arg(long, value_enum, default_value_t = EventsFormat::Json, requires = "events")]
    pub events_format: EventsFormat,

    /// Record the trace to FILE for `mmapwatch report FILE`, which prints
    /// this report again (or a narrower one) without the machine: every
    /// kernel record, then what the report asked the machine.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Run CMD and trace it and all its descendants; exit with its exit code.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// How `trace --events` writes its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    Json,
    Text,
}

/// The longest duration or interval accepted: ten years. Longer ones
/// overflow clock arithmetic and mean "forever", which is no flag at all.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration as humantime writes it (`10s`, `1m30s`, `250ms`), or a bare
/// number of seconds, as timeout(1) and top's `-d` take it (`5`, `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds = text
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_DURATION.as_secs_f64());
    let duration = match seconds {
        Some(seconds) => Duration::from_secs_f64(seconds),
        None => humantime::parse_duration(text).map_err(|err| {
            format!("'{text}' is not a duration like 10s, 1m30s or 5 (seconds) ({err})")
        })?,
    };
    if duration.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "'{text}' is longer than ten years (leave it out to run until stopped)"
        ));
    }
    Ok(duration)
}

/// How many tables `top --batch` prints: at least one.
fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("the count must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("'{text}' is not a count of tables")),
    }
}

impl Cli {
    /// What clap's per-value checks cannot see: limits across values.
    pub fn check(&self) -> Result<(), String> {
        let filter = match &self.command {
            Command::Trace(args) => &args.filter,
            Command::Top(args) => &args.filter,
            Command::Export(args) => &args.filter,
            Command::Doctor(_)
            | Command::Report(_)
            | Command::BenchFloor
            | Command::Completions { .. }
            | Command::Manpage { .. } => return Ok(()),
        };
        // A prefix that does not exist would silently keep nothing.
        if let Some(missing) = filter.path_prefixes.iter().find(|p| !p.exists()) {
            return Err(format!(
                "--path-prefix {}: no such file or directory",
                missing.display()
            ));
        }
        if filter.writers.users.len() > probe_common::MAX_USER_FILTERS {
            return Err(format!(
                "at most {} --user filters ({} given)",
                probe_common::MAX_USER_FILTERS,
                filter.writers.users.len()
            ));
        }
        if filter.writers.comms.len() > probe_common::MAX_COMM_FILTERS {
            return Err(format!(
                "at most {} --comm filters ({} given)",
                probe_common::MAX_COMM_FILTERS,
                filter.writers.comms.len()
            ));
        }
        Ok(())
    }
}

fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("an empty command name matches nothing".into());
    }
    if text.len() > 15 {
        return Err(format!(
            "'{text}' is longer than 15 bytes; the kernel keeps only the first 15 ('{}')",
            &text[..text.floor_char_boundary(15)]
        ));
    }
    Ok(text.to_string())
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    if !bytes.is_power_of_two() || bytes < 4096 {
        return Err("the ring size must be a power of two of at least 4096".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mmapwatch").chain(args.iter().copied()))
    }

    #[test]
    fn parses_the_full_trace_contract() {
        let cli = parse(&[
            "trace",
            "--duration",
            "1m30s",
            "--pid",
            "10",
            "--pid",
            "20",
            "--comm",
            "postgres",
            "--path-prefix",
            "/var/lib",
            "--include-cow",
            "--json",
            "--backend",
            "tracepoint",
            "--",
            "python3",
            "-c",
            "pass",
        ])
        .unwrap();
        let Command::Trace(args) = cli.command else {
            panic!("not trace")
        };
        assert_eq!(args.duration, Some(Duration::from_secs(90)));
        assert_eq!(args.filter.writers.pids, vec![10, 20]);
        assert_eq!(args.filter.writers.comms, vec!["postgres"]);
        assert_eq!(args.filter.path_prefixes, vec![PathBuf::from("/var/lib")]);
        assert!(args.include_cow && args.json);
        assert_eq!(args.filter.backend, BackendChoice::Tracepoint);
        assert_eq!(args.command, vec!["python3", "-c", "pass"]);
    }

    #[test]
    fn takes_the_habits_of_ps_top_and_timeout() {
        let Command::Trace(args) = parse(&["trace", "-p", "1,2", "-p", "3", "-d", "5"])
            .unwrap()
            .command
        else {
            panic!("not trace")
        };
        assert_eq!(args.filter.writers.pids, vec![1, 2, 3]);
        assert_eq!(args.duration, Some(Duration::from_secs(5)));
        let Command::Top(args) = parse(&["top", "-d", "0.5", "-b", "-n", "2"])
            .unwrap()
            .command
        else {
            panic!("not top")
        };
        assert_eq!(args.interval, Duration::from_millis(500));
        assert_eq!(args.count, Some(2));
        let Command::Top(args) = parse(&["top", "--delay", "2s"]).unwrap().command else {
            panic!("not top")
        };
        assert_eq!(args.interval, Duration::from_secs(2));
        assert!(parse(&["top", "-b", "-n", "0"]).is_err());
        assert!(parse(&["trace", "-d", "-1"]).is_err());
        assert!(parse(&["trace", "-d", "NaN"]).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["trace", "--duration", "soon"]).is_err());
        assert!(parse(&["trace", "--duration", "0s"]).is_err());
        assert!(parse(&["trace", "--pid", "0"]).is_err());
        assert!(parse(&["trace", "--pid", "-3"]).is_err());
        assert!(parse(&["trace", "--comm", "a-name-longer-than-15"]).is_err());
        assert!(parse(&["trace", "--backend", "magic"]).is_err());
        assert!(parse(&["trace", "--bogus"]).is_err());
        assert!(parse(&["trace", "--ring-bytes", "1000"]).is_err());
    }

    #[test]
    fn parses_export() {
        let Command::Export(args) = parse(&[
            "export",
            "--listen",
            "127.0.0.1:0",
            "--per-file-top",
            "5",
            "--path-prefix",
            "/srv",
        ])
        .unwrap()
        .command
        else {
            panic!("not export")
        };
        assert_eq!(args.listen.port(), 0);
        assert_eq!(args.per_file_top, 5);
        assert_eq!(args.filter.path_prefixes, vec![PathBuf::from("/srv")]);
        assert!(parse(&["export", "--listen", "localhost"]).is_err());
        assert!(parse(&["export", "--listen", "300.1.1.1:80"]).is_err());
    }

    #[test]
    fn defaults() {
        let Command::Trace(args) = parse(&["trace"]).unwrap().command else {
            panic!("not trace")
        };
        assert_eq!(args.duration, None);
        assert_eq!(args.filter.backend, BackendChoice::Auto);
        assert!(args.command.is_empty());
    }
}
