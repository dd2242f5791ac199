//! `taphook draft --har FILE`: a starting rules file for an importer taphook
//! has never seen, from a HAR of its traffic. One route per distinct method
//! and path template among the state-changing exchanges (ids, UUIDs and
//! numbers in paths become `{params}`); a session key where a value from a
//! response body comes back in later paths; event types from OneSchema's
//! list where the path suggests one, named after the path otherwise; each
//! route commented with the exchange it came from. A draft for a person to
//! edit: `taphook check` accepts it as it is.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::har::Recorded;

/// Methods that change state: the exchanges worth a route.
const STATE_CHANGING: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];

/// A route the draft proposes.
struct Proposed {
    method: String,
    template: String,
    event: String,
    session: Option<String>,
    /// The first exchange it came from: entry, path, status.
    from: (usize, String, u16),
    /// Other exchanges with the same method and template.
    more: usize,
}

/// The draft rules file for `recorded` (read from `source`).
pub fn draft(recorded: &[Recorded], source: &str) -> String {
    // Values a response body handed out (top-level id-like fields): a later
    // path that carries one is in that session.
    let mut handed_out: HashMap<String, String> = HashMap::new();
    let mut routes: Vec<Proposed> = Vec::new();
    for r in recorded {
        let x = &r.exchange;
        let found = ids(x);
        if !STATE_CHANGING.contains(&x.method.as_str()) {
            remember(found, &mut handed_out);
            continue;
        }
        let (template, session_param) = template(&x.path, &handed_out);
        if let Some(existing) = routes
            .iter_mut()
            .find(|p| p.method == x.method && p.template == template)
        {
            existing.more += 1;
            continue;
        }
        let created = created_id(x, &found);
        let session = match (&session_param, &created) {
            (Some(param), _) => Some(format!("$params.{param}")),
            (None, Some(field)) => Some(format!("$response.body.{field}")),
            (None, None) => None,
        };
        routes.push(Proposed {
            event: event_type(
                &x.method,
                &template,
                created.is_some() && session_param.is_none(),
            ),
            method: x.method.clone(),
            template,
            session,
            from: (r.entry, x.path.clone(), x.status),
            more: 0,
        });
        remember(found, &mut handed_out);
    }
    render(&routes, source)
}

/// Top-level id-like fields of a JSON response body: `id`, `*_id`, `*Id`.
fn ids(x: &crate::derive::Exchange) -> Vec<(String, String)> {
    let Some(body) = &x.response_body else {
        return Vec::new();
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body.bytes) else {
        return Vec::new();
    };
    map.iter()
        .filter(|(k, _)| *k == "id" || k.ends_with("_id") || k.ends_with("Id"))
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

fn remember(ids: Vec<(String, String)>, handed_out: &mut HashMap<String, String>) {
    for (field, value) in ids {
        handed_out.entry(value).or_insert(field);
    }
}

/// The field of a response body that handed out a new id (a creation).
fn created_id(x: &crate::derive::Exchange, ids: &[(String, String)]) -> Option<String> {
    if x.method != "POST" || !(200..300).contains(&x.status) {
        return None;
    }
    ids.iter()
        .find(|(k, _)| k == "id")
        .or(ids.first())
        .map(|(k, _)| k.clone())
}

/// The path's template, and the parameter that carries a handed-out id
/// (the session), if any.
fn template(path: &str, handed_out: &HashMap<String, String>) -> (String, Option<String>) {
    let mut out = String::new();
    let mut session = None;
    let mut used: Vec<String> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        out.push('/');
        let known = handed_out.contains_key(*seg);
        if !seg.is_empty() && (known || looks_like_id(seg)) {
            let mut name = i
                .checked_sub(1)
                .and_then(|p| segments.get(p))
                .map(|prev| format!("{}_id", singular(prev)))
                .filter(|n| is_identifier(n))
                .unwrap_or_else(|| "id".to_string());
            while used.contains(&name) {
                name.push('2');
            }
            used.push(name.clone());
            if known && session.is_none() {
                session = Some(name.clone());
            }
            let _ = write!(out, "{{{name}}}");
        } else {
            out.push_str(seg);
        }
    }
    (out, session)
}

