//! Large folios: one fault that maps a whole folio writable (a PMD, or a PTE batch) is reported as a labelled span; page-by-page mappings stay exact.

use integration_tests::{path_arg, ranges, require_root, scratch_dir, Workload};

use super::trace_workload;

/// ext4 caches a file filled by write(2) in large folios. A 2 MiB-aligned
/// mapping of a 2 MiB folio is mapped writable whole by the first write
/// fault (one PMD): later stores never fault, so every page of it is
/// reported. The workload says whether that happened.
#[test]
fn large_folio_mapped_by_one_pmd_reports_the_whole_span() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("large-folios.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &Workload::new("fill-then-map", &file)
            .size_pages(512)
            .pages("7,40,41,300"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    let pmd_mapped_kb: u64 = run
        .workload_value("pmd_mapped_kb")
        .unwrap()
        .parse()
        .unwrap();
    if pmd_mapped_kb == 2048 {
        assert_eq!(ranges(&entry["pages_written"]), vec![(0, 511)], "{entry:#}");
        assert_eq!(entry["huge_mapped_spans"], 1);
        assert_eq!(entry["write_faults"], 1);
        assert_eq!(entry["writers"][0]["pages"], 512);
    } else {
        // Mapped page by page: each store faulted.
        assert_eq!(pmd_mapped_kb, 0);
        assert_eq!(
            ranges(&entry["pages_written"]),
            vec![(7, 7), (40, 41), (300, 300)]
        );
        assert_eq!(entry["huge_mapped_spans"], 0);
        assert_eq!(entry["write_faults"], 4);
    }
    assert!(entry["folios_dirtied"].as_u64().unwrap() >= 1, "{entry:#}");
}

/// A file read through a shared mapping first: the kernel maps its 2 MiB
/// folios read-only, one PMD each. The first store to each makes all 512
/// pages writable at once (the PMD is dropped and mapped again writable),
/// and the other 511 stores never fault: each folio is reported whole, as a
/// labelled span, with the faulting page exact.
#[test]
fn pmd_mapped_folios_read_then_written_are_reported_whole() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("read-then-written.bin");
    const PAGES: u64 = 16_384;
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &Workload::new("fill-then-map", &file)
            .size_pages(PAGES)
            .flag("--all-pages")
            .flag("--read-first"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    // Every page was stored to, however the kernel mapped them.
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(0, PAGES - 1)],
        "{entry:#}"
    );
    assert_eq!(entry["writers"][0]["pages"], PAGES);
    let pmd_mapped_kb: u64 = run
        .workload_value("pmd_mapped_after_read_kb")
        .unwrap()
        .parse()
        .unwrap();
    let huge_folios = pmd_mapped_kb / 2048;
    assert_eq!(entry["huge_mapped_spans"], huge_folios, "{entry:#}");
    if huge_folios > 0 {
        // The faulting page of each is exact; the rest is span.
        assert_eq!(entry["span_pages_count"], huge_folios * 511, "{entry:#}");
    }
}

/// The same large folios through a window that holds no whole 2 MiB region
/// (file pages 1..=600): the kernel maps page by page, every page faults on
/// its own, and exactly those pages are reported.
#[test]
fn large_folio_mapped_page_by_page_reports_exact_pages() {
    require_root();
    let dir = scratch_dir();
    let file = dir.path().join("large-folios-offset.bin");
    let run = trace_workload(
        &["--path-prefix", &path_arg(dir.path())],
        &Workload::new("fill-then-map", &file)
            .size_pages(1024)
            .option("--offset-pages", 1)
            .option("--len-pages", 600)
            .pages("7,40,41,599"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.workload_value("pmd_mapped_kb").as_deref(), Some("0"));
    let entry = run.expect_file(&file);
    // Mapping page N is file page N + 1.
    assert_eq!(
        ranges(&entry["pages_written"]),
        vec![(8, 8), (41, 42), (600, 600)]
    );
    assert_eq!(entry["huge_mapped_spans"], 0);
    assert_eq!(entry["write_faults"], 4);
    // Dirtying works per folio: a folio can hold many of these pages
    // (ext4 on 6.18), or one (6.1, where a page still dirty from write(2)
    // is not dirtied again).
    let folios = entry["folios_dirtied"].as_u64().unwrap();
    assert!(folios >= 1, "{entry:#}");
    assert!(
        entry["pages_dirtied"].as_u64().unwrap() >= folios,
        "{entry:#}"
    );
}
