//! The rules after lowering: compiled expressions, parsed methods, status
//! matchers, URLs and durations. Nothing on the event path parses text.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::derive::exchange::Needs;
use crate::derive::routes::RouteTable;
use crate::filter::Expr;

/// Where an object was defined, for messages and `taphook check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The whole rules directory, lowered. Shared read-only behind an `Arc`
/// and swapped whole on reload.
#[derive(Debug)]
pub struct Rules {
    pub routes: RouteTable,
    pub webhooks: Vec<Arc<Webhook>>,
    pub apps: Vec<App>,
    pub registered: Vec<RegisteredEvent>,
    /// Every event type some route derives.
    pub event_types: BTreeSet<String>,
    pub files: Vec<PathBuf>,
    /// What loads but should be looked at (`taphook check` prints them):
    /// a credential handed on unhashed.
    pub warnings: Vec<crate::rules::Problem>,
    /// Some route has `session_alias`: a session key not found is looked
    /// up as an alias too.
    pub session_aliases: bool,
}

impl Rules {
    pub fn webhook(&self, key: &str) -> Option<&Arc<Webhook>> {
        self.webhooks.iter().find(|w| w.key == key)
    }

    /// Every webhook's key.
    pub fn webhook_keys(&self) -> Vec<String> {
        self.webhooks.iter().map(|w| w.key.clone()).collect()
    }
}

/// One recogniser of a lifecycle step.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub event: String,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    pub path: String,
    /// Names of the path's `{params}`, in order.
    pub params: Vec<String>,
    pub status: StatusMatch,
    pub when: Option<Expr>,
    pub session: Option<Expr>,
    /// Values that identify this route's session from now on: a later
    /// exchange whose `session` is one of them joins it.
    pub session_alias: Option<Expr>,
    pub remember: Vec<(String, Expr)>,
    pub trigger: Option<Expr>,
    pub dedup_key: Option<Expr>,
    pub data: Template,
    pub capture_max: Option<usize>,
    pub origin: Origin,
    /// What of the exchange's document its expressions read
    /// ([`Route::reads`], worked out at load): an exchange builds only
    /// that.
    pub needs: Needs,
}

impl Route {
    pub fn accepts_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// What of the exchange's document the route's expressions read.
    pub fn reads(&self) -> Needs {
        let exprs = [
            &self.when,
            &self.session,
            &self.session_alias,
            &self.trigger,
            &self.dedup_key,
        ];
        exprs
            .into_iter()
            .flatten()
            .chain(self.remember.iter().map(|(_, e)| e))
            .map(Needs::of_expr)
            .chain(std::iter::once(self.data.reads()))
            .fold(Needs::NONE, Needs::union)
    }
}

/// Which response statuses a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatch(pub Vec<StatusRule>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRule {
    /// `2xx`: the hundreds digit.
    Class(u16),
    Exact(u16),
}

impl StatusMatch {
    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|r| match r {
            StatusRule::Class(c) => status / 100 == *c,
            StatusRule::Exact(s) => status == *s,
        })
    }
}

/// The `data` of a route: an expression, or a mapping of fields each
/// filled by its own template.
#[derive(Debug, Clone)]
pub enum Template {
    Expr(Expr),
    Object(Vec<(String, Template)>),
}

impl Template {
    pub fn empty() -> Self {
        Self::Object(Vec::new())
    }

    /// What of the exchange's document its expressions read.
    pub fn reads(&self) -> Needs {
        match self {
            Self::Expr(e) => Needs::of_expr(e),
            Self::Object(fields) => fields
                .iter()
                .map(|(_, t)| t.reads())
                .fold(Needs::NONE, Needs::union),
        }
    }
}

/// Who may receive a webhook's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Every session.
    All,
    /// Only sessions whose `webhook_keys` hold this webhook's key.
    Session,
}

/// How fast a webhook's deliveries may start: `burst` at once, then
/// `per_second` (a token bucket: over any T seconds, at most
/// `burst + per_second * T`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// `rate_limit` as written: `{per_second, burst}` (`burst` defaults to one
/// second's worth).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RawRateLimit {
    /// The limit, or why it is not one.
    pub fn lower(self) -> Result<RateLimit, String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0 && self.per_second <= 1e6) {
            return Err(format!(
                "`per_second` must be above 0 and at most 1000000, got {}",
                self.per_second
            ));
        }
        let burst = self
            .burst
            .unwrap_or_else(|| self.per_second.ceil().max(1.0) as u32);
        if burst == 0 {
            return Err("`burst` must be at least 1".into());
        }
        Ok(RateLimit {
            per_second: self.per_second,
            burst,
        })
    }
}

