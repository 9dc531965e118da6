//! The scheduler's placement over a deep queue: 10,000 queued jobs of mixed
//! sizes and priorities onto 1, 16 and 100 workers.
//! `cargo bench -p ffleet-load --bench placement`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ffleet_core::Resources;
use ffleet_core::placement::{Candidate, Slot, place};

fn queue(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            priority: (i % 7) as i32 - 3,
            created_at_ms: (i * 37 % 10_007) as i64,
            id: format!("job-{i:06}"),
            request: Resources::new(
                500 + (i % 4) as u32 * 500,
                (256 + (i % 8) as u64 * 256) << 20,
                1 << 30,
            ),
        })
        .collect()
}

fn slots(n: usize) -> Vec<Slot> {
    (0..n)
        .map(|_| Slot {
            free: Resources::new(16_000, 64 << 30, 500 << 30),
            max_jobs: 16,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let q = queue(10_000);
    let mut group = c.benchmark_group("place_10k_queued");
    for workers in [1, 16, 100] {
        let w = slots(workers);
        group.bench_with_input(BenchmarkId::from_parameter(workers), &w, |b, w| {
            b.iter(|| place(std::hint::black_box(&q), std::hint::black_box(w)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
