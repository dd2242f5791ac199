//! The filter engine is standard JsonLogic: the official suite passes
//! through taphook's own expression path (with the `$` rewrite in front),
//! and generated rules agree with an independent engine, jsonlogic-rs.

use proptest::prelude::*;
use serde_json::{json, Value};
use taphook::filter::Expr;

/// Numbers compare by value (1 == 1.0); everything else structurally.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn the_official_suite_passes() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/jsonlogic-tests.json"
    ))
    .unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    let mut count = 0;
    for case in cases.iter().filter_map(Value::as_array) {
        let [rule, data, expected] = &case[..] else {
            panic!("bad case {case:?}")
        };
        count += 1;
        let got = Expr::compile(rule)
            .map_err(|e| e.to_string())
            .and_then(|e| e.eval(data).map_err(|e| e.to_string()));
        match got {
            Ok(v) if same(&v, expected) => {}
            other => failures.push(format!(
                "{rule} on {data}: expected {expected}, got {other:?}"
            )),
        }
    }
    assert_eq!(count, 277);
    assert!(
        failures.is_empty(),
        "{} of {count} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A numeric expression, in two spellings: with the `$` shorthand (for
/// taphook) and in plain JsonLogic (for the oracle).
fn num_expr() -> impl Strategy<Value = (Value, Value)> {
    let leaf = prop_oneof![
        (-50i64..50).prop_map(|n| (json!(n), json!(n))),
        prop_oneof![Just("a"), Just("b"), Just("c.d")]
            .prop_map(|k| (json!(format!("${k}")), json!({"var": k}))),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        let bin = (
            prop_oneof![Just("+"), Just("-"), Just("*"), Just("max"), Just("min")],
            inner.clone(),
            inner.clone(),
        )
            .prop_map(|(op, (a1, a2), (b1, b2))| (json!({op: [a1, b1]}), json!({op: [a2, b2]})));
        let cond =
            (bool_leaf(), inner.clone(), inner).prop_map(|((c1, c2), (a1, a2), (b1, b2))| {
                (json!({"if": [c1, a1, b1]}), json!({"if": [c2, a2, b2]}))
            });
        prop_oneof![bin, cond]
    })
}

fn comparison() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("=="),
        Just("!="),
        Just("<"),
        Just(">"),
        Just("<="),
        Just(">=")
    ]
}

fn bool_leaf() -> impl Strategy<Value = (Value, Value)> {
    prop_oneof![
        any::<bool>().prop_map(|b| (json!(b), json!(b))),
        (comparison(), -5i64..5)
            .prop_map(|(op, n)| (json!({op: ["$a", n]}), json!({op: [{"var": "a"}, n]}))),
    ]
}

fn bool_expr() -> impl Strategy<Value = (Value, Value)> {
    let cmp = (comparison(), num_expr(), num_expr())
        .prop_map(|(op, (a1, a2), (b1, b2))| (json!({op: [a1, b1]}), json!({op: [a2, b2]})));
    prop_oneof![cmp, bool_leaf()].prop_recursive(3, 24, 2, |inner| {
        prop_oneof![
            (
                prop_oneof![Just("and"), Just("or")],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, (a1, a2), (b1, b2))| (
                    json!({op: [a1, b1]}),
                    json!({op: [a2, b2]})
                )),
            inner.prop_map(|(a1, a2)| (json!({"!": [a1]}), json!({"!": [a2]}))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn numeric_rules_agree_with_jsonlogic_rs((ours, theirs) in num_expr(), a in -10i64..10, b in -10i64..10, d in -10i64..10) {
        let data = json!({"a": a, "b": b, "c": {"d": d}});
        let got = Expr::compile(&ours).unwrap().eval(&data).unwrap();
        let want = jsonlogic_rs::apply(&theirs, &data).unwrap();
        prop_assert!(same(&got, &want), "{} on {}: taphook {}, jsonlogic-rs {}", ours, data, got, want);
    }

    #[test]
    fn filters_agree_with_jsonlogic_rs((ours, theirs) in bool_expr(), a in -10i64..10, b in -10i64..10, d in -10i64..10) {
        let data = json!({"a": a, "b": b, "c": {"d": d}});
        let got = Expr::compile(&ours).unwrap().test(&data).unwrap();
        // `!!` is JsonLogic's own truthiness, as the oracle applies it.
        let want = jsonlogic_rs::apply(&json!({"!!": [theirs]}), &data).unwrap();
        prop_assert_eq!(json!(got), want, "{} on {}", ours, data);
    }
}
