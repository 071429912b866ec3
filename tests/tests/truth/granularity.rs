//! Pages the kernel makes writable more than one at a time (large folios, tmpfs read faults and mprotect), stores that write nothing, writes no user fault sees, and what the kernel itself dirties: each reported exactly, labelled, or declared.

use std::collections::BTreeSet;

use integration_tests::{
    function_hooks_under_test, kernel_version, mmapwatch, path_arg, ranges, require_root, run,
    scratch_dir, shm_dir,
};

use super::{pages, python, strs, trace, SCRIPTED_WORKLOAD};

/// The issue's case: a file cached in a 16-page folio (write(2), fsync),
/// mapped shared, stored to at pages 0 and 5. Whether the fault on page 0
/// maps the whole folio writable is the kernel's choice (6.18 did on one
/// machine and not on another), so the workload asks the kernel: it prints
/// the minor faults its store to page 5 took. No fault: page 5 must be
/// reported as a span page; a fault: as an exact page.
#[test]
fn a_large_folio_mapped_whole_by_one_fault_is_reported_as_a_span() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("folio.bin");
    let script = "import mmap,os,sys,resource\ndef faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC)\nos.write(fd,b'\\0'*65536); os.fsync(fd)\nm=mmap.mmap(fd,16*4096)\nm[0]=1\nbefore=faults(); m[5*4096]=1; after=faults()\nm.flush()\nprint(after-before, file=sys.stderr)";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    let page5_faults: u64 = run
        .stderr
        .lines()
        .find_map(|line| line.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the workload did not print its fault count:\n{}",
                run.stderr
            )
        });
    let entry = run.expect_file(&file);
    let written = pages(&entry["pages_written"]);
    assert!(
        written.contains(&5),
        "the store to page 5 is missing: {entry:#}"
    );
    assert!(pages(&entry["exact_pages"]).contains(&0), "{entry:#}");
    // Before folios (5.16) ext4 caches single pages: page 5 faults itself
    // (5.10's rusage may not count that fault).
    if page5_faults == 0 && kernel_version() >= (5, 16) {
        // Page 5 had no fault of its own: it is there as the folio's span.
        assert!(!pages(&entry["exact_pages"]).contains(&5), "{entry:#}");
        assert!(pages(&entry["span_pages"]).contains(&5), "{entry:#}");
        assert!(entry["folio_spans"].as_u64().unwrap() >= 1, "{entry:#}");
    } else {
        // The kernel mapped page 0 alone: the store to page 5 faulted itself.
        assert!(pages(&entry["exact_pages"]).contains(&5), "{entry:#}");
    }
    // The span is one folio of the 16-page file: nothing beyond it.
    assert!(written.iter().all(|&p| p < 16), "{entry:#}");
    // The kernel's own dirty counts agree: every folio it dirtied lies in
    // the 16-page file. They count clean-to-dirty transitions, not
    // distinct pages: writeback between the two stores (the flusher, a
    // sync elsewhere) or a folio ext4 redirties counts the folio again, so
    // they may exceed the pages written (a CI run saw that).
    let folios_dirtied = entry["folios_dirtied"].as_u64().unwrap();
    let pages_dirtied = entry["pages_dirtied"].as_u64().unwrap();
    assert!(folios_dirtied >= 1, "{entry:#}");
    assert!(pages_dirtied <= 16 * folios_dirtied, "{entry:#}");
}

