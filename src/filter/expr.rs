//! JSON-logic expressions, compiled once at load by `datalogic-rs`.
//!
//! A string that starts with `$` is shorthand for a variable
//! (`"$response.body.id"` is `{"var": "response.body.id"}`); `$$` escapes a
//! literal `$`. The shorthand is rewritten before compiling, so routes and
//! filters share one evaluator.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::{DataValue, Engine, Logic};
use serde_json::{Map, Value};

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    Engine::builder()
        .add_operator(super::hash::OPERATOR, super::hash::HashOperator)
        .build()
});
static OPERATORS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    ENGINE
        .builtin_operator_names()
        .chain([super::hash::OPERATOR])
        .collect()
});

/// Operators whose arguments are data, not expressions.
const LITERAL_OPERATORS: &[&str] = &["preserve"];

/// Why an expression was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ExprError {
    /// JSON pointer below the expression's own position.
    pub pointer: String,
    pub reason: String,
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    logic: Arc<Logic>,
    source: Arc<Value>,
    /// The expression as the rules file wrote it (`$` shorthand kept).
    written: Arc<Value>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({})", self.source)
    }
}

impl Expr {
    /// Rewrites the `$` shorthand, rejects unknown operators, compiles.
    pub fn compile(rule: &Value) -> Result<Self, ExprError> {
        let lowered = lower(rule);
        check_operators(&lowered, String::new())?;
        let logic = ENGINE.compile(&lowered).map_err(|e| ExprError {
            pointer: String::new(),
            reason: format!("invalid JSON-logic: {e}"),
        })?;
        Ok(Self {
            logic: Arc::new(logic),
            source: Arc::new(lowered),
            written: Arc::new(rule.clone()),
        })
    }

    /// The expression as written in the rules file: what messages for the
    /// rules' author (`taphook explain`, `taphook test`) show.
    pub fn written(&self) -> &Value {
        &self.written
    }

    /// The data paths the expression reads (each `var` with a literal
    /// path, dotted; `""` is the whole document), or `None` when it may
    /// read any: a path computed at run time, or an operator that reads
    /// data by names given to it (`missing`, `missing_some`, `val`,
    /// `exists`). Inside `map`, `filter` and the like a `var` reads the
    /// item, not the document; its path is listed all the same (reading
    /// more than needed is safe).
    pub fn reads(&self) -> Option<Vec<String>> {
        let mut paths = Vec::new();
        collect_reads(&self.source, &mut paths).then_some(paths)
    }

    /// The path when the expression is one `var` with a literal, dotted
    /// path and no default (`$response.body.id`): its value can be read
    /// straight from the data ([`read_path`]), with nothing converted.
    pub fn plain_var(&self) -> Option<&str> {
        let Value::Object(map) = &*self.source else {
            return None;
        };
        let path = match (map.len(), map.get("var")?) {
            (1, Value::String(p)) => p.as_str(),
            (1, Value::Array(items)) if items.len() == 1 => items[0].as_str()?,
            _ => return None,
        };
        (!path.is_empty() && !path.contains('\\')).then_some(path)
    }

    /// The expression after the `$` rewrite, as JSON-logic.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Evaluates against `data`, converting it for this one call.
    pub fn eval(&self, data: &Value) -> Result<Value, EvalError> {
        let arena = Bump::new();
        let scope = Scope::new(data, &arena);
        scope.value(self)
    }

    /// True when the expression's result is truthy (JSON-logic rules).
    pub fn test(&self, data: &Value) -> Result<bool, EvalError> {
        let arena = Bump::new();
        Scope::new(data, &arena).truthy(self)
    }
}

/// What a `var` of the dotted `path` reads in `data`, as the engine reads
/// it: each segment a key of an object or an index of an array; `None`
/// where the path leads nowhere (the engine's `null`).
pub fn read_path<'v>(data: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(data, |at, segment| match at {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Adds the paths `value` (lowered JSON-logic) reads to `paths`; false
/// when they cannot be known before it runs.
fn collect_reads(value: &Value, paths: &mut Vec<String>) -> bool {
    match value {
        Value::Object(map) if map.len() == 1 && is_operation(value) => {
            let Some((op, args)) = map.iter().next() else {
                return true;
            };
            match op.as_str() {
                "var" => var_path(args, paths),
                "missing" | "missing_some" | "val" | "exists" => false,
                op if LITERAL_OPERATORS.contains(&op) => true,
                _ => collect_reads(args, paths),
            }
        }
        Value::Object(map) => map.values().all(|v| collect_reads(v, paths)),
        Value::Array(items) => items.iter().all(|v| collect_reads(v, paths)),
        _ => true,
    }
}

/// The path of a `var`: `"a.b"`, `["a.b", default]`, a number (an index),
/// or nothing (the whole document).
fn var_path(args: &Value, paths: &mut Vec<String>) -> bool {
    let (path, default) = match args {
        Value::Array(items) => (items.first(), items.get(1)),
        one => (Some(one), None),
    };
    let known = match path {
        Some(Value::String(p)) => {
            paths.push(p.clone());
            true
        }
        Some(Value::Number(n)) => {
            paths.push(n.to_string());
            true
        }
        None | Some(Value::Null) => {
            paths.push(String::new());
            true
        }
        Some(_) => false,
    };
    known && default.is_none_or(|d| collect_reads(d, paths))
}

