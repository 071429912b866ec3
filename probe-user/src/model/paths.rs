//! File path resolution at first write.
//!
//! The best source is a writer's `/proc/<pid>/map_files`, read when the
//! file is first seen: the exact bytes of the name in the writer's view
//! (maps itself escapes newlines as `\012`). Writers that have already
//! exited leave only the dentry names the kernel sent; those are joined to
//! the file's mount point from `/proc/self/mountinfo`. The name at report
//! time comes from [`crate::model::file_handle`].
//!
//! Not the `procfs` crate: its maps and mountinfo parsers give names as
//! `String`s and paths after its own unescaping, while a name here must be
//! the exact bytes (not UTF-8, `\012`, ` (deleted)` suffixes) and a
//! map_files link is read by (start, end) of the mapping; mountinfo is read
//! for four fields only, with the kernel's octal escapes undone below.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::model::{
    aggregate::dentry_path,
    events::{FileId, WalkEnd},
    names::{path_from_bytes, NameBytes},
};

/// Undoes the octal escapes (`\040` for a space) of a mountinfo field,
/// keeping every other byte as it is (a mount point need not be UTF-8).
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let value = std::str::from_utf8(&field[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(value) = value {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    path_from_bytes(&out)
}

/// Whether a filesystem type writes pages back to storage (tmpfs and
/// other memory filesystems never do). Unknown types are assumed to.
pub fn fs_has_writeback(fs_type: Option<&str>) -> bool {
    !matches!(fs_type, Some("tmpfs" | "ramfs" | "hugetlbfs" | "devtmpfs"))
}

/// A filesystem's name from its superblock magic (statfs(2)'s f_type),
/// for files on a mount we cannot see (another mount namespace, or
/// unmounted since): the report always says which filesystem.
pub fn fs_name_of_magic(magic: u64) -> String {
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x9584_58f6 => "hugetlbfs",
        0x794C_7630 => "overlay",
        0xF2F5_2010 => "f2fs",
        0xCA45_1A4E => "bcachefs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x0000_4d44 => "vfat",
        0x2011_BAB0 => "exfat",
        0x7366_746E => "ntfs3",
        0x7371_7368 => "squashfs",
        0xE0F5_E1E2 => "erofs",
        0x00C3_6400 => "ceph",
        0xFF53_4D42 | 0xFE53_4D42 => "cifs",
        0x0102_1997 => "9p",
        0x6265_6572 => "sysfs",
        0x9FA0 => "proc",
        _ => return format!("unknown (magic {magic:#x})"),
    };
    name.to_string()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem mounted here (bind mounts: not `/`).
    pub root: PathBuf,
    /// The mount point's exact bytes.
    pub mount_point: PathBuf,
    pub fs_type: String,
}

#[derive(Clone, Debug, Default)]
pub struct MountTable {
    mounts: Vec<Mount>,
}

impl MountTable {
    /// The host's mounts: init's view (a container run with hostPID sees the
    /// host through /proc/1), else our own.
    pub fn read() -> Self {
        ["/proc/1/mountinfo", "/proc/self/mountinfo"]
            .iter()
            .find_map(|path| std::fs::read(path).ok())
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// The mounts process `tgid` sees (its mount namespace), if alive.
    pub fn of_process(proc_root: &Path, tgid: u32) -> Option<Self> {
        let text = std::fs::read(proc_root.join(tgid.to_string()).join("mountinfo"));
        text.ok().map(|text| Self::parse(&text))
    }

    /// Parses mountinfo as bytes (mount points are names, not text);
    /// malformed lines are skipped, never the table.
    pub fn parse(text: &[u8]) -> Self {
        let mounts = text
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let mut fields = line.split(|&b| b == b' ');
                let _id = fields.next()?;
                let _parent = fields.next()?;
                let devices = std::str::from_utf8(fields.next()?).ok()?;
                let (major, minor) = devices.split_once(':')?;
                let root = unescape(fields.next()?);
                let mount_point = unescape(fields.next()?);
                // Optional fields end at " - ", then the filesystem type.
                let fs_type = fields
                    .skip_while(|f| *f != b"-")
                    .nth(1)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .unwrap_or_default();
                Some(Mount {
                    major: major.parse().ok()?,
                    minor: minor.parse().ok()?,
                    root,
                    mount_point,
                    fs_type,
                })
            })
            .collect();
        Self { mounts }
    }

    /// Mounts of a device (the kernel's `dev_t` encoding, as in [`FileId`]).
    fn on_device(&self, dev: u32) -> impl Iterator<Item = &Mount> {
        let (major, minor) = (dev >> 20, dev & 0xfffff);
        self.mounts
            .iter()
            .filter(move |m| m.major == major && m.minor == minor)
    }

    /// The filesystem type of the file's device, if mounted.
    pub fn fs_type(&self, file: FileId) -> Option<&str> {
        self.fs_type_of_device(file.dev)
    }

    pub fn fs_type_of_device(&self, dev: u32) -> Option<&str> {
        self.mount_of_device(dev).map(|m| m.fs_type.as_str())
    }

    /// The mount of the file's device, preferring one of its whole filesystem.
    pub fn mount_of(&self, file: FileId) -> Option<&Mount> {
        self.mount_of_device(file.dev)
    }

    pub fn mount_of_device(&self, dev: u32) -> Option<&Mount> {
        self.on_device(dev)
            .find(|m| m.root == Path::new("/"))
            .or_else(|| self.on_device(dev).next())
    }

    /// Where a filesystem of this type is mounted (e.g. cgroup2).
    pub fn mount_point_of_type(&self, fs_type: &str) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|m| m.fs_type == fs_type)
            .map(|m| m.mount_point.as_path())
    }

    /// Full path of a file from its dentry names (leaf first): whole when
    /// the kernel walked up to its writer's namespace root, else through a
    /// mount of its filesystem that exposes it.
    pub fn dentry_full_path(
        &self,
        file: FileId,
        components: &[NameBytes],
        walk: WalkEnd,
    ) -> PathBuf {
        match walk {
            WalkEnd::Cut => return dentry_path(components, false, None),
            WalkEnd::NamespaceRoot => return dentry_path(components, true, None),
            WalkEnd::FsRoot => {}
        }
        let in_fs = dentry_path(components, true, None);
        // Prefer a mount of the whole filesystem, then a bind mount whose
        // root contains the file.
        let whole = self.on_device(file.dev).find(|m| m.root == Path::new("/"));
        if let Some(mount) = whole {
            return dentry_path(components, true, Some(&mount.mount_point));
        }
        for mount in self.on_device(file.dev) {
            if let Ok(rest) = in_fs.strip_prefix(&mount.root) {
                return mount.mount_point.join(rest);
            }
        }
        in_fs
    }
}

