//! Loading the rules directory: read every file, check every object,
//! lower what is valid, and report every problem as `file:line: reason`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{Problem, Problems};
use super::model::*;
use super::raw::*;
use super::source::{escape_pointer, Document};
use crate::derive::exchange::Needs;
use crate::derive::routes::{parse_template, RouteTable};
use crate::filter::Expr;

const TOP_LEVEL_KEYS: &[&str] = &["routes", "webhooks", "apps", "events"];
const TOPICS: &[&str] = &["participant", "entity", "container"];

/// Loads every `*.yaml`, `*.yml` and `*.json` file below `dir`.
pub fn load_dir(dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Rules, Problems> {
    let (docs, problems) = read_dir(dir, env)?;
    let files = docs.iter().map(|d| d.path.clone()).collect();
    load_parsed(&docs, files, problems)
}

/// Reads and parses every rules file below `dir`: the documents that
/// parsed, and the problems of those that did not.
pub fn read_dir(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Document>, Vec<Problem>), Problems> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for file in list_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => match Document::parse(&file, &text, env) {
                Ok(doc) => docs.push(doc),
                Err(Problems(p)) => problems.extend(p),
            },
            Err(e) => problems.push(Problem::new(&file, 1, format!("cannot read: {e}"))),
        }
    }
    Ok((docs, problems))
}

/// Loads rules from documents already in memory.
pub fn load_documents(docs: &[Document]) -> Result<Rules, Problems> {
    load_parsed(
        docs,
        docs.iter().map(|d| d.path.clone()).collect(),
        Vec::new(),
    )
}

fn load_parsed(
    docs: &[Document],
    files: Vec<PathBuf>,
    mut problems: Vec<Problem>,
) -> Result<Rules, Problems> {
    let mut loader = Loader::default();
    for doc in docs {
        loader.document(doc);
    }
    problems.append(&mut loader.problems);
    let rules = loader.finish(files, &mut problems);
    problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    match rules {
        Some(rules) if problems.is_empty() => Ok(rules),
        _ => Err(Problems(problems)),
    }
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, Problems> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            Problems::one(Problem::new(
                &d,
                1,
                format!("cannot read rules directory: {e}"),
            ))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                // `tests/` holds route tests (`taphook test`), not rules.
                if name != "tests" {
                    stack.push(path);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Default)]
struct Loader {
    problems: Vec<Problem>,
    routes: Vec<Route>,
    webhooks: Vec<Webhook>,
    apps: Vec<App>,
    registered: Vec<RegisteredEvent>,
    seen: Seen,
    /// Every `events` entry of every webhook, checked once all is read.
    event_refs: Vec<(String, Origin)>,
    /// Event types routes declare, valid or not, so that one broken route
    /// does not also make every webhook that names its event an error.
    declared: BTreeSet<String>,
    /// Beside each webhook: where its `events` names each event.
    webhook_event_lines: Vec<HashMap<String, Origin>>,
    /// Beside each registered event: where its `app` and `event_type` are.
    registered_lines: Vec<(Origin, Origin)>,
    /// Credentials routes hand on unhashed.
    warnings: Vec<Problem>,
}

