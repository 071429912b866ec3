//! `mmapwatch report FILE|-`: a recording (`trace --record`) replayed into
//! the report the trace printed: its events through the same aggregate,
//! each file's state and the machine's answers from the recording, the
//! same report code. `--pid`, `--comm` and `--user` keep some writers'
//! events, as those filters keep them in the kernel live; `--path-prefix`
//! keeps files by their recorded names. An event stream (`--events`) is
//! read too, into what it holds (`stream_replay`).

use std::{
    io::{BufRead, BufReader, Read as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{
    cli::ReportArgs,
    error::UserError,
    model::call_sites::CallSites,
    model::{
        aggregate::Aggregate,
        events::{Event, EventBody, WriteKind},
        file_record::FileRecord,
        report_filter::ReportFilter,
    },
    output_file::open_named,
    trace::call_sites_report,
    trace::{
        recording::{Answers, Line, Lookups, ReportFacts, Start, FORMAT, NOT_RECORDED},
        report::{self, Report},
        stream_replay::{self, StreamItem},
    },
};

/// Which writers' events a replay keeps (all when every list is empty).
#[derive(Clone, Debug, Default)]
pub struct WriterFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub users: Vec<u32>,
}

impl WriterFilter {
    fn keeps_everyone(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.users.is_empty()
    }

    /// Writeback is nobody's doing: kept, as the kernel keeps it for the
    /// files the kept writers wrote.
    pub fn keeps(&self, event: &Event) -> bool {
        let Some(task) = event.writer() else {
            return true;
        };
        (self.pids.is_empty() || self.pids.contains(&task.tgid))
            && (self.comms.is_empty() || self.comms.contains(&task.comm))
            && (self.users.is_empty() || self.users.contains(&task.ids.euid))
    }
}

/// A recording read back: the aggregate its kept events made, with each
/// file's recorded state put back.
pub struct Replay {
    pub start: Start,
    pub aggregate: Aggregate,
    /// None when the recording stops before the trace's end.
    pub facts: Option<ReportFacts>,
    /// The events' call sites, when the trace took stacks.
    pub call_sites: Option<CallSites>,
}

/// The longest line read: a recording's `end` holds the answers for every
/// file (~120 bytes each), so this is millions of files; past it a file is
/// no recording (`/dev/zero` would otherwise fill memory as one line).
const MAX_LINE_BYTES: u64 = 256 << 20;

/// Lines with their numbers, blank ones left out; the first bad one (too
/// long, not UTF-8, unreadable) ends them as an error.
fn numbered_lines(
    input: impl BufRead,
    max_bytes: u64,
) -> impl Iterator<Item = Result<(usize, String), UserError>> {
    let mut input = input;
    let mut number = 0;
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        number += 1;
        let mut bytes = Vec::new();
        let read = (&mut input)
            .take(max_bytes + 2)
            .read_until(b'\n', &mut bytes);
        let why = match read {
            Ok(0) => return None,
            Ok(_) => {
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                if bytes.len() as u64 > max_bytes {
                    format!("longer than {} MiB: not a recording", max_bytes >> 20)
                } else {
                    match String::from_utf8(bytes) {
                        Ok(text) if text.trim().is_empty() => continue,
                        Ok(text) => return Some(Ok((number, text))),
                        Err(_) => "not UTF-8 text".into(),
                    }
                }
            }
            Err(err) => err.to_string(),
        };
        done = true;
        return Some(Err(bad_line(number, why)));
    })
}

fn bad_line(number: usize, why: String) -> UserError {
    UserError::Usage(format!("line {number}: {why}"))
}

/// Reads a recording, or an event stream (`trace --events`, JSON), line by
/// line (a bad line is refused with its number: either is input like any
/// other, and may be cut or corrupt).
pub fn read(input: impl BufRead, writers: &WriterFilter) -> Result<Replay, UserError> {
    let mut lines = numbered_lines(input, MAX_LINE_BYTES);
    let (number, first) = lines.next().ok_or_else(not_a_recording)??;
    match serde_json::from_str::<Line>(&first) {
        Ok(Line::Start(start)) => read_recording(start, lines, writers),
        Ok(_) => Err(not_a_recording()),
        Err(_) => match stream_replay::parse(&first) {
            Ok(item) => read_stream((number, item), lines, writers),
            Err(_) => Err(not_a_recording()),
        },
    }
}

