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
    call_sites::{reaches_a_root, CallSites, Frame, Stack},
    events::{Event, EventBody},
};

/// Frames the kernel keeps of a stack (`PERF_MAX_STACK_DEPTH`): a walk
/// this long was cut, not ended.
const KERNEL_MAX_FRAMES: usize = 127;

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
    /// Objects by the path the writer saw, and by (dev, ino).
    objects: HashMap<String, Rc<HeldObject>>,
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
            call_sites: CallSites::default(),
        }
    }

    /// Adds a decoded event's call site, if it is a write with a stack.
    pub fn observe(&mut self, event: &Event) {
        let pages = match event.body {
            EventBody::FirstWrite { .. } | EventBody::NewWriter { .. } => 1,
            EventBody::FolioSpan { pages, .. } | EventBody::PossibleWrite { pages, .. } => pages,
            _ => return,
        };
        let Some(id) = event.stack_id else {
            self.call_sites.without_stack += 1;
            return;
        };
        let tgid = event.task.tgid;
        let stack = match self.located.get(&(tgid, id)) {
            Some(stack) => Rc::clone(stack),
            None => {
                let stack = Rc::new(self.locate(tgid, id));
                self.located.insert((tgid, id), Rc::clone(&stack));
                stack
            }
        };
        if stack.frames.is_empty() {
            self.call_sites.without_stack += 1;
            return;
        }
        self.call_sites
            .add(event.file, &stack, (tgid, &event.task.comm), pages);
    }

    /// Names every call site's frames (for the report): one pass over each
    /// object's offsets.
    pub fn symbolize(&mut self) {
        let symbolizer = Symbolizer::new();
        let objects = &self.objects;
        let mut by_object: HashMap<String, Vec<(u64, &mut Frame)>> = HashMap::new();
        let mut stacks: Vec<&mut Stack> = self.call_sites.stacks_mut().collect();
        for stack in &mut stacks {
            for (index, frame) in stack.frames.iter_mut().enumerate() {
                let (Some(object), Some(offset)) = (frame.object.clone(), frame.offset) else {
                    continue;
                };
                // A return address is looked up one byte back, inside the
                // call it returns from: its line is the call's.
                let lookup = if index == 0 {
                    offset
                } else {
                    offset.saturating_sub(1)
                };
                by_object.entry(object).or_default().push((lookup, frame));
            }
        }
        for (object, frames) in by_object {
            let Some(held) = objects.get(&object) else {
                continue;
            };
            let offsets: Vec<u64> = frames.iter().map(|(offset, _)| *offset).collect();
            let source = Source::Elf(Elf::new(&held.read_at));
            let symbolized = match symbolizer.symbolize(&source, Input::FileOffset(&offsets)) {
                Ok(symbolized) => symbolized,
                Err(err) => {
                    log::debug!("{object}: {err}");
                    continue;
                }
            };
            for ((_, frame), symbolized) in frames.into_iter().zip(&symbolized) {
                if let Symbolized::Sym(sym) = symbolized {
                    frame.symbol = Some(sym.name.to_string());
                    frame.file = sym.code_info.as_ref().map(|info| match &info.dir {
                        Some(dir) => dir.join(&*info.file).to_string_lossy().into_owned(),
                        None => info.file.to_string_lossy().into_owned(),
                    });
                    frame.line = sym.code_info.as_ref().and_then(|info| info.line);
                }
            }
        }
        for stack in stacks {
            if stack.unresolved.is_none() {
                let outermost = stack.frames.last().and_then(|f| f.symbol.as_deref());
                stack.partial =
                    stack.frames.len() >= KERNEL_MAX_FRAMES || !reaches_a_root(outermost);
            }
        }
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
                    unresolved: Some(if Path::new(&format!("/proc/{tgid}")).exists() {
                        format!("not located: {err}")
                    } else {
                        "the writer exited before its stack was read".into()
                    }),
                };
            }
        };
        for (frame, (offset, meta)) in frames.iter_mut().zip(output.outputs) {
            let Some(UserMeta::Elf(elf)) = output.meta.get(meta) else {
                continue;
            };
            let path = elf.path.to_string_lossy().into_owned();
            if !self.objects.contains_key(&path) {
                match hold(tgid, &elf.path) {
                    Some(held) => {
                        self.objects.insert(path.clone(), Rc::new(held));
                    }
                    None => continue,
                }
            }
            frame.object = Some(path);
            frame.offset = Some(offset);
            frame.build_id = elf
                .build_id
                .as_ref()
                .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect());
        }
        Stack {
            frames,
            // Known once symbolized.
            partial: true,
            unresolved: None,
        }
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
