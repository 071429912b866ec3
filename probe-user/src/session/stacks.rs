//! Call-site stacks (`--stacks`): a first write's stack id, read from the
//! kernel's stack map and located while its writer lives (each address's
//! object, file offset and build id: blazesym's normalization, a read of
//! /proc/PID/maps), since addresses mean something only in their process.
//! The objects are held open, and symbolized (ELF symbols, DWARF lines,
//! debug links) only for the report: the reader never stalls on debug
//! information while other writers' records wait, nor loses a writer
//! that exits meanwhile. Each (process, stack) is located once.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use aya::maps::{MapData, StackTraceMap};
use blazesym::{
    normalize::{Normalizer, UserMeta},
    symbolize::{
        source::{Elf, Source},
        Input, Symbolized, Symbolizer,
    },
    Pid,
};

use crate::model::{
    call_sites::{reaches_a_root, CallSites, Frame, ProcessStack, Site, Stack},
    events::{Event, FileId},
};

/// Frames the kernel keeps of a stack (`PERF_MAX_STACK_DEPTH`): a walk
/// this long was cut, not ended.
const KERNEL_MAX_FRAMES: usize = 127;

/// An object file as frames name it: its path as the writer saw it and
/// its build id. One path can be two files (two containers' libc).
type ObjectKey = (String, Option<String>);

/// A frame's object, when it was located.
fn object_of(frame: &Frame) -> Option<ObjectKey> {
    Some((frame.object.clone()?, frame.build_id.clone()))
}

/// An object file some frame is in, held open so it can be symbolized
/// after its writer exits (a deleted or replaced library included).
struct HeldObject {
    /// Where to read it: its path when that is the same file here, else
    /// our descriptor (`/proc/self/fd/N`: a container's file, a deleted one).
    read_at: PathBuf,
    _file: File,
}

pub struct StackResolver {
    map: StackTraceMap<MapData>,
    normalizer: Normalizer,
    /// Addresses by stack id: the kernel never gives an id to another
    /// stack (no BPF_F_REUSE_STACKID), so each is read once.
    addresses: HashMap<u32, Rc<[u64]>>,
    located: HashMap<(u32, u32), Rc<Stack>>,
    objects: HashMap<ObjectKey, Rc<HeldObject>>,
    names: Names,
    pub call_sites: CallSites,
}

impl StackResolver {
    pub fn new(map: StackTraceMap<MapData>) -> Self {
        Self {
            map,
            normalizer: Normalizer::new(),
            addresses: HashMap::new(),
            located: HashMap::new(),
            objects: HashMap::new(),
            names: Names::default(),
            call_sites: CallSites::default(),
        }
    }

    /// Adds a decoded event's call site (see [`CallSites::observe`]),
    /// locating its stack the first time its process names it.
    pub fn observe(&mut self, event: &Event) {
        let stack = self.locate_stack_of(event);
        self.call_sites.observe(event, stack.as_ref());
    }

    /// The stack `event` names, located the first time its process names
    /// it (while the process lives).
    pub fn locate_stack_of(&mut self, event: &Event) -> Option<Rc<Stack>> {
        let id = event.stack_id?;
        let key = (event.task.tgid, id);
        if let Some(stack) = self.located.get(&key) {
            return Some(Rc::clone(stack));
        }
        let stack = Rc::new(self.locate(key.0, id));
        self.located.insert(key, Rc::clone(&stack));
        Some(stack)
    }

    /// `file`'s `limit` call sites with most pages, named (the
    /// dashboard's detail view).
    pub fn named_sites(&mut self, file: &FileId, limit: usize) -> Vec<Site> {
        let mut sites: Vec<Site> = self
            .call_sites
            .of(file)
            .into_iter()
            .take(limit)
            .cloned()
            .collect();
        let frames = sites
            .iter_mut()
            .flat_map(|site| site.stack.frames.iter_mut().enumerate());
        self.names.name(&self.objects, frames);
        for site in &mut sites {
            settle_partial(&mut site.stack);
        }
        sites
    }

