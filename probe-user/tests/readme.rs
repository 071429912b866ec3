//! README's tables of losses are checked against the counters' one
//! declaration (probe-common's `counters`): a counter added there and not
//! documented fails here.

use probe_common::KERNEL_COUNTERS;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The README table row that starts with `| `key` |`.
fn row(key: &str) -> &'static str {
    let start = format!("| `{key}` |");
    README
        .lines()
        .find(|line| line.starts_with(&start))
        .unwrap_or_else(|| panic!("README has no row for `{key}`"))
}

/// The backquoted words of a line.
fn quoted(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_drops_row_names_every_counter_in_drops() {
    let documented = quoted(row("drops"));
    for counter in KERNEL_COUNTERS.iter().filter(|c| c.role.in_drops()) {
        assert!(
            documented.contains(&counter.name),
            "README's `drops` row lacks `{}` ({})",
            counter.name,
            counter.help()
        );
    }
}

#[test]
fn the_lost_events_metric_row_names_exactly_the_metric_reasons() {
    let documented: Vec<&str> = quoted(row("mmapwatch_lost_events_total"))
        .into_iter()
        .skip(1) // the metric's own name
        .collect();
    let mut declared: Vec<&str> = KERNEL_COUNTERS
        .iter()
        .filter(|c| c.role.is_metric_reason())
        .map(|c| c.name)
        .chain(["undecodable_records"])
        .collect();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort_unstable();
    declared.sort_unstable();
    assert_eq!(documented_sorted, declared, "{documented:?}");
}

#[test]
fn the_event_stream_type_row_names_every_record_kind_it_carries() {
    let documented = quoted(row("type"));
    // Every kind the wire format admits, found by the decoder's own
    // checked conversion rather than listed again here.
    let kinds = (0u32..256).filter_map(|raw| zerocopy::try_transmute!(raw).ok());
    let mut carried = 0;
    for kind in kinds {
        let kind: probe_common::RecordKind = kind;
        if let Some(name) = kind.stream_name() {
            carried += 1;
            assert!(
                documented.contains(&name),
                "README's event stream `type` row lacks `{name}` ({kind:?})"
            );
        }
    }
    assert!(carried >= 7, "only {carried} record kinds found");
}
