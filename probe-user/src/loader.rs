//! Loading the eBPF object, attaching one of the three backends (fentry,
//! kprobe, tracepoint) and reading its maps.

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe, Program, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{
    counter, filter, FileKey, FileStats, PendingCounts, ProbeConfig, WriterStats, WriterStatsKey,
    LATENCY_BUCKETS, MAX_COMM_FILTERS, TASK_COMM_LEN,
};

use crate::{
    btf::{BtfError, KernelBtf},
    cli::BackendChoice,
    error::exit_code,
    events::FileId,
    kallsyms::Kallsyms,
};

/// The eBPF object built by build.rs.
pub(crate) static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mmapwatch-probes"));

pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A classic tracepoint the backend attaches to.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// Without it, mmapwatch still works but sees less (said in `doctor`
    /// and in the report's warnings).
    pub required: bool,
    pub purpose: &'static str,
    /// Attached as a raw tracepoint: the fault programs run on every page
    /// fault of the host, and a raw one reads its arguments straight from
    /// the context instead of having the kernel copy a record first.
    pub raw: bool,
}

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        program: "page_fault_user",
        category: "exceptions",
        name: "page_fault_user",
        required: true,
        purpose: "write faults from user space",
        raw: true,
    },
    Tracepoint {
        program: "page_fault_kernel",
        category: "exceptions",
        name: "page_fault_kernel",
        required: false,
        purpose: "kernel stores into user mappings (read(2) into a mapping)",
        raw: true,
    },
    Tracepoint {
        program: "sys_enter_mmap",
        category: "syscalls",
        name: "sys_enter_mmap",
        required: false,
        purpose: "processes with shared writable mappings (tmpfs possibly-written pages)",
        raw: false,
    },
    Tracepoint {
        program: "sys_enter_mprotect",
        category: "syscalls",
        name: "sys_enter_mprotect",
        required: false,
        purpose: "mappings made writable later (tmpfs possibly-written pages)",
        raw: false,
    },
];

/// The function-hook backends' own program on the user fault tracepoint:
/// read faults only (the hooks see every write), for tmpfs pages that a
/// read fault maps writable.
pub const READ_FAULTS: Tracepoint = Tracepoint {
    program: "page_fault_user_reads",
    category: "exceptions",
    name: "page_fault_user",
    required: false,
    purpose: "tmpfs/shmem pages mapped writable by read faults (possibly written)",
    raw: true,
};

/// A raw tracepoint the backend attaches to: they give the folio and
/// inode pointers whose classic formats lack the device number or the
/// inode's generation.
#[derive(Clone, Copy, Debug)]
pub struct RawTracepoint {
    pub program: &'static str,
    pub name: &'static str,
    /// Without an optional one, mmapwatch still works but sees less (said
    /// in `doctor` and in the report's warnings).
    pub required: bool,
    pub purpose: &'static str,
    /// Loaded as tp_btf: its program reads fields through the typed
    /// arguments directly instead of one `bpf_probe_read_kernel` each
    /// (worth it on a hot one; the load needs aya's BTF parse).
    pub typed: bool,
}

const fn raw(name: &'static str, required: bool, purpose: &'static str) -> RawTracepoint {
    RawTracepoint {
        program: name,
        name,
        required,
        purpose,
        typed: false,
    }
}

const fn typed(name: &'static str, required: bool, purpose: &'static str) -> RawTracepoint {
    RawTracepoint {
        typed: true,
        ..raw(name, required, purpose)
    }
}

pub const RAW_TRACEPOINTS: &[RawTracepoint] = &[
    raw("sched_process_fork", true, "following -- CMD's descendants"),
    raw("sched_process_exit", true, "forgetting exited processes"),
    raw("sb_mark_inode_writeback", true, "writeback start times"),
    raw(
        "sb_clear_inode_writeback",
        true,
        "writeback completion times",
    ),
    typed("writeback_dirty_folio", true, "folios and pages dirtied"),
    raw(
        "writeback_single_inode",
        true,
        "pages written back by the flusher",
    ),
    raw(
        "ext4_writepages_result",
        false,
        "pages ext4 wrote back (fsync, msync and flusher)",
    ),
    raw(
        "mm_filemap_map_pages",
        false,
        "tmpfs/shmem pages mapped writable by read faults (possibly written)",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("must run as root, or with CAP_BPF and CAP_PERFMON (try sudo)")]
    NotPrivileged,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing: {0}")]
    NoTracefs(String),
    #[error("this kernel has no tracepoint {0}, which mmapwatch needs for {1}")]
    MissingTracepoint(String, &'static str),
    #[error("the kernel rejected program {program}: {reason}")]
    Rejected { program: String, reason: String },
    #[error("could not attach {program}: {reason}")]
    Attach { program: String, reason: String },
    #[error("eBPF object: {0}")]
    Object(String),
    #[error("{map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("--backend {backend} does not work on this kernel: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

impl LoadError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::NotPrivileged => exit_code::PRIVILEGES,
            LoadError::Btf(_)
            | LoadError::NoTracefs(_)
            | LoadError::MissingTracepoint(..)
            | LoadError::Rejected { .. }
            | LoadError::Attach { .. }
            | LoadError::Backend { .. } => exit_code::KERNEL,
            LoadError::Object(_) | LoadError::Map { .. } => exit_code::RUNTIME,
        }
    }
}

