//! The rules files as users write them. Unknown keys are refused, so a
//! typo is an error rather than a silently ignored setting.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::units::{Dur, Size};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub event: String,
    #[serde(default)]
    pub method: Option<OneOrMany>,
    pub path: String,
    #[serde(default)]
    pub status: Option<Value>,
    #[serde(default)]
    pub when: Option<Value>,
    #[serde(default)]
    pub session: Option<Value>,
    #[serde(default)]
    pub session_alias: Option<Value>,
    #[serde(default)]
    pub remember: Map<String, Value>,
    #[serde(default)]
    pub trigger: Option<Value>,
    #[serde(default)]
    pub dedup_key: Option<Value>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub capture: Option<RawCapture>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    pub max_body_bytes: Size,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub key: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub assignment: Option<String>,
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub signing: Option<RawSigning>,
    #[serde(default)]
    pub development_mode: Option<bool>,
    #[serde(default)]
    pub import_identifiers: Option<Vec<String>>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub rate_limit: Option<crate::rules::model::RawRateLimit>,
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub scheme: String,
    pub secrets: Vec<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default)]
    pub on: Option<Vec<Value>>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub backoff: Option<Vec<Dur>>,
    #[serde(default)]
    pub max_retry_after: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegisteredEvent {
    pub app: String,
    pub topic: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub event_type: String,
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub get_api_path: Option<String>,
    /// OS1's `type` (e.g. `users`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}
