//! A file's name now, from its identity alone: open_by_handle_at(2).
//!
//! Linkers write through a mapping into a temporary name and rename it;
//! writers exit before the report. The kernel opens a file from its
//! export handle — which for the filesystems below is just (inode number,
//! generation), both known from the probes — and /proc/self/fd then
//! names it as it is now. No crate wraps these handles (their layout is
//! each filesystem's own), so they are built here from the kernel's
//! encoders: ext4 and xfs `FILEID_INO32_GEN` {ino, gen}, xfs 64-bit
//! {ino64, gen}, tmpfs {gen, ino_lo, ino_hi}.

use std::{
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use probe_common::TMPFS_MAGIC;

use crate::model::{events::FileId, file_record::CurrentName};

const EXT4_SUPER_MAGIC: u64 = 0xEF53;
const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
/// `FILEID_INO32_GEN` (include/linux/exportfs.h).
const FILEID_INO32_GEN: i32 = 1;
/// xfs: `XFS_FILEID_TYPE_64FLAG | FILEID_INO32_GEN`.
const XFS_FILEID_INO64_GEN: i32 = 0x81;

/// `struct file_handle` with room for the handles built here.
#[repr(C)]
struct Handle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 16],
}

impl Handle {
    fn new(handle_type: i32, words: &[u32]) -> Self {
        let mut handle = Self {
            handle_bytes: (words.len() * 4) as u32,
            handle_type,
            f_handle: [0; 16],
        };
        for (slot, word) in handle.f_handle.chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&word.to_ne_bytes());
        }
        handle
    }

    /// The handle the filesystem with this magic gives the file, if known.
    fn for_file(fs_magic: u64, file: FileId) -> Option<Self> {
        let generation = file.generation;
        let (low, high) = (file.ino as u32, (file.ino >> 32) as u32);
        match fs_magic {
            EXT4_SUPER_MAGIC if high == 0 => Some(Self::new(FILEID_INO32_GEN, &[low, generation])),
            XFS_SUPER_MAGIC if high == 0 => Some(Self::new(FILEID_INO32_GEN, &[low, generation])),
            XFS_SUPER_MAGIC => Some(Self::new(XFS_FILEID_INO64_GEN, &[low, high, generation])),
            TMPFS_MAGIC => Some(Self::new(FILEID_INO32_GEN, &[generation, low, high])),
            _ => None,
        }
    }
}

/// Whether `path` leads to `file` itself, with its metadata: the device
/// and inode number (stat) and, where the filesystem's handle carries it
/// (ext4, xfs, tmpfs), the generation too, so a file that reused the
/// inode number of a deleted one is not taken for it. Symlinks, and
/// /proc's magic links, are followed.
pub fn leads_to(path: &Path, file: FileId) -> Option<std::fs::Metadata> {
    leads_to_on(path, file, None)
}

/// [`leads_to`], the filesystem's magic known already (one statfs fewer).
pub fn leads_to_on(path: &Path, file: FileId, fs_magic: Option<u64>) -> Option<std::fs::Metadata> {
    let meta = std::fs::metadata(path).ok()?;
    if !file.is_stat_of(meta.dev(), meta.ino()) {
        return None;
    }
    match generation_matches(path, file, fs_magic) {
        Some(false) => None,
        // Same generation, or a filesystem whose handle we cannot build.
        _ => Some(meta),
    }
}

/// Compares the handle the filesystem gives `path` with the one `file`
/// (inode number and generation) would have; None when it cannot tell.
fn generation_matches(path: &Path, file: FileId, fs_magic: Option<u64>) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let fs_magic = match fs_magic {
        Some(magic) => magic,
        None => {
            // SAFETY: an all-zero statfs is a valid value to be filled in.
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: a NUL-terminated path and a statfs to write into.
            if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
                return None;
            }
            fs.f_type as u64
        }
    };
    let expected = Handle::for_file(fs_magic, file)?;
    let mut found = Handle::new(0, &[0; 4]);
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `found` is a `struct file_handle` whose header gives the
    // room (16 bytes) the kernel may fill; it writes no further.
    let named = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            (&raw mut found).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if named != 0 {
        return None;
    }
    let length = (found.handle_bytes as usize).min(found.f_handle.len());
    Some(
        found.handle_type == expected.handle_type
            && found.handle_bytes == expected.handle_bytes
            && found.f_handle[..length] == expected.f_handle[..length],
    )
}

