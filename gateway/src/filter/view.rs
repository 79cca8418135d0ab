//! A record's fields as CEL values, borrowed instead of converted. Input: a [`Record`] (its
//! parsed JSON value, key, headers, partition, offset, timestamp) or a filter's literal; output:
//! a [`View`] of one field, and CEL's equality, ordering, selection and membership on views.
//!
//! Why: the interpreter needs the whole record converted to `cel::Value` before it can read one
//! field of it; a compiled filter reads only the fields it names, straight from the JSON. The
//! rules here are the cel 0.15 interpreter's, on the context [`super::context`] builds (JSON
//! integers are `int`, beyond `i64` `uint`, other numbers `double`; an absent key or timestamp
//! is `null`; headers are a map of string to string or `null`, the last of a repeated name
//! winning). `differential_tests` checks them against the interpreter.

use std::cmp::Ordering;

use serde_json::{Map, Value as Json};

use crate::record::Record;

/// One CEL value, borrowed from a record or a literal.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    List(&'a [Json]),
    Map(&'a Map<String, Json>),
    /// The record's headers: a map whose values are strings or `null`.
    Headers(&'a [(String, Option<String>)]),
}

/// Why a compiled filter could not be evaluated on a record: what the interpreter reports as an
/// error (the caller counts it as no match).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault<'p> {
    /// A map (the value, an object in it, the headers) has no such key.
    NoSuchKey(&'p str),
    /// A list index past the end or below zero.
    IndexOutOfBounds(i128),
    /// An operator or function that does not apply to these types.
    NoSuchOverload {
        op: &'static str,
        lhs: &'static str,
        rhs: &'static str,
    },
    /// A logical operator or the whole filter met a value that is not a boolean.
    NotBoolean(&'static str),
}

impl std::fmt::Display for Fault<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::NoSuchKey(k) => write!(f, "No such key: {k}"),
            Fault::IndexOutOfBounds(i) => write!(f, "Index out of bounds: {i}"),
            Fault::NoSuchOverload { op, lhs, rhs } => {
                write!(
                    f,
                    "found no matching overload for '{op}' applied to '({lhs}, {rhs})'"
                )
            }
            Fault::NotBoolean(t) => write!(f, "expected a bool, got {t}"),
        }
    }
}

impl<'a> View<'a> {
    /// A JSON value as [`super::context`] converts it.
    pub fn of_json(v: &'a Json) -> Self {
        match v {
            Json::Null => View::Null,
            Json::Bool(b) => View::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => View::Int(i),
                None => match n.as_u64() {
                    Some(u) => View::UInt(u),
                    None => View::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
            },
            Json::String(s) => View::Str(s),
            Json::Array(a) => View::List(a),
            Json::Object(o) => View::Map(o),
        }
    }

