//! `ordering: session` on the JetStream backend, and the subjects it
//! reads.
//!
//! A delivery's subject names its session (`<p>.deliveries.<webhook>.<session>`,
//! `<p>.retry.<webhook>.<session>`), so a session's waiting, in-flight and
//! parked deliveries to a webhook are the messages on
//! `<p>.*.<webhook>.<session>`. Each delivery has a place in its session's
//! order: the stream sequence it was first stored at, carried in the
//! [`ORDER`] header by every copy it moves on to (a retry parked and put
//! back, its next part, a dead letter requeued). Before an attempt, the
//! deliverer looks for a delivery of the session with an earlier place;
//! if there is one, the delivery is parked until that one is settled
//! (delivered or dead), as a retry is parked: it holds no slot of the
//! webhook's consumer meanwhile, so the earlier one can always be pulled.
//!
//! The read goes to the stream's leader, not a replica's direct get: a
//! replica may not have an earlier delivery yet that the leader has
//! committed, and the order would be broken.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;

use super::{JetStream, DUE, ORDER};
use crate::store::sqlite::{now_ms, StoreError};
use crate::store::StoredEvent;

/// How long a delivery waits behind an earlier one that is waiting its
/// turn or being attempted (one parked for a retry: until its due time).
pub const BEHIND_IN_FLIGHT: Duration = Duration::from_millis(250);

/// The most messages one sweep of the old subjects moves.
const SWEEP_AT_MOST: usize = 10_000;

/// The longest a delivery is parked behind an earlier one before it
/// looks again (a requeue or a rename may have changed what is ahead).
const LONGEST_HOLD: Duration = Duration::from_secs(30);

/// A delivery's place in its session's order: its [`ORDER`] header, or
/// (on the delivery's first message) its own stream sequence.
pub fn order_of(headers: Option<&HeaderMap>, sequence: u64) -> u64 {
    headers
        .and_then(|h| h.get(ORDER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(sequence)
}

/// Before a message at `sequence` is copied to a new one: the copy keeps
/// the original's place.
pub fn keep_order(headers: &mut HeaderMap, sequence: u64) {
    let order = order_of(Some(headers), sequence);
    headers.insert(ORDER, order.to_string().as_str());
}

impl JetStream {
    /// With `ordering: session`: until when the delivery at `sequence`
    /// (place `order` in `session`) must wait for an earlier delivery of
    /// the session to `webhook`, or `None` if none is ahead of it.
    pub async fn ahead_in_session(
        &self,
        webhook: &str,
        session: &str,
        order: u64,
        sequence: u64,
    ) -> Result<Option<i64>, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.deliveries_stream())
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        let now = now_ms();
        let soon = now + BEHIND_IN_FLIGHT.as_millis() as i64;
        let mut until: Option<i64> = None;
        // The session's two literal subjects, read as one, in sequence
        // order (a wildcard, `<p>.*.<webhook>.<session>`, has NATS match
        // every subject of every block it reads; a literal one is looked
        // up). In sequence order, because a delivery that moves (parked,
        // put back) is first copied to a sequence past every one there
        // is, then removed: going up the sequences, the scan meets it
        // wherever it goes, but for one case the confirming read covers.
        let subjects = ["retry", "deliveries"].map(|kind| {
            self.names
                .backlog_filter(kind, Some(webhook), Some(session))
        });
        // What each subject holds next, from `from` on: a message found
        // stays the next one (anything stored later comes after it).
        let mut next: [Option<StreamMessage>; 2] = [None, None];
        let mut from = 1;
        loop {
            for (i, subject) in subjects.iter().enumerate() {
                if next[i].as_ref().is_none_or(|m| m.sequence < from) {
                    next[i] = first_from(&stream, subject, from).await?;
                }
            }
            if next.iter().all(Option::is_none) {
                // Both empty, read one after the other: a delivery parked
                // between the two reads (copied to `retry`, then taken off
                // `deliveries`) was missed by both, and is in `retry` now
                // (unless its backoff is shorter than these reads).
                next[0] = first_from(&stream, &subjects[0], from).await?;
                if next[0].is_none() {
                    break;
                }
            }
            let earliest = next
                .iter()
                .flatten()
                .min_by_key(|m| m.sequence)
                .map(|m| m.sequence);
            let Some(at) = earliest else { break };
            let i = usize::from(next[0].as_ref().is_none_or(|m| m.sequence != at));
            let Some(m) = next[i].take() else { break };
            from = m.sequence + 1;
            if m.sequence == sequence || order_of(Some(&m.headers), m.sequence) >= order {
                continue;
            }
            match parked_until(&m) {
                // An earlier one waits its turn or is being attempted.
                None => return Ok(Some(soon)),
                Some(due) => until = Some(until.map_or(due, |u| u.min(due)).max(soon)),
            }
        }
        Ok(until.map(|u| u.min(now + LONGEST_HOLD.as_millis() as i64)))
    }
}