/// An evaluation failed (a type error the rule did not guard against).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// One document converted once, for evaluating several expressions.
pub struct Scope<'a> {
    arena: &'a Bump,
    data: &'a DataValue<'a>,
}

/// A document converted once, for scopes that differ only in some of its
/// top-level fields (a route's path parameters, session and JWT claims):
/// each scope converts only what it sets, not the document again.
pub struct Converted<'a> {
    arena: &'a Bump,
    fields: &'a [(&'a str, DataValue<'a>)],
}

impl<'a> Converted<'a> {
    /// `doc`, an object, converted into `arena`.
    pub fn new(doc: &Value, arena: &'a Bump) -> Self {
        let fields = match DataValue::from_serde_value_in(doc, arena) {
            DataValue::Object(fields) => fields,
            _ => &[],
        };
        Self { arena, fields }
    }

    /// A value, converted.
    pub fn value(&self, value: &Value) -> DataValue<'a> {
        DataValue::from_serde_value_in(value, self.arena)
    }

    /// A string, copied into the arena.
    pub fn text(&self, text: &str) -> DataValue<'a> {
        DataValue::String(self.arena.alloc_str(text))
    }

    /// An object of these fields.
    pub fn object<'f>(
        &self,
        fields: impl ExactSizeIterator<Item = (&'f str, DataValue<'a>)>,
    ) -> DataValue<'a> {
        let arena = self.arena;
        DataValue::Object(
            arena.alloc_slice_fill_iter(fields.map(|(k, v)| (&*arena.alloc_str(k), v))),
        )
    }

    /// A scope over the document with the fields of `set` in place of its
    /// own (fields it does not have are not added).
    pub fn scope(&self, set: &[(&str, DataValue<'a>)]) -> Scope<'a> {
        let fields = self
            .arena
            .alloc_slice_fill_iter(self.fields.iter().map(|(k, v)| {
                let v = set
                    .iter()
                    .find(|(name, _)| name == k)
                    .map_or(*v, |(_, new)| *new);
                (*k, v)
            }));
        Scope {
            arena: self.arena,
            data: self.arena.alloc(DataValue::Object(fields)),
        }
    }
}

impl<'a> Scope<'a> {
    pub fn new(data: &Value, arena: &'a Bump) -> Self {
        let data = arena.alloc(DataValue::from_serde_value_in(data, arena));
        Self { arena, data }
    }

    pub fn value(&self, expr: &'a Expr) -> Result<Value, EvalError> {
        ENGINE
            .evaluate(&expr.logic, self.data, self.arena)
            .map(|v| v.to_serde_value())
            .map_err(|e| EvalError(e.to_string()))
    }

    pub fn truthy(&self, expr: &'a Expr) -> Result<bool, EvalError> {
        ENGINE
            .evaluate(&expr.logic, self.data, self.arena)
            .map(|v| ENGINE.truthy(v))
            .map_err(|e| EvalError(e.to_string()))
    }
}

/// Rewrites `"$a.b"` into `{"var": "a.b"}` and `"$$x"` into `"$x"`.
pub fn lower(rule: &Value) -> Value {
    match rule {
        Value::String(s) => match s.strip_prefix('$') {
            Some(rest) if rest.starts_with('$') => Value::String(rest.to_string()),
            Some(path) => {
                let mut m = Map::new();
                m.insert("var".into(), Value::String(path.to_string()));
                Value::Object(m)
            }
            None => rule.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(lower).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if LITERAL_OPERATORS.contains(&k.as_str()) {
                        v.clone()
                    } else {
                        lower(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// True when `value` is a JSON-logic operation: an object with one key
/// naming a known operator.
pub fn is_operation(value: &Value) -> bool {
    match value {
        Value::Object(m) if m.len() == 1 => m.keys().all(|k| OPERATORS.contains(k.as_str())),
        _ => false,
    }
}

fn check_operators(rule: &Value, pointer: String) -> Result<(), ExprError> {
    match rule {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_operators(v, format!("{pointer}/{i}"))),
        Value::Object(map) if map.is_empty() => Ok(()),
        Value::Object(map) if map.len() > 1 => Err(ExprError {
            pointer,
            reason: format!(
                "an operation has exactly one key, found {} ({})",
                map.len(),
                map.keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        Value::Object(map) => {
            let (op, args) = map.iter().next().expect("one key");
            if !OPERATORS.contains(op.as_str()) {
                let hint = suggest(op)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(ExprError {
                    pointer,
                    reason: format!("unknown operator `{op}`{hint}"),
                });
            }
            if LITERAL_OPERATORS.contains(&op.as_str()) {
                return Ok(());
            }
            check_operators(
                args,
                format!("{pointer}/{}", crate::rules::source::escape_pointer(op)),
            )
        }
        _ => Ok(()),
    }
}

/// The known operator an unknown one was probably meant to be: the same
/// but for case, `_` or `-`, or at most two edits away.
fn suggest(op: &str) -> Option<&'static str> {
    let squash = |s: &str| s.to_lowercase().replace(['_', '-'], "");
    let wanted = squash(op);
    let mut best: Option<(usize, &'static str)> = None;
    for &known in OPERATORS.iter() {
        if squash(known) == wanted {
            return Some(known);
        }
        if known.chars().count() < 3 || op.chars().count() < 3 {
            continue;
        }
        let d = edit_distance(op, known);
        if d <= 2 && best.is_none_or(|(b, name)| (d, known) < (b, name)) {
            best = Some((d, known));
        }
    }
    best.map(|(_, name)| name)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_var_is_read_as_the_engine_reads_it() {
        let data = json!({
            "response": {"body": {"id": 42, "items": [{"id": "a"}, {"id": "b"}], "empty": null, "t": true}},
            "request": {"path": "/x", "0": "zero"},
            "list": [[1, 2], [3]],
        });
        let paths = [
            "response.body.id",
            "response.body.items.1.id",
            "response.body.items.7.id",
            "response.body.items.x",
            "response.body.empty",
            "response.body.t",
            "response.body.id.more",
            "request.0",
            "list.0.1",
            "list.1",
            "missing.key",
            "response",
        ];
        for path in paths {
            for written in [
                json!({"var": path}),
                json!({"var": [path]}),
                json!(format!("${path}")),
            ] {
                let e = Expr::compile(&written).unwrap();
                assert_eq!(e.plain_var(), Some(path), "{written}");
                let engine = e.eval(&data).unwrap();
                let read = read_path(&data, path).cloned().unwrap_or(Value::Null);
                assert_eq!(read, engine, "{path}");
            }
        }
        for not_plain in [
            json!({"var": ["a", "default"]}),
            json!({"var": ""}),
            json!({"hash": "$a"}),
            json!({"cat": ["$a", "b"]}),
            json!("literal"),
        ] {
            assert_eq!(
                Expr::compile(&not_plain).unwrap().plain_var(),
                None,
                "{not_plain}"
            );
        }
    }

    #[test]
    fn dollar_shorthand_reads_variables() {
        let e = Expr::compile(&json!({"==": ["$eventtype", "usercreatedevent"]})).unwrap();
        assert!(e.test(&json!({"eventtype": "usercreatedevent"})).unwrap());
        assert!(!e.test(&json!({"eventtype": "other"})).unwrap());
    }

    #[test]
    fn reads_lists_the_paths_an_expression_reads() {
        let reads = |rule: Value| Expr::compile(&rule).unwrap().reads();
        assert_eq!(
            reads(
                json!({"if": [{"==": ["$response.status", 201]}, "$response.body.id", {"var": ["query.x", "$request.headers.x"]}]})
            ),
            Some(vec![
                "response.status".to_string(),
                "response.body.id".to_string(),
                "query.x".to_string(),
                "request.headers.x".to_string()
            ])
        );
        // A literal reads nothing.
        assert_eq!(reads(json!("$$5")), Some(vec![]));
        // The whole document.
        assert_eq!(reads(json!({"var": ""})), Some(vec![String::new()]));
        // A path known only when it runs, or data read by given names.
        assert_eq!(reads(json!({"var": {"cat": ["request.", "body"]}})), None);
        assert_eq!(reads(json!({"missing": ["request.body.a"]})), None);
    }

    #[test]
    fn double_dollar_is_a_literal() {
        let e = Expr::compile(&json!("$$5")).unwrap();
        assert_eq!(e.eval(&json!({})).unwrap(), json!("$5"));
    }

    #[test]
    fn unknown_operator_is_refused_with_its_place() {
        let err = Expr::compile(&json!({"and": [true, {"lenght": [1]}]})).unwrap_err();
        assert_eq!(err.reason, "unknown operator `lenght`");
        assert_eq!(err.pointer, "/and/1");
        let reason = |op: &str| Expr::compile(&json!({op: [1]})).unwrap_err().reason;
        assert_eq!(
            reason("AND"),
            "unknown operator `AND` (did you mean `and`?)"
        );
        assert_eq!(
            reason("missingSome"),
            "unknown operator `missingSome` (did you mean `missing_some`?)"
        );
        assert_eq!(
            reason("mergee"),
            "unknown operator `mergee` (did you mean `merge`?)"
        );
        assert_eq!(reason("frobnicate"), "unknown operator `frobnicate`");
    }

    #[test]
    fn nested_path_and_missing_value() {
        let e = Expr::compile(&json!("$response.body.id")).unwrap();
        assert_eq!(
            e.eval(&json!({"response": {"body": {"id": 42}}})).unwrap(),
            json!(42)
        );
        assert_eq!(e.eval(&json!({})).unwrap(), Value::Null);
    }
}
