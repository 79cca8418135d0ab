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

/// Issue 26 item 1: comprehension variables of any name, scoped as CEL scopes them (before,
/// every one but the names of the record's variables was refused as an unknown name).
#[test]
fn comprehension_variables_may_have_any_name_and_are_scoped() {
    let v = r#"{"items":[{"qty":3},{"qty":7}],"a":[1,2],"b":[2,3]}"#;
    for (src, want) in [
        ("value.items.exists(i, i.qty > 5)", true),
        ("value.items.all(i, i.qty > 5)", false),
        ("value.items.exists_one(item, item.qty > 5)", true),
        ("value.items.map(i, i.qty).exists(q, q == 7)", true),
        ("size(value.items.filter(i, i.qty > 5)) == 1", true),
        // Shadowing: inside, `value` and the inner `x` are the loops'.
        ("value.items.exists(value, value.qty == 3)", true),
        ("value.a.exists(x, value.b.exists(x, x == 3))", true),
        ("value.a.exists(x, value.b.exists(y, x == y))", true),
        // (The outer x is 1 once; the inner, shadowing it, never is.)
        ("value.a.exists(x, value.b.exists(x, x == 1))", false),
    ] {
        assert_eq!(eval(src, v), Ok(want), "{src}");
    }
    // A loop's variable is not a name outside the loop.
    for (src, name) in [
        ("value.items.exists(i, i.qty > 5) && i.qty == 1", "i"),
        ("value.a.exists(x, x == y)", "y"),
        ("value.a.map(x, x).exists(y, x == y)", "x"),
    ] {
        let e = compile(src).err().unwrap_or_default();
        assert!(
            e.contains(&format!("unknown name \"{name}\"")),
            "{src}: {e}"
        );
    }
}

/// Issue 26 item 2: a literal pattern is compiled within a size limit at subscribe, and one
/// over it (or not a regular expression) is refused there, inside comprehensions too (before,
/// `\w{100}` was accepted and compiled to some 10 MiB for every record the interpreter saw).
#[test]
fn oversize_and_invalid_patterns_are_refused_at_subscribe() {
    for (src, why) in [
        (r"value.s.matches('\\w{100}')", "too large"),
        (
            r"value.items.exists(i, i.s.matches('\\w{100}'))",
            "too large",
        ),
        (r"value.s.matches('(')", "not a regular expression"),
        (r"matches(value.s, '[')", "not a regular expression"),
    ] {
        let e = compile(src).err().unwrap_or_default();
        assert!(e.contains(why), "{src}: {e:?}");
    }
    for fine in [
        r"value.s.matches('^order-[0-9]{6}$')",
        r"value.s.matches('\\w{20}')",
        r"value.items.exists(i, i.s.matches('(?i)error|warn'))",
        // A pattern from the record is the record's: checked when it is used.
        "value.s.matches(value.p)",
    ] {
        assert!(compile(fine).is_ok(), "{fine}: {:?}", compile(fine).err());
    }
    assert_eq!(
        eval(
            r"value.s.matches('^order-[0-9]{6}$')",
            r#"{"s":"order-123456"}"#
        ),
        Ok(true)
    );
}

/// The interpreter's `matches` (comprehensions, patterns from the record) compiles a pattern
/// once, not once per list item and record (the `cel` crate's did), and within the same size
/// limit as a literal one (the `cel` crate's took `regex`'s 10 MiB default).
#[test]
fn interpreted_patterns_are_compiled_once_and_within_the_limit() {
    let items: Vec<String> = (0..500).map(|i| format!(r#"{{"s":"x{i}"}}"#)).collect();
    let value = format!(r#"{{"items":[{}]}}"#, items.join(","));
    // A pattern not seen before on this thread, so the count starts from it.
    let f = compile(r"value.items.exists_one(i, i.s.matches('^y[0-9]+$'))");
    let f = f.unwrap_or_else(|e| panic!("{e}"));
    assert!(f.compiled.is_none(), "exists_one runs on the interpreter");
    let before = super::matches::compiled_here();
    for _ in 0..10 {
        let r = record(&value);
        assert_eq!(f.matches(&context(&env(), &r)), Ok(false));
    }
    assert_eq!(
        super::matches::compiled_here() - before,
        1,
        "5,000 evaluations of one pattern"
    );
    // `\w{50}` compiles to some MiB: over the limit from the record as from the filter (and
    // under `regex`'s 10 MiB default, all the `cel` crate's `matches` had).
    let big = r#"{"s":"a","p":"\\w{50}"}"#;
    let e = eval("value.s.matches(value.p)", big)
        .err()
        .unwrap_or_default();
    assert!(e.contains("too large"), "{e:?}");
    assert_eq!(
        eval("value.s.matches(value.p)", r#"{"s":"ab","p":"^a"}"#),
        Ok(true)
    );
    assert_eq!(
        eval("matches(value.s, value.p)", r#"{"s":"ab","p":"^b"}"#),
        Ok(false)
    );
    let e = eval("value.s.matches(value.p)", r#"{"s":"a","p":"("}"#).err();
    assert!(e.unwrap_or_default().contains("not a valid regex"));
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
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
    // Issue 26 item 3: the key is the filter's syntax tree, not its text, so spacing, comments
    // and quotes do not make a new shape (before, one client could fill a topic's
    // max_filters_per_topic with `value.a == 1`, `value.a ==  1`, ...).
    let one = f(Some("value.a == 'x' && offset > 1"), None)?;
    for same in [
        "value.a=='x'&&offset>1",
        "value.a == \"x\"  &&\n offset > 1",
        "value.a == 'x' // the tier\n && offset > 1",
        "(value.a == 'x') && (offset > 1)",
    ] {
        assert_eq!(f(Some(same), None)?, one, "{same}");
    }
    // A NUL in a comment cannot make a filter look like another filter and fields.
    let ab_key = f(Some("offset > 1"), Some(&ab))?;
    let sneaky = f(Some("offset > 1 // \u{0}value.a\u{1}value.b"), None)?;
    assert_ne!(sneaky, ab_key);
    assert_ne!(
        f(Some("value.a == 'x\u{0}'"), None)?,
        f(Some("value.a == 'x'"), None)?
    );
    Ok(())
}
