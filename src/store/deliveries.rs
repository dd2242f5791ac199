//! The deliveries kept, as the admin API and the console read and change
//! them: listed, shown with their attempts and event, sent again, replayed,
//! counted. One trait, with the embedded store's implementation and
//! JetStream's side by side, so a handler asks the store it was given and
//! never which one it is. (Deliveries are written through
//! [`super::Outbox`]; the deliver stage reads each backend its own way.)
//!
//! What a backend cannot do is an error that says so
//! ([`StoreError::Unsupported`], [`StoreError::Conflict`]): the JetStream
//! work queue keeps neither delivered deliveries nor a way to take back a
//! pending one.

use async_trait::async_trait;

use super::jetstream::JetStream;
use super::sqlite::{DeliveryDetail, DeliveryInfo, Filter, Retry, State, StoreError};
use super::Embedded;

/// The deliveries a store keeps.
#[async_trait]
pub trait Deliveries: Send + Sync {
    /// Up to `limit` deliveries matching `filter`, `webhook` and
    /// `session`, after id `after`.
    async fn list(
        &self,
        filter: Filter,
        webhook: Option<String>,
        session: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError>;

    /// Delivery `id` with its attempts and its event (`None` when the
    /// stored event cannot be read).
    async fn get(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError>;

    /// Sends delivery `id` again; false when there is no such delivery.
    async fn requeue(&self, id: i64) -> Result<bool, StoreError>;

    /// How many deliveries `retry` matches now (a dry run).
    async fn count_matching(&self, retry: Retry) -> Result<usize, StoreError>;

    /// Sends again every delivery `retry` matches; how many.
    async fn retry_matching(&self, retry: Retry) -> Result<usize, StoreError>;

    /// Sends again `webhook`'s dead deliveries created since `since` (ms),
    /// and its delivered ones with `include_delivered`; how many.
    async fn replay(
        &self,
        webhook: String,
        since: i64,
        include_delivered: bool,
    ) -> Result<usize, StoreError>;

    /// `(webhook, state, count)` of `webhook`'s pending and dead
    /// deliveries (a backend may count every webhook's).
    async fn counts(&self, webhook: String) -> Result<Vec<(String, String, i64)>, StoreError>;

    /// Up to `limit` deliveries of the events `uuids` (to `webhooks`, of
    /// `sessions`: a backend reads whichever it is indexed by).
    async fn of_events(
        &self,
        webhooks: Vec<String>,
        uuids: Vec<String>,
        sessions: Vec<String>,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError>;

    /// The id of the delivery of `event_uuid` to `webhook`, once
    /// committed; `None` where ids are given later (JetStream: on its way
    /// to NATS, its id is the stream sequence it gets).
    async fn id_of(&self, webhook: String, event_uuid: String) -> Result<Option<i64>, StoreError>;
}

#[async_trait]
impl Deliveries for Embedded {
    async fn list(
        &self,
        filter: Filter,
        webhook: Option<String>,
        session: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.run(move |store| {
            store.list_deliveries(filter, webhook.as_deref(), session.as_deref(), after, limit)
        })
        .await
    }

    async fn get(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        self.run(move |store| store.delivery(id)).await
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        self.run(move |store| store.requeue(id)).await
    }

    async fn count_matching(&self, retry: Retry) -> Result<usize, StoreError> {
        self.run(move |store| store.count_matching(&retry)).await
    }

    async fn retry_matching(&self, retry: Retry) -> Result<usize, StoreError> {
        self.run(move |store| store.retry_matching(retry)).await
    }

    async fn replay(
        &self,
        webhook: String,
        since: i64,
        include_delivered: bool,
    ) -> Result<usize, StoreError> {
        self.run(move |store| store.replay(&webhook, since, include_delivered))
            .await
    }

    async fn counts(&self, webhook: String) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.run(move |store| store.counts(&[webhook.as_str()]))
            .await
    }

    async fn of_events(
        &self,
        webhooks: Vec<String>,
        uuids: Vec<String>,
        _sessions: Vec<String>,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.run(move |store| store.deliveries_of(&webhooks, &uuids, limit))
            .await
    }

    async fn id_of(&self, webhook: String, event_uuid: String) -> Result<Option<i64>, StoreError> {
        self.0.committed_now().await?;
        self.run(move |store| store.delivery_id(&webhook, &event_uuid))
            .await
    }
}

#[async_trait]
impl Deliveries for JetStream {
    async fn list(
        &self,
        filter: Filter,
        webhook: Option<String>,
        session: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.list_deliveries(filter, webhook.as_deref(), session.as_deref(), after, limit)
            .await
    }

    async fn get(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        let Some((delivery, event)) = self.delivery(id).await? else {
            return Ok(None);
        };
        let attempts = self
            .attempts(&delivery.webhook, &delivery.event_uuid)
            .await?;
        Ok(Some((delivery, attempts, Some(event))))
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        if id >= 0 {
            return Err(StoreError::Conflict {
                code: "not_dead",
                message: format!("delivery {id} is pending (on its way); with the jetstream store only dead letters (negative ids) are sent again"),
            });
        }
        JetStream::requeue(self, id).await
    }

    async fn count_matching(&self, retry: Retry) -> Result<usize, StoreError> {
        only_dead(&retry)?;
        self.count_dead(&retry).await
    }

    async fn retry_matching(&self, retry: Retry) -> Result<usize, StoreError> {
        only_dead(&retry)?;
        self.requeue_dead(&retry).await
    }

    async fn replay(
        &self,
        webhook: String,
        since: i64,
        include_delivered: bool,
    ) -> Result<usize, StoreError> {
        if include_delivered {
            return Err(StoreError::Unsupported(
                "include_delivered needs the embedded store: the JetStream work queue does not keep delivered deliveries".into(),
            ));
        }
        JetStream::replay(self, &webhook, since).await
    }

    async fn counts(&self, _webhook: String) -> Result<Vec<(String, String, i64)>, StoreError> {
        JetStream::counts(self).await
    }

    /// Among each session's deliveries (read a session at a time, up to
    /// 1,000 each): the streams are indexed by session, not by event.
    async fn of_events(
        &self,
        _webhooks: Vec<String>,
        uuids: Vec<String>,
        sessions: Vec<String>,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        let mut out = Vec::new();
        for session in sessions {
            let of_session = self
                .list_deliveries(Filter::Any, None, Some(&session), 0, 1000)
                .await?;
            out.extend(
                of_session
                    .into_iter()
                    .filter(|d| uuids.contains(&d.event_uuid)),
            );
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn id_of(
        &self,
        _webhook: String,
        _event_uuid: String,
    ) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
}

/// JetStream sends again dead letters only.
fn only_dead(retry: &Retry) -> Result<(), StoreError> {
    if retry.state == State::Dead {
        return Ok(());
    }
    Err(StoreError::Unsupported(
        "with the jetstream store only dead letters are sent again (failed ones are retried on their schedule; delivered ones are not kept)".into(),
    ))
}
