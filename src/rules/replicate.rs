//! Admin API changes shared by every instance (JetStream backend): each
//! file the admin API writes or removes under the rules directory is also
//! put in (or deleted from) the KV bucket `<prefix>_rules`, before it is
//! made on disk; every instance watches the bucket and makes the same
//! change in its own rules directory, then reloads. An instance that
//! starts later catches up from the bucket's current values.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::write::{self, Change};
use crate::app::Shared;
use crate::store::jetstream::{token, untoken, JetStream};
use crate::store::sqlite::StoreError;

/// A file the admin API wrote, as the bucket keeps it.
#[derive(Serialize, Deserialize)]
struct SharedFile {
    /// Relative to the rules directory.
    path: String,
    text: String,
}

/// Puts `changes` in the bucket; an error means no other instance sees them.
pub async fn publish(
    js: &JetStream,
    rules_dir: &Path,
    changes: &[Change],
) -> Result<(), StoreError> {
    for change in changes {
        let (path, text) = match change {
            Change::Write(path, text) => (path, Some(text)),
            Change::Remove(path) => (path, None),
        };
        let rel = path
            .strip_prefix(rules_dir)
            .map_err(|_| {
                StoreError::Nats(format!("{} is outside the rules directory", path.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let key = token(&rel);
        let done = match text {
            Some(text) => {
                let file = SharedFile {
                    path: rel,
                    text: text.clone(),
                };
                let body = Bytes::from(serde_json::to_vec(&file).unwrap_or_default());
                js.rules
                    .put(key, body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => js.rules.delete(key).await.map_err(|e| e.to_string()),
        };
        done.map_err(|e| StoreError::Nats(format!("cannot share the change: {e}")))?;
    }
    Ok(())
}

/// Follows the bucket for as long as the process runs.
pub async fn follow(shared: Arc<Shared>, js: Arc<JetStream>) {
    loop {
        match js.rules.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    match entry {
                        Ok(entry) => apply(&shared, entry).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "watching the rules bucket");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the rules bucket"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A relative path with no way out of the rules directory.
fn inside(rules_dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| rules_dir.join(rel))
}

/// Makes one shared change here, unless it is made already.
async fn apply(shared: &Arc<Shared>, entry: kv::Entry) {
    let (rel, text) = match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<SharedFile>(&entry.value) {
            Ok(f) => (f.path, Some(f.text)),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "unreadable shared rules file");
                return;
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => (untoken(&entry.key), None),
    };
    let dir = shared.config.rules_dir.clone();
    let Some(path) = inside(&dir, &rel) else {
        tracing::warn!(path = %rel, "shared rules file outside the rules directory; ignored");
        return;
    };
    let _one_at_a_time = shared.admin_writes.lock().await;
    if std::fs::read_to_string(&path).ok() == text {
        return;
    }
    let change = match text {
        Some(text) => Change::Write(path, text),
        None => Change::Remove(path),
    };
    let made = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let changes = [change];
        write::validate(&dir, &changes).map_err(|e| e.to_string())?;
        write::apply(&changes).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match made {
        Ok(()) => {
            tracing::info!(path = %rel, "rules changed through another instance's admin API");
            let _ = shared.reload_rules();
        }
        Err(e) => {
            shared
                .metrics
                .rules_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(path = %rel, error = %e, "a change made through another instance does not load here; keeping the current rules");
        }
    }
}
