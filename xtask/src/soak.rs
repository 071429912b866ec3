//! `cargo xtask soak --minutes N [--churn]`: the exporter and the dashboard
//! under a steady mmap write load (or, with `--churn`, 2,000 new files a
//! second, each written through a mapping and deleted), scraped every 2 s.
//! RSS and open fds of both are sampled; after warm-up they must stay flat,
//! and no event may be lost.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{ensure_apt, mmapwatch_release, step, workspace_root};

const TMUX_SESSION: &str = "mmapwatch-soak";
/// Memory may wobble (allocator, scrape buffers); more than this is growth.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// Under churn the tracked files turn over all the time: allocator
/// fragmentation moves RSS more, with no growth trend.
const CHURN_RSS_SLACK_KIB: u64 = 32 * 1024;
/// Churn: new files a second (1.2 M in 10 minutes), and how long idle ones
/// are kept (`--retain`).
const CHURN_FILES_PER_SECOND: u32 = 2_000;
const CHURN_RETAIN: &str = "30s";

#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: u64,
    exporter_rss_kib: u64,
    exporter_fds: usize,
    dashboard_rss_kib: u64,
    dashboard_fds: usize,
    records: f64,
    write_faults: f64,
    lost: f64,
    kernel_file_entries: f64,
    files_tracked: f64,
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    // A status other than 2xx is an error here: a failed scrape. Asks for
    // OpenMetrics first, as Prometheus does.
    let mut response = ureq::get(format!("http://127.0.0.1:{port}{path}"))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .config()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .call()
        .context("scrape failed")?;
    Ok(response.body_mut().read_to_string()?)
}

/// The sum of every series of a metric family (a line filter, not a
/// parser crate: `prometheus-parse` reads the 0.0.4 text format, not the
/// OpenMetrics the soak scrapes, as Prometheus does).
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TmuxSession;

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", TMUX_SESSION])
            .status();
    }
}