/// Effective capabilities of this process.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub fn has_capability(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Root, or the two capabilities that replace it for tracing.
pub fn privileged() -> bool {
    let caps = effective_capabilities();
    has_capability(caps, CAP_SYS_ADMIN)
        || (has_capability(caps, CAP_BPF) && has_capability(caps, CAP_PERFMON))
}

/// The mounted tracefs, mounting it at /sys/kernel/tracing if needed.
pub fn tracefs() -> Result<PathBuf, LoadError> {
    if let Some(root) = TRACEFS_ROOTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let target = Path::new(TRACEFS_ROOTS[0]);
    let mounted = nix_mount_tracefs(target);
    match mounted {
        Ok(()) if target.join("events").is_dir() => Ok(target.to_path_buf()),
        Ok(()) => Err(LoadError::NoTracefs("mounted, but it has no events".into())),
        Err(err) => Err(LoadError::NoTracefs(err.to_string())),
    }
}

fn nix_mount_tracefs(target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let path = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path has a NUL byte"))?;
    let fstype = c"tracefs";
    let source = c"nodev";
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether tracefs has this tracepoint.
/// Whether a tracepoint of this name exists in any category (raw
/// tracepoints are named without one).
pub fn raw_tracepoint_exists(tracefs: &Path, name: &str) -> bool {
    std::fs::read_dir(tracefs.join("events")).is_ok_and(|categories| {
        categories
            .flatten()
            .any(|category| category.path().join(name).is_dir())
    })
}

pub fn tracepoint_exists(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("id")
        .exists()
}

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    pub btf_path: PathBuf,
    /// Where to look tracepoints up instead of the mounted tracefs (tests
    /// simulate a kernel that lacks one).
    pub tracefs_override: Option<PathBuf>,
    /// Trace only these tgids (and, for `follow`, their descendants).
    pub filter_by_tgid: bool,
    pub comms: Vec<String>,
    pub include_cow: bool,
    pub ring_bytes: Option<u32>,
    pub dedup_entries: Option<u32>,
    /// Enable the kernel side's debug logs (aya-log).
    pub kernel_debug_logs: bool,
}

/// Totals of the kernel's per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub ringbuf_drops: u64,
    pub vma_lookup_failed: u64,
    pub dedup_inserts: u64,
    pub dedup_insert_failed: u64,
    pub file_stats_full: u64,
    pub shared_write_faults: u64,
    pub cow_faults: u64,
    pub events_submitted: u64,
    pub writer_insert_failed: u64,
    /// Write faults that mapped a whole large folio writable.
    pub folio_spans: u64,
    pub writer_stats_full: u64,
    /// Highest ring-buffer fill seen, in bytes.
    pub ring_peak_bytes: u64,
    /// The part of `ringbuf_drops` that were file announcements.
    pub ringbuf_drops_file_events: u64,
    /// Faults looked up with bpf_find_vma because the maple walk missed.
    pub vma_walk_fallbacks: u64,
    /// Write faults past the end of the file (SIGBUS; nothing written).
    pub faults_past_eof: u64,
    /// Read faults that mapped tmpfs/shmem pages writable, and those whose
    /// mapping could not be checked.
    pub possible_write_windows: u64,
    pub possible_write_unverified: u64,
}

impl KernelCounters {
    /// Everything the kernel side failed to report.
    pub fn lost(&self) -> u64 {
        self.ringbuf_drops
            + self.vma_lookup_failed
            + self.file_stats_full
            + self.writer_insert_failed
    }
}

/// What was attached, and what could not be (optional tracepoints).
#[derive(Clone, Debug, Default)]
pub struct Attached {
    pub programs: Vec<String>,
    pub missing: Vec<String>,
    pub attach_time: Duration,
}

/// The loaded eBPF object and, once attached, its backend.
pub struct Probes {
    ebpf: Ebpf,
    pub attached: Attached,
    pub dedup_capacity: u32,
    pub ring_bytes: u32,
    /// Why the function-hook backends cannot read a `struct vm_fault`
    /// here, if they cannot.
    fault_offsets_missing: Option<String>,
    /// Kept for lookups only the fentry backend needs (each scans all
    /// of vmlinux's types: not at start-up).
    kernel_btf: KernelBtf,
    /// aya's own parse of vmlinux BTF, for tp_btf and fentry loads.
    aya_btf: aya::Btf,
    pub selection: Selection,
}

/// Kernel function hooks: BTF trampolines or kprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Fentry,
    Kprobe,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
        }
    }
}

/// The backend in use and how it came to be chosen.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub backend: &'static str,
    pub reason: String,
    /// Kernel functions hooked, as `fentry/do_wp_page` or `kprobe/...`.
    pub hooks: Vec<String>,
    /// Function-by-function fallbacks taken, each with its reason.
    pub fallbacks: Vec<String>,
    /// The filesystem's `->page_mkwrite` is recorded per file.
    pub page_mkwrite: bool,
    /// Per-page writeback times are recorded (`folio_end_writeback`).
    pub page_writeback: bool,
}

