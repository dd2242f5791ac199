//! Polls: a request repeated while its JSON answers report a state
//! (`status`, `state`, `done`, `completed`, `progress`, `error`...)
//! until it ends. Each end seen in the recording (success, failure)
//! becomes a route with a `when` on the fields that say so; a `when` is
//! kept only if it is true on exactly the answers with that end, checked
//! here on the recording itself.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::evidence::{Seen, Source};
use super::lifecycle::{at, Proposal};
use crate::filter::Expr;

const SUCCESS: &[&str] = &[
    "complete",
    "completed",
    "done",
    "success",
    "successful",
    "succeeded",
    "finished",
    "imported",
    "processed",
    "ok",
];
const FAILURE: &[&str] = &[
    "failed",
    "failure",
    "fail",
    "error",
    "errored",
    "aborted",
    "cancelled",
    "canceled",
    "rejected",
    "invalid",
    "revoked",
    "timeout",
];

/// How an answer ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Success,
    Failure,
}

/// One answer's state fields: `$response.body...` path → value.
type Fields = BTreeMap<String, Value>;

/// True when a status word is one of `list`: the word itself, or one of
/// its parts (`import_failed`, `COMPLETED_OK`), unless its parts say both.
fn says(v: &Value, list: &[&str]) -> bool {
    let Some(s) = v.as_str() else { return false };
    let lower = s.to_ascii_lowercase();
    if list.contains(&lower.as_str()) {
        return true;
    }
    let parts: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    let any = |l: &[&str]| parts.iter().any(|p| l.contains(p));
    parts.len() > 1 && any(list) && !(any(SUCCESS) && any(FAILURE))
}

