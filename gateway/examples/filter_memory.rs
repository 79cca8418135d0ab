//! `cargo run --release -p lakewire --example filter_memory`: does compiling and evaluating
//! filters leak? The fuzz target for filters grew to 970 MB over a run (BENCHMARKS.md,
//! "Fuzzing"); this runs the same work without the fuzzer or AddressSanitizer (whose quarantine
//! and the fuzzer's in-memory corpus also grow) and prints the process's resident memory after
//! each round of 50,000 distinct filters: compiled (`Shape::new`, the trial run included),
//! evaluated on a record (compiled path and interpreter), put in a topic's filter index and
//! taken out, then dropped. A leak grows every round; a bounded cache stops growing.

use std::sync::Arc;

use bytes::Bytes;
use lakewire::filter::{FilterIndex, Limits, Shape, context, env};
use lakewire::record::Record;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

/// The `i`-th filter: every form (compiled, interpreted, regex, comprehension), its literals
/// unique to `i` so no cache could serve two of them.
fn source(i: usize) -> String {
    match i % 8 {
        0 => format!("value.device == 'd{i}'"),
        1 => format!("value.b >= {i} && value.b < {}", i + 10),
        2 => format!("value.s.matches('^a{i}b*$')"),
        3 => format!("matches(value.s, 'x{i}|y')"),
        4 => format!("[1, 2, {i}].exists(x, x == value.b)"),
        5 => format!("value.s + '{i}' == 'abc'"),
        6 => format!("value.tags.all(t, t != 't{i}') || has(value.m{i})"),
        _ => format!("size(value.s) > {} && key.startsWith('k{i}')", i % 7),
    }
}

fn main() {
    let env = env();
    let limits = Limits {
        max_filter_bytes: 4096,
        max_filter_nodes: 200,
        max_fields: 16,
    };
    let record = Record::new(
        Arc::from("t"),
        1,
        42,
        Some(1_732_690_000_000),
        Some("k1".into()),
        Bytes::from_static(br#"{"device":"d8","b":17,"s":"abbb","tags":["a","b"],"m":{}}"#),
    );
    let rounds = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(8usize);
    const PER_ROUND: usize = 50_000;
    println!("round  filters  matched  rss MiB");
    println!("{:>5} {:>8} {:>8} {:>8.1}", 0, 0, 0, rss_mib());
    for round in 0..rounds {
        let mut matched = 0usize;
        let mut index = FilterIndex::default();
        for j in 0..PER_ROUND {
            let i = round * PER_ROUND + j;
            let shape = match Shape::new(Some(&source(i)), None, &env, &limits) {
                Ok(s) => s,
                Err(e) => panic!("{}: {e}", source(i)),
            };
            let mut ctx = None;
            if let Ok(Some(_)) = shape.render(&record, &env, &mut ctx, &mut None) {
                matched += 1;
            }
            if let Some(f) = &shape.filter {
                let _ = f.matches(&context(&env, &record));
            }
            index.insert(j, shape.filter.as_ref());
            if j % 2 == 0 {
                index.remove(j);
            }
        }
        let mut ids = Vec::new();
        index.candidates(&record, &mut ids);
        drop(index);
        println!(
            "{:>5} {:>8} {:>8} {:>8.1}",
            round + 1,
            (round + 1) * PER_ROUND,
            matched,
            rss_mib()
        );
    }
}
