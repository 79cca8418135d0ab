//! The translation of a filter's syntax tree into a [`Pred`]: `None` for any part the compiled
//! filters do not know, so that the filter runs on the interpreter.

use cel::common::ast::{CallExpr, ComprehensionExpr, Expr, IdedExpr, LiteralValue, operators};

use super::{CmpOp, FieldPath, Haystack, Literal, Operand, Pred, Root, Step, StrFn};
use crate::filter::bounds::limited_regex;

/// `e` as a predicate; `scope` holds the loop variables of the comprehensions around it,
/// outermost first.
pub(super) fn pred(e: &Expr, scope: &mut Vec<String>) -> Option<Pred> {
    match e {
        Expr::Select(s) if s.test => {
            Some(Pred::Has(path(&s.operand.expr, scope)?, s.field.clone()))
        }
        Expr::Call(c) => call(c, scope).or_else(|| operand(e, scope).map(Pred::Value)),
        Expr::Comprehension(c) => comprehension(c, scope),
        _ => operand(e, scope).map(Pred::Value),
    }
}

fn call(c: &CallExpr, scope: &mut Vec<String>) -> Option<Pred> {
    let name = c.func_name.as_str();
    match (c.target.as_deref(), c.args.as_slice()) {
        (None, [a, b]) if name == operators::LOGICAL_AND => {
            Some(Pred::And(flatten([a, b], scope, |p| match p {
                Pred::And(v) => Ok(v),
                other => Err(other),
            })?))
        }
        (None, [a, b]) if name == operators::LOGICAL_OR => {
            Some(Pred::Or(flatten([a, b], scope, |p| match p {
                Pred::Or(v) => Ok(v),
                other => Err(other),
            })?))
        }
        (None, [s, re]) if name == "matches" => matches(&s.expr, &re.expr, scope),
        (None, [a]) if name == operators::LOGICAL_NOT => {
            Some(Pred::Not(Box::new(pred(&a.expr, scope)?)))
        }
        (None, [a, b]) if name == operators::IN => {
            let hay = match &b.expr {
                Expr::List(l) if l.optional_indices.is_empty() => Haystack::List(
                    l.elements
                        .iter()
                        .map(|e| operand(&e.expr, scope))
                        .collect::<Option<_>>()?,
                ),
                other => Haystack::Operand(operand(other, scope)?),
            };
            Some(Pred::In(operand(&a.expr, scope)?, hay))
        }
        (None, [a, b]) => {
            let op = CmpOp::from_name(name)?;
            Some(Pred::Cmp(
                op,
                operand(&a.expr, scope)?,
                operand(&b.expr, scope)?,
            ))
        }
        (Some(t), [arg]) => {
            let f = match name {
                "startsWith" => StrFn::StartsWith,
                "endsWith" => StrFn::EndsWith,
                "contains" => StrFn::Contains,
                "matches" => return matches(&t.expr, &arg.expr, scope),
                _ => return None,
            };
            Some(Pred::Str(
                f,
                operand(&t.expr, scope)?,
                operand(&arg.expr, scope)?,
            ))
        }
        _ => None,
    }
}

/// `range.exists(x, body)` and `range.all(x, body)` as the parser expands them: a fold over
/// `range` with the boolean accumulator `@result`, false for `exists` (step `@result || body`,
/// stopping once true), true for `all` (`@result && body`, stopping once false). Anything else
/// (`exists_one`, `map`, `filter`, two loop variables) is left to the interpreter.
fn comprehension(c: &ComprehensionExpr, scope: &mut Vec<String>) -> Option<Pred> {
    let accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if *n == c.accu_var);
    let all = match &c.accu_init.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => *b.inner(),
        _ => return None,
    };
    let (step_op, stops) = if all {
        (operators::LOGICAL_AND, None)
    } else {
        (operators::LOGICAL_OR, Some(operators::LOGICAL_NOT))
    };
    let Expr::Call(step) = &c.loop_step.expr else {
        return None;
    };
    let [acc, body] = step.args.as_slice() else {
        return None;
    };
    let Expr::Call(cond) = &c.loop_cond.expr else {
        return None;
    };
    let cond_ok = match (stops, cond.args.as_slice()) {
        (None, [a]) => accu(a),
        (Some(not), [a]) => matches!(&a.expr, Expr::Call(n)
            if n.func_name == not && n.target.is_none() && n.args.len() == 1 && accu(&n.args[0])),
        _ => false,
    };
    let shape = c.iter_var2.is_none()
        && accu(&c.result)
        && accu(acc)
        && step.target.is_none()
        && step.func_name == step_op
        && cond.target.is_none()
        && cond.func_name == operators::NOT_STRICTLY_FALSE
        && cond_ok;
    if !shape || scope.len() >= usize::from(u8::MAX) {
        return None;
    }
    let range = operand(&c.iter_range.expr, scope)?;
    scope.push(c.iter_var.clone());
    let body = pred(&body.expr, scope);
    scope.pop();
    Some(Pred::Loop {
        range,
        all,
        body: Box::new(body?),
    })
}

/// `a && b` (or `||`) with nested ones of the same operator made one list: the operators are
/// commutative and associative, so `(a && b) && c` is `a && b && c` in any order.
fn flatten(
    sides: [&IdedExpr; 2],
    scope: &mut Vec<String>,
    same: impl Fn(Pred) -> Result<Vec<Pred>, Pred>,
) -> Option<Vec<Pred>> {
    let mut out = Vec::new();
    for side in sides {
        match same(pred(&side.expr, scope)?) {
            Ok(v) => out.extend(v),
            Err(one) => out.push(one),
        }
    }
    Some(out)
}

/// `s.matches('re')` with a literal, valid pattern: compiled now (within the size limits
/// subscribe checks), as `regex` (which the interpreter uses too) would compile it on every
/// record.
fn matches(target: &Expr, pattern: &Expr, scope: &[String]) -> Option<Pred> {
    let Expr::Literal(LiteralValue::String(p)) = pattern else {
        return None;
    };
    let re = limited_regex(p.inner()).ok()?;
    Some(Pred::Matches(operand(target, scope)?, Box::new(re)))
}

fn operand(e: &Expr, scope: &[String]) -> Option<Operand> {
    match e {
        Expr::Literal(l) => Literal::from_ast(l).map(Operand::Lit),
        _ => path(e, scope).map(Operand::Path),
    }
}

/// A field path; a name is the innermost loop variable of that name in `scope` (shadowing the
/// record's variables, as in CEL), else one of the record's.
fn path(e: &Expr, scope: &[String]) -> Option<FieldPath> {
    match e {
        Expr::Ident(name) => Some(FieldPath {
            root: match scope.iter().rposition(|bound| bound == name) {
                Some(depth) => Root::Item(u8::try_from(depth).ok()?),
                None => Root::parse(name)?,
            },
            steps: Vec::new(),
        }),
        Expr::Select(s) if !s.test => {
            let mut p = path(&s.operand.expr, scope)?;
            p.steps.push(Step::Field(s.field.clone()));
            Some(p)
        }
        Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => {
            let [on, idx] = c.args.as_slice() else {
                return None;
            };
            let mut p = path(&on.expr, scope)?;
            p.steps.push(match &idx.expr {
                Expr::Literal(LiteralValue::String(s)) => Step::Field(s.inner().to_owned()),
                Expr::Literal(LiteralValue::Int(i)) => Step::Index(i128::from(*i.inner())),
                Expr::Literal(LiteralValue::UInt(u)) => Step::Index(i128::from(*u.inner())),
                _ => return None,
            });
            Some(p)
        }
        _ => None,
    }
}
