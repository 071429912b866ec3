//! `cargo xtask vm-test`: the integration suite inside a QEMU guest, once per
//! backend.
//!
//! This machine's kernel refuses fentry (lockdown) and has no kprobes, so
//! those backends are proven on a Debian kernel booted under QEMU, the way
//! aya's `xtask integration-test vm` does it: a small initramfs (busybox,
//! the few modules the guest needs to reach its root, a script), and the
//! host's root shared read-only over virtio-9p so the guest runs the very
//! binaries built here. The guest writes its results to the serial console;
//! there is no other channel out of it.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, ensure_apt, output, run, step, workspace_root};

/// What the guest needs: QEMU, a static busybox for the initramfs, depmod
/// (kmod) for the module dependency list, e2fsprogs for the guest's ext4,
/// xz for compressed modules.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "e2fsprogs",
    "xz-utils",
];

/// Modules the guest loads before it can mount its root and scratch
/// filesystem (Debian builds them as modules); dependencies come from
/// modules.dep. crc32c is what ext4's and xfs's metadata checksums ask the
/// crypto API for: loaded first, as its soft dependants (6.12's libcrc32c)
/// expect.
const GUEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "loop",
    "ext4",
    "xfs",
    "overlay",
];

/// Printed by the guest: one result line per test binary and backend, and a
/// last line when it is done.
const RESULT_MARK: &str = "MMAPWATCH-VM-RESULT";
const DONE_MARK: &str = "MMAPWATCH-VM-DONE";

pub const BACKENDS: &[&str] = &["fentry", "kprobe", "tracepoint"];

/// One kernel's share of a VM run: each of its backends gets a guest of
/// its own, which runs every suite in turn.
pub struct VmTest {
    pub kernel: String,
    pub backends: Vec<String>,
    /// Test binaries to run (integration-tests `--test` names); empty: all.
    pub suites: Vec<String>,
    /// libtest filter passed to every suite.
    pub filter: Option<String>,
    /// libtest's --show-output: what passing tests printed.
    pub show_output: bool,
    /// The limit for each guest.
    pub timeout: Duration,
    /// A shell command to run in the guest instead of the suites
    /// (debugging); its exit code is reported.
    pub command: Option<String>,
    /// The randomized test's seed count in the guest (`MW_RANDOM_SEEDS`);
    /// None: the host's own setting, or the test's default.
    pub random_seeds: Option<u32>,
    pub arch: Arch,
}

/// The guest's architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The host's own: the guest shares the host root.
    #[default]
    X86_64,
    /// Cross-built, on an arm64 root of its own (see `arm64`).
    Arm64,
}

fn cache_dir() -> PathBuf {
    workspace_root().join("target/vm-cache")
}

/// One guest: a kernel (a plan) and a backend, or the plan's command.
struct Job {
    plan: usize,
    backend: Option<String>,
}

impl Job {
    fn label(&self, kernels: &[Kernel]) -> String {
        format!(
            "{} {}",
            kernels[self.plan].release,
            self.backend.as_deref().unwrap_or("command")
        )
    }
}

