//! Which file: reused inode numbers, deep and odd names, overlayfs, renames, deletions, mount points and mount namespaces.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use integration_tests::{identity, mmapwatch, path_arg, ranges, require_root, run, scratch_dir};
use serde_json::Value;

use super::{pages, python, strs, trace};

/// A file mmap-written and deleted; a new file gets its inode number and is
/// mmap-written: two entries, each with its own pages and path.
#[test]
fn a_reused_inode_number_is_a_new_file() {
    require_root();
    let dir = scratch_dir();
    let first = dir.path().join("first.bin");
    let second = dir.path().join("second.bin");
    // Creates, writes page 1 of, and deletes files until one gets the
    // inode number of the first (ext4 reuses a freed number at once).
    let script = "import mmap,os,sys\ndef w(p,page):\n    fd=os.open(p,os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\n    m=mmap.mmap(fd,4*4096); m[page*4096]=1; m.flush(); m.close(); ino=os.fstat(fd).st_ino; os.close(fd); return ino\na=w(sys.argv[1],1); os.unlink(sys.argv[1])\nfor i in range(200):\n    b=w(sys.argv[2],2)\n    if b==a: break\n    os.unlink(sys.argv[2])\nprint('reused',int(a==b),file=sys.stderr)";
    let command = python(script, &[&path_arg(&first), &path_arg(&second)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    if !run.stderr.contains("reused 1") {
        panic!(
            "the filesystem did not reuse the inode number: {}",
            run.stderr
        );
    }
    let (dev, ino, second_path) = identity(&second);
    let entries: Vec<&Value> = run
        .files()
        .iter()
        .filter(|f| f["ino"] == ino && f["dev"] == dev.as_str())
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "two files, one inode number: {:#}",
        run.json
    );
    let current = entries
        .iter()
        .find(|f| f["path"] == second_path.as_str())
        .unwrap_or_else(|| panic!("the new file is named: {:#}", run.json));
    assert_eq!(ranges(&current["pages_written"]), vec![(2, 2)]);
    let old = entries
        .iter()
        .find(|f| f["path"] != second_path.as_str())
        .unwrap_or_else(|| panic!("the old file keeps its own name: {:#}", run.json));
    assert_eq!(ranges(&old["pages_written"]), vec![(1, 1)]);
    assert_ne!(old["generation"], current["generation"]);
}

/// A file 24 directories deep with a 200-byte name, written by a child
/// that exits at once: named in full (the kernel's walk reaches the root;
/// /proc may already have lost the mapping).
#[test]
fn a_deep_path_with_a_long_name_is_named_in_full() {
    require_root();
    let dir = scratch_dir();
    let mut deep = dir.path().to_path_buf();
    for level in 0..24 {
        deep.push(format!("level-{level}"));
    }
    std::fs::create_dir_all(&deep).expect("deep dirs");
    let file = deep.join("n".repeat(200));
    let script = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nif os.fork()==0:\n    m=mmap.mmap(fd,4*4096); m[2*4096]=1; m.close(); os._exit(0)\nos.wait()";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(2, 2)], "{entry:#}");
    assert_eq!(entry["path"], identity(&file).2.as_str(), "{entry:#}");
}

/// An overlay mount, unmounted when dropped.
struct Overlay {
    merged: PathBuf,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.merged)
            .status();
    }
}

/// overlayfs (every container's root): a file of the lower layer, opened
/// for writing through the merged directory (so copied up) and written
/// through a mapping by a child that exits at once, is named by its merged
/// path, as its writer opened it, with the upper layer's file as
/// `backing_path`; `--path-prefix` finds it by the merged directory.
#[test]
fn an_overlayfs_file_is_named_by_its_merged_path() {
    require_root();
    let dir = scratch_dir();
    let layer = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).expect("overlay directory");
        path
    };
    let (lower, upper, work, merged) = (
        layer("lower"),
        layer("upper"),
        layer("work"),
        layer("merged"),
    );
    std::fs::write(lower.join("f"), vec![0u8; 4 * 4096]).expect("lower file");
    let mounted = run(std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged));
    assert!(
        mounted.status.success(),
        "mount -t overlay: {}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    let overlay = Overlay { merged };
    let file = overlay.merged.join("f");
    let script = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\nif os.fork()==0:\n    m=mmap.mmap(fd,4*4096); m[2*4096]=1; m.close(); os._exit(0)\nos.wait()";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(
        &["--path-prefix", &path_arg(&overlay.merged)],
        &strs(&command),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entries = run.files();
    assert_eq!(entries.len(), 1, "{:#}", run.json);
    let entry = &entries[0];
    assert_eq!(entry["path"], path_arg(&file).as_str(), "{entry:#}");
    assert_eq!(
        entry["backing_path"],
        path_arg(&upper.join("f")).as_str(),
        "{entry:#}"
    );
    assert_eq!(entry["renamed_from"], Value::Null, "{entry:#}");
    // Copy-up writes the file with write(2): its folio may be large, and
    // the fault's span then covers its neighbours.
    assert_eq!(ranges(&entry["exact_pages"]), vec![(2, 2)], "{entry:#}");
    assert!(pages(&entry["pages_written"]).contains(&2), "{entry:#}");
    // The file is the upper layer's: its identity is that inode's.
    let (dev, ino, _) = identity(&upper.join("f"));
    assert_eq!(
        (entry["dev"].as_str(), entry["ino"].as_u64()),
        (Some(dev.as_str()), Some(ino))
    );
}

