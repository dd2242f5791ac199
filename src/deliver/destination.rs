//! Destinations beyond HTTP (issue 28): what a webhook's `url` names when
//! it is not `http(s)://`, and what they share. A webhook keeps its
//! subscription, filters, format, signing headers (as message headers),
//! dedup, retries, dead letters, replay, rate limit and ordering whatever
//! its destination: only the last step, the attempt, differs.
//!
//! - `nats://host:4222/subject.{event_type}` ([`super::nats`]);
//! - `amqp://host/vhost?exchange=importer&routing_key={event_type}`
//!   ([`super::amqp`]);
//! - `redis://host:6379/0?stream=importer-events&maxlen=~1000000`
//!   ([`super::redis_stream`]).
//!
//! `tls://` (NATS), `amqps://` and `rediss://` speak TLS to the name in
//! the URL (verified against the public roots and `delivery.ca`) at the
//! address the guard vetted.
//!
//! Every destination's host goes through the SSRF guard (resolved, then
//! vetted against `delivery.allow_private_networks`); credentials come from
//! the URL (`${VAR}` in the rules) and never reach a log, a metric or the
//! API (which shows URLs without their userinfo and query).

use std::net::SocketAddr;
use std::time::Duration;

use super::guard::Guard;
use super::retry::Attempt;
use crate::rules::model::Webhook;

/// The placeholders a subject, routing key or stream name may hold.
pub const PLACEHOLDERS: [&str; 3] = ["{event_type}", "{template_key}", "{webhook}"];

/// What a webhook's URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Nats,
    Amqp,
    Redis,
}

/// Every scheme a webhook's `url` may have, as the rules' error lists them.
pub const SCHEMES: &str = "http, https, nats, tls, amqp, amqps, redis or rediss";

impl Kind {
    /// What a URL with `scheme` names; `None` for a scheme taphook does not
    /// deliver to (the one list the rules and the SSRF guard check).
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "http" | "https" => Some(Kind::Http),
            "nats" | "tls" => Some(Kind::Nats),
            "amqp" | "amqps" => Some(Kind::Amqp),
            "redis" | "rediss" => Some(Kind::Redis),
            _ => None,
        }
    }

    /// What a webhook's URL (a scheme the rules accepted) names.
    pub fn of(url: &reqwest::Url) -> Self {
        Self::from_scheme(url.scheme()).unwrap_or(Kind::Http)
    }

    /// The `kind` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Nats => "nats",
            Kind::Amqp => "amqp",
            Kind::Redis => "redis",
        }
    }

    /// The port when the URL gives none.
    fn default_port(self, url: &reqwest::Url) -> u16 {
        match self {
            Kind::Nats => 4222,
            Kind::Amqp if url.scheme() == "amqps" => 5671,
            Kind::Amqp => 5672,
            Kind::Redis => 6379,
            Kind::Http => url.port_or_known_default().unwrap_or(80),
        }
    }
}

/// Checks a destination URL as written in the rules; `Ok` for http(s)
/// (checked elsewhere).
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("a host is needed ({}://host/...)", url.scheme()));
    }
    match Kind::of(url) {
        Kind::Http => Ok(()),
        Kind::Nats => super::nats::check_url(url),
        Kind::Amqp => super::amqp::check_url(url),
        Kind::Redis => super::redis_stream::check_url(url),
    }
}

/// Checks a subject, routing key or stream name as written: placeholders
/// allowed, and `forbidden` characters not.
pub fn check_template(what: &str, template: &str, forbidden: &[char]) -> Result<(), String> {
    let mut filled = template.to_string();
    for p in PLACEHOLDERS {
        filled = filled.replace(p, "x");
    }
    if let Some(bad) = filled
        .chars()
        .find(|c| c.is_whitespace() || forbidden.contains(c) || matches!(c, '{' | '}'))
    {
        return Err(format!(
            "{what} `{template}`: `{bad}` is not allowed (placeholders: {})",
            PLACEHOLDERS.join(", ")
        ));
    }
    Ok(())
}

/// A template with its placeholders filled, each value made safe for one
/// token (`.`, whitespace and wildcards replaced by `_`).
pub fn fill(template: &str, webhook: &str, event_type: &str, template_key: &str) -> String {
    let token = |v: &str| -> String {
        v.chars()
            .map(|c| {
                if c.is_whitespace() || matches!(c, '.' | '*' | '>' | '#') {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    template
        .replace("{event_type}", &token(event_type))
        .replace("{template_key}", &token(template_key))
        .replace("{webhook}", &token(webhook))
}

/// A query parameter of the URL, percent-decoded.
pub fn param(url: &reqwest::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The URL's path without its leading `/`, percent-decoded (the URL
/// parser writes `{` as `%7B`).
pub fn path(url: &reqwest::Url) -> String {
    let p = url.path().trim_start_matches('/');
    percent_encoding::percent_decode_str(p)
        .decode_utf8_lossy()
        .into_owned()
}

/// The URL's user name and password, percent-decoded.
pub fn credentials(url: &reqwest::Url) -> (String, Option<String>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    (decode(url.username()), url.password().map(decode))
}

/// One message to publish: the body, the format's headers (and the
/// signature and `traceparent`), and its id (the event's UUID; a
/// Flatfile part's with its number).
pub struct Message<'a> {
    /// The subject, routing key or stream, placeholders filled.
    pub target: String,
    pub id: &'a str,
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
    pub body: bytes::Bytes,
}

impl Message<'_> {
    /// The headers with a text value, as message headers carry them.
    pub fn text_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
    }

    /// The `content-type` header's value.
    pub fn content_type(&self) -> Option<&str> {
        self.text_headers()
            .find(|(n, _)| *n == "content-type")
            .map(|(_, v)| v)
    }
}

/// The address to connect to for `webhook`: its host resolved, and the
/// first address the SSRF guard allows. A refusal is the attempt's error.
pub async fn vetted(guard: &Guard, webhook: &Webhook) -> Result<SocketAddr, Attempt> {
    let url = &webhook.url;
    let host = url.host_str().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = url
        .port()
        .unwrap_or_else(|| Kind::of(url).default_port(url));
    let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Err(Attempt::Error(format!("cannot resolve {host}: {e}"))),
    };
    let allowed = guard
        .vet(host, resolved)
        .map_err(|refused| Attempt::Error(format!("SSRF guard: {refused}")))?;
    allowed
        .first()
        .copied()
        .ok_or_else(|| Attempt::Error(format!("{host} resolved to no address")))
}

/// `connecting` within `timeout`: the connection, or the attempt's failure
/// (`what` names the broker in it, `host` where it is).
pub async fn connect<T, E: std::fmt::Display>(
    what: &str,
    host: &str,
    timeout: Duration,
    connecting: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Attempt> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Attempt::Error(format!(
            "cannot connect to {what} at {host}: {e}"
        ))),
        Err(_) => Err(Attempt::Timeout),
    }
}

