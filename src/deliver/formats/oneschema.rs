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
    let body = Body {
        event: &event.event,
        registered_event: event.registered.as_ref(),
    };
    json_request(event.event.uuid.clone(), &body)
}

/// The body: the envelope's fields in order, then `registered_event`
/// when delivered through one; written straight from the event, with no
/// JSON tree built in between.
#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    event: &'a crate::event::Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_event: Option<&'a serde_json::Value>,
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
    fn the_body_is_the_envelope_in_order_then_the_registered_event() {
        let mut event = crate::store::StoredEvent {
            trace: None,
            event: crate::event::Event {
                uuid: "event-1".into(),
                embed_id: serde_json::json!(7),
                embed_jwt: serde_json::Value::Null,
                environment_name: "Production".into(),
                template_key: serde_json::json!("orders"),
                event_type: "import_submitted".into(),
                trigger_type: "user".into(),
                data: serde_json::json!({"rows": 2}),
                created_at: 1706112805.5,
            },
            session: None,
            registered: None,
            request_id: None,
            test: false,
        }
        .derived();
        event.registered = Some(serde_json::json!({"name": "orders"}));
        let mut expected = serde_json::to_value(&event.event).unwrap();
        expected.as_object_mut().unwrap().insert(
            "registered_event".into(),
            serde_json::json!({"name": "orders"}),
        );
        let sent = request(&event);
        assert_eq!(sent.body, serde_json::to_vec(&expected).unwrap());
        event.registered = None;
        assert_eq!(
            request(&event).body,
            serde_json::to_vec(&event.event).unwrap()
        );
    }

    #[test]
    fn basic_auth_has_no_username() {
        let v = basic_auth_password("s3cret").unwrap();
        assert_eq!(v.to_str().unwrap(), "Basic OnMzY3JldA==");
    }
}