/// A linker's pattern (lld, mold): the output is written through a shared
/// mapping under a temporary name, then renamed. The report names the file
/// as it is now, keeps the name it was written under, and finds it by the
/// directory of either.
#[test]
fn a_file_renamed_after_its_write_is_named_as_it_is_now() {
    require_root();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    let temporary = dir.path().join("prog.tmp4f2a");
    let final_name = out.join("prog");
    let script = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nm=mmap.mmap(fd,4*4096); m[1*4096]=1; m[3*4096]=1; m.close(); os.close(fd)\nos.rename(sys.argv[1],sys.argv[2])";
    let command = python(script, &[&path_arg(&temporary), &path_arg(&final_name)]);
    let run = trace(&["--path-prefix", &path_arg(&out)], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&final_name);
    assert_eq!(entry["path"], identity(&final_name).2.as_str(), "{entry:#}");
    assert_eq!(
        entry["renamed_from"],
        path_arg(&temporary).as_str(),
        "{entry:#}"
    );
    assert_eq!(entry["deleted"], false);
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 1), (3, 3)]);
}

/// A mount point that is not UTF-8 (a user may mount at any name) is one
/// mount among the others: a file written in it is named by its exact
/// bytes, and the rest of the mount table still names files (a file
/// renamed after its write is found by its new name through its mount).
#[test]
fn a_mount_point_that_is_not_utf8_leaves_every_file_named() {
    use std::{os::unix::ffi::OsStrExt as _, process::Command};
    require_root();
    let dir = scratch_dir();
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"mnt \xff\x01-\xe9"));
    std::fs::create_dir(&odd).expect("mount point");
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&odd));
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&odd);
    let inside = odd.join("in.bin");
    let temporary = dir.path().join("before.tmp");
    let renamed = dir.path().join("after.bin");
    let script = "import mmap,os,sys\nfor p in sys.argv[1:3]:\n    fd=os.open(os.fsencode(p),os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,2*4096)\n    m=mmap.mmap(fd,2*4096); m[4096]=1; m.close(); os.close(fd)\nos.rename(os.fsencode(sys.argv[2]),os.fsencode(sys.argv[3]))";
    let output = run(mmapwatch(&[
        "trace",
        "--json",
        "-o",
        "-",
        "--path-prefix",
        &path_arg(dir.path()),
    ])
    .args(["--", "python3", "-c", script])
    .arg(&inside)
    .arg(&temporary)
    .arg(&renamed));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("JSON report");
    let files = report["files"].as_array().unwrap();
    let entry_of = |path: &Path| {
        let ino = std::fs::metadata(path).unwrap().ino();
        files
            .iter()
            .find(|f| f["ino"].as_u64() == Some(ino))
            .unwrap_or_else(|| panic!("{} not reported: {report:#}", path.display()))
    };
    let entry = entry_of(&inside);
    let hex: String = inside
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(entry["path_bytes_hex"], hex.as_str(), "{entry:#}");
    assert_eq!(entry["fs"], "tmpfs", "{entry:#}");
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 1)]);
    let entry = entry_of(&renamed);
    assert_eq!(entry["path"], identity(&renamed).2.as_str(), "{entry:#}");
    assert_eq!(
        entry["renamed_from"],
        path_arg(&temporary).as_str(),
        "{entry:#}"
    );
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 1)]);
}