/// Filesystem `->page_mkwrite` implementations, hooked one by one where
/// `do_page_mkwrite` is inlined. ext4, xfs, btrfs and fuse are usually
/// modules, whose functions kprobes reach (kallsyms) and fentry here does
/// not (aya resolves fentry targets in vmlinux BTF only).
pub const FS_MKWRITE_HOOKS: &[&str] = &[
    "filemap_page_mkwrite",
    "ext4_page_mkwrite",
    "iomap_page_mkwrite",
    "xfs_write_fault",
    "xfs_filemap_page_mkwrite",
    "btrfs_page_mkwrite",
    "fuse_page_mkwrite",
    "nfs_vm_page_mkwrite",
    "f2fs_vm_page_mkwrite",
    "ceph_page_mkwrite",
];
/// fentry programs available for filesystem hooks (one per target).
const FENTRY_FS_MKWRITE_SLOTS: usize = 4;

/// A kernel function and the programs that hook it either way.
struct Hook<'a> {
    function: &'a str,
    fentry: &'a str,
    kprobe: &'a str,
}

/// Fault hooks. `do_wp_page` and `finish_fault` must both attach for a
/// function-hook backend; `wp_page_copy` is optional (without it
/// `do_wp_page` records private copies too).
const WP_PAGE: Hook = Hook {
    function: "do_wp_page",
    fentry: "fentry_do_wp_page",
    kprobe: "kprobe_do_wp_page",
};
const FINISH_FAULT: Hook = Hook {
    function: "finish_fault",
    fentry: "fentry_finish_fault",
    kprobe: "kprobe_finish_fault",
};
const WP_PAGE_COPY: Hook = Hook {
    function: "wp_page_copy",
    fentry: "fentry_wp_page_copy",
    kprobe: "kprobe_wp_page_copy",
};
const DO_PAGE_MKWRITE: Hook = Hook {
    function: "do_page_mkwrite",
    fentry: "fentry_do_page_mkwrite",
    kprobe: "kprobe_do_page_mkwrite",
};
const FOLIO_END_WRITEBACK: Hook = Hook {
    function: "folio_end_writeback",
    fentry: "fentry_folio_end_writeback",
    kprobe: "kprobe_folio_end_writeback",
};

/// Whether the kernel has the kprobe PMU that aya attaches kprobes with.
pub fn kprobe_pmu() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// (cgroup id, kernel dev, command name) of a writer label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterLabel {
    pub cgroup_id: u64,
    pub dev: u32,
    pub comm: String,
}

fn seed_shared_mappers(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map = ebpf.map_mut("SHARED_MAPPERS").ok_or(LoadError::Map {
        map: "SHARED_MAPPERS",
        reason: "missing from the object".into(),
    })?;
    let mut mappers: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(|err| LoadError::Map {
            map: "SHARED_MAPPERS",
            reason: err.to_string(),
        })?;
    for tgid in shared_writable_mappers(Path::new("/proc")) {
        // A process gone meanwhile, or a full map: at worst an extra look.
        let _ = mappers.insert(tgid, 1, 0);
    }
    Ok(())
}

fn comm_bytes(comm: &str) -> [u8; TASK_COMM_LEN] {
    let mut out = [0u8; TASK_COMM_LEN];
    let bytes = comm.as_bytes();
    let len = bytes.len().min(TASK_COMM_LEN - 1);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}

/// Pages the kernel maps around a read fault: debugfs's fault_around_bytes
/// when mounted, else the kernel's default (64 KiB).
fn fault_around_pages() -> u32 {
    let bytes = std::fs::read_to_string("/sys/kernel/debug/fault_around_bytes")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(65536);
    u32::try_from((bytes / page_size()).clamp(1, 512)).unwrap_or(16)
}

/// Processes that already have a shared writable mapping ("rw-s" or
/// "-w-s" in /proc/PID/maps): mappings made before mmapwatch started.
fn shared_writable_mappers(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Bytes: a mapped file's name need not be UTF-8.
            std::fs::read(proc_root.join(pid.to_string()).join("maps")).is_ok_and(|maps| {
                maps.split(|&b| b == b'\n').any(|line| {
                    let perms = line.split(|&b| b == b' ').nth(1).unwrap_or(b"");
                    perms.len() == 4 && perms[1] == b'w' && perms[3] == b's'
                })
            })
        })
        .collect()
}

/// First-write dedup entries, each a 512-page chunk of one file: 2^15 of
/// them follow 16 M pages (64 GiB of 4 KiB pages). LRU maps are
/// preallocated, so this is kernel memory (~150 B each, ~5 MiB) and
/// start-up time. Evicted chunks written again are reported again and
/// deduplicated in userspace, so a smaller map costs only ring traffic.
const DEFAULT_DEDUP_ENTRIES: u32 = 1 << 15;
/// The ring buffer's size in the eBPF object.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

