//! Formats: how an event becomes one or more HTTP requests for a webhook.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use crate::event::Event;
use crate::rules::model::{Format, Webhook};

/// One request to send: body and headers, without the URL.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The requests `event` becomes for `webhook`.
pub fn requests(webhook: &Webhook, event: &Event) -> Vec<Outgoing> {
    match webhook.format {
        Format::OneSchema => vec![oneschema(webhook, event)],
    }
}

/// OneSchema: the envelope as JSON; Basic auth with the secret as the
/// password and no username.
fn oneschema(webhook: &Webhook, event: &Event) -> Outgoing {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if let Some(secret) = &webhook.secret {
        if let Some(v) = basic_auth_password(secret.expose()) {
            headers.push((AUTHORIZATION, v));
        }
    }
    Outgoing {
        body: Bytes::from(body),
        headers,
    }
}

/// `Basic base64(":" + password)`, marked sensitive so it is never logged.
pub fn basic_auth_password(password: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        STANDARD.encode(format!(":{password}"))
    ))
    .ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_has_no_username() {
        let v = basic_auth_password("s3cret").unwrap();
        assert_eq!(v.to_str().unwrap(), "Basic OnMzY3JldA==");
    }
}
