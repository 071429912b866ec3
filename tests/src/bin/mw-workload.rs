//! Workloads for mmapwatch's integration tests: each writes (or does not
//! write) known pages of a file in one precise way, so a test can assert the
//! exact pages mmapwatch reports.
//!
//! Lines starting with `workload:` on stderr tell the test what happened
//! (pids of helper processes); stdout stays free for mmapwatch's JSON.
//!
//! Over 500 lines: one short function per mode the suites name (~20),
//! dispatched by `main`; a file per mode would only scatter the catalogue.

use std::{fs::OpenOptions, io::Write as _, os::unix::fs::FileExt as _, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use memmap2::MmapOptions;

const PAGE: usize = 4096;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    case: Case,
    /// Rename the process (prctl PR_SET_NAME, any bytes but NUL) before the
    /// case runs, as a hostile process could.
    #[arg(long, global = true)]
    rename: Option<std::ffi::OsString>,
}

#[derive(Subcommand)]
enum Case {
    /// Write one byte to each page through a MAP_SHARED mapping.
    Shared {
        #[arg(long)]
        file: PathBuf,
        /// File size in pages (the file is created or extended to it).
        #[arg(long)]
        size_pages: u64,
        /// Map starting at this file page.
        #[arg(long, default_value_t = 0)]
        offset_pages: u64,
        /// Pages of the mapping to write, comma separated.
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
        /// After writing: msync, then write the same pages again.
        #[arg(long)]
        msync_and_rewrite: bool,
        /// Write every page of the mapping (instead of --pages).
        #[arg(long)]
        all: bool,
    },
    /// Write through a MAP_PRIVATE mapping (copy-on-write).
    Private {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Write with pwrite(2) only.
    Pwrite {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Map MAP_SHARED read-only and read every page.
    ReadShared {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
    },
    /// Fill the file with write(2) (the page cache uses large folios), then
    /// write some pages through a shared mapping.
    FillThenMap {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        /// Map starting at this file page.
        #[arg(long, default_value_t = 0)]
        offset_pages: u64,
        /// Map only this many pages (default: to the end of the file). A
        /// window holding no whole 2 MiB region is mapped page by page.
        #[arg(long)]
        len_pages: Option<u64>,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
        /// Store to every page of the window (instead of --pages).
        #[arg(long)]
        all_pages: bool,
        /// Read every page of the window before the stores: the kernel maps
        /// 2 MiB folios read-only with one PMD each.
        #[arg(long)]
        read_first: bool,
    },
    /// A forked child faults on a private file mapping (a tracer then knows
    /// its name), renames itself and at once stores to page 1 of `file`;
    /// then the parent does the same and stores to page 0.
    RenamedWriters {
        #[arg(long)]
        file: PathBuf,
        /// A file mapped privately: its faults come before the renames.
        #[arg(long)]
        private_file: PathBuf,
        #[arg(long)]
        child_name: std::ffi::OsString,
        #[arg(long)]
        parent_name: std::ffi::OsString,
    },
    /// Map `file` shared and read-only, read every page, optionally unmap
    /// the first `unmap_front` pages (a split), mprotect pages
    /// `protect_from..protect_from+protect_pages` of the mapping writable,
    /// and store to `pages` (mapping pages, inside that range).
    MprotectThenWrite {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, default_value_t = 0)]
        unmap_front: u64,
        #[arg(long)]
        protect_from: u64,
        #[arg(long)]
        protect_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Fork a child that forks a grandchild; only the grandchild writes.
    Grandchild {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Two child processes write different pages of the same file.
    TwoWriters {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        first: Vec<u64>,
        #[arg(long, value_delimiter = ',')]
        second: Vec<u64>,
    },
    /// Two child processes write the same pages through private mappings.
    TwoPrivate {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// read(2) from another file into pages of a shared mapping: the kernel
    /// stores into the mapped file.
    ReadInto {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Steady load for soak tests: rewrite every page of `files` files, msync
    /// (so the next round faults again and writeback runs), repeat until
    /// `seconds` have passed. One process and a fixed set of pages: the
    /// tracked state stops growing after the first round.
    Loop {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        files: u32,
        #[arg(long, default_value_t = 64)]
        pages: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 20)]
        pause_ms: u64,
    },
    /// Benchmark: write one byte to each page of a shared mapping, make the
    /// pages fault again (msync write-protects on ext4; tmpfs needs
    /// MADV_DONTNEED), repeat. Prints the median ns per write fault.
    FaultLoop {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 4096)]
        pages: u64,
        #[arg(long, default_value_t = 21)]
        rounds: u32,
        /// Re-arm faults with MADV_DONTNEED instead of msync.
        #[arg(long)]
        dontneed: bool,
        /// Anonymous private memory instead of the file (first touches,
        /// re-armed with MADV_DONTNEED; `--file` is not opened).
        #[arg(long)]
        anonymous: bool,
    },
    /// Benchmark: create a file, write every page through a shared mapping,
    /// unlink it; repeat for `seconds`. Every write is a first write.
    Churn {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 256)]
        pages: u64,
        #[arg(long)]
        seconds: f64,
        /// At most this many files a second (0: as fast as it goes).
        #[arg(long, default_value_t = 0)]
        per_second: u64,
    },
    /// Many distinct files, as a host that keeps making new ones: file `i`
    /// of `files` (`many-i`, 2 pages) gets page `i % 2` written through a
    /// shared mapping. At most `per_second` files a second; syncfs after
    /// every `sync_every` files, as the flusher would.
    ManyFiles {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        files: u64,
        #[arg(long, default_value_t = 10_000)]
        per_second: u64,
        #[arg(long, default_value_t = 5_000)]
        sync_every: u64,
    },
    /// Write one byte to each of `pages` distinct pages, chosen at random
    /// (fixed seed) over a sparse shared mapping of `size_gib` GiB of
    /// `file`, as a large memory-mapped index does.
    SparsePages {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        pages: u64,
        #[arg(long, default_value_t = 1024)]
        size_gib: u64,
    },
    /// Start `threads` threads that wait, then fork a child that writes
    /// `pages` of `file` through a shared mapping and exits; then let the
    /// threads end. (A process with many threads, as a JVM or a database
    /// has, forking a helper.)
    ThreadsThenFork {
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
    /// Open `count` TCP connections to 127.0.0.1:`port` and hold them, idle,
    /// until stdin closes (for the exporter's connection cap).
    IdleConnections {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: usize,
    },
    /// Wait for a line on stdin, then do the shared case (for --pid tests).
    WaitThenShared {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        size_pages: u64,
        #[arg(long, value_delimiter = ',')]
        pages: Vec<u64>,
    },
}

