//! No input can change the fingerprint query's meaning: whenever a query is built, it parses
//! as exactly four equality conditions joined by AND, whose values are the inputs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rally_sidecar::confirm::{fingerprint_query, Expected};
use rally_sidecar::sim::query::{parse, Expr, Literal, Op};

fn conds<'a>(e: &'a Expr, out: &mut Vec<(&'a [String], Op, &'a Literal)>) -> bool {
    match e {
        Expr::And(a, b) => conds(a, out) && conds(b, out),
        Expr::Or(..) => false,
        Expr::Cond { path, op, value } => {
            out.push((path, *op, value));
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let e = Expected {
        test_case: parts.next().map(str::to_string),
        build: parts.next().map(str::to_string),
        date: parts.next().map(str::to_string),
        verdict: parts.next().map(str::to_string),
        tester: None,
    };
    let Some(q) = fingerprint_query(&e) else { return };
    let expr = parse(&q).unwrap_or_else(|err| panic!("built an unparsable query {q:?}: {err}"));
    let mut c = Vec::new();
    assert!(conds(&expr, &mut c), "only AND: {q}");
    let names: Vec<String> = c.iter().map(|(p, _, _)| p.join(".")).collect();
    assert_eq!(names, ["TestCase", "Build", "Date", "Verdict"], "{q}");
    let want = [format!("/testcase/{}", e.test_case.clone().unwrap_or_default()), e.build.clone().unwrap_or_default(), e.date.clone().unwrap_or_default(), e.verdict.clone().unwrap_or_default()];
    for ((_, op, value), w) in c.iter().zip(want.iter()) {
        assert_eq!(*op, Op::Eq);
        assert_eq!(*value, &Literal::Text(w.clone()), "{q}");
    }
});
