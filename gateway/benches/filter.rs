//! `cargo bench -p lakewire --bench filter`: one decoded record against 1, 100 and 10,000
//! subscription filters, on one core:
//!
//! - `compiled`: `Filter::matches_record`, the hub's path (every filter here compiles to a
//!   native predicate, so no CEL context is built);
//! - `interpreter`: the record converted to a CEL context once (`filter::context`), then each
//!   filter run by the `cel` interpreter (`Filter::matches`), as before compilation;
//! - `indexed`: the hub's path now: the topic's [`FilterIndex`] gives the candidate filters,
//!   and only those are evaluated (compiled).
//!
//! A second set, `device`, is the selective dashboard: n distinct equality filters
//! `value.device == 'dN'`, the record matching one; with the index its cost per record should
//! not grow with n.
//!
//! The filters are the shapes clients send: equality on a field, ranges, `in` lists, string
//! tests, `has`, `&&` / `||`; a few of each match the record. The record's JSON is parsed once,
//! outside the timing, for both paths (the hub parses it once per record either way). Before
//! timing, it checks the paths agree on every filter; after, it times each path and prints the
//! time per record and the ratios.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cel::Env;
use criterion::{BenchmarkId, Criterion, Throughput};
use lakewire::filter::{Filter, FilterIndex, Limits, context, env};
use lakewire::record::Record;

const LIMITS: Limits = Limits {
    max_filter_bytes: 4096,
    max_filter_nodes: 200,
    max_fields: 16,
};

fn record() -> Record {
    let value = r#"{"id":7,"region":"eu-3","amount":150.5,"qty":12,"status":"paid",
        "customer":{"id":"c-42","tier":"gold","country":"PT"},"tags":["new","promo"],
        "items":[{"sku":"A-1","n":2},{"sku":"B-7","n":1}],"note":null,"express":true,
        "device":"d7"}"#;
    Record::new(
        Arc::from("orders"),
        3,
        1_234_567,
        Some(1_732_690_000_000),
        Some("c-42".into()),
        Bytes::from(value),
    )
    .with_headers(vec![("source".into(), Some("web".into()))])
}

/// The `i`-th filter: one of a few realistic shapes, its constants varied by `i`.
fn filter_source(i: usize) -> String {
    let region = format!("eu-{}", i % 10);
    match i % 6 {
        0 => format!("value.region == '{region}'"),
        1 => format!(
            "value.amount > {}.0 && value.customer.tier == 'gold'",
            i % 300
        ),
        2 => format!(
            "value.status in ['paid', 'shipped'] && value.qty >= {}",
            i % 20
        ),
        3 => format!("key.startsWith('c-{}') || headers.source == 'app'", i % 50),
        4 => format!(
            "has(value.customer.country) && value.customer.country == '{}'",
            ["PT", "ES", "FR"][i % 3]
        ),
        _ => format!(
            "value.express && value.id != {} && !(value.region == '{region}')",
            i % 9
        ),
    }
}

fn filters(env: &Arc<Env>, n: usize) -> Vec<Filter> {
    (0..n)
        .map(|i| {
            let src = filter_source(i);
            let f = Filter::compile(&src, env, &LIMITS).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert!(f.compiled().is_some(), "{src} did not compile");
            f
        })
        .collect()
}

fn compiled(r: &Record, env: &Arc<Env>, fs: &[Filter]) -> usize {
    let mut ctx = None;
    fs.iter()
        .filter(|f| f.matches_record(r, env, &mut ctx) == Ok(true))
        .count()
}

fn index(fs: &[Filter]) -> FilterIndex<usize> {
    let mut index = FilterIndex::default();
    for (i, f) in fs.iter().enumerate() {
        index.insert(i, Some(f));
    }
    index
}

fn indexed(
    r: &Record,
    env: &Arc<Env>,
    fs: &[Filter],
    index: &FilterIndex<usize>,
    ids: &mut Vec<usize>,
) -> usize {
    let mut ctx = None;
    ids.clear();
    index.candidates(r, ids);
    ids.iter()
        .filter(|&&i| fs[i].matches_record(r, env, &mut ctx) == Ok(true))
        .count()
}

fn device_filters(env: &Arc<Env>, n: usize) -> Vec<Filter> {
    (0..n)
        .map(|i| {
            let src = format!("value.device == 'd{i}'");
            Filter::compile(&src, env, &LIMITS).unwrap_or_else(|e| panic!("{src}: {e}"))
        })
        .collect()
}