/// tmpfs never write-protects shared pages: a read fault maps page 3 (and
/// its neighbours) writable and the store takes no fault. The file must be
/// in the report, its pages labelled possibly written, not modified.
#[test]
fn a_tmpfs_store_after_a_read_fault_is_reported_as_possibly_written() {
    require_root();
    let dir = shm_dir();
    let file = dir.path().join("segment");
    let script = "import mmap,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,16*4096)\nm=mmap.mmap(fd,16*4096)\nx=m[3*4096]\nm[3*4096]=7";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(entry["fs"], "tmpfs");
    // Still linked: tmpfs answers ESTALE to a handle never made (the file
    // was never looked up by one), which is no proof of deletion.
    assert_eq!(entry["deleted"], false, "{entry:#}");
    assert!(
        pages(&entry["possibly_written_pages"]).contains(&3),
        "{entry:#}"
    );
    assert!(entry["possibly_modified"].is_string(), "{entry:#}");
    assert_eq!(entry["modified"], false, "no write fault: no evidence");
    assert!(pages(&entry["possibly_written_pages"])
        .iter()
        .all(|&p| p < 16));
    assert_eq!(entry["writers"][0]["comm"], "python3");
}

/// tmpfs has no write-notify: mprotect making a shared read-only mapping
/// writable upgrades the entries of pages already mapped, and stores to
/// them take no fault. The range made writable is reported as possibly
/// written (never as written: nothing proves a store), also after a split
/// (the mapping's front unmapped, one middle page made writable).
#[test]
fn tmpfs_pages_made_writable_by_mprotect_are_possibly_written() {
    require_root();
    let dir = shm_dir();
    for (unmap_front, protect_from, protect_pages, stores, expected) in [
        ("0", "0", "64", "0,1,2,3,40", (0, 63)),
        ("8", "20", "1", "20", (20, 20)),
    ] {
        let file = dir.path().join(format!("mprotect-{unmap_front}"));
        let run = trace(
            &["--path-prefix", &path_arg(dir.path())],
            &[
                SCRIPTED_WORKLOAD,
                "mprotect-then-write",
                "--file",
                &path_arg(&file),
                "--size-pages",
                "64",
                "--unmap-front",
                unmap_front,
                "--protect-from",
                protect_from,
                "--protect-pages",
                protect_pages,
                "--pages",
                stores,
            ],
        );
        assert!(run.status.success(), "{}", run.stderr);
        let entry = run.expect_file(&file);
        let stored: BTreeSet<u64> = stores.split(',').map(|p| p.parse().unwrap()).collect();
        let written = pages(&entry["pages_written"]);
        let maybe = pages(&entry["possibly_written_pages"]);
        // Every store is seen, as written (it faulted) or possibly written.
        for page in &stored {
            assert!(
                written.contains(page) || maybe.contains(page),
                "{page}: {entry:#}"
            );
        }
        // Only the range made writable is possibly written.
        assert!(
            maybe.iter().all(|p| (expected.0..=expected.1).contains(p)),
            "{entry:#}"
        );
        assert!(entry["possibly_modified"].is_string(), "{entry:#}");
    }
}

