//! Subscription shapes: a CEL filter and a field projection, applied between the hub and the
//! client queues. Input: a decoded [`Record`]; output: the record's JSON as this shape sends it
//! (or nothing when the filter does not match).
//!
//! Subscriptions with the same shape share its output: the hub renders a record once per distinct
//! shape, not once per client. A filter is compiled to a native predicate over the record
//! ([`compiled`]) when it can be; any other runs on the `cel` interpreter, with the record
//! converted to a CEL context only for those. A topic's filters are indexed ([`index`]): a
//! record is evaluated only against the filters it may match.

mod bounds;
pub mod compiled;
#[cfg(test)]
mod compiled_tests;
#[cfg(test)]
mod differential_tests;
pub mod index;
mod intervals;
mod matches;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value;

pub use self::bounds::{
    COMPILED_STEPS_PER_STEP, MAX_FILTER_DEPTH, MAX_FILTER_STEPS, RECORD_LIST_BOUND, compile_shape,
};
use self::bounds::{ast_depth, bad_pattern, cost, text_depth, unknown_name};
pub use self::index::FilterIndex;
use crate::config::WebSocketConfig;
use crate::record::Record;

/// The variables a filter may use.
pub const VARIABLES: &[&str] = &[
    "key",
    "value",
    "partition",
    "offset",
    "timestamp",
    "headers",
];

/// Limits on what a client may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest filter expression, in bytes.
    pub max_filter_bytes: usize,
    /// Most nodes (operators, literals, names) in a filter's syntax tree.
    pub max_filter_nodes: usize,
    /// Most paths in a `fields` list.
    pub max_fields: usize,
}

impl From<&WebSocketConfig> for Limits {
    fn from(ws: &WebSocketConfig) -> Self {
        Self {
            max_filter_bytes: ws.max_filter_bytes,
            max_filter_nodes: ws.max_filter_nodes,
            max_fields: ws.max_fields,
        }
    }
}

/// Why a filter or projection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The filter does not parse, uses an unknown name, or is too large.
    #[error("{0}")]
    BadFilter(String),
    /// A `fields` path is malformed.
    #[error("{0}")]
    BadFields(String),
}

/// A CEL filter: parsed and checked, and compiled to a native predicate when
/// [`compiled`](compiled::Compiled) knows every part of it (else run on the interpreter).
#[derive(Debug)]
pub struct Filter {
    program: Program,
    compiled: Option<compiled::Compiled>,
    /// Without `compiled`: the conjuncts that place the filter in the index.
    guard: Option<compiled::Compiled>,
    /// See [`Filter::steps`]; worked out once, at compile time.
    steps: u64,
}

