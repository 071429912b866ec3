//! The Prometheus text format (0.0.4), for scrapers and tools that do not
//! ask for OpenMetrics (`promtool check metrics`, curl, older agents).
//!
//! prometheus-client encodes OpenMetrics text and protobuf only, so the
//! OpenMetrics body is rewritten here; no maintained crate converts
//! between the two. The differences that matter for what mmapwatch
//! exports: a counter family `x` is named `x_total` in its HELP and TYPE
//! lines, `_created` samples, `# UNIT` and `# EOF` do not exist, an info
//! family becomes a gauge named `x_info`, and HELP escapes only `\` and
//! newlines.

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// Rewrites an OpenMetrics text body in the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE in OpenMetrics; the name it is written under
    // depends on the type.
    let mut pending_help: Option<(&str, &str)> = None;
    // The current counter family's `_created` sample name: dropped.
    let mut created: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (exposed, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            created = (kind == "counter").then(|| format!("{name}_created"));
            if let Some((help_name, text)) = pending_help.take() {
                if help_name == name {
                    // OpenMetrics also escapes `"` in HELP; 0.0.4 does not.
                    let text = text.replace("\\\"", "\"");
                    out.push_str(&format!("# HELP {exposed} {text}\n"));
                }
            }
            out.push_str(&format!("# TYPE {exposed} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not in the Prometheus text format.
            continue;
        }
        if let Some(rest) = created.as_deref().and_then(|name| line.strip_prefix(name)) {
            if rest.starts_with(['{', ' ']) {
                continue;
            }
        }
        out.push_str(without_exemplar(line));
        out.push('\n');
    }
    out
}

/// A sample line up to its value and timestamp: an exemplar (` # {...}`
/// after them) is OpenMetrics only. The label set is skipped as the
/// grammar reads it, quoted values with their escapes, so a value holding
/// ` # ` or `}` (a file name, a process name) is never cut.
fn without_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut at = bytes
        .iter()
        .position(|&b| b == b'{' || b == b' ')
        .unwrap_or(bytes.len());
    if bytes.get(at) == Some(&b'{') {
        let mut quoted = false;
        at += 1;
        while at < bytes.len() {
            match bytes[at] {
                // Only `\\`, `\"` and `\n` occur; each is two bytes.
                b'\\' if quoted => at += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => break,
                _ => {}
            }
            at += 1;
        }
    }
    match line.get(at..).and_then(|rest| rest.find(" # ")) {
        Some(exemplar) => &line[..at + exemplar],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_lose_created_and_eof() {
        let openmetrics = "\
# HELP mmapwatch_write_faults Write faults through \\\"shared\\\" mappings.
# TYPE mmapwatch_write_faults counter
mmapwatch_write_faults_total{comm=\"db\"} 3
mmapwatch_write_faults_created{comm=\"db\"} 1700000000.0
# HELP mmapwatch_build Build.
# TYPE mmapwatch_build info
mmapwatch_build_info{version=\"0.1.0\"} 1
# HELP mmapwatch_ring_size_bytes Ring size.
# TYPE mmapwatch_ring_size_bytes gauge
# UNIT mmapwatch_ring_size_bytes bytes
mmapwatch_ring_size_bytes 262144
# HELP mmapwatch_latency_seconds Latency.
# TYPE mmapwatch_latency_seconds histogram
mmapwatch_latency_seconds_bucket{le=\"+Inf\"} 2 # {trace=\"x\"} 1.0
mmapwatch_latency_seconds_sum 0.5
mmapwatch_latency_seconds_count 2
# EOF
";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "\
# HELP mmapwatch_write_faults_total Write faults through \"shared\" mappings.
# TYPE mmapwatch_write_faults_total counter
mmapwatch_write_faults_total{comm=\"db\"} 3
# HELP mmapwatch_build_info Build.
# TYPE mmapwatch_build_info gauge
mmapwatch_build_info{version=\"0.1.0\"} 1
# HELP mmapwatch_ring_size_bytes Ring size.
# TYPE mmapwatch_ring_size_bytes gauge
mmapwatch_ring_size_bytes 262144
# HELP mmapwatch_latency_seconds Latency.
# TYPE mmapwatch_latency_seconds histogram
mmapwatch_latency_seconds_bucket{le=\"+Inf\"} 2
mmapwatch_latency_seconds_sum 0.5
mmapwatch_latency_seconds_count 2
"
        );
    }

    #[test]
    fn label_values_that_look_like_exemplars_or_label_ends_are_kept_whole() {
        let sample = r#"mmapwatch_file_pages_written{path="/a # b",fs="ext4",mount="/"} 4"#;
        assert_eq!(without_exemplar(sample), sample);
        let comm = r#"mmapwatch_pages_first_written_total{comm="c\" # {x=\"1\"}",cgroup="}\\"} 1"#;
        assert_eq!(without_exemplar(comm), comm);
        let with_exemplar = format!("{comm} # {{trace=\"x\"}} 1.0");
        assert_eq!(without_exemplar(&with_exemplar), comm);
        assert_eq!(without_exemplar("up 1 # {a=\"b\"} 1"), "up 1");
    }

    #[test]
    fn openmetrics_only_when_the_scraper_asks_for_it() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
