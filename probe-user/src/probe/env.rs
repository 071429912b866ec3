//! What this kernel and process offer: capabilities, tracefs, the kprobe
//! PMU, page and fault-around sizes, processes already mapping files
//! shared and writable.

use std::path::{Path, PathBuf};

use super::error::LoadError;

pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub use caps::Capability;

/// Whether this process has `cap` in its effective set.
pub fn has_capability(cap: Capability) -> bool {
    caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false)
}

/// Root, or the two capabilities that replace it for tracing:
/// CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
pub fn privileged() -> bool {
    has_capability(Capability::CAP_SYS_ADMIN)
        || (has_capability(Capability::CAP_BPF) && has_capability(Capability::CAP_PERFMON))
}

/// Fails unless [`privileged`]: checked before anything is opened or
/// written, so an unprivileged run changes nothing (not even `-o FILE`).
pub fn check_privileges() -> Result<(), LoadError> {
    if privileged() {
        Ok(())
    } else {
        Err(LoadError::NotPrivileged)
    }
}

/// What a running session still needs once its programs are attached:
/// CAP_BPF for every bpf(2) call on its maps and programs (refused
/// without it wherever `kernel.unprivileged_bpf_disabled` is set),
/// CAP_SYS_PTRACE to read other users' /proc/PID/maps, CAP_CHECKPOINT_RESTORE
/// for their /proc/PID/map_files links, CAP_DAC_READ_SEARCH to open files
/// and cgroups by handle. Loading and attaching (CAP_PERFMON,
/// CAP_SYS_ADMIN) are over by then.
pub const RUNNING_CAPABILITIES: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_CHECKPOINT_RESTORE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// Keeps only `keep` (those this kernel knows) in this thread's bounding,
/// permitted and effective sets, and none inheritable or ambient: threads
/// made afterwards inherit that, so call it before starting any. Returns
/// the capabilities kept.
pub fn keep_only_capabilities(
    keep: &[Capability],
) -> Result<Vec<Capability>, caps::errors::CapsError> {
    use caps::CapSet;
    let known = caps::runtime::thread_all_supported();
    let kept: caps::CapsHashSet = keep.iter().copied().filter(|c| known.contains(c)).collect();
    // The bounding set first, while CAP_SETPCAP is still held.
    for cap in known.difference(&kept) {
        caps::drop(None, CapSet::Bounding, *cap)?;
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// Why no tracefs can be used, without mounting one.
#[derive(Debug, thiserror::Error)]
pub enum TracefsProblem {
    #[error("tracefs is not mounted (at /sys/kernel/tracing or /sys/kernel/debug/tracing)")]
    NotMounted,
    #[error("{0} is not readable by this process (tracefs is mode 0700: run as root, or make it readable)")]
    NotReadable(PathBuf),
}

/// The mounted tracefs, as found: no mount is made.
pub fn find_tracefs() -> Result<PathBuf, TracefsProblem> {
    for root in TRACEFS_ROOTS.iter().map(Path::new) {
        match std::fs::read_dir(root.join("events")) {
            Ok(_) => return Ok(root.to_path_buf()),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TracefsProblem::NotReadable(root.to_path_buf()))
            }
            Err(_) => {}
        }
    }
    Err(TracefsProblem::NotMounted)
}

/// The mounted tracefs, mounting it at /sys/kernel/tracing if needed.
pub fn tracefs() -> Result<PathBuf, LoadError> {
    match find_tracefs() {
        Ok(root) => return Ok(root),
        Err(problem @ TracefsProblem::NotReadable(_)) => {
            return Err(LoadError::NoTracefs(problem.to_string()))
        }
        Err(TracefsProblem::NotMounted) => {}
    }
    let target = Path::new(TRACEFS_ROOTS[0]);
    let mounted = nix_mount_tracefs(target);
    match mounted {
        Ok(()) if target.join("events").is_dir() => Ok(target.to_path_buf()),
        Ok(()) => Err(LoadError::NoTracefs("mounted, but it has no events".into())),
        Err(err) => Err(LoadError::NoTracefs(err.to_string())),
    }
}

pub(crate) fn nix_mount_tracefs(target: &Path) -> std::io::Result<()> {
    rustix::mount::mount(
        "nodev",
        target,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)
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

/// Whether the kernel has the kprobe PMU that aya attaches kprobes with.
pub fn kprobe_pmu() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Pages the kernel maps around a read fault: debugfs's fault_around_bytes
/// when mounted, else the kernel's default (64 KiB).
pub(crate) fn fault_around_pages() -> u32 {
    let bytes = std::fs::read_to_string("/sys/kernel/debug/fault_around_bytes")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(65536);
    u32::try_from((bytes / page_size()).clamp(1, 512)).unwrap_or(16)
}

/// Processes that already have a shared writable mapping ("rw-s" or
/// "-w-s" in /proc/PID/maps): mappings made before mmapwatch started.
/// Only the permission field of each line is read, as bytes (a mapped
/// file's name need not be UTF-8, which a full parser such as `procfs`
/// would need).
pub(crate) fn shared_writable_mappers(proc_root: &Path) -> Vec<u32> {
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

pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}