pub fn run(minutes: u64, churn: bool) -> Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    ensure_apt(&["tmux"])?;
    crate::build_release_bins()?;
    let root = workspace_root();
    let mmapwatch = mmapwatch_release();
    let workload = root.join("target/release/mw-workload");
    let data = root.join("target/soak");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    step(&format!(
        "soak: exporter on 127.0.0.1:{port}, dashboard in tmux, {minutes} min{}",
        if churn { ", churn" } else { "" }
    ));
    let retain: &[&str] = if churn {
        &["--retain", CHURN_RETAIN]
    } else {
        &[]
    };
    let mut exporter = KillOnDrop(
        Command::new(&mmapwatch)
            .args([
                "export",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--interval",
                "1s",
            ])
            .args(retain)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the exporter")?,
    );
    let mut ready = String::new();
    BufReader::new(exporter.0.stderr.as_mut().context("exporter stderr")?).read_line(&mut ready)?;
    if !ready.contains("serving metrics") {
        bail!("the exporter did not start: {ready}");
    }

    let _ = Command::new("tmux")
        .args(["kill-session", "-t", TMUX_SESSION])
        .stderr(Stdio::null())
        .status();
    let dashboard = format!(
        "exec {} top --interval 500ms {}",
        mmapwatch.display(),
        retain.join(" ")
    );
    if !Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            TMUX_SESSION,
            "-x",
            "160",
            "-y",
            "48",
            &dashboard,
        ])
        .status()?
        .success()
    {
        bail!("could not start the dashboard in tmux");
    }
    let _tmux = TmuxSession;
    let pane = Command::new("tmux")
        .args(["display-message", "-p", "-t", TMUX_SESSION, "#{pane_pid}"])
        .output()?;
    let dashboard_pid: u32 = String::from_utf8_lossy(&pane.stdout)
        .trim()
        .parse()
        .context("dashboard pid")?;

    let total = Duration::from_secs(minutes * 60);
    // Churn: the tracked set turns over after --retain plus the kernel's
    // dirty wait (40 s); samples start once it has.
    let warmup = if churn {
        Duration::from_secs(90)
    } else {
        Duration::from_secs(10)
    };
    let mut load = if churn {
        let seconds = (warmup + total).as_secs().to_string();
        Command::new(&workload)
            .args(["churn", "--dir"])
            .arg(&data)
            .args(["--pages", "1", "--seconds", &seconds, "--per-second"])
            .arg(CHURN_FILES_PER_SECOND.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    } else {
        let seconds = (warmup + total).as_secs() + 30;
        Command::new(&workload)
            .args(["loop", "--dir"])
            .arg(&data)
            .args(["--files", "16", "--pages", "64", "--seconds"])
            .arg(seconds.to_string())
            .stderr(Stdio::null())
            .spawn()
    }
    .map(KillOnDrop)
    .context("starting the workload")?;

    // Scrapes every 2 s in the background; every one must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes, failures) = (stop.clone(), scrapes.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match http_get(port, "/metrics") {
                    Ok(body) if body.ends_with("# EOF\n") => {
                        scrapes.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };

    // Samples each minute; a 1-minute soak samples every 15 s so it still
    // has a trend to judge.
    let every = if minutes == 1 {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(60)
    };
    let started = Instant::now();
    std::thread::sleep(warmup);
    let mut samples = Vec::new();
    let sample = |at: Duration| -> Result<Sample> {
        let body = http_get(port, "/metrics")?;
        Ok(Sample {
            at_s: at.as_secs(),
            exporter_rss_kib: rss_kib(exporter.0.id())?,
            exporter_fds: open_fds(exporter.0.id())?,
            dashboard_rss_kib: rss_kib(dashboard_pid)?,
            dashboard_fds: open_fds(dashboard_pid)?,
            records: metric_sum(&body, "mmapwatch_events_total"),
            write_faults: metric_sum(&body, "mmapwatch_write_faults_total"),
            lost: metric_sum(&body, "mmapwatch_lost_events_total"),
            kernel_file_entries: metric_sum(&body, "mmapwatch_kernel_file_entries"),
            files_tracked: metric_sum(&body, "mmapwatch_files_tracked"),
        })
    };
    samples.push(sample(started.elapsed())?);
    while started.elapsed() < warmup + total {
        std::thread::sleep(every.min((warmup + total).saturating_sub(started.elapsed())));
        samples.push(sample(started.elapsed())?);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    // Which losses, by reason, for the failure to say.
    let lost_reasons: Vec<String> = http_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("mmapwatch_lost_events_total{") && !line.ends_with(" 0"))
        .map(str::to_string)
        .collect();

    let mut report = render(
        &samples,
        scrapes.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    if churn {
        // The churn workload ends on its own and says how many files it made.
        let mut summary = String::new();
        if let Some(stdout) = load.0.stdout.as_mut() {
            std::io::Read::read_to_string(stdout, &mut summary)?;
        }
        let files = summary
            .split("\"files\":")
            .nth(1)
            .and_then(|rest| rest.trim_end().trim_end_matches('}').parse::<u64>().ok())
            .with_context(|| format!("no file count from the churn workload: {summary}"))?;
        report.push_str(&format!("distinct files written and deleted: {files}\n"));
    }
    print!("{report}");
    std::fs::write(root.join("target/soak-report.md"), &report)?;
    let slack = if churn {
        CHURN_RSS_SLACK_KIB
    } else {
        RSS_SLACK_KIB
    };
    verdict(&samples, failures.load(Ordering::Relaxed), slack)
        .with_context(|| format!("losses by reason: {lost_reasons:?}"))
}

fn render(samples: &[Sample], scrapes: u64, failures: u64) -> String {
    let mut out = String::from(
        "| t (s) | exporter RSS (KiB) | exporter fds | dashboard RSS (KiB) | dashboard fds | records | write faults | lost | kernel file entries | files tracked |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in samples {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.at_s,
            s.exporter_rss_kib,
            s.exporter_fds,
            s.dashboard_rss_kib,
            s.dashboard_fds,
            s.records,
            s.write_faults,
            s.lost,
            s.kernel_file_entries,
            s.files_tracked
        ));
    }
    out.push_str(&format!("\nscrapes: {scrapes} ok, {failures} failed\n"));
    out
}

fn flat(label: &str, first: u64, last: u64, slack: u64) -> Result<()> {
    if last > first + slack {
        bail!("{label} grew from {first} to {last} (allowed {slack})");
    }
    Ok(())
}

fn verdict(samples: &[Sample], failures: u64, rss_slack_kib: u64) -> Result<()> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("no samples");
    };
    if failures > 0 {
        bail!("{failures} scrape(s) failed");
    }
    if last.lost > 0.0 {
        bail!("{} event(s) lost", last.lost);
    }
    if last.write_faults <= first.write_faults {
        bail!("the workload's faults did not reach the exporter");
    }
    flat(
        "exporter RSS (KiB)",
        first.exporter_rss_kib,
        last.exporter_rss_kib,
        rss_slack_kib,
    )?;
    flat(
        "dashboard RSS (KiB)",
        first.dashboard_rss_kib,
        last.dashboard_rss_kib,
        rss_slack_kib,
    )?;
    flat(
        "exporter fds",
        first.exporter_fds as u64,
        last.exporter_fds as u64,
        2,
    )?;
    flat(
        "dashboard fds",
        first.dashboard_fds as u64,
        last.dashboard_fds as u64,
        2,
    )?;
    step("soak: RSS and fds stayed flat");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_families_exactly() {
        let body = "mmapwatch_events_total 5\nmmapwatch_events_total_other 9\nmmapwatch_write_faults_total{comm=\"a\"} 2\nmmapwatch_write_faults_total{comm=\"b\"} 3\n";
        assert_eq!(metric_sum(body, "mmapwatch_events_total"), 5.0);
        assert_eq!(metric_sum(body, "mmapwatch_write_faults_total"), 5.0);
    }

    #[test]
    fn growth_beyond_slack_fails() {
        assert!(flat("x", 100, 108, 8).is_ok());
        assert!(flat("x", 100, 109, 8).is_err());
    }
}
