//! The dashboard's model and its `update` (Elm style): every change comes
//! in as a [`Message`]; rendering reads the model and changes nothing.
//!
//! Over 500 lines only with its unit tests (the code is ~495).

use std::collections::{HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    processes::{ProcessColumn, ProcessTable},
    snapshot::{Detail, FileRow, Snapshot},
};
use crate::model::events::FileId;

/// Intervals of write-fault history kept per file (the detail sparkline).
pub const HISTORY: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Files,
    Detail,
    Processes,
}

/// Sortable columns of the files view, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Path,
    Pages,
    PagesInterval,
    FaultsPerSec,
    Cow,
    Writers,
    Writeback,
    LastWrite,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Path,
        Column::Pages,
        Column::PagesInterval,
        Column::FaultsPerSec,
        Column::Cow,
        Column::Writers,
        Column::Writeback,
        Column::LastWrite,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Path => "PATH",
            Column::Pages => "PAGES",
            Column::PagesInterval => "+PAGES",
            Column::FaultsPerSec => "FAULTS/s",
            Column::Cow => "COW",
            Column::Writers => "WRITERS",
            Column::Writeback => "WRITEBACK",
            Column::LastWrite => "LAST WRITE",
        }
    }

    /// Short titles for narrow terminals.
    pub fn short_title(self) -> &'static str {
        match self {
            Column::Path => "PATH",
            Column::Pages => "PAGES",
            Column::PagesInterval => "+PG",
            Column::FaultsPerSec => "FLT/s",
            Column::Cow => "COW",
            Column::Writers => "WR",
            Column::Writeback => "WRITEBACK",
            Column::LastWrite => "AGE",
        }
    }

    fn next(self) -> Column {
        let index = Column::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Column::ALL[(index + 1) % Column::ALL.len()]
    }
}

/// A process whose files the files view shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub tgid: u32,
    pub comm: String,
}

/// A file row with what the dashboard derives between ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct FileLine {
    pub row: FileRow,
    pub pages_interval: u64,
    pub faults_per_sec: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A new snapshot, `interval_s` after the previous one.
    Tick(Box<SnapshotMessage>),
    /// The file detail view's content, read at once when it opens.
    Detail(Box<Option<Detail>>),
    Key(KeyEvent),
    /// The traced command exited with this code.
    CommandExited(u8),
}

/// A snapshot as a message (boxed: it is large).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotMessage {
    pub snapshot: Snapshot,
    pub interval_s: f64,
}

/// What `update` asks of the loop (the model does no I/O itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// A file's detail was opened: read it now, not at the next tick
    /// (answered with [`Message::Detail`]).
    LoadDetail,
}

/// Static facts for the status bar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub backend: String,
    pub interval_ms: u64,
}

#[derive(Debug)]
pub struct App {
    pub info: Info,
    pub view: View,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub show_help: bool,
    /// Selection in the files view, by identity so it survives re-sorting.
    pub selected_file: Option<FileId>,
    pub files: Vec<FileLine>,
    pub processes: ProcessTable,
    /// The files view shows only this process's files (opened from the
    /// processes view).
    pub scope: Option<Scope>,
    pub detail: Option<Detail>,
    pub history: HashMap<FileId, VecDeque<u64>>,
    /// Indices into `files` as the files view shows them (filtered,
    /// sorted): sorted once per update, not on every read.
    visible: Vec<usize>,
    pub lost_events: u64,
    pub events: u64,
    pub now_boot_ns: u64,
    pub command_exit: Option<u8>,
    previous: HashMap<FileId, (u64, u64)>,
}

impl App {
    pub fn new(info: Info) -> Self {
        Self {
            info,
            view: View::Files,
            sort: Column::Pages,
            descending: true,
            filter: String::new(),
            editing_filter: false,
            paused: false,
            show_help: false,
            selected_file: None,
            files: Vec::new(),
            processes: ProcessTable::default(),
            scope: None,
            detail: None,
            history: HashMap::new(),
            visible: Vec::new(),
            lost_events: 0,
            events: 0,
            now_boot_ns: 0,
            command_exit: None,
            previous: HashMap::new(),
        }
    }

