//! Files mmapwatch writes while it runs as root on a shared host.
//!
//! Two kinds, two rules:
//! - A name the user gave (`-o`, `-e`, `--record`, `--cmd-output`) keeps
//!   the shell's `>` semantics (created, or truncated), but a symbolic link
//!   there is followed only if root or the invoking user owns it, and a
//!   file (of any type) that another user owns in a world-writable sticky
//!   directory such as /tmp is refused, as the kernel's `protected_regular`
//!   and `protected_fifos` would refuse it. So a FIFO or device is written
//!   only when it is what the user named: directly, or through a link
//!   root owns (`/dev/stderr`). Nothing is truncated before these checks.
//! - A name mmapwatch picks itself (CMD's output under `top`) is a new
//!   file with a random name, created with `O_EXCL` and mode 0600
//!   (`tempfile`): nothing planted at any name is ever opened.

use std::{
    fs::{File, Metadata, OpenOptions},
    io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Why a named output was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputRefused {
    #[error("{0} is a symbolic link owned by uid {1}: mmapwatch follows only links that root or you own")]
    ForeignLink(PathBuf, u32),
    #[error("{0} belongs to uid {1} in a shared sticky directory: not opened (remove it or name another file)")]
    ForeignFile(PathBuf, u32),
    #[error("{0} is a directory")]
    Directory(PathBuf),
    #[error("{}: {error}", .path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// Opens a file the user named for writing, with the rules above.
pub fn open_named(path: &Path) -> Result<File, OutputRefused> {
    let io_error = |error| OutputRefused::Io {
        path: path.to_path_buf(),
        error,
    };
    let existing = match std::fs::symlink_metadata(path) {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_error(err)),
    };
    let follow = match &existing {
        Some(meta) if meta.file_type().is_symlink() => {
            if !trusted_owner(meta.uid()) {
                return Err(OutputRefused::ForeignLink(path.to_path_buf(), meta.uid()));
            }
            true
        }
        Some(meta) => {
            refuse_foreign_in_sticky_dir(path, meta)?;
            false
        }
        None => false,
    };
    // Non-blocking first: a FIFO that appeared since the check (another
    // user's, in a shared directory) must not hang us before fstat.
    let mut flags = libc::O_NOCTTY | libc::O_NONBLOCK;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let open = |flags| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(flags)
            .mode(0o666)
            .open(path)
    };
    let file = match open(flags) {
        Ok(file) => file,
        // A FIFO with no reader yet: checked like any file, then opened
        // blocking, as the shell would.
        Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
            let meta = std::fs::symlink_metadata(path).map_err(io_error)?;
            if !follow {
                refuse_foreign_in_sticky_dir(path, &meta)?;
            }
            open(flags & !libc::O_NONBLOCK).map_err(io_error)?
        }
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            // A link planted since the check.
            let owner = std::fs::symlink_metadata(path).map_or(u32::MAX, |m| m.uid());
            return Err(OutputRefused::ForeignLink(path.to_path_buf(), owner));
        }
        Err(err) if err.raw_os_error() == Some(libc::EISDIR) => {
            return Err(OutputRefused::Directory(path.to_path_buf()))
        }
        Err(err) => return Err(io_error(err)),
    };
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_dir() {
        return Err(OutputRefused::Directory(path.to_path_buf()));
    }
    if !follow {
        refuse_foreign_in_sticky_dir(path, &meta)?;
    }
    clear_nonblocking(&file).map_err(io_error)?;
    if meta.file_type().is_file() {
        // The shell's `>`: only now, after every check.
        file.set_len(0).map_err(io_error)?;
    }
    Ok(file)
}

/// Root's own links and those of the user who ran mmapwatch (sudo's
/// SUDO_UID is not trusted: anyone can set it).
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: getuid cannot fail and touches no memory.
    uid == 0 || uid == unsafe { libc::getuid() }
}

/// The kernel's `protected_regular=2` rule, whatever the sysctl says: in a
/// world-writable sticky directory, a file owned neither by us nor by the
/// directory's owner is someone else's plant.
fn refuse_foreign_in_sticky_dir(path: &Path, meta: &Metadata) -> Result<(), OutputRefused> {
    if trusted_owner(meta.uid()) {
        return Ok(());
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = std::fs::metadata(parent).map_err(|error| OutputRefused::Io {
        path: parent.into(),
        error,
    })?;
    let shared_sticky = dir.mode() & 0o1002 == 0o1002;
    if shared_sticky && meta.uid() != dir.uid() {
        return Err(OutputRefused::ForeignFile(path.to_path_buf(), meta.uid()));
    }
    Ok(())
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new private file in the temporary directory, for output nobody
/// named: a random name, `O_EXCL`, mode 0600. Removed when dropped unless
/// [`PrivateLog::keep_if_written`] keeps it.
pub struct PrivateLog {
    file: tempfile::NamedTempFile,
}

impl PrivateLog {
    pub fn create(prefix: &str) -> io::Result<Self> {
        let file = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".log")
            .tempfile_in(std::env::temp_dir())?;
        Ok(Self { file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A second handle on the file, for a child's stdout and stderr.
    pub fn handle(&self) -> io::Result<File> {
        self.file.as_file().try_clone()
    }

    /// Keeps the file if anything was written to it and returns its path;
    /// an empty one is removed.
    pub fn keep_if_written(self) -> Option<PathBuf> {
        let written = self.file.as_file().metadata().is_ok_and(|m| m.len() > 0);
        if !written {
            return None;
        }
        self.file.keep().ok().map(|(_, path)| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_named_file_is_created_then_truncated_like_the_shells_redirection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        open_named(&path).unwrap().write_all(b"first run").unwrap();
        open_named(&path).unwrap().write_all(b"2nd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"2nd");
    }

    #[test]
    fn a_link_of_our_own_is_followed_and_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        open_named(&link).unwrap().write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(matches!(
            open_named(dir.path()),
            Err(OutputRefused::Directory(_))
        ));
    }

    #[test]
    fn a_private_log_is_exclusive_private_and_removed_when_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let empty = PrivateLog::create("mmapwatch-test-").unwrap();
        let empty_path = empty.path().to_path_buf();
        let mode = std::fs::metadata(&empty_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(empty.keep_if_written(), None);
        assert!(!empty_path.exists());

        let written = PrivateLog::create("mmapwatch-test-").unwrap();
        written.handle().unwrap().write_all(b"CMD said").unwrap();
        let kept = written.keep_if_written().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"CMD said");
        std::fs::remove_file(kept).unwrap();
    }
}
