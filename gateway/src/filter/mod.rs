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
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value;

pub use self::bounds::{MAX_FILTER_DEPTH, MAX_FILTER_STEPS, RECORD_LIST_BOUND, compile_shape};
use self::bounds::{ast_depth, cost, text_depth};
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
        let refs = program.references();
        if let Some(v) = refs
            .variables()
            .into_iter()
            .find(|v| !VARIABLES.contains(v))
        {
            return bad(format!(
                "unknown name {v:?}; a filter can use {}",
                VARIABLES.join(", ")
            ));
        }
        if let Some(what) = not_boolean(&program.expression().expr) {
            return bad(format!(
                "the filter must be a boolean expression; this one gives {what}"
            ));
        }
        let compiled = compiled::Compiled::new(program.expression());
        let filter = Self { program, compiled };
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

    /// The most evaluation steps it takes per record (see [`MAX_FILTER_STEPS`]).
    pub fn steps(&self) -> u64 {
        cost(&self.program.expression().expr).steps
    }

    /// The native predicate, when the filter compiled to one.
    pub fn compiled(&self) -> Option<&compiled::Compiled> {
        self.compiled.as_ref()
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
        let key = format!(
            "{}\u{0}{}",
            filter_src.unwrap_or(""),
            if fields.is_some() {
                sorted.join("\u{1}")
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
    Arc::new(Env::stdlib())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_filter_bytes: 200,
        max_filter_nodes: 40,
        max_fields: 4,
    };

    fn record(value: &str) -> Record {
        Record::new(
            Arc::from("orders"),
            1,
            42,
            Some(1_732_690_000_000),
            Some("k1".into()),
            Bytes::copy_from_slice(value.as_bytes()),
        )
        .with_headers(vec![("source".into(), Some("web".into()))])
    }

    fn compile(src: &str) -> Result<Filter, String> {
        Filter::compile(src, &env(), &LIMITS).map_err(|e| e.to_string())
    }

    fn eval(src: &str, value: &str) -> Result<bool, String> {
        let f = compile(src)?;
        let r = record(value);
        f.matches(&context(&env(), &r))
    }

    #[test]
    fn the_design_example_filters() {
        let v = r#"{"id":7,"amount":150.5,"region":"eu","qty":12}"#;
        assert_eq!(
            eval("value.amount > 100.0 && value.region == 'eu'", v),
            Ok(true)
        );
        assert_eq!(eval("value.amount > 200.0", v), Ok(false));
        assert_eq!(
            eval("value.qty > 10", v),
            Ok(true),
            "JSON integers are CEL ints"
        );
        assert_eq!(
            eval("key == 'k1' && partition == 1 && offset == 42", v),
            Ok(true)
        );
        assert_eq!(eval("timestamp > 1700000000000", v), Ok(true));
        assert_eq!(eval("headers.source == 'web'", v), Ok(true));
        assert_eq!(eval("value.region in ['eu', 'us']", v), Ok(true));
        assert_eq!(eval("has(value.missing)", v), Ok(false));
    }

    #[test]
    fn evaluation_errors_are_errors_not_matches() {
        let r = eval("value.missing > 1", r#"{"id":1}"#);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let e = compile("value.amount >").err().unwrap_or_default();
        assert!(e.contains("syntax error"), "{e}");
        let e = compile("valeu.amount > 1").err().unwrap_or_default();
        assert!(e.contains("unknown name \"valeu\""), "{e}");
        let e = compile("nosuchfn(value)").err().unwrap_or_default();
        assert!(e.contains("nosuchfn"), "{e}");
        for not_bool in [
            "1 + 2",
            "value.n + 1",
            "size(value.tags)",
            "'x'",
            "offset > 1 ? 1 : 2",
        ] {
            let e = compile(not_bool).err().unwrap_or_default();
            assert!(e.contains("boolean"), "{not_bool}: {e}");
        }
        assert!(compile("offset > 1 ? value.a : false").is_ok());
        let e = compile(&"a".repeat(300)).err().unwrap_or_default();
        assert!(e.contains("limit is 200"), "{e}");
        let e = compile(&["offset > 1"; 12].join(" || "))
            .err()
            .unwrap_or_default();
        assert!(e.contains("too complex"), "{e}");
        let e = compile("   ").err().unwrap_or_default();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn comprehensions_over_the_cost_budget_are_refused() {
        let limits = Limits::from(&crate::config::WebSocketConfig::default());
        let compile = |src: &str| Filter::compile(src, &env(), &limits).map(|_| ());
        let list = |n: usize| {
            let items: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            format!("[{}]", items.join(","))
        };
        // Nested over literal lists: the product of their sizes.
        let deep = (0..10).fold("true".to_string(), |inner, i| {
            format!("{}.all(x{i}, {inner})", list(3))
        });
        let three = format!(
            "{l}.all(a, {l}.all(b, {l}.all(c, a + b + c > 0)))",
            l = list(50)
        );
        for costly in [
            deep.as_str(),
            three.as_str(),
            // Lists of the record count as RECORD_LIST_BOUND items: three deep is refused.
            "value.a.exists(x, value.a.exists(y, value.a.exists(z, x + y == z)))",
            // `map` keeps its range's size for the comprehension over its result.
            "value.a.map(x, value.a.map(y, x)).exists(l, l.exists(v, value.a.exists(w, v == w)))",
        ] {
            match compile(costly) {
                Err(ShapeError::BadFilter(m)) => {
                    assert!(m.contains("too costly"), "{costly}: {m}")
                }
                other => panic!("{costly}: accepted or wrong error: {:?}", other.err()),
            }
        }
        for fine in [
            // (Iteration variables must be names a filter may use.)
            "value.items.exists(key, key.qty > 10)",
            "value.a.exists(key, value.b.exists(offset, key == offset))",
            "value.region in ['eu', 'us', 'ap'] && value.tags.all(key, key != 'test')",
            &format!("{}.exists(key, key == value.n)", list(400)),
        ] {
            assert!(compile(fine).is_ok(), "{fine}: {:?}", compile(fine).err());
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_a_stack() {
        let limits = Limits::from(&crate::config::WebSocketConfig::default());
        // Without the depth check the parser overflowed this thread's stack (and aborted the
        // process) at 50 nested parentheses.
        for deep in [
            format!("{}offset > 1{}", "(".repeat(1000), ")".repeat(1000)),
            format!("{}true", "!".repeat(1000)),
            format!("[{}1{}] == []", "[".repeat(500), "]".repeat(500)),
        ] {
            match Filter::compile(&deep, &env(), &limits) {
                Err(ShapeError::BadFilter(m)) => assert!(m.contains("levels deep"), "{m}"),
                other => panic!("accepted or wrong error: {:?}", other.err()),
            }
        }
        // Within the limit, parsing runs on the compiling thread's large stack.
        let parens = format!(
            "{}offset > 1{}",
            "(".repeat(MAX_FILTER_DEPTH - 1),
            ")".repeat(MAX_FILTER_DEPTH - 1)
        );
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let rt = rt.unwrap_or_else(|e| panic!("{e}"));
        let shape = rt.block_on(compile_shape(Some(parens), None, env(), limits));
        assert!(shape.is_ok(), "{:?}", shape.err());
    }

    #[test]
    fn the_deepest_accepted_filter_evaluates_on_an_ordinary_thread() {
        // Compiled on the large stack, evaluated here (2 MiB, like a runtime worker).
        let limits = Limits::from(&crate::config::WebSocketConfig::default());
        let n = MAX_FILTER_DEPTH - 3;
        let chain = ["offset > 1"; 60].join(" || ");
        let unary = format!("{}(offset > 1)", "!".repeat(n));
        let lists = format!("{}1{} != []", "[".repeat(n), "]".repeat(n));
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let rt = rt.unwrap_or_else(|e| panic!("{e}"));
        for src in [chain, unary, lists] {
            let shape = rt.block_on(compile_shape(Some(src.clone()), None, env(), limits));
            let shape = shape.unwrap_or_else(|e| panic!("{src}: {e}"));
            let r = record(r#"{"a":1}"#);
            let out = shape.render(&r, &env(), &mut None, &mut None);
            assert!(out.is_ok(), "{out:?}");
        }
    }

    fn render(fields: &[&str], value: &str) -> Result<String, String> {
        let fields: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        let shape = Shape::new(None, Some(&fields), &env(), &LIMITS).map_err(|e| e.to_string())?;
        let r = record(value);
        let out = shape.render(&r, &env(), &mut None, &mut None)?;
        Ok(String::from_utf8_lossy(&out.unwrap_or_default()).to_string())
    }

    #[test]
    fn projection_keeps_only_the_paths_nested_as_before() {
        let v = r#"{"id":7,"amount":1.5,"customer":{"name":"Ana","tier":"gold"},"tags":["a"]}"#;
        assert_eq!(
            render(&["value.id"], v),
            Ok(r#"{"partition":1,"offset":42,"timestamp":1732690000000,"value":{"id":7}}"#.into())
        );
        assert_eq!(
            render(&["value.customer.tier", "value.id", "key"], v),
            Ok(r#"{"partition":1,"offset":42,"timestamp":1732690000000,"key":"k1","value":{"id":7,"customer":{"tier":"gold"}}}"#.into())
        );
        assert_eq!(
            render(&["value.customer", "value.customer.tier"], v),
            Ok(r#"{"partition":1,"offset":42,"timestamp":1732690000000,"value":{"customer":{"name":"Ana","tier":"gold"}}}"#.into()),
            "a shorter path keeps its whole subtree"
        );
        assert_eq!(
            render(&["value.nope"], v),
            Ok(r#"{"partition":1,"offset":42,"timestamp":1732690000000}"#.into()),
            "absent paths are left out"
        );
    }

    #[test]
    fn bad_projections_are_refused() {
        assert!(render(&["value..id"], "{}").is_err());
        assert!(render(&["body.id"], "{}").is_err());
        assert!(render(&["key", "value.a", "value.b", "value.c", "value.d"], "{}").is_err());
    }

    #[test]
    fn equal_shapes_have_equal_keys() -> Result<(), ShapeError> {
        let f = |filter: Option<&str>, fields: Option<&[String]>| {
            Shape::new(filter, fields, &env(), &LIMITS).map(|s| s.key)
        };
        let ab = ["value.a".to_string(), "value.b".to_string()];
        let ba = ["value.b".to_string(), "value.a".to_string()];
        assert_eq!(
            f(Some("offset > 1"), Some(&ab))?,
            f(Some(" offset > 1 "), Some(&ba))?
        );
        assert_ne!(f(None, None)?, f(None, Some(&ab))?);
        assert_ne!(f(Some("offset > 1"), None)?, f(Some("offset > 2"), None)?);
        assert_eq!(f(None, None)?, Shape::whole().key);
        Ok(())
    }
}
