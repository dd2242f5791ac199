//! Fan-out: which webhooks receive an event, and why the others do not.
//!
//! A webhook receives an event when (1) its `events` list names the event
//! type, `*`, or a registered event of that type; (2) with `assignment:
//! session`, the session's `webhook_keys` hold the webhook's key; (3) its
//! `filter` and the registered event's filter hold on the envelope.

use std::sync::Arc;

use datalogic_rs::bumpalo::Bump;
use serde::Serialize;

use super::Scope;
use crate::deliver::formats::{development_mode, import_identifier};
use crate::event::DerivedEvent;
use crate::rules::model::{Assignment, EventSelector, Webhook};
use crate::rules::Rules;

/// The outcome for one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Deliver,
    NotSubscribed,
    NotAssigned,
    /// Dromo: the session's development mode is not the webhook's.
    OtherMode,
    /// Dromo: the import identifier is not one of the webhook's.
    OtherImportIdentifier,
    FilterRejected,
    FilterError(String),
}

/// One webhook's verdict for one event.
#[derive(Debug, Clone)]
pub struct Decision {
    pub webhook: Arc<Webhook>,
    pub verdict: Verdict,
    /// The registered event the webhook subscribed through, if any.
    pub registered: Option<String>,
}

impl Decision {
    /// The decision in words, as `taphook eval` and `explain` print it.
    pub fn why(&self, event_type: &str) -> String {
        match &self.verdict {
            Verdict::Deliver => match &self.registered {
                Some(r) => format!("deliver (through registered event `{r}`)"),
                None => "deliver".to_string(),
            },
            Verdict::NotSubscribed => format!("skip: not subscribed to `{event_type}`"),
            Verdict::OtherMode => {
                "skip: the session's development mode is not the webhook's".to_string()
            }
            Verdict::OtherImportIdentifier => {
                "skip: the import identifier is not one of the webhook's".to_string()
            }
            Verdict::NotAssigned => {
                "skip: assignment is `session` and the session's webhook_keys do not hold this key"
                    .to_string()
            }
            Verdict::FilterRejected => format!(
                "skip: filter is false: {}",
                self.webhook
                    .filter
                    .as_ref()
                    .map(|f| f.source().to_string())
                    .unwrap_or_default()
            ),
            Verdict::FilterError(e) => format!("skip: filter failed: {e}"),
        }
    }
}

/// Decides every webhook of `rules` for `event`.
pub fn fan_out(event: &DerivedEvent, rules: &Rules) -> Vec<Decision> {
    let arena = Bump::new();
    let scope = FilterScope {
        event: &event.event,
        arena: &arena,
        scope: std::cell::OnceCell::new(),
    };
    rules
        .webhooks
        .iter()
        .map(|w| {
            let (verdict, registered) = decide(w, event, rules, &scope);
            Decision {
                webhook: w.clone(),
                verdict,
                registered,
            }
        })
        .collect()
}

/// The document filters see, converted the first time a filter needs it:
/// most webhooks have none, and then it is never built.
struct FilterScope<'a> {
    event: &'a crate::event::Event,
    arena: &'a Bump,
    scope: std::cell::OnceCell<Scope<'a>>,
}

impl<'a> FilterScope<'a> {
    fn truthy(
        &self,
        filter: &'a crate::filter::Expr,
    ) -> Result<bool, crate::filter::expr::EvalError> {
        self.scope
            .get_or_init(|| Scope::new(&self.event.filter_document(), self.arena))
            .truthy(filter)
    }
}

fn decide<'a>(
    w: &'a Webhook,
    event: &DerivedEvent,
    rules: &'a Rules,
    scope: &FilterScope<'a>,
) -> (Verdict, Option<String>) {
    let event_type = event.event.event_type.as_str();
    // Registered events the webhook lists for this type, if not subscribed directly.
    let via: Vec<_> = match &w.events {
        EventSelector::Some(names) if !names.contains(event_type) => rules
            .registered
            .iter()
            .filter(|r| r.event_type == event_type && names.contains(&r.name))
            .collect(),
        _ => Vec::new(),
    };
    if !w.events.contains(event_type) && via.is_empty() {
        return (Verdict::NotSubscribed, None);
    }
    if w.assignment == Assignment::Session && !event.webhook_keys().any(|k| k == w.key) {
        return (Verdict::NotAssigned, None);
    }
    if w.development_mode
        .is_some_and(|mode| mode != development_mode(event))
    {
        return (Verdict::OtherMode, None);
    }
    if let Some(ids) = &w.import_identifiers {
        if !import_identifier(event).is_some_and(|id| ids.iter().any(|i| i == id)) {
            return (Verdict::OtherImportIdentifier, None);
        }
    }
    if let Some(filter) = &w.filter {
        match scope.truthy(filter) {
            Ok(true) => {}
            Ok(false) => return (Verdict::FilterRejected, None),
            Err(e) => return (Verdict::FilterError(e.to_string()), None),
        }
    }
    if via.is_empty() {
        return (Verdict::Deliver, None);
    }
    let mut last = Verdict::FilterRejected;
    for r in via {
        match r.filter.as_ref().map(|f| scope.truthy(f)) {
            None | Some(Ok(true)) => return (Verdict::Deliver, Some(r.name.clone())),
            Some(Ok(false)) => {}
            Some(Err(e)) => last = Verdict::FilterError(e.to_string()),
        }
    }
    (last, None)
}
