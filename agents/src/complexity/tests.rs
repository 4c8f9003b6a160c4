use super::*;
use crate::agent::SourceFile;

/// The complexity of the only function in `src`.
fn cc(src: &str) -> u32 {
    let blocks = analyze(src).unwrap();
    assert_eq!(blocks.functions.len(), 1, "{blocks:?}");
    blocks.functions[0].complexity
}

#[test]
fn a_plain_function_scores_one() {
    assert_eq!(cc("def f():\n    return 1\n"), 1);
}

#[test]
fn if_and_each_elif_add_one_else_adds_nothing() {
    assert_eq!(cc("def f(x):\n    if x: pass\n"), 2);
    assert_eq!(cc("def f(x):\n    if x: pass\n    elif x > 1: pass\n    elif x > 2: pass\n    else: pass\n"), 4);
}

#[test]
fn conditional_expressions_add_one() {
    assert_eq!(cc("def f(x):\n    return 1 if x else 2 if x > 3 else 4\n"), 3);
}

#[test]
fn loops_add_one_and_one_more_with_else() {
    assert_eq!(cc("def f(x):\n    for i in x: pass\n"), 2);
    assert_eq!(cc("def f(x):\n    for i in x: pass\n    else: pass\n"), 3);
    assert_eq!(cc("async def f(x):\n    async for i in x: pass\n"), 2);
    assert_eq!(cc("def f(x):\n    while x: pass\n    else: pass\n"), 3);
}

#[test]
fn try_adds_its_handlers_and_else_but_not_finally() {
    let src = "def f():\n    try: pass\n    except A: pass\n    except B: pass\n    else: pass\n    finally: pass\n";
    assert_eq!(cc(src), 4);
    assert_eq!(cc("def f():\n    try: pass\n    finally: pass\n"), 1);
    // `except*` handlers count like `except` handlers (radon 6.0.1 misses them).
    assert_eq!(cc("def f():\n    try: pass\n    except* A: pass\n    except* B: pass\n"), 3);
}

#[test]
fn boolean_operators_add_operands_minus_one() {
    assert_eq!(cc("def f(a, b, c):\n    return a and b and c\n"), 3);
    assert_eq!(cc("def f(a, b, c):\n    return a and b or c\n"), 3);
    assert_eq!(cc("def f(a, b):\n    return not a\n"), 1);
}

#[test]
fn comprehensions_add_one_per_for_and_per_if() {
    assert_eq!(cc("def f(x):\n    return [i for i in x for j in i if j if i]\n"), 5);
    assert_eq!(cc("def f(x):\n    return {i: 1 for i in x}, {i for i in x}, (i for i in x)\n"), 4);
}

#[test]
fn match_adds_its_cases_minus_a_catch_all() {
    let src = "def f(x):\n    match x:\n        case 1: pass\n        case [a, *rest]: pass\n        case {'k': v} if v: pass\n        case _: pass\n";
    assert_eq!(cc(src), 4);
    // A bare capture pattern is irrefutable, like `_`.
    assert_eq!(cc("def f(x):\n    match x:\n        case 1: pass\n        case y: pass\n"), 2);
    assert_eq!(cc("def f(x):\n    match x:\n        case _: pass\n"), 1);
    assert_eq!(cc("def f(x):\n    match x:\n        case 1 | 2: pass\n        case str(): pass\n"), 3);
}

#[test]
fn assert_adds_one_and_is_not_looked_into() {
    assert_eq!(cc("def f(x):\n    assert x and x > 1 and (1 if x else 2)\n"), 2);
}

#[test]
fn with_lambda_and_walrus_add_nothing_but_a_lambda_body_counts() {
    assert_eq!(cc("def f(x):\n    with x as y, x as z: pass\n"), 1);
    assert_eq!(cc("def f(x):\n    g = lambda y: y\n    return (n := 3)\n"), 1);
    assert_eq!(cc("def f(x):\n    return lambda y: 1 if y else 2\n"), 2);
}

#[test]
fn nested_functions_are_scored_separately() {
    let src = "def outer(x):\n    if x: pass\n    def inner(y):\n        if y: pass\n        if y: pass\n    return inner\n";
    let blocks = analyze(src).unwrap();
    let outer = &blocks.functions[0];
    assert_eq!(outer.complexity, 2);
    assert_eq!(outer.closures.len(), 1);
    assert_eq!((outer.closures[0].name.as_str(), outer.closures[0].complexity), ("inner", 3));
    assert_eq!(outer.closures[0].classname, None);
}

#[test]
fn classes_score_their_body_and_methods() {
    let src = "class C:\n    x = 1 if y else 2\n    def a(self):\n        if self: pass\n    def b(self):\n        for i in self: pass\n        while i: pass\n";
    let blocks = analyze(src).unwrap();
    let class = &blocks.classes[0];
    // 1 + 1 (the ternary) + 2 (a) + 3 (b)
    assert_eq!(class.real_complexity, 7);
    // int(7 / 2) + 1
    assert_eq!(class.complexity(), 4);
    assert_eq!(class.methods.iter().map(|m| m.complexity).collect::<Vec<_>>(), vec![2, 3]);
    assert!(class.methods.iter().all(|m| m.classname.as_deref() == Some("C")));
    // One method: 1 + 2, not averaged.
    let one = analyze("class D:\n    def a(self):\n        if self: pass\n").unwrap();
    assert_eq!(one.classes[0].complexity(), 3);
    let none = analyze("class E:\n    x = 1 if y else 2\n").unwrap();
    assert_eq!(none.classes[0].complexity(), 2);
}