/// An acknowledged publish: the attempt succeeded (counted as `2xx`).
pub fn acknowledged() -> Attempt {
    Attempt::Status {
        status: 200,
        retry_after: None,
    }
}

/// Runs `f` for at most `timeout`: its attempt, or a timeout.
pub async fn within(timeout: Duration, f: impl std::future::Future<Output = Attempt>) -> Attempt {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or(Attempt::Timeout)
}

/// The connections of one kind of destination, one per server and
/// credentials, made on first use and kept while they work.
pub struct Pool<C> {
    clients: std::sync::Mutex<std::collections::HashMap<String, C>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Self {
            clients: Default::default(),
        }
    }
}

impl<C: Clone> Pool<C> {
    /// The key of `url`'s server and credentials (never logged).
    pub fn key(url: &reqwest::Url) -> String {
        format!(
            "{}|{:?}|{}|{}|{}",
            url.host_str().unwrap_or_default(),
            url.port(),
            url.username(),
            url.password().unwrap_or_default(),
            url.path()
        )
    }

    pub fn get(&self, key: &str, alive: impl Fn(&C) -> bool) -> Option<C> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(key).filter(|c| alive(c)).cloned()
    }

    pub fn put(&self, key: String, client: C) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, client);
    }

    /// `attempt`, after dropping `key`'s connection when it failed: the
    /// connection (or channel) may be gone, and the next attempt makes a
    /// new one, through the SSRF guard.
    pub fn keep_if_acknowledged(&self, key: &str, attempt: Attempt) -> Attempt {
        if !matches!(attempt, Attempt::Status { .. }) {
            self.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
        }
        attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_single_tokens() {
        assert_eq!(
            fill(
                "importer.{event_type}.{template_key}",
                "w",
                "batch.update",
                "my key"
            ),
            "importer.batch_update.my_key"
        );
        assert!(check_template("subject", "a.{webhook}", &['*', '>']).is_ok());
        assert!(check_template("subject", "a.*", &['*', '>'])
            .unwrap_err()
            .contains("not allowed"));
        assert!(check_template("subject", "a.{nope}", &[]).is_err());
    }
}

/// `delivery.ca`: the certificates a TLS destination is verified against
/// beside the public roots, read (and checked) once at start.
#[derive(Clone)]
pub struct Ca {
    pem: std::sync::Arc<str>,
    der: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Ca {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let der = crate::proxy::tls::read_certs("delivery.ca", path)?;
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("delivery.ca: {}", path.display()))?;
        Ok(Self {
            pem: pem.into(),
            der,
        })
    }

    /// The certificates, PEM-encoded.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The certificates, DER-encoded.
    pub fn der(&self) -> impl Iterator<Item = &[u8]> {
        self.der.iter().map(|c| c.as_ref())
    }
}

/// Every kind's connections; an attempt goes to its webhook's kind.
pub struct Destinations {
    nats: super::nats::Publishers,
    amqp: super::amqp::Publishers,
    redis: super::redis_stream::Publishers,
}

impl Destinations {
    /// `ca`: `delivery.ca`, for `amqps://` and `rediss://`.
    pub fn new(ca: Option<Ca>) -> Self {
        Self {
            nats: super::nats::Publishers::new(ca.as_ref()),
            amqp: super::amqp::Publishers::new(ca.clone()),
            redis: super::redis_stream::Publishers::new(ca),
        }
    }

    /// The template of what `url` publishes to (subject, routing key or
    /// stream); `None` for an HTTP webhook.
    pub fn target(url: &reqwest::Url) -> Option<String> {
        match Kind::of(url) {
            Kind::Http => None,
            Kind::Nats => Some(super::nats::target(url)),
            Kind::Amqp => Some(super::amqp::target(url)),
            Kind::Redis => Some(super::redis_stream::target(url)),
        }
    }

    /// One attempt to a destination that is not HTTP.
    pub async fn publish(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        message: Message<'_>,
        timeout: Duration,
    ) -> Attempt {
        match Kind::of(&webhook.url) {
            Kind::Nats => self.nats.publish(guard, webhook, message, timeout).await,
            Kind::Amqp => self.amqp.publish(guard, webhook, message, timeout).await,
            Kind::Redis => self.redis.publish(guard, webhook, message, timeout).await,
            Kind::Http => Attempt::Error("an HTTP webhook is not published".into()),
        }
    }
}
