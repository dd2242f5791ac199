//! Credentials a route would hand on: a session key, a session alias, a
//! remembered value or an event field read raw from a cookie, an
//! `Authorization` header, or a field whose name says token, password,
//! secret or CSRF. Such a value reaches every receiver (`embed_id`,
//! `data`), the events API and the console. `taphook check` warns about
//! each one, with its file and line; the fix is `{"hash": ...}`, which
//! keeps the session apart and the credential out.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use serde_json::Value;

/// Headers that carry credentials.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Words that make a field's name a credential's.
const CREDENTIAL_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "csrf",
    "xsrf",
    "apikey",
    "api_key",
    "api-key",
    "credential",
    "authorization",
    "cookie",
];

/// True when a field named `name` holds a credential by its name: it
/// has one of [`CREDENTIAL_WORDS`] in it, in any case.
pub fn is_credential_name(name: &str) -> bool {
    static WORDS: LazyLock<AhoCorasick> = LazyLock::new(|| words_matcher(CREDENTIAL_WORDS));
    WORDS.is_match(name)
}

/// Finds any of `words` in a name, in any case, in one pass and without
/// allocating (a name is looked at for every header of every attempt).
pub fn words_matcher(words: &[&str]) -> AhoCorasick {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .unwrap_or_else(|e| unreachable!("a fixed list of words: {e}"))
}

/// [`CREDENTIAL_WORDS`], and more words that mark a header a receiver's
/// secret (`x-webhook-key`, `x-auth`, a signature, a session).
pub fn is_secret_header_name(name: &str) -> bool {
    static MORE: LazyLock<AhoCorasick> =
        LazyLock::new(|| words_matcher(&["key", "auth", "signature", "session"]));
    is_credential_name(name) || MORE.is_match(name)
}

/// What a variable path reads, when it reads a credential: `the cookie
/// `sessionid``, `the header `authorization``, `the field `csrf_token``.
pub fn credential_read(path: &str) -> Option<String> {
    let lower = path.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('.').collect();
    match parts.as_slice() {
        ["request", "cookies"] => return Some("every cookie".into()),
        ["request", "cookies", name, ..] => return Some(format!("the cookie `{name}`")),
        [_, "headers", name, ..] if CREDENTIAL_HEADERS.contains(name) => {
            return Some(format!("the header `{name}`"))
        }
        _ => {}
    }
    parts
        .iter()
        .rev()
        .find(|p| is_credential_name(p))
        .map(|p| format!("the field `{p}`"))
}

/// Every credential an expression (after the `$` rewrite) reads outside
/// a `hash`.
pub fn raw_reads(expr: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

fn walk(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if m.len() == 1 => {
            let (op, args) = m.iter().next().expect("one key");
            match op.as_str() {
                crate::filter::hash::OPERATOR => {}
                "var" => {
                    let path = match args {
                        Value::String(s) => Some(s.as_str()),
                        Value::Array(a) => a.first().and_then(Value::as_str),
                        _ => None,
                    };
                    match path.and_then(credential_read) {
                        Some(what) => out.push(what),
                        None => walk(args, out),
                    }
                }
                _ => walk(args, out),
            }
        }
        Value::Object(m) => m.values().for_each(|v| walk(v, out)),
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::expr::lower;
    use serde_json::json;

    fn reads(v: Value) -> Vec<String> {
        raw_reads(&lower(&v))
    }

    #[test]
    fn raw_credentials_are_found_and_hashed_ones_are_not() {
        assert_eq!(
            reads(json!("$request.cookies.sessionid")),
            ["the cookie `sessionid`"]
        );
        assert_eq!(
            reads(json!({"cat": ["s-", "$request.headers.authorization"]})),
            ["the header `authorization`"]
        );
        assert_eq!(
            reads(json!("$request.body.csrfmiddlewaretoken")),
            ["the field `csrfmiddlewaretoken`"]
        );
        assert_eq!(
            reads(json!({"var": ["request.body.user.password", ""]})),
            ["the field `password`"]
        );
        assert!(reads(json!({"hash": "$request.cookies.sessionid"})).is_empty());
        assert!(reads(json!("$response.body.task_id")).is_empty());
        assert!(reads(json!("$request.headers.x-request-id")).is_empty());
    }

    #[test]
    fn credential_names_are_found_in_any_case() {
        for name in [
            "csrf_token",
            "X-CSRFToken",
            "Password",
            "user_API_KEY",
            "sessionCookie",
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["content-length", "user_id", "session"] {
            assert!(!is_credential_name(name), "{name}");
        }
        assert!(is_secret_header_name("x-session"));
        assert!(!is_secret_header_name("x-request-id"));
    }
}