fn read_recording(
    start: Start,
    lines: impl Iterator<Item = Result<(usize, String), UserError>>,
    writers: &WriterFilter,
) -> Result<Replay, UserError> {
    if start.format != FORMAT {
        return Err(UserError::Usage(format!(
            "a recording of format {} (mmapwatch {}); this mmapwatch reads format {FORMAT}",
            start.format, start.mmapwatch
        )));
    }
    let mut aggregate = Aggregate::new();
    let mut states = Vec::new();
    let mut facts = None;
    let (mut stack_events, mut stacks) = (Vec::new(), Vec::new());
    for line in lines {
        let (number, line) = line?;
        let parsed: Line = serde_json::from_str(&line)
            .map_err(|err| bad_line(number, format!("not a recording line: {err}")))?;
        match parsed {
            Line::Start(_) => {
                return Err(bad_line(
                    number,
                    "a second start: two recordings joined?".into(),
                ))
            }
            Line::Event(event) => {
                event
                    .check()
                    .map_err(|err| bad_line(number, err.to_string()))?;
                if writers.keeps(&event) {
                    aggregate.apply(&event);
                    if start.stacks {
                        stack_events.push(event);
                    }
                }
            }
            Line::Stack(stack) => stacks.push(stack),
            Line::Name(name) => {
                if writers.keeps_everyone() || aggregate.file(&name.file).is_some() {
                    let path = PathBuf::from(name.path.as_os_str());
                    aggregate.set_path(name.file, path, name.source);
                }
            }
            Line::File(state) => states.push(state),
            Line::End(end) => facts = Some(*end),
        }
    }
    for state in &states {
        aggregate.restore(state, writers.keeps_everyone());
    }
    let call_sites = start
        .stacks
        .then(|| CallSites::replayed(&stack_events, &stacks));
    Ok(Replay {
        start,
        aggregate,
        facts,
        call_sites,
    })
}

/// An event stream: its events through the aggregate, the names and ids
/// its lines carry as answers, the rest said missing.
fn read_stream(
    first: (usize, StreamItem),
    lines: impl Iterator<Item = Result<(usize, String), UserError>>,
    writers: &WriterFilter,
) -> Result<Replay, UserError> {
    let mut aggregate = Aggregate::new();
    let answers = Answers::live();
    let mut include_cow = false;
    // `--stacks` streams: their stack lines, the events that name one,
    // and the writes that came without.
    let (mut stack_events, mut stacks, mut without_stack) = (Vec::new(), Vec::new(), 0);
    let rest = lines.map(|line| {
        let (number, text) = line?;
        let parsed = stream_replay::parse(&text)
            .map_err(|err| bad_line(number, format!("not an event stream line: {err}")))?;
        Ok((number, parsed))
    });
    for line in std::iter::once(Ok(first)).chain(rest) {
        let (number, line) = line?;
        let line = match line {
            StreamItem::Stack(stack) => {
                stacks.push(stack);
                continue;
            }
            StreamItem::Event(line) => line,
        };
        let event = line.event().map_err(|why| bad_line(number, why))?;
        event
            .check()
            .map_err(|err| bad_line(number, err.to_string()))?;
        if writers.keeps(&event) {
            include_cow |= matches!(
                event.body,
                EventBody::FirstWrite {
                    kind: WriteKind::Cow,
                    ..
                }
            );
            aggregate.apply(&event);
            line.learn(&event, &mut aggregate, &answers);
            if event.stack_id.is_some() {
                stack_events.push(event);
            } else if event.is_page_write() {
                without_stack += 1;
            }
        }
    }
    let call_sites = (!stacks.is_empty()).then(|| {
        let mut sites = CallSites::replayed(&stack_events, &stacks);
        sites.without_stack += without_stack;
        sites
    });
    Ok(Replay {
        start: Start {
            format: FORMAT,
            mmapwatch: String::new(),
            // The lines' times are Unix times already.
            clock_offset_ns: 0,
            include_cow,
            path_prefixes: Vec::new(),
            stacks: call_sites.is_some(),
        },
        aggregate,
        facts: Some(stream_replay::stream_facts(answers)),
        call_sites,
    })
}

fn not_a_recording() -> UserError {
    UserError::Usage(
        "neither a recording (`mmapwatch trace --record FILE`) nor an event stream (`trace --events FILE`, JSON lines)".into(),
    )
}

