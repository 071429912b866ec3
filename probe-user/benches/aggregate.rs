//! Userspace throughput: decoding ring records and aggregating them, the
//! work done per event on one core.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use probe_common::{EventHeader, PageEvent, RecordKind};
use probe_user::model::{aggregate::Aggregate, events::decode};
use zerocopy::IntoBytes;

/// Records like a busy host's: 64 files, pages in runs, a few writers.
fn records(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut comm = [0u8; 16];
            comm[..8].copy_from_slice(b"postgres");
            PageEvent {
                header: EventHeader {
                    kind: RecordKind::SharedWrite as u32,
                    pid: 1000 + (i % 8) as u32,
                    tgid: 1000 + (i % 8) as u32,
                    dev: (254 << 20) | 1,
                    ino: 100 + (i % 64) as u64,
                    boot_ns: i as u64 * 1000,
                    cgroup_id: 1,
                    comm,
                    generation: 0,
                    creds: probe_common::Credentials::default(),
                },
                page: (i / 64) as u64 * 3,
                pages: 1,
                stack_id: probe_common::NO_STACK,
                _pad: 0,
            }
            .as_bytes()
            .to_vec()
        })
        .collect()
}

fn decode_and_aggregate(c: &mut Criterion) {
    const EVENTS: usize = 100_000;
    let input = records(EVENTS);
    let mut group = c.benchmark_group("userspace");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("decode_and_aggregate", |b| {
        b.iter_batched(
            Aggregate::new,
            |mut aggregate| {
                for record in &input {
                    if let Ok(event) = decode(record) {
                        aggregate.apply(&event);
                    }
                }
                aggregate
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decode_only", |b| {
        b.iter(|| input.iter().filter(|record| decode(record).is_ok()).count())
    });
    group.finish();
}

criterion_group!(benches, decode_and_aggregate);
criterion_main!(benches);
