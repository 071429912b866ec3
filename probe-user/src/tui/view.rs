//! Rendering: reads the [`App`] and draws; changes nothing.
//!
//! Over 500 lines only with its unit tests (the code is ~460).

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState},
    Frame,
};

use super::{
    app::{App, Column, View},
    snapshot::{Detail, Heatmap, WritebackState},
};

pub fn render(app: &App, frame: &mut Frame) {
    let [main, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    match app.view {
        View::Files => render_files(app, frame, main),
        View::Detail => match &app.detail {
            Some(detail) => render_detail(app, detail, frame, main),
            None => render_files(app, frame, main),
        },
        View::Processes => super::view_processes::render(app, frame, main),
    }
    render_status(app, frame, status);
    if app.show_help {
        render_help(frame, main);
    }
}

/// A number, right-aligned so digits line up.
pub(super) fn number(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// Pages of 4 KiB as a size: "4 KiB", "1.5 MiB", "2.0 GiB".
pub(super) fn size_of_pages(pages: u64) -> String {
    let kib = pages.saturating_mul(4);
    if kib < 1024 {
        format!("{kib} KiB")
    } else if kib < 1024 * 1024 {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    } else {
        format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
    }
}

/// "3.2s", "4m", "2h": how long ago.
fn age(now_ns: u64, then_ns: u64) -> String {
    if then_ns == 0 {
        return "-".into();
    }
    let secs = now_ns.saturating_sub(then_ns) as f64 / 1e9;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.0}h", secs / 3600.0)
    }
}

fn writeback_style(state: WritebackState) -> Style {
    match state {
        WritebackState::Dirty => Style::new().fg(Color::Yellow),
        WritebackState::Writing => Style::new().fg(Color::Cyan),
        WritebackState::Clean => Style::new().fg(Color::Green),
        WritebackState::NoWriteback => Style::new().fg(Color::DarkGray),
    }
}

/// Terminals at least this wide get full column titles and widths.
const WIDE: u16 = 120;

/// Widths of every column but PATH, for the terminal's width.
fn fixed_widths(width: u16) -> [u16; 7] {
    if width >= WIDE {
        [8, 8, 10, 6, 9, 13, 12]
    } else {
        [7, 5, 7, 5, 4, 11, 6]
    }
}

/// PATH keeps at least this many columns: on a narrow terminal the less
/// telling columns go first, never the path.
const MIN_PATH: u16 = 20;

/// Which of the eight columns are shown at this width: all that leave PATH
/// its minimum, dropping COW, +PG, FLT/s, WR and AGE in that order.
fn shown_columns(width: u16) -> [bool; 8] {
    const DROP_ORDER: [usize; 5] = [4, 2, 3, 5, 7];
    let fixed = fixed_widths(width);
    let mut shown = [true; 8];
    let path_room = |shown: &[bool; 8]| {
        let used: u16 = (1..8).filter(|&c| shown[c]).map(|c| fixed[c - 1] + 1).sum();
        width.saturating_sub(used)
    };
    for column in DROP_ORDER {
        if path_room(&shown) >= MIN_PATH {
            break;
        }
        shown[column] = false;
    }
    shown
}

/// Shortens a path in the middle, keeping its first directory (which
/// tree: /var, /home, /tmp) and as much of its end as fits, the file name
/// whole: "/var/…sql/16/main/base/16384/2619". Where even that does not
/// fit, the end alone: "…/orders.db".
fn elide_middle(path: &str, width: usize) -> String {
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= width {
        return path.to_string();
    }
    // "/var" of "/var/lib/...": up to the second slash.
    let head_len = chars
        .iter()
        .skip(1)
        .position(|&c| c == '/')
        .map_or(0, |at| at + 1);
    // What fits after "/var/…", if the file name (with its slash) does.
    let name_len = chars.len() - chars.iter().rposition(|&c| c == '/').unwrap_or(0);
    let tail = width
        .checked_sub(head_len + 2)
        .filter(|&room| head_len > 0 && room >= name_len)
        .map(|room| chars.len() - room);
    match tail {
        Some(from) => {
            let head: String = chars[..head_len].iter().collect();
            let tail: String = chars[from..].iter().collect();
            format!("{head}/…{tail}")
        }
        None => elide_left(path, width),
    }
}