fn open_sized(file: &PathBuf, size_pages: u64) -> Result<std::fs::File> {
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .with_context(|| format!("open {}", file.display()))?;
    let size = size_pages * PAGE as u64;
    if handle.metadata()?.len() < size {
        handle.set_len(size)?;
    }
    Ok(handle)
}

fn check_pages(pages: &[u64], limit: u64) -> Result<()> {
    if let Some(bad) = pages.iter().find(|&&p| p >= limit) {
        bail!("page {bad} is outside the {limit}-page mapping");
    }
    Ok(())
}

/// The part of a file a mapping covers, in pages.
#[derive(Clone, Copy)]
struct Window {
    offset_pages: u64,
    len_pages: u64,
}

fn write_shared(
    file: &PathBuf,
    size_pages: u64,
    offset_pages: u64,
    pages: &[u64],
    rewrite: bool,
) -> Result<()> {
    let window = Window {
        offset_pages,
        len_pages: size_pages - offset_pages,
    };
    write_shared_window(file, size_pages, window, pages, rewrite, false)
}

fn write_shared_window(
    file: &PathBuf,
    size_pages: u64,
    window: Window,
    pages: &[u64],
    rewrite: bool,
    read_first: bool,
) -> Result<()> {
    let handle = open_sized(file, size_pages)?;
    if window.offset_pages + window.len_pages > size_pages {
        bail!("the mapping window runs past the end of the file");
    }
    check_pages(pages, window.len_pages)?;
    // SAFETY: the file is private to the test; nothing truncates it meanwhile.
    let mut map = unsafe {
        MmapOptions::new()
            .offset(window.offset_pages * PAGE as u64)
            .len(window.len_pages as usize * PAGE)
            .map_mut(&handle)?
    };
    if read_first {
        let sum: u64 = (0..window.len_pages as usize)
            .map(|page| u64::from(std::hint::black_box(map[page * PAGE])))
            .sum();
        eprintln!("workload: read_sum={sum}");
        eprintln!(
            "workload: pmd_mapped_after_read_kb={}",
            file_pmd_mapped_kb()
        );
    }
    for &page in pages {
        map[page as usize * PAGE] = 0xa5;
    }
    if rewrite {
        // msync writes the pages back and write-protects them again: the
        // next store faults once more.
        map.flush()?;
        for &page in pages {
            map[page as usize * PAGE + 1] = 0x5a;
        }
    }
    map.flush()?;
    // Tell the test whether the kernel mapped huge folios with PMDs: then
    // one fault made 2 MiB writable and mmapwatch reports the whole span.
    eprintln!("workload: pmd_mapped_kb={}", file_pmd_mapped_kb());
    Ok(())
}