#[test]
fn classes_inside_functions_are_not_reported() {
    let blocks = analyze("def f():\n    class Local:\n        def m(self): pass\n    return Local\n").unwrap();
    assert_eq!(blocks.functions.len(), 1);
    assert!(blocks.functions[0].closures.is_empty());
    assert!(blocks.classes.is_empty());
}

#[test]
fn positions_follow_cpython_and_radon() {
    let src = "import x\n\n@decorator(\n    1)\n# comment\nasync def f(a):\n    return (\n        a\n    )\n";
    let f = &analyze(src).unwrap().functions[0];
    assert_eq!((f.lineno, f.col_offset), (6, 0));
    // radon's endline: the largest start line in the last statement (`a` on line 8).
    assert_eq!(f.endline, 8);
    let g = &analyze("class C:\n    def g(self):\n        x = 1\n        def inner(): pass\n").unwrap().classes[0];
    // The last statement is a nested def, which radon does not look into.
    assert_eq!(g.methods[0].endline, 2);
    assert_eq!((g.methods[0].col_offset, g.endline), (4, 2));
}

#[test]
fn ranks_have_radon_boundaries() {
    let ranks: String = [1, 5, 6, 10, 11, 20, 21, 30, 31, 40, 41, 99].iter().map(|&c| rank(c)).collect();
    assert_eq!(ranks, "AABBCCDDEEFF");
}

#[test]
fn current_syntax_is_analysed() {
    let src = "type Alias[T] = list[T]\n\
               def first[T](xs: list[T]) -> T | None:\n    return xs[0] if xs else None\n\
               class Box[T]:\n    def get(self) -> T:\n        return f\"{self!r:>{10}} {'q' if self else \"x\"}\"\n";
    let blocks = analyze(src).unwrap();
    assert_eq!(blocks.functions[0].complexity, 2);
    assert_eq!(blocks.classes[0].methods[0].complexity, 2);
}

#[test]
fn deeply_nested_input_is_refused_not_crashed() {
    let deep = format!("x = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    assert!(matches!(analyze(&deep), Err(FileError::TooDeep(_)) | Err(FileError::Syntax(_))));
    let chain = format!("def f():\n    return 1{}\n", " + 1".repeat(200_000));
    assert!(matches!(analyze(&chain), Err(FileError::TooDeep(_))));
    let unary = format!("x = {}1\n", "-".repeat(300_000));
    assert!(analyze(&unary).is_err());
}

/// Every rule at once, scored by hand (radon 6.0.1 on Python 3.11 agrees with every number
/// but `except*`, which it scores 0).
#[test]
fn a_file_exercising_every_rule() {
    let src = include_str!("../../tests/fixtures/all_rules.py");
    let blocks = analyze(src).unwrap();
    let json = blocks_json(&blocks);
    let summary: Vec<(String, String, u32, String)> = json
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_owned(),
                b["name"].as_str().unwrap().to_owned(),
                b["complexity"].as_u64().unwrap() as u32,
                b["rank"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("function", "everything", 32, "E"),
        ("method", "area", 9, "B"),
        ("function", "errors", 6, "B"),
        ("class", "Shapes", 6, "B"),
        ("method", "__init__", 2, "A"),
        ("method", "describe", 2, "A"),
        ("function", "simple", 1, "A"),
    ];
    let expected: Vec<(String, String, u32, String)> =
        expected.iter().map(|(t, n, c, r)| (t.to_string(), n.to_string(), *c, r.to_string())).collect();
    assert_eq!(summary, expected);
    let everything = &blocks.functions.iter().find(|f| f.name == "everything").unwrap();
    assert_eq!(everything.closures.iter().map(|c| (c.name.as_str(), c.complexity)).collect::<Vec<_>>(), vec![("helper", 3)]);
}

#[test]
fn the_agent_reports_each_file_and_syntax_errors() {
    let agent = ComplexityAgent::new();
    let task = Task {
        capability: CAPABILITY.into(),
        files: vec![
            SourceFile { path: "ok.py".into(), text: "def f(x):\n    return x or 1\n".into() },
            SourceFile { path: "bad.py".into(), text: "def f(:\n".into() },
        ],
    };
    let out = agent.handle(&task).unwrap();
    let ok = &out["files"]["ok.py"][0];
    assert_eq!((ok["name"].as_str(), ok["complexity"].as_u64(), ok["rank"].as_str()), (Some("f"), Some(2), Some("A")));
    assert_eq!(ok["type"], "function");
    assert!(ok.get("classname").is_none());
    assert!(out["files"]["bad.py"]["error"].as_str().unwrap().contains("line 1"));
    let other = Task { capability: "python.tokens".into(), files: vec![] };
    assert!(matches!(agent.handle(&other), Err(AgentError::Unsupported { .. })));
}
