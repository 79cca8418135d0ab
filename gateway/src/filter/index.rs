//! The filter index of a topic: which filters a record can match, found without evaluating the
//! others. Input: the topic's filters as they are subscribed and unsubscribed (by id), then
//! one record at a time; output: the ids of the *candidate* filters, a superset of those that
//! match. The hub evaluates only the candidates, so the cost of a record grows with the number
//! of filters that could match it, not with the number of filters.
//!
//! Each compiled filter is placed by one *access predicate*, a top-level conjunct that must
//! hold for it to match (Le Subscribe's clustering, Fabret et al., SIGMOD 2001): `path ==
//! literal` or `path in [literals]` in a hash index of the path, else the conjuncts `path <
//! literal` (and `<=`, `>`, `>=`) of one path as an interval in an interval tree of the path.
//! The rest of the filter (the residual) is evaluated for candidates only. Among a filter's
//! equalities the one with the smallest bucket now is chosen, so `value.region == 'eu' &&
//! value.device == 'd7'` goes by device when every filter pins region. Filters with no such
//! conjunct (`||` at the top, negations, fallback to the interpreter) and subscriptions without
//! a filter are candidates for every record.
//!
//! Exactness: a filter that is not a candidate would have been `false` without an error (CEL's
//! `&&` is false when any conjunct is false, errors elsewhere notwithstanding), so skipping it
//! changes neither results nor the filter-error count. When the record's value at a path
//! cannot be looked up in the index (the field is missing, or its type is not the literals'
//! type), every filter placed on that path is a candidate and meets its error or its `false`
//! by evaluation. Numbers are compared in the index as `f64` with closed bounds: a superset of
//! CEL's exact int/uint/double comparisons (the conversion is monotonic), never fewer.
//! `differential_tests` checks index and evaluation together against the interpreter.

use std::collections::HashMap;
use std::hash::Hash;

use super::Filter;
use super::compiled::{CmpOp, Compiled, FieldPath, Literal};
use super::intervals::{IdSet, Intervals};
use super::view::View;
use crate::record::Record;

/// The candidate filters of each record, among the filters subscribed (see the module docs).
#[derive(Debug)]
pub struct FilterIndex<Id> {
    /// Candidates for every record: no access predicate.
    always: IdSet<Id>,
    /// The paths filters are placed on, in the order they were first used.
    paths: Vec<PathIndex<Id>>,
    slots: HashMap<FieldPath, usize>,
    /// Slots of `paths` whose last filter went: reused for the next new path.
    free: Vec<usize>,
    placed: HashMap<Id, Placement>,
}

/// Where a filter is placed.
#[derive(Debug, Clone)]
enum Placement {
    Always,
    /// In the hash index of path `slot`, under these keys.
    Equal {
        slot: usize,
        keys: Vec<EqKey>,
    },
    /// In the numeric interval tree of path `slot`.
    Numbers {
        slot: usize,
    },
    /// In the string interval tree of path `slot`.
    Strings {
        slot: usize,
    },
}

/// A literal as the hash index keys it: values CEL finds equal have equal keys (numbers of
/// every kind by their `f64` value, so `1 == 1.0 == 1u`; equal keys are not always equal
/// values, which evaluation sorts out).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EqKey {
    Null,
    Bool(bool),
    Number(u64),
    Str(Box<str>),
}

impl EqKey {
    fn of(lit: &Literal) -> Option<Self> {
        Some(match lit {
            Literal::Null => EqKey::Null,
            Literal::Bool(b) => EqKey::Bool(*b),
            Literal::String(s) => EqKey::Str(s.as_str().into()),
            number => EqKey::Number(number_key(as_f64(number)?)?),
        })
    }
}

/// A literal number as `f64` (`None` for other literals).
#[allow(clippy::cast_precision_loss)]
fn as_f64(lit: &Literal) -> Option<f64> {
    match lit {
        Literal::Int(i) => Some(*i as f64),
        Literal::UInt(u) => Some(*u as f64),
        Literal::Double(d) => Some(*d),
        _ => None,
    }
}

