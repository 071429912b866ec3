//! `mmapwatch doctor`: every check with its status, and what this kernel supports.

use integration_tests::{in_vm, kernel_version, mmapwatch, require_root, run};

/// `doctor --json` gives the same checks as the table, as data: what a
/// fleet script or a container's health check reads.
#[test]
fn doctor_json_lists_every_check_with_its_status() {
    require_root();
    let output = run(&mut mmapwatch(&["doctor", "--json"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("doctor --json is JSON");
    assert_eq!(json["ok"], true, "{json:#}");
    let checks = json["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for needed in [
        "kernel",
        "privileges",
        "btf",
        "tracefs",
        "programs",
        "backend auto",
    ] {
        assert!(names.contains(&needed), "no {needed} check: {json:#}");
    }
    for check in checks {
        let status = check["status"].as_str().unwrap_or("");
        assert!(["ok", "fail", "no"].contains(&status), "{check}");
        assert!(check["detail"].is_string(), "{check}");
    }
    // The table shows the same checks, one line each (piped: not
    // wrapped), and under each one that is not ok what to do.
    let table = run(&mut mmapwatch(&["doctor"]));
    let table = String::from_utf8_lossy(&table.stdout);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| !l.trim_start().starts_with('→'))
        .collect();
    assert_eq!(rows.len(), checks.len(), "{table}");
    let not_ok = checks.iter().filter(|c| c["status"] != "ok").count();
    let hints = table.lines().count() - rows.len();
    assert!(
        hints > 0 || not_ok == 0,
        "no hint under a row that is not ok:\n{table}"
    );
    assert!(hints <= not_ok, "{table}");
}

/// `doctor` checks the running kernel for real: the programs load, the
/// backend choice is explained, optional features are "no", not failures.
#[test]
fn doctor_reports_what_this_kernel_supports() {
    require_root();
    let output = run(&mut mmapwatch(&["doctor"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    assert!(line("programs").contains(" ok "), "{text}");
    // The maple tree came in 6.1; before, the VMA rbtree.
    let walk = if kernel_version() >= (6, 1) {
        "maple-tree walk"
    } else {
        "VMA rbtree"
    };
    assert!(line("vma lookup").contains(walk), "{text}");
    assert!(!line("backend auto").contains("no privileges"), "{text}");
    // x86 only: arm64 has no exceptions events.
    let fault_tracepoint = if cfg!(target_arch = "x86_64") {
        " ok "
    } else {
        " no "
    };
    assert!(
        line("tracepoint exceptions:page_fault_user").contains(fault_tracepoint),
        "{text}"
    );
    let auto = line("backend auto");
    if in_vm() && cfg!(target_arch = "aarch64") {
        // Debian's arm64 6.1: kprobes, no fentry (see above).
        assert!(auto.contains("kprobe hooks"), "{text}");
        assert!(line("kprobe").contains(" ok "), "{text}");
    } else if in_vm() {
        assert!(auto.contains("fentry"), "{text}");
        assert!(line("fentry").contains(" ok "), "{text}");
        assert!(line("kprobe").contains(" ok "), "{text}");
    } else if auto.contains("tracepoint") {
        // Says why: what each function-hook backend hit.
        assert!(
            auto.contains("fentry does not attach") && auto.contains("kprobe does not attach"),
            "{text}"
        );
    }
    for optional in ["fentry", "kprobe"] {
        let status = line(optional);
        assert!(
            status.contains(" ok ") || status.contains(" no "),
            "{status}"
        );
    }
    assert!(
        !text.contains("FAIL"),
        "nothing required is missing here:\n{text}"
    );
}