impl Loader {
    fn document(&mut self, doc: &Document) {
        self.problems.extend(doc.problems.iter().cloned());
        let Some(top) = doc.value.as_object() else {
            if !doc.value.is_null() {
                self.problems.push(doc.problem(
                    "",
                    "expected a mapping with `routes`, `webhooks`, `apps` or `events`",
                ));
            }
            return;
        };
        for key in top.keys().filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            self.problems.push(doc.problem(
                &format!("/{}", escape_pointer(key)),
                format!("unknown top-level key `{key}` (expected one of routes, webhooks, apps, events)"),
            ));
        }
        self.each::<RawRoute>(doc, "routes", |l, raw, at| l.route(doc, raw, at));
        self.each::<RawWebhook>(doc, "webhooks", |l, raw, at| l.webhook(doc, raw, at));
        self.each::<RawApp>(doc, "apps", |l, raw, at| l.app(doc, raw, at));
        self.each::<RawRegisteredEvent>(doc, "events", |l, raw, at| {
            l.registered_event(doc, raw, at)
        });
    }

    /// Deserialises each item of the list under `key`, reporting shape
    /// errors at the exact field, and hands the valid ones to `f`.
    fn each<T: DeserializeOwned>(
        &mut self,
        doc: &Document,
        key: &str,
        mut f: impl FnMut(&mut Self, T, String),
    ) {
        let Some(list) = doc.value.get(key) else {
            return;
        };
        let Some(items) = list.as_array() else {
            self.problems
                .push(doc.problem(&format!("/{key}"), format!("`{key}` must be a list")));
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("/{key}/{i}");
            match serde_path_to_error::deserialize::<_, T>(item) {
                Ok(raw) => f(self, raw, at),
                Err(e) => {
                    let path = field_pointer(e.path());
                    let inner = e.inner().to_string();
                    let reason = if path.is_empty() || inner.starts_with("unknown field") {
                        inner
                    } else {
                        format!(
                            "{}: {inner}",
                            path.trim_start_matches('/').replace('/', ".")
                        )
                    };
                    self.problems
                        .push(doc.problem(&format!("{at}{path}"), reason));
                }
            }
        }
    }

    fn unique(&mut self, doc: &Document, kind: &'static str, name: &str, at: &str) -> Origin {
        let origin = Origin {
            file: doc.path.clone(),
            line: doc.line(at),
        };
        if let Some(first) = self.seen.get(&(kind, name.to_string())) {
            self.problems.push(doc.problem(
                at,
                format!("duplicate {kind} `{name}` (first defined at {first})"),
            ));
        } else {
            self.seen.insert((kind, name.to_string()), origin.clone());
        }
        origin
    }

    fn expr(&mut self, doc: &Document, at: &str, value: Option<&Value>) -> Option<Expr> {
        let value = value?;
        match Expr::compile(value) {
            Ok(e) => Some(e),
            Err(e) => {
                self.problems
                    .push(doc.problem(&format!("{at}{}", e.pointer), e.reason));
                None
            }
        }
    }

    fn template(&mut self, doc: &Document, at: &str, value: &Value) -> Template {
        match value {
            Value::Object(map) if !crate::filter::expr::is_operation(value) && !map.is_empty() => {
                Template::Object(
                    map.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                self.template(doc, &format!("{at}/{}", escape_pointer(k)), v),
                            )
                        })
                        .collect(),
                )
            }
            Value::Object(map) if map.is_empty() => Template::empty(),
            other => self
                .expr(doc, at, Some(other))
                .map(Template::Expr)
                .unwrap_or_else(Template::empty),
        }
    }

    fn route(&mut self, doc: &Document, raw: RawRoute, at: String) {
        let origin = self.unique(doc, "route", &raw.name, &format!("{at}/name"));
        self.declared.insert(raw.event.clone());
        if !is_event_name(&raw.event) {
            self.problems.push(doc.problem(
                &format!("{at}/event"),
                format!(
                    "invalid event type `{}`: use letters, digits, `_`, `-` or `.`",
                    raw.event
                ),
            ));
        }
        let params = match parse_template(&raw.path) {
            Ok((_, names)) => names,
            Err(reason) => {
                // Reported here, at the path; the route is not indexed.
                self.problems
                    .push(doc.problem(&format!("{at}/path"), reason));
                return;
            }
        };
        let methods = raw.method.map(OneOrMany::into_vec).unwrap_or_default();
        let methods = self.methods(doc, &at, methods);
        let status = match raw
            .status
            .as_ref()
            .map(parse_status)
            .unwrap_or_else(|| Ok(StatusMatch(vec![StatusRule::Class(2)])))
        {
            Ok(s) => s,
            Err(reason) => {
                self.problems
                    .push(doc.problem(&format!("{at}/status"), reason));
                StatusMatch(Vec::new())
            }
        };
        let remember = raw
            .remember
            .iter()
            .filter_map(|(k, v)| {
                let e = self.expr(
                    doc,
                    &format!("{at}/remember/{}", escape_pointer(k)),
                    Some(v),
                )?;
                Some((k.clone(), e))
            })
            .collect();
        let mut route = Route {
            when: self.expr(doc, &format!("{at}/when"), raw.when.as_ref()),
            session: self.expr(doc, &format!("{at}/session"), raw.session.as_ref()),
            session_alias: self.expr(
                doc,
                &format!("{at}/session_alias"),
                raw.session_alias.as_ref(),
            ),
            trigger: self.expr(doc, &format!("{at}/trigger"), raw.trigger.as_ref()),
            dedup_key: self.expr(doc, &format!("{at}/dedup_key"), raw.dedup_key.as_ref()),
            data: raw
                .data
                .as_ref()
                .map(|d| self.template(doc, &format!("{at}/data"), d))
                .unwrap_or_else(Template::empty),
            capture_max: raw
                .capture
                .map(|c| usize::try_from(c.max_body_bytes.0).unwrap_or(usize::MAX)),
            remember,
            name: raw.name,
            event: raw.event,
            methods,
            path: raw.path,
            params,
            status,
            origin,
            needs: Needs::ALL,
        };
        route.needs = route.reads();
        self.credentials(doc, &at, &route);
        self.routes.push(route);
    }

    /// Warns about each credential the route hands on unhashed: in its
    /// session key, session alias, remembered values or event data.
    fn credentials(&mut self, doc: &Document, at: &str, route: &Route) {
        let mut handed_on: Vec<(String, &Expr)> = Vec::new();
        handed_on.extend(route.session.iter().map(|e| (format!("{at}/session"), e)));
        handed_on.extend(
            route
                .session_alias
                .iter()
                .map(|e| (format!("{at}/session_alias"), e)),
        );
        handed_on.extend(
            route
                .remember
                .iter()
                .map(|(k, e)| (format!("{at}/remember/{}", escape_pointer(k)), e)),
        );
        data_exprs(&route.data, &format!("{at}/data"), &mut handed_on);
        for (pointer, expr) in handed_on {
            for what in super::credentials::raw_reads(expr.source()) {
                let key = pointer.rsplit('/').next().unwrap_or("");
                self.warnings.push(doc.problem(
                    &pointer,
                    format!(
                        "warning: route `{}`: `{key}` takes {what} unhashed, so every receiver, the events API and the console see it; write {{\"hash\": ...}} around it (keyed with session_secret)",
                        route.name
                    ),
                ));
            }
        }
    }

    fn methods(&mut self, doc: &Document, at: &str, methods: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        for m in methods {
            let upper = m.to_ascii_uppercase();
            if upper == "*" || upper == "ANY" {
                return Vec::new();
            }
            if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                self.problems.push(doc.problem(
                    &format!("{at}/method"),
                    format!("invalid HTTP method `{m}`"),
                ));
            }
            out.push(upper);
        }
        out
    }

    fn webhook(&mut self, doc: &Document, raw: RawWebhook, at: String) {
        let origin = self.unique(doc, "webhook", &raw.key, &format!("{at}/key"));
        let mut lines = HashMap::new();
        for (i, e) in raw.events.iter().enumerate() {
            if e != "*" {
                let line = Origin {
                    file: doc.path.clone(),
                    line: doc.line(&format!("{at}/events/{i}")),
                };
                lines.entry(e.clone()).or_insert_with(|| line.clone());
                self.event_refs.push((e.clone(), line));
            }
        }
        if let Some(w) = self.lower_webhook(doc, raw, &at, origin) {
            self.webhooks.push(w);
            self.webhook_event_lines.push(lines);
        }
    }

    fn lower_webhook(
        &mut self,
        doc: &Document,
        raw: RawWebhook,
        at: &str,
        origin: Origin,
    ) -> Option<Webhook> {
        use crate::deliver::destination::{self, Kind};
        let url = match reqwest::Url::parse(&raw.url) {
            Ok(u) => match Kind::from_scheme(u.scheme()) {
                Some(Kind::Http) if u.host().is_some() => Some(u),
                Some(Kind::Http) | None => {
                    self.problems.push(doc.problem(
                        &format!("{at}/url"),
                        format!(
                            "webhook URL must be {} with a host, got `{}`",
                            destination::SCHEMES,
                            u.scheme()
                        ),
                    ));
                    None
                }
                Some(_) => match destination::check_url(&u) {
                    Ok(()) => Some(u),
                    Err(why) => {
                        self.problems.push(doc.problem(
                            &format!("{at}/url"),
                            format!("{} destination: {why}", u.scheme()),
                        ));
                        None
                    }
                },
            },
            Err(e) => {
                self.problems
                    .push(doc.problem(&format!("{at}/url"), format!("invalid webhook URL: {e}")));
                None
            }
        };
        if raw.events.is_empty() {
            self.problems.push(doc.problem(
                &format!("{at}/events"),
                "`events` is empty: list event types or `*`",
            ));
        }
        let events = if raw.events.iter().any(|e| e == "*") {
            EventSelector::All
        } else {
            EventSelector::Some(raw.events.iter().cloned().collect())
        };
        let assignment = match raw.assignment.as_deref() {
            None | Some("all") => Assignment::All,
            Some("session") => Assignment::Session,
            Some(other) => {
                self.problems.push(doc.problem(
                    &format!("{at}/assignment"),
                    format!("unknown assignment `{other}` (expected `all` or `session`)"),
                ));
                Assignment::All
            }
        };
        let format = match raw.format.as_deref() {
            None => Format::OneSchema,
            Some(name) => Format::from_name(name).unwrap_or_else(|| {
                self.problems.push(doc.problem(
                    &format!("{at}/format"),
                    format!("unknown format `{name}` (expected oneschema, dromo, dromo-basic or flatfile)"),
                ));
                Format::OneSchema
            }),
        };
        let signing = raw
            .signing
            .map(|s| self.signing(doc, at, s))
            .unwrap_or_default();
        let retry = raw
            .retry
            .map(|r| self.retry(doc, at, r))
            .unwrap_or_default();
        let filter = self.expr(doc, &format!("{at}/filter"), raw.filter.as_ref());
        let rate_limit = raw.rate_limit.and_then(|r| {
            r.lower()
                .map_err(|why| {
                    self.problems
                        .push(doc.problem(&format!("{at}/rate_limit"), why));
                })
                .ok()
        });
        let ordering = match raw.ordering.as_deref() {
            None | Some("none") => Ordering::None,
            Some("session") => Ordering::Session,
            Some(other) => {
                self.problems.push(doc.problem(
                    &format!("{at}/ordering"),
                    format!("unknown ordering `{other}` (expected `none` or `session`)"),
                ));
                Ordering::None
            }
        };
        Some(Webhook {
            key: raw.key,
            url: url?,
            events,
            assignment,
            filter,
            format,
            secret: raw.secret.filter(|s| !s.expose().is_empty()),
            signing,
            development_mode: raw.development_mode,
            import_identifiers: raw.import_identifiers,
            retry,
            timeout: raw.timeout.map(|d| d.0),
            rate_limit,
            ordering,
            permissions: raw.permissions,
            description: raw.description,
            origin,
        })
    }

    fn signing(&mut self, doc: &Document, at: &str, raw: RawSigning) -> Vec<SigningKey> {
        if raw.scheme != "standard-webhooks" {
            self.problems.push(doc.problem(
                &format!("{at}/signing/scheme"),
                format!(
                    "unknown signing scheme `{}` (expected standard-webhooks)",
                    raw.scheme
                ),
            ));
        }
        if raw.secrets.is_empty() {
            self.problems.push(doc.problem(
                &format!("{at}/signing/secrets"),
                "`secrets` needs at least one `whsec_` secret",
            ));
        }
        let mut keys = Vec::new();
        for (i, secret) in raw.secrets.iter().enumerate() {
            match crate::deliver::signing::parse_secret(secret.expose()) {
                Ok(k) => keys.push(k),
                Err(reason) => self
                    .problems
                    .push(doc.problem(&format!("{at}/signing/secrets/{i}"), reason)),
            }
        }
        keys
    }

    fn retry(&mut self, doc: &Document, at: &str, raw: RawRetry) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(on) = raw.on {
            policy.on_timeout = false;
            policy.on_status = StatusMatch(Vec::new());
            for (i, item) in on.iter().enumerate() {
                match item.as_str() {
                    Some("timeout") => policy.on_timeout = true,
                    Some("error") => policy.on_error = true,
                    _ => match parse_status(item) {
                        Ok(StatusMatch(rules)) => policy.on_status.0.extend(rules),
                        Err(reason) => self.problems.push(doc.problem(
                            &format!("{at}/retry/on/{i}"),
                            format!("{reason}, `timeout` or `error`"),
                        )),
                    },
                }
            }
        }
        if let Some(n) = raw.max_retries {
            policy.max_retries = n;
        }
        if let Some(b) = raw.backoff {
            if b.is_empty() {
                self.problems.push(doc.problem(
                    &format!("{at}/retry/backoff"),
                    "`backoff` needs at least one duration",
                ));
            } else {
                policy.backoff = b.into_iter().map(|d| d.0).collect();
            }
        }
        if let Some(m) = raw.max_retry_after {
            policy.max_retry_after = m.0;
        }
        policy
    }

    fn app(&mut self, doc: &Document, raw: RawApp, at: String) {
        let origin = self.unique(doc, "app", &raw.id, &format!("{at}/id"));
        self.apps.push(App {
            name: raw.name.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            permissions: raw.permissions,
            origin,
        });
    }

    fn registered_event(&mut self, doc: &Document, raw: RawRegisteredEvent, at: String) {
        let origin = self.unique(doc, "registered event", &raw.name, &format!("{at}/name"));
        if !TOPICS.contains(&raw.topic.as_str()) {
            self.problems.push(doc.problem(
                &format!("{at}/topic"),
                format!(
                    "unknown topic `{}` (expected participant, entity or container)",
                    raw.topic
                ),
            ));
        }
        let filter = self.expr(doc, &format!("{at}/filter"), raw.filter.as_ref());
        let line = |field: &str| Origin {
            file: doc.path.clone(),
            line: doc.line(&format!("{at}/{field}")),
        };
        self.registered_lines
            .push((line("app"), line("event_type")));
        self.registered.push(RegisteredEvent {
            app: raw.app,
            topic: raw.topic,
            name: raw.name,
            description: raw.description,
            event_type: raw.event_type,
            filter,
            filter_logic: raw.filter,
            get_api_path: raw.get_api_path,
            kind: raw.kind,
            origin,
        });
    }

    /// Cross-file checks, then the route index.
    fn finish(mut self, files: Vec<PathBuf>, problems: &mut Vec<Problem>) -> Option<Rules> {
        // The funnel derives `session_stalled` itself, without a route.
        self.declared.insert(crate::funnel::STALLED.to_string());
        let mut event_types: BTreeSet<String> =
            self.routes.iter().map(|r| r.event.clone()).collect();
        event_types.insert(crate::funnel::STALLED.to_string());
        let registered: HashMap<&str, &RegisteredEvent> = self
            .registered
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let known = || {
            let known = self.declared.iter().cloned().collect::<Vec<_>>().join(", ");
            if known.is_empty() {
                "no route derives it; there are no routes".to_string()
            } else {
                format!("no route derives it; known: {known}")
            }
        };
        for (name, origin) in &self.event_refs {
            if !self.declared.contains(name) && !registered.contains_key(name.as_str()) {
                problems.push(Problem::new(
                    &origin.file,
                    origin.line,
                    format!("unknown event type `{name}` ({})", known()),
                ));
            }
        }
        for (ev, (app_at, type_at)) in self.registered.iter().zip(&self.registered_lines) {
            if !self.declared.contains(&ev.event_type) {
                problems.push(Problem::new(
                    &type_at.file,
                    type_at.line,
                    format!(
                        "registered event `{}`: unknown event type `{}` ({})",
                        ev.name,
                        ev.event_type,
                        known()
                    ),
                ));
            }
            if !self.apps.iter().any(|a| a.id == ev.app) {
                let apps = self
                    .apps
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let apps = if apps.is_empty() {
                    "there are no apps".to_string()
                } else {
                    format!("known: {apps}")
                };
                problems.push(Problem::new(
                    &app_at.file,
                    app_at.line,
                    format!(
                        "registered event `{}`: unknown app `{}` ({apps})",
                        ev.name, ev.app
                    ),
                ));
            }
        }
        for (w, lines) in self.webhooks.iter().zip(&self.webhook_event_lines) {
            let EventSelector::Some(names) = &w.events else {
                continue;
            };
            for ev in names.iter().filter_map(|n| registered.get(n.as_str())) {
                let Some(app) = self.apps.iter().find(|a| a.id == ev.app) else {
                    continue;
                };
                if !w.permissions.iter().any(|p| app.permissions.contains(p)) {
                    // At the `events` entry that asks for it.
                    let at = lines.get(&ev.name).unwrap_or(&w.origin);
                    let held = if w.permissions.is_empty() {
                        "it holds none".to_string()
                    } else {
                        format!("it holds {}", w.permissions.join(", "))
                    };
                    problems.push(Problem::new(&at.file, at.line, format!(
                        "webhook `{}` lists registered event `{}` but holds none of app `{}`'s permissions ({}); {held}",
                        w.key, ev.name, app.id, app.permissions.join(", ")
                    )));
                }
            }
        }
        let routes = std::mem::take(&mut self.routes);
        let origins: Vec<Origin> = routes.iter().map(|r| r.origin.clone()).collect();
        let table = match RouteTable::build(routes) {
            Ok(t) => Some(t),
            Err(errors) => {
                for (i, reason) in errors {
                    problems.push(Problem::new(&origins[i].file, origins[i].line, reason));
                }
                None
            }
        };
        let mut warnings = self.warnings;
        warnings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        let table = table?;
        let session_aliases = table.routes().iter().any(|r| r.session_alias.is_some());
        Some(Rules {
            warnings,
            session_aliases,
            routes: table,
            webhooks: self.webhooks.into_iter().map(Arc::new).collect(),
            apps: self.apps,
            registered: self.registered,
            event_types,
            files,
        })
    }
}