/// Runs every plan, one guest per kernel and backend, `guests` at a time:
/// a TCG guest keeps one host core busy, so on two cores two guests halve
/// the wall time of the long pole of `cargo xtask test`.
pub fn run_vm_tests(plans: &[VmTest], guests: usize) -> Result<()> {
    for plan in plans {
        for backend in &plan.backends {
            if !BACKENDS.contains(&backend.as_str()) {
                bail!("unknown backend {backend}: one of {}", BACKENDS.join(", "));
            }
        }
    }
    ensure_apt(VM_PACKAGES)?;
    let arm64 = plans.iter().any(|plan| plan.arch == Arch::Arm64);
    if arm64 {
        crate::arm64::prepare_host()?;
    }
    let kernels = plans
        .iter()
        .map(|plan| {
            let kernel = Kernel::resolve(&plan.kernel, plan.arch)?;
            println!(
                "xtask: guest kernel {} ({})",
                kernel.release,
                kernel.vmlinuz.display()
            );
            Ok(kernel)
        })
        .collect::<Result<Vec<_>>>()?;

    step("building mmapwatch and the integration tests for the guest");
    if plans.iter().any(|plan| plan.arch == Arch::X86_64) {
        crate::build()?;
    }
    if arm64 {
        crate::arm64::build()?;
    }
    let suites = plans
        .iter()
        .map(|plan| test_binaries(&plan.suites, plan.arch))
        .collect::<Result<Vec<_>>>()?;
    let scratch = workspace_root().join("target/itest-scratch");
    fs::create_dir_all(&scratch)?;
    // KVM only runs the host's own architecture.
    let accel = match kernels.iter().find(|k| k.arch == Arch::X86_64) {
        Some(kernel) => choose_accelerator(kernel)?,
        None => Accel::Tcg,
    };

    let jobs: Vec<Job> = plans
        .iter()
        .enumerate()
        .flat_map(|(index, plan)| -> Vec<Job> {
            if plan.command.is_some() {
                vec![Job {
                    plan: index,
                    backend: None,
                }]
            } else {
                plan.backends
                    .iter()
                    .map(|backend| Job {
                        plan: index,
                        backend: Some(backend.clone()),
                    })
                    .collect()
            }
        })
        .collect();
    let queue = std::sync::Mutex::new(jobs.iter().collect::<std::collections::VecDeque<_>>());
    let outcomes = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    let (kernels, suites, scratch, shared_outcomes) = (&kernels, &suites, &scratch, &outcomes);
    std::thread::scope(|scope| {
        for _ in 0..guests.clamp(1, jobs.len().max(1)) {
            // The queue's lock is taken and released in `next`, not held
            // over a guest's run.
            let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
            scope.spawn(move || {
                while let Some(job) = next() {
                    let plan = &plans[job.plan];
                    let outcome = run_job(job, plan, kernels, &suites[job.plan], scratch, accel);
                    if let Ok(mut all) = shared_outcomes.lock() {
                        all.push((job.label(kernels), outcome));
                    }
                }
            });
        }
    });
    let outcomes = outcomes
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a guest thread panicked"))?;
    println!(
        "xtask: {} guests, {} at a time, in {:.0?}",
        jobs.len(),
        guests.clamp(1, jobs.len().max(1)),
        started.elapsed()
    );
    let failures: Vec<String> = outcomes
        .into_iter()
        .filter_map(|(label, outcome)| outcome.err().map(|err| format!("{label}: {err:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("in the VM: {}", failures.join("; "));
    }
    Ok(())
}

/// Boots one job's guest (a second time if it never finished: a test
/// failure is a result, a hung guest is not) and checks its results.
fn run_job(
    job: &Job,
    plan: &VmTest,
    kernels: &[Kernel],
    suites: &[(String, PathBuf)],
    scratch: &Path,
    accel: Accel,
) -> Result<()> {
    let kernel = &kernels[job.plan];
    let accel = if kernel.arch == Arch::X86_64 {
        accel
    } else {
        Accel::Tcg
    };
    let label = job.label(kernels);
    let file_label = label.replace(' ', "-");
    let script = guest_script(plan, job.backend.as_deref(), suites, scratch);
    let initramfs = cache_dir().join(format!("initramfs-{file_label}.cpio"));
    build_initramfs(kernel, &script, &initramfs)?;
    let mut last_error = None;
    for attempt in 1..=2 {
        step(&format!(
            "booting {label} under QEMU ({accel}), attempt {attempt}"
        ));
        match boot(kernel, &initramfs, accel, plan.timeout, &label) {
            Ok(run) => {
                return match &job.backend {
                    None => {
                        let ok = run.log.iter().any(|l| {
                            l.contains(&format!(
                                "{RESULT_MARK} backend=command suite=command exit=0 "
                            ))
                        });
                        if ok {
                            Ok(())
                        } else {
                            bail!("the guest command failed")
                        }
                    }
                    Some(backend) => report(&run, backend, suites, &label),
                };
            }
            Err(err) => {
                eprintln!("xtask: {label}: the guest did not finish: {err:#}");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the guest did not run")))
}

/// Guests run at once: this machine's two cores.
pub const PARALLEL_GUESTS: usize = 2;

/// A kernel image with its modules, unpacked under the cache directory.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<release>` with a modules.dep.
    modules: PathBuf,
    arch: Arch,
    /// What the guest mounts as its root: the host's own, or the arm64 one.
    guest_root: PathBuf,
}

impl Kernel {
    /// `debian-6.1` or `debian-6.12`: the newest kernel of that series
    /// Debian 12 offers, downloaded (not installed) and cached; or a path
    /// to a kernel .deb, or to a directory holding `boot/vmlinuz-*` and
    /// `lib/modules/*`.
    fn resolve(spec: &str, arch: Arch) -> Result<Self> {
        let root = if arch == Arch::Arm64 {
            if spec != "debian-6.1" {
                bail!("--arch arm64: the guest kernel is debian-6.1 (Debian 12's arm64 kernel), not {spec}");
            }
            crate::arm64::guest_root(&cache_dir())?
        } else if spec == BULLSEYE_KERNEL {
            unpack_deb(&crate::bullseye::kernel_deb(&cache_dir())?)?
        } else if let Some(series) = spec.strip_prefix("debian-") {
            if !DEBIAN_SERIES.contains(&series) {
                bail!(
                    "--kernel {spec}: Debian kernels here are {BULLSEYE_KERNEL}, {}",
                    DEBIAN_SERIES.map(|s| format!("debian-{s}")).join(", ")
                );
            }
            debian_kernel(series)?
        } else {
            let path = PathBuf::from(spec);
            if path.extension().is_some_and(|ext| ext == "deb") {
                unpack_deb(&path)?
            } else if path.is_dir() {
                path
            } else {
                bail!("--kernel {spec}: expected debian-5.10, debian-6.1, debian-6.12, a kernel .deb, or an unpacked package directory");
            }
        };
        let vmlinuz = fs::read_dir(root.join("boot"))
            .with_context(|| format!("{}/boot", root.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no boot/vmlinuz-* under {}", root.display()))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("vmlinuz name")?
            .to_string();
        let modules = root.join("lib/modules").join(&release);
        if !modules.join("modules.dep").exists() {
            run(Command::new("depmod").args(["-b"]).arg(&root).arg(&release))?;
        }
        let guest_root = match arch {
            Arch::X86_64 => PathBuf::from("/"),
            Arch::Arm64 => root.clone(),
        };
        Ok(Self {
            release,
            vmlinuz,
            modules,
            arch,
            guest_root,
        })
    }
}

/// Debian 11's 5.10 (bullseye-security), the oldest kernel supported.
pub const BULLSEYE_KERNEL: &str = "debian-5.10";

/// The Debian 12 kernel series `--kernel debian-SERIES` accepts: its own
/// 6.1 and the 6.12 it also carries (large folios on more filesystems,
/// other fault-around and folio behaviour).
pub const DEBIAN_SERIES: [&str; 2] = ["6.1", "6.12"];

/// The generic amd64 kernel packages of `series` (not cloud, not rt), in
/// their `-unsigned` variant (the same kernel without the signed-image
/// indirection), oldest first.
fn debian_packages(series: &str, names: &str) -> Vec<String> {
    let prefix = format!("linux-image-{series}.");
    let mut found: Vec<(Vec<u64>, String)> = names
        .lines()
        .map(str::trim)
        .filter_map(|name| {
            let rest = name.strip_prefix(&prefix)?;
            let version = rest.strip_suffix("-amd64-unsigned")?;
            // 6.1.0-56 or 6.12.117+deb12: nothing but the version before
            // the flavour (so not 6.12's -cloud or -rt, nor 6.1 matching 6.12).
            let numbers: Vec<u64> = version
                .split(|c: char| !c.is_ascii_digit())
                .filter(|part| !part.is_empty())
                .filter_map(|part| part.parse().ok())
                .collect();
            let plain = version
                .trim_end_matches("+deb12")
                .chars()
                .all(|c| c.is_ascii_digit() || c == '-' || c == '.');
            (plain && rest.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| (numbers, name.to_string()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, name)| name).collect()
}

/// Downloads the newest generic kernel of `series` unless a cached copy is
/// there. Debian drops old ABI versions from the archive, so the name is
/// resolved every time and any cached .deb of the series is the fallback.
fn debian_kernel(series: &str) -> Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache)?;
    let wanted = output(Command::new("apt-cache").args(["pkgnames", "linux-image-"]))
        .and_then(|names| debian_packages(series, &names).pop());
    let cached = |name: Option<&str>| -> Option<PathBuf> {
        let mut debs: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(&cache)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .filter_map(|p| {
                let file = p.file_name()?.to_string_lossy().into_owned();
                let package = file.split('_').next()?.to_string();
                let ours = match name {
                    Some(name) => package == name,
                    None => debian_packages(series, &package).len() == 1,
                };
                ours.then(|| {
                    let numbers = file
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (numbers, p)
                })
            })
            .collect();
        debs.sort();
        debs.pop().map(|(_, p)| p)
    };
    let deb = match &wanted {
        Some(name) => match cached(Some(name)) {
            Some(deb) => deb,
            None => {
                println!("xtask: downloading {name} (not installed, only unpacked)");
                let downloaded = Command::new("apt-get")
                    .args(["download", "-q", name])
                    .current_dir(&cache)
                    .status()
                    .is_ok_and(|s| s.success());
                match cached(Some(name)) {
                    Some(deb) if downloaded => deb,
                    _ => cached(None).with_context(|| {
                        format!("apt-get download {name} failed and no {series} kernel is cached")
                    })?,
                }
            }
        },
        None => cached(None).with_context(|| {
            format!("apt-cache knows no linux-image-{series}.*-amd64-unsigned (is this Debian 12?) and none is cached")
        })?,
    };
    unpack_deb(&deb)
}

fn unpack_deb(deb: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .context("package name")?
        .to_string_lossy()
        .into_owned();
    let target = cache_dir().join(stem);
    if !target.join(".unpacked").exists() {
        fs::create_dir_all(&target)?;
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&target))?;
        fs::write(target.join(".unpacked"), "")?;
    }
    Ok(target)
}

/// The integration-test executables cargo builds, by test name.
fn test_binaries(wanted: &[String], arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let mut command = match arch {
        Arch::X86_64 => cargo(),
        Arch::Arm64 => crate::arm64::cross_cargo(),
    };
    command.args([
        "test",
        "--package",
        "integration-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ]);
    if arch == Arch::Arm64 {
        command.args(["--target", crate::arm64::TARGET]);
    }
    let text = output(&mut command).context("building the integration tests")?;
    let mut found = Vec::new();
    for line in text.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let kinds = &message["target"]["kind"];
        if !kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
        {
            continue;
        }
        let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if wanted.is_empty() || wanted.iter().any(|w| w == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("no integration test binaries matched {wanted:?}");
    }
    Ok(found)
}

/// The guest's second stage, run as pid 1 once the host root is its root:
/// mounts what mmapwatch and the tests use, makes an ext4 scratch
/// filesystem (tmpfs never reaches do_wp_page's page_mkwrite path), and runs
/// each suite under the backend.
fn guest_script(
    options: &VmTest,
    backend: Option<&str>,
    suites: &[(String, PathBuf)],
    scratch: &Path,
) -> String {
    let root = workspace_root();
    let mut script = String::from(
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug
mount -t securityfs nodev /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "guest: $(uname -r), lockdown: $(cat /sys/kernel/security/lockdown 2>/dev/null)"
truncate -s 1G /tmp/scratch.img
mkfs.ext4 -q -F /tmp/scratch.img
"#,
    );
    script.push_str(&format!(
        "mount -o loop /tmp/scratch.img {}\ncd {}\n",
        scratch.display(),
        root.display()
    ));
    let mmapwatch = match options.arch {
        Arch::X86_64 => crate::mmapwatch_release(),
        Arch::Arm64 => crate::arm64::mmapwatch(),
    };
    // What this kernel supports, for the log (and the closing note).
    script.push_str(&format!("{} doctor || true\n", mmapwatch.display()));
    if let Some(command) = &options.command {
        script.push_str(&format!(
            "({command})\necho \"{RESULT_MARK} backend=command suite=command exit=$? seconds=0\"\necho {DONE_MARK}\nsync\nsleep 1\necho o > /proc/sysrq-trigger\nsleep 10\n"
        ));
        return script;
    }
    let mut filter = options
        .filter
        .as_deref()
        .map(|f| format!(" '{}'", f.replace('\'', "")))
        .unwrap_or_default();
    if options.show_output {
        filter.push_str(" --show-output");
    }
    let seeds = options
        .random_seeds
        .map(|n| n.to_string())
        .or_else(|| {
            // The host's own setting, as it was given.
            std::env::var("MW_RANDOM_SEEDS")
                .ok()
                .filter(|n| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
        })
        .map(|n| format!("MW_RANDOM_SEEDS={n} "))
        .unwrap_or_default();
    if let Some(backend) = backend {
        for (name, exe) in suites {
            script.push_str(&format!(
                r#"start=$(date +%s)
{seeds}MMAPWATCH_BACKEND={backend} MMAPWATCH_BIN={bin} MMAPWATCH_IN_VM=1 {exe} --test-threads=1{filter}
echo "{RESULT_MARK} backend={backend} suite={name} exit=$? seconds=$(( $(date +%s) - start ))"
"#,
                bin = mmapwatch.display(),
                exe = exe.display(),
            ));
        }
    }
    script.push_str(&format!(
        "echo {DONE_MARK}\nsync\nsleep 1\necho o > /proc/sysrq-trigger\nsleep 10\n"
    ));
    script
}

/// How the guest mounts its 9p shares: read-only, cached.
const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose";

/// The first stage, busybox's: load modules, mount the host root over 9p
/// with the guest's own proc, sys, dev and tmp on it, and switch to it.
/// The workspace (`@WORKSPACE@`) is bound back into place afterwards: a
/// clone under /tmp or /run would otherwise vanish under the guest's tmpfs.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "guest: insmod $m failed"; done
if ! mount -t 9p -o @NINEP_OPTIONS@ hostroot /host; then
  echo "guest: cannot mount the host root"; echo MMAPWATCH-VM-DONE-FAILED; poweroff -f
fi
mkdir -p /workspace
@WORKSPACE_SOURCE@
mount -t tmpfs tmp /host/tmp
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs run /host/run
mkdir -p "/host@WORKSPACE@"
mount --move /workspace "/host@WORKSPACE@"
cp /stage2.sh /host/tmp/stage2.sh
exec switch_root /host /bin/sh /tmp/stage2.sh
"#;

fn build_initramfs(kernel: &Kernel, script: &str, target: &Path) -> Result<()> {
    // The guest root's own busybox: static, of the guest's architecture.
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| kernel.guest_root.join(p))
        .find(|p| p.exists())
        .context("busybox is missing (busybox-static)")?;
    let workspace = workspace_root();
    let workspace_source = match kernel.arch {
        // Part of the host root.
        Arch::X86_64 => format!("mount --bind \"/host{}\" /workspace", workspace.display()),
        // A share of its own, and a mount point for it in the guest root.
        Arch::Arm64 => {
            let relative = workspace.strip_prefix("/").unwrap_or(&workspace);
            fs::create_dir_all(kernel.guest_root.join(relative))?;
            format!("mount -t 9p -o {NINEP_OPTIONS} workspace /workspace")
        }
    };
    let mut archive = Cpio::default();
    archive.directory("bin");
    archive.directory("modules");
    archive.file("bin/busybox", 0o755, &fs::read(busybox)?);
    let init = GUEST_INIT
        .replace("@WORKSPACE_SOURCE@", &workspace_source)
        .replace("@WORKSPACE@", &workspace.display().to_string())
        .replace("@NINEP_OPTIONS@", NINEP_OPTIONS);
    archive.file("init", 0o755, init.as_bytes());
    archive.file("stage2.sh", 0o755, script.as_bytes());
    let mut order = String::new();
    for module in module_load_order(&kernel.modules, GUEST_MODULES)? {
        let (name, bytes) = module_bytes(&kernel.modules.join(&module))?;
        archive.file(&format!("modules/{name}"), 0o644, &bytes);
        order.push_str(&format!("{name}\n"));
    }
    archive.file("modules/order", 0o644, order.as_bytes());
    fs::write(target, archive.finish())?;
    Ok(())
}

/// A module's file name as busybox's insmod loads it, and its bytes:
/// Debian's 6.12 ships `.ko.xz`, which insmod hands to init_module as they
/// are, so they are unpacked here (xz, as depmod's own packaging does).
fn module_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let file = path
        .file_name()
        .context("module name")?
        .to_string_lossy()
        .into_owned();
    match file.strip_suffix(".xz") {
        Some(plain) => {
            let unpacked = Command::new("xz")
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("xz -dc {}", path.display()))?;
            if !unpacked.status.success() {
                bail!("xz -dc {} failed", path.display());
            }
            Ok((plain.to_string(), unpacked.stdout))
        }
        None => Ok((file, fs::read(path)?)),
    }
}

/// `wanted` and their dependencies, dependencies first, as paths relative
/// to the modules directory. A module the kernel has built in (6.12's
/// virtio_pci) needs no loading.
fn module_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let deps = fs::read_to_string(modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let table: Vec<(&str, Vec<&str>)> = deps
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((module, needs.split_whitespace().collect()))
        })
        .collect();
    fn visit<'a>(module: &'a str, table: &[(&'a str, Vec<&'a str>)], order: &mut Vec<&'a str>) {
        if order.contains(&module) {
            return;
        }
        if let Some((_, needs)) = table.iter().find(|(m, _)| *m == module) {
            for need in needs {
                visit(need, table, order);
            }
        }
        order.push(module);
    }
    let mut order = Vec::new();
    let is_module = |path: &str, name: &str| {
        path.rsplit('/').next().is_some_and(|file| {
            file.strip_prefix(name)
                .is_some_and(|ext| ext.starts_with(".ko"))
        })
    };
    for name in wanted {
        if builtin.lines().any(|line| is_module(line, name)) {
            continue;
        }
        let module = table
            .iter()
            .map(|(m, _)| *m)
            .find(|m| is_module(m, name))
            .with_context(|| format!("module {name} is not in {}", modules.display()))?;
        visit(module, &table, &mut order);
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// An uncompressed newc archive, the initramfs format the kernel unpacks
/// itself. Written here, not with cpio(1): three kinds of entry, and no
/// files need to be staged on disk.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn directory(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, 0o100000 | permissions, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG, software emulation",
        })
    }
}

