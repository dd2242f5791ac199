//! What a recording writes in place of a secret. By default a pseudonym:
//! `redacted:7f3a91c2`, a keyed hash of the value with a key made for
//! this recording run and kept nowhere, so the same cookie, token or
//! CSRF value gives the same pseudonym in every header, cookie, query
//! parameter, JSON and form field of the run. Sessions keyed by a
//! cookie, ids threaded through later requests and tests on the
//! recording then behave as on the live traffic, and nothing secret is
//! written. `record.redact_mode: remove` writes `REDACTED` instead.
//!
//! Secret by name: the `Authorization`, `Proxy-Authorization` and
//! `X-Api-Key` headers, every cookie's value, and headers, query
//! parameters, JSON and form fields whose names hold a credential word
//! (token, password, secret, CSRF...). Secret by value: a value seen as a
//! secret earlier in the run, wherever it shows again (an HTML page's
//! hidden CSRF field, a JSON body echoing a session id).

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;

use crate::filter::HashKey;
use crate::rules::credentials::is_credential_name;

/// Headers whose whole value is a secret.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "x-api-key"];

/// Words that make a name secret besides the credential words of
/// `taphook check` ([`is_credential_name`]).
const MORE_SECRET_WORDS: &[&str] = &[
    "jwt",
    "session_key",
    "sessionid",
    "session_id",
    "session-id",
    "signature",
];

/// Names secret as a whole (as parts of a name they would be too common).
const SECRET_NAMES: &[&str] = &["sid", "auth", "sig"];

/// Headers whose value is a URL: its query and path are redacted like a
/// request's.
const URL_HEADERS: &[&str] = &["location", "content-location", "referer", "refresh"];

/// What `record.redact_mode: remove` writes.
pub const REDACTED: &str = "REDACTED";

/// The prefix of a pseudonym.
pub const PSEUDONYM_PREFIX: &str = "redacted:";

/// Secret values shorter than this are not looked for in other text
/// (a `1` would be replaced everywhere).
const MIN_SEARCHED: usize = 8;

/// Secret values remembered for finding them again, at most.
const MAX_REMEMBERED: usize = 100_000;

/// `record.redact_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// A stable pseudonym per value (the default).
    #[default]
    Pseudonym,
    /// `REDACTED`.
    Remove,
}

/// Which names are secret, and what replaces a secret value.
pub struct Redactor {
    /// Lower-case names secret besides the built-in ones.
    extra: Vec<String>,
    mode: RedactMode,
    key: HashKey,
    /// Secret values seen in this run, to find again in other text.
    seen: Mutex<HashSet<String>>,
}

impl Redactor {
    /// A redactor with a key of its own (made now, kept nowhere).
    pub fn new(extra: &[String], mode: RedactMode) -> Self {
        let key = crate::filter::hash::random_secret();
        Self::with_key(extra, mode, HashKey::new(key.as_bytes()))
    }

