//! OneSchema: the envelope as JSON; the secret as the HTTP Basic password,
//! with no username.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::HeaderValue;

use super::{json_request, Outgoing};
use crate::event::DerivedEvent;

/// The envelope; a delivery through a registered event (OS1) also
/// carries `registered_event` (`name`, `topic`, `app`, `get_api_path`).
pub fn request(event: &DerivedEvent) -> Outgoing {
    let mut body = serde_json::to_value(&event.event).unwrap_or_default();
    if let (Some(r), serde_json::Value::Object(m)) = (&event.registered, &mut body) {
        m.insert("registered_event".into(), r.clone());
    }
    json_request(event.event.uuid.clone(), &body)
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
