//! Formats: how an event becomes one or more HTTP requests for a webhook,
//! in the wire contract the receiver already speaks.

mod dromo;
mod flatfile;
mod oneschema;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::event::DerivedEvent;
use crate::rules::model::{Format, Webhook};

pub use dromo::{development_mode, import_identifier};
pub use flatfile::BATCH_SIZE;
pub use oneschema::basic_auth_password;

/// One request to send: body and headers, without the URL.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message id (`webhook-id` when signed): the event UUID, with the
    /// sequence index for batch parts.
    pub id: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The requests `event` becomes for `webhook`.
pub fn requests(webhook: &Webhook, event: &DerivedEvent) -> Vec<Outgoing> {
    let mut out = match webhook.format {
        Format::OneSchema => vec![oneschema::request(event)],
        Format::Dromo => vec![dromo::managed(event)],
        Format::DromoBasic => vec![dromo::basic(event)],
        Format::Flatfile => flatfile::requests(event),
    };
    if let Some(secret) = &webhook.secret {
        if let Some(v) = basic_auth_password(secret.expose()) {
            for request in &mut out {
                request
                    .headers
                    .push((http::header::AUTHORIZATION, v.clone()));
            }
        }
    }
    out
}

fn json_request(id: String, body: &impl serde::Serialize) -> Outgoing {
    Outgoing {
        id,
        body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
        headers: vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
    }
}

/// A field of the event's data, else of its session.
fn field<'a>(event: &'a DerivedEvent, name: &str) -> Option<&'a Value> {
    event
        .event
        .data
        .get(name)
        .filter(|v| !v.is_null())
        .or_else(|| {
            event
                .session
                .as_ref()
                .and_then(|s| s.get(name))
                .filter(|v| !v.is_null())
        })
}
