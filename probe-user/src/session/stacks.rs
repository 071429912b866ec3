//! Call-site stacks (`--stacks`): a first write's stack id, read from the
//! kernel's stack map and symbolized (blazesym: ELF symbols, DWARF lines,
//! debug links, perf maps of JITs) while its writer lives, since addresses
//! mean something only in their process. Each (process, stack) once.

use std::{collections::HashMap, rc::Rc};

use aya::maps::{MapData, StackTraceMap};
use blazesym::{
    normalize::{Normalizer, UserMeta},
    symbolize::{
        source::{Process, Source},
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

pub struct StackResolver {
    map: StackTraceMap<MapData>,
    symbolizer: Symbolizer,
    normalizer: Normalizer,
    /// Addresses by stack id: the kernel never gives an id to another
    /// stack (no BPF_F_REUSE_STACKID), so each is read once.
    addresses: HashMap<u32, Rc<[u64]>>,
    resolved: HashMap<(u32, u32), Rc<Stack>>,
    pub call_sites: CallSites,
}

impl StackResolver {
    pub fn new(map: StackTraceMap<MapData>) -> Self {
        Self {
            map,
            symbolizer: Symbolizer::new(),
            normalizer: Normalizer::new(),
            addresses: HashMap::new(),
            resolved: HashMap::new(),
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
        let stack = match self.resolved.get(&(tgid, id)) {
            Some(stack) => Rc::clone(stack),
            None => {
                let stack = Rc::new(self.resolve(tgid, id));
                self.resolved.insert((tgid, id), Rc::clone(&stack));
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

    fn resolve(&mut self, tgid: u32, id: u32) -> Stack {
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
        let mut stack = symbolize(&self.symbolizer, tgid, &addresses);
        locate(&self.normalizer, tgid, &mut stack);
        stack
    }
}

/// The frames of `addresses` in process `tgid`. A return address is looked
/// up one byte back, inside the call it returns from (its line is the
/// call's, not the next statement's).
fn symbolize(symbolizer: &Symbolizer, tgid: u32, addresses: &[u64]) -> Stack {
    let lookups: Vec<u64> = addresses
        .iter()
        .enumerate()
        .map(|(index, &addr)| {
            if index == 0 {
                addr
            } else {
                addr.saturating_sub(1)
            }
        })
        .collect();
    let source = Source::Process(Process::new(Pid::from(tgid)));
    let symbolized = match symbolizer.symbolize(&source, Input::AbsAddr(&lookups)) {
        Ok(symbolized) => symbolized,
        Err(err) => {
            log::debug!("process {tgid}: {err}");
            return unresolved(addresses, format!("not symbolized: {err}"));
        }
    };
    let gone = || !std::path::Path::new(&format!("/proc/{tgid}")).exists();
    if symbolized
        .iter()
        .all(|s| matches!(s, Symbolized::Unknown(_)))
        && gone()
    {
        return unresolved(
            addresses,
            "the writer exited before its stack was read".into(),
        );
    }
    let frames: Vec<Frame> = addresses
        .iter()
        .zip(&symbolized)
        .map(|(&addr, symbolized)| match symbolized {
            Symbolized::Sym(sym) => Frame {
                addr,
                symbol: Some(sym.name.to_string()),
                object: sym
                    .module
                    .as_ref()
                    .map(|module| module.to_string_lossy().into_owned()),
                file: sym.code_info.as_ref().map(|info| match &info.dir {
                    Some(dir) => dir.join(&*info.file).to_string_lossy().into_owned(),
                    None => info.file.to_string_lossy().into_owned(),
                }),
                line: sym.code_info.as_ref().and_then(|info| info.line),
                ..Frame::default()
            },
            Symbolized::Unknown(_) => Frame {
                addr,
                ..Frame::default()
            },
        })
        .collect();
    let outermost = frames.last().and_then(|frame| frame.symbol.as_deref());
    let partial = frames.len() >= KERNEL_MAX_FRAMES || !reaches_a_root(outermost);
    Stack {
        frames,
        partial,
        unresolved: None,
    }
}

/// Frames of a writer whose stack could not be symbolized: addresses only.
fn unresolved(addresses: &[u64], why: String) -> Stack {
    Stack {
        frames: addresses
            .iter()
            .map(|&addr| Frame {
                addr,
                ..Frame::default()
            })
            .collect(),
        partial: true,
        unresolved: Some(why),
    }
}

/// Each frame's object, file offset and build id (blazesym's
/// normalization): a frame no symbol covers (a stripped library's static
/// function) is still told apart and can be symbolized elsewhere.
fn locate(normalizer: &Normalizer, tgid: u32, stack: &mut Stack) {
    let addresses: Vec<u64> = stack.frames.iter().map(|frame| frame.addr).collect();
    let Ok(output) = normalizer.normalize_user_addrs(Pid::from(tgid), &addresses) else {
        return;
    };
    for (frame, (offset, meta)) in stack.frames.iter_mut().zip(output.outputs) {
        if let Some(UserMeta::Elf(elf)) = output.meta.get(meta) {
            frame.object = Some(elf.path.to_string_lossy().into_owned());
            frame.offset = Some(offset);
            frame.build_id = elf
                .build_id
                .as_ref()
                .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect());
        }
    }
}
