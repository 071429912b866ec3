//! `mmapwatch doctor`: what this kernel supports, checked for real.
//!
//! Each line is the result of an actual check (a file read, a program
//! loaded by the verifier), not a guess from the kernel version.

use std::path::Path;

use crate::probe::{
    backend,
    backend::{BackendChoice, Mechanism, Selection},
    btf::KernelBtf,
    catalog::{RAW_TRACEPOINTS, TRACEPOINTS},
    env::{
        self, find_tracefs, has_capability, raw_tracepoint_exists, tracefs, tracepoint_exists,
        Capability, TracefsProblem,
    },
    load::{ProbeOptions, Probes},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Needed and missing: mmapwatch cannot run.
    Fail,
    /// Optional and missing: said, not a failure.
    No,
}

#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: if ok { Status::Ok } else { Status::Fail },
        detail: detail.into(),
    }
}

fn optional(name: impl Into<String>, present: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: if present { Status::Ok } else { Status::No },
        detail: detail.into(),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn lockdown(mount: bool) -> String {
    let path = Path::new("/sys/kernel/security/lockdown");
    if !path.exists() && mount {
        // securityfs is often not mounted (root only; a failure just
        // leaves the answer unknown).
        let _ = mount_securityfs();
    }
    match std::fs::read_to_string(path) {
        // "none [integrity] confidentiality": the bracketed one is in force.
        Ok(text) => text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .unwrap_or("unknown")
            .to_string(),
        Err(_) if !Path::new("/sys/kernel/security").join("lsm").exists() => {
            "unknown (securityfs not mounted; `doctor --mount` mounts it)".into()
        }
        Err(_) => "none (no lockdown LSM)".into(),
    }
}

fn mount_securityfs() -> std::io::Result<()> {
    rustix::mount::mount(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)
}

/// Every check, for real. With `mount`, tracefs and securityfs are
/// mounted where missing; otherwise nothing on the system changes.
pub fn checks(btf_path: &Path, mount: bool) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(check("kernel", true, kernel_release()));

    let privileged = env::privileged();
    out.push(check(
        "privileges",
        privileged,
        format!(
            "CAP_SYS_ADMIN {} CAP_BPF {} CAP_PERFMON {}",
            yes_no(has_capability(Capability::CAP_SYS_ADMIN)),
            yes_no(has_capability(Capability::CAP_BPF)),
            yes_no(has_capability(Capability::CAP_PERFMON))
        ),
    ));

    match KernelBtf::from_file(btf_path)
        .and_then(|btf| btf.kernel_offsets().map(|offsets| (btf, offsets)))
    {
        Ok((btf, mut offsets)) => {
            out.push(check(
                "btf",
                true,
                format!("{}: all struct offsets resolved", btf_path.display()),
            ));
            let walk = btf.vma_walk_offsets(&mut offsets);
            out.push(optional(
                "vma lookup",
                walk.is_ok(),
                match walk {
                    Ok(()) if offsets.vma_walk == probe_common::vma_walk_kind::MAPLE => {
                        "lock-free maple-tree walk (6.1+; bpf_find_vma, 5.17+, as a fallback)"
                            .to_string()
                    }
                    Ok(()) => "lock-free walk of the VMA rbtree (before 6.1; bpf_find_vma, 5.17+, as a fallback)".to_string(),
                    Err(err) => format!("bpf_find_vma only (5.17+), slow with IRQs off ({err})"),
                },
            ));
            let fentry_targets: Vec<&str> = [
                "do_wp_page",
                "finish_fault",
                "do_page_mkwrite",
                "wp_page_copy",
                "folio_end_writeback",
            ]
            .into_iter()
            .filter(|f| btf.has_function(f))
            .collect();
            out.push(optional(
                "btf functions",
                !fentry_targets.is_empty(),
                format!("fentry targets present: {}", fentry_targets.join(", ")),
            ));
        }
        Err(err) => out.push(check("btf", false, err.to_string())),
    }

    let found = if mount {
        tracefs().map_err(|err| err.to_string())
    } else {
        find_tracefs().map_err(|problem| match problem {
            TracefsProblem::NotMounted => {
                format!("{problem}; `mmapwatch trace` and `doctor --mount` mount it")
            }
            TracefsProblem::NotReadable(_) => problem.to_string(),
        })
    };
    out.extend(backend_needs(
        found.as_ref().ok().map(|p| p.as_path()),
        btf_path,
    ));
    match &found {
        Ok(root) => {
            out.push(check("tracefs", true, root.display().to_string()));
            for tp in TRACEPOINTS {
                let present = tracepoint_exists(root, tp.category, tp.name);
                // The fault tracepoint is the tracepoint backend's alone
                // (x86 only): the function hooks need it not.
                let make = if tp.required && !tp.fault_backend_only() {
                    check
                } else {
                    optional
                };
                out.push(make(
                    format!("tracepoint {}:{}", tp.category, tp.name),
                    present,
                    format!(
                        "{} ({}{})",
                        if present { "present" } else { "absent" },
                        tp.purpose,
                        if tp.required {
                            ", required"
                        } else {
                            ", optional"
                        }
                    ),
                ));
            }
            for tp in RAW_TRACEPOINTS.iter().filter(|tp| !tp.required) {
                let present = raw_tracepoint_exists(root, tp.name);
                out.push(optional(
                    format!("raw tracepoint {}", tp.name),
                    present,
                    format!(
                        "{} ({}, optional)",
                        if present { "present" } else { "absent" },
                        tp.purpose
                    ),
                ));
            }
        }
        Err(why) => out.push(check("tracefs", false, why.clone())),
    }

    // Each function-hook backend is attached for real (and detached): what
    // `--backend auto` would pick follows from these results.
    let mut findings: Vec<(Mechanism, Result<Selection, String>)> = Vec::new();
    // Why the function hooks were not tried, when they were not.
    let mut not_probed = "no privileges".to_string();
    if privileged && found.is_err() {
        out.push(check("programs", false, "not checked: tracefs is needed"));
        not_probed = "tracefs is needed".into();
    } else if privileged {
        // The tracefs found above: loading must not mount one either.
        let options = ProbeOptions {
            btf_path: btf_path.to_path_buf(),
            tracefs_override: found.as_ref().ok().cloned(),
            ..ProbeOptions::default()
        };
        match Probes::load(&options) {
            Ok(mut probes) => {
                out.push(check("programs", true, describe_programs(&probes)));
                for (program, why) in &probes.loaded.refused {
                    out.push(optional(format!("program {program}"), false, why.clone()));
                }
                for mechanism in [Mechanism::Fentry, Mechanism::Kprobe] {
                    let result = probes.probe_mechanism(mechanism).map_err(|why| {
                        // Lockdown refuses BPF_PROG_TYPE_TRACING; say so.
                        let mode = lockdown(mount);
                        if why.contains("not permitted")
                            && !mode.starts_with("none")
                            && !mode.starts_with("unknown")
                        {
                            format!("{why} (lockdown={mode})")
                        } else {
                            why
                        }
                    });
                    out.push(optional(
                        mechanism.name(),
                        result.is_ok(),
                        match &result {
                            Ok(selection) => describe_hooks(selection),
                            Err(why) => why.clone(),
                        },
                    ));
                    findings.push((mechanism, result));
                }
            }
            Err(err) => {
                not_probed = format!("the tracepoint programs did not load: {err}");
                out.push(check("programs", false, err.to_string()));
            }
        }
    }

    out.push(check("lockdown", true, lockdown(mount)));
    out.push(check("call-site stacks", true, STACKS_ADVICE));
    // What `--backend auto` would pick from these results (the same
    // decision as `attach`: the first that attaches, in its order).
    let tried: Vec<(Mechanism, Result<(), String>)> = findings
        .iter()
        .map(|(mechanism, result)| (*mechanism, result.as_ref().map(drop).map_err(Clone::clone)))
        .collect();
    let choice = backend::choose(BackendChoice::Auto, &tried);
    let verdict = match (&choice, findings.is_empty()) {
        (_, true) => format!("tracepoint: function hooks not probed ({not_probed})"),
        (Ok(choice), false) => choice.reason.clone(),
        (Err(err), false) => err.to_string(),
    };
    out.push(check("backend auto", true, verdict));
    let backend = choice
        .ok()
        .and_then(|choice| choice.mechanism)
        .map_or("tracepoint", Mechanism::name);
    for spot in crate::model::blind_spots::blind_spots(backend) {
        out.push(optional("blind spot", false, spot));
    }
    out
}

