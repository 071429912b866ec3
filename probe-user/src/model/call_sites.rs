//! Which code wrote each file (`--stacks`): the call sites of first
//! writes, per file, with the pages and writers each one accounts for.
//! Pure: stacks arrive resolved (`session::stacks`).

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use crate::model::events::{Event, EventBody, FileId};

/// One frame of a writer's user stack, innermost first, as resolved while
/// the writer lived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// The address in the writer (for the innermost frame the store
    /// itself, for the others a return address).
    pub addr: u64,
    /// The function, demangled; None where no symbol covers the address.
    pub symbol: Option<String>,
    /// The ELF object that holds the address, the address's offset in
    /// that file and its build id (hex): enough to symbolize the frame
    /// elsewhere, e.g. with the object's debug symbols
    /// (`addr2line -e OBJECT OFFSET` for an object linked at 0).
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Source file and line, where debug information says them.
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl Frame {
    /// What tells this frame's code apart across processes: its object
    /// (path and build id: one path can be two files) and offset there
    /// (the same code at another address, ASLR, is the same call site).
    /// Unlocated frames only have their address.
    fn site_key(&self) -> FrameKey {
        match (&self.object, self.offset) {
            (Some(object), Some(offset)) => {
                FrameKey::Offset(object.clone(), self.build_id.clone(), offset)
            }
            _ => FrameKey::Address(self.addr),
        }
    }

    /// `symbol (file:line)`, `symbol`, `object+offset` (no symbol covers
    /// it: a stripped object), or the address.
    pub fn describe(&self) -> String {
        let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
        match (&self.symbol, &self.file, self.line) {
            (Some(symbol), Some(file), Some(line)) => format!("{symbol} ({}:{line})", base(file)),
            (Some(symbol), _, _) => symbol.clone(),
            (None, _, _) => match (&self.object, self.offset) {
                (Some(object), Some(offset)) => format!("{}+{offset:#x}", base(object)),
                _ => format!("{:#x}", self.addr),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FrameKey {
    Offset(String, Option<String>, u64),
    Address(u64),
}

/// A writer's user stack at a first write.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// The walk did not reach the thread's entry (`_start`,
    /// `start_thread`, ...): code without frame pointers cut it or made it
    /// skip callers. The innermost frame is right even then.
    pub partial: bool,
    /// Why the frames have no symbols, when they have none (the writer
    /// exited before its stack was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

/// A stack as recordings and the event stream carry it: by the process
/// and the kernel's stack id its records name it with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessStack {
    pub pid: u32,
    pub stack_id: u32,
    #[serde(flatten)]
    pub stack: Stack,
}

/// Functions a whole user stack ends in: process and thread entries of
/// glibc, musl and the dynamic loader.
const STACK_ROOTS: [&str; 10] = [
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
];

/// Whether a stack walk ending in `outermost` reached the thread's entry.
pub fn reaches_a_root(outermost: Option<&str>) -> bool {
    outermost.is_some_and(|symbol| STACK_ROOTS.contains(&symbol))
}

/// One call site of one file: the pages whose first write (by a writer)
/// it made, and those writers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub stack: Stack,
    pub pages: u64,
    /// (tgid, comm) of each writer.
    pub writers: BTreeSet<(u32, String)>,
}

/// The call sites of every file.
#[derive(Default)]
pub struct CallSites {
    files: HashMap<FileId, HashMap<Vec<FrameKey>, Site>>,
    /// First writes that came without a stack, or whose stack could not
    /// be read.
    pub without_stack: u64,
}

impl CallSites {
    /// A decoded event's call site, with `stack` the one its stack id
    /// names (None: it has none, or it could not be read).
    pub fn observe(&mut self, event: &Event, stack: Option<&Rc<Stack>>) {
        let pages = match event.body {
            EventBody::FirstWrite { .. } | EventBody::NewWriter { .. } => 1,
            EventBody::FolioSpan { pages, .. } | EventBody::PossibleWrite { pages, .. } => pages,
            _ => return,
        };
        match stack.filter(|stack| !stack.frames.is_empty()) {
            Some(stack) => self.add(
                event.file,
                stack,
                (event.task.tgid, &event.task.comm),
                pages,
            ),
            None => self.without_stack += 1,
        }
    }

    /// The call sites of recorded events, from the stacks recorded with
    /// them (`mmapwatch report`): as the live trace built them.
    pub fn replayed<'a>(
        events: impl IntoIterator<Item = &'a Event>,
        stacks: &[ProcessStack],
    ) -> Self {
        let stacks: HashMap<(u32, u32), Rc<Stack>> = stacks
            .iter()
            .map(|s| ((s.pid, s.stack_id), Rc::new(s.stack.clone())))
            .collect();
        let mut sites = Self::default();
        for event in events {
            let stack = event
                .stack_id
                .and_then(|id| stacks.get(&(event.task.tgid, id)));
            sites.observe(event, stack);
        }
        sites
    }

    /// `pages` first written by `writer` (tgid, comm) from `stack`.
    pub fn add(&mut self, file: FileId, stack: &Rc<Stack>, writer: (u32, &str), pages: u64) {
        let key: Vec<FrameKey> = stack.frames.iter().map(Frame::site_key).collect();
        let site = self
            .files
            .entry(file)
            .or_default()
            .entry(key)
            .or_insert_with(|| Site {
                stack: (**stack).clone(),
                ..Site::default()
            });
        site.pages += pages;
        site.writers.insert((writer.0, writer.1.to_string()));
    }

    /// `file`'s call sites, most pages first (then by their frames, so the
    /// order is the same on every run).
    pub fn of(&self, file: &FileId) -> Vec<&Site> {
        let Some(sites) = self.files.get(file) else {
            return Vec::new();
        };
        let mut sites: Vec<&Site> = sites.values().collect();
        sites.sort_by(|a, b| {
            b.pages
                .cmp(&a.pages)
                .then_with(|| describe(&a.stack).cmp(&describe(&b.stack)))
        });
        sites
    }

    /// Every call site's stack, to name its frames.
    pub fn stacks_mut(&mut self) -> impl Iterator<Item = &mut Stack> {
        self.files
            .values_mut()
            .flat_map(|sites| sites.values_mut().map(|site| &mut site.stack))
    }

    /// The files with call sites.
    pub fn files(&self) -> impl Iterator<Item = &FileId> {
        self.files.keys()
    }
}

/// A stack as one line, innermost first: `store (w.c:12) < fill < main`.
pub fn describe(stack: &Stack) -> String {
    describe_frames(&stack.frames, stack.partial)
}

/// [`describe`] of a stack's frames and whether it is partial.
pub fn describe_frames(frames: &[Frame], partial: bool) -> String {
    let frames: Vec<String> = frames.iter().map(Frame::describe).collect();
    let mut line = frames.join(" < ");
    if partial {
        line.push_str(" < ?");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(addr: u64, symbol: &str, line: u32) -> Frame {
        Frame {
            addr,
            symbol: Some(symbol.into()),
            object: Some("/usr/bin/w".into()),
            file: Some("/src/w.c".into()),
            // The same code in each test process: its offset is its line's.
            offset: Some(u64::from(line) * 16),
            build_id: None,
            line: Some(line),
        }
    }

    fn stack(frames: Vec<Frame>) -> Rc<Stack> {
        Rc::new(Stack {
            frames,
            partial: false,
            unresolved: None,
        })
    }

    const FILE: FileId = FileId {
        dev: 1,
        ino: 2,
        generation: 0,
    };

    #[test]
    fn the_same_code_at_other_addresses_is_one_site() {
        let mut sites = CallSites::default();
        let a = stack(vec![frame(0x1000, "store", 12), frame(0x2000, "main", 30)]);
        let b = stack(vec![frame(0x7000, "store", 12), frame(0x8000, "main", 30)]);
        sites.add(FILE, &a, (10, "w"), 2);
        sites.add(FILE, &b, (11, "w"), 3);
        let of = sites.of(&FILE);
        assert_eq!(of.len(), 1);
        assert_eq!(of[0].pages, 5);
        assert_eq!(
            of[0].writers.iter().map(|w| w.0).collect::<Vec<_>>(),
            [10, 11]
        );
    }

    #[test]
    fn one_path_in_two_builds_is_two_sites() {
        let mut sites = CallSites::default();
        let built = |build: &str| {
            let mut frame = frame(0x1000, "store", 12);
            frame.build_id = Some(build.into());
            stack(vec![frame])
        };
        sites.add(FILE, &built("aa"), (1, "w"), 1);
        sites.add(FILE, &built("bb"), (2, "w"), 1);
        sites.add(FILE, &built("aa"), (3, "w"), 1);
        let pages: Vec<u64> = sites.of(&FILE).iter().map(|site| site.pages).collect();
        assert_eq!(pages, [2, 1]);
    }

    #[test]
    fn sites_are_ordered_by_pages_and_lines_tell_them_apart() {
        let mut sites = CallSites::default();
        let low = stack(vec![frame(0x1000, "store", 12)]);
        let high = stack(vec![frame(0x1010, "store", 13)]);
        let unresolved = stack(vec![Frame {
            addr: 0x99,
            ..Frame::default()
        }]);
        let stripped = |addr| Frame {
            addr,
            object: Some("/usr/lib/liblmdb.so.0".into()),
            offset: Some(0x6507),
            ..Frame::default()
        };
        // A stripped object's frame: the same code at two addresses.
        sites.add(FILE, &stack(vec![stripped(0x7f00_0000_6507)]), (1, "w"), 1);
        sites.add(FILE, &stack(vec![stripped(0x7e00_0000_6507)]), (2, "w"), 1);
        sites.add(FILE, &low, (1, "w"), 1);
        sites.add(FILE, &high, (1, "w"), 4);
        sites.add(FILE, &unresolved, (1, "w"), 2);
        let pages: Vec<u64> = sites.of(&FILE).iter().map(|site| site.pages).collect();
        assert_eq!(pages, [4, 2, 2, 1]);
        assert_eq!(describe(&sites.of(&FILE)[1].stack), "0x99");
        assert_eq!(describe(&sites.of(&FILE)[2].stack), "liblmdb.so.0+0x6507");
        assert!(sites.of(&FileId::default()).is_empty());
    }

    #[test]
    fn replayed_events_give_the_live_call_sites() {
        use crate::model::events::Task;
        let event = |page, tgid, stack_id| Event {
            file: FILE,
            task: Task {
                pid: tgid,
                tgid,
                comm: "w".into(),
                ..Task::default()
            },
            boot_ns: 1,
            body: EventBody::FirstWrite {
                page,
                kind: crate::model::events::WriteKind::Shared,
            },
            stack_id,
        };
        let span = Event {
            body: EventBody::FolioSpan {
                first_page: 16,
                pages: 16,
            },
            ..event(0, 7, Some(3))
        };
        let events = [
            event(1, 7, Some(3)),
            event(2, 8, Some(3)),
            span,
            event(3, 7, None),
        ];
        let stacks = [
            ProcessStack {
                pid: 7,
                stack_id: 3,
                stack: (*stack(vec![frame(0x1000, "store", 12)])).clone(),
            },
            // Another process's stack 3: other code at that address.
            ProcessStack {
                pid: 8,
                stack_id: 3,
                stack: (*stack(vec![frame(0x1000, "fill", 40)])).clone(),
            },
        ];
        let mut live = CallSites::default();
        for event in &events {
            let stack = stacks
                .iter()
                .find(|s| Some(s.stack_id) == event.stack_id && s.pid == event.task.tgid)
                .map(|s| Rc::new(s.stack.clone()));
            live.observe(event, stack.as_ref());
        }
        let replayed = CallSites::replayed(&events, &stacks);
        assert_eq!(replayed.of(&FILE), live.of(&FILE));
        let pages: Vec<u64> = replayed.of(&FILE).iter().map(|s| s.pages).collect();
        assert_eq!(pages, [17, 1]);
        assert_eq!(replayed.without_stack, 1);
    }

    #[test]
    fn a_stack_reads_innermost_first_and_says_when_it_is_partial() {
        let mut partial = (*stack(vec![frame(1, "store", 12), frame(2, "main", 30)])).clone();
        assert_eq!(describe(&partial), "store (w.c:12) < main (w.c:30)");
        partial.partial = true;
        assert_eq!(describe(&partial), "store (w.c:12) < main (w.c:30) < ?");
        assert!(reaches_a_root(Some("__libc_start_call_main")));
        assert!(reaches_a_root(Some("start_thread")));
        assert!(!reaches_a_root(Some("main")));
        assert!(!reaches_a_root(None));
    }
}
