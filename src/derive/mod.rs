//! The derive stage: an exchange becomes zero or more lifecycle events.
//!
//! For every route whose method, path and status match, the route's
//! expressions are evaluated against the exchange document: `session`
//! finds the importer session, `when` guards, `remember` updates the
//! session, and `trigger`, `data` and `dedup_key` fill the event.

pub mod exchange;
pub mod jwt;
pub mod routes;

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{DerivedEvent, Event};
use crate::filter::expr::read_path;
use crate::filter::hash::{with_key, HashKey};
use crate::filter::{Converted, Expr, Scope};
use crate::rules::model::{Route, Template, TRIGGER_TYPES};
use crate::rules::Rules;
use crate::store::{session_key, Session, SessionStore};
use datalogic_rs::DataValue;
pub use exchange::{Captured, Exchange, FilePart, Needs};
use routes::PathMatch;

/// The namespace of taphook's name-based (v5) event UUIDs.
pub const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b6e_8d0a_4c55_9a7e_3d2f_5b1e_7c40);

/// Settings of the derive stage.
#[derive(Debug, Clone)]
pub struct Deriver {
    pub environment_name: String,
    pub jwt_hs256_secret: Option<Vec<u8>>,
    /// The key of the `hash` operator (`session_secret`).
    pub hash_key: HashKey,
}

impl Deriver {
    /// A deriver for `environment_name`, with no JWT secret and the
    /// offline tools' hash key.
    pub fn offline(environment_name: &str) -> Self {
        Self {
            environment_name: environment_name.to_string(),
            jwt_hs256_secret: None,
            hash_key: HashKey::offline(),
        }
    }
}

/// An exchange's matching routes and its document, before any session is
/// read: what the pipeline needs to read the sessions ahead, all at once.
pub struct Prepared<'r> {
    matches: Vec<PathMatch<'r>>,
    doc: Value,
    bearer: Option<Value>,
    hash_key: HashKey,
    /// Some route declares session aliases: a key not found is also
    /// looked up as one.
    aliases: bool,
}

impl Prepared<'_> {
    /// The session key each route's `session` expression gives, in the
    /// routes' order (before aliases are resolved).
    pub fn route_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut evaluate = Vec::new();
        for m in &self.matches {
            let Some(expr) = &m.route.session else {
                continue;
            };
            match expr.plain_var().and_then(|path| self.plain_key(m, path)) {
                Some(key) => keys.extend(key),
                None => evaluate.push((m, expr)),
            }
        }
        if evaluate.is_empty() {
            return keys;
        }
        let arena = Bump::new();
        let doc = Converted::new(&self.doc, &arena);
        let bearer = self.bearer.as_ref().map(|b| doc.value(b));
        with_key(&self.hash_key, || {
            for (m, expr) in evaluate {
                let scope = route_scope(&doc, params(&doc, m), None, bearer);
                keys.extend(session_key(&scope_value(&scope, expr, m.route)));
            }
        });
        keys
    }

    /// The session key of route `m` whose `session` is the plain `var`
    /// `path`, read straight from the exchange: what the expression gives
    /// in the route's scope before the session is known, nothing
    /// converted. `None` when the path names a whole part of the scope
    /// (`params`, `session`, `jwt`): it is evaluated then.
    fn plain_key(&self, m: &PathMatch<'_>, path: &str) -> Option<Option<String>> {
        let (head, rest) = path.split_once('.').unwrap_or((path, ""));
        let value = match head {
            "params" | "session" | "jwt" if rest.is_empty() => return None,
            "params" => m
                .params
                .iter()
                .find(|(name, _)| *name == rest)
                .map(|(_, v)| Value::String(v.clone())),
            "session" => None,
            "jwt" => self
                .bearer
                .as_ref()
                .and_then(|b| read_path(b, rest))
                .cloned(),
            _ => read_path(&self.doc, path).cloned(),
        };
        Some(value.as_ref().and_then(session_key))
    }

    /// The keys of the sessions the routes will read, from their
    /// [`Self::route_keys`], and of the aliases they may be.
    pub fn session_keys(&self, route_keys: &[String]) -> Vec<String> {
        let mut keys = Vec::new();
        for k in route_keys {
            if self.aliases {
                keys.push(alias_key(k));
            }
            keys.push(k.clone());
        }
        keys
    }

    /// Some matching route declares `session_alias`: the exchange may make
    /// aliases other exchanges are found by.
    pub fn makes_aliases(&self) -> bool {
        self.matches.iter().any(|m| m.route.session_alias.is_some())
    }

    /// Some route of the rules declares `session_alias`: a key that is not
    /// a session may be an alias of one.
    pub fn aliases(&self) -> bool {
        self.aliases
    }
}