/// KVM when it boots the guest; otherwise TCG. /dev/kvm can exist and still
/// fail: here it is a paravirtualised KVM (kvm_pvm) that QEMU aborts on.
fn choose_accelerator(kernel: &Kernel) -> Result<Accel> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("xtask: no usable /dev/kvm: using TCG");
        return Ok(Accel::Tcg);
    }
    // A boot that only prints the done mark.
    let probe = cache_dir().join("kvm-probe.cpio");
    build_initramfs(
        kernel,
        &format!("echo {DONE_MARK}\necho o > /proc/sysrq-trigger\nsleep 10\n"),
        &probe,
    )?;
    match boot(
        kernel,
        &probe,
        Accel::Kvm,
        Duration::from_secs(20),
        "kvm-probe",
    ) {
        Ok(_) => Ok(Accel::Kvm),
        Err(err) => {
            println!("xtask: KVM does not boot the guest ({err:#}): using TCG");
            Ok(Accel::Tcg)
        }
    }
}

struct GuestRun {
    log: Vec<String>,
    boot_to_first_result: Option<Duration>,
    elapsed: Duration,
}

/// Boots the guest and collects its console until the done mark or the
/// timeout; an error if it never got there.
fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    accel: Accel,
    timeout: Duration,
    label: &str,
) -> Result<GuestRun> {
    let machine = match kernel.arch {
        Arch::X86_64 => {
            let mut qemu = Command::new("qemu-system-x86_64");
            match accel {
                Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
                // One TCG thread: multi-threaded TCG hung at fentry attach here.
                Accel::Tcg => qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
            };
            qemu
        }
        Arch::Arm64 => crate::arm64::qemu(),
    };
    let console = match kernel.arch {
        Arch::X86_64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    };
    let mut qemu = Command::new("timeout");
    qemu.args(["--kill-after=10", &timeout.as_secs().to_string()])
        .arg(machine.get_program())
        .args(machine.get_args());
    // The guest root (the host's own, or arm64's), read-only;
    // multidevs=remap keeps inode numbers of the host's different
    // filesystems (/proc, /sys, /) apart.
    let share = |tag: &str, path: &Path| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,readonly=on,multidevs=remap",
            path.display()
        )
    };
    qemu.args(["-m", "2048", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={console} panic=-1 quiet"))
        .arg("-virtfs")
        .arg(share("hostroot", &kernel.guest_root));
    if kernel.arch == Arch::Arm64 {
        qemu.arg("-virtfs")
            .arg(share("workspace", &workspace_root()));
    }
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.contains("Multiple devices detected"))
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut log_file = fs::File::create(
        cache_dir().join(format!("guest-console-{}.log", label.replace(' ', "-"))),
    )?;
    let mut log = Vec::new();
    let mut first_result = None;
    let mut done = false;
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        // The console carries terminal escapes and CRs.
        let line = String::from_utf8_lossy(&line)
            .replace('\r', "")
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect::<String>();
        let _ = writeln!(log_file, "{line}");
        println!("guest {label}| {line}");
        if line.contains(RESULT_MARK) && first_result.is_none() {
            first_result = Some(started.elapsed());
        }
        if line.contains(DONE_MARK) {
            done = !line.contains("FAILED");
        }
        log.push(line);
    }
    let status = child.wait()?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !done {
        bail!(
            "no {DONE_MARK} line (qemu {status} after {:.0?}){}",
            started.elapsed(),
            stderr
                .iter()
                .take(5)
                .map(|l| format!("\n  qemu: {l}"))
                .collect::<String>()
        );
    }
    Ok(GuestRun {
        log,
        boot_to_first_result: first_result,
        elapsed: started.elapsed(),
    })
}