    /// Every stack located, named: what a recording keeps of them.
    pub fn named_stacks(&mut self) -> Vec<ProcessStack> {
        let mut keys: Vec<(u32, u32)> = self.located.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|(pid, stack_id)| {
                let stack = self.named_stack(pid, stack_id)?;
                Some(ProcessStack {
                    pid,
                    stack_id,
                    stack,
                })
            })
            .collect()
    }

    /// Names every call site's frames, for the report.
    pub fn symbolize(&mut self) {
        let mut sites: Vec<&mut Stack> = self.call_sites.stacks_mut().collect();
        let frames = sites
            .iter_mut()
            .flat_map(|stack| stack.frames.iter_mut().enumerate());
        self.names.name(&self.objects, frames);
        for stack in sites {
            settle_partial(stack);
        }
    }

    /// Process `tgid`'s stack `id` as located when its record was read,
    /// named now (the event stream's `stack` lines).
    pub fn named_stack(&mut self, tgid: u32, id: u32) -> Option<Stack> {
        let mut stack = (**self.located.get(&(tgid, id))?).clone();
        self.names
            .name(&self.objects, stack.frames.iter_mut().enumerate());
        settle_partial(&mut stack);
        Some(stack)
    }

    /// The stack's frames located in process `tgid`: object, offset, build
    /// id, with the objects held open.
    fn locate(&mut self, tgid: u32, id: u32) -> Stack {
        let addresses = match self.addresses.get(&id) {
            Some(addresses) => Rc::clone(addresses),
            None => match self.map.get(&id, 0) {
                Ok(trace) => {
                    let addresses: Rc<[u64]> = trace.frames().iter().map(|f| f.ip).collect();
                    self.addresses.insert(id, Rc::clone(&addresses));
                    addresses
                }
                Err(err) => {
                    log::debug!("stack {id}: {err}");
                    return Stack::default();
                }
            },
        };
        let mut frames: Vec<Frame> = addresses
            .iter()
            .map(|&addr| Frame {
                addr,
                ..Frame::default()
            })
            .collect();
        let output = match self
            .normalizer
            .normalize_user_addrs(Pid::from(tgid), &addresses)
        {
            Ok(output) => output,
            Err(err) => {
                log::debug!("process {tgid}: {err}");
                return Stack {
                    frames,
                    partial: true,
                    unresolved: Some(why_not_located(tgid)),
                };
            }
        };
        for (frame, (offset, meta)) in frames.iter_mut().zip(output.outputs) {
            let Some(UserMeta::Elf(elf)) = output.meta.get(meta) else {
                continue;
            };
            let key: ObjectKey = (
                elf.path.to_string_lossy().into_owned(),
                elf.build_id
                    .as_ref()
                    .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect()),
            );
            if !self.objects.contains_key(&key) {
                match hold(tgid, &elf.path) {
                    Some(held) => {
                        self.objects.insert(key.clone(), Rc::new(held));
                    }
                    None => continue,
                }
            }
            let (path, build_id) = key;
            frame.object = Some(path);
            frame.offset = Some(offset);
            frame.build_id = build_id;
        }
        let located = frames.iter().any(|frame| frame.object.is_some());
        Stack {
            frames,
            // Known once symbolized.
            partial: true,
            unresolved: (!located).then(|| why_not_located(tgid)),
        }
    }
}

/// Why no frame of process `tgid` is in a file: it is gone (or exiting,
/// its mappings already torn down), or its code is in none (JIT).
fn why_not_located(tgid: u32) -> String {
    let maps = std::fs::read(format!("/proc/{tgid}/maps")).unwrap_or_default();
    if maps.is_empty() {
        "the writer exited before its stack was read".into()
    } else {
        "no frame is in a file the writer maps (JIT or anonymous code)".into()
    }
}