/// The human views say what the JSON says: a tmpfs file whose pages 0-15
/// were mapped writable by a read fault (page 5's fault-around), then
/// stored to at pages 0-3 and 40, shows `W (+P possible)` in the trace
/// table with both ranges, and `W+P?` in `top --batch`, W and P the JSON's
/// counts of written and only possibly written pages.
#[test]
fn the_table_and_top_batch_mark_possibly_written_pages() {
    require_root();
    let dir = shm_dir();
    let script = "import mmap,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,64*4096)\nm=mmap.mmap(fd,64*4096)\nx=m[5*4096]\nfor p in (0,1,2,3,40): m[p*4096]=7\ntime.sleep(float(sys.argv[2]))";
    let file = dir.path().join("marked-json");
    let json = trace(
        &["--path-prefix", &path_arg(dir.path())],
        &strs(&python(script, &[&path_arg(&file), "0"])),
    );
    let entry = json.expect_file(&file);
    // Each stored page is written or possibly written (a store after the
    // fault-around may still fault, as it does on Linux 6.18), and the
    // window holds pages never stored to.
    let written = pages(&entry["pages_written"]);
    let maybe = pages(&entry["possibly_written_pages"]);
    for page in [0, 1, 2, 3, 40] {
        assert!(
            written.contains(&page) || maybe.contains(&page),
            "{entry:#}"
        );
    }
    assert!(!maybe.is_empty(), "{entry:#}");

    // The window's size varies from run to run (fault-around maps what the
    // page cache holds): each view is checked against its own counts.
    // "W (+P possible)" in the table, "W+P?" in top's column.
    let table_counts = |row: &str| -> Option<(u64, u64)> {
        let (before, after) = row.split_once(" (+")?;
        let written = before.split_whitespace().last()?.parse().ok()?;
        let possible = after.split_once(" possible)")?.0.parse().ok()?;
        Some((written, possible))
    };
    let token_counts = |token: &str| -> Option<(u64, u64)> {
        let (written, possible) = token.strip_suffix('?')?.split_once('+')?;
        Some((written.parse().ok()?, possible.parse().ok()?))
    };
    let file = dir.path().join("marked-table");
    let table = run(
        mmapwatch(&["trace", "--path-prefix", &path_arg(dir.path()), "--"])
            .args(python(script, &[&path_arg(&file), "0"])),
    );
    let text = String::from_utf8_lossy(&table.stdout).into_owned()
        + &String::from_utf8_lossy(&table.stderr);
    let row = text
        .lines()
        .find(|line| line.contains(&path_arg(&file)))
        .unwrap_or_else(|| panic!("no row for the file:\n{text}"));
    let (written, possible) = table_counts(row).unwrap_or_else(|| panic!("no marks: {row}"));
    assert!(
        written >= 1 && possible >= 1 && written + possible >= 5,
        "{row}"
    );
    assert!(row.contains(" possible "), "the possible ranges: {row}");

    // top --batch: the row's PAGES token, while the writer sleeps.
    let file = dir.path().join("marked-top");
    let top = run(mmapwatch(&[
        "top",
        "--batch",
        "--interval",
        "200ms",
        "--path-prefix",
        &path_arg(dir.path()),
        "--",
    ])
    .args(python(script, &[&path_arg(&file), "0.6"])));
    let text = String::from_utf8_lossy(&top.stdout);
    let row = text
        .lines()
        .rev()
        .find(|line| line.ends_with(&path_arg(&file)))
        .unwrap_or_else(|| panic!("no row for the file:\n{text}"));
    let token = row.split_whitespace().next().unwrap_or_default();
    let (written, possible) = token_counts(token).unwrap_or_else(|| panic!("no marks: {row}"));
    assert!(written >= 1 && possible >= 1, "{row}");
}

/// A store past the end of the file raises SIGBUS and writes nothing.
#[test]
fn a_store_past_eof_is_not_a_written_page() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("short.bin");
    // Two pages of file under an eight-page mapping; a child stores to
    // page 5 and dies of SIGBUS.
    let script = "import mmap,os,sys,ctypes\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,8*4096)\nm=mmap.mmap(fd,8*4096)\nos.ftruncate(fd,2*4096)\nm[0]=1\npid=os.fork()\nif pid==0:\n    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m))+5*4096,1,1)\n    os._exit(0)\n_,st=os.waitpid(pid,0)\nprint('signal',os.WTERMSIG(st) if os.WIFSIGNALED(st) else 0,file=sys.stderr)";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(
        run.stderr.contains("signal 7"),
        "the child must die of SIGBUS: {}",
        run.stderr
    );
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(0, 0)], "{entry:#}");
    // The fault tracepoint sees the store and counts it; function hooks
    // never run for it (the kernel refuses it before finish_fault).
    if !function_hooks_under_test() {
        assert!(run.json["probe"]["faults_past_eof"].as_u64().unwrap() >= 1);
    }
}

