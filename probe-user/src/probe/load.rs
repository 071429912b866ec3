//! Loading the eBPF object: offsets from BTF, configuration, maps, and
//! every program through the verifier. Nothing is attached here.

use probe_common::map_name;
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    programs::{BtfTracePoint, Program, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{
    filter, ProbeConfig, MAX_COMM_FILTERS, MAX_USER_FILTERS, RING_WAKEUP_FRACTION, TASK_COMM_LEN,
};

use super::{
    backend::{Attached, Selection},
    btf::KernelBtf,
    catalog::{RAW_TRACEPOINTS, TRACEPOINTS},
    env::{
        check_privileges, fault_around_pages, page_size, shared_writable_mappers, tracefs,
        tracepoint_exists,
    },
    error::{first_line, LoadError},
    platform,
};

/// The eBPF object built by build.rs.
pub(crate) static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mmapwatch-probes"));

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    pub btf_path: PathBuf,
    /// Where to look tracepoints up instead of the mounted tracefs (tests
    /// simulate a kernel that lacks one).
    pub tracefs_override: Option<PathBuf>,
    /// Trace only the tgids put in TRACED (`--pid`, and `-- CMD` with its
    /// descendants).
    pub filter_by_tgid: bool,
    pub comms: Vec<String>,
    /// Effective uids (`--user`).
    pub users: Vec<u32>,
    /// `--cgroup` and `--container`.
    pub cgroups: Vec<probe_common::CgroupFilter>,
    pub include_cow: bool,
    pub ring_bytes: Option<u32>,
    pub dedup_entries: Option<u32>,
    /// Enable the kernel side's debug logs (aya-log).
    pub kernel_debug_logs: bool,
    /// Send a record when a process with a shared writable mapping exits.
    pub report_exits: bool,
    /// First-write records carry the writer's user stack (`--stacks`).
    pub user_stacks: bool,
}

/// The loaded eBPF object and, once attached, its backend.
pub struct Probes {
    pub(super) ebpf: Ebpf,
    /// The stack-taking twins are loaded (`--stacks`).
    pub(super) stacks: bool,
    pub attached: Attached,
    pub dedup_capacity: u32,
    pub ring_bytes: u32,
    /// Why the function-hook backends cannot read a `struct vm_fault`
    /// here, if they cannot.
    pub(super) fault_offsets_missing: Option<String>,
    /// Kept for lookups only the fentry backend needs (each scans all
    /// of vmlinux's types: not at start-up).
    pub(super) kernel_btf: KernelBtf,
    /// aya's own parse of vmlinux BTF, for tp_btf and fentry loads; emptied
    /// once [`Probes::attach`] is done.
    pub(super) aya_btf: aya::Btf,
    pub selection: Selection,
    /// Which variant of each program loaded, and which optional ones the
    /// kernel refused.
    pub(crate) loaded: Loaded,
    /// Where tracepoints are looked up (the mounted tracefs, or the
    /// override tests use to simulate a kernel without some).
    pub(super) tracefs: PathBuf,
}

pub(crate) fn seed_shared_mappers(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut(map_name::SHARED_MAPPERS)
        .ok_or(LoadError::MissingMap(map_name::SHARED_MAPPERS))?;
    let mut mappers: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(LoadError::on_map(map_name::SHARED_MAPPERS))?;
    for tgid in shared_writable_mappers(Path::new("/proc")) {
        // A process gone meanwhile, or a full map: at worst an extra look.
        let _ = mappers.insert(tgid, 1, 0);
    }
    Ok(())
}

pub(crate) fn comm_bytes(comm: &str) -> [u8; TASK_COMM_LEN] {
    let mut out = [0u8; TASK_COMM_LEN];
    let bytes = comm.as_bytes();
    let len = bytes.len().min(TASK_COMM_LEN - 1);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}