/// What a file, known by identity and first named `recorded`, is called
/// now. `None` when it cannot be told (an unsupported filesystem, no
/// mount of it here, no CAP_DAC_READ_SEARCH): the recorded name stands.
/// `mount` is its filesystem's mount point, opened (once for all the
/// files of a report).
pub fn current_name(
    file: FileId,
    fs_magic: Option<u64>,
    recorded: Option<&Path>,
    mount: Option<&std::fs::File>,
) -> Option<CurrentName> {
    // The recorded name still leads to this file.
    let recorded_is_current = || {
        let path = recorded?;
        let meta = leads_to_on(path, file, fs_magic)?;
        (meta.nlink() > 0).then(|| CurrentName::Linked(path.to_path_buf()))
    };
    // Most files still have the name they were written under: two
    // syscalls, and no handle to open.
    if let Some(name) = recorded_is_current() {
        return Some(name);
    }
    let opened = match open_by_identity(file, fs_magic, mount)? {
        Ok(opened) => opened,
        // tmpfs finds an inode by handle only once a handle of it was
        // made (name_to_handle_at hashes it): ESTALE there may be a live
        // file, which its recorded name tells (gone from there, it is
        // unknown, not deleted). Elsewhere: no inode of that number and
        // generation any more.
        Err(err) if err.raw_os_error() == Some(libc::ESTALE) => {
            if fs_magic == Some(TMPFS_MAGIC) {
                return None;
            }
            return Some(CurrentName::Deleted);
        }
        Err(_) => return None,
    };
    let meta = std::fs::File::from(opened.try_clone().ok()?)
        .metadata()
        .ok()?;
    if meta.nlink() == 0 {
        return Some(CurrentName::Deleted);
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).ok()?;
    // A name outside our root (another mount namespace's tree) does not
    // start with "/": it is no name here.
    link.is_absolute().then_some(CurrentName::Linked(link))
}

/// The file opened read-only for a look at its page cache: by its name
/// when that still leads to it, else by its handle (renamed or deleted).
pub fn open_for_reading(
    file: FileId,
    fs_magic: Option<u64>,
    path: Option<&Path>,
    mount_point: Option<&Path>,
) -> std::io::Result<std::fs::File> {
    if let Some(path) = path.filter(|path| leads_to(path, file).is_some()) {
        if let Ok(opened) = std::fs::File::open(path) {
            let meta = opened.metadata()?;
            if file.is_stat_of(meta.dev(), meta.ino()) {
                return Ok(opened);
            }
        }
    }
    let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
    let mount = mount_point.and_then(|mount| std::fs::File::open(mount).ok());
    let by_handle = open_by_identity(file, fs_magic, mount.as_ref()).ok_or_else(not_found)??;
    // An O_PATH descriptor reads nothing; its /proc link opens the inode
    // itself, deleted or not.
    std::fs::File::open(format!("/proc/self/fd/{}", by_handle.as_raw_fd()))
}

/// The file opened (O_PATH) from its handle; `None` when this filesystem
/// has no handle we can build or is not mounted here.
fn open_by_identity(
    file: FileId,
    fs_magic: Option<u64>,
    mount: Option<&std::fs::File>,
) -> Option<std::io::Result<OwnedFd>> {
    let handle = Handle::for_file(fs_magic?, file)?;
    Some(open_handle(mount?, handle))
}