fn file_pmd_mapped_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("FilePmdMapped:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn write_private(file: &PathBuf, size_pages: u64, pages: &[u64]) -> Result<()> {
    let handle = open_sized(file, size_pages)?;
    check_pages(pages, size_pages)?;
    // SAFETY: the file is private to the test.
    let mut map = unsafe {
        MmapOptions::new()
            .len(size_pages as usize * PAGE)
            .map_copy(&handle)?
    };
    for &page in pages {
        map[page as usize * PAGE] = 0xa5;
    }
    Ok(())
}

fn report_pid(role: &str) {
    eprintln!("workload: {role}={}", std::process::id());
}

/// Forks; the child runs `body` and exits with its status.
fn fork_and(body: impl FnOnce() -> Result<()>) -> Result<libc::pid_t> {
    // SAFETY: the workload is single-threaded, so the child may run Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let code = match body() {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("workload child: {err:#}");
                    1
                }
            };
            let _ = std::io::stderr().flush();
            // SAFETY: ends the forked child without running the parent's atexit state.
            unsafe { libc::_exit(code) }
        }
        child => Ok(child),
    }
}

fn wait(pid: libc::pid_t) -> Result<()> {
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child {pid} failed (status {status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(name) = &cli.rename {
        rename(name)?;
    }
    match cli.case {
        Case::Shared {
            file,
            size_pages,
            offset_pages,
            pages,
            msync_and_rewrite,
            all,
        } => {
            let pages = if all {
                (0..size_pages - offset_pages).collect()
            } else {
                pages
            };
            write_shared(&file, size_pages, offset_pages, &pages, msync_and_rewrite)
        }
        Case::Private {
            file,
            size_pages,
            pages,
        } => {
            let handle = open_sized(&file, size_pages)?;
            check_pages(&pages, size_pages)?;
            // SAFETY: the file is private to the test.
            let mut map = unsafe {
                MmapOptions::new()
                    .len(size_pages as usize * PAGE)
                    .map_copy(&handle)?
            };
            for &page in &pages {
                map[page as usize * PAGE] = 0xa5;
            }
            Ok(())
        }
        Case::Pwrite { file, pages } => {
            let handle = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)?;
            for &page in &pages {
                handle.write_all_at(&[0xa5; 16], page * PAGE as u64)?;
            }
            handle.sync_all()?;
            Ok(())
        }
        Case::ReadShared { file, size_pages } => {
            let handle = open_sized(&file, size_pages)?;
            // SAFETY: the file is private to the test.
            let map = unsafe {
                MmapOptions::new()
                    .len(size_pages as usize * PAGE)
                    .map(&handle)?
            };
            let sum: u64 = (0..size_pages as usize)
                .map(|p| u64::from(map[p * PAGE]))
                .sum();
            eprintln!("workload: read_sum={sum}");
            Ok(())
        }
        Case::FillThenMap {
            file,
            size_pages,
            offset_pages,
            len_pages,
            pages,
            all_pages,
            read_first,
        } => {
            let handle = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&file)?;
            let chunk = vec![0x11u8; size_pages as usize * PAGE];
            handle.write_all_at(&chunk, 0)?;
            handle.sync_all()?;
            drop(handle);
            let window = Window {
                offset_pages,
                len_pages: len_pages.unwrap_or(size_pages - offset_pages),
            };
            let pages = if all_pages {
                (0..window.len_pages).collect()
            } else {
                pages
            };
            write_shared_window(&file, size_pages, window, &pages, false, read_first)
        }
        Case::RenamedWriters {
            file,
            private_file,
            child_name,
            parent_name,
        } => {
            let shared = open_sized(&file, 2)?;
            let private = open_sized(&private_file, 2)?;
            // SAFETY: both files are private to the test.
            let (mut shared, mut private) = unsafe {
                (
                    MmapOptions::new().len(2 * PAGE).map_mut(&shared)?,
                    MmapOptions::new().len(2 * PAGE).map_copy(&private)?,
                )
            };
            let child = fork_and(|| {
                report_pid("child");
                private[0] = 1;
                rename(&child_name)?;
                shared[PAGE] = 1;
                Ok(())
            })?;
            wait(child)?;
            report_pid("parent");
            private[PAGE] = 1;
            rename(&parent_name)?;
            shared[0] = 1;
            shared.flush()?;
            Ok(())
        }
        Case::MprotectThenWrite {
            file,
            size_pages,
            unmap_front,
            protect_from,
            protect_pages,
            pages,
        } => mprotect_then_write(
            &file,
            size_pages,
            unmap_front,
            (protect_from, protect_pages),
            &pages,
        ),
        Case::Grandchild {
            file,
            size_pages,
            pages,
        } => {
            report_pid("parent");
            let child = fork_and(|| {
                report_pid("child");
                let grandchild = fork_and(|| {
                    report_pid("grandchild");
                    write_shared(&file, size_pages, 0, &pages, false)
                })?;
                wait(grandchild)
            })?;
            wait(child)
        }
        Case::TwoWriters {
            file,
            size_pages,
            first,
            second,
        } => {
            // Size the file first so neither child races the other's truncate.
            drop(open_sized(&file, size_pages)?);
            let a = fork_and(|| {
                report_pid("first");
                write_shared(&file, size_pages, 0, &first, false)
            })?;
            wait(a)?;
            let b = fork_and(|| {
                report_pid("second");
                write_shared(&file, size_pages, 0, &second, false)
            })?;
            wait(b)
        }
        Case::TwoPrivate {
            file,
            size_pages,
            pages,
        } => {
            drop(open_sized(&file, size_pages)?);
            for role in ["first", "second"] {
                let child = fork_and(|| {
                    report_pid(role);
                    write_private(&file, size_pages, &pages)
                })?;
                wait(child)?;
            }
            Ok(())
        }
        Case::ReadInto {
            file,
            source,
            size_pages,
            pages,
        } => {
            let handle = open_sized(&file, size_pages)?;
            check_pages(&pages, size_pages)?;
            std::fs::write(&source, vec![0x42u8; PAGE])?;
            let source = std::fs::File::open(&source)?;
            // SAFETY: the file is private to the test.
            let mut map = unsafe {
                MmapOptions::new()
                    .len(size_pages as usize * PAGE)
                    .map_mut(&handle)?
            };
            for &page in &pages {
                let target = &mut map[page as usize * PAGE..(page as usize + 1) * PAGE];
                let read = source.read_at(target, 0)?;
                if read != PAGE {
                    bail!("short read: {read}");
                }
            }
            map.flush()?;
            Ok(())
        }
        Case::Loop {
            dir,
            files,
            pages,
            seconds,
            pause_ms,
        } => {
            std::fs::create_dir_all(&dir)?;
            let mut maps = Vec::new();
            for i in 0..files {
                let handle = open_sized(&dir.join(format!("soak-{i}.bin")), pages)?;
                // SAFETY: the files are private to the soak.
                maps.push(unsafe {
                    MmapOptions::new()
                        .len(pages as usize * PAGE)
                        .map_mut(&handle)?
                });
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
            let mut rounds = 0u64;
            while std::time::Instant::now() < deadline {
                for map in &mut maps {
                    for page in 0..pages as usize {
                        map[page * PAGE] = map[page * PAGE].wrapping_add(1);
                    }
                    map.flush()?;
                }
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            }
            eprintln!("workload: rounds={rounds}");
            Ok(())
        }
        Case::FaultLoop {
            file,
            pages,
            rounds,
            dontneed,
            anonymous,
        } => {
            let len = pages as usize * PAGE;
            let mut map = if anonymous {
                let map = MmapOptions::new().len(len).map_anon()?;
                // One fault per 4 KiB page, not one per 2 MiB huge page.
                // SAFETY: advice on our own mapping.
                if unsafe { libc::madvise(map.as_ptr() as *mut _, len, libc::MADV_NOHUGEPAGE) } != 0
                {
                    bail!("madvise: {}", std::io::Error::last_os_error());
                }
                map
            } else {
                let handle = open_sized(&file, pages)?;
                // SAFETY: the file is private to the benchmark.
                unsafe { MmapOptions::new().len(len).map_mut(&handle)? }
            };
            let dontneed = dontneed || anonymous;
            let mut per_fault = Vec::new();
            for round in 0..rounds {
                let start = std::time::Instant::now();
                for page in 0..pages as usize {
                    // Volatile: the compiler must not merge or drop the stores.
                    // SAFETY: in bounds of the mapping.
                    unsafe {
                        std::ptr::write_volatile(map.as_mut_ptr().add(page * PAGE), round as u8)
                    };
                }
                let elapsed = start.elapsed();
                // The first round allocates the page cache: not a steady fault.
                if round > 0 {
                    per_fault.push(elapsed.as_nanos() as f64 / pages as f64);
                }
                if dontneed {
                    // SAFETY: drops this process's PTEs of its own mapping.
                    if unsafe { libc::madvise(map.as_mut_ptr().cast(), len, libc::MADV_DONTNEED) }
                        != 0
                    {
                        bail!("madvise: {}", std::io::Error::last_os_error());
                    }
                } else {
                    map.flush()?;
                }
            }
            per_fault.sort_by(f64::total_cmp);
            let median = per_fault.get(per_fault.len() / 2).copied().unwrap_or(0.0);
            println!(
                "{{\"ns_per_fault\":{median:.1},\"faults\":{}}}",
                pages * u64::from(rounds)
            );
            Ok(())
        }
        Case::Churn {
            dir,
            pages,
            seconds,
            per_second,
        } => {
            std::fs::create_dir_all(&dir)?;
            let gap = (per_second > 0)
                .then(|| std::time::Duration::from_secs_f64(1.0 / per_second as f64));
            let mut last = std::time::Instant::now();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
            let started = std::time::Instant::now();
            let mut written = 0u64;
            let mut index = 0u64;
            while std::time::Instant::now() < deadline {
                let path = dir.join(format!("churn-{}-{index}", std::process::id()));
                index += 1;
                let handle = open_sized(&path, pages)?;
                // SAFETY: the file is private to the benchmark.
                let mut map = unsafe {
                    MmapOptions::new()
                        .len(pages as usize * PAGE)
                        .map_mut(&handle)?
                };
                for page in 0..pages as usize {
                    map[page * PAGE] = 1;
                }
                written += pages;
                drop(map);
                drop(handle);
                std::fs::remove_file(&path)?;
                // Paced file by file, never catching up after a slow spell:
                // a burst would be another test.
                if let Some(gap) = gap {
                    if let Some(rest) = gap.checked_sub(last.elapsed()) {
                        std::thread::sleep(rest);
                    }
                    last = std::time::Instant::now();
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!("{{\"first_writes\":{written},\"seconds\":{secs:.3},\"files\":{index}}}");
            Ok(())
        }
        Case::ManyFiles {
            dir,
            files,
            per_second,
            sync_every,
        } => many_files(&dir, files, per_second, sync_every),
        Case::SparsePages {
            file,
            pages,
            size_gib,
        } => sparse_pages(&file, pages, size_gib),
        Case::ThreadsThenFork {
            threads,
            file,
            size_pages,
            pages,
        } => threads_then_fork(threads, &file, size_pages, &pages),
        Case::IdleConnections { port, count } => {
            let held = (0..count)
                .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)))
                .collect::<std::io::Result<Vec<_>>>()
                .context("connect")?;
            eprintln!("workload: connected={}", held.len());
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest)?;
            Ok(())
        }
        Case::WaitThenShared {
            file,
            size_pages,
            pages,
        } => {
            report_pid("waiting");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            write_shared(&file, size_pages, 0, &pages, false)
        }
    }
}

