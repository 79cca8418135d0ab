//! Compiled filters: a CEL filter turned once, at subscribe time, into a native predicate over
//! the decoded record. Input: the filter's syntax tree (`cel::Program::expression`); output: a
//! [`Compiled`] predicate, or `None` when the filter uses anything this compiler does not know
//! (arithmetic, `size`, the macros `map`, `filter` and `exists_one`, conditionals, ...), which
//! then runs on the interpreter as before. The translation from the syntax tree is in
//! [`from_ast`].
//!
//! Why: the interpreter needs the whole record converted to `cel::Value` for every record; a
//! compiled filter reads only the fields it names (`view.rs`) and runs its regular
//! expressions compiled once. It means exactly what the interpreter means, errors included:
//! a missing field or a wrong type is an error, and `&&` / `||` are CEL's commutative
//! operators (`false && error` is `false`, `true || error` is `true`, an error otherwise).
//! `differential_tests` checks that against the interpreter.
//!
//! Compiled: comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`) between field paths (`value.a.b`,
//! `value["x"]`, `value.list[0]`, `key`, `headers["x"]`, `partition`, `offset`, `timestamp`)
//! and scalar literals; `in` a list of those or a field; `has(path.f)`; `startsWith`,
//! `endsWith`, `contains`; `matches` with a literal pattern; `&&`, `||`, `!`; a boolean field
//! or literal on its own; `exists` and `all` over a field (a list's elements, a map's keys) of
//! any of these, their loop variable of any name (`value.items.exists(i, i.qty > 5)`). [`Compiled::equality_terms`] and [`Compiled::range_terms`] describe
//! the top-level conjuncts, for indexing filters by the fields they pin.

use std::cmp::Ordering;

mod from_ast;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};

use super::bounds::RECORD_LIST_BOUND;
pub use super::view::{Fault, Root};
use super::view::{View, compare, equals};
use crate::record::Record;

/// A scalar literal of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(String),
}

impl Literal {
    fn from_ast(l: &LiteralValue) -> Option<Self> {
        Some(match l {
            LiteralValue::Null => Literal::Null,
            LiteralValue::Boolean(b) => Literal::Bool(*b.inner()),
            LiteralValue::Int(i) => Literal::Int(*i.inner()),
            LiteralValue::UInt(u) => Literal::UInt(*u.inner()),
            LiteralValue::Double(d) => Literal::Double(*d.inner()),
            LiteralValue::String(s) => Literal::String(s.inner().to_owned()),
            // Bytes never equal anything a record holds; the interpreter keeps them.
            LiteralValue::Bytes(_) => return None,
        })
    }

    fn view(&self) -> View<'_> {
        match self {
            Literal::Null => View::Null,
            Literal::Bool(b) => View::Bool(*b),
            Literal::Int(i) => View::Int(*i),
            Literal::UInt(u) => View::UInt(*u),
            Literal::Double(d) => View::Double(*d),
            Literal::String(s) => View::Str(s),
        }
    }
}

/// One step down a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// `.name` or `["name"]`: a map entry.
    Field(String),
    /// `[i]`: a list element (an `int` or `uint` literal).
    Index(i128),
}

/// A field of the record: a variable and the steps below it, `value.customer["tier"]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub root: Root,
    pub steps: Vec<Step>,
}

impl FieldPath {
    /// The field's value in `record`; an error where the interpreter gives one. (A path of
    /// a loop variable, [`Root::Item`], is only resolved inside its comprehension.)
    pub fn resolve<'a, 'p>(&'p self, record: &'a Record) -> Result<View<'a>, Fault<'p>> {
        self.resolve_in(record, &[])
    }

