//! The detail view's call sites (`top --stacks`).

use ratatui::{
    layout::Rect,
    text::Line,
    widgets::{Block, Borders, Paragraph},
    Frame,
};

use crate::model::{
    call_sites::{describe, Site},
    names,
};

/// `--stacks`: the file's call sites with most pages, a line each
/// (pages, writers, innermost frame first; names escaped).
pub fn render_call_sites(sites: &[Site], frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = if sites.is_empty() {
        vec![Line::from("no stack yet")]
    } else {
        sites
            .iter()
            .map(|site| {
                let writers: Vec<String> = site
                    .writers
                    .iter()
                    .map(|(pid, comm)| format!("{}[{pid}]", names::terminal_text(comm)))
                    .collect();
                Line::from(format!(
                    "{:>6}  {}  {}",
                    site.pages,
                    writers.join(","),
                    names::terminal_text(&describe(&site.stack))
                ))
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .title(" call sites (pages: innermost frame < its callers) "),
        ),
        area,
    );
}