self_cell::self_cell!(
    /// A prepared exchange holding the rules it was prepared under, so it
    /// can wait in a queue (a pipeline lane's) while the rules change.
    pub struct Ready {
        owner: Arc<Rules>,
        #[covariant]
        dependent: Prepared,
    }
);

impl Ready {
    /// The rules the exchange was prepared under.
    pub fn rules(&self) -> &Arc<Rules> {
        self.borrow_owner()
    }

    pub fn prepared(&self) -> &Prepared<'_> {
        self.borrow_dependent()
    }
}

/// Where an alias of a session is kept, among sessions: a record whose
/// `key` is the session's own key.
pub fn alias_key(alias: &str) -> String {
    format!("~alias:{alias}")
}

/// The session `key` names: itself, or (with aliases) the session it is
/// an alias of. Returns the session's store key and the session.
fn resolve(key: String, aliases: bool, sessions: &dyn SessionStore) -> (String, Option<Session>) {
    if let Some(s) = sessions.get(&key) {
        return (key, Some(s));
    }
    let alias = aliases.then(|| sessions.get(&alias_key(&key))).flatten();
    let Some((canonical, alias)) = alias.and_then(|a| Some((session_key(&a.key)?, a))) else {
        return (key, None);
    };
    // A session gone (retention) while its alias stays starts again.
    let session = sessions.get(&canonical).unwrap_or(Session {
        key: alias.key,
        fields: Map::new(),
    });
    (canonical, Some(session))
}

/// Route `m`'s path parameters, converted.
fn params<'a>(doc: &Converted<'a>, m: &PathMatch<'_>) -> DataValue<'a> {
    doc.object(m.params.iter().map(|(k, v)| (*k, doc.text(v))))
}

/// What a route's expressions see: the exchange's document with the
/// route's path parameters, the session's fields (none yet: `{}`) and the
/// JWT's claims (`{}` without a token).
fn route_scope<'a>(
    doc: &Converted<'a>,
    params: DataValue<'a>,
    session: Option<DataValue<'a>>,
    jwt: Option<DataValue<'a>>,
) -> Scope<'a> {
    let empty = || doc.object(std::iter::empty());
    doc.scope(&[
        ("params", params),
        ("session", session.unwrap_or_else(empty)),
        ("jwt", jwt.unwrap_or_else(empty)),
    ])
}

impl Deriver {
    /// Every event `exchange` yields under `rules`. Sessions are read and
    /// updated in `sessions`.
    pub fn derive(
        &self,
        exchange: &Exchange,
        rules: &Rules,
        sessions: &dyn SessionStore,
    ) -> Vec<DerivedEvent> {
        match self.prepare(exchange, rules) {
            Some(prepared) => self.derive_prepared(&prepared, exchange, sessions),
            None => Vec::new(),
        }
    }

