//! The audit trail of changes made through the admin API: one trait, with
//! the embedded store's implementation and JetStream's side by side.

use async_trait::async_trait;

use super::jetstream::JetStream;
use super::sqlite::StoreError;
use super::Embedded;

/// Where the audit trail is kept.
#[async_trait]
pub trait AuditTrail: Send + Sync {
    /// Keeps `entry` (JSON): durable when it returns `Ok`.
    async fn append(&self, entry: String) -> Result<(), StoreError>;

    /// Up to `limit` entries before `before` (all when `None`), newest
    /// first: `(sequence, entry)`.
    async fn page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError>;
}

#[async_trait]
impl AuditTrail for Embedded {
    async fn append(&self, entry: String) -> Result<(), StoreError> {
        self.0.audit(entry)?;
        self.0.committed_now().await
    }

    async fn page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.run(move |store| store.audit_page(before, limit)).await
    }
}

#[async_trait]
impl AuditTrail for JetStream {
    async fn append(&self, entry: String) -> Result<(), StoreError> {
        self.audit(entry).await
    }

    async fn page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.audit_page(before, limit).await
    }
}