    /// The record's variable `root` (one of [`super::VARIABLES`]), or the loop variable of
    /// the comprehension at that depth (`items`, outermost first, are their current values).
    pub fn variable(record: &'a Record, root: Root, items: &[View<'a>]) -> Self {
        match root {
            // Compiled only inside its comprehension, which binds it: never out of range.
            Root::Item(depth) => items.get(usize::from(depth)).copied().unwrap_or(View::Null),
            Root::Value => View::of_json(record.value()),
            Root::Key => record.key.as_deref().map_or(View::Null, View::Str),
            Root::Headers => View::Headers(&record.headers),
            Root::Partition => View::Int(i64::from(record.partition)),
            Root::Offset => View::Int(record.offset),
            Root::Timestamp => record.timestamp.map_or(View::Null, View::Int),
        }
    }

    /// What a comprehension (`exists`, `all`) over this value binds its variable to in turn: a
    /// list's elements, a map's keys (the headers' names, each once); `None` for any other value
    /// (an error for the interpreter too).
    pub fn items(self) -> Option<impl Iterator<Item = View<'a>>> {
        let (list, keys, headers) = match self {
            View::List(l) => (Some(l.iter().map(View::of_json)), None, None),
            View::Map(m) => (None, Some(m.keys().map(|k| View::Str(k))), None),
            View::Headers(h) => (
                None,
                None,
                Some(header_entries(h).map(|(k, _)| View::Str(k))),
            ),
            _ => return None,
        };
        Some(
            list.into_iter()
                .flatten()
                .chain(keys.into_iter().flatten())
                .chain(headers.into_iter().flatten()),
        )
    }

    /// The CEL type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            View::Null => "null_type",
            View::Bool(_) => "bool",
            View::Int(_) => "int",
            View::UInt(_) => "uint",
            View::Double(_) => "double",
            View::Str(_) => "string",
            View::List(_) => "list",
            View::Map(_) | View::Headers(_) => "map",
        }
    }

    fn overload<'p>(&self, op: &'static str, rhs: &'static str) -> Fault<'p> {
        Fault::NoSuchOverload {
            op,
            lhs: self.type_name(),
            rhs,
        }
    }

    /// The entry `name` of a map: `v.name` and `v["name"]`. Anything but a map is an error,
    /// and so is a missing key.
    pub fn field<'p>(self, name: &'p str) -> Result<View<'a>, Fault<'p>> {
        match self {
            View::Map(m) => m.get(name).map(View::of_json).ok_or(Fault::NoSuchKey(name)),
            View::Headers(h) => header(h, name).ok_or(Fault::NoSuchKey(name)),
            other => Err(other.overload("_._", "string")),
        }
    }

    /// `v[i]` for an integer `i`: an element of a list; a map has no integer keys here (JSON
    /// object keys and header names are strings).
    pub fn element<'p>(self, i: i128) -> Result<View<'a>, Fault<'p>> {
        match self {
            View::List(l) => usize::try_from(i)
                .ok()
                .and_then(|i| l.get(i))
                .map(View::of_json)
                .ok_or(Fault::IndexOutOfBounds(i)),
            View::Map(_) | View::Headers(_) => Err(Fault::NoSuchKey("(an integer)")),
            other => Err(other.overload("_[_]", "int")),
        }
    }

    /// `has(v.name)`: whether a map has the key; an error on anything else.
    pub fn has<'p>(self, name: &str) -> Result<bool, Fault<'p>> {
        match self {
            View::Map(m) => Ok(m.contains_key(name)),
            View::Headers(h) => Ok(h.iter().any(|(k, _)| k == name)),
            other => Err(other.overload("_._", "string")),
        }
    }

    /// `needle in self`: an element of a list equal to the needle, a key of a map.
    pub fn holds<'p>(self, needle: View<'_>) -> Result<bool, Fault<'p>> {
        match self {
            View::List(l) => Ok(l.iter().any(|e| equals(View::of_json(e), needle))),
            View::Map(_) | View::Headers(_) => match needle {
                View::Str(k) => self.has(k),
                // Map keys here are strings; a number or a bool is a valid key that is absent.
                View::Int(_) | View::UInt(_) | View::Double(_) | View::Bool(_) => Ok(false),
                other => Err(self.overload("@in", other.type_name())),
            },
            other => Err(other.overload("@in", needle.type_name())),
        }
    }
}

/// The value of header `name`: the last one of that name, as in a map built from the list.
fn header<'a>(h: &'a [(String, Option<String>)], name: &str) -> Option<View<'a>> {
    h.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_deref().map_or(View::Null, View::Str))
}

/// The headers as map entries: each name once, with its last value.
fn header_entries<'a>(
    h: &'a [(String, Option<String>)],
) -> impl Iterator<Item = (&'a str, View<'a>)> + 'a {
    h.iter().enumerate().filter_map(move |(i, (k, v))| {
        let last = !h[i + 1..].iter().any(|(later, _)| later == k);
        last.then(|| (k.as_str(), v.as_deref().map_or(View::Null, View::Str)))
    })
}