/// How `trace --stacks` unwinds, and how to get whole stacks.
const STACKS_ADVICE: &str = "trace --stacks walks frame pointers (the kernel's bpf_get_stackid): \
    the innermost frame, where the store is, is always right; code built without frame \
    pointers (most distributions' C libraries, Rust and Go release builds) cuts the walk or \
    skips its caller, and such stacks are marked partial. For whole stacks build with \
    -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer (C, C++), \
    RUSTFLAGS=-Cforce-frame-pointers=yes (Rust), or use a distribution built with frame \
    pointers (Fedora 38+, Ubuntu 24.04+); install debug symbols (Debian's -dbgsym packages) \
    to name the static functions of stripped libraries";

/// What each backend needs of the kernel, with the first version that has
/// it, and whether this one does (the programs' own loads, below, are the
/// final word).
fn backend_needs(tracefs: Option<&Path>, btf_path: &Path) -> Vec<Check> {
    let mut out = vec![optional(
        "needs, every backend",
        true,
        "Linux 5.10+ (BPF ring buffer 5.8, BTF-typed tracepoints 5.5), CONFIG_DEBUG_INFO_BTF; \
         lock-free VMA walk: maple tree 6.1+ or the VMA rbtree before; bpf_find_vma 5.17+ \
         as its fallback; folios 5.16+ for large-folio spans",
    )];
    let fault_tracepoint =
        tracefs.is_some_and(|root| tracepoint_exists(root, "exceptions", "page_fault_user"));
    out.push(optional(
        "needs, tracepoint",
        fault_tracepoint,
        format!(
            "exceptions:page_fault_user (x86 only, 3.13+): {}",
            if fault_tracepoint {
                "present"
            } else {
                "absent"
            }
        ),
    ));
    let in_btf = KernelBtf::from_file(btf_path)
        .map(|btf| ["do_wp_page", "finish_fault"].map(|f| btf.has_function(f)) == [true, true])
        .unwrap_or(false);
    out.push(optional(
        "needs, fentry",
        in_btf,
        format!(
            "BPF trampolines on kernel functions (x86_64 5.5+; arm64 6.4+, with ftrace direct calls), do_wp_page and finish_fault in BTF ({}), \
             lockdown not refusing tracing programs",
            if in_btf { "present" } else { "absent" }
        ),
    ));
    let kprobes = env::kprobe_pmu();
    let symbols = crate::probe::kallsyms::Kallsyms::read();
    let functions = ["do_wp_page", "finish_fault"].map(|f| symbols.has_function(f)) == [true, true];
    out.push(optional(
        "needs, kprobe",
        kprobes && functions,
        format!(
            "CONFIG_KPROBES ({}), do_wp_page and finish_fault in kallsyms ({})",
            if kprobes { "present" } else { "absent" },
            if functions { "present" } else { "absent" }
        ),
    ));
    out
}

