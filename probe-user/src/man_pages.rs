//! Man pages from the command-line definition (clap_mangen): `mmapwatch(1)`
//! and one page per subcommand (`mmapwatch-trace(1)`, ...), each with an
//! EXAMPLES section. `cargo xtask docs` writes them for packaging.

use clap::CommandFactory as _;

use crate::cli::Cli;

/// What to type, after a sentence saying what it does.
type Example = (&'static str, &'static str);

/// A subcommand's page: its name, its page's title, its examples.
pub struct Page {
    pub subcommand: &'static str,
    pub title: &'static str,
    pub examples: &'static [Example],
}

/// The subcommands with pages of their own, and their examples: what a
/// user types first, as strace's and perf's pages show.
pub const PAGES: &[Page] = &[
    Page {
        subcommand: "trace",
        title: "mmapwatch-trace",
        examples: &[
            (
                "Trace a command and its children; the table goes to stderr, its output stays its own:",
                "mmapwatch trace -- python3 writer.py",
            ),
            (
                "The same as JSON, read with jq (-o - puts the report on stdout):",
                "mmapwatch trace -j -o - -- ./build.sh | jq '.files[].path'",
            ),
            (
                "Ten seconds, system-wide, only files under /var/lib/db:",
                "mmapwatch trace -d 10 --path-prefix /var/lib/db",
            ),
            (
                "Stream each first write as a JSON line:",
                "mmapwatch trace --events - --comm postgres",
            ),
        ],
    },
    Page {
        subcommand: "top",
        title: "mmapwatch-top",
        examples: &[
            ("The dashboard, refreshed every second:", "mmapwatch top"),
            (
                "Three tables for a log, every five seconds:",
                "mmapwatch top -b -d 5 -n 3",
            ),
        ],
    },
    Page {
        subcommand: "export",
        title: "mmapwatch-export",
        examples: &[(
            "Prometheus metrics on port 9877, files under /data by name:",
            "mmapwatch export --listen 0.0.0.0:9877 --path-prefix /data",
        )],
    },
    Page {
        subcommand: "doctor",
        title: "mmapwatch-doctor",
        examples: &[
            ("What this kernel supports, and what to do where it lacks:", "mmapwatch doctor"),
            ("The same for a script:", "mmapwatch doctor --json | jq .ok"),
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
        for (what, example) in examples {
            out.extend_from_slice(
                format!(
                    ".PP\n{}\n.PP\n.RS\n.nf\n{}\n.fi\n.RE\n",
                    escape(what),
                    escape(example)
                )
                .as_bytes(),
            );
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