/// The proposals for every poll among the exchanges not used yet.
pub fn proposals(seen: &[Seen<'_>], used: &[bool]) -> Vec<Proposal> {
    let mut groups: Vec<((String, String), Vec<usize>)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        if used[i] || s.noise || s.changes_state() || s.response_body.is_null() {
            continue;
        }
        if !(200..300).contains(&s.x.status) {
            continue;
        }
        let key = (s.x.method.clone(), s.template.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
        .into_iter()
        .flat_map(|(_, members)| ends(seen, &members, "a poll"))
        .collect()
}

/// The routes of one group of answers to the same method and path (a
/// poll's, or a last step's whose JSON answer says how the import went),
/// if they report a state that ends: one route per end seen.
pub fn ends(seen: &[Seen<'_>], members: &[usize], what: &str) -> Vec<Proposal> {
    let answers: Vec<Fields> = members
        .iter()
        .map(|&i| state_fields(&seen[i].response_body))
        .collect();
    let varies = |path: &str| {
        let mut values = answers
            .iter()
            .map(|a| a.get(path).cloned().unwrap_or(Value::Null));
        let first = values.next();
        values.any(|v| Some(v) != first)
    };
    let ends: Vec<Option<End>> = answers.iter().map(|a| end_of(a, &varies)).collect();
    // A state that changes across the recording: two answers at least.
    if ends.iter().all(Option::is_none) || members.len() < 2 {
        return Vec::new();
    }
    let docs: Vec<Value> = members
        .iter()
        .map(|&i| json!({"response": {"body": seen[i].response_body}}))
        .collect();
    let mut out = Vec::new();
    for (end, event) in [
        (End::Success, "import_succeeded"),
        (End::Failure, "import_failed"),
    ] {
        let expected: Vec<bool> = ends.iter().map(|e| *e == Some(end)).collect();
        if !expected.contains(&true) {
            continue;
        }
        let Some((when, data)) = candidates(end, &answers)
            .into_iter()
            .find(|(w, _)| separates(w, &docs, &expected))
        else {
            continue;
        };
        let first = members[expected.iter().position(|e| *e).unwrap_or(0)];
        let mut p = Proposal::new(event, &seen[first]);
        p.when = Some(when.clone());
        p.data = data;
        p.poll_id = poll_id(seen, members);
        let fields: Vec<String> = answers
            .iter()
            .flat_map(|a| a.keys())
            .filter(|k| varies(k))
            .map(|k| format!("`{}`", k.trim_start_matches("$response.body.")))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for (k, &i) in members.iter().enumerate() {
            if expected[k] {
                p.exchanges.push(i);
                p.evidence.push(format!(
                    "{}: {what} ({} answers to {} {}, changing {}); this answer is a {}: {}",
                    at(&seen[i]),
                    members.len(),
                    seen[i].x.method,
                    seen[i].template,
                    if fields.is_empty() {
                        "nothing".to_string()
                    } else {
                        fields.join(", ")
                    },
                    if end == End::Success {
                        "success"
                    } else {
                        "failure"
                    },
                    when
                ));
            }
        }
        out.push(p);
    }
    out
}

/// The fields of an answer that may report a state: those of the answer
/// object, of the first item of an answer list, and of the objects one
/// level below them.
fn state_fields(body: &Value) -> Fields {
    let mut out = Fields::new();
    let mut roots: Vec<(String, &Map<String, Value>)> = Vec::new();
    match body {
        Value::Object(m) => roots.push(("$response.body".into(), m)),
        Value::Array(items) => {
            if let Some(Value::Object(m)) = items.first() {
                roots.push(("$response.body.0".into(), m));
            }
        }
        _ => {}
    }
    let mut nested = Vec::new();
    for (at, m) in &roots {
        for (k, v) in m.iter() {
            if let Value::Object(inner) = v {
                if plain(k) {
                    nested.push((format!("{at}.{k}"), inner));
                }
            }
        }
    }
    roots.extend(nested);
    for (at, m) in roots {
        for (k, v) in m {
            if plain(k) && !v.is_object() && state_name(k).is_some() {
                out.insert(format!("{at}.{k}"), v.clone());
            }
        }
    }
    out
}

fn plain(k: &str) -> bool {
    !k.is_empty() && !k.contains(['.', '$', ' '])
}

/// What a field's name says it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A process's exit code: 0 is success, another number failure.
    Exit,
    Status,
    Error,
    Done,
    Progress,
    Total,
    Rows,
}

fn state_name(name: &str) -> Option<Role> {
    let n = name.to_ascii_lowercase();
    let has = |w: &[&str]| w.iter().any(|x| n.contains(x));
    Some(match () {
        _ if has(&["exit_code", "exitcode", "return_code", "returncode"]) => Role::Exit,
        _ if has(&["error", "fail", "exception"]) => Role::Error,
        _ if has(&["status", "state", "phase", "stage", "result", "outcome"]) => Role::Status,
        _ if has(&["percent", "progress", "pct"]) => Role::Progress,
        _ if has(&["_done", "processed", "_complete"]) && !n.starts_with("is_") => Role::Progress,
        _ if has(&[
            "done",
            "complete",
            "finished",
            "succeeded",
            "success",
            "ready",
        ]) =>
        {
            Role::Done
        }
        _ if has(&["todo", "total", "size", "expected"]) => Role::Total,
        _ if has(&["rows", "records", "count", "imported"]) => Role::Rows,
        _ => return None,
    })
}

fn role(path: &str) -> Option<Role> {
    state_name(path.rsplit('.').next().unwrap_or(path))
}

/// How an answer ended, from the fields that change across the answers.
fn end_of(a: &Fields, varies: &dyn Fn(&str) -> bool) -> Option<End> {
    // A field the same in every answer (an API's `"success": true` on
    // every call) says nothing about how this one ended.
    let fields = || a.iter().filter(|(path, _)| varies(path));
    let exit = |v: &Value| v.as_f64();
    for (path, v) in fields() {
        match role(path) {
            Some(Role::Exit) if exit(v).is_some_and(|c| c != 0.0) => return Some(End::Failure),
            Some(Role::Status) if says(v, FAILURE) => return Some(End::Failure),
            Some(Role::Error) if truthy(v) => return Some(End::Failure),
            _ => {}
        }
    }
    for (path, v) in fields() {
        match role(path) {
            Some(Role::Exit) if exit(v) == Some(0.0) => return Some(End::Success),
            Some(Role::Status) if says(v, SUCCESS) => return Some(End::Success),
            Some(Role::Done) if truthy(v) => return Some(End::Success),
            Some(Role::Progress) if progress_done(a, path, v) => return Some(End::Success),
            _ => {}
        }
    }
    None
}

/// A progress field at its end: 100 percent, or equal to its total.
fn progress_done(a: &Fields, path: &str, v: &Value) -> bool {
    let Some(n) = v.as_f64() else { return false };
    match total_of(a, path) {
        Some(total) => n > 0.0 && a.get(&total).and_then(Value::as_f64) == Some(n),
        None => n >= 100.0,
    }
}

/// The total a progress field counts towards: a sibling of the same
/// prefix (`bytes_done` → `bytes_todo`, `bytes_total`).
fn total_of(a: &Fields, path: &str) -> Option<String> {
    let (parent, name) = path.rsplit_once('.')?;
    let prefix = name.split('_').next()?;
    a.keys()
        .find(|k| {
            k.rsplit_once('.').is_some_and(|(p, n)| {
                p == parent && n != name && n.starts_with(prefix) && role(k) == Some(Role::Total)
            })
        })
        .cloned()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

/// `when`s that may mark `end`, most telling first, each with the data
/// its event carries.
fn candidates(end: End, answers: &[Fields]) -> Vec<(Value, Vec<(String, Value)>)> {
    let paths: std::collections::BTreeSet<&String> =
        answers.iter().flat_map(|a| a.keys()).collect();
    let of = |r: Role| paths.iter().filter(move |p| role(p) == Some(r)).copied();
    let words = |p: &str, list: &[&str]| -> Vec<Value> {
        let mut seen: Vec<Value> = answers
            .iter()
            .filter_map(|a| a.get(p))
            .filter(|v| says(v, list))
            .cloned()
            .collect();
        seen.sort_by_key(|v| v.to_string());
        seen.dedup();
        seen
    };
    let name = |p: &str| p.rsplit('.').next().unwrap_or(p).to_string();
    let errors: Vec<&String> = of(Role::Error).collect();
    let rows: Vec<(String, Value)> = of(Role::Rows)
        .chain(of(Role::Progress))
        .filter(|p| {
            answers
                .iter()
                .any(|a| a.get(*p).is_some_and(Value::is_number))
        })
        .map(|p| (name(p), json!(p)))
        .collect();
    let mut out = Vec::new();
    match end {
        End::Failure => {
            for p in of(Role::Status) {
                let w = words(p, FAILURE);
                if !w.is_empty() {
                    out.push((json!({"in": [p, w]}), vec![(name(p), json!(p))]));
                }
            }
            for p in of(Role::Exit) {
                out.push((
                    json!({"and": [{"!==": [p, null]}, {"!==": [p, 0]}]}),
                    vec![(name(p), json!(p))],
                ));
            }
            for e in &errors {
                out.push((json!({"!!": [e]}), vec![(name(e), json!(e))]));
            }
        }
        End::Success => {
            let mut signals: Vec<(Value, Vec<(String, Value)>)> = Vec::new();
            for p in of(Role::Status) {
                let w = words(p, SUCCESS);
                if !w.is_empty() {
                    signals.push((json!({"in": [p, w]}), vec![(name(p), json!(p))]));
                }
            }
            for p in of(Role::Exit) {
                signals.push((json!({"==": [p, 0]}), vec![(name(p), json!(p))]));
            }
            for p in of(Role::Done) {
                signals.push((json!({"==": [p, true]}), vec![(name(p), json!(p))]));
                signals.push((json!({"!!": [p]}), vec![(name(p), json!(p))]));
            }
            for p in of(Role::Progress) {
                let probe = answers.iter().find(|a| a.contains_key(p.as_str()));
                match probe.and_then(|a| total_of(a, p)) {
                    Some(t) => signals.push((
                        json!({"and": [{">": [p, 0]}, {"==": [p, t]}]}),
                        vec![(name(p), json!(p))],
                    )),
                    None => signals.push((json!({">=": [p, 100]}), vec![(name(p), json!(p))])),
                }
            }
            for (signal, data) in signals {
                out.push((signal.clone(), data.clone()));
                if !errors.is_empty() {
                    let mut all = vec![signal];
                    all.extend(errors.iter().map(|e| json!({"!": [e]})));
                    out.push((json!({"and": all}), data));
                }
            }
        }
    }
    for (_, data) in out.iter_mut() {
        for r in &rows {
            if !data.iter().any(|(k, _)| *k == r.0) {
                data.push(r.clone());
            }
        }
    }
    out
}

/// True when `when` is true on exactly the answers `expected` marks.
fn separates(when: &Value, docs: &[Value], expected: &[bool]) -> bool {
    let Ok(expr) = Expr::compile(when) else {
        return false;
    };
    docs.iter()
        .zip(expected)
        .all(|(d, want)| expr.test(d).ok() == Some(*want))
}

/// The poll's own id, read where every answer's request has it (its path
/// or query), for `dedup_key`.
fn poll_id(seen: &[Seen<'_>], members: &[usize]) -> Option<Value> {
    let first = &seen[*members.first()?];
    first
        .request_values()
        .filter(|c| matches!(c.place.source, Source::Param | Source::Query) && !c.place.credential)
        .find(|c| {
            members
                .iter()
                .all(|&i| seen[i].value_at(&c.place).is_some())
        })
        .and_then(|c| c.place.read.clone())
}