/// Facts for a recording cut before the trace's end (killed, disk full):
/// the pages and writers its events hold, and a warning for the rest.
fn cut_short() -> ReportFacts {
    ReportFacts::without_the_kernel(
        "the recording ends before the trace did",
        "the recording ends before the trace did (the trace was killed or its disk filled): losses, kernel counts, file systems and current names are not in it",
        Answers::default(),
    )
}

impl Replay {
    /// The report, as the trace built it, its files narrowed to those
    /// under `path_prefixes` too (taken as given: the recorded names are
    /// another machine's, perhaps).
    pub fn report(&self, path_prefixes: &[PathBuf]) -> Report {
        let recorded: Vec<PathBuf> = self
            .start
            .path_prefixes
            .iter()
            .map(|name| PathBuf::from(name.as_os_str()))
            .collect();
        let asked: Vec<PathBuf> = path_prefixes
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let prefixes = both_prefixes(&recorded, &asked);
        let filter = ReportFilter {
            include_cow: self.start.include_cow,
            path_prefixes: prefixes.clone().unwrap_or_default(),
        };
        let facts = self.facts.clone().unwrap_or_else(cut_short);
        let answers = &facts.answers;
        let fs_type = |file| answers.fs_type(file, || None);
        let cgroup_path = |id| answers.cgroup_path(id, || None);
        let not_on_disk =
            |file, _: &FileRecord| answers.not_on_disk(file, || Err(NOT_RECORDED.into()));
        let user_name = |uid| answers.user_name(uid, || None);
        let mut report = report::build(
            &self.aggregate,
            &filter,
            facts.context(
                self.start.clock(),
                Lookups {
                    fs_type: &fs_type,
                    cgroup_path: &cgroup_path,
                    not_on_disk: &not_on_disk,
                    user_name: &user_name,
                },
            ),
        );
        if prefixes.is_none() {
            report.files.clear();
        }
        if let Some(sites) = &self.call_sites {
            call_sites_report::attach(&mut report, sites);
        }
        report
    }
}

/// Prefixes that keep a path under one of `a` and one of `b` (all of
/// either when the other is empty; None when no path is under both). A
/// path under both `x` and `y` is under the longer of them, the other
/// being its prefix.
fn both_prefixes(a: &[PathBuf], b: &[PathBuf]) -> Option<Vec<PathBuf>> {
    if a.is_empty() || b.is_empty() {
        return Some([a, b].concat());
    }
    let mut both: Vec<PathBuf> = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .filter_map(|(x, y)| {
            if x.starts_with(y) {
                Some(x.clone())
            } else if y.starts_with(x) {
                Some(y.clone())
            } else {
                None
            }
        })
        .collect();
    both.sort();
    both.dedup();
    (!both.is_empty()).then_some(both)
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path)
        .map_err(|err| UserError::Usage(format!("cannot read {}: {err}", path.display())))?;
    Ok(Box::new(BufReader::new(file)))
}