/// What the verifier took: the programs, and the variants for kernels
/// before 5.17 where it refused the newer ones.
fn describe_programs(probes: &Probes) -> String {
    let programs = TRACEPOINTS.len() + RAW_TRACEPOINTS.len();
    let refused = probes.loaded.refused.len();
    let older: Vec<&str> = TRACEPOINTS
        .iter()
        .filter(|tp| probes.loaded_variant(tp.program) != tp.program)
        .map(|tp| tp.name)
        .collect();
    let mut text = format!(
        "verifier accepted {} of {programs} tracepoint programs",
        programs - refused
    );
    if older.is_empty() {
        text.push_str(" (bpf_find_vma, 5.17+, as the VMA walk's fallback)");
    } else {
        text.push_str(&format!(
            "; without bpf_find_vma (5.17+) for {}: VMAs found by the lock-free walk only",
            older.join(", ")
        ));
    }
    text
}

/// "hooks ...; fallbacks ..." for a function-hook backend that attached.
fn describe_hooks(selection: &Selection) -> String {
    let hooked: Vec<&str> = selection
        .hooks
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, f)| f))
        .collect();
    let mut text = format!("loads and attaches: {}", hooked.join(", "));
    if !selection.fallbacks.is_empty() {
        text.push_str(&format!("; fallbacks: {}", selection.fallbacks.join("; ")));
    }
    text
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// The checks as one JSON document: `ok` is false when a needed check
/// failed (the exit code says the same).
pub fn render_json(checks: &[Check]) -> String {
    let ok = !checks.iter().any(|c| c.status == Status::Fail);
    serde_json::json!({ "ok": ok, "checks": checks }).to_string()
}