impl Probes {
    /// Checks privileges and kernel support, then loads the eBPF object with
    /// offsets and configuration filled in. Nothing is attached yet.
    pub fn load(options: &ProbeOptions) -> Result<Self, LoadError> {
        if !privileged() {
            return Err(LoadError::NotPrivileged);
        }
        // aya's own parse of the same BTF (tp_btf and fentry loads need
        // it) runs while the object's maps are created.
        let btf_path = options.btf_path.clone();
        let aya_btf_parse =
            std::thread::spawn(move || aya::Btf::parse_file(btf_path, aya::Endianness::default()));
        let phase = Instant::now();
        let kernel_btf = KernelBtf::from_file(&options.btf_path)?;
        log::debug!("startup: kernel BTF parsed in {:?}", phase.elapsed());
        let mut offsets = kernel_btf.kernel_offsets()?;
        if let Err(err) = kernel_btf.maple_offsets(&mut offsets) {
            log::info!("no maple-tree walk ({err}): mappings are looked up with bpf_find_vma");
        }
        let fault_offsets_missing = kernel_btf
            .fault_hook_offsets(&mut offsets)
            .err()
            .map(|err| format!("struct vm_fault: {err}"));
        log::debug!("startup: offsets resolved in {:?}", phase.elapsed());
        let tracefs = match &options.tracefs_override {
            Some(path) => path.clone(),
            None => tracefs()?,
        };
        for tp in TRACEPOINTS.iter().filter(|tp| tp.required) {
            if !tracepoint_exists(&tracefs, tp.category, tp.name) {
                return Err(LoadError::MissingTracepoint(
                    format!("{}:{}", tp.category, tp.name),
                    tp.purpose,
                ));
            }
        }

        if options.comms.len() > MAX_COMM_FILTERS {
            return Err(LoadError::Object(format!(
                "at most {MAX_COMM_FILTERS} --comm filters"
            )));
        }
        let mut config = ProbeConfig {
            filter_flags: if options.filter_by_tgid {
                filter::BY_TGID
            } else {
                0
            },
            include_cow: u32::from(options.include_cow),
            self_tgid: std::process::id(),
            page_shift: page_size().trailing_zeros(),
            comm_count: options.comms.len() as u32,
            fault_around_pages: fault_around_pages(),
            ..ProbeConfig::default()
        };
        if !options.comms.is_empty() {
            config.filter_flags |= filter::BY_COMM;
        }
        for (slot, comm) in config.comms.iter_mut().zip(&options.comms) {
            *slot = comm_bytes(comm);
        }

        let dedup_capacity = options.dedup_entries.unwrap_or(DEFAULT_DEDUP_ENTRIES);
        let log_level: u8 = if options.kernel_debug_logs { 0xff } else { 0 };
        let mut loader = EbpfLoader::new();
        loader
            // No program is BTF-typed (raw tracepoints, not tp_btf) and
            // offsets come from our own parse: aya need not parse the
            // kernel's BTF a second time.
            .btf(None)
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries("PAGE_SEEN", dedup_capacity);
        if let Some(bytes) = options.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let phase = Instant::now();
        let mut ebpf = loader
            .load(PROBES_OBJECT)
            .map_err(|err| LoadError::Object(err.to_string()))?;
        log::debug!(
            "startup: object loaded, maps created in {:?}",
            phase.elapsed()
        );
        let phase = Instant::now();
        if options.kernel_debug_logs {
            spawn_kernel_logger(&mut ebpf);
        }

        let aya_btf = aya_btf_parse
            .join()
            .map_err(|_| LoadError::Object("kernel BTF: the parse panicked".into()))?
            .map_err(|err| LoadError::Object(format!("kernel BTF: {err}")))?;
        let plan: Vec<(&str, LoadAs)> = TRACEPOINTS
            .iter()
            .map(|tp| {
                (
                    tp.program,
                    if tp.raw { LoadAs::Raw } else { LoadAs::Classic },
                )
            })
            .chain(RAW_TRACEPOINTS.iter().map(|tp| {
                let how = if tp.typed {
                    LoadAs::Typed(tp.name)
                } else {
                    LoadAs::Raw
                };
                (tp.program, how)
            }))
            .collect();
        load_programs(&mut ebpf, &plan, &aya_btf)?;
        log::debug!("startup: programs verified in {:?}", phase.elapsed());
        seed_shared_mappers(&mut ebpf)?;
        Ok(Self {
            ebpf,
            attached: Attached::default(),
            dedup_capacity,
            ring_bytes: options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES),
            fault_offsets_missing,
            kernel_btf,
            aya_btf,
            selection: Selection::default(),
        })
    }

    /// Attaches the backend `choice` asks for (`auto`: fentry, else kprobe,
    /// else tracepoint, by what really loads and attaches). Optional
    /// tracepoints this kernel lacks are recorded in `attached.missing`.
    pub fn attach(&mut self, choice: BackendChoice) -> Result<(), LoadError> {
        let started = Instant::now();
        let tracefs = tracefs()?;
        // Writeback and process programs first: the stats the fault
        // programs create are then complete.
        self.attach_tracepoints(&tracefs, false)?;
        let candidates: &[Mechanism] = match choice {
            BackendChoice::Auto => &[Mechanism::Fentry, Mechanism::Kprobe],
            BackendChoice::Fentry => &[Mechanism::Fentry],
            BackendChoice::Kprobe => &[Mechanism::Kprobe],
            BackendChoice::Tracepoint => &[],
        };
        let mut refusals = Vec::new();
        let mut chosen = None;
        for &mechanism in candidates {
            match self.attach_function_hooks(mechanism) {
                Ok(()) => {
                    chosen = Some(mechanism);
                    break;
                }
                Err(why) => refusals.push(format!("{}: {why}", mechanism.name())),
            }
        }
        let reason = match (choice, chosen) {
            (BackendChoice::Auto, Some(mechanism)) => format!(
                "auto: {} hooks on do_wp_page and finish_fault load and attach{}",
                mechanism.name(),
                if refusals.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", refusals.join("; "))
                }
            ),
            (BackendChoice::Auto, None) => format!(
                "auto: {}; the tracepoint backend needs only tracepoints, raw tracepoints and BTF",
                refusals.join("; ")
            ),
            (_, Some(mechanism)) => format!("requested with --backend {}", mechanism.name()),
            (BackendChoice::Fentry | BackendChoice::Kprobe, None) => {
                return Err(LoadError::Backend {
                    backend: candidates[0].name(),
                    reason: refusals.join("; "),
                });
            }
            (BackendChoice::Tracepoint, None) => "requested with --backend tracepoint".into(),
        };
        self.selection.reason = reason;
        match chosen {
            Some(mechanism) => {
                self.selection.backend = mechanism.name();
                let label = format!("raw_tp/{}", READ_FAULTS.name);
                match self.attach_tracepoint(&READ_FAULTS, &label) {
                    Ok(()) => self.attached.programs.push(label),
                    Err(_) => self
                        .attached
                        .missing
                        .push(format!("{label} ({})", READ_FAULTS.purpose)),
                }
            }
            None => {
                self.selection.backend = "tracepoint";
                self.attach_tracepoints(&tracefs, true)?;
            }
        }
        self.attached.attach_time = started.elapsed();
        Ok(())
    }

    /// The function-hook backend on `mechanism`: both fault hooks or
    /// nothing; then what only function hooks see, each with its fallback.
    fn attach_function_hooks(&mut self, mechanism: Mechanism) -> Result<(), String> {
        if let Some(why) = &self.fault_offsets_missing {
            return Err(why.clone());
        }
        if mechanism == Mechanism::Kprobe && !kprobe_pmu() {
            return Err(
                "no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel built without CONFIG_KPROBES"
                    .into(),
            );
        }
        let mut hooks = Vec::new();
        let mut fallbacks = Vec::new();
        // wp_page_copy first: once it is in, do_wp_page leaves private
        // copies to it, and no fault is recorded twice.
        match self.hook(mechanism, &WP_PAGE_COPY) {
            Ok(()) => {
                self.set_hook_bits(probe_common::hooks::COW_AT_WP_PAGE_COPY)
                    .map_err(|e| e.to_string())?;
                hooks.push(format!("{}/wp_page_copy", mechanism.name()));
            }
            Err(why) => fallbacks.push(format!(
                "wp_page_copy: {why}; do_wp_page records private copies"
            )),
        }
        for hook in [WP_PAGE, FINISH_FAULT] {
            if let Err(why) = self.hook(mechanism, &hook) {
                self.unhook_all();
                return Err(format!("{}: {why}", hook.function));
            }
            hooks.push(format!("{}/{}", mechanism.name(), hook.function));
        }
        self.selection.page_mkwrite = match self.hook(mechanism, &DO_PAGE_MKWRITE) {
            Ok(()) => {
                hooks.push(format!("{}/do_page_mkwrite", mechanism.name()));
                true
            }
            Err(why) => {
                let attached = self.hook_fs_mkwrite(mechanism);
                fallbacks.push(format!(
                    "do_page_mkwrite: {why}; hooked the filesystems' own: {}",
                    if attached.is_empty() {
                        "none found".to_string()
                    } else {
                        attached.join(", ")
                    }
                ));
                hooks.extend(attached.iter().map(|f| format!("{}/{f}", mechanism.name())));
                !attached.is_empty()
            }
        };
        self.selection.page_writeback = match self.hook(mechanism, &FOLIO_END_WRITEBACK) {
            Ok(()) => {
                hooks.push(format!("{}/folio_end_writeback", mechanism.name()));
                true
            }
            Err(why) => {
                fallbacks.push(format!(
                    "folio_end_writeback: {why}; writeback is known per file only"
                ));
                false
            }
        };
        self.attached.programs.extend(hooks.iter().cloned());
        self.selection.hooks = hooks;
        self.selection.fallbacks = fallbacks;
        Ok(())
    }

    /// Loads (fentry: bound to `function`) and attaches one hook.
    fn hook(&mut self, mechanism: Mechanism, hook: &Hook) -> Result<(), String> {
        let Hook {
            function,
            fentry,
            kprobe,
        } = *hook;
        match mechanism {
            Mechanism::Fentry => {
                let program: &mut FEntry =
                    program_mut(&mut self.ebpf, fentry).map_err(|e| e.to_string())?;
                program
                    .load(function, &self.aya_btf)
                    .map_err(|err| short_error(&err.to_string()))?;
                program
                    .attach()
                    .map_err(|err| short_error(&err.to_string()))?;
            }
            Mechanism::Kprobe => {
                let program: &mut KProbe =
                    program_mut(&mut self.ebpf, kprobe).map_err(|e| e.to_string())?;
                if program.fd().is_err() {
                    program
                        .load()
                        .map_err(|err| short_error(&err.to_string()))?;
                }
                program
                    .attach(function, 0)
                    .map_err(|err| short_error(&err.to_string()))?;
            }
        }
        Ok(())
    }

    /// Hooks the filesystems' `->page_mkwrite` functions this kernel has.
    fn hook_fs_mkwrite(&mut self, mechanism: Mechanism) -> Vec<String> {
        let mut attached = Vec::new();
        match mechanism {
            Mechanism::Fentry => {
                // Filesystem `->page_mkwrite` functions in vmlinux BTF.
                let targets: Vec<&str> = FS_MKWRITE_HOOKS
                    .iter()
                    .copied()
                    .filter(|f| self.kernel_btf.has_function(f))
                    .collect();
                for (slot, function) in targets.iter().take(FENTRY_FS_MKWRITE_SLOTS).enumerate() {
                    let program = format!("fentry_fs_mkwrite_{slot}");
                    let hook = Hook {
                        function,
                        fentry: &program,
                        kprobe: "",
                    };
                    if self.hook(mechanism, &hook).is_ok() {
                        attached.push(function.to_string());
                    }
                }
            }
            Mechanism::Kprobe => {
                let symbols = Kallsyms::read();
                for &function in FS_MKWRITE_HOOKS.iter().filter(|f| symbols.has_function(f)) {
                    let hook = Hook {
                        function,
                        fentry: "",
                        kprobe: "kprobe_fs_mkwrite",
                    };
                    if self.hook(mechanism, &hook).is_ok() {
                        attached.push(function.to_string());
                    }
                }
            }
        }
        attached
    }

    /// Detaches every function hook (a backend that did not come together).
    fn unhook_all(&mut self) {
        let names: Vec<String> = self
            .ebpf
            .programs()
            .map(|(name, _)| name.to_string())
            .filter(|name| name.starts_with("fentry_") || name.starts_with("kprobe_"))
            .collect();
        for name in names {
            if let Some(program) = self.ebpf.program_mut(&name) {
                let _ = match program {
                    aya::programs::Program::FEntry(p) => p.unload(),
                    aya::programs::Program::KProbe(p) => p.unload(),
                    _ => Ok(()),
                };
            }
        }
        let _ = self.set_hook_bits(0);
    }

    fn set_hook_bits(&mut self, bits: u32) -> Result<(), LoadError> {
        let mut map: Array<_, u32> = self.typed_map_mut("HOOKS")?;
        map.set(0, bits, 0).map_err(|err| LoadError::Map {
            map: "HOOKS",
            reason: err.to_string(),
        })
    }

    /// File -> address of the `->page_mkwrite` its filesystem ran.
    pub fn page_mkwrite_functions(&self) -> Result<StdHashMap<FileId, u64>, LoadError> {
        let map: HashMap<_, FileKey, u64> = self.typed_map("PAGE_MKWRITE")?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, function)| (FileId::from_key(&key), function))
            .collect())
    }

    /// Attaches the classic and raw tracepoints: the fault ones
    /// (`faults`) or all the others.
    fn attach_tracepoints(&mut self, tracefs: &Path, faults: bool) -> Result<(), LoadError> {
        let is_fault = |tp: &Tracepoint| tp.category == "exceptions";
        for tp in TRACEPOINTS.iter().rev().filter(|tp| is_fault(tp) == faults) {
            let label = format!("{}:{}", tp.category, tp.name);
            if !tracepoint_exists(tracefs, tp.category, tp.name) {
                if tp.required {
                    return Err(LoadError::MissingTracepoint(label, tp.purpose));
                }
                self.attached
                    .missing
                    .push(format!("{label} ({})", tp.purpose));
                continue;
            }
            self.attach_tracepoint(tp, &label)?;
            self.attached.programs.push(label);
        }
        if faults {
            return Ok(());
        }
        for tp in RAW_TRACEPOINTS {
            let label = format!("raw_tp/{}", tp.name);
            let attached = if tp.typed {
                let prog: &mut BtfTracePoint = program_mut(&mut self.ebpf, tp.program)?;
                prog.attach().map(drop)
            } else {
                let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, tp.program)?;
                prog.attach(tp.name).map(drop)
            };
            match attached {
                Ok(()) => self.attached.programs.push(label),
                Err(err) if tp.required => {
                    return Err(LoadError::Attach {
                        program: label,
                        reason: err.to_string(),
                    })
                }
                Err(_) => self
                    .attached
                    .missing
                    .push(format!("{label} ({})", tp.purpose)),
            }
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self, tp: &Tracepoint, label: &str) -> Result<(), LoadError> {
        let failed = |err: aya::programs::ProgramError| LoadError::Attach {
            program: label.to_string(),
            reason: err.to_string(),
        };
        if tp.raw {
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, tp.program)?;
            // Loaded here if not at start-up (READ_FAULTS: function
            // backends only).
            if program.fd().is_err() {
                program.load().map_err(failed)?;
            }
            program.attach(tp.name).map_err(failed)?;
        } else {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, tp.program)?;
            program.attach(tp.category, tp.name).map_err(failed)?;
        }
        Ok(())
    }

    /// Whether `mechanism`'s fault hooks load and attach here (for
    /// `doctor`); the error says why not. Detached again at once.
    pub fn probe_mechanism(&mut self, mechanism: Mechanism) -> Result<Selection, String> {
        let result = self.attach_function_hooks(mechanism);
        let selection = self.selection.clone();
        self.unhook_all();
        result.map(|()| selection)
    }

    /// Starts tracing `tgid`; with `follow_children`, its future descendants too.
    pub fn trace_tgid(&mut self, tgid: u32, follow_children: bool) -> Result<(), LoadError> {
        let mut map: HashMap<_, u32, u32> = self.typed_map_mut("TRACED")?;
        let value = if follow_children {
            probe_common::traced::FOLLOW_CHILDREN
        } else {
            probe_common::traced::EXACT
        };
        map.insert(tgid, value, 0).map_err(|err| LoadError::Map {
            map: "TRACED",
            reason: err.to_string(),
        })
    }

    pub fn untrace_tgid(&mut self, tgid: u32) -> Result<(), LoadError> {
        let mut map: HashMap<_, u32, u32> = self.typed_map_mut("TRACED")?;
        // Already gone is fine: it may have exited.
        let _ = map.remove(&tgid);
        Ok(())
    }

    /// The event ring buffer, taken out so it can be polled on its own.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(LoadError::Map {
            map: "EVENTS",
            reason: "missing from the object".into(),
        })?;
        RingBuf::try_from(map).map_err(|err| LoadError::Map {
            map: "EVENTS",
            reason: err.to_string(),
        })
    }

    pub fn counters(&self) -> Result<KernelCounters, LoadError> {
        let map: PerCpuArray<_, u64> = self.typed_map("COUNTERS")?;
        let mut totals = [0u64; counter::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let values = map.get(&(index as u32), 0).map_err(|err| LoadError::Map {
                map: "COUNTERS",
                reason: err.to_string(),
            })?;
            // Every slot is a per-CPU count but the peak, a per-CPU maximum.
            *total = if index as u32 == counter::RING_PEAK_BYTES {
                values.iter().copied().max().unwrap_or(0)
            } else {
                values.iter().sum()
            };
        }
        Ok(KernelCounters {
            ringbuf_drops: totals[counter::RINGBUF_DROPS as usize],
            vma_lookup_failed: totals[counter::VMA_LOOKUP_FAILED as usize],
            dedup_inserts: totals[counter::DEDUP_INSERTS as usize],
            dedup_insert_failed: totals[counter::DEDUP_INSERT_FAILED as usize],
            file_stats_full: totals[counter::FILE_STATS_FULL as usize],
            shared_write_faults: totals[counter::SHARED_WRITE_FAULTS as usize],
            cow_faults: totals[counter::COW_FAULTS as usize],
            events_submitted: totals[counter::EVENTS_SUBMITTED as usize],
            writer_insert_failed: totals[counter::WRITER_INSERT_FAILED as usize],
            folio_spans: totals[counter::FOLIO_SPANS as usize],
            writer_stats_full: totals[counter::WRITER_STATS_FULL as usize],
            ring_peak_bytes: totals[counter::RING_PEAK_BYTES as usize],
            ringbuf_drops_file_events: totals[counter::RINGBUF_DROPS_FILE_EVENTS as usize],
            vma_walk_fallbacks: totals[counter::VMA_WALK_FALLBACKS as usize],
            faults_past_eof: totals[counter::FAULTS_PAST_EOF as usize],
            possible_write_windows: totals[counter::POSSIBLE_WRITE_WINDOWS as usize],
            possible_write_unverified: totals[counter::POSSIBLE_WRITE_UNVERIFIED as usize],
        })
    }

    /// Each CPU's open run of fault counts, not yet in the stats maps.
    /// Read after those maps: a run closing in between is then missed for
    /// an instant, never counted twice (the kernel closes a run before it
    /// adds it to the maps).
    fn open_runs(&self) -> Result<Vec<PendingCounts>, LoadError> {
        let map: PerCpuArray<_, PendingCounts> = self.typed_map("PENDING_COUNTS")?;
        let runs = map.get(&0, 0).map_err(|err| LoadError::Map {
            map: "PENDING_COUNTS",
            reason: err.to_string(),
        })?;
        Ok(runs
            .iter()
            .filter(|run| run.shared_write_faults + run.cow_faults > 0)
            .copied()
            .collect())
    }

    /// Fault counts per (cgroup, filesystem, command), summed over CPUs.
    pub fn writer_stats(&self) -> Result<Vec<(WriterLabel, WriterStats)>, LoadError> {
        let map: PerCpuHashMap<_, WriterStatsKey, WriterStats> = self.typed_map("WRITER_STATS")?;
        let mut totals: StdHashMap<WriterStatsKey, WriterStats> = StdHashMap::new();
        for item in map.iter() {
            let Ok((key, values)) = item else { continue };
            let total = totals.entry(key).or_default();
            for v in values.iter() {
                total.shared_write_faults += v.shared_write_faults;
                total.cow_faults += v.cow_faults;
            }
        }
        for run in self.open_runs()? {
            let total = totals.entry(run.writer).or_default();
            total.shared_write_faults += run.shared_write_faults;
            total.cow_faults += run.cow_faults;
        }
        let mut out = Vec::new();
        for (key, total) in totals {
            let end = key
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(key.comm.len());
            out.push((
                WriterLabel {
                    cgroup_id: key.cgroup_id,
                    dev: key.dev,
                    comm: String::from_utf8_lossy(&key.comm[..end]).into_owned(),
                },
                total,
            ));
        }
        Ok(out)
    }

    /// Dirty-to-writeback latency: count per log2(ns) bucket.
    pub fn writeback_latency(&self) -> Result<[u64; LATENCY_BUCKETS as usize], LoadError> {
        let map: PerCpuArray<_, u64> = self.typed_map("WRITEBACK_LATENCY")?;
        let mut buckets = [0u64; LATENCY_BUCKETS as usize];
        for (index, bucket) in buckets.iter_mut().enumerate() {
            let values = map.get(&(index as u32), 0).map_err(|err| LoadError::Map {
                map: "WRITEBACK_LATENCY",
                reason: err.to_string(),
            })?;
            *bucket = values.iter().sum();
        }
        Ok(buckets)
    }

    /// (program name, run time, run count) when kernel.bpf_stats_enabled is on.
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_string(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Every file's per-CPU counters, with the CPUs' open runs of faults.
    pub fn file_stats(&self) -> Result<StdHashMap<FileId, Vec<FileStats>>, LoadError> {
        let map: PerCpuHashMap<_, FileKey, FileStats> = self.typed_map("FILE_STATS")?;
        let mut out: StdHashMap<FileId, Vec<FileStats>> = StdHashMap::new();
        for item in map.iter() {
            // An entry can vanish between listing and lookup; skip it.
            let Ok((key, values)) = item else { continue };
            out.insert(FileId::from_key(&key), values.iter().copied().collect());
        }
        for run in self.open_runs()? {
            out.entry(FileId::from_key(&run.file))
                .or_default()
                .push(FileStats {
                    shared_write_faults: run.shared_write_faults,
                    cow_faults: run.cow_faults,
                    last_write_boot_ns: run.last_write_boot_ns,
                    ..FileStats::default()
                });
        }
        Ok(out)
    }

    fn typed_map<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        name: &'static str,
    ) -> Result<T, LoadError> {
        let map = self.ebpf.map(name).ok_or(LoadError::Map {
            map: name,
            reason: "missing from the object".into(),
        })?;
        T::try_from(map).map_err(|err| LoadError::Map {
            map: name,
            reason: err.to_string(),
        })
    }

    fn typed_map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<T, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::Map {
            map: name,
            reason: "missing from the object".into(),
        })?;
        T::try_from(map).map_err(|err| LoadError::Map {
            map: name,
            reason: err.to_string(),
        })
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| LoadError::Object(format!("program {name} missing from the object")))?;
    program
        .try_into()
        .map_err(|err: aya::programs::ProgramError| LoadError::Object(err.to_string()))
}