fn interpreted(r: &Record, env: &Arc<Env>, fs: &[Filter]) -> usize {
    let ctx = context(env, r);
    fs.iter().filter(|f| f.matches(&ctx) == Ok(true)).count()
}

/// Seconds per call of `f` over `n` filters: as many calls as make about a million filter
/// evaluations (at least 2,000), timed together.
fn per_call(n: usize, mut f: impl FnMut() -> usize) -> f64 {
    let calls = (1_000_000 / n).max(2_000);
    f();
    let start = Instant::now();
    (0..calls).for_each(|_| {
        black_box(f());
    });
    start.elapsed().as_secs_f64() / calls as f64
}

fn main() {
    let env = env();
    let r = record();
    r.value();
    let sizes = [1usize, 100, 10_000];
    let sets: Vec<Vec<Filter>> = sizes.iter().map(|&n| filters(&env, n)).collect();
    let all = &sets[sets.len() - 1];
    let indexes: Vec<FilterIndex<usize>> = sets.iter().map(|fs| index(fs)).collect();
    let ctx = context(&env, &r);
    for f in all {
        assert_eq!(
            f.matches_record(&r, &env, &mut None),
            f.matches(&ctx),
            "{f:?}"
        );
    }
    let mut ids = Vec::new();
    let last = &indexes[indexes.len() - 1];
    assert_eq!(
        indexed(&r, &env, all, last, &mut ids),
        compiled(&r, &env, all)
    );
    let devices = [10usize, 10_000];
    let device_sets: Vec<Vec<Filter>> = devices.iter().map(|&n| device_filters(&env, n)).collect();
    let device_indexes: Vec<FilterIndex<usize>> = device_sets.iter().map(|fs| index(fs)).collect();
    for (fs, ix) in device_sets.iter().zip(&device_indexes) {
        assert_eq!(indexed(&r, &env, fs, ix, &mut ids), 1);
        assert_eq!(compiled(&r, &env, fs), 1);
    }
    println!(
        "{} of {} filters match the record",
        compiled(&r, &env, all),
        all.len()
    );

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("filter");
    for (n, fs) in sizes.iter().zip(&sets) {
        g.throughput(Throughput::Elements(*n as u64));
        g.bench_with_input(BenchmarkId::new("compiled", n), fs, |b, fs| {
            b.iter(|| compiled(&r, &env, fs))
        });
        g.bench_with_input(BenchmarkId::new("interpreter", n), fs, |b, fs| {
            b.iter(|| interpreted(&r, &env, fs))
        });
    }
    for ((n, fs), ix) in sizes.iter().zip(&sets).zip(&indexes) {
        g.throughput(Throughput::Elements(*n as u64));
        g.bench_with_input(BenchmarkId::new("indexed", n), fs, |b, fs| {
            b.iter(|| indexed(&r, &env, fs, ix, &mut ids))
        });
    }
    for ((n, fs), ix) in devices.iter().zip(&device_sets).zip(&device_indexes) {
        g.throughput(Throughput::Elements(*n as u64));
        g.bench_with_input(BenchmarkId::new("device-indexed", n), fs, |b, fs| {
            b.iter(|| indexed(&r, &env, fs, ix, &mut ids))
        });
    }
    g.finish();
    c.final_summary();

    println!();
    println!("one record against n filters, one core (time per record):");
    let us = |secs: f64| secs * 1e6;
    for ((n, fs), ix) in sizes.iter().zip(&sets).zip(&indexes) {
        let idx = per_call(*n, || indexed(&r, &env, fs, ix, &mut ids));
        let comp = per_call(*n, || compiled(&r, &env, fs));
        let interp = per_call(*n, || interpreted(&r, &env, fs));
        println!(
            "  mixed  n = {n:>6}: indexed {:>10.2} µs, compiled {:>10.2} µs, interpreter {:>10.2} µs; interpreter/indexed {:.1}x",
            us(idx),
            us(comp),
            us(interp),
            interp / idx
        );
    }
    let mut device_costs = Vec::new();
    for ((n, fs), ix) in devices.iter().zip(&device_sets).zip(&device_indexes) {
        let idx = per_call(*n, || indexed(&r, &env, fs, ix, &mut ids));
        let comp = per_call(*n, || compiled(&r, &env, fs));
        device_costs.push(idx);
        println!(
            "  device n = {n:>6}: indexed {:>10.2} µs, compiled (no index) {:>10.2} µs",
            us(idx),
            us(comp)
        );
    }
    println!(
        "  device: indexed cost at 10,000 / at 10 filters: {:.2}x (target: within 2x)",
        device_costs[1] / device_costs[0]
    );
}
