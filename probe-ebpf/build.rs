use which::which;

/// Fails early, with the fix, when the eBPF linker is missing.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_else(|err| {
        panic!("bpf-linker not found ({err}): run `cargo xtask setup`");
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