fn many_files(dir: &std::path::Path, files: u64, per_second: u64, sync_every: u64) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(dir)?;
    let started = std::time::Instant::now();
    let gap = std::time::Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
    let mut last = started;
    for index in 0..files {
        let path = dir.join(format!("many-{index}"));
        let handle = open_sized(&path, 2)?;
        // SAFETY: the file is private to the test.
        let mut map = unsafe { MmapOptions::new().len(2 * PAGE).map_mut(&handle)? };
        map[(index % 2) as usize * PAGE] = 1;
        drop(map);
        if sync_every > 0 && (index + 1) % sync_every == 0 {
            // SAFETY: a valid descriptor, no pointers.
            if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
                bail!("syncfs: {}", std::io::Error::last_os_error());
            }
        }
        // Paced, never catching up after a slow syncfs: bursts are the
        // ring-overflow test's subject, not this case's.
        if let Some(rest) = gap.checked_sub(last.elapsed()) {
            std::thread::sleep(rest);
        }
        last = std::time::Instant::now();
    }
    // stderr: stdout is mmapwatch's report when it runs this.
    eprintln!(
        "workload: many_files={files} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sparse_pages(file: &PathBuf, pages: u64, size_gib: u64) -> Result<()> {
    let size_pages = size_gib << (30 - PAGE.trailing_zeros());
    if pages > size_pages {
        bail!("{pages} pages do not fit in {size_gib} GiB");
    }
    let handle = open_sized(file, size_pages)?;
    // SAFETY: the file is private to the test; nothing else maps it.
    let mut map = unsafe {
        MmapOptions::new()
            .len(usize::try_from(size_pages)? * PAGE)
            .map_mut(&handle)?
    };
    // xorshift64 with a fixed seed: the same pages every run, no repeats
    // kept (a page drawn twice is written once).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut written = std::collections::BTreeSet::new();
    while (written.len() as u64) < pages {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let page = state % size_pages;
        if written.insert(page) {
            map[usize::try_from(page)? * PAGE] = 1;
        }
    }
    drop(map);
    eprintln!("workload: sparse_pages={pages} size_pages={size_pages}");
    Ok(())
}

