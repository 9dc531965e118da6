//! FFmpeg's `-progress` parser: one block of key=value lines per sample,
//! as FFmpeg writes twice a second per job.
//! `cargo bench -p ffleet-load --bench progress`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ffleet_core::ffmpeg::ProgressParser;

const BLOCK: &str = "frame=1234\nfps=59.94\nstream_0_0_q=28.0\nbitrate=1534.2kbits/s\n\
total_size=9437184\nout_time_us=49200000\nout_time_ms=49200000\nout_time=00:00:49.200000\n\
dup_frames=0\ndrop_frames=0\nspeed=2.37x\nprogress=continue\n";

fn bench(c: &mut Criterion) {
    let lines: Vec<&str> = BLOCK.lines().collect();
    let mut group = c.benchmark_group("progress_parser");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_sample", |b| {
        let mut parser = ProgressParser::default();
        b.iter(|| {
            let mut sample = None;
            for line in &lines {
                if let Some(s) = parser.feed(std::hint::black_box(line)) {
                    sample = Some(s);
                }
            }
            sample
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