    pub fn with_key(extra: &[String], mode: RedactMode, key: HashKey) -> Self {
        Self {
            extra: extra.iter().map(|n| n.to_ascii_lowercase()).collect(),
            mode,
            key,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// True when a header's value is secret by its name.
    pub fn secret_header(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        SECRET_HEADERS.contains(&n.as_str()) || self.secret_name(&n)
    }

    /// True when a field's value is secret by its name.
    pub fn secret_name(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        is_credential_name(&n)
            || MORE_SECRET_WORDS.iter().any(|w| n.contains(w))
            || SECRET_NAMES.contains(&n.as_str())
            || self.extra.contains(&n)
    }

    /// What a secret value is written as; the value is remembered, to be
    /// found again in other text of the run.
    pub fn secret(&self, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        if value.len() >= MIN_SEARCHED && !value.starts_with(PSEUDONYM_PREFIX) {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() < MAX_REMEMBERED {
                seen.insert(value.to_string());
            }
        }
        self.replacement(value)
    }

    fn replacement(&self, value: &str) -> String {
        match self.mode {
            RedactMode::Remove => REDACTED.to_string(),
            RedactMode::Pseudonym => {
                format!("{PSEUDONYM_PREFIX}{}", &self.key.hash(value)[..8])
            }
        }
    }

    /// A header's value as written: secret headers whole (the scheme of
    /// `Authorization` kept), cookies value by value, others as they are
    /// unless they hold a secret seen before.
    pub fn header(&self, name: &str, value: &str) -> String {
        match name.to_ascii_lowercase().as_str() {
            "cookie" => self.cookie_header(value),
            "set-cookie" => self.set_cookie(value),
            "authorization" | "proxy-authorization" => match value.split_once(' ') {
                Some((scheme, credential)) if !scheme.is_empty() => {
                    format!("{scheme} {}", self.secret(credential.trim()))
                }
                _ => self.secret(value),
            },
            n if self.secret_header(n) => self.secret(value),
            n if URL_HEADERS.contains(&n) => self.url(value),
            _ => self.known(value),
        }
    }

    /// A URL (or a path) with its query's secret parameters and every
    /// secret seen replaced.
    pub fn url(&self, value: &str) -> String {
        match value.split_once('?') {
            Some((path, query)) => format!(
                "{}?{}",
                self.known(path),
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(self.pairs(query))
                    .finish()
            ),
            None => self.known(value),
        }
    }

    /// A `Cookie` header with every value replaced, names kept.
    pub fn cookie_header(&self, value: &str) -> String {
        self.cookies(value)
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The cookies of a `Cookie` header, values replaced.
    pub fn cookies(&self, value: &str) -> Vec<(String, String)> {
        value
            .split(';')
            .filter_map(|pair| {
                let (name, v) = pair.trim().split_once('=')?;
                Some((name.trim().to_string(), self.secret(v.trim())))
            })
            .collect()
    }

    /// A `Set-Cookie` header with its value replaced, attributes kept.
    pub fn set_cookie(&self, value: &str) -> String {
        let (pair, attributes) = match value.split_once(';') {
            Some((p, a)) => (p, Some(a)),
            None => (value, None),
        };
        let pair = match pair.split_once('=') {
            Some((name, v)) => format!("{}={}", name.trim(), self.secret(v.trim())),
            None => pair.to_string(),
        };
        match attributes {
            Some(a) => format!("{pair};{a}"),
            None => pair,
        }
    }

    /// The fields of a query string or form body, secret values replaced.
    pub fn pairs(&self, encoded: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(encoded.as_bytes())
            .map(|(k, v)| {
                let v = if self.secret_name(&k) {
                    self.secret(&v)
                } else {
                    self.known(&v)
                };
                (k.into_owned(), v)
            })
            .collect()
    }

    /// A JSON value with every secret field's value replaced.
    pub fn json(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if self.secret_name(k) && !v.is_null() {
                        *v = Value::String(match &*v {
                            Value::String(s) => self.secret(s),
                            other => self.secret(&other.to_string()),
                        });
                    } else {
                        self.json(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.json(i)),
            Value::String(s) => *s = self.known(s),
            _ => {}
        }
    }

    /// Text (an HTML page, a plain body) with every secret seen so far in
    /// the run replaced, and the values of hidden inputs and meta tags
    /// whose names are secret (CSRF tokens) first added to them.
    pub fn text(&self, text: &str) -> String {
        for value in html_secrets(text, |n| self.secret_name(n)) {
            self.secret(&value);
        }
        self.known(text)
    }

    /// `text` with every secret value seen so far replaced. Secrets are
    /// found as whole words (runs of letters, digits and `-_.~+%`, with
    /// any `=` padding), by one look-up each: linear in the text however
    /// many secrets the run has seen.
    fn known(&self, text: &str) -> String {
        if text.len() < MIN_SEARCHED {
            return text.to_string();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end) in words(text) {
            let padded = text[end..].bytes().take_while(|b| *b == b'=').count();
            let hit = [&text[start..end + padded], &text[start..end]]
                .into_iter()
                .find(|w| w.len() >= MIN_SEARCHED && seen.contains(*w));
            if let Some(w) = hit {
                out.push_str(&text[last..start]);
                out.push_str(&self.replacement(w));
                last = start + w.len();
            }
        }
        out.push_str(&text[last..]);
        out
    }
}

/// The byte ranges of a text's words: runs of letters, digits and `-_.~+%`
/// (a `/` ends a word, so a secret is found as a path's segment).
fn words(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let in_word = |b: u8| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b);
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && !in_word(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && in_word(bytes[i]) {
            i += 1;
        }
        Some((start, i))
    })
}

/// The values of `<input>` and `<meta>` tags whose `name` is secret:
/// `<input type="hidden" name="csrfmiddlewaretoken" value="...">`,
/// `<meta name="csrf-token" content="...">`.
fn html_secrets(text: &str, secret: impl Fn(&str) -> bool) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    for tag in ["<input", "<meta"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(tag) {
            let start = from + at;
            let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
            let attrs = &text[start..end];
            if let Some(name) = attribute(attrs, "name") {
                if secret(&name) {
                    let value = attribute(attrs, "value").or_else(|| attribute(attrs, "content"));
                    out.extend(value.filter(|v| !v.is_empty()));
                }
            }
            from = end.max(start + tag.len());
        }
    }
    out
}