impl JetStream {
    /// Moves deliveries on the subjects earlier builds used, without a
    /// session (`<p>.deliveries.<webhook>`, `<p>.retry.<webhook>`), to their
    /// session's subject, keeping their place. Run at connect and by the
    /// retry mover, so what an instance not yet upgraded publishes during
    /// a rolling upgrade moves too; a delivery that instance is attempting
    /// meanwhile may be sent twice (at least once). Returns how many moved.
    pub async fn move_to_session_subjects(&self) -> Result<usize, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.deliveries_stream())
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        let p = &self.names.prefix;
        let mut moved = 0;
        for kind in ["deliveries", "retry"] {
            // `*`: exactly one token after the kind, the old form.
            let old = format!("{p}.{kind}.*");
            let mut from = 1;
            // Bounded: what older instances publish meanwhile waits for
            // the next sweep.
            while moved < SWEEP_AT_MOST {
                let Some(m) = first_from(&stream, &old, from).await? else {
                    break;
                };
                from = m.sequence + 1;
                let webhook = m.subject.as_str().split('.').nth(2).unwrap_or_default();
                let session = super::session_token(session_in(&m.payload).as_deref());
                let mut headers = m.headers.clone();
                headers.insert(
                    "Nats-Msg-Id",
                    JetStream::move_id("session", m.sequence).as_str(),
                );
                keep_order(&mut headers, m.sequence);
                self.publish_now(
                    format!("{p}.{kind}.{webhook}.{session}"),
                    headers,
                    m.payload.clone(),
                )
                .await?;
                // Gone already: an older instance acked it, or another
                // instance moved it (the copy's id makes the two one).
                if let Err(e) = stream.delete_message(m.sequence).await {
                    tracing::debug!(error = %e, sequence = m.sequence, "moved message already gone");
                }
                moved += 1;
            }
        }
        if moved > 0 {
            tracing::info!(moved, "deliveries moved to their session's subject");
        }
        Ok(moved)
    }
}

/// The first message on `subject` from sequence `from` on, read on the
/// stream's leader.
async fn first_from(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    match stream.get_first_raw_message_by_subject(subject, from).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(StoreError::Nats(e.to_string())),
    }
}

/// A parked retry's due time; `None` for a delivery waiting its turn.
fn parked_until(m: &StreamMessage) -> Option<i64> {
    if m.subject.as_str().split('.').nth(1) != Some("retry") {
        return None;
    }
    m.headers.get(DUE).and_then(|v| v.as_str().parse().ok())
}

/// The session a delivery message's event belongs to.
pub fn session_in(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<StoredEvent>(payload)
        .ok()
        .and_then(|e| e.session_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_the_first_messages_place() {
        let mut first = HeaderMap::new();
        assert_eq!(order_of(Some(&first), 7), 7);
        keep_order(&mut first, 7);
        assert_eq!(order_of(Some(&first), 40), 7);
        // Moved again: still its first place.
        let mut again = first.clone();
        keep_order(&mut again, 40);
        assert_eq!(order_of(Some(&again), 93), 7);
    }
}
