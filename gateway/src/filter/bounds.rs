//! What bounds a filter's cost: its nesting depth (the `cel` parser and interpreter recurse per
//! level, and a stack overflow aborts the process), its evaluation steps per record (a static
//! bound over comprehensions), and where it is compiled (a thread with a large stack, off the
//! runtime). Input: a filter's text and syntax tree; output: its depth and cost, or a shape
//! compiled off the runtime ([`compile_shape`]).

use std::sync::Arc;

use cel::Env;

use super::{Limits, Shape, ShapeError};

/// The deepest a filter may nest. The `cel` parser and interpreter recurse once per level, and
/// a thread's stack is finite: 50 nested parentheses overflowed a 2 MiB stack in the parser (a
/// debug build), which aborts the whole process. Filters are compiled on a thread with a large
/// stack ([`compile_shape`]) and refused past this depth, so evaluating one on a runtime
/// thread stays far from its stack's end.
pub const MAX_FILTER_DEPTH: usize = 32;

/// The stack of the threads that compile filters: enough for the parser on any text
/// [`text_depth`] lets through.
const COMPILE_STACK_BYTES: usize = 256 << 20;

/// At most this many filters compile at once (each on a thread of its own). The semaphore is
/// fair (first come, first served) and a connection compiles one filter at a time (a session
/// handles its requests in turn), so one client's slow filters hold at most one place each
/// and never jump the queue.
static COMPILING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// How long a subscribe waits for its filter to compile before it is refused. Filters are
/// bounded in size, nodes and steps, so this is far above any found so far (under 50 ms in a
/// debug build); it keeps a subscribe from hanging if one is not.
const COMPILE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds a subscription's shape off the runtime threads: on a thread with a large stack (the
/// parser recurses per nesting level) where the trial evaluation also runs, at most four at a
/// time. What [`Shape::new`] gives, or a `BadFilter` when no thread could be started or the
/// compile took over [`COMPILE_TIME_LIMIT`].
pub async fn compile_shape(
    filter: Option<String>,
    fields: Option<Vec<String>>,
    env: Arc<Env>,
    limits: Limits,
) -> Result<Shape, ShapeError> {
    let compiled = on_compile_thread(&COMPILING, COMPILE_TIME_LIMIT, move || {
        Shape::new(filter.as_deref(), fields.as_deref(), &env, &limits)
    })
    .await;
    compiled
        .map_err(|why| ShapeError::BadFilter(format!("cannot compile the filter now: {why}")))?
}

/// `f` run on a compile thread once `places` has room; its place is held until the thread
/// ends, even when the caller stops waiting (a dropped subscribe, or past `limit`), so the
/// threads running never outnumber the places.
async fn on_compile_thread<T: Send + 'static>(
    places: &'static tokio::sync::Semaphore,
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let place = places.acquire().await.map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lakewire-filter".into())
        .stack_size(COMPILE_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(f());
            drop(place);
        })
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_)) => Err("the compiling thread ended early".into()),
        Err(_) => Err(format!("it took over {} s to compile", limit.as_secs_f64())),
    }
}

/// How deep `src` nests, read from the text before the parser sees it: open brackets, plus
/// runs of the unary operators `!` and `-` (outside string literals).
pub(super) fn text_depth(src: &str) -> usize {
    let (mut depth, mut max, mut unary) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in src.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '!' | '-' => unary += 1,
            c if c.is_whitespace() => {}
            _ => unary = 0,
        }
        max = max.max(depth + unary);
    }
    max
}

