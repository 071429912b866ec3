//! The processes view's model: rows, their order, a filter on command,
//! user or pid, and the selection (kept on the same process across ticks).

use super::snapshot::ProcessRow;

/// Sortable columns of the processes view, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessColumn {
    Pid,
    /// The effective user.
    User,
    Comm,
    Files,
    Pages,
    Cow,
    /// Running or exited.
    State,
}

impl ProcessColumn {
    pub const ALL: [ProcessColumn; 7] = [
        ProcessColumn::Pid,
        ProcessColumn::User,
        ProcessColumn::Comm,
        ProcessColumn::Files,
        ProcessColumn::Pages,
        ProcessColumn::Cow,
        ProcessColumn::State,
    ];

    pub fn title(self) -> &'static str {
        match self {
            ProcessColumn::Pid => "PID",
            ProcessColumn::User => "USER",
            ProcessColumn::Comm => "COMM",
            ProcessColumn::Files => "FILES",
            ProcessColumn::Pages => "WRITTEN",
            ProcessColumn::Cow => "COW",
            ProcessColumn::State => "STATE",
        }
    }

    pub fn next(self) -> Self {
        let index = Self::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Self::ALL[(index + 1) % Self::ALL.len()]
    }

    /// Text columns read best A to Z (running before exited); numbers
    /// largest first.
    pub fn descending_by_default(self) -> bool {
        !matches!(
            self,
            ProcessColumn::Comm | ProcessColumn::Pid | ProcessColumn::User | ProcessColumn::State
        )
    }
}

#[derive(Debug)]
pub struct ProcessTable {
    rows: Vec<ProcessRow>,
    pub sort: ProcessColumn,
    pub descending: bool,
    /// Shown are processes whose command or user contains it (any case)
    /// or whose pid starts with it.
    pub filter: String,
    /// Exited processes are left out (`x`).
    pub hide_exited: bool,
    /// Indices into `rows`, filtered and sorted.
    visible: Vec<usize>,
    /// The selected process, by pid so it survives re-sorting.
    selected: Option<u32>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            sort: ProcessColumn::Pages,
            descending: true,
            filter: String::new(),
            hide_exited: false,
            visible: Vec::new(),
            selected: None,
        }
    }
}