    /// The field's value in `record`, with `items` the loop variables' current values.
    fn resolve_in<'a, 'p>(
        &'p self,
        record: &'a Record,
        items: &[View<'a>],
    ) -> Result<View<'a>, Fault<'p>> {
        let mut v = View::variable(record, self.root, items);
        for step in &self.steps {
            v = match step {
                Step::Field(name) => v.field(name)?,
                Step::Index(i) => v.element(*i)?,
            };
        }
        Ok(v)
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.root.name())?;
        for step in &self.steps {
            match step {
                Step::Field(name) => write!(f, "[{name:?}]")?,
                Step::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// What a comparison or function compares: a field or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(FieldPath),
    Lit(Literal),
}

impl Operand {
    fn resolve<'a, 'p: 'a>(
        &'p self,
        record: &'a Record,
        items: &[View<'a>],
    ) -> Result<View<'a>, Fault<'p>> {
        match self {
            Operand::Path(p) => p.resolve_in(record, items),
            Operand::Lit(l) => Ok(l.view()),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            operators::EQUALS => CmpOp::Eq,
            operators::NOT_EQUALS => CmpOp::Ne,
            operators::LESS => CmpOp::Lt,
            operators::LESS_EQUALS => CmpOp::Le,
            operators::GREATER => CmpOp::Gt,
            operators::GREATER_EQUALS => CmpOp::Ge,
            _ => return None,
        })
    }

    /// The operator with its operands swapped: `a < b` is `b > a`.
    fn flipped(self) -> Self {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            same => same,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => operators::EQUALS,
            CmpOp::Ne => operators::NOT_EQUALS,
            CmpOp::Lt => operators::LESS,
            CmpOp::Le => operators::LESS_EQUALS,
            CmpOp::Gt => operators::GREATER,
            CmpOp::Ge => operators::GREATER_EQUALS,
        }
    }

    fn apply<'p>(self, a: View<'_>, b: View<'_>) -> Result<bool, Fault<'p>> {
        let ordered = |test: fn(Ordering) -> bool| {
            compare(a, b).map(test).ok_or(Fault::NoSuchOverload {
                op: self.name(),
                lhs: a.type_name(),
                rhs: b.type_name(),
            })
        };
        match self {
            CmpOp::Eq => Ok(equals(a, b)),
            CmpOp::Ne => Ok(!equals(a, b)),
            CmpOp::Lt => ordered(Ordering::is_lt),
            CmpOp::Le => ordered(Ordering::is_le),
            CmpOp::Gt => ordered(Ordering::is_gt),
            CmpOp::Ge => ordered(Ordering::is_ge),
        }
    }
}

/// The string functions that take a string argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

/// What `in` looks in.
#[derive(Debug, Clone, PartialEq)]
pub enum Haystack {
    /// A list written in the filter: `x in ['a', 'b']`.
    List(Vec<Operand>),
    /// A field (a list or a map) or a literal (an error: not a container).
    Operand(Operand),
}

/// A compiled predicate. Evaluation is three-valued: true, false, or an error.
#[derive(Debug)]
enum Pred {
    /// A field or literal that must be a boolean.
    Value(Operand),
    Cmp(CmpOp, Operand, Operand),
    In(Operand, Haystack),
    /// `has(path.field)`.
    Has(FieldPath, String),
    Str(StrFn, Operand, Operand),
    Matches(Operand, Box<regex::Regex>),
    Not(Box<Pred>),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    /// `range.exists(x, body)`, or with `all`, `range.all(x, body)`: `body` with `x` (a
    /// [`Root::Item`] one deeper than the enclosing comprehensions') bound to each of the
    /// range's items in turn, decided as CEL's `||` (`&&`) over them.
    Loop {
        range: Operand,
        all: bool,
        body: Box<Pred>,
    },
}

/// A filter compiled to a native predicate.
#[derive(Debug)]
pub struct Compiled {
    pred: Pred,
}

impl Compiled {
    /// Compiles the filter's syntax tree; `None` when it uses anything not compiled here.
    pub fn new(expr: &IdedExpr) -> Option<Self> {
        from_ast::pred(&expr.expr, &mut Vec::new()).map(|pred| Compiled { pred })
    }

