//! A seeded random mmap workload that logs exactly what it stores, for the
//! differential test against `mmapwatch trace --json`.
//!
//! Usage: `mw-random SEED EXT4_DIR TMPFS_DIR LOG [XFS_DIR]`. It creates
//! files in those directories (sparse or filled by write(2), synced or not,
//! so the kernel caches them in small or large folios), maps them shared or
//! private, whole or through a window, and stores to random pages: from
//! this process, from forked children and from threads, by user stores
//! and by read(2) into the mapping, with reads, msync, MADV_DONTNEED,
//! ftruncate and mremap in between. With `MW_RANDOM_GUP=1` it also writes
//! through get_user_pages (`/proc/self/mem`, process_vm_writev,
//! MADV_POPULATE_WRITE then a store), which only the function-hook
//! backends can see. Writers rename themselves right before a store (a
//! forked child after a fault that showed a tracer its old name, or a
//! thread); mappings are read whole before stores (2 MiB folios are then
//! mapped read-only, one PMD each) or made read-only and writable again
//! with mprotect. Every page stored through a shared mapping is written to
//! LOG as `shared PATH PAGE`; through a private one, `private PATH PAGE`;
//! every file, `file PATH PAGES`. A renamed child's store is also written
//! as `by-NAME PATH PAGE`, and the child as `writer-NAME PATH PID`.
//!
//! Just over 500 lines: the generator, its operations and its log are one
//! state machine.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::FileExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{bail, Context, Result};

const PAGE: usize = 4096;

/// splitmix64: small, seedable and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The log, shared by threads and inherited by children (O_APPEND, one
/// write per line, so lines never interleave).
struct Log(Mutex<std::fs::File>);

impl Log {
    fn line(&self, text: String) -> Result<()> {
        let mut file = self.0.lock().map_err(|_| anyhow::anyhow!("log lock"))?;
        file.write_all(format!("{text}\n").as_bytes())?;
        Ok(())
    }
}

struct Mapping {
    base: *mut u8,
    /// File page of the mapping's first page, and its length in pages.
    offset_pages: u64,
    len_pages: u64,
    shared: bool,
}

impl Mapping {
    fn new(file: &std::fs::File, offset_pages: u64, len_pages: u64, shared: bool) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh mapping of a file we own; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_pages as usize * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                (offset_pages as usize * PAGE) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            base: base.cast(),
            offset_pages,
            len_pages,
            shared,
        })
    }

    /// Grows the mapping in place or elsewhere (MREMAP_MAYMOVE): the
    /// kernel moves its page tables, and the writer's mapping layout
    /// changes under any cached lookup.
    fn grow(&mut self, len_pages: u64) -> Result<()> {
        // SAFETY: our own mapping; the new length stays inside the file.
        let base = unsafe {
            libc::mremap(
                self.base.cast(),
                self.len_pages as usize * PAGE,
                len_pages as usize * PAGE,
                libc::MREMAP_MAYMOVE,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mremap: {}", std::io::Error::last_os_error());
        }
        self.base = base.cast();
        self.len_pages = len_pages;
        Ok(())
    }

    fn address(&self, page: u64) -> *mut u8 {
        // SAFETY: callers pass pages inside the mapping.
        unsafe { self.base.add(page as usize * PAGE + 8) }
    }

    fn store(&self, page: u64, value: u8) {
        // SAFETY: inside the mapping, and inside the file (no SIGBUS).
        unsafe { self.address(page).write_volatile(value) };
    }

    fn load(&self, page: u64) -> u8 {
        // SAFETY: as for store.
        unsafe { self.address(page).read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.base.cast(), self.len_pages as usize * PAGE) };
    }
}

struct Ctx<'a> {
    log: &'a Log,
    path: &'a Path,
    /// Whether get_user_pages writes are part of the workload.
    gup: bool,
    /// A file a renamed child stores to privately first: the fault shows a
    /// tracer its name before the rename.
    prime: &'a Path,
}

