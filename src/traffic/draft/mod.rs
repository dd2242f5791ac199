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
        lifecycle::settle(&mut props);
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
            let w = w
                .split('-')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-");
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
    if d.routes.iter().any(uses_hash) {
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
    webhook_example(d, &mut out);
    out
}

/// A webhook for the lifecycle found, commented out: set its URL and
/// uncomment it to deliver (README, "Webhooks").
fn webhook_example(d: &Draft, out: &mut String) {
    let mut events: Vec<&str> = Vec::new();
    for r in &d.routes {
        if lifecycle::LIFECYCLE.contains(&r.event.as_str()) && !events.contains(&r.event.as_str()) {
            events.push(&r.event);
        }
    }
    if events.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# To deliver them, set a receiver's URL and uncomment:"
    );
    let _ = writeln!(out, "# webhooks:");
    let _ = writeln!(out, "#   - key: importer-events");
    let _ = writeln!(out, "#     url: https://hooks.example.com/importer");
    let _ = writeln!(out, "#     events: [{}]", events.join(", "));
}

/// A route test file for the draft (`taphook draft --tests FILE`): the
/// recording, and every event the drafted routes derive from it, in
/// order; `embed_id` where the session key is not a hash (a hash depends
/// on the session_secret).
pub fn tests_file(
    draft: &Draft,
    rules_text: &str,
    recorded: &[Recorded],
    har: &std::path::Path,
    file: &std::path::Path,
) -> Result<String, String> {
    let doc = crate::rules::source::Document::parse(
        std::path::Path::new("draft.yaml"),
        rules_text,
        &|_| None,
    )
    .map_err(|p| p.to_string())?;
    let rules = crate::rules::load_documents(&[doc]).map_err(|p| p.to_string())?;
    let reports = crate::traffic::explain::explain(&rules, recorded, "Production");
    let q = |v: &Value| v.to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Route tests written by `taphook draft --tests`: the events the drafted routes"
    );
    let _ = writeln!(
        out,
        "# derive from the recording, in order. Rename an event type here as in the routes."
    );
    let _ = writeln!(out, "tests:");
    let _ = writeln!(
        out,
        "  - name: {}",
        q(&json!(format!("the recording {}", har.display())))
    );
    let _ = writeln!(out, "    har: {}", q(&json!(relative(har, file)?)));
    let events: Vec<_> = reports
        .iter()
        .flat_map(|r| {
            r.events
                .iter()
                .filter(|e| !e.duplicate)
                .map(move |e| (r, e))
        })
        .collect();
    if events.is_empty() {
        let _ = writeln!(out, "    events: []");
        return Ok(out);
    }
    let _ = writeln!(out, "    events:");
    // A hashed key depends on the session_secret: a route joined to a
    // hashed session through an alias has one too.
    let hashing = draft.routes.iter().any(uses_hash);
    for (r, e) in events {
        let hashed = hashing
            && e.embed_id
                .as_str()
                .is_some_and(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit()));
        let _ = writeln!(
            out,
            "      # #{} {} {} -> {}",
            r.entry, r.method, r.path, r.status
        );
        let _ = writeln!(out, "      - event_type: {}", q(&json!(e.event_type)));
        if !hashed && !e.embed_id.is_null() {
            let _ = writeln!(out, "        embed_id: {}", q(&e.embed_id));
        }
    }
    Ok(out)
}

/// `target` relative to the directory of `file`.
fn relative(target: &std::path::Path, file: &std::path::Path) -> Result<String, String> {
    let abs =
        |p: &std::path::Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let target = abs(target)?;
    let from = abs(file)?;
    let from = from.parent().unwrap_or(std::path::Path::new("/"));
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Ok(parts.join("/"))
}