/// The address range (`start-end`, as `/proc/<pid>/map_files` names it)
/// of a mapping of `file` in the text of a `/proc/<pid>/maps`.
pub fn range_in_maps(maps: &[u8], file: FileId) -> Option<String> {
    let wanted_dev = format!("{:02x}:{:02x}", file.major(), file.minor());
    let wanted_ino = file.ino.to_string();
    maps.split(|&b| b == b'\n').find_map(|line| {
        // address perms offset dev inode pathname; the first five are ASCII.
        let mut fields = line
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty())
            .take(5)
            .map(|f| std::str::from_utf8(f).ok());
        let range = fields.next()??;
        let (_perms, _offset) = (fields.next()??, fields.next()??);
        let (dev, ino) = (fields.next()??, fields.next()??);
        // Inode 0 is an anonymous mapping, never a file.
        (dev == wanted_dev && ino == wanted_ino && ino != "0").then(|| range.to_string())
    })
}

/// The mount namespace of process `tgid`: the inode number in the
/// `mnt:[N]` link of /proc/PID/ns/mnt.
pub fn mount_ns_of(proc_root: &Path, tgid: u32) -> Option<u64> {
    let link = std::fs::read_link(proc_root.join(tgid.to_string()).join("ns/mnt")).ok()?;
    parse_ns_link(link.to_str()?)
}

fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// A writer's name for a file it maps now, and whether its last link is
/// gone (readlink then ends in " (deleted)", which is not part of it).
pub struct MappedName {
    pub path: PathBuf,
    pub deleted: bool,
}

/// The name of `file` as process `tgid` maps it, if it is alive and maps
/// it: exact bytes, from `/proc/<pid>/map_files/<range>`.
pub fn proc_maps_path(proc_root: &Path, tgid: u32, file: FileId) -> Option<MappedName> {
    let process = proc_root.join(tgid.to_string());
    let maps = std::fs::read(process.join("maps")).ok()?;
    let link = process.join("map_files").join(range_in_maps(&maps, file)?);
    let path = std::fs::read_link(&link).ok()?;
    // Followed to the mapped file itself: this inode number may already
    // be another file's (unlinked, then reused by the same writer).
    let meta = crate::model::file_handle::leads_to(&link, file)?;
    let deleted = meta.nlink() == 0;
    let path = if deleted {
        strip_deleted_suffix(path)
    } else {
        path
    };
    path.is_absolute().then_some(MappedName { path, deleted })
}

/// d_path's " (deleted)" mark, removed from an unlinked file's name.
fn strip_deleted_suffix(path: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(name) => path_from_bytes(name),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt as _;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:25 / /dev/shm rw,nosuid,nodev shared:5 - tmpfs tmpfs rw
41 22 7:0 / /mnt/with\\040space rw,relatime - ext4 /dev/loop0 rw
42 22 7:1 /exported /srv/bind rw,relatime - xfs /dev/loop1 rw
garbage line
";

    #[test]
    fn parses_mountinfo_with_escapes_and_fs_types() {
        let table = MountTable::parse(MOUNTINFO.as_bytes());
        assert_eq!(table.mounts.len(), 4);
        assert_eq!(table.mounts[2].mount_point, Path::new("/mnt/with space"));
        assert_eq!(
            table.fs_type(FileId {
                dev: 25,
                ino: 1,
                generation: 0
            }),
            Some("tmpfs")
        );
        assert_eq!(
            table.fs_type(FileId {
                dev: (7 << 20) | 1,
                ino: 1,
                generation: 0
            }),
            Some("xfs")
        );
    }

    /// One mount point that is not UTF-8 (a byte a user chose, escaped or
    /// raw) keeps its exact bytes and leaves the other mounts as they are.
    #[test]
    fn a_mount_point_that_is_not_utf8_is_kept_byte_for_byte() {
        let mut text = MOUNTINFO.as_bytes().to_vec();
        text.extend_from_slice(b"43 22 7:2 / /mnt/caf\\351 rw - ext4 /dev/loop2 rw\n");
        text.extend_from_slice(b"44 22 7:3 / /mnt/raw\xff\x01 rw - xfs /dev/loop3 rw\n");
        let table = MountTable::parse(&text);
        assert_eq!(table.mounts.len(), 6);
        let bytes = |m: &Mount| m.mount_point.as_os_str().as_bytes().to_vec();
        assert_eq!(bytes(&table.mounts[4]), b"/mnt/caf\xe9");
        assert_eq!(bytes(&table.mounts[5]), b"/mnt/raw\xff\x01");
        assert_eq!(table.mounts[5].fs_type, "xfs");
        let file = FileId {
            dev: (7 << 20) | 2,
            ino: 5,
            generation: 0,
        };
        let path = table.dentry_full_path(file, &[NameBytes::from("f")], WalkEnd::FsRoot);
        assert_eq!(path.as_os_str().as_bytes(), b"/mnt/caf\xe9/f");
    }

    #[test]
    fn joins_dentry_names_to_mount_points() {
        let table = MountTable::parse(MOUNTINFO.as_bytes());
        let comps = |v: &[&str]| v.iter().map(|s| NameBytes::from(*s)).collect::<Vec<_>>();
        let loop0 = FileId {
            dev: 7 << 20,
            ino: 3,
            generation: 0,
        };
        assert_eq!(
            table.dentry_full_path(loop0, &comps(&["f", "d"]), WalkEnd::FsRoot),
            Path::new("/mnt/with space/d/f")
        );
        let shm = FileId {
            dev: 25,
            ino: 3,
            generation: 0,
        };
        assert_eq!(
            table.dentry_full_path(shm, &comps(&["seg"]), WalkEnd::FsRoot),
            Path::new("/dev/shm/seg")
        );
        // Bind mount of a subdirectory.
        let loop1 = FileId {
            dev: (7 << 20) | 1,
            ino: 3,
            generation: 0,
        };
        assert_eq!(
            table.dentry_full_path(loop1, &comps(&["f", "exported"]), WalkEnd::FsRoot),
            Path::new("/srv/bind/f")
        );
        // Unknown device: the path within its filesystem.
        let unknown = FileId {
            dev: 99 << 20,
            ino: 3,
            generation: 0,
        };
        assert_eq!(
            table.dentry_full_path(unknown, &comps(&["f"]), WalkEnd::FsRoot),
            Path::new("/f")
        );
        assert_eq!(
            table.dentry_full_path(loop0, &comps(&["f", "d"]), WalkEnd::Cut),
            Path::new("…/d/f")
        );
        // Walked by the kernel across mounts to the writer's namespace
        // root: whole as it is, whatever our own mounts say.
        assert_eq!(
            table.dentry_full_path(loop0, &comps(&["f", "data"]), WalkEnd::NamespaceRoot),
            Path::new("/data/f")
        );
    }

    #[test]
    fn finds_mapping_ranges_in_maps_by_dev_and_inode() {
        let maps = b"\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/cat
7f00aa000000-7f00aa004000 rw-s 00002000 07:00 77 /mnt/data/file with space.db
7f00ab000000-7f00ab001000 rw-s 00000000 00:19 5 /dev/shm/seg\xff (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        let file = |dev, ino| FileId {
            dev,
            ino,
            generation: 0,
        };
        assert_eq!(
            range_in_maps(maps, file(7 << 20, 77)).as_deref(),
            Some("7f00aa000000-7f00aa004000")
        );
        assert_eq!(
            range_in_maps(maps, file(25, 5)).as_deref(),
            Some("7f00ab000000-7f00ab001000")
        );
        assert_eq!(range_in_maps(maps, file(7 << 20, 78)), None);
        assert_eq!(range_in_maps(maps, file(0, 0)), None);
    }

    #[test]
    fn mount_namespaces_are_read_from_ns_links() {
        assert_eq!(parse_ns_link("mnt:[4026531841]"), Some(4_026_531_841));
        assert_eq!(parse_ns_link("net:[4026531840]"), None);
        assert_eq!(parse_ns_link("mnt:[x]"), None);
    }

    #[test]
    fn filesystems_are_named_by_magic_and_never_blank() {
        assert_eq!(fs_name_of_magic(0xEF53), "ext4");
        assert_eq!(fs_name_of_magic(0x0102_1994), "tmpfs");
        assert_eq!(fs_name_of_magic(0x1234), "unknown (magic 0x1234)");
    }

    #[test]
    fn the_deleted_mark_is_not_part_of_the_name() {
        assert_eq!(
            strip_deleted_suffix(PathBuf::from("/dev/shm/seg (deleted)")),
            PathBuf::from("/dev/shm/seg")
        );
        assert_eq!(
            strip_deleted_suffix(PathBuf::from("/dev/shm/seg")),
            PathBuf::from("/dev/shm/seg")
        );
    }
}