impl Filter {
    /// Compiles `source`, refusing syntax errors, unknown variables or functions, expressions
    /// that are not boolean, and expressions over the limits.
    pub fn compile(source: &str, env: &Arc<Env>, limits: &Limits) -> Result<Self, ShapeError> {
        let bad = |m: String| Err(ShapeError::BadFilter(m));
        if source.trim().is_empty() {
            return bad("the filter is empty".into());
        }
        if source.len() > limits.max_filter_bytes {
            return bad(format!(
                "the filter has {} bytes; the limit is {}",
                source.len(),
                limits.max_filter_bytes
            ));
        }
        let depth = text_depth(source);
        if depth > MAX_FILTER_DEPTH {
            return bad(format!(
                "the filter nests {depth} levels deep (brackets and unary operators); the limit is {MAX_FILTER_DEPTH}"
            ));
        }
        let program = match env.compile(source) {
            Ok(p) => p,
            Err(e) => return bad(format!("syntax error: {e}")),
        };
        let depth = ast_depth(&program.expression().expr);
        if depth > MAX_FILTER_DEPTH {
            return bad(format!(
                "the filter nests {depth} levels deep; the limit is {MAX_FILTER_DEPTH} (split long chains of && or || with parentheses)"
            ));
        }
        let nodes = count_nodes(&format!("{:?}", program.expression()));
        if nodes > limits.max_filter_nodes {
            return bad(format!(
                "the filter is too complex ({nodes} nodes; the limit is {})",
                limits.max_filter_nodes
            ));
        }
        let cost = cost(&program.expression().expr);
        if cost.steps > MAX_FILTER_STEPS {
            return bad(format!(
                "the filter is too costly: its comprehensions (all, exists, exists_one, map, filter) would take up to {} steps per record; the limit is {MAX_FILTER_STEPS} (a list in the record counts as {RECORD_LIST_BOUND} items)",
                cost.steps
            ));
        }
        if let Some(v) = unknown_name(&program.expression().expr, VARIABLES, &mut Vec::new()) {
            return bad(format!(
                "unknown name {v:?}; a filter can use {}",
                VARIABLES.join(", ")
            ));
        }
        if let Some(why) = bad_pattern(&program.expression().expr) {
            return bad(why);
        }
        if let Some(what) = not_boolean(&program.expression().expr) {
            return bad(format!(
                "the filter must be a boolean expression; this one gives {what}"
            ));
        }
        let compiled = compiled::Compiled::new(program.expression());
        let guard = match compiled {
            Some(_) => None,
            None => compiled::Compiled::guard(program.expression()),
        };
        let steps = match &compiled {
            Some(c) => c.steps().div_ceil(COMPILED_STEPS_PER_STEP),
            None => cost.steps,
        };
        let filter = Self {
            program,
            compiled,
            guard,
            steps,
        };
        // A trial run on an empty record finds what only evaluation can: unknown functions and
        // a result that is not a boolean. Errors that depend on the data (a missing field) are
        // expected here and mean nothing.
        let probe = Record::new(
            Arc::from(""),
            0,
            0,
            Some(0),
            Some(String::new()),
            Bytes::from_static(b"{}"),
        );
        match filter.program.execute(&context(env, &probe)) {
            Err(ExecutionError::UndeclaredReference(name)) => {
                return bad(format!("unknown function or name {name:?}"));
            }
            Ok(v) if !matches!(v, cel::Value::Bool(_)) => {
                return bad(format!(
                    "the filter must be a boolean expression; this one gives {}",
                    type_name(&v)
                ));
            }
            _ => {}
        }
        Ok(filter)
    }

    /// What evaluating it costs per record at most, in the interpreter's evaluation steps (see
    /// [`MAX_FILTER_STEPS`]): a compiled filter's own steps ([`compiled::Compiled::steps`])
    /// weighed as [`COMPILED_STEPS_PER_STEP`] to one, any other the interpreter's estimate of
    /// its syntax tree. The hub budgets rendering with it.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The native predicate, when the filter compiled to one.
    pub fn compiled(&self) -> Option<&compiled::Compiled> {
        self.compiled.as_ref()
    }

    /// What places the filter in the index: the compiled filter, or when it does not compile as
    /// a whole, its top-level conjuncts that do ([`compiled::Compiled::guard`]).
    pub fn access(&self) -> Option<&compiled::Compiled> {
        self.compiled.as_ref().or(self.guard.as_ref())
    }

    /// True when `record` matches; an evaluation error (a missing field, a wrong type in this
    /// record) is an error the caller counts as no match. A compiled filter reads the record
    /// itself; any other runs on the interpreter with the record's CEL context, `ctx`, built on
    /// first use and shared with the other filters that need it.
    pub fn matches_record<'c>(
        &self,
        record: &Record,
        env: &Arc<Env>,
        ctx: &mut Option<Context<'c, 'c>>,
    ) -> Result<bool, String> {
        match &self.compiled {
            Some(c) => c.eval(record).map_err(|e| e.to_string()),
            None => self.matches(ctx.get_or_insert_with(|| context(env, record))),
        }
    }

    /// True when the record whose context is `ctx` matches, by the interpreter (whether or not
    /// the filter compiled); an error as for [`Filter::matches_record`].
    pub fn matches(&self, ctx: &Context<'_, '_>) -> Result<bool, String> {
        match self.program.execute(ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("filter gave {}, not a boolean", type_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The CEL context for one record: `key`, `value`, `partition`, `offset`, `timestamp`,
/// `headers`.
pub fn context<'a>(env: &Arc<Env>, record: &Record) -> Context<'a, 'a> {
    let mut ctx = Context::with_env(env.clone());
    let key = match &record.key {
        Some(k) => cel::Value::String(Arc::new(k.clone())),
        None => cel::Value::Null,
    };
    ctx.add_variable_from_value("key", key);
    ctx.add_variable_from_value("value", json_to_cel(record.value()));
    ctx.add_variable_from_value("partition", cel::Value::Int(i64::from(record.partition)));
    ctx.add_variable_from_value("offset", cel::Value::Int(record.offset));
    ctx.add_variable_from_value(
        "timestamp",
        record.timestamp.map_or(cel::Value::Null, cel::Value::Int),
    );
    let headers: std::collections::HashMap<cel::objects::Key, cel::Value> = record
        .headers
        .iter()
        .map(|(k, v)| {
            (
                cel::objects::Key::String(Arc::new(k.clone())),
                v.as_ref().map_or(cel::Value::Null, |v| {
                    cel::Value::String(Arc::new(v.clone()))
                }),
            )
        })
        .collect();
    ctx.add_variable_from_value("headers", cel::Value::Map(headers.into()));
    ctx
}

/// JSON to CEL: integers stay integers (so `value.qty > 10` works on ints), other numbers are
/// doubles.
fn json_to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => match n.as_u64() {
                Some(u) => cel::Value::UInt(u),
                None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Value::Object(o) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = o
                .iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(Arc::new(k.clone())),
                        json_to_cel(v),
                    )
                })
                .collect();
            cel::Value::Map(map.into())
        }
    }
}