/// In which order a webhook's deliveries go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Concurrently, as they fall due (receivers sort by `created_at`).
    #[default]
    None,
    /// One at a time per session, in the order the events were accepted.
    Session,
}

impl Ordering {
    pub fn name(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Session => "session",
        }
    }
}

/// The wire contract a webhook speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OneSchema,
    Dromo,
    DromoBasic,
    Flatfile,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::OneSchema,
        Format::Dromo,
        Format::DromoBasic,
        Format::Flatfile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::OneSchema => "oneschema",
            Self::Dromo => "dromo",
            Self::DromoBasic => "dromo-basic",
            Self::Flatfile => "flatfile",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A Standard Webhooks signing key (decoded from `whsec_...`).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Which events a webhook subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSelector {
    All,
    Some(BTreeSet<String>),
}

impl EventSelector {
    pub fn contains(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some(set) => set.contains(event_type),
        }
    }
}

/// When an attempt is retried and how long to wait.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub on_timeout: bool,
    pub on_error: bool,
    /// Status rules that retry.
    pub on_status: StatusMatch,
    pub max_retries: u32,
    /// Wait before retry n (1-based) is `backoff[min(n, len) - 1]`.
    pub backoff: Vec<Duration>,
    /// A `Retry-After` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// OneSchema's policy: a timeout, 408 or 429 is retried up to twice.
    fn default() -> Self {
        Self {
            on_timeout: true,
            on_error: false,
            on_status: StatusMatch(vec![StatusRule::Exact(408), StatusRule::Exact(429)]),
            max_retries: 2,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// A subscriber.
#[derive(Debug)]
pub struct Webhook {
    pub key: String,
    pub url: reqwest::Url,
    pub events: EventSelector,
    pub assignment: Assignment,
    pub filter: Option<Expr>,
    pub format: Format,
    pub secret: Option<crate::secret::Secret>,
    /// Standard Webhooks keys; empty when the webhook is not signed.
    pub signing: Vec<SigningKey>,
    /// Dromo: only events of sessions in this mode (`None`: both).
    pub development_mode: Option<bool>,
    /// Dromo: only events with one of these import identifiers.
    pub import_identifiers: Option<Vec<String>>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// `None`: `delivery.rate_limit`, if any.
    pub rate_limit: Option<RateLimit>,
    pub ordering: Ordering,
    pub permissions: Vec<String>,
    pub description: Option<String>,
    pub origin: Origin,
}

/// An OS1 publisher app.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub origin: Origin,
}

/// A named, filtered view of a derived event type (OS1).
#[derive(Debug, Clone)]
pub struct RegisteredEvent {
    pub app: String,
    pub topic: String,
    pub name: String,
    pub description: Option<String>,
    pub event_type: String,
    pub filter: Option<Expr>,
    /// The filter as written (`filterLogic`), for showing it.
    pub filter_logic: Option<serde_json::Value>,
    pub get_api_path: Option<String>,
    /// OS1's `type` (e.g. `users`).
    pub kind: Option<String>,
    pub origin: Origin,
}

impl RegisteredEvent {
    /// `get_api_path` with each `{field}` filled from the event: an
    /// envelope field, else a field of its data, else of its session.
    pub fn api_path_for(&self, event: &crate::event::DerivedEvent) -> Option<String> {
        let template = self.get_api_path.as_ref()?;
        let envelope = serde_json::to_value(&event.event).unwrap_or_default();
        let lookup = |name: &str| -> Option<String> {
            let v = envelope
                .get(name)
                .filter(|v| !v.is_null())
                .or_else(|| event.event.data.get(name))
                .or_else(|| event.session.as_ref().and_then(|s| s.get(name)))?;
            Some(match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find('{') {
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            out.push_str(&rest[..start]);
            let name = &rest[start + 1..start + end];
            out.push_str(&lookup(name).unwrap_or_else(|| format!("{{{name}}}")));
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    /// What a delivery through this registered event carries of it.
    pub fn reference(&self, event: &crate::event::DerivedEvent) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "topic": self.topic,
            "app": self.app,
            "get_api_path": self.api_path_for(event),
        })
    }
}

/// Names that must be unique across the directory, by kind.
pub(crate) type Seen = HashMap<(&'static str, String), Origin>;

/// Trigger types of the envelope.
pub const TRIGGER_TYPES: &[&str] = &["user", "api", "automation"];