/// Opens the object at `path` as process `tgid` sees it (its root: a
/// container's file), to read it after the process is gone.
fn hold(tgid: u32, path: &Path) -> Option<HeldObject> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let theirs = Path::new("/proc")
        .join(tgid.to_string())
        .join("root")
        .join(relative);
    let file = File::open(&theirs).ok()?;
    let meta = file.metadata().ok()?;
    let same_here = std::fs::metadata(path)
        .is_ok_and(|here| here.dev() == meta.dev() && here.ino() == meta.ino());
    let read_at = if same_here {
        path.to_path_buf()
    } else {
        PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
    };
    Some(HeldObject {
        read_at,
        _file: file,
    })
}

/// Whether a named stack reached its thread's entry (see
/// [`reaches_a_root`]); a stack of a writer that could not be located
/// stays partial.
fn settle_partial(stack: &mut Stack) {
    if stack.unresolved.is_none() {
        let outermost = stack.frames.last().and_then(|f| f.symbol.as_deref());
        stack.partial = stack.frames.len() >= KERNEL_MAX_FRAMES || !reaches_a_root(outermost);
    }
}

/// What a code address is called: function, source file, line.
#[derive(Clone, Default)]
struct Name {
    symbol: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

/// Names of code addresses (object, offset looked up), each asked of
/// blazesym once; one call per object for the frames not named yet.
#[derive(Default)]
struct Names {
    symbolizer: Option<Symbolizer>,
    known: HashMap<(ObjectKey, u64), Name>,
}

impl Names {
    /// Names `frames` (index in their stack, frame).
    fn name<'a>(
        &mut self,
        objects: &HashMap<ObjectKey, Rc<HeldObject>>,
        frames: impl Iterator<Item = (usize, &'a mut Frame)>,
    ) {
        let mut frames: Vec<((ObjectKey, u64), &'a mut Frame)> = frames
            .filter_map(|(index, frame)| {
                let object = object_of(frame)?;
                let offset = frame.offset?;
                // A return address is looked up one byte back, inside the
                // call it returns from: its line is the call's.
                let lookup = if index == 0 {
                    offset
                } else {
                    offset.saturating_sub(1)
                };
                Some(((object, lookup), frame))
            })
            .collect();
        let mut wanted: HashMap<&ObjectKey, Vec<u64>> = HashMap::new();
        for ((object, lookup), _) in &frames {
            if !self.known.contains_key(&(object.clone(), *lookup)) {
                wanted.entry(object).or_default().push(*lookup);
            }
        }
        let symbolizer = self.symbolizer.get_or_insert_with(Symbolizer::new);
        for (object, mut offsets) in wanted {
            offsets.sort_unstable();
            offsets.dedup();
            let names = objects
                .get(object)
                .map(|held| symbolize(symbolizer, &object.0, &held.read_at, &offsets))
                .unwrap_or_else(|| vec![Name::default(); offsets.len()]);
            for (offset, name) in offsets.into_iter().zip(names) {
                self.known.insert((object.clone(), offset), name);
            }
        }
        for (key, frame) in &mut frames {
            if let Some(name) = self.known.get(key) {
                frame.symbol.clone_from(&name.symbol);
                frame.file.clone_from(&name.file);
                frame.line = name.line;
            }
        }
    }
}

/// The names of `offsets` in the object read at `read_at` (unnamed where
/// no symbol covers one, or the object cannot be read).
fn symbolize(symbolizer: &Symbolizer, object: &str, read_at: &Path, offsets: &[u64]) -> Vec<Name> {
    let source = Source::Elf(Elf::new(read_at));
    match symbolizer.symbolize(&source, Input::FileOffset(offsets)) {
        Ok(symbolized) => symbolized
            .iter()
            .map(|symbolized| match symbolized {
                Symbolized::Sym(sym) => Name {
                    symbol: Some(sym.name.to_string()),
                    file: sym.code_info.as_ref().map(|info| match &info.dir {
                        Some(dir) => dir.join(&*info.file).to_string_lossy().into_owned(),
                        None => info.file.to_string_lossy().into_owned(),
                    }),
                    line: sym.code_info.as_ref().and_then(|info| info.line),
                },
                Symbolized::Unknown(_) => Name::default(),
            })
            .collect(),
        Err(err) => {
            log::debug!("{object}: {err}");
            vec![Name::default(); offsets.len()]
        }
    }
}