/// open_by_handle_at(2), O_PATH, on the filesystem `mount` is on.
fn open_handle(mount: &std::fs::File, mut handle: Handle) -> std::io::Result<OwnedFd> {
    // SAFETY: `handle` is a `struct file_handle` whose header says how
    // many of its bytes follow; the kernel reads no further.
    let raw = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `FILEID_KERNFS`: cgroupfs's handle is the kernfs node id, which is
/// the cgroup id BPF programs see.
const FILEID_KERNFS: i32 = 0xfe;

/// A cgroup's path under the cgroup2 mount `root` ("/system.slice/x"),
/// from its id alone: two syscalls where a walk of the hierarchy reads
/// every directory. None when it cannot be opened (gone, or no
/// CAP_DAC_READ_SEARCH).
pub fn cgroup_path(root: &Path, id: u64) -> Option<String> {
    let handle = Handle::new(FILEID_KERNFS, &[id as u32, (id >> 32) as u32]);
    let mount = std::fs::File::open(root).ok()?;
    let opened = open_handle(&mount, handle).ok()?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).ok()?;
    let relative = link.strip_prefix(root).ok()?;
    Some(format!("/{}", relative.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup made for the test is found by its id (its directory's
    /// inode number), as the exporter's labels find writers' cgroups.
    #[test]
    fn a_cgroup_is_named_by_its_id() {
        assert_eq!(rustix::process::geteuid().as_raw(), 0, "run as root");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| std::path::PathBuf::from(f[1]))
            .expect("a cgroup2 mount");
        let name = format!("mmapwatch-test-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let found = cgroup_path(&root, id);
        let gone = {
            std::fs::remove_dir(&dir).unwrap();
            cgroup_path(&root, id)
        };
        assert_eq!(found.as_deref(), Some(format!("/{name}").as_str()));
        assert_eq!(gone, None, "a removed cgroup has no name");
        assert_eq!(cgroup_path(&root, 1).as_deref(), Some("/"), "the root");
    }

    #[test]
    fn handles_follow_each_filesystem_s_encoder() {
        let file = FileId {
            dev: 1,
            ino: 0x1_0000_0002,
            generation: 7,
        };
        let small = FileId { ino: 12, ..file };
        let ext4 = Handle::for_file(EXT4_SUPER_MAGIC, small).unwrap();
        assert_eq!((ext4.handle_type, ext4.handle_bytes), (1, 8));
        assert_eq!(&ext4.f_handle[..8], &[12, 0, 0, 0, 7, 0, 0, 0]);
        // ext4 numbers never exceed 32 bits: no handle for a bigger one.
        assert!(Handle::for_file(EXT4_SUPER_MAGIC, file).is_none());
        let xfs = Handle::for_file(XFS_SUPER_MAGIC, file).unwrap();
        assert_eq!((xfs.handle_type, xfs.handle_bytes), (0x81, 12));
        assert_eq!(&xfs.f_handle[..12], &[2, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0]);
        let tmpfs = Handle::for_file(TMPFS_MAGIC, file).unwrap();
        assert_eq!((tmpfs.handle_type, tmpfs.handle_bytes), (1, 12));
        assert_eq!(&tmpfs.f_handle[..12], &[7, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert!(Handle::for_file(0x9123_683E, file).is_none(), "btrfs");
    }

    /// A file on the workspace's filesystem (ext4 here and in CI) with its
    /// generation from FS_IOC_GETVERSION: the right generation leads to
    /// it, another one (an inode number reused) does not.
    #[test]
    fn a_path_leads_to_its_file_only_with_the_file_s_generation() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let scratch = dir.join(format!("leads-to-{}", std::process::id()));
        let opened = std::fs::File::create(&scratch).unwrap();
        let meta = opened.metadata().unwrap();
        /// `_IOR('v', 1, long)`.
        const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
        let mut generation: libc::c_long = 0;
        // SAFETY: an open file and a long for the kernel to fill.
        let got = unsafe { libc::ioctl(opened.as_raw_fd(), FS_IOC_GETVERSION, &mut generation) };
        let dev = (libc::major(meta.dev()) << 20) | libc::minor(meta.dev());
        let file = FileId {
            dev,
            ino: meta.ino(),
            generation: generation as u32,
        };
        let ours = leads_to(&scratch, file).is_some();
        let reused = FileId {
            generation: file.generation.wrapping_add(1),
            ..file
        };
        let other = leads_to(&scratch, reused).is_some();
        let _ = std::fs::remove_file(&scratch);
        assert_eq!(got, 0, "FS_IOC_GETVERSION on the workspace's filesystem");
        assert!(ours);
        assert!(!other, "another generation is another file");
    }
}