/// Every suite must have run under the guest's backend and passed.
fn report(run: &GuestRun, backend: &str, suites: &[(String, PathBuf)], label: &str) -> Result<()> {
    let mut failures = Vec::new();
    for (suite, _) in suites {
        let wanted = format!("{RESULT_MARK} backend={backend} suite={suite} ");
        match run
            .log
            .iter()
            .find_map(|l| l.find(&wanted).map(|at| l[at + wanted.len()..].to_string()))
        {
            Some(rest) if rest.starts_with("exit=0 ") => {
                println!("xtask: {label:>28} {suite:<12} passed ({rest})")
            }
            Some(rest) => {
                println!("xtask: {label:>28} {suite:<12} FAILED ({rest})");
                failures.push(suite.clone());
            }
            None => {
                println!("xtask: {label:>28} {suite:<12} did not run");
                failures.push(format!("{suite} (no result)"));
            }
        }
    }
    // The randomized truth test's figures (it writes them past libtest's
    // capture), for the closing notes of issues and CI's log.
    for line in &run.log {
        if let Some(at) = line.find("randomized (") {
            println!("xtask: {label:>28} {}", &line[at..]);
        }
    }
    println!(
        "xtask: {label}: guest ran {:.0?} in all; first result after {:.0?}",
        run.elapsed,
        run.boot_to_first_result.unwrap_or_default()
    );
    if !failures.is_empty() {
        bail!("failed: {}", failures.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::debian_packages;

    const NAMES: &str = "linux-image-6.1.0-55-amd64-unsigned
linux-image-6.1.0-56-amd64-unsigned
linux-image-6.1.0-56-cloud-amd64-unsigned
linux-image-6.1.0-56-rt-amd64-unsigned
linux-image-6.1.0-56-amd64
linux-image-6.12.9+deb12-amd64-unsigned
linux-image-6.12.117+deb12-amd64-unsigned
linux-image-6.12.117+deb12-cloud-amd64-unsigned
linux-image-6.12.117+deb12-rt-amd64-unsigned
linux-image-amd64";

    #[test]
    fn each_series_finds_its_own_generic_kernels_newest_last() {
        assert_eq!(
            debian_packages("6.1", NAMES),
            [
                "linux-image-6.1.0-55-amd64-unsigned",
                "linux-image-6.1.0-56-amd64-unsigned"
            ]
        );
        assert_eq!(
            debian_packages("6.12", NAMES),
            [
                "linux-image-6.12.9+deb12-amd64-unsigned",
                "linux-image-6.12.117+deb12-amd64-unsigned"
            ]
        );
    }
}
