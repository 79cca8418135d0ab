//! Compiled and indexed filters against the interpreter: random records and random filters
//! (every form the compiler knows, and some it leaves to the interpreter), each pair evaluated
//! both ways. All the filters of a run are in one [`FilterIndex`], as a topic's are; a filter
//! that is not a candidate for a record counts as `false` without evaluation, as in the hub.
//! The results must agree: the same boolean, or an error on both sides (an error counts as no
//! match). Deterministic: a fixed seed per test; `LAKEWIRE_DIFF_CASES` sets the total number of
//! cases (default 1,000,000, split across the tests below so they run in parallel).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Filter, FilterIndex, Limits, context, env};
use crate::record::Record;

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIELDS: &[&str] = &["a", "b", "n", "s", "l", "m"];
const INDICES: &[&str] = &["[0]", "[1]", "[-1]", "[0u]"];
const HEADERS: &[&str] = &["source", "h", "x"];
const STRINGS: &[&str] = &[
    "", "a", "ab", "abc", "b", "A", "é", "a.b", "Ab1", "10", "web",
];

fn scalar(r: &mut Rng) -> Value {
    let kind = r.below(14);
    scalar_of(r, kind)
}

fn scalar_of(r: &mut Rng, kind: usize) -> Value {
    match kind {
        0 => Value::Null,
        1 => Value::Bool(r.chance(50)),
        2 => json!(*r.pick(&[-3i64, -1, 0, 1, 2, 3, 10])),
        3 => json!(*r.pick(&[
            i64::MAX,
            i64::MIN,
            9_007_199_254_740_993,
            9_007_199_254_740_992,
            -9_007_199_254_740_993
        ])),
        4 => json!(*r.pick(&[
            u64::MAX,
            9_223_372_036_854_775_808u64,
            18_446_744_073_709_551_000
        ])),
        5 => json!(*r.pick(&[
            2.0f64,
            1.5,
            -0.0,
            0.5,
            1e300,
            9_007_199_254_740_992.0,
            10.0,
            -1.0
        ])),
        _ => json!(*r.pick(STRINGS)),
    }
}

fn json_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth == 0 { 8 } else { 10 }) {
        8 => Value::Array((0..r.below(4)).map(|_| json_value(r, depth - 1)).collect()),
        9 => object(r, depth - 1),
        _ => scalar(r),
    }
}

fn object(r: &mut Rng, depth: usize) -> Value {
    let mut m = Map::new();
    for f in FIELDS {
        if !r.chance(85) {
            continue;
        }
        // Mostly the field's own type, so that comparisons often compare like with like.
        let v = match (*f, r.chance(80)) {
            ("a" | "n", true) => {
                let kind = 2 + r.below(4);
                scalar_of(r, kind)
            }
            ("b", true) => Value::Bool(r.chance(50)),
            ("s", true) => json!(*r.pick(STRINGS)),
            ("l", true) => Value::Array((0..r.below(4)).map(|_| scalar(r)).collect()),
            ("m", true) if depth > 0 => object(r, depth - 1),
            _ => json_value(r, depth),
        };
        m.insert((*f).to_string(), v);
    }
    Value::Object(m)
}

fn record(r: &mut Rng) -> Record {
    let value = if r.chance(95) {
        object(r, 2)
    } else {
        json_value(r, 1)
    };
    let key = r.chance(80).then(|| (*r.pick(STRINGS)).to_string());
    let timestamp = r
        .chance(80)
        .then(|| *r.pick(&[0i64, 1_700_000_000_000, 1_732_690_000_000]));
    let headers = (0..r.below(4))
        .map(|_| {
            let name = (*r.pick(HEADERS)).to_string();
            (name, r.chance(80).then(|| (*r.pick(STRINGS)).to_string()))
        })
        .collect();
    Record::new(
        Arc::from("t"),
        *r.pick(&[0, 1, 7]),
        *r.pick(&[0i64, 1, 42, 1000]),
        timestamp,
        key,
        Bytes::from(value.to_string()),
    )
    .with_headers(headers)
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "10",
    "42",
    "2.0",
    "1.5",
    "-0.0",
    "10.0",
    "1e300",
    "9223372036854775807",
    "9007199254740993",
    "9007199254740992.0",
    "18446744073709551615u",
    "9223372036854775808u",
    "3u",
    "0u",
    "1700000000000",
];
const TEXTS: &[&str] = &[
    "'a'", "\"ab\"", "''", "'b'", "'A'", "'é'", "'10'", "'web'", "'abc'",
];
const OTHERS: &[&str] = &["true", "false", "null"];