/// The variables a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Root {
    /// The loop variable of a comprehension (`exists`, `all`), by nesting depth (0: the
    /// outermost), whatever its name: `i` in `value.items.exists(i, i.qty > 5)`.
    Item(u8),
    Value,
    Key,
    Headers,
    Partition,
    Offset,
    Timestamp,
}

impl Root {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "value" => Root::Value,
            "key" => Root::Key,
            "headers" => Root::Headers,
            "partition" => Root::Partition,
            "offset" => Root::Offset,
            "timestamp" => Root::Timestamp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Root::Item(_) => "(item)",
            Root::Value => "value",
            Root::Key => "key",
            Root::Headers => "headers",
            Root::Partition => "partition",
            Root::Offset => "offset",
            Root::Timestamp => "timestamp",
        }
    }
}

/// CEL's `==`: numbers by value across int, uint and double (an int or uint against a double is
/// converted to double first); strings, booleans, lists and maps with their own kind only; `null`
/// equals only `null`. Values of different kinds are unequal, never an error.
pub fn equals(a: View<'_>, b: View<'_>) -> bool {
    match (a, b) {
        (View::Null, View::Null) => true,
        (View::Bool(x), View::Bool(y)) => x == y,
        (View::Str(x), View::Str(y)) => x == y,
        (View::List(x), View::List(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(x, y)| equals(View::of_json(x), View::of_json(y)))
        }
        (View::Map(_) | View::Headers(_), View::Map(_) | View::Headers(_)) => maps_equal(a, b),
        _ => numbers(a, b) == Some(Ordering::Equal),
    }
}

fn map_entries<'a>(m: View<'a>) -> Vec<(&'a str, View<'a>)> {
    match m {
        View::Map(m) => m
            .iter()
            .map(|(k, v)| (k.as_str(), View::of_json(v)))
            .collect(),
        View::Headers(h) => header_entries(h).collect(),
        _ => Vec::new(),
    }
}

fn maps_equal(a: View<'_>, b: View<'_>) -> bool {
    let (a, b) = (map_entries(a), map_entries(b));
    a.len() == b.len()
        && a.iter().all(|(k, v)| {
            b.iter()
                .find(|(bk, _)| bk == k)
                .is_some_and(|(_, bv)| equals(*v, *bv))
        })
}

/// CEL's ordering (`<`, `<=`, `>`, `>=`): numbers across int, uint and double, strings by
/// their bytes, `false < true`. `None` (an error) for anything else: `null`, lists, maps, and
/// values of different kinds.
pub fn compare(a: View<'_>, b: View<'_>) -> Option<Ordering> {
    match (a, b) {
        (View::Str(x), View::Str(y)) => Some(x.cmp(y)),
        (View::Bool(x), View::Bool(y)) => Some(x.cmp(&y)),
        _ => numbers(a, b),
    }
}

/// Two numbers compared as the interpreter does: int and uint exactly, either against a double
/// as `x as f64`. `None` when either is not a number (or a NaN is involved).
fn numbers(a: View<'_>, b: View<'_>) -> Option<Ordering> {
    #[allow(clippy::cast_precision_loss)]
    match (a, b) {
        (View::Int(x), View::Int(y)) => Some(x.cmp(&y)),
        (View::UInt(x), View::UInt(y)) => Some(x.cmp(&y)),
        (View::Int(x), View::UInt(y)) => {
            Some(u64::try_from(x).map_or(Ordering::Less, |x| x.cmp(&y)))
        }
        (View::UInt(x), View::Int(y)) => {
            Some(u64::try_from(y).map_or(Ordering::Greater, |y| x.cmp(&y)))
        }
        (View::Double(x), View::Double(y)) => x.partial_cmp(&y),
        (View::Int(x), View::Double(y)) => (x as f64).partial_cmp(&y),
        (View::Double(x), View::Int(y)) => x.partial_cmp(&(y as f64)),
        (View::UInt(x), View::Double(y)) => (x as f64).partial_cmp(&y),
        (View::Double(x), View::UInt(y)) => x.partial_cmp(&(y as f64)),
        _ => None,
    }
}