/// A record's number as `f64` (`None` for other values).
#[allow(clippy::cast_precision_loss)]
fn view_f64(v: View<'_>) -> Option<f64> {
    match v {
        View::Int(i) => Some(i as f64),
        View::UInt(u) => Some(u as f64),
        View::Double(d) => Some(d),
        _ => None,
    }
}

/// The hash key of a number: its bits, `-0.0` as `0.0`; `None` for NaN (equal to nothing).
fn number_key(x: f64) -> Option<u64> {
    Num::new(x).map(|n| n.0.to_bits())
}

/// A number that is not NaN, `-0.0` made `0.0`: totally ordered.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Num(f64);

impl Num {
    fn new(x: f64) -> Option<Self> {
        (!x.is_nan()).then_some(Num(if x == 0.0 { 0.0 } else { x }))
    }
}

impl Eq for Num {}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The filters placed on one path.
#[derive(Debug)]
struct PathIndex<Id> {
    path: FieldPath,
    /// Every filter placed here: the candidates when the path cannot be looked up.
    members: IdSet<Id>,
    nulls: IdSet<Id>,
    bools: [IdSet<Id>; 2],
    numbers: HashMap<u64, IdSet<Id>>,
    strs: HashMap<Box<str>, IdSet<Id>>,
    number_ranges: Intervals<Num, Id>,
    str_ranges: Intervals<Box<str>, Id>,
}

impl<Id: Copy + Eq + Hash> PathIndex<Id> {
    fn new(path: FieldPath) -> Self {
        Self {
            path,
            members: IdSet::default(),
            nulls: IdSet::default(),
            bools: [IdSet::default(), IdSet::default()],
            numbers: HashMap::new(),
            strs: HashMap::new(),
            number_ranges: Intervals::default(),
            str_ranges: Intervals::default(),
        }
    }

    fn bucket(&mut self, key: &EqKey) -> &mut IdSet<Id> {
        match key {
            EqKey::Null => &mut self.nulls,
            EqKey::Bool(b) => &mut self.bools[usize::from(*b)],
            EqKey::Number(n) => self.numbers.entry(*n).or_default(),
            EqKey::Str(s) => self.strs.entry(s.clone()).or_default(),
        }
    }

    fn bucket_len(&self, key: &EqKey) -> usize {
        match key {
            EqKey::Null => self.nulls.len(),
            EqKey::Bool(b) => self.bools[usize::from(*b)].len(),
            EqKey::Number(n) => self.numbers.get(n).map_or(0, IdSet::len),
            EqKey::Str(s) => self.strs.get(s).map_or(0, IdSet::len),
        }
    }

    fn unbucket(&mut self, key: &EqKey, id: Id) {
        match key {
            EqKey::Number(n) => {
                if let Some(set) = self.numbers.get_mut(n) {
                    set.remove(id);
                    if set.is_empty() {
                        self.numbers.remove(n);
                    }
                }
            }
            EqKey::Str(s) => {
                if let Some(set) = self.strs.get_mut(s) {
                    set.remove(id);
                    if set.is_empty() {
                        self.strs.remove(s);
                    }
                }
            }
            other => {
                self.bucket(other).remove(id);
            }
        }
    }

    /// The candidates placed here for a record whose value at the path is `v`.
    fn lookup(&self, v: View<'_>, out: &mut Vec<Id>) {
        let ranges = |out: &mut Vec<Id>| {
            out.extend(self.number_ranges.all());
            out.extend(self.str_ranges.all());
        };
        match v {
            View::Str(s) => {
                if let Some(set) = self.strs.get(s) {
                    out.extend(set.iter());
                }
                self.str_ranges.stab(s, out);
                // A string against a number is an error: evaluated.
                out.extend(self.number_ranges.all());
            }
            View::Int(_) | View::UInt(_) | View::Double(_) => {
                if let Some(x) = view_f64(v).and_then(Num::new) {
                    if let Some(set) = self.numbers.get(&x.0.to_bits()) {
                        out.extend(set.iter());
                    }
                    self.number_ranges.stab(&x, out);
                }
                out.extend(self.str_ranges.all());
            }
            View::Bool(b) => {
                out.extend(self.bools[usize::from(b)].iter());
                ranges(out);
            }
            View::Null => {
                out.extend(self.nulls.iter());
                ranges(out);
            }
            // A list or map equals no scalar, and cannot be ordered: only the ranges, which
            // give their error by evaluation.
            View::List(_) | View::Map(_) | View::Headers(_) => ranges(out),
        }
    }
}