/// How a program of the object is loaded.
#[derive(Clone, Copy)]
enum LoadAs {
    Raw,
    Classic,
    /// tp_btf, on this tracepoint.
    Typed(&'static str),
}

/// Loads the `plan`'s programs, each in its own thread: the verifier runs
/// on every core (most of the start-up time), and each thread has its
/// own program.
fn load_programs(
    ebpf: &mut Ebpf,
    plan: &[(&str, LoadAs)],
    btf: &aya::Btf,
) -> Result<(), LoadError> {
    fn load(
        program: &mut Program,
        how: LoadAs,
        btf: &aya::Btf,
    ) -> Result<(), aya::programs::ProgramError> {
        match how {
            LoadAs::Raw => <&mut RawTracePoint>::try_from(program)?.load(),
            LoadAs::Classic => <&mut TracePoint>::try_from(program)?.load(),
            LoadAs::Typed(tracepoint) => {
                <&mut BtfTracePoint>::try_from(program)?.load(tracepoint, btf)
            }
        }
    }
    let results: Vec<(String, Result<(), aya::programs::ProgramError>)> =
        std::thread::scope(|scope| {
            let threads: Vec<_> = ebpf
                .programs_mut()
                .filter_map(|(name, program)| {
                    let (_, how) = *plan.iter().find(|(planned, _)| *planned == name)?;
                    Some(scope.spawn(move || (name.to_string(), load(program, how, btf))))
                })
                .collect();
            threads
                .into_iter()
                .filter_map(|thread| thread.join().ok())
                .collect()
        });
    for (name, _) in plan {
        match results.iter().find(|(loaded, _)| loaded == name) {
            None => return Err(LoadError::Object(format!("program {name} not loaded"))),
            Some((_, Err(err))) => {
                return Err(LoadError::Rejected {
                    program: name.to_string(),
                    reason: first_line(&err.to_string()),
                })
            }
            Some((_, Ok(()))) => {}
        }
    }
    Ok(())
}

/// One line of a load or attach error, without the verifier log's heading.
fn short_error(text: &str) -> String {
    first_line(text)
        .trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .to_string()
}

/// The verifier log can run to thousands of lines; the error keeps the first
/// (full logs: RUST_LOG=debug).
fn first_line(text: &str) -> String {
    log::debug!("{text}");
    let line = text.lines().next().unwrap_or(text);
    if line.len() > 300 {
        format!("{}…", &line[..line.floor_char_boundary(300)])
    } else {
        line.to_string()
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// Forwards the kernel side's aya-log records to the `log` crate.
fn spawn_kernel_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring fd until it is dropped, and
            // as_raw_fd always returns that fd.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    logger,
                    tokio::io::Interest::READABLE,
                )
            };
            let Ok(mut fd) = registered else {
                log::warn!("kernel logs: cannot poll the log ring");
                return;
            };
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        break;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(err) => log::warn!("kernel logs unavailable: {err}"),
    }
}