fn type_name(v: &cel::Value) -> &'static str {
    match v {
        cel::Value::List(_) => "a list",
        cel::Value::Map(_) => "a map",
        cel::Value::Int(_) | cel::Value::UInt(_) => "an integer",
        cel::Value::Float(_) => "a double",
        cel::Value::String(_) => "a string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Bool(_) => "a boolean",
        cel::Value::Null => "null",
        _ => "a non-boolean value",
    }
}

/// What an expression gives when that is plainly not a boolean, whatever the record: a literal,
/// a list or map, arithmetic, `size`, or a conditional whose branches are such.
fn not_boolean(e: &cel::common::ast::Expr) -> Option<&'static str> {
    use cel::common::ast::{Expr, LiteralValue};
    match e {
        Expr::Literal(LiteralValue::Boolean(_)) => None,
        Expr::Literal(LiteralValue::Null) => Some("null"),
        Expr::Literal(LiteralValue::String(_)) => Some("a string"),
        Expr::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
        Expr::Literal(_) => Some("a number"),
        Expr::List(_) => Some("a list"),
        Expr::Map(_) => Some("a map"),
        Expr::Call(c) => match c.func_name.as_str() {
            "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "-_" => Some("a number or a string"),
            "size" | "int" | "uint" | "double" => Some("a number"),
            "string" => Some("a string"),
            "_?_:_" => {
                let branch = |i: usize| c.args.get(i).and_then(|a| not_boolean(&a.expr));
                branch(1).and(branch(2))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Counts expression nodes in the program's debug form: a cheap, stable proxy for size that
/// needs no access to the parser's private tree.
fn count_nodes(debug: &str) -> usize {
    debug.matches("id:").count().max(1)
}

/// A projection: the dotted paths of the envelope to keep (`value.id`, `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    key: bool,
    /// `None`: the whole value; `Some(tree)`: only these paths of it.
    value: Option<PathTree>,
    wants_value: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct PathTree(BTreeMap<String, Option<PathTree>>);

impl PathTree {
    fn insert(&mut self, parts: &[&str]) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        if rest.is_empty() {
            // The whole subtree: a shorter path wins over longer ones.
            self.0.insert((*first).to_string(), None);
            return;
        }
        let entry = self
            .0
            .entry((*first).to_string())
            .or_insert_with(|| Some(PathTree::default()));
        if let Some(sub) = entry {
            sub.insert(rest);
        }
    }

    fn apply(&self, v: &Value) -> Option<Value> {
        let obj = v.as_object()?;
        let mut out = serde_json::Map::new();
        // Walk the record's own keys so the output keeps the record's field order.
        for (k, child) in obj {
            match self.0.get(k) {
                None => {}
                Some(None) => {
                    out.insert(k.clone(), child.clone());
                }
                Some(Some(sub)) => {
                    if let Some(c) = sub.apply(child) {
                        out.insert(k.clone(), c);
                    }
                }
            }
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

impl Projection {
    /// Parses `fields`; each a dotted path starting at `key` or `value`. `partition`, `offset`
    /// and `timestamp` are always sent and may be listed.
    pub fn parse(fields: &[String], limits: &Limits) -> Result<Self, ShapeError> {
        if fields.len() > limits.max_fields {
            return Err(ShapeError::BadFields(format!(
                "`fields` has {} paths; the limit is {}",
                fields.len(),
                limits.max_fields
            )));
        }
        let mut p = Projection {
            key: false,
            value: Some(PathTree::default()),
            wants_value: false,
        };
        for f in fields {
            let parts: Vec<&str> = f.split('.').collect();
            if parts.iter().any(|s| s.is_empty()) {
                return Err(ShapeError::BadFields(format!(
                    "field path {f:?} has an empty part"
                )));
            }
            match parts.as_slice() {
                ["key"] => p.key = true,
                ["partition" | "offset" | "timestamp"] => {}
                ["value"] => {
                    p.wants_value = true;
                    p.value = None;
                }
                ["value", rest @ ..] => {
                    p.wants_value = true;
                    if let Some(tree) = &mut p.value {
                        tree.insert(rest);
                    }
                }
                _ => {
                    return Err(ShapeError::BadFields(format!(
                        "field path {f:?} must start with key, value, partition, offset or timestamp"
                    )));
                }
            }
        }
        Ok(p)
    }

    /// The projected envelope as JSON text.
    pub fn render(&self, record: &Record) -> Bytes {
        let value = if self.wants_value {
            match &self.value {
                None => Some(record.value().clone()),
                Some(tree) => tree.apply(record.value()),
            }
        } else {
            None
        };
        Bytes::from(crate::protocol::write_projected(record, self.key, value))
    }
}

/// A subscription's shape: what it sends of each record.
#[derive(Debug)]
pub struct Shape {
    /// Equal for equal shapes (the filter's text and the sorted field list).
    pub key: String,
    pub filter: Option<Filter>,
    pub projection: Option<Projection>,
}

impl Shape {
    /// Builds a shape from a subscribe request's `filter` and `fields`.
    pub fn new(
        filter: Option<&str>,
        fields: Option<&[String]>,
        env: &Arc<Env>,
        limits: &Limits,
    ) -> Result<Self, ShapeError> {
        let filter_src = filter.map(str::trim);
        let compiled = filter_src
            .map(|src| Filter::compile(src, env, limits))
            .transpose()?;
        let projection = fields.map(|f| Projection::parse(f, limits)).transpose()?;
        let mut sorted: Vec<&str> = fields
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        // The filter by its syntax tree (spacing, comments, quotes and brackets do not count),
        // hashed; the fields escaped, so no text can pass for a separator.
        let tree = compiled.as_ref().map_or(String::new(), |f| {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(format!("{:?}", f.program.expression()));
            digest.iter().map(|b| format!("{b:02x}")).collect()
        });
        let key = format!(
            "{tree}\u{0}{}",
            if fields.is_some() {
                format!("{sorted:?}")
            } else {
                "*".into()
            }
        );
        Ok(Shape {
            key,
            filter: compiled,
            projection,
        })
    }

    /// The most evaluation steps its filter takes per record (0 without one).
    pub fn steps(&self) -> u64 {
        self.filter.as_ref().map_or(0, Filter::steps)
    }

    /// The shape with no filter and no projection.
    pub fn whole() -> Self {
        Shape {
            key: "\u{0}*".into(),
            filter: None,
            projection: None,
        }
    }

    /// The record as this shape sends it: `Ok(None)` when the filter does not match,
    /// `Err` when it could not be evaluated (counted as no match by the caller). `ctx` is the
    /// record's CEL context, built on first use (by a filter that did not compile) and shared by
    /// the shapes that need it.
    pub fn render<'c>(
        &self,
        record: &Record,
        env: &Arc<Env>,
        ctx: &mut Option<Context<'c, 'c>>,
        whole: &mut Option<Bytes>,
    ) -> Result<Option<Bytes>, String> {
        if let Some(f) = &self.filter {
            if !f.matches_record(record, env, ctx)? {
                return Ok(None);
            }
        }
        Ok(Some(match &self.projection {
            Some(p) => p.render(record),
            None => whole
                .get_or_insert_with(|| {
                    let mut out = Vec::with_capacity(96 + record.value_json.len());
                    crate::protocol::write_record(record, &mut out);
                    Bytes::from(out)
                })
                .clone(),
        }))
    }
}

/// The CEL environment every filter compiles and runs in (the standard library).
pub fn env() -> Arc<Env> {
    let mut env = Env::stdlib();
    // The `cel` crate is built without its `matches`: ours is registered on a fresh stdlib,
    // which has no other overload of that name.
    if let Err(e) = matches::register(&mut env) {
        tracing::error!(error = %e, "cannot register the filters' matches function");
    }
    Arc::new(env)
}

#[cfg(test)]
mod tests;
