//! Each webhook's delivery state (disabled, paused) as the admin API reads
//! and changes it, and what follows a webhook renamed or deleted (its
//! backlog). One trait, with the embedded store's implementation and
//! JetStream's side by side.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::jetstream::JetStream;
use super::sqlite::{Store, StoreError, WebhookChange};

/// What the admin API shows of a webhook's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    /// Why it is disabled (a 410), if it is.
    pub disabled: Option<String>,
    /// Paused after failing for `pause_after`.
    pub paused: bool,
}

/// The webhooks' delivery state a store keeps.
#[async_trait]
pub trait WebhookStates: Send + Sync {
    /// `webhook`'s state now (healthy when none is kept).
    fn shown(&self, webhook: &str) -> Shown;

    /// Enables `webhook` again: not disabled, not paused, not failing.
    async fn enable(&self, webhook: &str) -> Result<(), StoreError>;

    /// `from` is now called `to`: its state and its backlog follow. An
    /// attempt still in flight may land under `from` for up to `settle`.
    async fn rename(self: Arc<Self>, from: &str, to: &str, settle: Duration);

    /// `webhook` is gone: what still waits for it becomes dead letters
    /// (replayable), including what attempts in flight for up to `settle`
    /// park under it.
    async fn delete(self: Arc<Self>, webhook: &str, settle: Duration);
}

#[async_trait]
impl WebhookStates for Store {
    fn shown(&self, webhook: &str) -> Shown {
        let state = self.webhook_state(webhook).unwrap_or_default();
        Shown {
            disabled: state.disabled,
            paused: state.paused,
        }
    }

    async fn enable(&self, webhook: &str) -> Result<(), StoreError> {
        self.webhook_change(webhook, WebhookChange::Enable)
    }

    /// The writer moves pending deliveries in one transaction; attempts in
    /// flight record their outcome by delivery id, whatever its webhook.
    async fn rename(self: Arc<Self>, from: &str, to: &str, _settle: Duration) {
        logged(
            from,
            self.webhook_change(from, WebhookChange::Rename(to.to_string())),
        );
    }

    async fn delete(self: Arc<Self>, webhook: &str, _settle: Duration) {
        logged(webhook, self.webhook_change(webhook, WebhookChange::Delete));
    }
}

fn logged(webhook: &str, result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!(webhook = %webhook, error = %e, "webhook state not updated");
    }
}

/// Shared through the `webhooks` bucket: the change is a compare-and-set,
/// and the backlog is moved now and again once attempts in flight under
/// the old key have parked their retries there.
#[async_trait]
impl WebhookStates for JetStream {
    fn shown(&self, webhook: &str) -> Shown {
        let health = self.webhook_health(webhook);
        Shown {
            disabled: health.disabled,
            paused: health.paused,
        }
    }

    async fn enable(&self, webhook: &str) -> Result<(), StoreError> {
        self.change_webhook(webhook, |s| {
            let was = s.clone();
            *s = Default::default();
            *s != was
        })
        .await
        .map(|_| ())
    }

    async fn rename(self: Arc<Self>, from: &str, to: &str, settle: Duration) {
        let (js, from, to) = (self, from.to_string(), to.to_string());
        tokio::spawn(async move {
            for wait in [Duration::ZERO, settle] {
                tokio::time::sleep(wait).await;
                if let Err(e) = js.rename_webhook(&from, &to).await {
                    tracing::error!(webhook = %from, error = %e, "backlog not moved to the new key");
                }
            }
        });
    }

    async fn delete(self: Arc<Self>, webhook: &str, settle: Duration) {
        if let Err(e) = self.delete_webhook(webhook).await {
            tracing::error!(webhook = %webhook, error = %e, "backlog not moved to the dead letters");
        }
        let js = self;
        let webhook = webhook.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            if let Err(e) = js.delete_webhook(&webhook).await {
                tracing::error!(webhook = %webhook, error = %e, "backlog not moved to the dead letters");
            }
        });
    }
}
