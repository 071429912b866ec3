//! Naming files, all in one place and on bytes end to end: at first sight
//! from the kernel's dentry walk (joined to the mounts of our view, or of
//! the writer's namespace), from the writer's `/proc` while it lives when
//! the kernel's names are not whole, and at report time as the file is
//! now (by handle). The names' sources are in `model` (mountinfo and maps
//! parsing in `paths`, handles in `file_handle`); this is the one caller.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::model::{
    aggregate::Aggregate,
    events::{Event, EventBody, FileId, WalkEnd},
    file_handle::current_name,
    file_record::PathSource,
    paths::{mount_ns_of, proc_maps_path, MountTable},
};

/// Names files into the aggregate.
pub struct Namer {
    mounts: MountTable,
    proc_root: PathBuf,
    /// Our mount namespace: a writer's path in the same one is ours too.
    own_mount_ns: Option<u64>,
}

impl Namer {
    pub fn new() -> Self {
        Self {
            mounts: MountTable::read(),
            proc_root: PathBuf::from("/proc"),
            own_mount_ns: mount_ns_of(Path::new("/proc"), std::process::id()),
        }
    }

    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    /// A file the kernel announced (`FileSeen`, already applied): its path
    /// from the kernel's names, its mount namespace, and, unless the
    /// kernel named it whole in our own view, its writer's /proc name.
    pub fn name_announced(&mut self, aggregate: &mut Aggregate, event: &Event) {
        let EventBody::FileSeen {
            components,
            walk,
            through_overlay,
            mount_ns,
            ..
        } = &event.body
        else {
            return;
        };
        let file = event.file;
        let tgid = event.task.tgid;
        // A mount made after start-up: read the table again.
        if self.mounts.fs_type(file).is_none() {
            self.mounts = MountTable::read();
        }
        // Not mounted in our view and not named whole by the kernel: a
        // mount of the writer's namespace (a container's tmpfs), named
        // as the writer sees it while it lives.
        let writers_mounts = (*walk != WalkEnd::NamespaceRoot
            && self.mounts.fs_type(file).is_none())
        .then(|| MountTable::of_process(&self.proc_root, tgid))
        .flatten();
        let path = writers_mounts
            .as_ref()
            .unwrap_or(&self.mounts)
            .dentry_full_path(file, components, *walk);
        aggregate.set_path(file, path, PathSource::Dentry);
        if *through_overlay {
            aggregate.set_through_overlay(file);
        }
        // The kernel's number holds after the writer is gone.
        if let Some(mount_ns) = mount_ns.or_else(|| mount_ns_of(&self.proc_root, tgid)) {
            aggregate.set_mount_ns(file, mount_ns);
        }
        // The kernel named it whole, in the view we share with its
        // writer: /proc adds nothing, and reading the writer's maps takes
        // its mmap lock and ~10 syscalls, per new file. Renames and
        // unlinks since are seen when the report is made.
        let named_whole = *walk == WalkEnd::NamespaceRoot
            && !*through_overlay
            && mount_ns.is_some_and(|ns| Some(ns) == self.own_mount_ns);
        if !named_whole {
            self.name_from_proc(aggregate, file, tgid);
        }
    }

    /// The file's name in its writer's `/proc/PID/maps` (exact bytes, and
    /// whether it was deleted), while the writer lives.
    pub fn name_from_proc(&self, aggregate: &mut Aggregate, file: FileId, tgid: u32) {
        // Through overlayfs the kernel's walk gave the path the writer
        // opened; /proc may show the layer's file instead.
        if aggregate
            .file(&file)
            .is_some_and(|record| record.details().through_overlay)
        {
            return;
        }
        if let Some(mapped) = proc_maps_path(&self.proc_root, tgid, file) {
            aggregate.set_path(file, mapped.path, PathSource::ProcMaps);
            if mapped.deleted {
                aggregate.set_deleted(file);
            }
        }
    }

    /// Names these files as they are now (renamed, deleted, or as first
    /// seen), by handle through their mounts; each mount point is opened
    /// once, not once per file.
    pub fn name_now(&self, aggregate: &mut Aggregate, files: Vec<FileId>) {
        let mut opened: HashMap<PathBuf, Option<std::fs::File>> = HashMap::new();
        for file in files {
            let Some(record) = aggregate.file(&file) else {
                continue;
            };
            let mount = self.mounts.mount_of(file).and_then(|m| {
                opened
                    .entry(m.mount_point.clone())
                    .or_insert_with(|| std::fs::File::open(&m.mount_point).ok())
                    .as_ref()
            });
            if let Some(name) = current_name(file, record.fs_magic(), record.path.as_deref(), mount)
            {
                aggregate.set_current_name(file, name);
            }
        }
    }
}

impl Default for Namer {
    fn default() -> Self {
        Self::new()
    }
}