fn literal(r: &mut Rng) -> String {
    let pool = *r.pick(&[NUMBERS, NUMBERS, TEXTS, OTHERS]);
    (*r.pick(pool)).to_string()
}

/// A path and a literal of the same kind most of the time (a number field and a number), so
/// that comparisons often compare like with like.
fn typed(r: &mut Rng) -> (String, String) {
    let (paths, pool): (&[&str], &[&str]) = match r.below(10) {
        0..=4 => (
            &[
                "value.a",
                "value.n",
                "value[\"a\"]",
                "value.m.a",
                "value.l[0]",
                "partition",
                "offset",
                "timestamp",
            ],
            NUMBERS,
        ),
        5..=7 => (
            &[
                "value.s",
                "value[\"s\"]",
                "value.m.s",
                "key",
                "headers.source",
                "headers[\"h\"]",
            ],
            TEXTS,
        ),
        8 => (&["value.b", "value.m.b"], OTHERS),
        _ => return (path(r), literal(r)),
    };
    ((*r.pick(paths)).to_string(), (*r.pick(pool)).to_string())
}

fn path(r: &mut Rng) -> String {
    let mut p = match r.below(12) {
        0 => "key".to_string(),
        1 => "partition".to_string(),
        2 => "offset".to_string(),
        3 => "timestamp".to_string(),
        4 | 5 => {
            let h = *r.pick(HEADERS);
            return if r.chance(50) {
                format!("headers.{h}")
            } else {
                format!("headers[{h:?}]")
            };
        }
        _ => "value".to_string(),
    };
    if p != "value" && !r.chance(5) {
        return p;
    }
    if r.chance(80) {
        // Down through the nested object, perhaps into the list.
        for _ in 0..r.below(3) {
            p.push_str(if r.chance(70) { ".m" } else { "[\"m\"]" });
        }
        if r.chance(15) {
            p.push_str(".l");
            let index: &&str = r.pick(INDICES);
            p.push_str(index);
        } else {
            p.push_str(&format!(".{}", r.pick(FIELDS)));
        }
        return p;
    }
    for _ in 0..1 + r.below(3) {
        match r.below(10) {
            0 => {
                let index: &&str = r.pick(INDICES);
                p.push_str(index);
            }
            1 | 2 => p.push_str(&format!("[{:?}]", r.pick(FIELDS))),
            _ => p.push_str(&format!(".{}", r.pick(FIELDS))),
        }
    }
    p
}

fn operand(r: &mut Rng) -> String {
    if r.chance(75) { path(r) } else { literal(r) }
}

/// One comparison, test or call; with `fallback`, sometimes a form the compiler leaves to the
/// interpreter.
fn atom(r: &mut Rng, fallback: bool) -> String {
    let op = *r.pick(&["==", "!=", "<", "<=", ">", ">="]);
    let form = if fallback && r.chance(40) {
        22 + r.below(9)
    } else {
        r.below(22)
    };
    match form {
        0..=5 => {
            let (p, l) = typed(r);
            format!("{p} {op} {l}")
        }
        6 | 7 => {
            let (p, l) = typed(r);
            format!("{l} {op} {p}")
        }
        8 => format!("{} {op} {}", typed(r).0, typed(r).0),
        9 | 10 => {
            let (p, l) = typed(r);
            let mut items: Vec<String> = (0..r.below(3)).map(|_| typed(r).1).collect();
            items.insert(r.below(items.len() + 1), l);
            format!("{p} in [{}]", items.join(", "))
        }
        11 => format!("{} in {}", operand(r), path(r)),
        12 | 13 => format!("has({}.{})", path(r), r.pick(FIELDS)),
        14..=16 => {
            let f = *r.pick(&["startsWith", "endsWith", "contains"]);
            let arg = if r.chance(85) {
                format!("'{}'", r.pick(STRINGS))
            } else {
                operand(r)
            };
            format!("{}.{f}({arg})", path(r))
        }
        // Rarer: the interpreter compiles the pattern on every evaluation, slowly in a debug build.
        17 | 18 if r.chance(20) => {
            let re = *r.pick(&["^a", "b$", "a.b", "[0-9]", "^$", "(?i)A", "é", "^\\\\w+$"]);
            if r.chance(70) {
                format!("{}.matches('{re}')", path(r))
            } else {
                format!("matches({}, '{re}')", path(r))
            }
        }
        17 | 18 => {
            let (p, l) = typed(r);
            format!("{p} == {l}")
        }
        19 => path(r),
        20 => (*r.pick(&["true", "false", "null"])).to_string(),
        // Forms the compiler leaves to the interpreter.
        21 => comprehension(r),
        22 => format!("size({}) > 1", path(r)),
        23 => format!("{} + 1 > 2", path(r)),
        24 => format!("double({}) == {}", path(r), literal(r)),
        25 => format!("({} > 1 ? {} : false)", path(r), path(r)),
        26 => format!("{} * 2 == 4", path(r)),
        27 => format!("string({}) == '1'", path(r)),
        28 => format!("{}.matches({})", path(r), path(r)),
        29 => format!("{} in ['a', {}]", path(r), path(r)),
        _ => format!("{} == b'a'", path(r)),
    }
}