/// First-write dedup entries, each a 512-page chunk of one file: 2^15 of
/// them follow 16 M pages (64 GiB of 4 KiB pages). LRU maps are
/// preallocated, so this is kernel memory (~150 B each, ~5 MiB) and
/// start-up time. Evicted chunks written again are reported again and
/// deduplicated in userspace, so a smaller map costs only ring traffic.
pub(crate) const DEFAULT_DEDUP_ENTRIES: u32 = 1 << 15;
/// Processes the follow map can hold: as many as this machine can run
/// (the lower of `kernel.pid_max` and `kernel.threads-max`), so following
/// `-- CMD`'s descendants never runs out. Entries are allocated as used.
fn follow_capacity() -> u32 {
    let read = |name: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let machine = read("pid_max").into_iter().chain(read("threads-max")).min();
    machine.unwrap_or(1 << 22).max(1 << 14)
}

/// The ring buffer's size in the eBPF object.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Distinct user stacks kept with `--stacks` (~1 KiB of kernel memory
/// each, 16 MiB): a stack hashed to a slot another holds is not taken
/// (`stacks_not_taken`), so the map is sized well past the call sites a
/// program writes files from.
const STACK_MAP_ENTRIES: u32 = 16 * 1024;

impl Probes {
    /// Checks privileges and kernel support, then loads the eBPF object with
    /// offsets and configuration filled in. Nothing is attached yet.
    pub fn load(options: &ProbeOptions) -> Result<Self, LoadError> {
        check_privileges()?;
        let phase = Instant::now();
        let kernel_btf = KernelBtf::from_file(&options.btf_path)?;
        // aya's own parse of the same (checked) file, which tp_btf and
        // fentry loads need, runs while offsets and maps are made.
        let btf_path = options.btf_path.clone();
        let aya_btf_parse =
            std::thread::spawn(move || aya::Btf::parse_file(btf_path, aya::Endianness::default()));
        log::debug!("startup: kernel BTF parsed in {:?}", phase.elapsed());
        let mut offsets = kernel_btf.kernel_offsets()?;
        let ancestry =
            probe_common::present::CGROUP_ANCESTOR_IDS | probe_common::present::CGROUP_ANCESTORS;
        if !options.cgroups.is_empty() && offsets.present & ancestry == 0 {
            return Err(LoadError::Platform(
                "--cgroup and --container: this kernel's BTF does not describe a cgroup's ancestors"
                    .into(),
            ));
        }
        if let Err(err) = kernel_btf.vma_walk_offsets(&mut offsets) {
            log::info!("no lock-free VMA walk ({err}): mappings are looked up with bpf_find_vma");
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
        platform::check(&kernel_btf, &tracefs)?;
        log::debug!("startup: platform checked in {:?}", phase.elapsed());
        // The fault tracepoint only the tracepoint backend needs (and only
        // x86 has): checked when that backend is chosen.
        for tp in TRACEPOINTS
            .iter()
            .filter(|tp| tp.required && !tp.fault_backend_only())
        {
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
        if options.cgroups.len() > probe_common::MAX_CGROUP_FILTERS {
            return Err(LoadError::Object(format!(
                "at most {} --cgroup and --container filters",
                probe_common::MAX_CGROUP_FILTERS
            )));
        }
        if options.users.len() > MAX_USER_FILTERS {
            return Err(LoadError::Object(format!(
                "at most {MAX_USER_FILTERS} --user filters"
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
            user_count: options.users.len() as u32,
            cgroup_count: options.cgroups.len() as u32,
            fault_around_pages: fault_around_pages(),
            report_exits: u32::from(options.report_exits),
            ring_wakeup_bytes: options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES)
                / RING_WAKEUP_FRACTION,
            user_stacks: u32::from(options.user_stacks),
            ..ProbeConfig::default()
        };
        if !options.comms.is_empty() {
            config.filter_flags |= filter::BY_COMM;
        }
        for (slot, comm) in config.comms.iter_mut().zip(&options.comms) {
            *slot = comm_bytes(comm);
        }
        if !options.users.is_empty() {
            config.filter_flags |= filter::BY_USER;
        }
        for (slot, uid) in config.users.iter_mut().zip(&options.users) {
            *slot = *uid;
        }
        if !options.cgroups.is_empty() {
            config.filter_flags |= filter::BY_CGROUP;
        }
        for (slot, cgroup) in config.cgroups.iter_mut().zip(&options.cgroups) {
            *slot = *cgroup;
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
            .map_max_entries(map_name::PAGE_SEEN, dedup_capacity)
            .map_max_entries(map_name::TRACED, follow_capacity())
            .map_max_entries(
                map_name::STACKS,
                if options.user_stacks {
                    STACK_MAP_ENTRIES
                } else {
                    1
                },
            );
        if let Some(bytes) = options.ring_bytes {
            loader.map_max_entries(map_name::EVENTS, bytes);
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
        let mut plan: Vec<PlannedLoad> = Vec::new();
        for tp in TRACEPOINTS {
            // page_fault_user's program is attached twice, loaded once.
            if plan.iter().any(|planned| planned.program == tp.program) {
                continue;
            }
            plan.push(PlannedLoad {
                program: tp.program,
                before_5_17: tp.before_5_17,
                how: if tp.raw { LoadAs::Raw } else { LoadAs::Classic },
                required: tp.required,
                purpose: tp.purpose,
            });
        }
        plan.extend(RAW_TRACEPOINTS.iter().map(|tp| PlannedLoad {
            program: tp.program,
            before_5_17: None,
            how: if tp.typed {
                LoadAs::Typed(tp.name, tp.before_folios)
            } else {
                LoadAs::Raw
            },
            required: tp.required,
            purpose: tp.purpose,
        }));
        let loaded = load_programs(&mut ebpf, &plan, &aya_btf, options.user_stacks)?;
        log::debug!("startup: programs verified in {:?}", phase.elapsed());
        seed_shared_mappers(&mut ebpf)?;
        Ok(Self {
            ebpf,
            stacks: options.user_stacks,
            attached: Attached::default(),
            dedup_capacity,
            ring_bytes: options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES),
            fault_offsets_missing,
            kernel_btf,
            aya_btf,
            selection: Selection::default(),
            loaded,
            tracefs,
        })
    }

    /// The program loaded for the catalog's `program`: itself, or the
    /// variant this kernel took instead.
    pub(crate) fn loaded_variant(&self, program: &'static str) -> &'static str {
        self.loaded.variant_of(program)
    }
}

/// The object's program for the catalog's `name` (its stack-taking twin
/// with `stacks`: see [`super::catalog::program_for`]).
pub(crate) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &str,
    stacks: bool,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let name = super::catalog::program_for(name, stacks);
    let program = ebpf
        .program_mut(&name)
        .ok_or_else(|| LoadError::Object(format!("program {name} missing from the object")))?;
    program
        .try_into()
        .map_err(|err: aya::programs::ProgramError| LoadError::Object(err.to_string()))
}

/// How a program of the object is loaded.
#[derive(Clone, Copy)]
pub(crate) enum LoadAs {
    Raw,
    Classic,
    /// tp_btf, on this tracepoint, or on the second where the kernel has
    /// not the first (its name before folios).
    Typed(&'static str, Option<&'static str>),
}

/// A program to load at start-up, as the catalog describes it.
pub(crate) struct PlannedLoad {
    pub(crate) program: &'static str,
    /// Loaded where the kernel refuses `program` (probe-ebpf's `compat`).
    pub(crate) before_5_17: Option<&'static str>,
    pub(crate) how: LoadAs,
    /// Refused, an optional program is left out and said so; a required
    /// one stops the start.
    pub(crate) required: bool,
    pub(crate) purpose: &'static str,
}

/// What [`load_programs`] loaded.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// (catalog program, variant loaded instead).
    variants: Vec<(&'static str, &'static str)>,
    /// Optional programs the kernel refused, with what is lost and why.
    pub(crate) refused: Vec<(&'static str, String)>,
}

impl Loaded {
    pub(crate) fn variant_of(&self, program: &'static str) -> &'static str {
        self.variants
            .iter()
            .find(|(planned, _)| *planned == program)
            .map_or(program, |(_, variant)| variant)
    }

    /// Why `program` was left out, if the kernel refused it.
    pub(crate) fn refusal(&self, program: &str) -> Option<&str> {
        self.refused
            .iter()
            .find(|(refused, _)| *refused == program)
            .map(|(_, why)| why.as_str())
    }

    /// Records a variant loaded in place of `program` (also at attach
    /// time, for programs loaded then).
    pub(crate) fn note_variant(&mut self, program: &'static str, variant: &'static str) {
        if program != variant {
            self.variants.push((program, variant));
        }
    }
}

/// Loads one program as `how` says.
pub(crate) fn load_program(
    program: &mut Program,
    how: LoadAs,
    btf: &aya::Btf,
) -> Result<(), aya::programs::ProgramError> {
    match how {
        LoadAs::Raw => <&mut RawTracePoint>::try_from(program)?.load(),
        LoadAs::Classic => <&mut TracePoint>::try_from(program)?.load(),
        LoadAs::Typed(tracepoint, before_folios) => {
            let program = <&mut BtfTracePoint>::try_from(program)?;
            match (program.load(tracepoint, btf), before_folios) {
                (Err(_), Some(older)) => program.load(older, btf),
                (result, _) => result,
            }
        }
    }
}

/// Loads the `plan`'s programs, each in its own thread: the verifier runs
/// on every core (most of the start-up time), and each thread has its
/// own programs. A program the kernel refuses is replaced by its variant
/// for older kernels where it has one; an optional program refused
/// outright is left out (in [`Loaded::refused`]), a required one is an
/// error.
pub(crate) fn load_programs(
    ebpf: &mut Ebpf,
    plan: &[PlannedLoad],
    btf: &aya::Btf,
    stacks: bool,
) -> Result<Loaded, LoadError> {
    use super::catalog::program_for;
    type Outcome = Result<&'static str, aya::programs::ProgramError>;
    let mut programs: std::collections::HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut work = Vec::new();
    for planned in plan {
        let primary = programs
            .remove(program_for(planned.program, stacks).as_ref())
            .ok_or_else(|| {
                LoadError::Object(format!(
                    "program {} missing from the object",
                    planned.program
                ))
            })?;
        let variant = match planned.before_5_17 {
            Some(name) => Some((
                name,
                programs
                    .remove(program_for(name, stacks).as_ref())
                    .ok_or_else(|| {
                        LoadError::Object(format!("program {name} missing from the object"))
                    })?,
            )),
            None => None,
        };
        work.push((planned, primary, variant));
    }
    let outcomes: Vec<(&PlannedLoad, Outcome)> = std::thread::scope(|scope| {
        let threads: Vec<_> = work
            .into_iter()
            .map(|(planned, primary, variant)| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let mut outcome =
                        load_program(primary, planned.how, btf).map(|()| planned.program);
                    if let (Err(err), Some((name, program))) = (&outcome, variant) {
                        log::debug!(
                            "startup: {} refused ({err}); loading {name}",
                            planned.program
                        );
                        outcome = load_program(program, planned.how, btf).map(|()| name);
                    }
                    log::debug!(
                        "startup: {} verified in {:?}",
                        planned.program,
                        started.elapsed()
                    );
                    (planned, outcome)
                })
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|thread| thread.join().ok())
            .collect()
    });
    let mut loaded = Loaded::default();
    for planned in plan {
        match outcomes
            .iter()
            .find(|(done, _)| done.program == planned.program)
        {
            None => {
                return Err(LoadError::Object(format!(
                    "program {} not loaded",
                    planned.program
                )))
            }
            Some((_, Ok(variant))) => loaded.note_variant(planned.program, variant),
            Some((_, Err(err))) if planned.required => {
                return Err(LoadError::Rejected {
                    program: planned.program.to_string(),
                    reason: first_line(&err.to_string()),
                })
            }
            Some((_, Err(err))) => {
                log::info!("{} left out: {err}", planned.program);
                loaded.refused.push((
                    planned.program,
                    format!(
                        "{}: the kernel refused the program ({})",
                        planned.purpose,
                        first_line(&err.to_string())
                    ),
                ));
            }
        }
    }
    Ok(loaded)
}

/// Forwards the kernel side's aya-log records to the `log` crate.
pub(crate) fn spawn_kernel_logger(ebpf: &mut Ebpf) {
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
