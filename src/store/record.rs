//! What every backend keeps of an event, shared by the embedded store and
//! JetStream: the event as its deliveries send it ([`StoredEvent`]), and an
//! event accepted by the pipeline with every delivery it makes
//! ([`Accepted`]), kept in one write.
//!
//! In the embedded store an accepted event is one row of the event log
//! (the envelope, and [`Logged`]: what formats and filters read beside
//! it) and, per delivery, a small row that refers to it and holds only
//! what that delivery adds ([`Own`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// What the outbox keeps of an event: the envelope and the session fields
/// formats and matching read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: Event,
    #[serde(default)]
    pub session: Option<Map<String, Value>>,
    /// Set when delivered through a registered event (OS1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<Value>,
    /// The id of the request the event came from, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A test event sent through the admin API (`Taphook-Test: 1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// The W3C `traceparent` of the event's span (traces on): each
    /// delivery attempt's span is its child, after a restart too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl StoredEvent {
    /// The session the event belongs to (its deliveries' session, the one
    /// `ordering: session` keeps in order), if it has one.
    pub fn session_key(&self) -> Option<String> {
        super::session_key(&self.event.embed_id)
    }

    /// The event as the formats take it, again.
    pub fn derived(&self) -> crate::event::DerivedEvent {
        crate::event::DerivedEvent {
            event: self.event.clone(),
            session: self.session.clone(),
            derived_at: std::time::Instant::now(),
            registered: self.registered.clone(),
            request_id: self.request_id.clone(),
            new_session: false,
            trace: None,
        }
    }

    /// What the event log keeps beside the envelope.
    pub fn logged(&self) -> Logged {
        Logged {
            session: self.session.clone(),
            request_id: self.request_id.clone(),
            trace: self.trace.clone(),
        }
    }

    /// What one delivery adds to the logged event.
    pub fn own(&self) -> Own {
        Own {
            registered: self.registered.clone(),
            test: self.test,
        }
    }

    /// The event a delivery sends, from the logged envelope, what the log
    /// keeps beside it and what the delivery adds.
    pub fn assemble(event: Event, logged: Logged, own: Own) -> Self {
        Self {
            event,
            session: logged.session,
            registered: own.registered,
            request_id: logged.request_id,
            test: own.test,
            trace: logged.trace,
        }
    }
}

/// What the event log keeps beside an event's envelope: what its
/// deliveries send besides it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Logged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// What one delivery adds to its logged event: usually nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Own {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// An event the pipeline accepted, with every delivery it makes.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event as a delivery that adds nothing sends it.
    pub event: Arc<StoredEvent>,
    /// The session whose log it goes in (`None`: it has none).
    pub session: Option<String>,
    /// Each delivery: its webhook, and the event as it sends it (the same
    /// `Arc` as `event` unless it adds something, such as a registered
    /// event's reference).
    pub deliveries: Vec<(String, Arc<StoredEvent>)>,
}

impl Accepted {
    /// Whether there is anything to keep: an event of a session is logged
    /// even when no webhook gets it.
    pub fn keeps_anything(&self) -> bool {
        self.session.is_some() || !self.deliveries.is_empty()
    }
}