    /// The file the detail view shows (or would show), for the snapshot.
    pub fn detail_target(&self) -> Option<FileId> {
        match self.view {
            View::Detail => self.selected_file,
            _ => None,
        }
    }

    /// Rows of the files view after filtering and sorting.
    pub fn visible_files(&self) -> Vec<&FileLine> {
        self.visible
            .iter()
            .filter_map(|&index| self.files.get(index))
            .collect()
    }

    /// Filters and sorts the files view's rows (after any change to the
    /// files, the filter or the order).
    fn sort_visible(&mut self) {
        let needle = self.filter.to_lowercase();
        let files = &self.files;
        let scope = self.scope.as_ref().map(|s| s.tgid);
        let mut rows: Vec<usize> = (0..files.len())
            .filter(|&i| needle.is_empty() || files[i].row.path.to_lowercase().contains(&needle))
            .filter(|&i| scope.is_none_or(|tgid| files[i].row.writer_tgids.contains(&tgid)))
            .collect();
        rows.sort_by(|&a, &b| {
            let (a, b) = (&files[a], &files[b]);
            let order = match self.sort {
                Column::Path => a.row.path.cmp(&b.row.path),
                Column::Pages => a.row.pages.cmp(&b.row.pages),
                Column::PagesInterval => a.pages_interval.cmp(&b.pages_interval),
                Column::FaultsPerSec => a.faults_per_sec.total_cmp(&b.faults_per_sec),
                Column::Cow => a.row.cow_pages.cmp(&b.row.cow_pages),
                Column::Writers => a.row.writers.cmp(&b.row.writers),
                Column::Writeback => a.row.writeback.label().cmp(b.row.writeback.label()),
                Column::LastWrite => a.row.last_write_boot_ns.cmp(&b.row.last_write_boot_ns),
            };
            let order = if self.descending {
                order.reverse()
            } else {
                order
            };
            // Stable across ticks: ties by path, then inode.
            order
                .then_with(|| a.row.path.cmp(&b.row.path))
                .then(a.row.id.cmp(&b.row.id))
        });
        self.visible = rows;
    }

    pub fn selected_index(&self) -> usize {
        let rows = self.visible_files();
        self.selected_file
            .and_then(|id| rows.iter().position(|r| r.row.id == id))
            .unwrap_or(0)
    }

    fn select_index(&mut self, index: usize) {
        let rows = self.visible_files();
        self.selected_file = rows
            .get(index.min(rows.len().saturating_sub(1)))
            .map(|r| r.row.id);
    }

    fn move_selection(&mut self, delta: isize) {
        match self.view {
            View::Files => {
                let len = self.visible_files().len();
                if len == 0 {
                    return;
                }
                let index = self.selected_index() as isize + delta;
                self.select_index(index.clamp(0, len as isize - 1) as usize);
            }
            View::Processes => self.processes.move_selection(delta),
            View::Detail => {}
        }
    }

    fn ingest(&mut self, message: SnapshotMessage) {
        let SnapshotMessage {
            snapshot,
            interval_s,
        } = message;
        let interval_s = if interval_s > 0.0 { interval_s } else { 1.0 };
        let mut files = Vec::with_capacity(snapshot.files.len());
        for row in snapshot.files {
            let (previous_pages, previous_faults) =
                self.previous.get(&row.id).copied().unwrap_or((0, 0));
            let fault_delta = row.write_faults.saturating_sub(previous_faults);
            let history = self.history.entry(row.id).or_default();
            history.push_back(fault_delta);
            while history.len() > HISTORY {
                history.pop_front();
            }
            self.previous.insert(row.id, (row.pages, row.write_faults));
            files.push(FileLine {
                pages_interval: row.pages.saturating_sub(previous_pages),
                faults_per_sec: fault_delta as f64 / interval_s,
                row,
            });
        }
        // Files gone from the snapshot (forgotten after --retain) take
        // their history with them.
        let present: std::collections::HashSet<FileId> = files.iter().map(|f| f.row.id).collect();
        self.history.retain(|id, _| present.contains(id));
        self.previous.retain(|id, _| present.contains(id));
        self.files = files;
        self.sort_visible();
        self.processes.set_rows(snapshot.processes);
        self.detail = snapshot.detail;
        self.lost_events = snapshot.lost_events;
        self.events = snapshot.events;
        self.now_boot_ns = snapshot.now_boot_ns;
        if self.selected_file.is_none()
            || !self
                .visible_files()
                .iter()
                .any(|r| Some(r.row.id) == self.selected_file)
        {
            self.select_index(0);
        }
    }

