//! The sets the filter index keeps its filter ids in: [`IdSet`], a set with O(1) insert and
//! remove iterated as a slice, and [`Intervals`], a centered interval tree of closed intervals
//! (the range filters of one path). Input: ids with their intervals, added and removed as
//! filters are subscribed and unsubscribed; output: the ids whose interval holds a point.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// A set of ids with O(1) insert and remove, iterated as a slice.
#[derive(Debug)]
pub(super) struct IdSet<Id> {
    items: Vec<Id>,
    at: HashMap<Id, usize>,
}

impl<Id> Default for IdSet<Id> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            at: HashMap::new(),
        }
    }
}

impl<Id: Copy + Eq + Hash> IdSet<Id> {
    pub(super) fn insert(&mut self, id: Id) {
        if self.at.contains_key(&id) {
            return;
        }
        self.at.insert(id, self.items.len());
        self.items.push(id);
    }

    pub(super) fn remove(&mut self, id: Id) -> bool {
        let Some(i) = self.at.remove(&id) else {
            return false;
        };
        self.items.swap_remove(i);
        if let Some(&moved) = self.items.get(i) {
            self.at.insert(moved, i);
        }
        true
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Id> + '_ {
        self.items.iter().copied()
    }
}

/// Closed intervals of `K` (a `None` end unbounded) with the ids they belong to: which contain
/// a point. A centered interval tree, rebuilt when the intervals added since (scanned on every
/// query) or removed since (skipped) grow past a share of it: `O(log n + k)` per query.
#[derive(Debug)]
pub(super) struct Intervals<K, Id> {
    live: HashMap<Id, (Option<K>, Option<K>)>,
    tree: Option<Box<Node<K, Id>>>,
    /// In `tree`: how many, and which were removed since it was built.
    built: usize,
    removed: HashSet<Id>,
    /// Added since `tree` was built.
    pending: Vec<(Id, Option<K>, Option<K>)>,
    /// `live`'s ids in a slice, for [`Intervals::all`].
    ids: IdSet<Id>,
}

impl<K, Id> Default for Intervals<K, Id> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            tree: None,
            built: 0,
            removed: HashSet::new(),
            pending: Vec::new(),
            ids: IdSet::default(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Node<K, Id> {
    center: K,
    /// The intervals that contain `center`, by lower end ascending and by upper end descending.
    by_lo: Vec<(Option<K>, Id)>,
    by_hi: Vec<(Option<K>, Id)>,
    below: Option<Box<Node<K, Id>>>,
    above: Option<Box<Node<K, Id>>>,
}

impl<K: Ord + Clone, Id: Copy + Eq + Hash> Intervals<K, Id> {
    pub(super) fn insert(&mut self, id: Id, lo: Option<K>, hi: Option<K>) {
        self.remove(id);
        let stale = self.removed.contains(&id);
        self.live.insert(id, (lo.clone(), hi.clone()));
        self.ids.insert(id);
        self.pending.push((id, lo, hi));
        let limit = 16 + self.built.isqrt();
        if stale || self.pending.len() > limit {
            self.rebuild();
        }
    }

    pub(super) fn remove(&mut self, id: Id) {
        if self.live.remove(&id).is_none() {
            return;
        }
        self.ids.remove(id);
        if let Some(i) = self.pending.iter().position(|(p, _, _)| *p == id) {
            self.pending.swap_remove(i);
        } else {
            self.removed.insert(id);
            if self.removed.len() > 16 + self.built / 2 {
                self.rebuild();
            }
        }
    }

    fn rebuild(&mut self) {
        let mut all: Vec<(Id, Option<K>, Option<K>)> = self
            .live
            .iter()
            .map(|(id, (lo, hi))| (*id, lo.clone(), hi.clone()))
            .collect();
        // An empty interval (lower end above the upper) contains nothing.
        all.retain(|(_, lo, hi)| match (lo, hi) {
            (Some(lo), Some(hi)) => lo <= hi,
            _ => true,
        });
        // One unbounded at both ends has no end to center on: it stays in `pending`, which
        // every query scans (the index never makes one: a range has a bound).
        let (everywhere, bounded): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|(_, lo, hi)| lo.is_none() && hi.is_none());
        self.built = bounded.len();
        self.tree = build(bounded);
        self.removed.clear();
        self.pending = everywhere;
    }

    /// Every id, whether its interval contains anything or not.
    pub(super) fn all(&self) -> impl Iterator<Item = Id> + '_ {
        self.ids.iter()
    }

    /// Appends the ids whose interval contains `x`.
    pub(super) fn stab<Q>(&self, x: &Q, out: &mut Vec<Id>)
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let lo_ok = |lo: &Option<K>| lo.as_ref().is_none_or(|l| l.borrow() <= x);
        let hi_ok = |hi: &Option<K>| hi.as_ref().is_none_or(|h| h.borrow() >= x);
        let start = out.len();
        let mut node = self.tree.as_deref();
        while let Some(n) = node {
            match x.cmp(n.center.borrow()) {
                std::cmp::Ordering::Less => {
                    out.extend(n.by_lo.iter().take_while(|(lo, _)| lo_ok(lo)).map(|e| e.1));
                    node = n.below.as_deref();
                }
                std::cmp::Ordering::Greater => {
                    out.extend(n.by_hi.iter().take_while(|(hi, _)| hi_ok(hi)).map(|e| e.1));
                    node = n.above.as_deref();
                }
                std::cmp::Ordering::Equal => {
                    out.extend(n.by_lo.iter().map(|e| e.1));
                    node = None;
                }
            }
        }
        if !self.removed.is_empty() {
            let mut i = start;
            while i < out.len() {
                if self.removed.contains(&out[i]) {
                    out.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        out.extend(
            self.pending
                .iter()
                .filter(|(_, lo, hi)| lo_ok(lo) && hi_ok(hi))
                .map(|e| e.0),
        );
    }
}

/// Builds a centered interval tree: the center is the median of the intervals' ends, so each
/// side holds at most half of them and the depth is `O(log n)`. Every interval has an end.
fn build<K: Ord + Clone, Id: Copy>(
    intervals: Vec<(Id, Option<K>, Option<K>)>,
) -> Option<Box<Node<K, Id>>> {
    let mut ends: Vec<&K> = intervals
        .iter()
        .flat_map(|(_, lo, hi)| lo.iter().chain(hi.iter()))
        .collect();
    if ends.is_empty() {
        return None;
    }
    let mid = ends.len() / 2;
    let (_, center, _) = ends.select_nth_unstable(mid);
    let center: K = (*center).clone();
    let (mut below, mut above, mut here) = (Vec::new(), Vec::new(), Vec::new());
    for iv in intervals {
        match (&iv.1, &iv.2) {
            (_, Some(hi)) if *hi < center => below.push(iv),
            (Some(lo), _) if *lo > center => above.push(iv),
            _ => here.push(iv),
        }
    }
    let mut by_lo: Vec<(Option<K>, Id)> =
        here.iter().map(|(id, lo, _)| (lo.clone(), *id)).collect();
    // `None` (unbounded below) sorts first, as it should.
    by_lo.sort_by(|a, b| a.0.cmp(&b.0));
    let mut by_hi: Vec<(Option<K>, Id)> = here.into_iter().map(|(id, _, hi)| (hi, id)).collect();
    // Descending, `None` (unbounded above) first.
    by_hi.sort_by(|a, b| match (&a.0, &b.0) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(x),
    });
    Some(Box::new(Node {
        center,
        by_lo,
        by_hi,
        below: build(below),
        above: build(above),
    }))
}