    /// The top-level conjuncts of a filter that does not compile as a whole but some of whose
    /// `&&` operands do (`value.region == 'eu' && value.items.exists(i, i.qty > 5)`): a
    /// record can match the filter only if each of these is true (CEL's `&&` is false or an
    /// error otherwise), so they place the filter in the index. Never evaluated as the filter.
    pub fn guard(expr: &IdedExpr) -> Option<Self> {
        fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
            match e {
                Expr::Call(c)
                    if c.target.is_none()
                        && c.func_name == operators::LOGICAL_AND
                        && c.args.len() == 2 =>
                {
                    for a in &c.args {
                        conjuncts(&a.expr, out);
                    }
                }
                other => out.push(other),
            }
        }
        let mut all = Vec::new();
        conjuncts(&expr.expr, &mut all);
        let mut kept: Vec<Pred> = all
            .into_iter()
            .filter_map(|e| from_ast::pred(e, &mut Vec::new()))
            .collect();
        match kept.len() {
            0 => None,
            1 => kept.pop().map(|pred| Compiled { pred }),
            _ => Some(Compiled {
                pred: Pred::And(kept),
            }),
        }
    }

    /// The most predicate steps it takes per record: one per comparison or test (per item
    /// of a literal `in` list), a loop's body counted [`RECORD_LIST_BOUND`] times, as the
    /// interpreter's estimate counts a comprehension over a list of the record.
    pub fn steps(&self) -> u64 {
        self.pred.steps()
    }

    /// True when the record matches; an error where the interpreter would give one.
    pub fn eval<'p>(&'p self, record: &Record) -> Result<bool, Fault<'p>> {
        self.pred.eval(record, &mut Vec::new())
    }

    fn conjuncts(&self) -> &[Pred] {
        match &self.pred {
            Pred::And(all) => all,
            one => std::slice::from_ref(one),
        }
    }

    /// The top-level conjuncts `path == literal` (either way round): the record cannot match
    /// unless each of its fields equals its literal (CEL equality: `1 == 1.0`).
    pub fn equality_terms(&self) -> Vec<(&FieldPath, &Literal)> {
        self.conjuncts()
            .iter()
            .filter_map(|p| match p.path_term()? {
                (path, CmpOp::Eq, lit) => Some((path, lit)),
                _ => None,
            })
            .collect()
    }

    /// The top-level conjuncts `path < literal` (and `<=`, `>`, `>=`, either way round), the
    /// path put first.
    pub fn range_terms(&self) -> Vec<(&FieldPath, CmpOp, &Literal)> {
        self.conjuncts()
            .iter()
            .filter_map(|p| p.path_term())
            .filter(|(_, op, _)| !matches!(op, CmpOp::Eq | CmpOp::Ne))
            .collect()
    }

    /// The top-level conjuncts `path in [literals]`.
    pub fn in_terms(&self) -> Vec<(&FieldPath, Vec<&Literal>)> {
        self.conjuncts()
            .iter()
            .filter_map(|p| match p {
                Pred::In(Operand::Path(path), Haystack::List(items)) => {
                    let lits: Option<Vec<&Literal>> = items
                        .iter()
                        .map(|i| match i {
                            Operand::Lit(l) => Some(l),
                            Operand::Path(_) => None,
                        })
                        .collect();
                    Some((path, lits?))
                }
                _ => None,
            })
            .collect()
    }
}

impl Pred {
    fn path_term(&self) -> Option<(&FieldPath, CmpOp, &Literal)> {
        match self {
            Pred::Cmp(op, Operand::Path(p), Operand::Lit(l)) => Some((p, *op, l)),
            Pred::Cmp(op, Operand::Lit(l), Operand::Path(p)) => Some((p, op.flipped(), l)),
            _ => None,
        }
    }

    /// See [`Compiled::steps`].
    fn steps(&self) -> u64 {
        match self {
            Pred::In(_, Haystack::List(list)) => (list.len() as u64).max(1),
            Pred::Value(_)
            | Pred::Cmp(..)
            | Pred::In(..)
            | Pred::Has(..)
            | Pred::Str(..)
            | Pred::Matches(..) => 1,
            Pred::Not(p) => p.steps(),
            Pred::And(ps) | Pred::Or(ps) => {
                ps.iter().fold(0u64, |acc, p| acc.saturating_add(p.steps()))
            }
            Pred::Loop { body, .. } => RECORD_LIST_BOUND
                .saturating_mul(body.steps())
                .saturating_add(1),
        }
    }