/// `range.exists(v, body)` or `range.all(v, body)` over a list, a map, the headers or a value
/// that is neither, its variable of any name (`value` too, shadowing the record's), its body
/// on the variable, the record and a nested comprehension on the variable.
fn comprehension(r: &mut Rng) -> String {
    let var = *r.pick(&["x", "i", "value", "item"]);
    let range = *r.pick(&[
        "value.l",
        "value.l",
        "value.m",
        "value.m.l",
        "headers",
        "value",
        "value.s",
        "key",
    ]);
    let quantifier = *r.pick(&["exists", "all"]);
    let op = *r.pick(&["==", "!=", "<", ">="]);
    let term = |r: &mut Rng| match r.below(8) {
        0 | 1 => format!("{var} {op} {}", literal(r)),
        2 => format!("{} == {var}", literal(r)),
        3 => format!("{var}.{} {op} {}", r.pick(FIELDS), literal(r)),
        4 => format!("has({var}.{})", r.pick(FIELDS)),
        5 => format!("{var}.startsWith('{}')", r.pick(STRINGS)),
        6 if var != "value" => {
            let inner = *r.pick(&["y", var]);
            format!(
                "{var}.{}.{}({inner}, {inner} == {})",
                r.pick(&["l", "m"]),
                r.pick(&["exists", "all"]),
                if inner == var {
                    literal(r)
                } else {
                    var.to_string()
                }
            )
        }
        _ => {
            let (p, l) = typed(r);
            format!("{p} {op} {l}")
        }
    };
    let body = match r.below(4) {
        0 => format!("{} && {}", term(r), term(r)),
        1 => format!("{} || !({})", term(r), term(r)),
        _ => term(r),
    };
    format!("{range}.{quantifier}({var}, {body})")
}

/// `inner` behind conjuncts the index places filters by (an equality, an `in` list, a range on
/// one path), often enough that most filters are indexed.
fn indexable(r: &mut Rng, inner: String) -> String {
    let (p, l) = typed(r);
    let access = match r.below(6) {
        0 | 1 => format!("{p} == {l}"),
        2 => {
            let items: Vec<String> = (0..r.below(4)).map(|_| typed(r).1).collect();
            format!("{p} in [{}]", items.join(", "))
        }
        3 => format!("{p} {} {l}", r.pick(&["<", "<=", ">", ">="])),
        _ => {
            let (lo, hi) = (typed(r).1, typed(r).1);
            let lower = *r.pick(&[">", ">="]);
            let upper = *r.pick(&["<", "<="]);
            if r.chance(50) {
                format!("{p} {lower} {lo} && {p} {upper} {hi}")
            } else {
                format!("{lo} {upper} {p} && {hi} {lower} {p}")
            }
        }
    };
    if r.chance(50) {
        format!("{access} && ({inner})")
    } else {
        format!("({inner}) && {access}")
    }
}

fn filter(r: &mut Rng, depth: usize, fallback: bool) -> String {
    if depth == 0 || r.chance(35) {
        return atom(r, fallback);
    }
    let sub = |r: &mut Rng| filter(r, depth - 1, fallback);
    match r.below(5) {
        0 => format!("!({})", sub(r)),
        1 | 2 => format!("{} && {}", sub(r), sub(r)),
        3 => format!("{} || {}", sub(r), sub(r)),
        _ => format!("({} || {}) && {}", sub(r), sub(r), sub(r)),
    }
}

