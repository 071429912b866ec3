//! The trace report as a human table: one row per file, then a summary
//! line and the warnings.

use std::collections::BTreeMap;

use crate::{
    model::{names, page_marks::PageMarks},
    trace::report::{FileReport, Report, SyncReport, WriterIds},
};

/// "msync 2, fsync 1" (failures said); "-" when none.
fn sync_summary(syncs: &BTreeMap<&'static str, SyncReport>) -> String {
    if syncs.is_empty() {
        return "-".into();
    }
    syncs
        .iter()
        .map(|(call, report)| match report.errors {
            0 => format!("{call} {}", report.calls),
            errors => format!("{call} {} ({errors} failed)", report.calls),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_ranges(ranges: &[[u64; 2]]) -> String {
    const SHOWN: usize = 4;
    let mut parts: Vec<String> = ranges
        .iter()
        .take(SHOWN)
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > SHOWN {
        parts.push(format!("+{} more", ranges.len() - SHOWN));
    }
    parts.join(",")
}

/// WRITTEN_BACK: pages of the file written back during the trace (by
/// the flusher, msync or fsync, whichever dirtied them); `-` on a
/// filesystem that never writes back (tmpfs).
fn written_back_cell(file: &FileReport) -> String {
    if has_writeback(file) {
        file.writeback_pages.to_string()
    } else {
        "-".into()
    }
}

/// NOT_ON_DISK: written pages still dirty or under writeback at the end
/// (the page cache's count); `unknown` where it cannot count them (before
/// Linux 6.5, or the file gone); `-` where nothing waits for a disk.
fn not_on_disk_cell(file: &FileReport) -> String {
    match file.not_yet_written_back_pages {
        Some(pages) => pages.to_string(),
        None if file.modified && has_writeback(file) => "unknown".into(),
        None => "-".into(),
    }
}

fn has_writeback(file: &FileReport) -> bool {
    crate::model::paths::fs_has_writeback(Some(file.fs.as_str()))
}

/// `(alice)` after a writer: its effective user's name, or its uid where
/// the host's passwd has none (a container's users).
fn user_mark(ids: &WriterIds) -> String {
    match (&ids.user, ids.euid) {
        (Some(name), _) => format!("({})", names::terminal_text(name)),
        (None, Some(euid)) => format!("({euid})"),
        (None, None) => String::new(),
    }
}

/// `@ctr:ID12` (or `@pod:UID8` for a pod's own cgroup) after a writer in
/// a container; nothing for one on the host.
fn container_mark(container: Option<&str>) -> String {
    let Some(container) = container else {
        return String::new();
    };
    if let Some((_, id)) = container.rsplit_once("container:") {
        return format!("@ctr:{}", names::terminal_text(id));
    }
    match container.strip_prefix("pod:") {
        Some(uid) => format!("@pod:{}", names::terminal_text(&uid[..uid.len().min(8)])),
        None => String::new(),
    }
}

/// The human table: one row per file, most pages written first.
pub fn render_table(report: &Report) -> String {
    use comfy_table::{presets::NOTHING, Cell, CellAlignment, ContentArrangement, Table};

    let mut out = String::new();
    if report.files.is_empty() {
        out.push_str("No file was modified through a shared mapping.\n");
    } else {
        let mut table = Table::new();
        table
            .load_preset(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header([
                "PATH",
                "PAGES",
                "RANGES",
                "FAULTS",
                "WRITERS",
                "WRITTEN_BACK",
                "NOT_ON_DISK",
                "SYNCS",
            ]);
        for file in &report.files {
            // Names and comms are escaped: a control character in one must
            // never act on the terminal or fake a line of the report.
            let mut path = file.path.as_deref().map_or_else(
                || format!("<dev {} ino {}>", file.dev, file.ino),
                |path| names::terminal_text(path).into_owned(),
            );
            if let Some(old) = &file.renamed_from {
                path.push_str(&format!(" (was {})", names::terminal_text(old)));
            }
            if file.deleted {
                path.push_str(" [deleted]");
            }
            let marks = PageMarks {
                written: file.pages_written_count,
                span: file.span_pages_count,
                possible: file.possibly_written_pages_count,
            };
            let only_cow = !file.modified && marks.possible == 0;
            let pages = if only_cow {
                format!("0 (cow {})", file.cow_pages_count)
            } else {
                marks.text()
            };
            let mut ranges = short_ranges(if only_cow {
                &file.cow_pages
            } else {
                &file.pages_written
            });
            if marks.possible > 0 {
                // Beside the written ones: the JSON's possibly_written_pages.
                let possible = format!("possible {}", short_ranges(&file.possibly_written_pages));
                ranges = if ranges.is_empty() {
                    possible
                } else {
                    format!("{ranges} {possible}")
                };
            }
            let writers = file
                .writers
                .iter()
                .map(|w| {
                    let comm = names::terminal_text(&w.comm);
                    let user = user_mark(&w.ids);
                    let place = container_mark(w.container.as_deref());
                    format!("{comm}[{}]{user}{place}:{}", w.pid, w.pages)
                })
                .collect::<Vec<_>>()
                .join(" ");
            table.add_row(vec![
                Cell::new(path),
                Cell::new(pages).set_alignment(CellAlignment::Right),
                Cell::new(ranges),
                Cell::new(file.write_faults).set_alignment(CellAlignment::Right),
                Cell::new(writers),
                Cell::new(written_back_cell(file)).set_alignment(CellAlignment::Right),
                Cell::new(not_on_disk_cell(file)).set_alignment(CellAlignment::Right),
                Cell::new(sync_summary(&file.syncs)),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
        out.push_str(&crate::trace::call_sites_report::render(report));
    }
    let modified = report.files.iter().filter(|f| f.modified).count();
    let pages: u64 = report.files.iter().map(|f| f.pages_written_count).sum();
    out.push_str(&format!(
        "{modified} file(s) modified through mmap, {pages} page(s); {:.1}s, backend {}, lost events {}\n",
        report.duration_s, report.backend, report.lost_events
    ));
    for warning in &report.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{container_mark, user_mark, WriterIds};

    #[test]
    fn a_writer_is_marked_by_its_user_or_else_its_uid() {
        let named = WriterIds {
            euid: Some(1000),
            user: Some("alice\u{1b}[2J".into()),
            ..WriterIds::default()
        };
        assert_eq!(user_mark(&named), "(alice\\u{1b}[2J)", "escaped");
        let numbered = WriterIds {
            euid: Some(100_000),
            ..WriterIds::default()
        };
        assert_eq!(user_mark(&numbered), "(100000)");
        assert_eq!(user_mark(&WriterIds::default()), "");
    }

    #[test]
    fn a_writer_in_a_container_is_marked_by_its_short_id() {
        assert_eq!(container_mark(None), "");
        assert_eq!(
            container_mark(Some("container:4f1c2a7e9b3d")),
            "@ctr:4f1c2a7e9b3d"
        );
        assert_eq!(
            container_mark(Some("pod:6f0d4c1e-2a3b-4c5d/container:4f1c2a7e9b3d")),
            "@ctr:4f1c2a7e9b3d"
        );
        assert_eq!(
            container_mark(Some("pod:6f0d4c1e-2a3b-4c5d")),
            "@pod:6f0d4c1e"
        );
    }
}