/// A write by get_user_pages (here pwrite to /proc/self/mem, as debuggers
/// do) into a shared mapping takes no user page fault. The function-hook
/// backends see it below get_user_pages; the tracepoint backend cannot,
/// and its report says so in `blind_spots`.
#[test]
fn a_get_user_pages_write_is_seen_or_declared_a_blind_spot() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("gup.bin");
    let script = "import mmap,os,sys,ctypes\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT|os.O_TRUNC); os.ftruncate(fd,4*4096)\nm=mmap.mmap(fd,4*4096)\naddress=ctypes.addressof(ctypes.c_char.from_buffer(m))\nmem=os.open('/proc/self/mem',os.O_RDWR)\nassert os.pwrite(mem,b'gup',address+2*4096)==3\nos.fsync(fd)";
    let command = python(script, &[&path_arg(&file)]);
    let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        std::fs::read(&file).unwrap()[2 * 4096..2 * 4096 + 3],
        *b"gup"
    );
    let declared = run.json["blind_spots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().contains("get_user_pages"));
    match run.json["backend"].as_str().unwrap() {
        "tracepoint" => {
            assert!(declared, "{:#}", run.json);
            // Not invented either: no user fault, no page.
            if let Some(entry) = run.file(&file) {
                assert!(!pages(&entry["exact_pages"]).contains(&2), "{entry:#}");
            }
        }
        _ => {
            assert!(!declared, "{:#}", run.json);
            let entry = run.expect_file(&file);
            assert_eq!(ranges(&entry["pages_written"]), vec![(2, 2)], "{entry:#}");
        }
    }
}

/// The kernel's own dirty state agrees: after stores into freshly synced
/// files cached in folios of several sizes, every page /proc/kpageflags
/// calls dirty (read through /proc/self/pagemap while still mapped) is in
/// `pages_written`. The stores are the mappings' first touches, so each
/// folio is mapped whole by its write fault and the span covers it.
#[test]
fn kernel_dirty_pages_are_a_subset_of_the_written_pages() {
    require_root();
    let dir = scratch_dir();
    // Cached by write(2) in 64 KiB and 2 MiB runs, or sparse (faulted in
    // page by page); stores to scattered pages; then the pagemap walk.
    let script = r#"import mmap,os,sys,struct,random
path,kind=sys.argv[1],sys.argv[2]
pages=1024
fd=os.open(path,os.O_RDWR|os.O_CREAT|os.O_TRUNC)
if kind=='sparse': os.ftruncate(fd,pages*4096)
else:
    chunk=65536 if kind=='64k' else 2<<20
    for off in range(0,pages*4096,chunk): os.pwrite(fd,b'\1'*chunk,off)
os.fsync(fd)
m=mmap.mmap(fd,pages*4096)
random.seed(7)
for p in random.sample(range(pages),40): m[p*4096]=2
import ctypes
base=ctypes.addressof(ctypes.c_char.from_buffer(m))
pm=open('/proc/self/pagemap','rb'); kf=open('/proc/kpageflags','rb')
dirty=[]
for p in range(pages):
    pm.seek((base//4096+p)*8); e=struct.unpack('<Q',pm.read(8))[0]
    if not e>>63&1: continue
    pfn=e&((1<<55)-1)
    kf.seek(pfn*8); f=struct.unpack('<Q',kf.read(8))[0]
    if f>>4&1: dirty.append(p)
print('dirty',*dirty,file=sys.stderr)"#;
    for kind in ["sparse", "64k", "2m"] {
        let file = dir.path().join(format!("dirty-{kind}.bin"));
        let command = python(script, &[&path_arg(&file), kind]);
        let run = trace(&["--path-prefix", &path_arg(dir.path())], &strs(&command));
        assert!(run.status.success(), "{kind}: {}", run.stderr);
        let dirty: BTreeSet<u64> = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("dirty"))
            .unwrap_or_else(|| panic!("{kind}: no dirty line: {}", run.stderr))
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(
            dirty.len() >= 40,
            "{kind}: the kernel saw the stores: {dirty:?}"
        );
        let entry = run.expect_file(&file);
        let written = pages(&entry["pages_written"]);
        eprintln!("{kind}: dirty {} written {}", dirty.len(), written.len());
        let missing: Vec<&u64> = dirty.difference(&written).collect();
        assert!(
            missing.is_empty(),
            "{kind}: dirty in the kernel, absent from the report: {missing:?}\n{entry:#}"
        );
    }
}
