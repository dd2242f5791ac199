//! `taphook draft --har FILE`: a starting rules file for an importer
//! taphook has never seen, from a recording of its traffic, GETs included.
//!
//! - [`evidence`]: each exchange's path template and the id-like values it
//!   carries, with the expression that reads each.
//! - [`lifecycle`]: which exchanges are lifecycle steps, by evidence
//!   (uploads, the confirm step that refers back to an upload, the
//!   creation of a session), and [`polls`]: repeated requests whose
//!   answers report a state, whose ends are the import's success and
//!   failure.
//! - [`sessions`]: the session key, the value that threads the most
//!   steps (hashed when it is a credential), and the aliases that join the
//!   steps that carry another value.
//!
//! Statuses are written as seen (a 302 stays 302; a class only where the
//! recording shows several). The draft passes `taphook check` as it is,
//! and every route it writes fires on the recording it came from.

pub mod evidence;
pub mod lifecycle;
pub mod polls;
pub mod sessions;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{json, Value};

pub use super::har::Recorded;
use evidence::Seen;
use lifecycle::Proposal;

/// The routes a draft proposes.
pub struct Draft {
    pub routes: Vec<Route>,
    /// Exchanges read, and those left out as noise (assets, preflights).
    pub exchanges: usize,
    pub noise: usize,
}

/// One drafted route, ready to write.
pub struct Route {
    pub name: String,
    pub event: String,
    pub method: String,
    pub path: String,
    /// `status:` as written: `302`, `2xx`, or a list.
    pub status: Value,
    pub when: Option<Value>,
    pub session: Option<Value>,
    pub session_alias: Vec<Value>,
    pub dedup_key: Option<Value>,
    pub data: Vec<(String, Value)>,
    /// The entries it came from.
    pub entries: Vec<usize>,
    /// The first exchange: "#3 POST /upload -> 200".
    pub from: String,
    /// Why (`--why`).
    pub why: Vec<String>,
}

impl Draft {
    /// Drafts routes for `recorded`.
    pub fn of(recorded: &[Recorded]) -> Self {
        let seen = evidence::read_all(recorded);
        let mut props = lifecycle::classify(&seen);
        sessions::thread(&seen, &mut props);
        let mut names: Vec<String> = Vec::new();
        let routes = props
            .into_iter()
            .map(|p| route(p, &seen, &mut names))
            .collect();
        Self {
            routes,
            exchanges: seen.len(),
            noise: seen.iter().filter(|s| s.noise).count(),
        }
    }

    /// The rules file (YAML), with `--why`'s reasons as comments.
    pub fn render(&self, source: &str, why: bool) -> String {
        render(self, source, why)
    }
}

fn route(p: Proposal, seen: &[Seen<'_>], names: &mut Vec<String>) -> Route {
    let statuses: BTreeSet<u16> = p.exchanges.iter().map(|&i| seen[i].x.status).collect();
    let mut data = p.data.clone();
    if p.event == "file_uploaded" && p.exchanges.iter().all(|&i| !seen[i].x.files.is_empty()) {
        data.insert(0, ("filename".into(), json!("$request.files.0.filename")));
    }
    let first = &seen[p.exchanges[0]];
    let mut why = p.evidence.clone();
    why.extend(p.session_why.iter().cloned());
    Route {
        name: unique_name(&p, names),
        status: status(&statuses),
        when: p.when.clone(),
        session: p.session.clone(),
        session_alias: p.session_alias.clone(),
        dedup_key: p.dedup_key.as_ref().map(sessions::dedup_list),
        data,
        entries: p.exchanges.iter().map(|&i| seen[i].entry).collect(),
        from: lifecycle::at(first),
        why,
        event: p.event,
        method: p.method,
        path: p.template,
    }
}

/// Statuses as seen: one is itself; several of a class are the class.
fn status(seen: &BTreeSet<u16>) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let classes: BTreeSet<u16> = seen.iter().map(|s| s / 100).collect();
    for c in classes {
        let mine: Vec<u16> = seen.iter().copied().filter(|s| s / 100 == c).collect();
        if mine.len() > 1 {
            out.push(json!(format!("{c}xx")));
        } else {
            out.extend(mine.into_iter().map(|s| json!(s)));
        }
    }
    match out.len() {
        1 => out.remove(0),
        _ => Value::Array(out),
    }
}