    /// The routes `exchange` matches, and its document; `None` when no
    /// route matches (the common case, and cheap).
    pub fn prepare<'r>(&self, exchange: &Exchange, rules: &'r Rules) -> Option<Prepared<'r>> {
        let matches: Vec<_> = rules
            .routes
            .lookup(&exchange.method, &exchange.path)
            .into_iter()
            .filter(|m| m.route.status.matches(exchange.status))
            .collect();
        if matches.is_empty() {
            return None;
        }
        let needs = matches
            .iter()
            .fold(Needs::NONE, |needs, m| needs.union(m.route.needs));
        let doc = exchange.document_with(&self.environment_name, needs);
        let bearer = exchange.request_header("authorization").and_then(|a| {
            jwt::bearer(&a).and_then(|t| jwt::claims(t, self.jwt_hs256_secret.as_deref()))
        });
        Some(Prepared {
            matches,
            doc,
            bearer,
            hash_key: self.hash_key.clone(),
            aliases: rules.session_aliases,
        })
    }

    /// [`Self::prepare`], keeping the rules with it.
    pub fn prepare_ready(&self, exchange: &Exchange, rules: Arc<Rules>) -> Option<Ready> {
        Ready::try_new(rules, |rules| self.prepare(exchange, rules).ok_or(())).ok()
    }

    /// The events of a prepared exchange.
    pub fn derive_prepared(
        &self,
        prepared: &Prepared<'_>,
        exchange: &Exchange,
        sessions: &dyn SessionStore,
    ) -> Vec<DerivedEvent> {
        let mut events = Vec::new();
        self.each_route(prepared, exchange, sessions, |_, result| {
            if let Ok(event) = result {
                events.push(event);
            }
        });
        events
    }

    /// [`Self::derive_prepared`], and the names of the routes that made
    /// an event, in order (derive's span says which fired).
    pub fn derive_fired(
        &self,
        prepared: &Prepared<'_>,
        exchange: &Exchange,
        sessions: &dyn SessionStore,
    ) -> (Vec<DerivedEvent>, Vec<String>) {
        let mut events = Vec::new();
        let mut fired = Vec::new();
        self.each_route(prepared, exchange, sessions, |route, result| {
            if let Ok(event) = result {
                fired.push(route.name.clone());
                events.push(event);
            }
        });
        (events, fired)
    }

    /// Runs every matching route of a prepared exchange, in order, and
    /// hands each one's event, or why it gave none, to `f`.
    fn each_route<'r>(
        &self,
        prepared: &Prepared<'r>,
        exchange: &Exchange,
        sessions: &dyn SessionStore,
        mut f: impl FnMut(&'r Route, Result<DerivedEvent, Skip>),
    ) {
        let Prepared {
            matches,
            doc,
            bearer,
            hash_key,
            aliases,
        } = prepared;
        let aliases = *aliases;
        // The document is converted for the expressions once; each route
        // sets its own parameters, session and claims on it.
        let arena = Bump::new();
        let doc = Converted::new(doc, &arena);
        let at = Exchanged {
            exchange,
            bearer: bearer.as_ref().map(|b| doc.value(b)),
            aliases,
        };
        with_key(hash_key, || {
            for m in matches {
                f(m.route, self.route(m, &at, &doc, sessions));
            }
        });
    }

    /// What each route whose path matched `exchange` made of it: its
    /// event, or why it did not fire. The same code as [`Self::derive`],
    /// sessions read and updated alike (`taphook explain`).
    pub fn explain<'r>(
        &self,
        exchange: &Exchange,
        rules: &'r Rules,
        sessions: &dyn SessionStore,
    ) -> Vec<(&'r Route, Result<DerivedEvent, Skip>)> {
        let mut out: Vec<_> = rules
            .routes
            .lookup_any_method(&exchange.path)
            .into_iter()
            .filter_map(|route| {
                let skip = if !route.accepts_method(&exchange.method) {
                    Skip::Method
                } else if !route.status.matches(exchange.status) {
                    Skip::Status
                } else {
                    return None;
                };
                Some((route, Err(skip)))
            })
            .collect();
        if let Some(prepared) = self.prepare(exchange, rules) {
            self.each_route(&prepared, exchange, sessions, |route, result| {
                out.push((route, result))
            });
        }
        out
    }

    fn route<'a>(
        &self,
        m: &PathMatch<'_>,
        at: &Exchanged<'_, 'a>,
        doc: &Converted<'a>,
        sessions: &dyn SessionStore,
    ) -> Result<DerivedEvent, Skip> {
        let route = m.route;
        let Exchanged {
            exchange,
            bearer,
            aliases,
        } = *at;
        let params = params(doc, m);
        let key_value = route
            .session
            .as_ref()
            .map(|e| scope_value(&route_scope(doc, params, None, bearer), e, route))
            .unwrap_or(Value::Null);
        let (key, mut session) = match session_key(&key_value) {
            Some(k) => {
                let (k, s) = resolve(k, aliases, sessions);
                (Some(k), s)
            }
            None => (None, None),
        };
        let new_session = key.is_some() && session.is_none();
        let mut jwt = bearer;
        let fields = session.as_ref().map(|s| {
            if jwt.is_none() {
                jwt = s
                    .fields
                    .get("embed_jwt")
                    .and_then(Value::as_str)
                    .and_then(|t| jwt::claims(t, self.jwt_hs256_secret.as_deref()))
                    .map(|claims| doc.value(&claims));
            }
            doc.object(s.fields.iter().map(|(k, v)| (k.as_str(), doc.value(v))))
        });
        let scope = route_scope(doc, params, fields, jwt);
        if let Some(when) = &route.when {
            match scope.truthy(when) {
                Ok(true) => {}
                Ok(false) => return Err(Skip::WhenFalse),
                Err(e) => {
                    tracing::debug!(route = %route.name, error = %e, "route guard failed to evaluate");
                    return Err(Skip::WhenFailed(e.to_string()));
                }
            }
        }
        if let Some(key) = &key {
            let s = session.get_or_insert_with(|| Session {
                key: key_value.clone(),
                fields: Map::new(),
            });
            for (field, expr) in &route.remember {
                match scope_value(&scope, expr, route) {
                    Value::Null => {}
                    v => {
                        s.fields.insert(field.clone(), v);
                    }
                }
            }
            sessions.put(key, s.clone());
            if let Some(alias) = &route.session_alias {
                put_aliases(scope_value(&scope, alias, route), key, s, sessions);
            }
        }
        let trigger = route
            .trigger
            .as_ref()
            .map(|t| scope_value(&scope, t, route))
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|t| TRIGGER_TYPES.contains(&t.as_str()))
            .unwrap_or_else(|| "user".to_string());
        let data = template(&scope, &route.data, route);
        let dedup_key = route
            .dedup_key
            .as_ref()
            .map(|k| scope_value(&scope, k, route));
        let uuid = event_uuid(route, exchange, dedup_key, key.as_deref());
        let fields = session.as_ref().map(|s| &s.fields);
        let field = |name: &str| {
            fields
                .and_then(|f| f.get(name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let event = Event {
            uuid: format!("event-{uuid}"),
            embed_id: session.as_ref().map(|s| s.key.clone()).unwrap_or(key_value),
            embed_jwt: field("embed_jwt"),
            environment_name: self.environment_name.clone(),
            template_key: field("template_key"),
            event_type: route.event.clone(),
            trigger_type: trigger,
            data,
            created_at: exchange
                .completed_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        };
        Ok(DerivedEvent {
            event,
            session: session.map(|s| s.fields),
            derived_at: Instant::now(),
            registered: None,
            request_id: Some(exchange.request_id.clone()),
            new_session,
            trace: None,
        })
    }
}

/// What every route of one exchange shares.
#[derive(Clone, Copy)]
struct Exchanged<'x, 'a> {
    exchange: &'x Exchange,
    /// The bearer token's claims, converted.
    bearer: Option<DataValue<'a>>,
    aliases: bool,
}

/// Keeps each value of `aliases` (one, or a list) as an alias of the
/// session `key`, unless it is the key itself.
fn put_aliases(aliases: Value, key: &str, session: &Session, sessions: &dyn SessionStore) {
    let values = match aliases {
        Value::Array(items) => items,
        one => vec![one],
    };
    for alias in values.iter().filter_map(session_key) {
        if alias != key {
            sessions.put(
                &alias_key(&alias),
                Session {
                    key: session.key.clone(),
                    fields: Map::new(),
                },
            );
        }
    }
}

/// Why a route whose path matched an exchange gave no event.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// The route takes other methods.
    Method,
    /// The route takes other statuses.
    Status,
    /// Its `when` was false (or null).
    WhenFalse,
    /// Its `when` could not be evaluated.
    WhenFailed(String),
}

