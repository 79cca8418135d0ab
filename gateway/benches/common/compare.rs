//! Two paths over the same records measured alike: Criterion on both, then each alone for a
//! fixed time, giving their records/s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

/// Records per second of `f` (which handles `per_call` records per call), run for about `secs`.
pub fn rate(per_call: usize, secs: f64, mut f: impl FnMut() -> usize) -> f64 {
    black_box(f());
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        black_box(f());
        n += per_call;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Criterion group `group` over `ours` and `base` (each handles `per_call` records per call),
/// then the records/s of each run alone for 3 s.
pub fn ours_and_base(
    group: &str,
    per_call: usize,
    (ours_name, mut ours): (&str, impl FnMut() -> usize),
    (base_name, mut base): (&str, impl FnMut() -> usize),
) -> (f64, f64) {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(per_call as u64));
    g.bench_function(ours_name, |b| b.iter(&mut ours));
    g.bench_function(base_name, |b| b.iter(&mut base));
    g.finish();
    c.final_summary();
    (rate(per_call, 3.0, ours), rate(per_call, 3.0, base))
}