/// Runs `report`; returns the exit code.
pub fn run(args: &ReportArgs) -> anyhow::Result<u8> {
    // Opened first: a report that cannot be written fails before reading.
    let output = match &args.output {
        Some(path) => Some(open_named(path).context("cannot write the report")?),
        None => None,
    };
    let writers = WriterFilter {
        pids: args.writers.pids.clone(),
        comms: args.writers.comms.clone(),
        users: args.writers.users.clone(),
    };
    let input = open(&args.recording)?;
    let replay = read(input, &writers).map_err(|err| match err {
        UserError::Usage(why) => UserError::Usage(format!("{}: {why}", args.recording.display())),
        other => other,
    })?;
    let report = replay.report(&args.path_prefixes);
    let text = report::render(&report, args.json)?;
    let written = match output {
        Some(mut file) => {
            use std::io::Write as _;
            file.write_all(text.as_bytes()).and_then(|()| file.flush())
        }
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
    };
    written.context("writing the report")?;
    super::warn_of_losses(&report);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::events::{EventBody, FileId, Task, UserIds, WriteKind};

    fn write_by(tgid: u32, comm: &str, euid: u32, page: u64) -> Event {
        Event {
            file: FileId {
                dev: 1,
                ino: 2,
                generation: 0,
            },
            task: Task {
                pid: tgid,
                tgid,
                comm: comm.into(),
                cgroup_id: 1,
                ids: UserIds {
                    euid,
                    ..UserIds::default()
                },
            },
            boot_ns: page,
            body: EventBody::FirstWrite {
                page,
                kind: WriteKind::Shared,
            },
            stack_id: None,
        }
    }

    #[test]
    fn writer_filters_keep_writes_that_match_every_list_and_all_writeback() {
        let event = write_by(7, "db", 1000, 1);
        let filter = |pids: &[u32], comms: &[&str], users: &[u32]| WriterFilter {
            pids: pids.to_vec(),
            comms: comms.iter().map(|c| c.to_string()).collect(),
            users: users.to_vec(),
        };
        assert!(filter(&[], &[], &[]).keeps(&event));
        assert!(filter(&[7], &["db"], &[1000]).keeps(&event));
        assert!(!filter(&[8], &[], &[]).keeps(&event));
        assert!(!filter(&[], &["other"], &[]).keeps(&event));
        assert!(!filter(&[7], &["db"], &[0]).keeps(&event));
        let writeback = Event {
            body: EventBody::WrittenBack {
                first_page: 0,
                pages: 1,
            },
            ..event
        };
        assert!(filter(&[8], &["other"], &[0]).keeps(&writeback));
    }

    #[test]
    fn both_prefixes_keep_what_is_under_one_of_each() {
        let paths = |list: &[&str]| list.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(both_prefixes(&[], &paths(&["/a"])), Some(paths(&["/a"])));
        assert_eq!(both_prefixes(&paths(&["/a"]), &[]), Some(paths(&["/a"])));
        assert_eq!(
            both_prefixes(&paths(&["/a", "/b/c"]), &paths(&["/a/x", "/b"])),
            Some(paths(&["/a/x", "/b/c"]))
        );
        assert_eq!(both_prefixes(&paths(&["/a"]), &paths(&["/b"])), None);
        // Not a prefix by bytes: /ab is not under /a.
        assert_eq!(both_prefixes(&paths(&["/a"]), &paths(&["/ab"])), None);
    }

    #[test]
    fn lines_are_numbered_blank_ones_skipped_and_a_long_one_ends_them() {
        let lines: Vec<_> = numbered_lines(&b"a\n\n  \nbb\nccc"[..], 1 << 20).collect();
        assert!(matches!(&lines[..], [Ok((1, a)), Ok((4, b)), Ok((5, c))]
            if a == "a" && b == "bb" && c == "ccc"));
        // Past the cap (here 4 bytes), one error and no more lines.
        let lines: Vec<_> = numbered_lines(&b"abcd\nabcdefgh\nx\n"[..], 4).collect();
        assert!(
            matches!(&lines[..], [Ok((1, _)), Err(UserError::Usage(why))]
            if why.starts_with("line 2: longer than"))
        );
        let lines: Vec<_> = numbered_lines(&b"\xff\xfe\n"[..], 1 << 20).collect();
        assert!(matches!(&lines[..], [Err(UserError::Usage(why))] if why.contains("not UTF-8")));
    }

    #[test]
    fn a_recording_without_a_start_or_with_a_bad_line_is_refused() {
        let err = read(&b"{\"time\":1}\n"[..], &WriterFilter::default()).err();
        assert!(
            matches!(err, Some(UserError::Usage(why)) if why.starts_with("neither a recording"))
        );
        let start = serde_json::json!({"start": {"format": FORMAT, "mmapwatch": "0",
            "clock_offset_ns": 0, "include_cow": false, "path_prefixes": []}});
        let input = format!("{start}\n\n{{\"event\":1}}\n");
        let err = read(input.as_bytes(), &WriterFilter::default()).err();
        assert!(matches!(err, Some(UserError::Usage(why)) if why.starts_with("line 3:")));
        let event = serde_json::json!({"event": write_by(7, "db", 0, 3)});
        let input = format!("{start}\n{event}\n");
        let replay = read(input.as_bytes(), &WriterFilter::default()).expect("reads");
        assert!(replay.facts.is_none(), "no end line");
        let report = replay.report(&[]);
        assert_eq!(report.files[0].pages_written, [[3, 3]]);
        assert!(report.warnings[0].contains("ends before the trace did"));
    }
}
