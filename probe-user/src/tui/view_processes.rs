//! The processes view: who wrote through mmap, sortable and filterable;
//! Enter opens the selected process's files.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Modifier, Style},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    app::App,
    processes::ProcessColumn,
    snapshot::FOLDED_WRITERS_TGID,
    view::{number, size_of_pages},
};

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let table = &app.processes;
    let rows: Vec<Row> = table
        .visible()
        .map(|p| {
            Row::new(vec![
                number(if p.tgid == FOLDED_WRITERS_TGID {
                    "-".to_string()
                } else {
                    p.tgid.to_string()
                }),
                Cell::from(p.user.clone()),
                Cell::from(p.comm.clone()),
                number(p.files.to_string()),
                number(format!("{} pg", p.pages)),
                number(size_of_pages(p.pages)),
                number(p.cow_pages.to_string()),
                Cell::from(if p.exited { "exited" } else { "" }),
            ])
        })
        .collect();
    let header: Vec<Cell> = ProcessColumn::ALL
        .iter()
        .enumerate()
        .flat_map(|(i, column)| {
            let mark = match (*column == table.sort, table.descending) {
                (false, _) => "",
                (true, true) => "▼",
                (true, false) => "▲",
            };
            let text = format!("{}{}{mark}", i + 1, column.title());
            let cell = match column {
                ProcessColumn::Comm | ProcessColumn::User | ProcessColumn::State => {
                    Cell::from(text)
                }
                _ => number(text),
            };
            // WRITTEN is shown in pages and as a size.
            let size = (*column == ProcessColumn::Pages).then(|| number("SIZE".to_string()));
            std::iter::once(cell).chain(size)
        })
        .collect();
    let exited = match (table.exited(), table.hide_exited) {
        (0, _) => String::new(),
        (n, false) => format!(", {n} exited"),
        (n, true) => format!(", {n} exited hidden (x)"),
    };
    let title = if table.filter.is_empty() && !app.editing_filter {
        format!(" processes ({}{exited}) ", table.len())
    } else {
        format!(
            " processes matching /{}{} ({}) ",
            table.filter,
            if app.editing_filter { "▏" } else { "" },
            table.visible_len()
        )
    };
    let widget = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Fill(1),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
    .block(Block::new().borders(Borders::TOP).title(title))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if table.visible_len() > 0 {
        state.select(Some(table.selected_index()));
    }
    if table.visible_len() == 0 && !table.is_empty() {
        let [head, rest] =
            ratatui::layout::Layout::vertical([Constraint::Length(2), Constraint::Min(1)])
                .areas(area);
        frame.render_stateful_widget(widget, head, &mut state);
        frame.render_widget(
            Paragraph::new("No process matches the filter.").style(Style::new().dark_gray()),
            rest,
        );
        return;
    }
    frame.render_stateful_widget(widget, area, &mut state);
}