/// An attribute's value in a tag's text (quoted with `"` or `'`, or bare).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        let before_ok = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let rest = tag[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest
                .split(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
                .next()
                .unwrap_or(""),
        };
        return Some(value.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::with_key(
            &["X-Tenant".to_string()],
            RedactMode::Pseudonym,
            HashKey::new(b"test"),
        )
    }

    #[test]
    fn one_value_one_pseudonym_in_every_place() {
        let r = redactor();
        let cookie = r.header("cookie", "sessionid=abc123def; theme=dark");
        let (_, session) = r.cookies("sessionid=abc123def")[0].clone();
        assert!(
            session.starts_with("redacted:") && session.len() == 17,
            "{session}"
        );
        assert_eq!(
            cookie,
            format!("sessionid={session}; theme={}", r.secret("dark"))
        );
        let set = r.header("set-cookie", "sessionid=abc123def; Path=/; HttpOnly");
        assert_eq!(set, format!("sessionid={session}; Path=/; HttpOnly"));
        let mut body = json!({"session": "abc123def", "user": {"password": "p"}, "x-tenant": "t"});
        r.json(&mut body);
        assert_eq!(body["session"], session.as_str());
        assert_eq!(body["user"]["password"], r.secret("p"));
        assert_eq!(body["x-tenant"], r.secret("t"));
        assert_eq!(
            r.header("authorization", "Bearer tok-123456"),
            format!("Bearer {}", r.secret("tok-123456"))
        );
    }

    #[test]
    fn hidden_csrf_fields_in_html_are_replaced() {
        let r = redactor();
        let page = r#"<form><input type="hidden" name="csrfmiddlewaretoken" value="Zx9abcdefghijk"><input name="title" value="Q1 report"></form>"#;
        let out = r.text(page);
        assert!(!out.contains("Zx9abcdefghijk"), "{out}");
        assert!(out.contains("Q1 report"));
        // The form that posts it back gets the same pseudonym.
        let pairs = r.pairs("csrfmiddlewaretoken=Zx9abcdefghijk&title=x");
        assert!(out.contains(&pairs[0].1));
    }

    #[test]
    fn remove_mode_writes_redacted() {
        let r = Redactor::with_key(&[], RedactMode::Remove, HashKey::new(b"k"));
        assert_eq!(r.header("x-api-key", "k-1"), REDACTED);
        assert_eq!(r.cookie_header("a=1; b=2"), "a=REDACTED; b=REDACTED");
    }
}