const LIMITS: Limits = Limits {
    max_filter_bytes: 4096,
    max_filter_nodes: 400,
    max_fields: 4,
};

const FILTERS: usize = 500;
const TESTS: u64 = 4;

/// Runs `cases` (record, filter) pairs from `seed`; panics with examples on any disagreement.
fn run(seed: u64) {
    let total: usize = std::env::var("LAKEWIRE_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let records_needed = total.div_ceil(TESTS as usize).div_ceil(FILTERS);
    let started = std::time::Instant::now();
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let env = env();
    let mut filters: Vec<(String, Filter)> = Vec::new();
    while filters.len() < FILTERS {
        // One in five may hold forms that only the interpreter runs.
        let fallback = r.chance(20);
        let depth = r.below(4);
        let mut src = filter(&mut r, depth, fallback);
        if r.chance(50) {
            src = indexable(&mut r, src);
        }
        if let Ok(f) = Filter::compile(&src, &env, &LIMITS) {
            filters.push((src, f));
        }
    }
    let compiled_filters = filters
        .iter()
        .filter(|(_, f)| f.compiled().is_some())
        .count();
    let mut index = FilterIndex::default();
    for (i, (_, f)) in filters.iter().enumerate() {
        index.insert(i, Some(f));
    }
    let indexed = filters.len() - index.unindexed();
    let (mut cases, mut compiled_cases, mut skipped) = (0usize, 0usize, 0usize);
    let mut candidate = vec![false; filters.len()];
    let mut ids = Vec::new();
    // Of the compiled cases: true, false, error.
    let mut outcomes = [0usize; 3];
    let mut disagreements = Vec::new();
    for _ in 0..records_needed {
        let rec = record(&mut r);
        let ctx = context(&env, &rec);
        let mut lazy = None;
        ids.clear();
        index.candidates(&rec, &mut ids);
        candidate.fill(false);
        for &id in &ids {
            assert!(!candidate[id], "filter {id} is a candidate twice");
            candidate[id] = true;
        }
        for (i, (src, f)) in filters.iter().enumerate() {
            let native = if candidate[i] {
                f.matches_record(&rec, &env, &mut lazy)
            } else {
                skipped += 1;
                Ok(false)
            };
            let interpreted = f.matches(&ctx);
            cases += 1;
            compiled_cases += usize::from(f.compiled().is_some());
            if f.compiled().is_some() {
                outcomes[match interpreted {
                    Ok(true) => 0,
                    Ok(false) => 1,
                    Err(_) => 2,
                }] += 1;
            }
            // A filter the index leaves out must not match: false or an error (a record
            // without the indexed field is a candidate for none of the filters placed on it).
            let agree = match (&native, &interpreted) {
                _ if !candidate[i] => !matches!(interpreted, Ok(true)),
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            };
            if !agree && disagreements.len() < 12 {
                disagreements.push(format!(
                    "{src}\n  record: key={:?} ts={:?} headers={:?} value={}\n  compiled: \
                     {native:?} (candidate: {})\n  interpreter: {interpreted:?}",
                    rec.key,
                    rec.timestamp,
                    rec.headers,
                    String::from_utf8_lossy(&rec.value_json),
                    candidate[i]
                ));
            }
        }
    }
    println!(
        "seed {seed}: {cases} cases, {compiled_cases} compiled (true {}, false {}, error {}), {} \
         fallback, {skipped} left out by the index; {FILTERS} filters ({compiled_filters} \
         compiled, {indexed} indexed); {:.1?}",
        outcomes[0],
        outcomes[1],
        outcomes[2],
        cases - compiled_cases,
        started.elapsed()
    );
    // The index must have had work to do, or the run shows nothing about it.
    assert!(indexed > FILTERS / 3, "only {indexed} filters indexed");
    assert!(
        skipped > cases / 10,
        "the index left out only {skipped} of {cases}"
    );
    assert!(
        disagreements.is_empty(),
        "compiled and interpreted filters disagree:\n{}",
        disagreements.join("\n")
    );
}

#[test]
fn compiled_filters_agree_with_the_interpreter_1() {
    run(1);
}

#[test]
fn compiled_filters_agree_with_the_interpreter_2() {
    run(2);
}

#[test]
fn compiled_filters_agree_with_the_interpreter_3() {
    run(3);
}

#[test]
fn compiled_filters_agree_with_the_interpreter_4() {
    run(4);
}