/// Renames the calling thread (the whole process when it is the only one).
fn set_name(name: &str) -> Result<()> {
    let name = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name that outlives the call.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        bail!("prctl(PR_SET_NAME): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A store to a private mapping of `path`: a write fault on a file
/// mapping, which a tracer sees with the process's current name.
fn private_store(path: &Path) -> Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let map = Mapping::new(&file, 0, 1, false)?;
    map.store(0, 1);
    Ok(())
}

/// mprotect of a whole mapping.
fn protect(map: &Mapping, prot: libc::c_int) -> Result<()> {
    // SAFETY: our own mapping, whole.
    if unsafe { libc::mprotect(map.base.cast(), map.len_pages as usize * PAGE, prot) } != 0 {
        bail!("mprotect: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Ctx<'_> {
    fn stored(&self, map: &Mapping, page: u64) -> Result<()> {
        let kind = if map.shared { "shared" } else { "private" };
        self.log.line(format!(
            "{kind} {} {}",
            self.path.display(),
            map.offset_pages + page
        ))
    }
}

fn run_file(rng: &mut Rng, log: &Log, path: &Path, gup: bool, prime: &Path) -> Result<()> {
    let max_pages = if rng.chance(30) { 600 } else { 64 };
    let size_pages = 1 + rng.below(max_pages);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if rng.chance(50) {
        // Filled by write(2): ext4 caches it in large folios.
        file.write_all_at(&vec![0x11; size_pages as usize * PAGE], 0)?;
        if rng.chance(50) {
            file.sync_all()?;
        }
    } else {
        file.set_len(size_pages * PAGE as u64)?;
    }
    log.line(format!("file {} {size_pages}", path.display()))?;
    let ctx = Ctx {
        log,
        path,
        gup,
        prime,
    };
    for _ in 0..1 + rng.below(3) {
        let offset_pages = if rng.chance(30) {
            rng.below(size_pages)
        } else {
            0
        };
        let len_pages = 1 + rng.below(size_pages - offset_pages);
        let shared = rng.chance(80);
        let mut map = Mapping::new(&file, offset_pages, len_pages, shared)?;
        for _ in 0..1 + rng.below(12) {
            operate(rng, &ctx, &file, &mut map)?;
        }
    }
    Ok(())
}

fn operate(rng: &mut Rng, ctx: &Ctx<'_>, file: &std::fs::File, map: &mut Mapping) -> Result<()> {
    let page = rng.below(map.len_pages);
    match rng.below(14) {
        0 | 1 => {
            map.store(page, rng.next() as u8);
            ctx.stored(map, page)?;
        }
        2 => {
            // Read first (fault-around may map neighbours), then store.
            let _ = map.load(page);
            let next = rng.below(map.len_pages);
            let _ = map.load(next);
            map.store(next, 1);
            ctx.stored(map, next)?;
        }
        3 => {
            // A run of stores.
            let count = 1 + rng.below(8).min(map.len_pages - page - 1);
            for p in page..page + count {
                map.store(p, 2);
                ctx.stored(map, p)?;
            }
        }
        4 => {
            // A child process stores; half of them rename themselves first,
            // right after a fault that showed a tracer the old name.
            let seed = rng.next();
            let name = rng.chance(50).then(|| format!("mwr{}", rng.below(100_000)));
            // SAFETY: the child only stores, logs and exits.
            match unsafe { libc::fork() } {
                0 => {
                    let mut child = Rng(seed);
                    let p = child.below(map.len_pages);
                    let renamed = || -> Result<()> {
                        if let Some(name) = &name {
                            private_store(ctx.prime)?;
                            set_name(name)?;
                        }
                        map.store(p, 3);
                        ctx.stored(map, p)?;
                        if let (Some(name), true) = (&name, map.shared) {
                            let path = ctx.path.display();
                            ctx.log
                                .line(format!("by-{name} {path} {}", map.offset_pages + p))?;
                            ctx.log
                                .line(format!("writer-{name} {path} {}", std::process::id()))?;
                        }
                        Ok(())
                    };
                    let code = i32::from(renamed().is_err());
                    // SAFETY: leave the child without running destructors.
                    unsafe { libc::_exit(code) };
                }
                -1 => bail!("fork: {}", std::io::Error::last_os_error()),
                pid => {
                    let mut status = 0;
                    // SAFETY: our child.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                        bail!("child {pid} failed (status {status})");
                    }
                }
            }
        }
        5 => {
            // A thread stores, half of them renamed right before.
            let p = rng.below(map.len_pages);
            let address = map.address(p) as usize;
            let name = rng.chance(50).then(|| format!("mwt{}", rng.below(100_000)));
            std::thread::scope(|scope| {
                scope
                    .spawn(|| -> Result<()> {
                        if let Some(name) = &name {
                            set_name(name)?;
                        }
                        // SAFETY: inside the mapping, which outlives the scope.
                        unsafe { (address as *mut u8).write_volatile(4) };
                        Ok(())
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("storing thread panicked"))?
            })?;
            ctx.stored(map, p)?;
        }
        11 => {
            // Read the whole mapping, then store to some pages: 2 MiB
            // folios are mapped read-only by one PMD each, and the first
            // store makes all their pages writable.
            let sum: u64 = (0..map.len_pages).map(|p| u64::from(map.load(p))).sum();
            std::hint::black_box(sum);
            for _ in 0..1 + rng.below(16) {
                let p = rng.below(map.len_pages);
                map.store(p, 10);
                ctx.stored(map, p)?;
            }
        }
        12 => {
            // Read-only, read, writable again (mprotect), then stores: on
            // tmpfs the pages mapped meanwhile become writable at once.
            protect(map, libc::PROT_READ)?;
            for _ in 0..1 + rng.below(8) {
                let _ = map.load(rng.below(map.len_pages));
            }
            protect(map, libc::PROT_READ | libc::PROT_WRITE)?;
            for _ in 0..1 + rng.below(4) {
                let p = rng.below(map.len_pages);
                map.store(p, 11);
                ctx.stored(map, p)?;
            }
        }
        6 => {
            // The kernel stores: read(2) of the file into the mapping.
            let mut buf_file = tempfile::tempfile()?;
            buf_file.write_all(&[5u8; 64])?;
            use std::os::fd::AsRawFd as _;
            // SAFETY: 64 bytes into the mapping's page, inside the file.
            let read =
                unsafe { libc::pread(buf_file.as_raw_fd(), map.address(page).cast(), 64, 0) };
            if read != 64 {
                bail!("pread into the mapping: {read}");
            }
            ctx.stored(map, page)?;
        }
        7 => {
            // msync (pages write-protected again) or MADV_DONTNEED
            // (unmapped: the next store is a fault on a missing page).
            let advice = if rng.chance(50) {
                libc::MADV_DONTNEED
            } else {
                0
            };
            // SAFETY: the whole mapping.
            unsafe {
                if advice == 0 {
                    libc::msync(
                        map.base.cast(),
                        map.len_pages as usize * PAGE,
                        libc::MS_SYNC,
                    );
                } else {
                    libc::madvise(map.base.cast(), map.len_pages as usize * PAGE, advice);
                }
            }
        }
        8 => {
            // Grow the mapping over what the file has past it, then store
            // to its new last page.
            let file_pages = file.metadata()?.len() / PAGE as u64;
            let room = file_pages.saturating_sub(map.offset_pages + map.len_pages);
            if room > 0 {
                map.grow(map.len_pages + 1 + rng.below(room))?;
                let last = map.len_pages - 1;
                map.store(last, 6);
                ctx.stored(map, last)?;
            }
        }
        9 if ctx.gup => {
            // The kernel stores for us through get_user_pages.
            gup_store(rng, map, page)?;
            ctx.stored(map, page)?;
        }
        _ => {
            // Grow the file (never shrink: a store past the end is SIGBUS).
            let len = file.metadata()?.len();
            file.set_len(len + PAGE as u64)?;
            let _ = map.load(page);
        }
    }
    Ok(())
}

/// MADV_POPULATE_WRITE (Linux 5.14), not in every libc crate version.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// One byte stored into `page` of the mapping by the kernel on our
/// behalf: a pwrite to /proc/self/mem, process_vm_writev to ourselves, or
/// MADV_POPULATE_WRITE (which maps the page writable) then a user store
/// that takes no fault.
fn gup_store(rng: &mut Rng, map: &Mapping, page: u64) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let address = map.address(page);
    match rng.below(3) {
        0 => {
            let mem = OpenOptions::new().write(true).open("/proc/self/mem")?;
            mem.write_all_at(&[7], address as u64)
                .context("pwrite /proc/self/mem")?;
        }
        1 => {
            let byte = [8u8];
            let local = libc::iovec {
                iov_base: byte.as_ptr() as *mut libc::c_void,
                iov_len: 1,
            };
            let remote = libc::iovec {
                iov_base: address.cast(),
                iov_len: 1,
            };
            // SAFETY: one byte from our buffer into our own mapping.
            let written =
                unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
            if written != 1 {
                bail!("process_vm_writev: {}", std::io::Error::last_os_error());
            }
        }
        _ => {
            let start = (address as usize) & !(PAGE - 1);
            // SAFETY: one page of our own mapping.
            if unsafe { libc::madvise(start as *mut libc::c_void, PAGE, MADV_POPULATE_WRITE) } != 0
            {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINVAL) {
                    bail!("MADV_POPULATE_WRITE: {err}");
                }
                // Before Linux 5.14: the same store through /proc/self/mem.
                let mem = OpenOptions::new().write(true).open("/proc/self/mem")?;
                mem.write_all_at(&[9], address as u64)
                    .context("pwrite /proc/self/mem")?;
                return Ok(());
            }
            map.store(page, 9);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (seed, ext4_dir, tmpfs_dir, log_path, xfs_dir) = match args.as_slice() {
        [_, seed, ext4, tmpfs, log] => (seed, ext4, tmpfs, log, None),
        [_, seed, ext4, tmpfs, log, xfs] => (seed, ext4, tmpfs, log, Some(xfs)),
        _ => bail!("usage: mw-random SEED EXT4_DIR TMPFS_DIR LOG [XFS_DIR]"),
    };
    let seed: u64 = seed.parse().context("SEED")?;
    let gup = std::env::var_os("MW_RANDOM_GUP").is_some_and(|v| v == "1");
    let log = Log(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .context("LOG")?,
    ));
    let prime = PathBuf::from(tmpfs_dir).join(format!("prime{seed}"));
    std::fs::write(&prime, [0u8; PAGE])?;
    let mut rng = Rng(seed);
    let files = 2 + rng.below(5);
    for index in 0..files {
        let roll = rng.below(100);
        let dir = match xfs_dir {
            Some(xfs) if roll < 30 => xfs,
            _ if roll < 65 => ext4_dir,
            _ => tmpfs_dir,
        };
        let path = PathBuf::from(dir).join(format!("f{seed}-{index}"));
        // Names the kernel must not confuse (a newline in one).
        let path = if rng.chance(10) {
            PathBuf::from(dir).join(std::ffi::OsStr::from_bytes(
                format!("n{seed}-{index}\nx").as_bytes(),
            ))
        } else {
            path
        };
        run_file(&mut rng, &log, &path, gup, &prime)?;
    }
    Ok(())
}
