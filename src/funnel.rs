//! The funnel stage, beside the event log: follows each importer session
//! through the importer's stages (initialized, uploaded, header selected,
//! mapped, submitted, closed) for the funnel metrics, and notices the
//! sessions that stop moving: a session with no new event for
//! `funnel.stall_after`, neither submitted nor closed, yields one derived
//! `session_stalled` event per idle period. A session's progress is kept
//! in the store, so counts and stalls survive restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::derive::name_uuid;
use crate::event::{DerivedEvent, Event};
use crate::metrics::Metrics;
use crate::store::sqlite::{Store, StoreError};
use crate::store::{session_key, SessionStore, ENTRY_OVERHEAD};

/// The event type of a stall.
pub const STALLED: &str = "session_stalled";

/// The importer's stages, in the order a session goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Initialized,
    Uploaded,
    HeaderSelected,
    Mapped,
    Submitted,
    Closed,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Initialized,
        Stage::Uploaded,
        Stage::HeaderSelected,
        Stage::Mapped,
        Stage::Submitted,
        Stage::Closed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Initialized => "initialized",
            Stage::Uploaded => "uploaded",
            Stage::HeaderSelected => "header_selected",
            Stage::Mapped => "mapped",
            Stage::Submitted => "submitted",
            Stage::Closed => "closed",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// A session past this stage is done: it cannot stall.
    pub fn finishes(self) -> bool {
        matches!(self, Stage::Submitted | Stage::Closed)
    }

    /// The event types that mark a stage unless the config says otherwise:
    /// OneSchema's, Dromo's headless imports, and the ends of an import
    /// that `taphook draft` finds in polls (`import_succeeded`,
    /// `import_failed`).
    fn default_events(self) -> &'static [&'static str] {
        match self {
            Stage::Initialized => &["embed_initialized", "headless_import_created"],
            Stage::Uploaded => &["file_uploaded"],
            Stage::HeaderSelected => &["header_selected"],
            Stage::Mapped => &["columns_mapped"],
            Stage::Submitted => &["import_submitted", "import_completed", "import_succeeded"],
            Stage::Closed => &["embed_closed", "headless_import_failed", "import_failed"],
        }
    }
}

/// The `funnel` config section, lowered.
#[derive(Debug, Clone)]
pub struct FunnelConfig {
    /// Event type → the stage it marks.
    pub stages: HashMap<String, Stage>,
    /// Idle this long before submitting or closing: stalled. `None`: off.
    pub stall_after: Option<Duration>,
    /// Distinct `template_key` label values; the rest are `other`.
    pub max_template_keys: usize,
}

impl Default for FunnelConfig {
    fn default() -> Self {
        Self::new(&BTreeMap::new(), Some(Duration::from_secs(30 * 60)), 50)
    }
}

impl FunnelConfig {
    /// Stages listed in `overrides` take the event types given there; the
    /// others keep their defaults.
    pub fn new(
        overrides: &BTreeMap<Stage, Vec<String>>,
        stall_after: Option<Duration>,
        max_template_keys: usize,
    ) -> Self {
        let mut stages = HashMap::new();
        for stage in Stage::ALL {
            match overrides.get(&stage) {
                Some(events) => stages.extend(events.iter().map(|e| (e.clone(), stage))),
                None => stages.extend(
                    stage
                        .default_events()
                        .iter()
                        .map(|e| (e.to_string(), stage)),
                ),
            }
        }
        Self {
            stages,
            stall_after,
            max_template_keys,
        }
    }