/// The depth of the expression tree.
pub(super) fn ast_depth(e: &cel::common::ast::Expr) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let entry = |e: &EntryExpr| match e {
        EntryExpr::MapEntry(me) => ast_depth(&me.key.expr).max(ast_depth(&me.value.expr)),
        EntryExpr::StructField(f) => ast_depth(&f.value.expr),
    };
    1 + match e {
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .iter()
        .map(|x| ast_depth(&x.expr))
        .max()
        .unwrap_or(0),
        Expr::List(l) => l
            .elements
            .iter()
            .map(|x| ast_depth(&x.expr))
            .max()
            .unwrap_or(0),
        Expr::Map(m) => m.entries.iter().map(|x| entry(&x.expr)).max().unwrap_or(0),
        Expr::Struct(st) => st.entries.iter().map(|x| entry(&x.expr)).max().unwrap_or(0),
        Expr::Call(call) => call
            .target
            .iter()
            .map(|t| ast_depth(&t.expr))
            .chain(call.args.iter().map(|a| ast_depth(&a.expr)))
            .max()
            .unwrap_or(0),
        Expr::Select(s) => ast_depth(&s.operand.expr),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

/// The operands of `e`, in order (a comprehension's range, initial value, condition, step and
/// result).
pub(super) fn children(e: &cel::common::ast::Expr) -> Vec<&cel::common::ast::IdedExpr> {
    use cel::common::ast::{EntryExpr, Expr};
    fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&cel::common::ast::IdedExpr> {
        entries
            .iter()
            .flat_map(|x| match &x.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect()
    }
    match e {
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => entries(&m.entries),
        Expr::Struct(st) => entries(&st.entries),
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(call.args.iter())
            .collect(),
        Expr::Select(s) => vec![&s.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// The most bytes one regular expression of a filter may compile to (`regex`'s `size_limit`),
/// and the most its lazy DFA may cache (`dfa_size_limit`): with `max_filters_per_topic`
/// filters a topic's patterns hold at most that many times 2 MiB. Typical patterns (`^order-
/// [0-9]{6}$`, `(?i)error|warn`, an e-mail address) take under 64 KiB; `\w{20}` takes
/// about 1 MiB (`\w` is Unicode's), `\w{100}` 10 MiB: refused.
pub const MAX_REGEX_BYTES: usize = 1 << 20;

/// `pattern` compiled within [`MAX_REGEX_BYTES`].
pub(super) fn limited_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
}

/// Why the first literal pattern of a `matches` in `e` cannot be used: not a regular
/// expression, or over [`MAX_REGEX_BYTES`] compiled. Checked at subscribe, so a pattern that
/// would fail on every record never reaches one.
pub(super) fn bad_pattern(e: &cel::common::ast::Expr) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue};
    let sub = |x: &cel::common::ast::IdedExpr| bad_pattern(&x.expr);
    match e {
        Expr::Call(call) => {
            let pattern = match (call.target.as_deref(), call.args.as_slice()) {
                (Some(_), [p]) | (None, [_, p]) if call.func_name == "matches" => Some(&p.expr),
                _ => None,
            };
            if let Some(Expr::Literal(LiteralValue::String(p))) = pattern {
                match limited_regex(p.inner()) {
                    Err(regex::Error::CompiledTooBig(_)) => {
                        return Some(format!(
                            "the regular expression {:?} is too large: it compiles to over {} KiB (the limit)",
                            p.inner(),
                            MAX_REGEX_BYTES / 1024
                        ));
                    }
                    Err(e) => {
                        return Some(format!("{:?} is not a regular expression: {e}", p.inner()));
                    }
                    Ok(_) => {}
                }
            }
            children(e).into_iter().find_map(sub)
        }
        other => children(other).into_iter().find_map(sub),
    }
}

/// The first name `e` uses that is neither bound by an enclosing comprehension (its loop and
/// accumulator variables, in its condition, step and result, as CEL scopes them: an inner loop's
/// variable shadows an outer one) nor in `known`.
pub(super) fn unknown_name<'e>(
    e: &'e cel::common::ast::Expr,
    known: &[&str],
    bound: &mut Vec<&'e str>,
) -> Option<&'e str> {
    use cel::common::ast::Expr;
    let first = |x: &'e cel::common::ast::IdedExpr, bound: &mut Vec<&'e str>| {
        unknown_name(&x.expr, known, bound)
    };
    match e {
        Expr::Ident(name) => {
            let name = name.as_str();
            (!bound.contains(&name) && !known.contains(&name)).then_some(name)
        }
        Expr::Comprehension(c) => {
            if let Some(n) = first(&c.iter_range, bound).or_else(|| first(&c.accu_init, bound)) {
                return Some(n);
            }
            let outer = bound.len();
            bound.push(&c.iter_var);
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2);
            }
            bound.push(&c.accu_var);
            let found = first(&c.loop_cond, bound)
                .or_else(|| first(&c.loop_step, bound))
                .or_else(|| first(&c.result, bound));
            bound.truncate(outer);
            found
        }
        other => children(other).into_iter().find_map(|x| first(x, bound)),
    }
}

/// The most evaluation steps a filter may take per record, by `cost`. A step is one node
/// evaluated once; the interpreter takes well under a microsecond per step, so a filter at the
/// limit costs at most a few milliseconds per record. Without it, 512 nodes of nested
/// comprehensions over literal lists were ~10^28 steps: one subscribe could pin a CPU forever.
pub const MAX_FILTER_STEPS: u64 = 100_000;

/// How many of a compiled filter's steps ([`super::compiled::Compiled::steps`]) cost what one
/// interpreter step does, at least. The filter bench's mixed set, where every filter compiles,
/// takes 19 µs compiled and 103 µs on the interpreter per record against 100 filters (5.3×;
/// BENCHMARKS.md); a compiled comprehension saves more (no list of `cel::Value`s per record),
/// so 5 undercounts none.
pub const COMPILED_STEPS_PER_STEP: u64 = 5;