/// Numbers, UUIDs, long hex, and mixed letters-and-digits tokens of 8 or more.
fn looks_like_id(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (digits == seg.len())
        || (hex && seg.len() >= 16 && digits > 0)
        || (seg.len() >= 8
            && digits > 0
            && seg.bytes().any(|b| b.is_ascii_alphabetic())
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn singular(word: &str) -> String {
    let w = word.to_ascii_lowercase().replace('-', "_");
    for suffix in ["ches", "shes", "sses", "xes"] {
        if let Some(stem) = w.strip_suffix(suffix) {
            return format!("{stem}{}", &suffix[..suffix.len() - 2]);
        }
    }
    w.strip_suffix('s').map(str::to_string).unwrap_or(w)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// OneSchema's event type where the path suggests one; else the method and
/// the path's last word.
fn event_type(method: &str, template: &str, creates: bool) -> String {
    let last = template
        .rsplit('/')
        .find(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or("root")
        .to_ascii_lowercase();
    let ends_with_param = template.trim_end_matches('/').ends_with('}');
    let suggested = match () {
        _ if creates => Some("embed_initialized"),
        _ if method == "DELETE" && ends_with_param => Some("embed_closed"),
        _ if last.contains("upload") || last == "files" => Some("file_uploaded"),
        _ if last.contains("header") => Some("header_selected"),
        _ if last.contains("map") => Some("columns_mapped"),
        _ if last.contains("resume") => Some("embed_resumed"),
        _ if last.contains("close") || last.contains("cancel") => Some("embed_closed"),
        _ if last.contains("submit") || last == "import" || last.contains("complete") => {
            Some("import_submitted")
        }
        _ if last.contains("operation") || last.contains("edit") => {
            Some("sheet_operation_performed")
        }
        _ => None,
    };
    suggested.map(str::to_string).unwrap_or_else(|| {
        let word: String = last
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{}_{word}", method.to_ascii_lowercase())
    })
}

fn render(routes: &[Proposed], source: &str) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# DRAFT routes written by `taphook draft` from {source}."
    );
    let _ = writeln!(
        out,
        "# A starting point, not a finished profile: check each route's event type,"
    );
    let _ = writeln!(
        out,
        "# add `when` guards, `remember` and `data`, then record the same steps again"
    );
    let _ = writeln!(
        out,
        "# and run `taphook explain --har` and `taphook test` on them (README, \"Routes\")."
    );
    if routes.is_empty() {
        let _ = writeln!(
            out,
            "# No state-changing exchange (POST, PUT, PATCH, DELETE) in the HAR."
        );
        let _ = writeln!(out, "routes: []");
        return out;
    }
    let _ = writeln!(out, "routes:");
    let mut names: Vec<String> = Vec::new();
    for r in routes {
        let mut name = format!(
            "{}{}",
            r.method.to_ascii_lowercase(),
            r.template
                .split('/')
                .filter(|s| !s.is_empty() && !s.starts_with('{'))
                .map(|s| format!("-{s}"))
                .collect::<String>()
        );
        while names.contains(&name) {
            name.push_str("-2");
        }
        names.push(name.clone());
        let (entry, path, status) = &r.from;
        let more = match r.more {
            0 => String::new(),
            n => format!(" (and {n} more like it)"),
        };
        let _ = writeln!(
            out,
            "  # from entry #{entry}: {} {path} -> {status}{more}",
            r.method
        );
        let _ = writeln!(out, "  - name: {}", q(&name));
        let _ = writeln!(out, "    event: {}", q(&r.event));
        let _ = writeln!(out, "    method: {}", r.method);
        let _ = writeln!(out, "    path: {}", q(&r.template));
        let _ = writeln!(out, "    status: 2xx");
        match &r.session {
            Some(s) => {
                let _ = writeln!(out, "    session: {s}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "    # no session key found: add `session:` if this step belongs to one"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths_become_params_named_after_their_collection() {
        let mut handed_out = HashMap::new();
        handed_out.insert("53511".to_string(), "id".to_string());
        assert_eq!(
            template("/v1/embeds/53511/upload", &handed_out),
            (
                "/v1/embeds/{embed_id}/upload".into(),
                Some("embed_id".into())
            )
        );
        let none = HashMap::new();
        assert_eq!(
            template(
                "/v1/batches/9f1c2a7e-3b4d-4e5f-8a6b-7c8d9e0f1a2b/rows/17",
                &none
            ),
            ("/v1/batches/{batch_id}/rows/{row_id}".into(), None)
        );
        assert_eq!(template("/api/v1/imports/", &none).0, "/api/v1/imports/");
        assert!(looks_like_id("imp8f3k2x9"));
        assert!(!looks_like_id("set-header"));
        assert!(!looks_like_id("v1"));
        assert_eq!(singular("batches"), "batch");
        assert_eq!(singular("sheet-operations"), "sheet_operation");
    }

    #[test]
    fn event_types_follow_the_path() {
        assert_eq!(event_type("POST", "/v1/embeds", true), "embed_initialized");
        assert_eq!(event_type("POST", "/x/{id}/upload", false), "file_uploaded");
        assert_eq!(event_type("DELETE", "/x/{id}", false), "embed_closed");
        assert_eq!(
            event_type("POST", "/x/{id}/validate", false),
            "post_validate"
        );
    }
}