    /// The predicate on `record`, with `items` the current values of the loop variables of
    /// the comprehensions it is in (outermost first).
    fn eval<'p: 'a, 'a>(
        &'p self,
        record: &'a Record,
        items: &mut Vec<View<'a>>,
    ) -> Result<bool, Fault<'p>> {
        match self {
            Pred::Value(o) => match o.resolve(record, items)? {
                View::Bool(b) => Ok(b),
                other => Err(Fault::NotBoolean(other.type_name())),
            },
            Pred::Cmp(op, a, b) => op.apply(a.resolve(record, items)?, b.resolve(record, items)?),
            Pred::In(needle, hay) => {
                let needle = needle.resolve(record, items)?;
                match hay {
                    Haystack::List(list) => {
                        // The interpreter builds the whole list before it looks.
                        let mut found = false;
                        for item in list {
                            found |= equals(item.resolve(record, items)?, needle);
                        }
                        Ok(found)
                    }
                    Haystack::Operand(o) => o.resolve(record, items)?.holds(needle),
                }
            }
            Pred::Has(path, field) => path.resolve_in(record, items)?.has(field),
            Pred::Str(f, target, arg) => {
                let arg = arg.resolve(record, items)?;
                let target = target.resolve(record, items)?;
                let name = match f {
                    StrFn::StartsWith => "startsWith",
                    StrFn::EndsWith => "endsWith",
                    StrFn::Contains => "contains",
                };
                match (target, arg) {
                    (View::Str(t), View::Str(a)) => Ok(match f {
                        StrFn::StartsWith => t.starts_with(a),
                        StrFn::EndsWith => t.ends_with(a),
                        StrFn::Contains => t.contains(a),
                    }),
                    (t, a) => Err(Fault::NoSuchOverload {
                        op: name,
                        lhs: t.type_name(),
                        rhs: a.type_name(),
                    }),
                }
            }
            Pred::Matches(target, re) => match target.resolve(record, items)? {
                View::Str(t) => Ok(re.is_match(t)),
                other => Err(Fault::NoSuchOverload {
                    op: "matches",
                    lhs: other.type_name(),
                    rhs: "string",
                }),
            },
            Pred::Not(p) => p.eval(record, items).map(|b| !b),
            Pred::And(all) => junction(all.iter().map(|p| p.eval(record, items)), false),
            Pred::Or(any) => junction(any.iter().map(|p| p.eval(record, items)), true),
            Pred::Loop { range, all, body } => {
                let over = range.resolve(record, items)?;
                let Some(each) = over.items() else {
                    return Err(Fault::NoSuchOverload {
                        op: if *all { "all" } else { "exists" },
                        lhs: over.type_name(),
                        rhs: "bool",
                    });
                };
                // The interpreter's `@result || body` (`&&`) item by item, stopping once
                // decided.
                junction(
                    each.map(|item| {
                        items.push(item);
                        let r = body.eval(record, items);
                        items.pop();
                        r
                    }),
                    !*all,
                )
            }
        }
    }
}

/// CEL's commutative `&&` (`decisive` false) and `||` (true) over `outcomes`, evaluated in
/// turn: any that gives `decisive` decides (the rest are not evaluated), errors elsewhere
/// notwithstanding; else any error; else `!decisive`.
fn junction<'p>(
    outcomes: impl Iterator<Item = Result<bool, Fault<'p>>>,
    decisive: bool,
) -> Result<bool, Fault<'p>> {
    let mut fault = None;
    for outcome in outcomes {
        match outcome {
            Ok(b) if b == decisive => return Ok(decisive),
            Ok(_) => {}
            Err(e) => fault = fault.or(Some(e)),
        }
    }
    fault.map_or(Ok(!decisive), Err)
}