    /// The processes view's own keys: sort, filter, open a process's
    /// files. None: a key every view shares.
    fn process_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Char('s') => self.processes.sort_by(self.processes.sort.next()),
            KeyCode::Char('r') => {
                self.processes.descending = !self.processes.descending;
                self.processes.refresh();
            }
            KeyCode::Char(c @ '1'..='6') => {
                self.processes
                    .sort_by(ProcessColumn::ALL[c as usize - '1' as usize]);
            }
            KeyCode::Char('x') => {
                self.processes.hide_exited = !self.processes.hide_exited;
                self.processes.refresh();
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.processes.filter.clear();
                self.processes.refresh();
            }
            KeyCode::Esc if !self.processes.filter.is_empty() => {
                self.processes.filter.clear();
                self.processes.refresh();
            }
            KeyCode::Enter => {
                let process = self.processes.selected()?;
                self.scope = Some(Scope {
                    tgid: process.tgid,
                    comm: process.comm.clone(),
                });
                self.view = View::Files;
                self.sort_visible();
                self.select_index(0);
            }
            _ => return None,
        }
        Some(Action::None)
    }

    /// While paused the screen stays as it was, but the counts each rate
    /// is measured from move on: the first interval after resuming is
    /// divided by its own length, not by the whole pause.
    fn keep_baseline(&mut self, snapshot: &Snapshot) {
        for row in &snapshot.files {
            self.previous.insert(row.id, (row.pages, row.write_faults));
        }
    }

    fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing_filter {
            let filter = match self.view {
                View::Processes => &mut self.processes.filter,
                View::Files | View::Detail => &mut self.filter,
            };
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    filter.clear();
                }
                KeyCode::Backspace => {
                    filter.pop();
                }
                KeyCode::Char(c) => filter.push(c),
                _ => {}
            }
            self.processes.refresh();
            self.select_index(0);
            return Action::None;
        }
        if self.view == View::Processes {
            if let Some(action) = self.process_key(key.code) {
                return action;
            }
        }
        if self.show_help {
            // Any key closes help; q still quits.
            self.show_help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc => match self.view {
                View::Detail => self.view = View::Files,
                _ if !self.filter.is_empty() => {
                    self.filter.clear();
                    self.select_index(0);
                }
                // Back from one process's files to the processes.
                _ if self.scope.is_some() => {
                    self.scope = None;
                    self.view = View::Processes;
                }
                _ => return Action::Quit,
            },
            KeyCode::Char('?') => self.show_help = true,
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('/') if self.view == View::Files => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Tab => {
                self.view = match self.view {
                    View::Processes => View::Files,
                    View::Files | View::Detail => {
                        // Back to all processes: the files view shows all again.
                        self.scope = None;
                        View::Processes
                    }
                }
            }
            KeyCode::Enter if self.view == View::Files && self.selected_file.is_some() => {
                self.view = View::Detail
            }
            KeyCode::Backspace | KeyCode::Left if self.view == View::Detail => {
                self.view = View::Files
            }
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char(c @ '1'..='8') => {
                let column = Column::ALL[c as usize - '1' as usize];
                if self.sort == column {
                    self.descending = !self.descending;
                } else {
                    self.sort = column;
                    self.descending = column != Column::Path;
                }
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(20),
            KeyCode::PageUp => self.move_selection(-20),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            _ => {}
        }
        Action::None
    }
}