    /// How often idle sessions are looked for: often enough that a stall
    /// is reported within a tenth of `stall_after` (at least every second,
    /// at most every minute).
    pub fn check_interval(&self) -> Option<Duration> {
        self.stall_after
            .map(|d| (d / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

/// What the funnel keeps of one session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub template_key: Option<String>,
    /// When each stage was first reached (ms since the epoch).
    #[serde(default)]
    pub reached: BTreeMap<Stage, i64>,
    pub last_event_at: i64,
    pub last_event_type: String,
    /// Submitted or closed (and not taken back to an earlier stage since).
    #[serde(default)]
    pub finished: bool,
    /// A stall was reported for the current idle period.
    #[serde(default)]
    pub stalled: bool,
}

impl Progress {
    /// The latest stage reached, in funnel order.
    pub fn stage(&self) -> Option<Stage> {
        self.reached.keys().next_back().copied()
    }

    /// Watched for stalls: still open, and not reported for this idle period.
    pub fn watched(&self) -> bool {
        !self.finished && !self.stalled
    }
}

/// Bytes of sessions' progress kept between events (approximately, as
/// the session cache weighs them), in front of the store.
const PROGRESS_CACHE_BYTES: u64 = 8 << 20;

/// How many stalls one sweep reports at most; the rest wait for the next.
const SWEEP_BATCH: usize = 1000;

pub struct Funnel {
    config: FunnelConfig,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    cache: moka::sync::Cache<String, Progress>,
    /// Template keys that have a label of their own.
    labelled: Mutex<HashSet<String>>,
}

impl Funnel {
    pub fn new(config: FunnelConfig, metrics: Arc<Metrics>, store: Arc<Store>) -> Self {
        Self {
            config,
            metrics,
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(PROGRESS_CACHE_BYTES)
                .weigher(|key: &String, p: &Progress| {
                    let size = ENTRY_OVERHEAD
                        + key.len()
                        + p.template_key.as_ref().map_or(0, |t| 24 + t.len())
                        + 48 * p.reached.len()
                        + p.last_event_type.len()
                        + 64;
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .build(),
            labelled: Mutex::new(HashSet::new()),
        }
    }

    /// Moves the event's session along: counts the stages it reaches for
    /// the first time, and restarts its idle period. A `new_session` has
    /// no progress yet: none is read back.
    pub fn observe(&self, event: &Event, new_session: bool) {
        if event.event_type == STALLED {
            return;
        }
        let Some(key) = session_key(&event.embed_id) else {
            return;
        };
        let at = (event.created_at * 1000.0) as i64;
        let mut progress = if new_session {
            Progress::default()
        } else {
            self.progress(&key).unwrap_or_default()
        };
        if progress.template_key.is_none() {
            progress.template_key = event.template_key.as_str().map(str::to_string);
        }
        if let Some(&stage) = self.config.stages.get(&event.event_type) {
            self.reach(&mut progress, stage, at);
            // A non-final stage after submitting (mapping columns again)
            // takes the session back: it is importing again.
            progress.finished = stage.finishes();
        }
        progress.last_event_at = at;
        progress.last_event_type.clone_from(&event.event_type);
        progress.stalled = false;
        self.save(&key, progress);
    }

    fn reach(&self, progress: &mut Progress, stage: Stage, at: i64) {
        if progress.reached.contains_key(&stage) {
            return;
        }
        let label = self.label(progress.template_key.as_deref());
        self.metrics
            .funnel_sessions
            .with_label_values(&[&label, stage.name()])
            .inc();
        let previous = progress.reached.range(..stage).map(|(_, t)| *t).max();
        if let Some(since) = previous {
            self.metrics
                .funnel_stage_duration
                .with_label_values(&[&label, stage.name()])
                .observe((at - since).max(0) as f64 / 1000.0);
        }
        progress.reached.insert(stage, at);
    }

    /// The `template_key` label value: the key itself for the first
    /// `max_template_keys` seen, `other` after, `none` without one.
    fn label(&self, template_key: Option<&str>) -> String {
        let Some(key) = template_key.filter(|k| !k.is_empty()) else {
            return "none".into();
        };
        let mut labelled = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        if labelled.contains(key) {
            return key.to_string();
        }
        if labelled.len() < self.config.max_template_keys {
            labelled.insert(key.to_string());
            return key.to_string();
        }
        "other".into()
    }

    fn progress(&self, key: &str) -> Option<Progress> {
        if let Some(p) = self.cache.get(key) {
            return Some(p);
        }
        let json = self.store.get_progress(key).ok()??;
        let progress: Progress = serde_json::from_str(&json).ok()?;
        self.cache.insert(key.to_string(), progress.clone());
        Some(progress)
    }

    fn save(&self, key: &str, progress: Progress) {
        let watched = progress.watched() && self.config.stall_after.is_some();
        let json = serde_json::to_string(&progress).unwrap_or_default();
        if let Err(e) = self
            .store
            .put_progress(key, json, progress.last_event_at, watched)
        {
            tracing::error!(error = %e, "session progress not stored");
        }
        self.cache.insert(key.to_string(), progress);
    }

    /// The sessions idle past `stall_after` as of `now` (ms), each with its
    /// `session_stalled` event, marked as reported. The caller accepts the
    /// events into the pipeline.
    pub fn stalls(
        &self,
        now: i64,
        environment_name: &str,
        sessions: &dyn SessionStore,
    ) -> Result<Vec<DerivedEvent>, StoreError> {
        let Some(stall_after) = self.config.stall_after else {
            return Ok(Vec::new());
        };
        let cutoff = now - stall_after.as_millis() as i64;
        let idle = self.store.idle_sessions(cutoff, SWEEP_BATCH)?;
        let mut events = Vec::with_capacity(idle.len());
        for (key, json) in idle {
            let Ok(mut progress) = serde_json::from_str::<Progress>(&json) else {
                tracing::warn!(session = %key, "unreadable session progress; not watched any more");
                let _ = self.store.put_progress(&key, json, 0, false);
                continue;
            };
            let event = stalled_event(&key, &progress, now, environment_name, sessions);
            let label = self.label(progress.template_key.as_deref());
            let stage = progress.stage().map_or("none", Stage::name);
            self.metrics
                .sessions_stalled
                .with_label_values(&[&label, stage])
                .inc();
            progress.stalled = true;
            self.save(&key, progress);
            events.push(event);
        }
        Ok(events)
    }

    /// Updates the gauge of sessions watched for stalls.
    pub fn count_open(&self) {
        if let Ok(n) = self.store.watched_sessions() {
            self.metrics.funnel_open_sessions.set(n);
        }
    }
}

/// A stalled session's event: the session's envelope fields, trigger
/// `automation`, and a UUID named by the session and its last event's
/// time, so a stall reported twice (a crash between the two writes) is
/// one event to receivers.
fn stalled_event(
    key: &str,
    progress: &Progress,
    now: i64,
    environment_name: &str,
    sessions: &dyn SessionStore,
) -> DerivedEvent {
    let session = sessions.get(key);
    let field = |name: &str| {
        session
            .as_ref()
            .and_then(|s| s.fields.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let template_key = match field("template_key") {
        Value::Null => progress
            .template_key
            .clone()
            .map_or(Value::Null, Value::String),
        v => v,
    };
    let uuid = name_uuid(STALLED, &format!("{key}\n{}", progress.last_event_at));
    let event = Event {
        uuid: format!("event-{uuid}"),
        embed_id: session
            .as_ref()
            .map_or_else(|| Value::String(key.to_string()), |s| s.key.clone()),
        embed_jwt: field("embed_jwt"),
        environment_name: environment_name.to_string(),
        template_key,
        event_type: STALLED.into(),
        trigger_type: "automation".into(),
        data: json!({
            "stage": progress.stage().map(Stage::name),
            "last_event_type": progress.last_event_type,
            "last_event_at": progress.last_event_at as f64 / 1000.0,
            "idle_seconds": (now - progress.last_event_at).max(0) / 1000,
        }),
        created_at: now as f64 / 1000.0,
    };
    DerivedEvent {
        event,
        session: session.map(|s| s.fields),
        derived_at: std::time::Instant::now(),
        registered: None,
        request_id: None,
        new_session: false,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_a_stages_defaults_only() {
        let overrides = BTreeMap::from([(Stage::Uploaded, vec!["files_added".to_string()])]);
        let config = FunnelConfig::new(&overrides, None, 5);
        assert_eq!(config.stages.get("files_added"), Some(&Stage::Uploaded));
        assert_eq!(config.stages.get("file_uploaded"), None);
        assert_eq!(config.stages.get("columns_mapped"), Some(&Stage::Mapped));
        assert_eq!(config.check_interval(), None);
    }

    #[test]
    fn stalls_are_looked_for_within_a_tenth_of_the_idle_time() {
        let every = |secs| {
            FunnelConfig::new(&BTreeMap::new(), Some(Duration::from_secs(secs)), 5)
                .check_interval()
                .unwrap()
        };
        assert_eq!(every(2), Duration::from_secs(1));
        assert_eq!(every(300), Duration::from_secs(30));
        assert_eq!(every(86_400), Duration::from_secs(60));
    }

    #[test]
    fn the_stage_is_the_furthest_reached() {
        let mut p = Progress::default();
        assert_eq!(p.stage(), None);
        p.reached.insert(Stage::Mapped, 3);
        p.reached.insert(Stage::Uploaded, 9);
        assert_eq!(p.stage(), Some(Stage::Mapped));
        assert!(p.watched());
        p.finished = true;
        assert!(!p.watched());
    }
}