/// `<event>-<method>-<path words>`, made unique.
fn unique_name(p: &Proposal, names: &mut Vec<String>) -> String {
    let words: String = p
        .template
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .map(|s| {
            let w: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            let w = w.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
            format!("-{w}")
        })
        .filter(|w| w.len() > 1)
        .collect();
    let base = format!("{}-{}{words}", p.event, p.method.to_ascii_lowercase());
    let mut name = base.clone();
    let mut n = 2;
    while names.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    names.push(name.clone());
    name
}

fn render(d: &Draft, source: &str, why: bool) -> String {
    let q = |v: &Value| v.to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# DRAFT routes written by `taphook draft` from {source}"
    );
    let _ = writeln!(
        out,
        "# ({} exchange(s), {} of them assets or preflights).",
        d.exchanges, d.noise
    );
    let _ = writeln!(
        out,
        "# Rename what you like, then check what each route makes of the recording:"
    );
    let _ = writeln!(
        out,
        "#   taphook explain --har {source} --rules <dir>   and   taphook test (README, \"Routes\")."
    );
    if d.routes.iter().any(|r| uses_hash(r)) {
        let _ = writeln!(
            out,
            "# `hash` keys a credential (a cookie, a token) with the config's session_secret:"
        );
        let _ = writeln!(
            out,
            "# the session stays apart and the credential reaches no receiver."
        );
    }
    if d.routes.is_empty() {
        let _ = writeln!(
            out,
            "# No lifecycle step and no state-changing request in the recording."
        );
        let _ = writeln!(out, "routes: []");
        return out;
    }
    let _ = writeln!(out, "routes:");
    for r in &d.routes {
        let more = match r.entries.len() {
            1 => String::new(),
            n => format!(" (and {} more like it)", n - 1),
        };
        let _ = writeln!(out, "  # from {}{more}", r.from);
        if why {
            for line in &r.why {
                let _ = writeln!(out, "  #   {line}");
            }
        }
        let _ = writeln!(out, "  - name: {}", q(&json!(r.name)));
        let _ = writeln!(out, "    event: {}", q(&json!(r.event)));
        let _ = writeln!(out, "    method: {}", r.method);
        let _ = writeln!(out, "    path: {}", q(&json!(r.path)));
        let _ = writeln!(out, "    status: {}", q(&r.status));
        if let Some(w) = &r.when {
            let _ = writeln!(out, "    when: {}", q(w));
        }
        match &r.session {
            Some(s) => {
                let _ = writeln!(out, "    session: {}", q(s));
            }
            None => {
                let _ = writeln!(
                    out,
                    "    # no session key found: add `session:` if this step belongs to one"
                );
            }
        }
        match r.session_alias.as_slice() {
            [] => {}
            [one] => {
                let _ = writeln!(out, "    session_alias: {}", q(one));
            }
            many => {
                let _ = writeln!(out, "    session_alias: {}", q(&json!(many)));
            }
        }
        if let Some(k) = &r.dedup_key {
            let _ = writeln!(out, "    dedup_key: {}", q(k));
        }
        if !r.data.is_empty() {
            let _ = writeln!(out, "    data:");
            for (k, v) in &r.data {
                let _ = writeln!(out, "      {}: {}", q(&json!(k)), q(v));
            }
        }
    }
    out
}

fn uses_hash(r: &Route) -> bool {
    let has = |v: &Value| v.to_string().contains("\"hash\"");
    r.session.as_ref().is_some_and(has) || r.session_alias.iter().any(has)
}
