//! `trace --stacks` in the report: each file's call sites (JSON `stacks`)
//! and, under the table, the three that wrote most pages of each file.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    model::{
        call_sites::{describe_frames, CallSites, Frame},
        events::FileId,
        names,
    },
    trace::report::Report,
};

/// Call sites kept per file in the JSON; the rest are counted.
pub const MAX_STACKS_PER_FILE: usize = 32;

/// Call sites the table shows per file.
const SHOWN_PER_FILE: usize = 3;

/// One call site of a file.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StackReport {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Pages whose first write (by each writer) was made here.
    pub pages: u64,
    pub writers: Vec<StackWriter>,
    /// The walk stopped before the thread's entry (code without frame
    /// pointers): outer callers are missing, or one was skipped.
    pub partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StackWriter {
    pub pid: u32,
    pub comm: String,
}

/// What `--stacks` could not say.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CallSitesSummary {
    /// First writes, spans and windows sent without a stack: the kernel's
    /// stack map was full or had another stack in that slot, or the
    /// stack could not be read.
    pub writes_without_stack: u64,
    /// Call sites left out of files' `stacks` (past
    /// [`MAX_STACKS_PER_FILE`] a file).
    pub stacks_omitted: u64,
}

/// Adds each file's call sites to the report.
pub fn attach(report: &mut Report, sites: &CallSites) {
    let mut summary = CallSitesSummary {
        writes_without_stack: sites.without_stack,
        stacks_omitted: 0,
    };
    let ids: HashMap<(String, u64, u32), FileId> = sites
        .files()
        .map(|file| ((file.dev_string(), file.ino, file.generation), *file))
        .collect();
    for file in &mut report.files {
        let Some(id) = ids.get(&(file.dev.clone(), file.ino, file.generation)) else {
            file.stacks = Some(Vec::new());
            continue;
        };
        let all = sites.of(id);
        summary.stacks_omitted += all.len().saturating_sub(MAX_STACKS_PER_FILE) as u64;
        file.stacks = Some(
            all.into_iter()
                .take(MAX_STACKS_PER_FILE)
                .map(|site| StackReport {
                    frames: site.stack.frames.clone(),
                    pages: site.pages,
                    writers: site
                        .writers
                        .iter()
                        .map(|(pid, comm)| StackWriter {
                            pid: *pid,
                            comm: comm.clone(),
                        })
                        .collect(),
                    partial: site.stack.partial,
                    unresolved: site.stack.unresolved.clone(),
                })
                .collect(),
        );
    }
    if summary.writes_without_stack > 0 {
        report.warnings.push(format!(
            "{} first write(s) have no call site (see call_sites)",
            summary.writes_without_stack
        ));
    }
    report.call_sites = Some(summary);
}

/// The table's call-site lines: per file its [`SHOWN_PER_FILE`] call
/// sites with most pages, innermost frame first. Empty without
/// `--stacks`.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for file in &report.files {
        let Some(stacks) = file.stacks.as_ref().filter(|stacks| !stacks.is_empty()) else {
            continue;
        };
        if out.is_empty() {
            out.push_str("\nCALL SITES (pages: innermost frame < its callers)\n");
        }
        let path = file.path.as_deref().map_or_else(
            || format!("<dev {} ino {}>", file.dev, file.ino),
            |path| names::terminal_text(path).into_owned(),
        );
        out.push_str(&path);
        out.push('\n');
        for stack in stacks.iter().take(SHOWN_PER_FILE) {
            let mut line = describe_frames(&stack.frames, stack.partial);
            if let Some(why) = &stack.unresolved {
                line.push_str(&format!(" [{why}]"));
            }
            let writers: Vec<String> = stack
                .writers
                .iter()
                .map(|w| format!("{}[{}]", names::terminal_text(&w.comm), w.pid))
                .collect();
            out.push_str(&format!(
                "  {:>6}  {}  {}\n",
                stack.pages,
                writers.join(","),
                names::terminal_text(&line)
            ));
        }
        if stacks.len() > SHOWN_PER_FILE {
            out.push_str(&format!(
                "  ... {} more call site(s) in the JSON report\n",
                stacks.len() - SHOWN_PER_FILE
            ));
        }
    }
    out
}
