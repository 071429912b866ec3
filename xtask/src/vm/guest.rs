//! One guest: its second-stage script, the accelerator, and the QEMU run
//! whose serial console carries the results.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::*;
use crate::workspace_root;

/// The guest's second stage, run as pid 1 once the host root is its root:
/// mounts what mmapwatch and the tests use, makes an ext4 scratch
/// filesystem (tmpfs never reaches do_wp_page's page_mkwrite path), and runs
/// each suite under the backend.
pub(super) fn guest_script(
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
        Arch::Arm64 => super::arm64::mmapwatch(),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Accel {
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
pub(super) fn choose_accelerator(kernel: &Kernel) -> Result<Accel> {
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

pub(super) struct GuestRun {
    pub(super) log: Vec<String>,
    pub(super) boot_to_first_result: Option<Duration>,
    pub(super) elapsed: Duration,
}

/// Boots the guest and collects its console until the done mark or the
/// timeout; an error if it never got there.
pub(super) fn boot(
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
        Arch::Arm64 => super::arm64::qemu(),
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