/// The one place the model changes.
pub fn update(app: &mut App, message: Message) -> Action {
    match message {
        Message::Tick(snapshot) => {
            if app.paused {
                app.keep_baseline(&snapshot.snapshot);
            } else {
                app.ingest(*snapshot);
            }
            Action::None
        }
        Message::Detail(detail) => {
            app.detail = *detail;
            Action::None
        }
        Message::Key(key) => {
            let target = app.detail_target();
            let action = app.key(key);
            // The filter or the order may have changed.
            app.sort_visible();
            let opened = app.detail_target().is_some() && app.detail_target() != target;
            match action {
                Action::None if opened => Action::LoadDetail,
                action => action,
            }
        }
        Message::CommandExited(code) => {
            app.command_exit = Some(code);
            Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        probe::maps::KernelCounters,
        tui::snapshot::{Snapshot, WritebackState},
    };

    fn row(ino: u64, path: &str, pages: u64, faults: u64) -> FileRow {
        FileRow {
            id: FileId {
                dev: 1,
                ino,
                generation: 0,
            },
            path: path.into(),
            pages,
            marks: crate::model::page_marks::PageMarks {
                written: pages,
                ..Default::default()
            },
            write_faults: faults,
            cow_pages: 0,
            writers: 1,
            writeback_pages: 0,
            writeback: WritebackState::Dirty,
            last_write_boot_ns: ino,
            writer_tgids: vec![7],
            syncs: 0,
        }
    }

    fn tick(rows: Vec<FileRow>) -> Message {
        Message::Tick(Box::new(SnapshotMessage {
            snapshot: Snapshot {
                files: rows,
                processes: vec![],
                detail: None,
                counters: KernelCounters::default(),
                lost_events: 0,
                events: 0,
                now_boot_ns: 0,
            },
            interval_s: 2.0,
        }))
    }

    fn key(code: KeyCode) -> Message {
        Message::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn paths(app: &App) -> Vec<String> {
        app.visible_files()
            .iter()
            .map(|f| f.row.path.clone())
            .collect()
    }

    fn app_with_files() -> App {
        let mut app = App::new(Info::default());
        update(
            &mut app,
            tick(vec![
                row(1, "/b", 5, 10),
                row(2, "/a", 9, 4),
                row(3, "/c/log", 1, 1),
            ]),
        );
        app
    }

    #[test]
    fn sorts_by_pages_then_by_any_column() {
        let mut app = app_with_files();
        assert_eq!(paths(&app), ["/a", "/b", "/c/log"]);
        update(&mut app, key(KeyCode::Char('1')));
        assert_eq!(app.sort, Column::Path);
        assert_eq!(paths(&app), ["/a", "/b", "/c/log"]);
        update(&mut app, key(KeyCode::Char('1')));
        assert_eq!(paths(&app), ["/c/log", "/b", "/a"], "same key reverses");
        update(&mut app, key(KeyCode::Char('4')));
        assert_eq!(app.sort, Column::FaultsPerSec);
        assert_eq!(paths(&app), ["/b", "/a", "/c/log"]);
        update(&mut app, key(KeyCode::Char('s')));
        assert_eq!(app.sort, Column::Cow);
        update(&mut app, key(KeyCode::Char('r')));
        assert!(!app.descending);
    }

    #[test]
    fn filters_by_typing_and_clears_with_escape() {
        let mut app = app_with_files();
        update(&mut app, key(KeyCode::Char('/')));
        for c in "LOG".chars() {
            update(&mut app, key(KeyCode::Char(c)));
        }
        assert!(app.editing_filter);
        assert_eq!(paths(&app), ["/c/log"]);
        assert_eq!(
            app.selected_file,
            Some(FileId {
                dev: 1,
                ino: 3,
                generation: 0
            })
        );
        update(&mut app, key(KeyCode::Enter));
        assert!(!app.editing_filter);
        // Keys act normally again: 'q' would quit, Esc clears the filter.
        assert_eq!(update(&mut app, key(KeyCode::Esc)), Action::None);
        assert_eq!(paths(&app).len(), 3);
        assert_eq!(update(&mut app, key(KeyCode::Esc)), Action::Quit);
    }

    #[test]
    fn navigation_keeps_the_selected_file_across_ticks() {
        let mut app = app_with_files();
        assert_eq!(app.selected_index(), 0);
        update(&mut app, key(KeyCode::Down));
        update(&mut app, key(KeyCode::Down));
        update(&mut app, key(KeyCode::Down));
        assert_eq!(app.selected_index(), 2, "stops at the end");
        let selected = app.selected_file;
        // /c/log overtakes the others: the selection follows the file.
        update(
            &mut app,
            tick(vec![
                row(1, "/b", 5, 10),
                row(2, "/a", 9, 4),
                row(3, "/c/log", 50, 60),
            ]),
        );
        assert_eq!(app.selected_file, selected);
        assert_eq!(app.selected_index(), 0);
        update(&mut app, key(KeyCode::End));
        assert_eq!(app.selected_index(), 2);
        update(&mut app, key(KeyCode::Home));
        assert_eq!(app.selected_index(), 0);
    }

    #[test]
    fn derives_interval_pages_and_fault_rates() {
        let mut app = app_with_files();
        update(
            &mut app,
            tick(vec![
                row(1, "/b", 8, 30),
                row(2, "/a", 9, 4),
                row(3, "/c/log", 1, 1),
            ]),
        );
        let b = app.files.iter().find(|f| f.row.path == "/b").unwrap();
        assert_eq!(b.pages_interval, 3);
        assert_eq!(b.faults_per_sec, 10.0, "20 faults in 2 s");
        assert_eq!(
            app.history[&FileId {
                dev: 1,
                ino: 1,
                generation: 0
            }],
            [10, 20]
        );
    }

    #[test]
    fn views_help_and_pause() {
        let mut app = app_with_files();
        // Opening a detail asks the loop to read it at once; moving about
        // does not.
        assert_eq!(update(&mut app, key(KeyCode::Enter)), Action::LoadDetail);
        assert_eq!(app.view, View::Detail);
        assert_eq!(
            app.detail_target(),
            Some(FileId {
                dev: 1,
                ino: 2,
                generation: 0
            })
        );
        assert_eq!(update(&mut app, key(KeyCode::Esc)), Action::None);
        assert_eq!(app.view, View::Files);
        update(&mut app, key(KeyCode::Tab));
        assert_eq!(app.view, View::Processes);
        update(&mut app, key(KeyCode::Tab));
        assert_eq!(app.view, View::Files);
        update(&mut app, key(KeyCode::Char('?')));
        assert!(app.show_help);
        update(&mut app, key(KeyCode::Char('x')));
        assert!(!app.show_help);
        update(&mut app, key(KeyCode::Char('p')));
        update(&mut app, tick(vec![row(9, "/new", 1, 1)]));
        assert_eq!(app.files.len(), 3, "paused: the snapshot is ignored");
        update(&mut app, key(KeyCode::Char('p')));
        update(&mut app, tick(vec![row(9, "/new", 1, 1)]));
        assert_eq!(paths(&app), ["/new"]);
        assert_eq!(update(&mut app, key(KeyCode::Char('q'))), Action::Quit);
    }

    #[test]
    fn rates_after_a_pause_are_of_the_last_interval_only() {
        let mut app = App::new(Info::default());
        update(&mut app, tick(vec![row(1, "/a", 1, 10)]));
        update(&mut app, key(KeyCode::Char('p')));
        // 1,000 faults while paused, then 4 in the interval after resuming.
        update(&mut app, tick(vec![row(1, "/a", 50, 1_010)]));
        update(&mut app, key(KeyCode::Char('p')));
        update(&mut app, tick(vec![row(1, "/a", 51, 1_014)]));
        let a = &app.files[0];
        assert_eq!(a.faults_per_sec, 2.0, "4 faults in 2 s, not 1,004");
        assert_eq!(a.pages_interval, 1);
    }

    #[test]
    fn ctrl_c_quits_even_while_filtering() {
        let mut app = app_with_files();
        update(&mut app, key(KeyCode::Char('/')));
        let ctrl_c = Message::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(update(&mut app, ctrl_c), Action::Quit);
    }
}
