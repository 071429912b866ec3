//! Man pages from the command-line definition (clap_mangen): `mmapwatch(1)`
//! and one page per subcommand (`mmapwatch-trace(1)`, ...), each with an
//! EXAMPLES section. `cargo xtask docs` writes them for packaging.

use clap::CommandFactory as _;

use crate::cli::Cli;

/// What to type, after a sentence saying what it does, and what it
/// printed on a real run ("" for none shown).
pub struct Example {
    pub what: &'static str,
    pub command: &'static str,
    pub output: &'static str,
}

/// A subcommand's page: its name, its page's title, its examples.
pub struct Page {
    pub subcommand: &'static str,
    pub title: &'static str,
    pub examples: &'static [Example],
}

/// The subcommands with pages of their own, and their examples: what a
/// user types first, as strace's and perf's pages show (outputs from a
/// run on Linux 6.18, tracepoint backend).
pub const PAGES: &[Page] = &[
    Page {
        subcommand: "trace",
        title: "mmapwatch-trace",
        examples: &[
            Example {
                what: "Trace a command and its children; the table goes to stderr, its output stays its own:",
                command: "mmapwatch trace -- python3 writer.py",
                output: " PATH            PAGES  RANGES  FAULTS  WRITERS                WRITTEN_BACK  NOT_ON_DISK  SYNCS
 /tmp/mw-ex.bin      2  1,4          2  python3[7189](root):2             2            0  msync 1
1 file(s) modified through mmap, 2 page(s); 0.1s, backend tracepoint, lost events 0",
            },
            Example {
                what: "The same as JSON, read with jq (-o - puts the report on stdout):",
                command: "mmapwatch trace -j -o - -- ./build.sh | jq '.files[].path'",
                output: "",
            },
            Example {
                what: "Ten seconds, system-wide, only files under /var/lib/db:",
                command: "mmapwatch trace -d 10 --path-prefix /var/lib/db",
                output: "",
            },
            Example {
                what: "Stream each first write as a JSON line:",
                command: "mmapwatch trace --events - --comm postgres",
                output: "",
            },
            Example {
                what: "Record a minute, replay it later (see mmapwatch-report):",
                command: "mmapwatch trace -d 60 --record db.rec",
                output: "",
            },
        ],
    },
    Page {
        subcommand: "report",
        title: "mmapwatch-report",
        examples: &[
            Example {
                what: "The report a recorded trace printed, again, without root:",
                command: "mmapwatch report db.rec",
                output: "",
            },
            Example {
                what: "Only one command's writes, as JSON:",
                command: "mmapwatch report db.rec --comm postgres -j | jq '.files[].pages_written'",
                output: "",
            },
        ],
    },
    Page {
        subcommand: "top",
        title: "mmapwatch-top",
        examples: &[
            Example {
                what: "The dashboard, refreshed every second:",
                command: "mmapwatch top",
                output: "",
            },
            Example {
                what: "Tables for a log, every second, each row with its time:",
                command: "mmapwatch top -b -T -d 1 --path-prefix /tmp",
                output: "mmapwatch top: 2026-12-06T15:14:06Z, 1 file(s), 422 event(s), lost 0, interval 1.0s, backend tracepoint
TIME                    PAGES   +PAGES   FAULTS/S    COW WRITERS  SYNCS WRITEBACK  BY                        PATH
2026-12-06T15:14:06Z        1        0        0.0      0       1      1     clean  python3[7256](root)       /tmp/mw-ex2.bin",
            },
        ],
    },
    Page {
        subcommand: "export",
        title: "mmapwatch-export",
        examples: &[Example {
            what: "Prometheus metrics on port 9877, files under /data by name:",
            command: "mmapwatch export --listen 0.0.0.0:9877 --path-prefix /data",
            output: "",
        }],
    },
    Page {
        subcommand: "doctor",
        title: "mmapwatch-doctor",
        examples: &[
            Example {
                what: "What this kernel supports, and what to do where it lacks:",
                command: "mmapwatch doctor",
                output: "kernel   ok    6.18.44
btf      ok    /sys/kernel/btf/vmlinux: all struct offsets resolved
tracefs  ok    /sys/kernel/tracing
kprobe   no    no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel built without CONFIG_KPROBES
               → needs CONFIG_KPROBES=y and do_wp_page/finish_fault in /proc/kallsyms; --backend fentry or tracepoint otherwise",
            },
            Example {
                what: "The same for a script:",
                command: "mmapwatch doctor --json | jq .ok",
                output: "true",
            },
        ],
    },
];

/// `mmapwatch(1)`, or a subcommand's page (`mmapwatch-trace(1)`), as roff.
pub fn render(subcommand: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let top = Cli::command();
    let (command, examples) = match subcommand {
        None => (top, &[][..]),
        Some(name) => {
            let Some(page) = PAGES.iter().find(|page| page.subcommand == name) else {
                let names: Vec<&str> = PAGES.iter().map(|page| page.subcommand).collect();
                return Err(crate::error::UserError::Usage(format!(
                    "no man page for {name:?}: one of {}",
                    names.join(", ")
                ))
                .into());
            };
            let command = top
                .find_subcommand(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no subcommand {name}"))?
                .name(page.title);
            (command, page.examples)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(command).render(&mut out)?;
    if !examples.is_empty() {
        out.extend_from_slice(b".SH EXAMPLES\n");
        for example in examples {
            let mut block = format!(
                ".PP\n{}\n.PP\n.RS\n.nf\n{}\n",
                escape(example.what),
                escape(example.command)
            );
            for line in example.output.lines() {
                block.push_str(&escape(line));
                block.push('\n');
            }
            block.push_str(".fi\n.RE\n");
            out.extend_from_slice(block.as_bytes());
        }
    }
    Ok(out)
}

/// Text safe in roff: a backslash doubled, a leading dot or quote kept off
/// the line start.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_its_examples_and_names_its_subcommand() {
        for Page {
            subcommand: name,
            examples,
            ..
        } in PAGES
        {
            let roff = String::from_utf8(render(Some(name)).unwrap()).unwrap();
            assert!(
                roff.contains(&format!(".TH mmapwatch\\-{name} 1"))
                    || roff.contains(&format!(".TH mmapwatch-{name} 1")),
                "{roff}"
            );
            assert!(roff.contains(".SH EXAMPLES"), "{name}");
            assert_eq!(roff.matches(".nf\n").count(), examples.len(), "{name}");
        }
        assert!(render(Some("nonsense")).is_err());
        let top = String::from_utf8(render(None).unwrap()).unwrap();
        assert!(top.contains(".TH mmapwatch 1"), "{top}");
    }
}