fn uses_hash(r: &Route) -> bool {
    let has = |v: &Value| v.to_string().contains("\"hash\"");
    r.session.as_ref().is_some_and(has) || r.session_alias.iter().any(has)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::explain::explain;

    /// A HAR entry: method, URL path, request headers and body, status,
    /// answer headers and body.
    fn entry(
        method: &str,
        path: &str,
        req: (&[(&str, &str)], Option<&str>),
        status: u16,
        resp: (&[(&str, &str)], Option<&str>),
    ) -> Value {
        let headers = |h: &[(&str, &str)]| {
            h.iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        };
        let mut request = json!({"method": method, "url": format!("http://importer{path}"),
            "httpVersion": "HTTP/1.1", "cookies": [], "headers": headers(req.0), "queryString": [],
            "headersSize": -1, "bodySize": -1});
        if let Some(b) = req.1 {
            let ct = req
                .0
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map_or("application/json", |(_, v)| v);
            request["postData"] = json!({"mimeType": ct, "text": b});
        }
        json!({"startedDateTime": "2026-12-06T10:00:00Z", "time": 1, "request": request,
            "response": {"status": status, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [],
                "headers": headers(resp.0), "content": {"size": 0, "mimeType": "application/json", "text": resp.1.unwrap_or("")},
                "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0}})
    }

    fn har(entries: Vec<Value>) -> Vec<Recorded> {
        let doc = json!({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, "entries": entries}});
        crate::traffic::har::read(&doc.to_string()).unwrap()
    }

    const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

    fn multipart(boundary: &str, filename: &str) -> (String, String) {
        (
            format!("multipart/form-data; boundary={boundary}"),
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: text/csv\r\n\r\nname,email\r\nAda,ada@example.com\r\n--{boundary}--\r\n"),
        )
    }

    /// One session of an API importer: the file, then an import made of
    /// it, then its status polled until it ends.
    fn api_session(file_id: &str, import_id: &str, end: &str) -> Vec<Value> {
        let (ct, body) = multipart("XyZ", "contacts.csv");
        vec![
            entry(
                "GET",
                "/app/",
                (&[], None),
                200,
                (&[("content-type", "text/html")], Some("<html></html>")),
            ),
            entry(
                "POST",
                "/api/files",
                (&[("content-type", ct.as_str())], Some(body.as_str())),
                201,
                (
                    JSON,
                    Some(&format!(
                        r#"{{"file_id": "{file_id}", "name": "contacts.csv"}}"#
                    )),
                ),
            ),
            entry(
                "POST",
                "/api/imports",
                (
                    JSON,
                    Some(&format!(
                        r#"{{"file_id": "{file_id}", "template": "contacts"}}"#
                    )),
                ),
                202,
                (
                    JSON,
                    Some(&format!(r#"{{"id": "{import_id}", "status": "queued"}}"#)),
                ),
            ),
            entry(
                "GET",
                &format!("/api/imports/{import_id}"),
                (&[], None),
                200,
                (JSON, Some(r#"{"status": "processing", "rows": 0}"#)),
            ),
            entry(
                "GET",
                &format!("/api/imports/{import_id}"),
                (&[], None),
                200,
                (JSON, Some(&format!(r#"{{"status": "{end}", "rows": 2}}"#))),
            ),
            entry(
                "GET",
                &format!("/api/imports/{import_id}"),
                (&[], None),
                200,
                (JSON, Some(&format!(r#"{{"status": "{end}", "rows": 2}}"#))),
            ),
        ]
    }

    fn load(d: &Draft) -> crate::rules::Rules {
        let text = d.render("test.har", true);
        let doc = crate::rules::source::Document::parse(
            std::path::Path::new("draft.yaml"),
            &text,
            &|_| None,
        )
        .unwrap_or_else(|p| panic!("{p}\n{text}"));
        crate::rules::load_documents(&[doc]).unwrap_or_else(|p| panic!("{p}\n{text}"))
    }

    /// (entry, event type, session) of every event not dropped as a duplicate.
    fn events(rules: &crate::rules::Rules, recorded: &[Recorded]) -> Vec<(usize, String, Value)> {
        explain(rules, recorded, "Production")
            .into_iter()
            .flat_map(|r| {
                let entry = r.entry;
                r.events
                    .into_iter()
                    .filter(|e| !e.duplicate)
                    .map(move |e| (entry, e.event_type, e.embed_id))
            })
            .collect()
    }

    #[test]
    fn an_api_importer_is_threaded_from_its_file_to_its_polls() {
        let mut entries = api_session("f_8a7b6c5d4e", "imp_1a2b3c4d5e", "completed");
        entries.extend(api_session("f_9f8e7d6c5b", "imp_5e4d3c2b1a", "failed"));
        let recorded = har(entries);
        let draft = Draft::of(&recorded);
        let rules = load(&draft);
        let got = events(&rules, &recorded);
        let f1 = json!("f_8a7b6c5d4e");
        let f2 = json!("f_9f8e7d6c5b");
        assert_eq!(
            got,
            vec![
                (1, "file_uploaded".to_string(), f1.clone()),
                (2, "import_submitted".to_string(), f1.clone()),
                (4, "import_succeeded".to_string(), f1),
                (7, "file_uploaded".to_string(), f2.clone()),
                (8, "import_submitted".to_string(), f2.clone()),
                (10, "import_failed".to_string(), f2),
            ],
            "{}",
            draft.render("test.har", true)
        );
    }

    #[test]
    fn a_synchronous_import_answers_how_it_went() {
        let session = |sid: &str, answer: &str| {
            let cookie = format!("sid={sid}");
            let h: Vec<(&str, &str)> = vec![
                ("content-type", "application/json"),
                ("cookie", cookie.as_str()),
            ];
            vec![
                entry(
                    "GET",
                    "/import",
                    (&[("cookie", cookie.as_str())], None),
                    200,
                    (&[("content-type", "text/html")], Some("<form></form>")),
                ),
                entry(
                    "POST",
                    "/import",
                    (&h, Some(r#"{"csv": "name,email\nAda,ada@example.com\n"}"#)),
                    200,
                    (JSON, Some(answer)),
                ),
            ]
        };
        let mut entries = session("s3cr3tc00kie1", r#"{"status": "ok", "imported": 1}"#);
        entries.extend(session(
            "s3cr3tc00kie2",
            r#"{"status": "error", "errors": ["row 2: email"]}"#,
        ));
        let recorded = har(entries);
        let draft = Draft::of(&recorded);
        let text = draft.render("test.har", false);
        assert!(
            text.contains(r#"session: {"hash":"$request.cookies.sid"}"#),
            "{text}"
        );
        let got: Vec<(usize, String)> = events(&load(&draft), &recorded)
            .into_iter()
            .map(|(e, t, _)| (e, t))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "file_uploaded".to_string()),
                (1, "import_succeeded".to_string()),
                (3, "file_uploaded".to_string()),
                (3, "import_failed".to_string()),
            ],
            "{text}"
        );
    }

    /// An API that answers every call with `"success": true` (CKAN's
    /// shape): that constant says nothing; the status nested in `result`,
    /// which changes, is the poll's.
    #[test]
    fn a_field_that_never_changes_is_not_a_state() {
        let answer = |status: &str| {
            format!(r#"{{"success": true, "result": {{"status": "{status}", "rows": 3}}}}"#)
        };
        let (ct, body) = multipart("B0undary", "orders.csv");
        let mut entries = Vec::new();
        for (res, end) in [("res-1a2b3c4d5e", "complete"), ("res-9f8e7d6c5b", "error")] {
            entries.push(entry(
                "POST",
                "/api/3/action/resource_create",
                (&[("content-type", ct.as_str())], Some(body.as_str())),
                200,
                (
                    JSON,
                    Some(&format!(
                        r#"{{"success": true, "result": {{"id": "{res}"}}}}"#
                    )),
                ),
            ));
            entries.push(entry(
                "GET",
                "/api/3/action/package_show?id=orders",
                (&[], None),
                200,
                (
                    JSON,
                    Some(r#"{"success": true, "result": {"name": "orders"}}"#),
                ),
            ));
            entries.push(entry(
                "GET",
                "/api/3/action/package_show?id=orders",
                (&[], None),
                200,
                (
                    JSON,
                    Some(r#"{"success": true, "result": {"name": "orders"}}"#),
                ),
            ));
            for status in ["pending", end] {
                entries.push(entry(
                    "GET",
                    &format!("/api/3/action/xloader_status?resource_id={res}"),
                    (&[], None),
                    200,
                    (JSON, Some(&answer(status))),
                ));
            }
        }
        let recorded = har(entries);
        let draft = Draft::of(&recorded);
        let got: Vec<(usize, String, Value)> = events(&load(&draft), &recorded);
        let (a, b) = (json!("res-1a2b3c4d5e"), json!("res-9f8e7d6c5b"));
        assert_eq!(
            got,
            vec![
                (0, "file_uploaded".to_string(), a.clone()),
                (4, "import_succeeded".to_string(), a),
                (5, "file_uploaded".to_string(), b.clone()),
                (9, "import_failed".to_string(), b),
            ],
            "{}",
            draft.render("test.har", true)
        );
    }

    #[test]
    fn statuses_are_written_as_seen() {
        assert_eq!(status(&BTreeSet::from([302])), json!(302));
        assert_eq!(status(&BTreeSet::from([200, 201])), json!("2xx"));
        assert_eq!(status(&BTreeSet::from([200, 302])), json!([200, 302]));
    }
}