impl ProcessTable {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Processes that have exited, shown or not.
    pub fn exited(&self) -> usize {
        self.rows.iter().filter(|row| row.exited).count()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn set_rows(&mut self, rows: Vec<ProcessRow>) {
        self.rows = rows;
        self.refresh();
    }

    /// The rows shown, in order.
    pub fn visible(&self) -> impl Iterator<Item = &ProcessRow> {
        self.visible.iter().filter_map(|&i| self.rows.get(i))
    }

    pub fn visible_len(&self) -> usize {
        self.visible.len()
    }

    pub fn selected(&self) -> Option<&ProcessRow> {
        let pid = self.selected?;
        self.visible().find(|row| row.tgid == pid)
    }

    pub fn selected_index(&self) -> usize {
        self.selected
            .and_then(|pid| self.visible().position(|row| row.tgid == pid))
            .unwrap_or(0)
    }

    pub fn move_selection(&mut self, delta: isize) {
        let len = self.visible.len();
        if len == 0 {
            return;
        }
        let index = (self.selected_index() as isize + delta).clamp(0, len as isize - 1);
        self.select_index(index as usize);
    }

    /// Sorts by `column`; the same column again reverses the order.
    pub fn sort_by(&mut self, column: ProcessColumn) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column.descending_by_default();
        }
        self.refresh();
    }

    /// Filters and sorts again (after new rows, a filter or an order).
    pub fn refresh(&mut self) {
        let needle = self.filter.to_lowercase();
        let rows = &self.rows;
        let mut visible: Vec<usize> = (0..rows.len())
            .filter(|&i| !(self.hide_exited && rows[i].exited))
            .filter(|&i| {
                needle.is_empty()
                    || rows[i].comm.to_lowercase().contains(&needle)
                    || rows[i].user.to_lowercase().contains(&needle)
                    || rows[i].tgid.to_string().starts_with(&needle)
            })
            .collect();
        visible.sort_by(|&a, &b| {
            let (a, b) = (&rows[a], &rows[b]);
            let order = match self.sort {
                ProcessColumn::Pid => a.tgid.cmp(&b.tgid),
                ProcessColumn::User => a.user.cmp(&b.user),
                ProcessColumn::Comm => a.comm.cmp(&b.comm),
                ProcessColumn::Files => a.files.cmp(&b.files),
                ProcessColumn::Pages => a.pages.cmp(&b.pages),
                ProcessColumn::Cow => a.cow_pages.cmp(&b.cow_pages),
                ProcessColumn::State => a.exited.cmp(&b.exited),
            };
            let order = if self.descending {
                order.reverse()
            } else {
                order
            };
            // Stable across ticks.
            order.then(a.tgid.cmp(&b.tgid))
        });
        self.visible = visible;
        if self.selected().is_none() {
            self.select_index(0);
        }
    }

    fn select_index(&mut self, index: usize) {
        let pid = self.visible().nth(index).map(|row| row.tgid);
        self.selected = pid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tgid: u32, comm: &str, files: usize, pages: u64) -> ProcessRow {
        ProcessRow {
            tgid,
            user: if tgid == 20 { "alice" } else { "root" }.into(),
            comm: comm.into(),
            files,
            pages,
            cow_pages: 0,
            exited: false,
        }
    }

    fn table() -> ProcessTable {
        let mut table = ProcessTable::default();
        table.set_rows(vec![
            row(30, "db-writer", 1, 5),
            row(10, "cache-fill", 2, 1024),
            row(20, "db-writer", 3, 19),
        ]);
        table
    }

    fn pids(table: &ProcessTable) -> Vec<u32> {
        table.visible().map(|r| r.tgid).collect()
    }

    #[test]
    fn most_pages_first_then_any_column_either_way() {
        let mut table = table();
        assert_eq!(pids(&table), [10, 20, 30]);
        table.sort_by(ProcessColumn::Files);
        assert_eq!(pids(&table), [20, 10, 30]);
        table.sort_by(ProcessColumn::Files);
        assert_eq!(pids(&table), [30, 10, 20], "again: reversed");
        table.sort_by(ProcessColumn::Comm);
        assert_eq!(pids(&table), [10, 20, 30], "A to Z, ties by pid");
        table.sort_by(ProcessColumn::User);
        assert_eq!(pids(&table), [20, 10, 30], "alice before root");
    }

    #[test]
    fn the_filter_matches_a_user() {
        let mut table = table();
        table.filter = "ALI".into();
        table.refresh();
        assert_eq!(pids(&table), [20]);
    }

    #[test]
    fn the_filter_matches_command_or_pid_and_the_selection_follows_the_process() {
        let mut table = table();
        table.move_selection(1);
        assert_eq!(table.selected().map(|r| r.tgid), Some(20));
        table.sort_by(ProcessColumn::Pid);
        assert_eq!(table.selected().map(|r| r.tgid), Some(20), "kept by pid");
        table.filter = "DB".into();
        table.refresh();
        assert_eq!(pids(&table), [20, 30]);
        table.filter = "3".into();
        table.refresh();
        assert_eq!(pids(&table), [30]);
        assert_eq!(
            table.selected().map(|r| r.tgid),
            Some(30),
            "the selection moves to a shown row"
        );
        table.filter = "nothing".into();
        table.refresh();
        assert_eq!(table.selected(), None);
        table.move_selection(1);
    }

    #[test]
    fn exited_processes_sort_after_running_ones_and_hide_with_a_key() {
        let mut table = ProcessTable::default();
        table.set_rows(vec![
            ProcessRow {
                exited: true,
                ..row(10, "cc1", 1, 900)
            },
            row(20, "ld", 1, 5),
            ProcessRow {
                exited: true,
                ..row(30, "as", 1, 7)
            },
        ]);
        assert_eq!(table.exited(), 2);
        table.sort_by(ProcessColumn::State);
        assert_eq!(pids(&table), [20, 10, 30], "running first, ties by pid");
        table.sort_by(ProcessColumn::State);
        assert_eq!(pids(&table), [10, 30, 20]);
        table.hide_exited = true;
        table.refresh();
        assert_eq!(pids(&table), [20]);
        assert_eq!(table.selected().map(|r| r.tgid), Some(20));
    }
}
