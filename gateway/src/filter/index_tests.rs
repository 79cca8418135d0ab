//! The filter index, kind by kind: which filters are candidates for a record, and how that
//! changes as filters are added and removed. Every test also checks the index's promise: a
//! filter left out is one that evaluates to `false` (no error) on the record.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::FilterIndex;
use crate::filter::{Filter, Limits, env};
use crate::record::Record;

const LIMITS: Limits = Limits {
    max_filter_bytes: 4096,
    max_filter_nodes: 200,
    max_fields: 4,
};

fn filter(src: &str) -> Filter {
    Filter::compile(src, &env(), &LIMITS).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn record(value: &str) -> Record {
    Record::new(
        Arc::from("t"),
        1,
        42,
        Some(1_700_000_000_000),
        Some("k1".into()),
        Bytes::copy_from_slice(value.as_bytes()),
    )
    .with_headers(vec![("source".into(), Some("web".into()))])
}

/// An index of `filters` (ids are their positions) and the filters themselves.
struct Fixture {
    index: FilterIndex<usize>,
    filters: Vec<Option<Filter>>,
}

impl Fixture {
    fn new(sources: impl IntoIterator<Item = String>) -> Self {
        let mut f = Fixture {
            index: FilterIndex::default(),
            filters: Vec::new(),
        };
        for src in sources {
            f.add(&src);
        }
        f
    }

    fn add(&mut self, src: &str) -> usize {
        let id = self.filters.len();
        let compiled = filter(src);
        self.index.insert(id, Some(&compiled));
        self.filters.push(Some(compiled));
        id
    }

    fn remove(&mut self, id: usize) {
        self.index.remove(id);
        self.filters[id] = None;
    }

    /// The candidates for `value`, checked: each once, each a filter in the index, and no
    /// filter left out matches (it is false, or an error such as a missing field).
    fn candidates(&self, value: &str) -> BTreeSet<usize> {
        let r = record(value);
        let mut out = Vec::new();
        self.index.candidates(&r, &mut out);
        let set: BTreeSet<usize> = out.iter().copied().collect();
        assert_eq!(set.len(), out.len(), "a candidate came twice: {out:?}");
        for (id, f) in self.filters.iter().enumerate() {
            let Some(f) = f else {
                assert!(!set.contains(&id), "removed filter {id} is a candidate");
                continue;
            };
            if !set.contains(&id) {
                let got = f.matches_record(&r, &env(), &mut None);
                assert_ne!(got, Ok(true), "filter {id} left out for {value}");
            }
        }
        set
    }

    /// The filters that match `value`.
    fn matching(&self, value: &str) -> BTreeSet<usize> {
        let r = record(value);
        (0..self.filters.len())
            .filter(|&id| {
                self.filters[id]
                    .as_ref()
                    .is_some_and(|f| f.matches_record(&r, &env(), &mut None) == Ok(true))
            })
            .collect()
    }
}

#[test]
fn equality_finds_the_one_bucket_of_the_records_value() {
    let fx = Fixture::new((0..1000).map(|i| format!("value.device == 'd{i}'")));
    assert_eq!(fx.index.unindexed(), 0);
    assert_eq!(fx.candidates(r#"{"device":"d7"}"#), BTreeSet::from([7]));
    assert_eq!(fx.candidates(r#"{"device":"nope"}"#), BTreeSet::new());
    // Another type equals no string: no candidate, no error.
    assert_eq!(fx.candidates(r#"{"device":7}"#), BTreeSet::new());
    assert_eq!(fx.candidates(r#"{"device":["d7"]}"#), BTreeSet::new());
    // A missing field is an error for every filter on the path, never a match: none is a
    // candidate (issue 26 item 5; before, all 1,000 were evaluated).
    assert_eq!(fx.candidates(r#"{"other":1}"#), BTreeSet::new());
}

#[test]
fn numbers_of_every_kind_share_a_bucket_as_cel_equality_does() {
    let mut fx = Fixture::new([
        "value.n == 1".to_string(),
        "value.n == 1.0".into(),
        "value.n == 1u".into(),
        "value.n == 2".into(),
        "value.n == -0.0".into(),
        "value.n == null".into(),
        "value.n == true".into(),
    ]);
    assert_eq!(fx.candidates(r#"{"n":1.0}"#), BTreeSet::from([0, 1, 2]));
    assert_eq!(fx.candidates(r#"{"n":1}"#), fx.matching(r#"{"n":1}"#));
    assert_eq!(fx.candidates(r#"{"n":0}"#), BTreeSet::from([4]));
    assert_eq!(fx.candidates(r#"{"n":null}"#), BTreeSet::from([5]));
    assert_eq!(fx.candidates(r#"{"n":true}"#), BTreeSet::from([6]));
    // Beyond 2^53 an int and the double it rounds to share a key; evaluation decides.
    let big = fx.add("value.n == 9007199254740993");
    let c = fx.candidates(r#"{"n":9007199254740992}"#);
    assert!(c.contains(&big));
    assert!(!fx.matching(r#"{"n":9007199254740992}"#).contains(&big));
}

#[test]
fn in_lists_are_found_by_each_of_their_items() {
    let fx = Fixture::new([
        "value.s in ['a', 'b']".to_string(),
        "value.s in ['b', 'c', 'b']".into(),
        "value.s in []".into(),
        "value.n in [1, 2.5]".into(),
    ]);
    assert_eq!(fx.candidates(r#"{"s":"b","n":0}"#), BTreeSet::from([0, 1]));
    assert_eq!(fx.candidates(r#"{"s":"c","n":0}"#), BTreeSet::from([1]));
    assert_eq!(fx.candidates(r#"{"s":"z","n":0}"#), BTreeSet::new());
    // No `n`: the filter on it is an error, never a match, so no candidate.
    assert_eq!(fx.candidates(r#"{"s":"z"}"#), BTreeSet::new());
    assert_eq!(fx.candidates(r#"{"s":"z","n":2.5}"#), BTreeSet::from([3]));
    // No `s`: none of the path's filters, the empty list's either (errors all).
    assert_eq!(fx.candidates(r#"{"n":1}"#), BTreeSet::from([3]));
}

#[test]
fn numeric_ranges_are_found_in_the_interval_tree() {
    // The selective benchmark's filters: ten buckets each.
    let fx = Fixture::new((0..1000).map(|i| format!("value.b >= {i} && value.b < {}", i + 10)));
    assert_eq!(fx.index.unindexed(), 0);
    let c = fx.candidates(r#"{"b":500}"#);
    // Closed bounds in the index: 490 is a candidate (and does not match).
    assert_eq!(c, (490..=500).collect());
    assert_eq!(fx.matching(r#"{"b":500}"#), (491..=500).collect());
    assert_eq!(fx.candidates(r#"{"b":500.5}"#), (491..=500).collect());
    assert_eq!(fx.candidates(r#"{"b":-3}"#), BTreeSet::new());
    assert_eq!(fx.candidates(r#"{"b":5000}"#), BTreeSet::new());
    // A string cannot be ordered against a number: every range filter gives its error.
    assert_eq!(fx.candidates(r#"{"b":"500"}"#).len(), 1000);
}

#[test]
fn one_sided_and_mixed_ranges() {
    let fx = Fixture::new([
        "value.x > 10".to_string(),
        "value.x <= 3".into(),
        "10.5 < value.x".into(),
        "value.x > 1 && value.x > 20 && value.x < 30.0 && value.x <= 40".into(),
        "value.x > 5 && value.x < 2".into(),
        "offset >= 40 && offset < 45".into(),
        "timestamp > 1700000000001".into(),
    ]);
    assert_eq!(
        fx.candidates(r#"{"x":11,"other":1}"#),
        BTreeSet::from([0, 2, 5])
    );
    assert_eq!(
        fx.candidates(r#"{"x":25,"other":1}"#),
        BTreeSet::from([0, 2, 3, 5])
    );
    assert_eq!(fx.candidates(r#"{"x":2}"#), BTreeSet::from([1, 5]));
    assert_eq!(
        fx.candidates(r#"{"x":null}"#),
        BTreeSet::from([0, 1, 2, 3, 4, 5])
    );
}

#[test]
fn string_ranges_are_by_bytes() {
    let fx = Fixture::new([
        "value.s >= 'b' && value.s < 'd'".to_string(),
        "value.s > 'x'".into(),
        "key < 'k2'".into(),
        "value.s < 'B'".into(),
    ]);
    assert_eq!(fx.candidates(r#"{"s":"c"}"#), BTreeSet::from([0, 2]));
    assert_eq!(fx.candidates(r#"{"s":"é"}"#), BTreeSet::from([1, 2]));
    assert_eq!(fx.candidates(r#"{"s":"A"}"#), BTreeSet::from([2, 3]));
    // A number against strings: all of the path's string ranges.
    assert_eq!(fx.candidates(r#"{"s":1}"#), BTreeSet::from([0, 1, 2, 3]));
}

#[test]
fn the_smallest_bucket_is_the_access_predicate() {
    let fx =
        Fixture::new((0..200).map(|i| format!("value.region == 'eu' && value.device == 'd{i}'")));
    let c = fx.candidates(r#"{"region":"eu","device":"d77"}"#);
    // The first filter went by region (both buckets were empty), every other by device.
    assert_eq!(c, BTreeSet::from([0, 77]));
}

/// Issue 26 item 1: a filter that does not compile as a whole (a comprehension runs on the
/// interpreter) is still placed by its top-level conjuncts that do compile (before, it was a
/// candidate for every record).
#[test]
fn a_comprehension_beside_an_access_predicate_is_placed_by_it() {
    let fx = Fixture::new([
        "value.region == 'eu' && value.items.map(i, i.qty).exists(q, q > 5)".to_string(),
        "value.items.all(i, i.ok) && value.n > 10 && size(value.items) > 0".to_string(),
    ]);
    assert_eq!(fx.index.unindexed(), 0);
    for f in fx.filters.iter().flatten() {
        assert!(
            f.compiled().is_none(),
            "compiled as a whole: the test needs one that is not"
        );
    }
    let us = r#"{"region":"us","n":1,"items":[{"qty":9,"ok":true}]}"#;
    assert_eq!(fx.candidates(us), BTreeSet::new());
    let eu = r#"{"region":"eu","n":11,"items":[{"qty":9,"ok":true}]}"#;
    assert_eq!(fx.candidates(eu), BTreeSet::from([0, 1]));
    assert_eq!(fx.matching(eu), BTreeSet::from([0, 1]));
}

#[test]
fn filters_without_an_access_predicate_are_always_candidates() {
    let mut index = FilterIndex::default();
    let sources = [
        "value.a == 1 || value.b == 2",
        "!(value.a == 1)",
        "value.a != 1",
        "size(value.l) > 1",
        "value.s.startsWith('a')",
        "value.a == value.b",
    ];
    let filters: Vec<Filter> = sources.iter().map(|s| filter(s)).collect();
    for (i, f) in filters.iter().enumerate() {
        index.insert(i, Some(f));
    }
    index.insert(99, None);
    assert_eq!(index.unindexed(), sources.len() + 1);
    let mut out = Vec::new();
    index.candidates(&record(r#"{"a":3}"#), &mut out);
    out.sort_unstable();
    assert_eq!(out, vec![0, 1, 2, 3, 4, 5, 99]);
}

#[test]
fn headers_key_and_partition_paths() {
    let fx = Fixture::new([
        "headers.source == 'web'".to_string(),
        "headers['source'] == 'app'".into(),
        "key == 'k1'".into(),
        "key in ['k2', 'k3']".into(),
        "partition == 1".into(),
        "partition == 2".into(),
        "headers.missing == 'x'".into(),
    ]);
    // (A header the record lacks: `headers.missing` is an error, so 6 is no candidate.)
    assert_eq!(fx.candidates("{}"), BTreeSet::from([0, 2, 4]));
}

#[test]
fn subscribe_and_unsubscribe_keep_the_index_exact() {
    // Enough churn to rebuild the interval trees several times, with ranges, equalities and
    // unindexed filters mixed; the candidates are checked against evaluation each round.
    let mut fx = Fixture::new(Vec::new());
    let source = |i: usize| match i % 4 {
        0 => format!("value.b >= {} && value.b < {}", i % 97, i % 97 + 5),
        1 => format!("value.d == 'd{}'", i % 50),
        2 => format!("value.s > '{}'", i % 7),
        _ => format!("value.b == {} || value.d == 'd1'", i % 13),
    };
    let values = [
        r#"{"b":3,"d":"d1","s":"5"}"#,
        r#"{"b":50,"d":"d9","s":"a"}"#,
        r#"{"b":96.5,"d":"d49","s":""}"#,
        r#"{"d":"d2"}"#,
    ];
    let mut live = Vec::new();
    for round in 0..6 {
        for i in 0..300 {
            live.push(fx.add(&source(round * 300 + i)));
        }
        // Remove every third of those alive, oldest first.
        let (gone, kept): (Vec<_>, Vec<_>) = live.iter().enumerate().partition(|(n, _)| n % 3 == 0);
        for &(_, &id) in &gone {
            fx.remove(id);
        }
        live = kept.into_iter().map(|(_, &id)| id).collect();
        assert_eq!(fx.index.len(), live.len());
        for v in values {
            let c = fx.candidates(v);
            let m = fx.matching(v);
            assert!(
                m.is_subset(&c),
                "round {round}, {v}: a match is not a candidate"
            );
        }
    }
    // A removed id may come back.
    let id = live[0];
    let f = filter("value.d == 'back'");
    fx.index.insert(id, Some(&f));
    fx.filters[id] = Some(f);
    assert!(fx.candidates(r#"{"d":"back"}"#).contains(&id));
    for id in live {
        fx.remove(id);
    }
    assert!(fx.index.is_empty());
    assert_eq!(
        fx.candidates(r#"{"b":3,"d":"d1","s":"5"}"#),
        BTreeSet::new()
    );
}

/// Issue 26 item 5: a path's slot is freed when its last filter goes, and reused (before, every
/// path ever used stayed, checked for every record: a client cycling through field names grew
/// the index for good).
#[test]
fn a_path_is_freed_with_its_last_filter_and_its_slot_reused() {
    let mut fx = Fixture::new((0..50).map(|i| format!("value.f{i} == 1")));
    assert_eq!(fx.index.paths_in_use(), 50);
    let shared = fx.add("value.f0 == 2");
    for id in 0..50 {
        fx.remove(id);
    }
    // value.f0 still has a filter.
    assert_eq!(fx.index.paths_in_use(), 1);
    assert_eq!(fx.candidates(r#"{"f0":2}"#), BTreeSet::from([shared]));
    fx.remove(shared);
    assert_eq!(fx.index.paths_in_use(), 0);
    let again = fx.add("value.g == 'x'");
    assert_eq!(fx.index.paths_in_use(), 1);
    assert_eq!(
        fx.candidates(r#"{"g":"x","f0":1}"#),
        BTreeSet::from([again])
    );
    assert_eq!(fx.candidates(r#"{"g":"y"}"#), BTreeSet::new());
}

/// Issue 26 item 5: a record without an indexed field (a tombstone's null value, a missing
/// field) is a candidate for none of the filters placed on it (before, for all of them: a
/// tombstone made the index a full scan).
#[test]
fn a_record_without_the_indexed_field_is_a_candidate_for_none_of_its_filters() {
    let fx = Fixture::new((0..100).map(|i| format!("value.region == 'r{i}'")));
    for value in ["null", "{}", r#"{"other":1}"#, r#"{"region":null}"#, "[1]"] {
        assert_eq!(fx.candidates(value), BTreeSet::new(), "{value}");
    }
    assert_eq!(fx.candidates(r#"{"region":"r7"}"#), BTreeSet::from([7]));
}