impl<Id: Copy + Eq + Hash> Default for FilterIndex<Id> {
    fn default() -> Self {
        Self {
            always: IdSet::default(),
            paths: Vec::new(),
            slots: HashMap::new(),
            free: Vec::new(),
            placed: HashMap::new(),
        }
    }
}

impl<Id: Copy + Eq + Hash> FilterIndex<Id> {
    /// Adds the filter `id` (`None`: a subscription without a filter, which matches every
    /// record). An id already present is replaced.
    pub fn insert(&mut self, id: Id, filter: Option<&Filter>) {
        self.remove(id);
        let placement = match filter.and_then(Filter::access) {
            Some(c) => self.place(id, c),
            None => Placement::Always,
        };
        if let Placement::Always = placement {
            self.always.insert(id);
        }
        self.placed.insert(id, placement);
    }

    /// Removes the filter `id` (no-op when it is not there).
    pub fn remove(&mut self, id: Id) {
        let Some(placement) = self.placed.remove(&id) else {
            return;
        };
        let slot = match placement {
            Placement::Always => {
                self.always.remove(id);
                return;
            }
            Placement::Equal { slot, keys } => {
                let p = &mut self.paths[slot];
                p.members.remove(id);
                for key in &keys {
                    p.unbucket(key, id);
                }
                slot
            }
            Placement::Numbers { slot } => {
                let p = &mut self.paths[slot];
                p.members.remove(id);
                p.number_ranges.remove(id);
                slot
            }
            Placement::Strings { slot } => {
                let p = &mut self.paths[slot];
                p.members.remove(id);
                p.str_ranges.remove(id);
                slot
            }
        };
        if self.paths[slot].members.is_empty() {
            // The path's last filter went: its slot (and all it holds) is freed for another.
            let path = self.paths[slot].path.clone();
            self.slots.remove(&path);
            self.paths[slot] = PathIndex::new(path);
            self.free.push(slot);
        }
    }

    /// Paths with filters placed on them.
    pub fn paths_in_use(&self) -> usize {
        self.slots.len()
    }

    /// Filters in the index.
    pub fn len(&self) -> usize {
        self.placed.len()
    }

    /// Whether the index holds no filter.
    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// Filters that are candidates for every record (no access predicate).
    pub fn unindexed(&self) -> usize {
        self.always.len()
    }

    /// Appends to `out` the ids of the filters `record` may match (each once, in no particular
    /// order); the others do not match it.
    pub fn candidates(&self, record: &Record, out: &mut Vec<Id>) {
        out.extend(self.always.iter());
        for p in &self.paths {
            if p.members.is_empty() {
                continue;
            }
            // A record without the path (a tombstone's null value, a missing field, a list too
            // short) makes each filter placed on it false or an error, never a match: none is
            // a candidate.
            if let Ok(v) = p.path.resolve(record) {
                p.lookup(v, out);
            }
        }
    }

