//! Builds the call-site test's C writer twice: with frame pointers (every
//! function keeps one, as distributions' frame-pointer builds do) and
//! without (as most C libraries ship), into OUT_DIR.

use std::{env, path::PathBuf, process::Command};

/// The C compiler for the target: cross builds (the arm64 guests) name
/// theirs as the cc crate's convention does (`CC_aarch64_unknown_linux_gnu`).
fn compiler() -> String {
    let target = env::var("TARGET").unwrap_or_default();
    env::var(format!("CC_{}", target.replace('-', "_"))).unwrap_or_else(|_| "cc".into())
}

fn main() {
    let source = "c/stacks.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=c/lmdb_writer.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cc = compiler();
    let builds: [(&str, &[&str]); 2] = [
        (
            "stacks-fp",
            &[
                "-O0",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
            ],
        ),
        ("stacks-nofp", &["-O2", "-fomit-frame-pointer"]),
    ];
    for (name, flags) in builds {
        let status = Command::new(&cc)
            .args(["-g", "-Wall", "-o"])
            .arg(out.join(name))
            .args(flags)
            .arg(source)
            .status()
            .expect("running cc (apt install gcc)");
        assert!(status.success(), "cc {source} failed");
    }
    // The LMDB writer where LMDB's headers are (liblmdb-dev: `cargo xtask
    // test` installs it); its test says so when it is missing.
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    if native && std::path::Path::new("/usr/include/lmdb.h").exists() {
        let status = Command::new(&cc)
            .args(["-g", "-O0", "-fno-omit-frame-pointer", "-Wall", "-o"])
            .arg(out.join("lmdb-writer"))
            .args(["c/lmdb_writer.c", "-llmdb"])
            .status()
            .expect("running cc");
        assert!(status.success(), "cc c/lmdb_writer.c failed");
    }
}