/// Keeps the end of a path (the file name matters most): "…/data/orders.db".
fn elide_left(path: &str, width: usize) -> String {
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= width || width < 2 {
        return path.to_string();
    }
    let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
    format!("…{tail}")
}

fn header_cells(app: &App, wide: bool, shown: &[bool; 8]) -> Vec<Cell<'static>> {
    Column::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| shown[*i])
        .map(|(i, column)| {
            let mark = if *column == app.sort {
                if app.descending {
                    "▼"
                } else {
                    "▲"
                }
            } else {
                ""
            };
            let title = if wide {
                column.title()
            } else {
                column.short_title()
            };
            let text = format!("{}{title}{mark}", i + 1);
            // Titles sit over their values: numbers are right-aligned.
            match column {
                Column::Path | Column::Writeback => Cell::from(text),
                _ => number(text),
            }
        })
        .collect()
}

fn render_files(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.visible_files();
    let whose = match &app.scope {
        Some(scope) => format!(" of {}[{}] (Esc: all)", scope.comm, scope.tgid),
        None => String::new(),
    };
    let title = if app.filter.is_empty() && !app.editing_filter {
        format!(" files written through mmap{whose} ({}) ", rows.len())
    } else {
        format!(
            " files matching /{}{} ({}) ",
            app.filter,
            if app.editing_filter { "▏" } else { "" },
            rows.len()
        )
    };
    let wide = area.width >= WIDE;
    let fixed = fixed_widths(area.width);
    let shown = shown_columns(area.width);
    let shown_fixed: Vec<u16> = (1..8).filter(|&c| shown[c]).map(|c| fixed[c - 1]).collect();
    // Column gaps: one between each shown column.
    let path_width = area
        .width
        .saturating_sub(shown_fixed.iter().sum::<u16>() + shown_fixed.len() as u16)
        as usize;
    let body: Vec<Row> = rows
        .iter()
        .map(|file| {
            let row = &file.row;
            let cells = [
                Cell::from(elide_middle(&row.path, path_width)),
                number(row.marks.flagged()),
                number(format!("+{}", file.pages_interval)),
                number(format!("{:.1}", file.faults_per_sec)),
                number(row.cow_pages.to_string()),
                number(row.writers.to_string()),
                Cell::from(Span::styled(
                    match row.writeback {
                        WritebackState::NoWriteback => row.writeback.label().to_string(),
                        state => format!("{} {}", state.label(), row.writeback_pages),
                    },
                    writeback_style(row.writeback),
                )),
                number(age(app.now_boot_ns, row.last_write_boot_ns)),
            ];
            Row::new(
                cells
                    .into_iter()
                    .zip(shown)
                    .filter_map(|(cell, shown)| shown.then_some(cell)),
            )
        })
        .collect();
    let widths = std::iter::once(Constraint::Fill(1))
        .chain(shown_fixed.iter().map(|w| Constraint::Length(*w)));
    let table = Table::new(body, widths)
        .header(
            Row::new(header_cells(app, wide, &shown))
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::new().borders(Borders::TOP).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if !rows.is_empty() {
        state.select(Some(app.selected_index()));
    }
    if rows.is_empty() {
        let message = if app.files.is_empty() {
            "No file written through mmap yet. Waiting for write faults…"
        } else {
            "No file matches the filter."
        };
        let [head, rest] =
            Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(area);
        frame.render_stateful_widget(table, head, &mut state);
        frame.render_widget(Paragraph::new(message).dark_gray(), rest);
        return;
    }
    frame.render_stateful_widget(table, area, &mut state);
}

/// "msync 2 (max 1.8 ms, last 3.1s ago)  fsync 1 ...": whether and when
/// the writers asked for their pages to reach disk.
fn sync_text(app: &App, detail: &Detail) -> String {
    if detail.syncs.0.is_empty() {
        return "syncs: none (no msync/fsync/fdatasync/sync_file_range)".into();
    }
    let calls: Vec<String> = detail
        .syncs
        .0
        .iter()
        .map(|(call, stats)| {
            let failed = match stats.errors {
                0 => String::new(),
                n => format!(", {n} failed"),
            };
            format!(
                "{} {} (max {:.1} ms, last {} ago{failed})",
                call.name(),
                stats.calls,
                stats.max_latency_ns as f64 / 1e6,
                age(app.now_boot_ns, stats.last_boot_ns)
            )
        })
        .collect();
    format!("syncs: {}", calls.join("  "))
}

/// One character per cell: how much of the cell's pages were written.
fn heatmap_lines(heatmap: &Heatmap, width: u16, height: u16) -> Vec<Line<'static>> {
    let cells = (width as usize * height as usize).max(1);
    let buckets = heatmap.written.len();
    if heatmap.pages_span == 0 {
        return vec![Line::from("no page written")];
    }
    // Fewer cells than buckets: fold; more: one cell per bucket.
    let used = cells.min(buckets);
    let style = writeback_style(heatmap.state);
    let mut glyphs: Vec<Span<'static>> = Vec::with_capacity(used);
    for cell in 0..used {
        let from = cell * buckets / used;
        let to = ((cell + 1) * buckets / used).max(from + 1);
        let written: u64 = heatmap.written[from..to].iter().sum();
        let pages: u64 = (from..to).map(|i| heatmap.bucket_pages(i)).sum();
        let glyph = if written == 0 {
            "·"
        } else if written >= pages {
            "█"
        } else if written * 3 >= pages * 2 {
            "▓"
        } else if written * 3 >= pages {
            "▒"
        } else {
            "░"
        };
        glyphs.push(if written == 0 {
            Span::styled(glyph, Style::new().fg(Color::DarkGray))
        } else {
            Span::styled(glyph, style)
        });
    }
    glyphs
        .chunks(width.max(1) as usize)
        .map(|chunk| Line::from(chunk.to_vec()))
        .collect()
}