/// A file written through a mapping and unlinked while mapped: named once,
/// without the kernel's " (deleted)" mark, and flagged deleted.
#[test]
fn a_deleted_file_is_flagged_once_not_renamed() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("gone.bin");
    let (dev, _, canonical) = {
        std::fs::write(&file, b"").unwrap();
        let id = identity(&file);
        std::fs::remove_file(&file).unwrap();
        id
    };
    let script = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nm=mmap.mmap(fd,4*4096); os.unlink(sys.argv[1]); m[2*4096]=1\nprint(os.fstat(fd).st_ino,file=sys.stderr)";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    let ino: u64 = run.stderr.trim().lines().last().unwrap().parse().unwrap();
    let entry = run
        .files()
        .iter()
        .find(|f| f["ino"] == ino && f["dev"] == dev.as_str())
        .unwrap_or_else(|| panic!("the deleted file is reported: {:#}", run.json));
    assert_eq!(entry["path"], canonical.as_str(), "{entry:#}");
    assert_eq!(entry["deleted"], true, "{entry:#}");
    assert!(entry["renamed_from"].is_null(), "{entry:#}");
    assert_eq!(ranges(&entry["pages_written"]), vec![(2, 2)]);
}

/// Names are bytes: a newline and an invalid UTF-8 byte are kept exactly
/// (the JSON path as is, or escaped with the exact bytes in hex), and the
/// table escapes control characters so a name cannot fake a report line.
#[test]
fn odd_names_are_exact_in_json_and_escaped_on_the_terminal() {
    use std::os::unix::ffi::OsStrExt as _;
    require_root();
    let dir = scratch_dir();
    let newline = dir.path().join("two\nlines\x1b[2J.bin");
    let invalid = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9.bin"));
    let script = "import mmap,os,sys\nfor p in sys.argv[1:]:\n    fd=os.open(os.fsencode(p),os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,2*4096)\n    m=mmap.mmap(fd,2*4096); m[4096]=1; m.close(); os.close(fd)";
    let traced = |format: &[&str]| {
        run(
            mmapwatch(&["trace", "-o", "-", "--path-prefix", &path_arg(dir.path())])
                .args(format)
                .args(["--", "python3", "-c", script])
                .arg(&newline)
                .arg(&invalid),
        )
    };
    let output = traced(&["--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("JSON report");
    let files = report["files"].as_array().unwrap();
    let named = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        files
            .iter()
            .find(|f| f["ino"].as_u64() == Some(meta.ino()))
            .unwrap_or_else(|| panic!("{} reported: {report:#}", path.display()))
    };
    let entry = named(&newline);
    assert_eq!(entry["path"], newline.to_str().unwrap(), "{entry:#}");
    assert!(entry["path_bytes_hex"].is_null());
    let entry = named(&invalid);
    let hex: String = invalid
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(entry["path_bytes_hex"], hex.as_str(), "{entry:#}");
    assert!(entry["path"]
        .as_str()
        .unwrap()
        .ends_with("latin1-\\xe9t\\xe9.bin"));

    let output = traced(&[]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!table.contains('\x1b'), "raw ESC on the terminal:\n{table}");
    assert!(table.contains("two\\nlines\\u{1b}[2J.bin"), "{table}");
}

/// The same path in two mount namespaces is two files: a host file, and a
/// file on a tmpfs mounted over its directory in a private namespace. Each
/// has its own entry, filesystem and mount namespace.
#[test]
fn one_path_in_two_mount_namespaces_is_two_files() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("same-name");
    let write = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nm=mmap.mmap(fd,4*4096); m[int(sys.argv[2])*4096]=1";
    let shell = format!(
        "python3 -c \"$W\" '{f}' 1 && unshare -m sh -c 'mount --make-rprivate / && mount -t tmpfs none \"$0\" && python3 -c \"$W\" \"$1\" 3' '{d}' '{f}'",
        f = path_arg(&file),
        d = path_arg(dir.path()),
    );
    let output = run(mmapwatch(&[
        "trace",
        "--json",
        "-o",
        "-",
        "--path-prefix",
        &path_arg(dir.path()),
    ])
    .env("W", write)
    .args(["--", "sh", "-c", &shell]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("JSON");
    let wanted = path_arg(&file);
    let entries: Vec<&Value> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] == wanted.as_str())
        .collect();
    assert_eq!(entries.len(), 2, "{report:#}");
    let host = entries
        .iter()
        .find(|f| f["fs"] == "ext4")
        .expect("host file");
    let private = entries
        .iter()
        .find(|f| f["fs"] == "tmpfs")
        .expect("tmpfs file");
    assert_eq!(ranges(&host["pages_written"]), vec![(1, 1)]);
    assert_eq!(ranges(&private["pages_written"]), vec![(3, 3)]);
    assert!(host["mount_ns"].is_u64() && private["mount_ns"].is_u64());
    assert_ne!(host["mount_ns"], private["mount_ns"], "{report:#}");
}