/// Each expression of a route's `data`, with its place.
fn data_exprs<'r>(t: &'r Template, at: &str, out: &mut Vec<(String, &'r Expr)>) {
    match t {
        Template::Expr(e) => out.push((at.to_string(), e)),
        Template::Object(fields) => {
            for (k, v) in fields {
                data_exprs(v, &format!("{at}/{}", escape_pointer(k)), out);
            }
        }
    }
}

fn field_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(format!("/{index}")),
            Segment::Map { key } => Some(format!("/{}", escape_pointer(key))),
            Segment::Enum { variant } => Some(format!("/{variant}")),
            Segment::Unknown => None,
        })
        .collect()
}

fn is_event_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `2xx`, `404`, or a list of those.
pub fn parse_status(value: &Value) -> Result<StatusMatch, String> {
    let one = |v: &Value| -> Result<StatusRule, String> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(s @ 100..=599) => Ok(StatusRule::Exact(s as u16)),
                _ => Err(format!("invalid status `{n}`")),
            },
            Value::String(s) => {
                let lower = s.to_ascii_lowercase();
                if let Some(d) = lower
                    .strip_suffix("xx")
                    .and_then(|d| d.parse::<u16>().ok())
                    .filter(|d| (1..=5).contains(d))
                {
                    Ok(StatusRule::Class(d))
                } else if let Some(n) = s.parse::<u16>().ok().filter(|n| (100..=599).contains(n)) {
                    Ok(StatusRule::Exact(n))
                } else {
                    Err(format!("invalid status `{s}`: expected e.g. 2xx or 200"))
                }
            }
            other => Err(format!(
                "invalid status `{other}`: expected e.g. 2xx or 200"
            )),
        }
    };
    match value {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(one)
            .collect::<Result<_, _>>()
            .map(StatusMatch),
        Value::Array(_) => Err("status list is empty".into()),
        v => one(v).map(|r| StatusMatch(vec![r])),
    }
}