/// What to do about a FAIL or `no` row, by the check's name: one line,
/// or None where there is nothing to do (or nothing is wrong).
fn hint(check: &Check) -> Option<&'static str> {
    if check.status == Status::Ok {
        return None;
    }
    let name = check.name.as_str();
    Some(match name {
        "privileges" => "run as root (sudo), or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8)",
        "btf" => "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2021), or point --btf at its vmlinux BTF",
        "tracefs" => "mount it: mount -t tracefs nodev /sys/kernel/tracing (or run mmapwatch doctor --mount)",
        "programs" => "the verifier refused a program: run with RUST_LOG=debug for its log, and report it with `mmapwatch --version` and `uname -r`",
        "fentry" | "needs, fentry" => "needs BPF trampolines (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS; arm64 6.4+) and lockdown not refusing tracing programs; --backend kprobe or tracepoint otherwise",
        "kprobe" | "needs, kprobe" => "needs CONFIG_KPROBES=y and do_wp_page/finish_fault in /proc/kallsyms; --backend fentry or tracepoint otherwise",
        "needs, tracepoint" => "x86 only: on other architectures use --backend kprobe (auto does)",
        "blind spot" => "see README, \"Blind spots\": what no backend can see, and what each reports instead",
        _ if name.starts_with("tracepoint syscalls:") => {
            "needs CONFIG_FTRACE_SYSCALLS=y; without it these calls are not counted (the rest works)"
        }
        _ if name.starts_with("tracepoint ") || name.starts_with("raw tracepoint ") => {
            "this kernel lacks it: what the detail names is not seen (the rest works); a newer kernel has it"
        }
        _ if name.starts_with("program ") => {
            "this kernel's verifier refuses it: what the detail names is not seen; a newer kernel accepts it"
        }
        _ => return None,
    })
}

/// The checks as a table: name, status, detail, and under a FAIL or `no`
/// row what to do. On a terminal, details and hints wrap to its width
/// under their column; piped, each stays one line (for grep).
pub fn render(checks: &[Check]) -> String {
    use std::io::IsTerminal as _;
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let indent = " ".repeat(width + 8);
    let columns = std::io::stdout()
        .is_terminal()
        .then(textwrap::termwidth)
        .filter(|&columns| columns > indent.len() + 20);
    let wrap = |text: &str, first: &str| -> String {
        match columns {
            Some(columns) => {
                let options = textwrap::Options::new(columns)
                    .initial_indent(first)
                    .subsequent_indent(&indent);
                textwrap::fill(text, options) + "\n"
            }
            None => format!("{first}{text}\n"),
        }
    };
    checks
        .iter()
        .map(|c| {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Fail => "FAIL",
                Status::No => "no",
            };
            let head = format!("{:<width$}  {status:<4}  ", c.name);
            let mut row = wrap(&c.detail, &head);
            if let Some(hint) = hint(c) {
                row.push_str(&wrap(&format!("→ {hint}"), &indent));
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_are_not_ok_say_what_to_do_and_json_is_unchanged() {
        let checks = vec![
            check("tracefs", false, "not mounted"),
            optional("tracepoint syscalls:sys_enter_msync", false, "absent"),
            check("kernel", true, "6.1"),
        ];
        // Not a terminal here: each row and hint is one line.
        let text = render(&checks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].contains("FAIL") && lines[0].ends_with("not mounted"));
        assert!(lines[1]
            .trim_start()
            .starts_with("→ mount it: mount -t tracefs"));
        assert!(lines[3].contains("CONFIG_FTRACE_SYSCALLS"), "{text}");
        assert!(lines[4].starts_with("kernel"), "an ok row has no hint");
        let json: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(
            json["checks"][0],
            serde_json::json!({"name": "tracefs", "status": "fail", "detail": "not mounted"})
        );
    }
}