fn render_detail(app: &App, detail: &Detail, frame: &mut Frame, area: Rect) {
    let row = &detail.row;
    let sites_height = detail
        .call_sites
        .as_ref()
        .map_or(0, |sites| sites.len().max(1) as u16 + 1);
    let [summary, heat, lower, sites_area] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(4),
        Constraint::Length(8),
        Constraint::Length(sites_height),
    ])
    .areas(area);
    if let Some(sites) = &detail.call_sites {
        super::view_call_sites::render_call_sites(sites, frame, sites_area);
    }
    let span = detail.heatmap.pages_span;
    let summary_text = vec![
        Line::from(vec![Span::from(elide_middle(
            &row.path,
            area.width as usize,
        ))
        .bold()]),
        Line::from(format!(
            "dev {} ino {}  pages {} ({})  faults {}  cow {}  huge spans {}",
            row.id.dev_string(),
            row.id.ino,
            row.marks.text(),
            size_of_pages(row.pages),
            row.write_faults,
            row.cow_pages,
            detail.huge_spans,
        )),
        Line::from(vec![
            Span::styled(row.writeback.label(), writeback_style(row.writeback)),
            Span::from(format!(
                "  dirtied {} folios/{} pages  written back {}  last write {} ago",
                detail.folios_dirtied,
                detail.pages_dirtied,
                row.writeback_pages,
                age(app.now_boot_ns, row.last_write_boot_ns)
            )),
        ]),
        Line::from(match detail.not_on_disk {
            // Durability on one line: what is not on disk, what was asked.
            Some(pages) => format!("not on disk: {pages} pages  {}", sync_text(app, detail)),
            None => sync_text(app, detail),
        }),
    ];
    frame.render_widget(Paragraph::new(summary_text), summary);

    // One cell a character: how many pages each holds, said in the title.
    let inner = Block::new().borders(Borders::TOP).inner(heat);
    let cells = (u64::from(inner.width) * u64::from(inner.height)).max(1);
    let per_cell = span.div_ceil(cells.min(detail.heatmap.written.len().max(1) as u64));
    let heat_block = Block::new().borders(Borders::TOP).title(format!(
        " pages 0..{}, {per_cell} a cell (· none, ░▒▓█ written; colour: {}) ",
        span.saturating_sub(1),
        row.writeback.label()
    ));
    frame.render_widget(heat_block, heat);
    frame.render_widget(
        Paragraph::new(heatmap_lines(&detail.heatmap, inner.width, inner.height)),
        inner,
    );

    let [writers_area, spark_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(lower);
    let writers: Vec<Row> = detail
        .writers
        .iter()
        .map(|w| {
            Row::new(vec![
                w.tgid.to_string(),
                w.user.clone(),
                w.comm.clone(),
                w.pages.to_string(),
                w.cow_pages.to_string(),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            writers,
            [
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Fill(1),
                Constraint::Length(8),
                Constraint::Length(6),
            ],
        )
        .header(
            Row::new(["PID", "USER", "COMM", "PAGES", "COW"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::new().borders(Borders::TOP).title(" writers ")),
        writers_area,
    );
    // The newest interval at the right edge, older ones scrolling left
    // (zeros before the history began), on a scale the title gives.
    let width = spark_area.width as usize;
    let history = app.history.get(&row.id);
    let recent = history.map_or(0, |h| h.len().min(width));
    let mut shown = vec![0u64; width - recent];
    if let Some(history) = history {
        shown.extend(history.iter().skip(history.len() - recent));
    }
    let max = shown.iter().copied().max().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(Block::new().borders(Borders::TOP).title(format!(
                " write faults per {} ms, top {max} ",
                app.info.interval_ms
            )))
            .max(max.max(1))
            .data(&shown)
            .style(Style::new().fg(Color::Magenta)),
        spark_area,
    );
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    let lost = if app.lost_events > 0 {
        Span::styled(
            format!(" lost {} ", app.lost_events),
            Style::new().fg(Color::White).bg(Color::Red),
        )
    } else {
        Span::from(" lost 0 ")
    };
    let mut spans = vec![
        Span::styled(format!(" {} ", app.info.backend), Style::new().reversed()),
        lost,
        Span::from(format!(
            "│ events {} │ files {} ",
            app.events,
            app.files.len()
        )),
    ];
    if let Some(code) = app.command_exit {
        spans.push(Span::styled(
            format!("│ command exited {code} "),
            Style::new().fg(Color::Yellow),
        ));
    }
    if app.paused {
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    spans.push(Span::from("│ ? help  q quit").dark_gray());
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_help(frame: &mut Frame, area: Rect) {
    let lines = [
        "↑↓ j k PgUp PgDn Home End   move",
        "Enter          file detail / a process's files (Esc back)",
        "Tab            files / processes",
        "s              next sort column",
        "1-8            sort by column (again: reverse)",
        "r              reverse the sort",
        "/              filter paths or processes (Enter keep, Esc clear)",
        "x              processes: hide / show exited ones",
        "p              pause / resume",
        "q  Ctrl-C      quit",
        "PAGES 12~      some only in a large folio made writable whole",
        "PAGES 3?       more possibly written (tmpfs, no fault to see)",
        "WRITEBACK      dirty (waits for disk) / writing / clean, then pages",
        "               written back; - where nothing is (tmpfs)",
    ];
    let width =
        (lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 2).min(area.width);
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width.saturating_sub(width)) / 2,
        y: area.y + (area.height.saturating_sub(height)) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::bordered().title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_units() {
        assert_eq!(size_of_pages(0), "0 KiB");
        assert_eq!(size_of_pages(255), "1020 KiB");
        assert_eq!(size_of_pages(256), "1.0 MiB");
        assert_eq!(size_of_pages(384 * 1024), "1.5 GiB");
    }

    #[test]
    fn shortens_paths_in_the_middle_keeping_the_tree_and_the_name() {
        let path = "/var/lib/postgresql/16/main/base/16384/2619";
        assert_eq!(elide_middle(path, 80), path);
        assert_eq!(elide_middle(path, 25), "/var/…ain/base/16384/2619");
        assert_eq!(elide_middle(path, 25).chars().count(), 25);
        assert_eq!(elide_middle(path, 11), "/var/…/2619");
        // The name alone is all that fits: the end, as before.
        assert_eq!(
            elide_middle("/var/lib/a-long-file-name.db", 20),
            "…a-long-file-name.db"
        );
        // A file at the root has no directory to keep.
        assert_eq!(elide_middle("/a-long-file-name.db", 10), "…e-name.db");
        assert_eq!(
            elide_middle("/ü/ü/üüüü/x", 10),
            "/ü/…üüüü/x",
            "counts characters"
        );
    }

    #[test]
    fn elides_paths_from_the_left() {
        assert_eq!(elide_left("/a/b/orders.db", 20), "/a/b/orders.db");
        assert_eq!(
            elide_left("/tmp/mmapwatch-demo/data/orders.db", 11),
            "…/orders.db"
        );
        assert_eq!(
            elide_left("/tmp/mmapwatch-demo/data/orders.db", 12)
                .chars()
                .count(),
            12
        );
        assert_eq!(
            elide_left("/ü/ü/ü", 3),
            "…/ü",
            "counts characters, not bytes"
        );
    }
}