/// How many items a comprehension over a list of the record (`value.items.exists(...)`) is
/// counted as. The real count is the record's, so its cost grows with the record, as decoding
/// does; what the budget refuses is nesting that multiplies record sizes.
pub const RECORD_LIST_BOUND: u64 = 100;

/// A filter's worst-case evaluation cost: `steps` per record, and `items`, the most items the
/// expression's value can have when it is a list (for a comprehension over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cost {
    pub(super) steps: u64,
    pub(super) items: u64,
}

/// The worst-case cost of `e` (saturating: a huge estimate stays huge). A comprehension costs
/// its range's items times its loop body; a list literal has as many items as elements; a list
/// from the record has [`RECORD_LIST_BOUND`]; `map` and `filter` keep their range's count.
pub(super) fn cost(e: &cel::common::ast::Expr) -> Cost {
    use cel::common::ast::Expr;
    let leaf = Cost { steps: 1, items: 0 };
    let sum = |parts: &mut dyn Iterator<Item = Cost>| {
        parts.fold(leaf, |acc, c| Cost {
            steps: acc.steps.saturating_add(c.steps),
            items: 0,
        })
    };
    match e {
        Expr::Comprehension(c) => {
            let range = cost(&c.iter_range.expr);
            let body = [&c.loop_cond, &c.loop_step]
                .iter()
                .fold(0u64, |acc, x| acc.saturating_add(cost(&x.expr).steps));
            let fixed = [&c.accu_init, &c.result]
                .iter()
                .fold(range.steps, |acc, x| {
                    acc.saturating_add(cost(&x.expr).steps)
                });
            let items = if range.items == 0 {
                RECORD_LIST_BOUND
            } else {
                range.items
            };
            Cost {
                steps: fixed.saturating_add(items.saturating_mul(body)),
                // `map` and `filter` give at most as many items as they read.
                items,
            }
        }
        Expr::List(l) => {
            let inner = sum(&mut l.elements.iter().map(|x| cost(&x.expr)));
            Cost {
                steps: inner.steps,
                items: l.elements.len().max(1) as u64,
            }
        }
        Expr::Map(m) => sum(&mut m.entries.iter().map(|entry| {
            use cel::common::ast::EntryExpr;
            match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    let (k, v) = (cost(&me.key.expr), cost(&me.value.expr));
                    Cost {
                        steps: k.steps.saturating_add(v.steps),
                        items: 0,
                    }
                }
                EntryExpr::StructField(f) => cost(&f.value.expr),
            }
        })),
        Expr::Call(call) => sum(&mut call
            .target
            .iter()
            .map(|t| cost(&t.expr))
            .chain(call.args.iter().map(|a| cost(&a.expr)))),
        Expr::Select(s) => sum(&mut std::iter::once(cost(&s.operand.expr))),
        Expr::Struct(st) => sum(&mut st.entries.iter().map(|entry| {
            use cel::common::ast::EntryExpr;
            match &entry.expr {
                EntryExpr::MapEntry(me) => cost(&me.value.expr),
                EntryExpr::StructField(f) => cost(&f.value.expr),
            }
        })),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => leaf,
    }
}

#[cfg(test)]
mod compile_thread_tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::on_compile_thread;

    /// A dropped subscribe (its connection gone) used to give its place back while the filter
    /// still compiled: one client could keep any number of compile threads running.
    #[tokio::test]
    async fn a_compile_holds_its_place_until_its_thread_ends() {
        static PLACES: Semaphore = Semaphore::const_new(2);
        let (started_tx, started) = mpsc::channel();
        let (finish, finish_rx) = mpsc::channel::<()>();
        let waiting = tokio::spawn(on_compile_thread(
            &PLACES,
            Duration::from_secs(60),
            move || {
                let _ = started_tx.send(());
                let _ = finish_rx.recv();
            },
        ));
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the compile thread did not start: {e}"));
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(
            PLACES.available_permits(),
            1,
            "the running compile holds its place"
        );
        let _ = finish.send(());
        for _ in 0..300 {
            if PLACES.available_permits() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the place was not given back when the thread ended");
    }

    /// A compile that does not end is refused after the time limit, and keeps its place.
    #[tokio::test]
    async fn a_compile_past_its_time_limit_is_refused() {
        static PLACES: Semaphore = Semaphore::const_new(1);
        let (finish, finish_rx) = mpsc::channel::<()>();
        let got = on_compile_thread(&PLACES, Duration::from_millis(200), move || {
            let _ = finish_rx.recv();
        })
        .await;
        assert!(
            got.as_ref().is_err_and(|e| e.contains("took over")),
            "{got:?}"
        );
        assert_eq!(PLACES.available_permits(), 0);
        let _ = finish.send(());
    }
}