/// The event's UUID: named by the route's `dedup_key` when it evaluates
/// to a complete key; else by the `Idempotency-Key` header, scoped to the
/// session, method and path; else random.
fn event_uuid(
    route: &Route,
    exchange: &Exchange,
    dedup_key: Option<Value>,
    session: Option<&str>,
) -> Uuid {
    match dedup_key {
        Some(k) if is_complete(&k) => return name_uuid(&route.event, &k.to_string()),
        Some(k) => {
            tracing::debug!(route = %route.name, key = %k, "dedup_key has a missing part; not used")
        }
        None => {}
    }
    match exchange.request_header("idempotency-key") {
        Some(k) => {
            let scope = format!(
                "idempotency-key\n{}\n{} {}\n{k}",
                session.unwrap_or(""),
                exchange.method,
                exchange.path
            );
            name_uuid(&route.event, &scope)
        }
        None => Uuid::new_v4(),
    }
}

/// A key with a null in it (a field that was missing) would give every
/// such event the same UUID.
fn is_complete(key: &Value) -> bool {
    match key {
        Value::Null => false,
        Value::Array(parts) => parts.iter().all(is_complete),
        _ => true,
    }
}

/// The v5 UUID of an event type and a key: the same step seen twice gets
/// the same UUID.
pub fn name_uuid(event_type: &str, key: &str) -> Uuid {
    Uuid::new_v5(&UUID_NAMESPACE, format!("{event_type}\n{key}").as_bytes())
}

fn scope_value<'a>(scope: &Scope<'a>, expr: &'a Expr, route: &Route) -> Value {
    scope.value(expr).unwrap_or_else(|e| {
        tracing::debug!(route = %route.name, error = %e, "route expression failed to evaluate");
        Value::Null
    })
}

fn template<'a>(scope: &Scope<'a>, t: &'a Template, route: &Route) -> Value {
    match t {
        Template::Expr(e) => scope_value(scope, e, route),
        Template::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), template(scope, v, route)))
                .collect(),
        ),
    }
}
