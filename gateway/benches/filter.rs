//! `cargo bench -p lakewire --bench filter`: one decoded record against 1, 100 and 10,000
//! subscription filters, on one core:
//!
//! - `compiled`: `Filter::matches_record`, the hub's path (every filter here compiles to a
//!   native predicate, so no CEL context is built);
//! - `interpreter`: the record converted to a CEL context once (`filter::context`), then each
//!   filter run by the `cel` interpreter (`Filter::matches`), as before compilation.
//!
//! The filters are the shapes clients send: equality on a field, ranges, `in` lists, string
//! tests, `has`, `&&` / `||`; a few of each match the record. The record's JSON is parsed once,
//! outside the timing, for both paths (the hub parses it once per record either way). Before
//! timing, it checks the two paths agree on every filter; after, it times about a million
//! filter evaluations of each and prints filters/s and their ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cel::Env;
use criterion::{BenchmarkId, Criterion, Throughput};
use lakewire::filter::{Filter, Limits, context, env};
use lakewire::record::Record;

const LIMITS: Limits = Limits {
    max_filter_bytes: 4096,
    max_filter_nodes: 200,
    max_fields: 16,
};

fn record() -> Record {
    let value = r#"{"id":7,"region":"eu-3","amount":150.5,"qty":12,"status":"paid",
        "customer":{"id":"c-42","tier":"gold","country":"PT"},"tags":["new","promo"],
        "items":[{"sku":"A-1","n":2},{"sku":"B-7","n":1}],"note":null,"express":true}"#;
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

fn interpreted(r: &Record, env: &Arc<Env>, fs: &[Filter]) -> usize {
    let ctx = context(env, r);
    fs.iter().filter(|f| f.matches(&ctx) == Ok(true)).count()
}

/// Filters evaluated per second by `f` over `n` filters: as many calls as make about a million
/// filter evaluations, timed together.
fn per_second(n: usize, mut f: impl FnMut() -> usize) -> f64 {
    let calls = (1_000_000 / n).max(20);
    f();
    let start = Instant::now();
    (0..calls).for_each(|_| {
        black_box(f());
    });
    (calls * n) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let env = env();
    let r = record();
    r.value();
    let sizes = [1usize, 100, 10_000];
    let sets: Vec<Vec<Filter>> = sizes.iter().map(|&n| filters(&env, n)).collect();
    let all = &sets[sets.len() - 1];
    let ctx = context(&env, &r);
    for f in all {
        assert_eq!(
            f.matches_record(&r, &env, &mut None),
            f.matches(&ctx),
            "{f:?}"
        );
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
    g.finish();
    c.final_summary();

    println!();
    println!("one record against n filters, one core (filters evaluated per second):");
    for (n, fs) in sizes.iter().zip(&sets) {
        let ours = per_second(*n, || compiled(&r, &env, fs));
        let base = per_second(*n, || interpreted(&r, &env, fs));
        println!(
            "  n = {n:>6}: compiled {ours:>13.0}/s, interpreter {base:>12.0}/s, ratio {:.1}x",
            ours / base
        );
    }
}