fn mprotect_then_write(
    file: &PathBuf,
    size_pages: u64,
    unmap_front: u64,
    (protect_from, protect_pages): (u64, u64),
    pages: &[u64],
) -> Result<()> {
    let handle = open_sized(file, size_pages)?;
    let len = size_pages as usize * PAGE;
    // SAFETY: a fresh shared read-only mapping of the test's file, used
    // only through raw pointers below, unmapped before returning.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&handle),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    let base = base.cast::<u8>();
    let sum: u64 = (0..size_pages as usize)
        // SAFETY: inside the mapping, which is readable.
        .map(|page| u64::from(unsafe { base.add(page * PAGE).read_volatile() }))
        .sum();
    eprintln!("workload: read_sum={sum}");
    // SAFETY: the front of our own mapping.
    if unmap_front > 0 && unsafe { libc::munmap(base.cast(), unmap_front as usize * PAGE) } != 0 {
        bail!("munmap: {}", std::io::Error::last_os_error());
    }
    if protect_from < unmap_front || protect_from + protect_pages > size_pages {
        bail!("the protected range is outside the mapping");
    }
    // SAFETY: a range of our own mapping.
    let protected = unsafe {
        libc::mprotect(
            base.add(protect_from as usize * PAGE).cast(),
            protect_pages as usize * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if protected != 0 {
        bail!("mprotect: {}", std::io::Error::last_os_error());
    }
    for &page in pages {
        if page < protect_from || page >= protect_from + protect_pages {
            bail!("page {page} is not in the range made writable");
        }
        // SAFETY: a page of the range just made writable.
        unsafe { base.add(page as usize * PAGE).write_volatile(0x5a) };
    }
    // SAFETY: what is left of our own mapping.
    unsafe {
        libc::munmap(
            base.add(unmap_front as usize * PAGE).cast(),
            len - unmap_front as usize * PAGE,
        )
    };
    Ok(())
}

fn rename(name: &std::ffi::OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::CString::new(name.as_bytes()).context("a name without NUL")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel copies
    // at most 16 bytes) that lives across the call.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        bail!("prctl(PR_SET_NAME): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn threads_then_fork(threads: usize, file: &PathBuf, size_pages: u64, pages: &[u64]) -> Result<()> {
    // Opened and sized before the fork: the child only maps and stores.
    let handle = open_sized(file, size_pages)?;
    // Threads block reading a pipe until its write end closes. Raw
    // pthreads with small stacks: std's threads also map a signal stack
    // each, and 20,000 of them pass vm.max_map_count.
    let mut pipe = [0; 2];
    // SAFETY: a two-int array for pipe(2) to fill.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    extern "C" fn wait_for_close(fd: *mut libc::c_void) -> *mut libc::c_void {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local from the pipe's read end.
        unsafe { libc::read(fd as usize as i32, (&raw mut byte).cast(), 1) };
        std::ptr::null_mut()
    }
    let mut waiting = Vec::with_capacity(threads);
    // SAFETY: attr is initialised by pthread_attr_init before use and
    // destroyed after; each thread gets the pipe's fd by value.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 64 << 10);
        for _ in 0..threads {
            let mut thread: libc::pthread_t = 0;
            let fd = pipe[0] as usize as *mut libc::c_void;
            let err = libc::pthread_create(&mut thread, &attr, wait_for_close, fd);
            if err != 0 {
                bail!("pthread_create: {}", std::io::Error::from_raw_os_error(err));
            }
            waiting.push(thread);
        }
        libc::pthread_attr_destroy(&mut attr);
    }
    eprintln!("workload: threads={}", waiting.len());
    let length = (size_pages as usize) * PAGE;
    // SAFETY: fork in a threaded process; the child makes only raw
    // syscalls (mmap, stores to its own mapping, munmap, _exit), which are
    // async-signal-safe, before it exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh shared mapping of the file opened above.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                handle.as_raw_fd(),
                0,
            );
            if base == libc::MAP_FAILED {
                libc::_exit(1);
            }
            for &page in pages {
                *(base as *mut u8).add(page as usize * PAGE) = 1;
            }
            libc::munmap(base, length);
            libc::_exit(0);
        }
    }
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    // SAFETY: closes our write end (the threads' reads end) and joins the
    // threads started above.
    unsafe {
        libc::close(pipe[1]);
        for thread in waiting {
            libc::pthread_join(thread, std::ptr::null_mut());
        }
    }
    eprintln!("workload: child={child} status={status}");
    if status != 0 {
        bail!("the child failed: status {status}");
    }
    Ok(())
}
