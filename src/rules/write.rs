//! Writing rules back: the admin API keeps each object it manages in a
//! file of its own under the rules directory, written atomically, after
//! checking that the whole directory with the change still loads.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::Problems;
use super::source::{process_env, Document};
use super::{load, Rules};

/// Where the admin API keeps the webhooks it manages.
pub const WEBHOOKS_DIR: &str = "event-webhooks";

/// One change to the rules directory.
pub enum Change {
    /// Create or replace a file with this text.
    Write(PathBuf, String),
    Remove(PathBuf),
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The directory with the change would not load.
    #[error("{0}")]
    Invalid(Problems),
    #[error("cannot write the rules directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The file of an API-managed webhook.
pub fn webhook_path(rules_dir: &Path, key: &str) -> PathBuf {
    rules_dir.join(WEBHOOKS_DIR).join(format!("{key}.json"))
}

/// Whether webhook `key`, defined in `file`, sits in the file the admin
/// API keeps for it, `event-webhooks/<key>.json`.
pub fn is_managed(rules_dir: &Path, key: &str, file: &Path) -> bool {
    file == webhook_path(rules_dir, key)
}

/// Loads `rules_dir` as it would be after `changes`, without touching it.
pub fn validate(rules_dir: &Path, changes: &[Change]) -> Result<Rules, WriteError> {
    let (mut docs, problems) =
        load::read_dir(rules_dir, &process_env).map_err(WriteError::Invalid)?;
    if !problems.is_empty() {
        return Err(WriteError::Invalid(Problems(problems)));
    }
    for change in changes {
        match change {
            Change::Write(path, text) => {
                let doc = Document::parse(path, text, &process_env).map_err(WriteError::Invalid)?;
                docs.retain(|d| &d.path != path);
                docs.push(doc);
            }
            Change::Remove(path) => docs.retain(|d| &d.path != path),
        }
    }
    docs.sort_by(|a, b| a.path.cmp(&b.path));
    load::load_documents(&docs).map_err(WriteError::Invalid)
}

/// Makes `changes` on disk: each file written to a temporary file beside
/// it, synced, then renamed over the old one.
pub fn apply(changes: &[Change]) -> std::io::Result<()> {
    for change in changes {
        match change {
            Change::Write(path, text) => write_atomic(path, text.as_bytes())?,
            Change::Remove(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => sync_dir(path)?,
            },
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a rules file has a directory"))?;
    std::fs::create_dir_all(dir)?;
    // A dot file: the loader skips it if we stop half-way.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("rules");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Owner only: what the API writes holds webhook secrets in clear.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if dir.exists() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// A value as it must be written into a rules file: `${` is literal there.
pub fn escape_env(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("${", "$${")),
        Value::Array(a) => Value::Array(a.iter().map(escape_env).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), escape_env(v))).collect())
        }
        other => other.clone(),
    }
}