    fn slot(&mut self, path: &FieldPath) -> usize {
        if let Some(&slot) = self.slots.get(path) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.paths[slot] = PathIndex::new(path.clone());
                slot
            }
            None => {
                self.paths.push(PathIndex::new(path.clone()));
                self.paths.len() - 1
            }
        };
        self.slots.insert(path.clone(), slot);
        slot
    }

    /// Places `c` by its best access predicate (see the module docs).
    fn place(&mut self, id: Id, c: &Compiled) -> Placement {
        if let Some((path, keys)) = self.best_equality(c) {
            let slot = self.slot(&path);
            let p = &mut self.paths[slot];
            p.members.insert(id);
            for key in &keys {
                p.bucket(key).insert(id);
            }
            return Placement::Equal { slot, keys };
        }
        match ranges(c) {
            Some((path, Bounds::Numbers(lo, hi))) => {
                let slot = self.slot(&path);
                let p = &mut self.paths[slot];
                p.members.insert(id);
                p.number_ranges.insert(id, lo, hi);
                Placement::Numbers { slot }
            }
            Some((path, Bounds::Strings(lo, hi))) => {
                let slot = self.slot(&path);
                let p = &mut self.paths[slot];
                p.members.insert(id);
                p.str_ranges.insert(id, lo, hi);
                Placement::Strings { slot }
            }
            None => Placement::Always,
        }
    }

    /// The equality or `in` conjunct whose buckets hold the fewest filters now, with its keys
    /// (distinct).
    fn best_equality(&self, c: &Compiled) -> Option<(FieldPath, Vec<EqKey>)> {
        let mut options: Vec<(&FieldPath, Vec<EqKey>)> = Vec::new();
        for (path, lit) in c.equality_terms() {
            if let Some(key) = EqKey::of(lit) {
                options.push((path, vec![key]));
            }
        }
        for (path, lits) in c.in_terms() {
            let mut keys: Vec<EqKey> = Vec::new();
            for lit in lits {
                // A NaN literal equals nothing: no key needed.
                if let Some(key) = EqKey::of(lit) {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
            options.push((path, keys));
        }
        let size = |(path, keys): &(&FieldPath, Vec<EqKey>)| -> usize {
            let held = self.slots.get(*path).map_or(0, |&slot| {
                keys.iter().map(|k| self.paths[slot].bucket_len(k)).sum()
            });
            held + keys.len()
        };
        options
            .into_iter()
            .min_by_key(size)
            .map(|(path, keys)| (path.clone(), keys))
    }
}

/// The interval a filter's range conjuncts on one path give, closed, `None` ends unbounded.
enum Bounds {
    Numbers(Option<Num>, Option<Num>),
    Strings(Option<Box<str>>, Option<Box<str>>),
}

/// The range conjuncts of `c` on one path, as an interval: the path with both a lower and an
/// upper bound if there is one, else the first path with a range; numbers before strings.
fn ranges(c: &Compiled) -> Option<(FieldPath, Bounds)> {
    let terms = c.range_terms();
    let mut best: Option<(FieldPath, Bounds, bool)> = None;
    let mut paths: Vec<&FieldPath> = Vec::new();
    for (path, _, _) in &terms {
        if !paths.contains(path) {
            paths.push(path);
        }
    }
    for path in paths {
        let on_path = terms.iter().filter(|(p, _, _)| *p == path);
        let (mut nlo, mut nhi, mut slo, mut shi) = (None, None, None, None);
        for (_, op, lit) in on_path {
            let lower = matches!(op, CmpOp::Gt | CmpOp::Ge);
            if let Some(x) = as_f64(lit).and_then(Num::new) {
                let end = if lower { &mut nlo } else { &mut nhi };
                *end = Some(match *end {
                    Some(e) if lower => std::cmp::max(e, x),
                    Some(e) => std::cmp::min(e, x),
                    None => x,
                });
            } else if let Literal::String(s) = lit {
                let s: &str = s;
                let end: &mut Option<&str> = if lower { &mut slo } else { &mut shi };
                *end = Some(match *end {
                    Some(e) if lower => e.max(s),
                    Some(e) => e.min(s),
                    None => s,
                });
            }
        }
        let candidate = if nlo.is_some() || nhi.is_some() {
            Some((Bounds::Numbers(nlo, nhi), nlo.is_some() && nhi.is_some()))
        } else if slo.is_some() || shi.is_some() {
            Some((
                Bounds::Strings(slo.map(Into::into), shi.map(Into::into)),
                slo.is_some() && shi.is_some(),
            ))
        } else {
            None
        };
        if let Some((bounds, two_sided)) = candidate {
            if best.as_ref().is_none_or(|(_, _, b)| !b && two_sided) {
                best = Some((path.clone(), bounds, two_sided));
            }
        }
    }
    best.map(|(path, bounds, _)| (path, bounds))
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
