//! The embedded store: one SQLite database (`data_dir/taphook.db`, WAL,
//! `synchronous=FULL`) holding the outbox of deliveries with their
//! attempts, sessions, the event log, and webhook states.
//!
//! All writes go through one writer thread that commits them in groups
//! (every op waiting when a transaction starts goes into it), so the
//! pipeline never waits on an fsync per event. Reads use their own
//! connection; WAL lets them run beside the writer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::handoff::{Handoff, LANE_CAP};
use super::record::{Accepted, Logged, Own, StoredEvent};
use crate::event::Event;

/// Ops committed in one transaction at most.
const MAX_GROUP: usize = 4096;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    webhook TEXT NOT NULL,
    event_uuid TEXT NOT NULL,
    -- With event_row: what this delivery adds to the logged event (Own).
    -- Without (a test event, or a row written before deliveries referred to the log): the whole event.
    event TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    part INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_status TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    session TEXT,
    -- The row of the event log it sends (events.rowid).
    event_row INTEGER,
    UNIQUE (webhook, event_uuid)
);
-- Partial indexes: a delivery enters the due index when made and leaves
-- it when delivered; it enters the ended index only when it ends. Each
-- holds only what its readers look for (the outbox, a webhook's pending
-- and dead counts; the retention sweep), and an event costs fewer index
-- writes.
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (webhook, state, next_at, id) WHERE state != 'delivered';
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, id);
CREATE INDEX IF NOT EXISTS deliveries_ended ON deliveries (state, updated_at) WHERE state != 'pending';
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    at INTEGER NOT NULL,
    part INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    response TEXT,
    detail TEXT,
    PRIMARY KEY (delivery_id, n)
);
CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_time ON sessions (updated_at);
CREATE TABLE IF NOT EXISTS events (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    event TEXT NOT NULL,
    -- What its deliveries send beside the envelope (Logged).
    logged TEXT,
    PRIMARY KEY (session, seq)
);
CREATE INDEX IF NOT EXISTS events_time ON events (created_at);
CREATE TABLE IF NOT EXISTS session_progress (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    last_event_at INTEGER NOT NULL,
    watched INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS session_progress_idle ON session_progress (last_event_at) WHERE watched = 1;
CREATE INDEX IF NOT EXISTS session_progress_recent ON session_progress (last_event_at, key);
CREATE TABLE IF NOT EXISTS webhook_hours (
    webhook TEXT NOT NULL,
    hour INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (webhook, hour)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (at);
CREATE TABLE IF NOT EXISTS webhook_state (
    webhook TEXT PRIMARY KEY,
    disabled TEXT,
    failing_since INTEGER,
    last_failure INTEGER,
    paused INTEGER NOT NULL DEFAULT 0
);
";

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    Closed,
    #[error("{0}")]
    Nats(String),
    #[error("a store task failed: {0}")]
    Task(String),
    /// What this backend does not keep or do.
    #[error("{0}")]
    Unsupported(String),
    /// What the backend refuses in the state things are in.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One template's funnel: its `template_key` (`None`: without one), the
/// sessions that reached each stage asked for, and the stalled ones.
pub type FunnelRow = (Option<String>, Vec<i64>, i64);

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Delivered,
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub event: Arc<StoredEvent>,
    pub attempts: u32,
    pub part: u32,
}

impl Due {
    /// A delivery just inserted: no attempt yet, from its first part.
    pub fn fresh(id: i64, event: Arc<StoredEvent>) -> Self {
        Self {
            id,
            event,
            attempts: 0,
            part: 0,
        }
    }
}

/// One delivery, its attempts and the event it sends (`None`: unreadable).
pub type DeliveryDetail = (DeliveryInfo, Vec<AttemptInfo>, Option<StoredEvent>);

/// A delivery as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    pub id: i64,
    pub webhook: String,
    /// The session key of the event (`null` without one).
    pub session: Option<String>,
    pub event_uuid: String,
    pub event_type: String,
    /// `pending`, `held` (its webhook is disabled: nothing goes out until
    /// it is enabled), `delivered` or `dead`.
    pub state: String,
    /// Every attempt made, whatever came of it.
    pub attempts: u32,
    /// The attempts the webhook's retry policy counted (a 410, a probe of
    /// a paused webhook and earlier parts spend none).
    pub retries_spent: u32,
    /// Why a `held` delivery waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    pub part: u32,
    /// When the next attempt is due: `null` when none will be made
    /// (delivered, dead, held).
    pub next_attempt_at: Option<i64>,
    /// A test event's delivery (`POST /v1/event-webhooks/{key}/test`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    pub last_status: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One attempt, kept for inspection: what was sent and what came back
/// (`request` and `response`, [`crate::deliver::exchange`]; absent for
/// attempts recorded before they were kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptInfo {
    pub n: u32,
    pub at: i64,
    pub part: u32,
    pub outcome: String,
    pub duration_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<crate::deliver::exchange::Sent>,
    /// The response (status, headers, the body's first 4 KiB, timings),
    /// or the error with its kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<crate::deliver::exchange::Received>,
}

impl AttemptInfo {
    /// An attempt from its stored columns.
    pub fn from_stored(
        n: u32,
        at: i64,
        part: u32,
        outcome: String,
        duration_ms: i64,
        excerpt: Option<String>,
        detail: Option<&str>,
    ) -> Self {
        let detail =
            detail.and_then(|d| serde_json::from_str::<crate::deliver::exchange::Exchange>(d).ok());
        let (request, response) = match detail {
            Some(e) => (Some(e.request), Some(e.response)),
            // Kept before requests and responses were: the body excerpt.
            None => (
                None,
                excerpt.map(|body| crate::deliver::exchange::Received {
                    body: Some(body),
                    total_ms: duration_ms.max(0) as u64,
                    ..Default::default()
                }),
            ),
        };
        Self {
            n,
            at,
            part,
            outcome,
            duration_ms,
            request,
            response,
        }
    }
}

/// A webhook's delivery state: disabled (410) or failing since a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WebhookState {
    pub disabled: Option<String>,
    pub failing_since: Option<i64>,
    pub paused: bool,
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    State(State),
    /// Pending (held included) whose last attempt failed.
    Failed,
    /// Pending, of a webhook that is disabled.
    Held,
    /// Every state.
    Any,
}

/// Which deliveries a bulk retry sends again: those of `state` (dead,
/// failed: pending whose last attempt failed, or delivered), of `webhook`
/// and `session` when given, created at or after `since` (ms).
#[derive(Debug, Clone)]
pub struct Retry {
    pub state: State,
    pub failed: bool,
    /// The webhooks that exist: a deleted one's dead letters would wait
    /// for it forever.
    pub webhooks: Vec<String>,
    pub webhook: Option<String>,
    pub session: Option<String>,
    pub since: i64,
}

/// The deliveries a [`Retry`] matches (`?1` webhook, `?2` since, `?3`
/// session, `?4` state, `?5` failed only, `?6` the webhooks that exist).
const RETRY_MATCHES: &str = "(?1 IS NULL OR webhook = ?1) AND created_at >= ?2 AND (?3 IS NULL OR session = ?3) AND state = ?4
    AND (?5 = 0 OR (last_status IS NOT NULL AND last_status NOT GLOB '2[0-9][0-9]'))
    AND webhook IN (SELECT value FROM json_each(?6))";

/// A change to a webhook's delivery state, applied atomically by the
/// writer (so concurrent attempts and the admin API cannot undo each other).
#[derive(Debug, Clone)]
pub enum WebhookChange {
    /// The receiver answered 410: disabled (kept if already disabled).
    Disable(String),
    /// An attempt failed at `now`: failing since then (unless already, and
    /// the last failure is less than `pause_after` ago); paused once the
    /// failures have lasted `pause_after`.
    Failure { now: i64, pause_after: i64 },
    /// An attempt succeeded: no longer failing or paused.
    Success,
    /// Enabled through the admin API: a clean state.
    Enable,
    /// Renamed: the state and the backlog follow the new key.
    Rename(String),
    /// Deleted: its pending deliveries become dead letters.
    Delete,
}

/// One attempt on a delivery and the state it leaves the delivery in.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: i64,
    /// The part the attempt sent.
    pub part: u32,
    /// The attempt's outcome label (`200`, `timeout`...).
    pub outcome: String,
    pub duration: Duration,
    pub response: Option<String>,
    /// What was sent and what came back, as JSON.
    pub detail: Option<String>,
    /// The delivery afterwards.
    pub state: State,
    pub attempts: u32,
    pub next_part: u32,
    pub next_at: i64,
}

/// A write, queued for the next group commit.
pub(super) enum Op {
    /// An event and every delivery it makes: one row of the event log,
    /// and one small row per delivery that refers to it.
    Accept {
        /// The log's session (`''`: the event has none).
        session: String,
        /// When the event was made (ms).
        created_at: i64,
        /// The envelope (JSON), as the event log shows it.
        event: String,
        /// What the log keeps beside it ([`Logged`], JSON).
        logged: String,
        event_uuid: String,
        /// The deliveries' session, for a session's deliveries.
        delivery_session: Option<String>,
        /// Each delivery: its webhook, what it adds ([`Own`], JSON), and
        /// what the hand-off gives the scheduler once committed.
        deliveries: Vec<(String, String, Arc<StoredEvent>)>,
        at: i64,
        /// The event's span (traces on): the write's span is its child.
        trace: Option<String>,
    },
    InsertDelivery {
        webhook: String,
        /// The event's session key, for a session's deliveries.
        session: Option<String>,
        event_uuid: String,
        event: String,
        /// What the hand-off gives the scheduler once committed.
        stored: Arc<StoredEvent>,
        at: i64,
    },
    PutSession {
        key: String,
        value: String,
        at: i64,
    },
    PutProgress {
        key: String,
        value: String,
        last_event_at: i64,
        watched: bool,
    },
    AppendEvent {
        session: String,
        at: i64,
        event: String,
    },
    Webhook {
        webhook: String,
        change: WebhookChange,
    },
    /// An attempt and the delivery's new state, together; `reply` is
    /// answered once both are committed.
    Outcome {
        record: AttemptRecord,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    Requeue {
        id: i64,
        reply: mpsc::Sender<bool>,
    },
    Replay {
        webhook: String,
        since: i64,
        include_delivered: bool,
        reply: mpsc::Sender<usize>,
    },
    Sweep {
        cutoff: i64,
    },
    /// Re-queues every delivery `Retry` matches.
    Retry {
        retry: Retry,
        reply: mpsc::Sender<usize>,
    },
    /// Hours of webhook history changed, and the oldest hour kept.
    PutHours {
        rows: Vec<(String, i64, String)>,
        oldest: i64,
    },
    /// An entry of the audit trail (JSON).
    Audit {
        at: i64,
        entry: String,
    },
    Flush(mpsc::Sender<()>),
    FlushAsync(tokio::sync::oneshot::Sender<()>),
}

/// Ops waiting for the writer at most; a full queue makes writers wait.
/// Four groups' worth keeps the writer busy; each op holds its JSON (a
/// delivery ~2 KiB), so the old 65,536 held ~130 MiB whenever the writer
/// fell behind the pipeline.
const QUEUE_BOUND: usize = 4 * MAX_GROUP;

/// Called after a commit with the number of deliveries it accepted.
pub type AcceptHook = Box<dyn Fn(u64) + Send + Sync>;

/// How much a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A power loss (`synchronous=FULL`: an fsync per commit group): the
    /// embedded store, whose outbox lives here.
    Full,
    /// A crash of taphook, not of the machine (`synchronous=NORMAL` in WAL
    /// mode): with the JetStream backend only the funnel's progress lives
    /// here, derived from events NATS keeps.
    Normal,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    ops: Mutex<Option<mpsc::SyncSender<Op>>>,
    reader: Mutex<Connection>,
    /// A second reader for the admin API's long reads (search, bulk
    /// counts, the audit trail), so they never hold up the schedulers'
    /// reads on `reader`.
    inspector: Mutex<Connection>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The checkpointer: dropping the sender stops it.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Woken after each commit that added or re-queued deliveries.
    pub committed: Arc<tokio::sync::Notify>,
    /// Deliveries accepted (committed), for the metric.
    pub on_accept: Mutex<Option<AcceptHook>>,
    /// Bumped after each commit that changed a webhook's state, so a
    /// reader can keep the state and read it again only when it moved.
    pub webhook_epoch: Arc<AtomicU64>,
    /// Committed deliveries, in memory for their schedulers.
    pub handoff: Arc<Handoff>,
}

impl Store {
    /// Opens (or creates) `dir/taphook.db`, every commit durable.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(dir, Durability::Full)
    }

    /// Opens (or creates) `dir/taphook.db`, commits as durable as asked.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Arc<Self>, StoreError> {
        Self::open_as(dir, durability, false)
    }

    /// Opens the store while another process (the one `run --upgrade`
    /// takes over) still writes to it as it drains: this process numbers
    /// its deliveries, attempts and events from [`LEAP`] above the highest
    /// so far, so the two never give out the same id. SQLite's locks
    /// order the two writers' commits.
    pub fn open_beside(dir: &Path, durability: Durability) -> Result<Arc<Self>, StoreError> {
        Self::open_as(dir, durability, true)
    }

    fn open_as(dir: &Path, durability: Durability, beside: bool) -> Result<Arc<Self>, StoreError> {
        let pragmas = match durability {
            // 16 MiB of page cache (the default is 2 MiB): the outbox's
            // indexes stay in memory instead of being read back per commit.
            Durability::Full => "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-16384;",
            Durability::Normal => "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-16384;",
        };
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("taphook.db");
        let open = || -> Result<Connection, rusqlite::Error> {
            let c = Connection::open(&path)?;
            c.busy_timeout(Duration::from_secs(10))?;
            // Room for every statement the writer (or the reader) uses.
            c.set_prepared_statement_cache_capacity(64);
            c.execute_batch(pragmas)?;
            Ok(c)
        };
        let err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let writer_conn = open().map_err(err)?;
        writer_conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&writer_conn, beside).map_err(err)?;
        // Most checkpoint work runs on a connection of its own (see
        // `checkpoint_loop`); the writer's own automatic checkpoint (every
        // 1,000 pages, SQLite's default) is left with little to copy, and
        // it is what lets the WAL start over: a checkpoint that ends while
        // nothing else writes.
        let checkpoint_conn = open().map_err(err)?;
        let reader = open().map_err(err)?;
        let inspector = open().map_err(err)?;
        // A reader's page cache is emptied whenever another connection
        // committed (WAL), so under writes a large one only holds memory.
        for c in [&reader, &checkpoint_conn, &inspector] {
            c.execute_batch("PRAGMA cache_size=-2048;").map_err(err)?;
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_BOUND);
        let committed = Arc::new(tokio::sync::Notify::new());
        let webhook_epoch = Arc::new(AtomicU64::new(0));
        let mut counters = Counters::load(&writer_conn).map_err(err)?;
        if beside {
            counters = counters.leap();
        }
        let handoff = Arc::new(Handoff::new(LANE_CAP, counters.delivery - 1));
        let store = Arc::new(Self {
            path: path.clone(),
            ops: Mutex::new(Some(tx)),
            reader: Mutex::new(reader),
            inspector: Mutex::new(inspector),
            writer: Mutex::new(None),
            checkpointer: Mutex::new(None),
            committed: committed.clone(),
            on_accept: Mutex::new(None),
            webhook_epoch: webhook_epoch.clone(),
            handoff: handoff.clone(),
        });
        let weak = Arc::downgrade(&store);
        let handle = std::thread::Builder::new()
            .name("taphook-store".into())
            .spawn(move || {
                writer_loop(
                    writer_conn,
                    counters,
                    rx,
                    committed,
                    webhook_epoch,
                    handoff,
                    weak,
                )
            })
            .map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        *lock(&store.writer) = Some(handle);
        let (stop, stopped) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("taphook-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped))
            .map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        *lock(&store.checkpointer) = Some((stop, handle));
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn send(&self, op: Op) -> Result<(), StoreError> {
        lock(&self.ops)
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(op)
            .map_err(|_| StoreError::Closed)
    }

    /// Keeps an accepted event and its deliveries (due now) in one write:
    /// the event is serialised once, whatever the number of deliveries.
    /// Each delivery is idempotent per (webhook, event UUID).
    pub fn accept(&self, accepted: Accepted) -> Result<(), StoreError> {
        if !accepted.keeps_anything() {
            return Ok(());
        }
        let stored = &accepted.event;
        let deliveries = accepted
            .deliveries
            .into_iter()
            .map(|(webhook, event)| {
                let own = if Arc::ptr_eq(&event, stored) {
                    "{}".to_string()
                } else {
                    serde_json::to_string(&event.own()).unwrap_or_default()
                };
                (webhook, own, event)
            })
            .collect();
        self.send(Op::Accept {
            session: accepted.session.unwrap_or_default(),
            created_at: (stored.event.created_at * 1000.0) as i64,
            event: serde_json::to_string(&stored.event).unwrap_or_default(),
            logged: serde_json::to_string(&stored.logged()).unwrap_or_default(),
            event_uuid: stored.event.uuid.clone(),
            delivery_session: stored.session_key(),
            deliveries,
            at: now_ms(),
            trace: stored.trace.clone(),
        })
    }

    /// Queues a delivery of `event` to `webhook`, due now, with the event
    /// in the delivery's own row (a test event, which is in no session's
    /// log). Idempotent per (webhook, event UUID).
    pub fn insert_delivery(
        &self,
        webhook: &str,
        event: impl Into<Arc<StoredEvent>>,
    ) -> Result<(), StoreError> {
        let stored = event.into();
        let json = serde_json::to_string(&*stored).unwrap_or_default();
        self.send(Op::InsertDelivery {
            webhook: webhook.into(),
            session: stored.session_key(),
            event_uuid: stored.event.uuid.clone(),
            event: json,
            stored,
            at: now_ms(),
        })
    }

    /// Records an attempt and the delivery's new state in one op; the
    /// receiver is answered once both are committed (or dropped if the
    /// store stopped first).
    pub fn record_outcome(
        &self,
        record: AttemptRecord,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, StoreError> {
        let (reply, committed) = tokio::sync::oneshot::channel();
        self.send(Op::Outcome { record, reply })?;
        Ok(committed)
    }

    /// Changes a webhook's delivery state, atomically in the writer.
    pub fn webhook_change(&self, webhook: &str, change: WebhookChange) -> Result<(), StoreError> {
        self.send(Op::Webhook {
            webhook: webhook.into(),
            change,
        })
    }

    /// Makes a dead (or any) delivery pending and due now; false if unknown.
    pub fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Requeue { id, reply: tx })?;
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Re-queues `webhook`'s dead deliveries (and delivered ones, when
    /// asked) created at or after `since` (ms). Returns how many.
    pub fn replay(
        &self,
        webhook: &str,
        since: i64,
        include_delivered: bool,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Replay {
            webhook: webhook.into(),
            since,
            include_delivered,
            reply: tx,
        })?;
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Sends every delivery `retry` matches again (due now, its retry
    /// budget fresh); how many.
    pub fn retry_matching(&self, retry: Retry) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Retry { retry, reply: tx })?;
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// How many deliveries `retry` matches now (a dry run).
    pub fn count_matching(&self, retry: &Retry) -> Result<usize, StoreError> {
        self.inspect(|c| {
            c.prepare_cached(&format!(
                "SELECT COUNT(*) FROM deliveries WHERE {RETRY_MATCHES}"
            ))?
            .query_row(
                params![
                    retry.webhook,
                    retry.since,
                    retry.session,
                    retry.state.name(),
                    retry.failed as i64,
                    serde_json::to_string(&retry.webhooks).unwrap_or_default()
                ],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
        })
    }

    /// Writes changed hours of webhook history; hours before `oldest` go.
    pub fn put_hours(
        &self,
        rows: Vec<(String, i64, String)>,
        oldest: i64,
    ) -> Result<(), StoreError> {
        self.send(Op::PutHours { rows, oldest })
    }

    /// The id of `webhook`'s delivery of `event_uuid`, if there is one.
    pub fn delivery_id(&self, webhook: &str, event_uuid: &str) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT id FROM deliveries WHERE webhook = ?1 AND event_uuid = ?2")?
                .query_row([webhook, event_uuid], |r| r.get(0))
                .optional()
        })
    }

    /// Deliveries of any of `uuids` to any of `webhooks`, newest first
    /// (each pair is a lookup in the `(webhook, event_uuid)` index).
    pub fn deliveries_of(
        &self,
        webhooks: &[String],
        uuids: &[String],
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        let webhooks = serde_json::to_string(webhooks).unwrap_or_default();
        let uuids = serde_json::to_string(uuids).unwrap_or_default();
        self.inspect(|c| {
            c.prepare_cached(&format!(
                "{DELIVERY_COLUMNS} WHERE webhook IN (SELECT value FROM json_each(?1)) AND event_uuid IN (SELECT value FROM json_each(?2)) ORDER BY id DESC LIMIT ?3"
            ))?
            .query_map(params![webhooks, uuids, limit as i64], info_row)?
            .collect()
        })
    }

    /// Every kept hour of webhook history from `oldest` on.
    pub fn hours(&self, oldest: i64) -> Result<Vec<(String, i64, String)>, StoreError> {
        self.inspect(|c| {
            c.prepare_cached("SELECT webhook, hour, value FROM webhook_hours WHERE hour >= ?1")?
                .query_map([oldest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// Appends an entry (JSON) to the audit trail.
    pub fn audit(&self, entry: String) -> Result<(), StoreError> {
        self.send(Op::Audit {
            at: now_ms(),
            entry,
        })
    }

    /// Audit entries, newest first, before sequence `before` (`None`: the
    /// newest): `(seq, entry)`.
    pub fn audit_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.inspect(|c| {
            c.prepare_cached(
                "SELECT seq, entry FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?
            .query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
    }

    /// Deletes events, sessions and finished deliveries older than `cutoff` (ms).
    pub fn sweep(&self, cutoff: i64) -> Result<(), StoreError> {
        self.send(Op::Sweep { cutoff })
    }

    /// Waits until everything queued so far is committed.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx))?;
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Waits, without blocking the thread, until everything queued so far
    /// is committed.
    pub async fn committed_now(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::FlushAsync(tx))?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Commits what is queued and stops the writer.
    pub fn close(&self) {
        lock(&self.ops).take();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        if let Some((stop, h)) = lock(&self.checkpointer).take() {
            drop(stop);
            let _ = h.join();
        }
    }

    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        Ok(f(&lock(&self.reader))?)
    }

    /// A long read of the admin API, on a connection of its own.
    pub(super) fn inspect<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        Ok(f(&lock(&self.inspector))?)
    }

    /// Up to `limit` of `webhook`'s pending deliveries due at `now`, oldest
    /// first, leaving out `busy` ones.
    pub fn due(
        &self,
        webhook: &str,
        now: i64,
        limit: usize,
        busy: &HashSet<i64>,
    ) -> Result<Vec<Due>, StoreError> {
        self.due_upto(webhook, now, limit, busy, i64::MAX)
    }

    /// [`Store::due`], leaving out ids above `upto` too (those the
    /// hand-off holds in memory).
    pub fn due_upto(
        &self,
        webhook: &str,
        now: i64,
        limit: usize,
        busy: &HashSet<i64>,
        upto: i64,
    ) -> Result<Vec<Due>, StoreError> {
        self.read(|c| {
            // The ids come from the due-time index alone, in its order
            // (next_at, id), read only as far as needed; only the rows not
            // already in flight are read (and parsed) in full. The order
            // comes from scanning the index (`INDEXED BY`), not from ORDER
            // BY or LIMIT: with either, SQLite re-prepares this statement
            // on every call while the writer commits (it cost 7% of
            // taphook's CPU under load). `due_follows_the_index_order`
            // holds this to the promised order.
            let mut ids = c.prepare_cached(
                "SELECT id FROM deliveries INDEXED BY deliveries_open WHERE state != 'delivered' AND webhook = ?1 AND state = 'pending' AND next_at <= ?2",
            )?;
            let wanted: Vec<i64> = ids
                .query_map(params![webhook, now], |r| r.get(0))?
                .filter(|id| !matches!(id, Ok(id) if *id > upto || busy.contains(id)))
                .take(limit)
                .collect::<rusqlite::Result<_>>()?;
            let mut row = c.prepare_cached(&format!(
                "SELECT attempts, part, {EVENT_COLUMNS} FROM deliveries WHERE id = ?1 AND state = 'pending'"
            ))?;
            let mut out = Vec::with_capacity(wanted.len());
            for id in wanted {
                let Some((attempts, part, event)) = row
                    .query_row([id], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?, EventColumns::read(r, 2)?))
                    })
                    .optional()?
                else {
                    continue;
                };
                match event.stored() {
                    Ok(event) => out.push(Due { id, event: Arc::new(event), attempts, part }),
                    Err(e) => tracing::error!(delivery = id, error = %e, "unreadable delivery in the outbox; skipped"),
                }
            }
            Ok(out)
        })
    }

    /// When `webhook`'s next pending delivery that is not `busy` (nor
    /// above `upto`) is due.
    pub fn next_due_at(
        &self,
        webhook: &str,
        busy: &HashSet<i64>,
        upto: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, next_at FROM deliveries INDEXED BY deliveries_open WHERE state != 'delivered' AND webhook = ?1 AND state = 'pending'",
            )?;
            let rows = st.query_map(params![webhook], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (id, at) = row?;
                if id <= upto && !busy.contains(&id) {
                    return Ok(Some(at));
                }
            }
            Ok(None)
        })
    }

    /// Pending and dead deliveries of `webhooks`, per (webhook, state).
    /// Each count reads only its own range of the due index: a webhook's
    /// delivered rows (kept for the retention) are never scanned.
    pub fn counts(&self, webhooks: &[&str]) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_open WHERE state != 'delivered' AND webhook = ?1 AND state = ?2",
            )?;
            let mut out = Vec::with_capacity(webhooks.len() * 2);
            for webhook in webhooks {
                for state in [State::Pending, State::Dead] {
                    let n: i64 = st.query_row(params![webhook, state.name()], |r| r.get(0))?;
                    out.push((webhook.to_string(), state.name().to_string(), n));
                }
            }
            Ok(out)
        })
    }

    /// Deliveries matching `filter` (and `webhook`, and `session`), by
    /// id, after `after`.
    pub fn list_deliveries(
        &self,
        filter: Filter,
        webhook: Option<&str>,
        session: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        let (state, kind) = match filter {
            Filter::State(s) => (Some(s.name()), 0),
            Filter::Failed => (Some("pending"), 1),
            Filter::Held => (Some("pending"), 2),
            Filter::Any => (None, 0),
        };
        // One statement per index: a session's deliveries, a state's, or all.
        let sql = match (session, state) {
            (Some(_), _) => format!("{DELIVERY_COLUMNS} INDEXED BY deliveries_session WHERE session = ?6 AND id > ?2 AND (?1 IS NULL OR state = ?1) AND (?3 IS NULL OR webhook = ?3) AND {KIND} ORDER BY id LIMIT ?5"),
            (None, Some(_)) => format!("{DELIVERY_COLUMNS} WHERE state = ?1 AND id > ?2 AND (?3 IS NULL OR webhook = ?3) AND {KIND} AND ?6 IS NULL ORDER BY id LIMIT ?5"),
            (None, None) => format!("{DELIVERY_COLUMNS} WHERE ?1 IS NULL AND id > ?2 AND (?3 IS NULL OR webhook = ?3) AND ?4 = 0 AND ?6 IS NULL ORDER BY id LIMIT ?5"),
        };
        self.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![state, after, webhook, kind, limit as i64, session],
                info_row,
            )?;
            rows.collect()
        })
    }

    /// One delivery and its attempts.
    pub fn delivery(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        self.read(|c| {
            let found = c
                .prepare_cached(&format!("{DELIVERY_COLUMNS} WHERE id = ?1"))?
                .query_row([id], delivery_row)
                .optional()?;
            let Some((info, event)) = found else { return Ok(None) };
            let mut st = c.prepare_cached("SELECT ROW_NUMBER() OVER (ORDER BY n), at, part, outcome, duration_ms, response, detail FROM attempts WHERE delivery_id = ?1 ORDER BY n")?;
            let attempts = st
                .query_map([id], |r| {
                    let detail: Option<String> = r.get(6)?;
                    Ok(AttemptInfo::from_stored(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, detail.as_deref()))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((info, attempts, event)))
        })
    }

    /// Whether `webhook` has a pending delivery of `session` older than
    /// delivery `id` (`ordering: session`).
    pub fn earlier_pending(
        &self,
        webhook: &str,
        session: &str,
        id: i64,
    ) -> Result<bool, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_session
                   WHERE session = ?1 AND id < ?2 AND webhook = ?3 AND state = 'pending')",
            )?
            .query_row(params![session, id, webhook], |r| r.get(0))
        })
    }

    pub fn webhook_state(&self, webhook: &str) -> Result<WebhookState, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT disabled, failing_since, paused FROM webhook_state WHERE webhook = ?1",
            )?
            .query_row([webhook], |r| {
                Ok(WebhookState {
                    disabled: r.get(0)?,
                    failing_since: r.get(1)?,
                    paused: r.get::<_, i64>(2)? != 0,
                })
            })
            .optional()
            .map(Option::unwrap_or_default)
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// `text` for a `LIKE` pattern with `ESCAPE '\'`: its `%`, `_` and
/// `\` match themselves.
pub(super) fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Brings a store written by an earlier version up to this schema: the
/// deliveries' `session` column (for a session's deliveries), filled in
/// from the stored events once; the attempts' `detail` (what was sent and
/// what came back); the deliveries' reference to the event log and the
/// log's `logged`; and the whole indexes that partial ones replaced
/// dropped, unless `beside` a draining earlier process.
fn migrate(c: &Connection, beside: bool) -> rusqlite::Result<()> {
    let has_session: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('deliveries') WHERE name = 'session'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_session {
        c.execute_batch(
            "BEGIN;
             ALTER TABLE deliveries ADD COLUMN session TEXT;
             UPDATE deliveries SET session = CAST(json_extract(event, '$.event.embed_id') AS TEXT);
             COMMIT;",
        )?;
    }
    c.execute_batch("CREATE INDEX IF NOT EXISTS deliveries_session ON deliveries (session, id);")?;
    add_column(c, "deliveries", "event_row", "INTEGER")?;
    // The sweep's question, "does a delivery still send this event?". Row
    // ids only grow, so each entry is appended at the index's end.
    c.execute_batch(
        "CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_row) WHERE event_row IS NOT NULL;",
    )?;
    // Whole indexes of earlier versions, now partial ones (in SCHEMA).
    // Not while an earlier process drains beside this one: its
    // statements name them. The next start drops them.
    if !beside {
        c.execute_batch(
            "DROP INDEX IF EXISTS deliveries_due; DROP INDEX IF EXISTS deliveries_finished;",
        )?;
    }
    add_column(c, "events", "logged", "TEXT")?;
    add_column(c, "attempts", "detail", "TEXT")
}

/// Adds a nullable column to a table of an earlier version's store.
fn add_column(c: &Connection, table: &str, column: &str, kind: &str) -> rusqlite::Result<()> {
    let has: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))?;
    }
    Ok(())
}

/// [`EVENT_COLUMNS`], as a literal that [`DELIVERY_COLUMNS`] is built of.
macro_rules! event_columns {
    () => {
        "event, event_row, (SELECT event FROM events e WHERE e.rowid = deliveries.event_row), (SELECT logged FROM events e WHERE e.rowid = deliveries.event_row)"
    };
}

/// What the admin API reads of a delivery, in the order [`delivery_row`]
/// takes it: with the count of every attempt made (the `attempts` column
/// is the retry budget spent).
const DELIVERY_COLUMNS: &str = concat!(
    "SELECT id, webhook, event_uuid, state, attempts, part, next_at, last_status, created_at, updated_at, session, (SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = deliveries.id), ",
    event_columns!(),
    " FROM deliveries"
);

/// A delivery's columns that make the event it sends, in the order
/// [`EventColumns::read`] takes them: its own `event`, and the logged
/// event it refers to, if any.
const EVENT_COLUMNS: &str = event_columns!();

/// The columns [`EVENT_COLUMNS`] reads.
struct EventColumns {
    /// The delivery's own `event`: what it adds, or the whole event.
    own: String,
    /// The logged event's row (`None`: the whole event is in `own`).
    row: Option<i64>,
    logged_event: Option<String>,
    logged: Option<String>,
}

impl EventColumns {
    fn read(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            own: r.get(from)?,
            row: r.get(from + 1)?,
            logged_event: r.get(from + 2)?,
            logged: r.get(from + 3)?,
        })
    }

    /// The event the delivery sends, each part parsed once.
    fn stored(&self) -> Result<StoredEvent, String> {
        let Some(row) = self.row else {
            return serde_json::from_str(&self.own).map_err(|e| e.to_string());
        };
        let event = self
            .logged_event
            .as_deref()
            .ok_or_else(|| format!("its event (row {row}) is no longer in the log"))?;
        let event: Event = serde_json::from_str(event).map_err(|e| e.to_string())?;
        let logged: Logged = match self.logged.as_deref() {
            Some(json) => serde_json::from_str(json).map_err(|e| e.to_string())?,
            None => Logged::default(),
        };
        let own: Own = serde_json::from_str(&self.own).map_err(|e| e.to_string())?;
        Ok(StoredEvent::assemble(event, logged, own))
    }
}

/// The listing's kind (`?4`): 0 every one of the state, 1 failed (the
/// last attempt did not succeed), 2 held (the webhook is disabled).
const KIND: &str = "(?4 = 0
   OR (?4 = 1 AND last_status IS NOT NULL AND last_status NOT GLOB '2[0-9][0-9]')
   OR (?4 = 2 AND webhook IN (SELECT webhook FROM webhook_state WHERE disabled IS NOT NULL)))";

fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryInfo> {
    delivery_row(r).map(|(info, _)| info)
}

/// A row of [`DELIVERY_COLUMNS`]: the delivery as the admin API shows it,
/// and the event it sends (`None`: unreadable).
fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeliveryInfo, Option<StoredEvent>)> {
    let event = EventColumns::read(r, 12)?.stored().ok();
    let state: String = r.get(3)?;
    let next_at: i64 = r.get(6)?;
    let info = DeliveryInfo {
        id: r.get(0)?,
        webhook: r.get(1)?,
        session: r.get(10)?,
        event_uuid: r.get(2)?,
        event_type: event
            .as_ref()
            .map(|e| e.event.event_type.clone())
            .unwrap_or_default(),
        next_attempt_at: (state == "pending").then_some(next_at),
        test: event.as_ref().is_some_and(|e| e.test),
        state,
        attempts: r.get(11)?,
        retries_spent: r.get(4)?,
        held_reason: None,
        part: r.get(5)?,
        last_status: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    };
    Ok((info, event))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next attempt number, event sequence number and delivery id. All
/// are global and only grow, so they order a delivery's attempts and a
/// session's events without a `MAX()` lookup per insert (a bound-parameter
/// subquery that SQLite keeps re-preparing: it was 7% of the store
/// thread's time), and a delivery id is never given out twice in one run
/// (SQLite would reuse the largest id once its row is deleted; the
/// hand-off relies on ids growing).
#[derive(Clone, Copy)]
struct Counters {
    attempt: i64,
    event: i64,
    delivery: i64,
}

/// How far above the highest id a process opening the store beside a
/// draining one starts numbering: more than one process gives out in its
/// life (a million a second for twelve days), and i64 holds millions of
/// such leaps.
pub const LEAP: i64 = 1 << 40;

impl Counters {
    fn leap(self) -> Self {
        Self {
            attempt: self.attempt + LEAP,
            event: self.event + LEAP,
            delivery: self.delivery + LEAP,
        }
    }

    fn load(conn: &Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            attempt: conn.query_row("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts", [], |r| {
                r.get(0)
            })?,
            event: conn.query_row("SELECT COALESCE(MAX(seq), -1) + 1 FROM events", [], |r| {
                r.get(0)
            })?,
            delivery: conn.query_row(
                "SELECT COALESCE(MAX(id), 0) + 1 FROM deliveries",
                [],
                |r| r.get(0),
            )?,
        })
    }
}

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL frames into the database file every
/// `CHECKPOINT_EVERY`, on its own connection, in PASSIVE mode: it never
/// waits for (or blocks) the writer or readers. With only SQLite's
/// automatic checkpoint, all of that copying ran inside the writer's
/// commits, holding up every event accepted meanwhile: the end-to-end
/// p99 came from there. (Without the writer's own checkpoint, the WAL
/// never starts over under steady writes and grows without bound.)
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    loop {
        let stopping = !matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; tried again later");
        }
        if stopping {
            return;
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut counters: Counters,
    rx: mpsc::Receiver<Op>,
    committed: Arc<tokio::sync::Notify>,
    webhook_epoch: Arc<AtomicU64>,
    handoff: Arc<Handoff>,
    store: std::sync::Weak<Store>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        // A transient failure (disk full, I/O, busy) rolls the whole group
        // back; it is tried again, never dropped.
        let mut backoff = Duration::from_millis(50);
        let results = loop {
            match commit_group(&mut conn, &group, &mut counters) {
                Ok(results) => break results,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "store commit failed; retrying the group");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let accepted: u64 = results.iter().map(|r| r.accepted).sum();
        if accepted > 0 {
            if let Some(s) = store.upgrade() {
                if let Some(f) = lock(&s.on_accept).as_ref() {
                    f(accepted);
                }
            }
        }
        if group.iter().any(|op| matches!(op, Op::Webhook { .. })) {
            webhook_epoch.fetch_add(1, Ordering::Release);
        }
        hand_off(&handoff, &group, &results);
        traced_writes(&group);
        if results.iter().any(|r| r.wake) {
            committed.notify_waiters();
        }
        for (op, result) in group.into_iter().zip(results) {
            match op {
                Op::Requeue { reply, .. } => drop(reply.send(result.changed > 0)),
                Op::Replay { reply, .. } | Op::Retry { reply, .. } => {
                    let _ = reply.send(result.changed);
                }
                Op::Flush(reply) => drop(reply.send(())),
                Op::FlushAsync(reply) => drop(reply.send(())),
                Op::Outcome { reply, .. } => drop(reply.send(())),
                _ => {}
            }
        }
    }
}

/// The outbox write's span of each traced event the group committed.
fn traced_writes(group: &[Op]) {
    for op in group {
        if let Op::Accept {
            trace: Some(trace),
            at,
            deliveries,
            ..
        } = op
        {
            crate::telemetry::outbox_written(trace, *at, deliveries.len(), "embedded");
        }
    }
}

/// Gives the deliveries a group inserted to the hand-off, and has every
/// scheduler read the outbox again after an op that made deliveries
/// pending without inserting them.
fn hand_off(handoff: &Handoff, group: &[Op], results: &[Effect]) {
    let mut inserted = Vec::new();
    let mut reread = false;
    for (op, effect) in group.iter().zip(results) {
        match op {
            Op::InsertDelivery {
                webhook, stored, ..
            } => {
                for &(_, id) in &effect.inserted {
                    inserted.push((webhook.clone(), Due::fresh(id, stored.clone())));
                }
            }
            Op::Accept { deliveries, .. } => {
                for &(i, id) in &effect.inserted {
                    let (webhook, _, stored) = &deliveries[i];
                    inserted.push((webhook.clone(), Due::fresh(id, stored.clone())));
                }
            }
            Op::Requeue { .. } | Op::Replay { .. } | Op::Retry { .. } => {
                reread |= effect.changed > 0
            }
            Op::Webhook { change, .. } => {
                reread |= matches!(
                    change,
                    WebhookChange::Rename(_) | WebhookChange::Enable | WebhookChange::Delete
                )
            }
            _ => {}
        }
    }
    if !inserted.is_empty() {
        handoff.committed(inserted);
    }
    if reread {
        handoff.reread_all();
    }
}

/// Applies a group in one transaction. A statement that fails for a
/// reason of its own (a constraint) is logged and skipped; a transient
/// failure aborts the group, to be tried again.
fn commit_group(
    conn: &mut Connection,
    group: &[Op],
    counters: &mut Counters,
) -> rusqlite::Result<Vec<Effect>> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    // Numbers taken by a group that is rolled back are given out again.
    let mut next = *counters;
    for op in group {
        match apply(&tx, op, &mut next) {
            Ok(effect) => results.push(effect),
            Err(e) if transient(&e) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "store write refused; skipped");
                results.push(Effect::default());
            }
        }
    }
    tx.commit()?;
    *counters = next;
    Ok(results)
}

fn transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | OutOfMemory
                | CannotOpen
                | ReadOnly
        )
    )
}

#[derive(Default)]
struct Effect {
    wake: bool,
    accepted: u64,
    changed: usize,
    /// The deliveries this op inserted: their place among the op's
    /// deliveries, and their ids.
    inserted: Vec<(usize, i64)>,
}

/// A delivery row to insert, pending and due at `at`.
struct NewDelivery<'a> {
    webhook: &'a str,
    event_uuid: &'a str,
    /// What the delivery adds to its logged event, or the whole event
    /// (`event_row: None`).
    event: &'a str,
    session: Option<&'a str>,
    event_row: Option<i64>,
    at: i64,
}

/// Inserts a delivery (idempotent per webhook and event UUID) under the
/// next id; `place` is its place among the op's deliveries.
fn insert_delivery(
    tx: &rusqlite::Transaction<'_>,
    new: &NewDelivery<'_>,
    place: usize,
    counters: &mut Counters,
    effect: &mut Effect,
) -> rusqlite::Result<()> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO deliveries (id, webhook, event_uuid, event, state, attempts, part, next_at, created_at, updated_at, session, event_row)
             VALUES (?5, ?1, ?2, ?3, 'pending', 0, 0, ?4, ?4, ?4, ?6, ?7)",
        )?
        .execute(params![
            new.webhook,
            new.event_uuid,
            new.event,
            new.at,
            counters.delivery,
            new.session,
            new.event_row
        ])?;
    if n > 0 {
        effect.inserted.push((place, counters.delivery));
        effect.accepted += 1;
        effect.wake = true;
        counters.delivery += 1;
    }
    Ok(())
}

/// Applies one op inside the group's transaction.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    counters: &mut Counters,
) -> rusqlite::Result<Effect> {
    let mut effect = Effect::default();
    match op {
        Op::InsertDelivery {
            webhook,
            session,
            event_uuid,
            event,
            at,
            ..
        } => {
            let new = NewDelivery {
                webhook,
                event_uuid,
                event,
                session: session.as_deref(),
                event_row: None,
                at: *at,
            };
            insert_delivery(tx, &new, 0, counters, &mut effect)?;
        }
        Op::Accept {
            session,
            created_at,
            event,
            logged,
            event_uuid,
            delivery_session,
            deliveries,
            at,
            ..
        } => {
            // A delivery refers to the log's row by its row id, read
            // through the table's own B-tree.
            tx.prepare_cached(
                "INSERT INTO events (session, seq, created_at, event, logged) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![session, counters.event, created_at, event, logged])?;
            counters.event += 1;
            let row = tx.last_insert_rowid();
            for (i, (webhook, own, _)) in deliveries.iter().enumerate() {
                let new = NewDelivery {
                    webhook,
                    event_uuid,
                    event: own,
                    session: delivery_session.as_deref(),
                    event_row: Some(row),
                    at: *at,
                };
                insert_delivery(tx, &new, i, counters, &mut effect)?;
            }
        }
        Op::Outcome { record: r, .. } => {
            let at = now_ms();
            tx.prepare_cached(
                "INSERT INTO attempts (delivery_id, n, at, part, outcome, duration_ms, response, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                r.id,
                counters.attempt,
                at,
                r.part,
                r.outcome,
                r.duration.as_millis() as i64,
                r.response,
                r.detail
            ])?;
            counters.attempt += 1;
            // Only a pending delivery: one whose webhook was deleted while
            // the attempt ran is a dead letter and stays one.
            tx.prepare_cached("UPDATE deliveries SET state = ?2, attempts = ?3, part = ?4, next_at = ?5, last_status = ?6, updated_at = ?7 WHERE id = ?1 AND state = 'pending'")?
                .execute(params![r.id, r.state.name(), r.attempts, r.next_part, r.next_at, r.outcome, at])?;
        }
        Op::PutSession { key, value, at } => {
            tx.prepare_cached("INSERT INTO sessions (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET value = ?2, updated_at = ?3")?
                .execute(params![key, value, at])?;
        }
        Op::PutProgress {
            key,
            value,
            last_event_at,
            watched,
        } => {
            tx.prepare_cached("INSERT INTO session_progress (key, value, last_event_at, watched) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET value = ?2, last_event_at = ?3, watched = ?4")?
                .execute(params![key, value, last_event_at, *watched as i64])?;
        }
        Op::AppendEvent { session, at, event } => {
            tx.prepare_cached(
                "INSERT INTO events (session, seq, created_at, event) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![session, counters.event, at, event])?;
            counters.event += 1;
        }
        Op::Webhook { webhook, change } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO webhook_state (webhook, paused) VALUES (?1, 0)",
            )?
            .execute([webhook])?;
            let now = now_ms();
            match change {
                WebhookChange::Disable(reason) => {
                    tx.prepare_cached("UPDATE webhook_state SET disabled = COALESCE(disabled, ?2) WHERE webhook = ?1")?.execute(params![webhook, reason])?;
                }
                WebhookChange::Failure { now, pause_after } => {
                    tx.prepare_cached(
                        "UPDATE webhook_state SET
                           failing_since = CASE WHEN failing_since IS NULL OR last_failure IS NULL OR ?2 - last_failure > ?3 THEN ?2 ELSE failing_since END,
                           last_failure = ?2
                         WHERE webhook = ?1",
                    )?
                    .execute(params![webhook, now, pause_after])?;
                    tx.prepare_cached("UPDATE webhook_state SET paused = 1 WHERE webhook = ?1 AND ?2 - failing_since >= ?3")?
                        .execute(params![webhook, now, pause_after])?;
                }
                WebhookChange::Success => {
                    tx.prepare_cached("UPDATE webhook_state SET failing_since = NULL, last_failure = NULL, paused = 0 WHERE webhook = ?1")?
                        .execute([webhook])?;
                }
                WebhookChange::Enable => {
                    tx.prepare_cached("UPDATE webhook_state SET disabled = NULL, failing_since = NULL, last_failure = NULL, paused = 0 WHERE webhook = ?1")?
                        .execute([webhook])?;
                    effect.wake = true;
                }
                WebhookChange::Rename(to) => {
                    tx.prepare_cached("DELETE FROM webhook_state WHERE webhook = ?2")?
                        .execute(params![webhook, to])?;
                    tx.prepare_cached("UPDATE webhook_state SET webhook = ?2 WHERE webhook = ?1")?
                        .execute(params![webhook, to])?;
                    tx.prepare_cached("UPDATE OR IGNORE deliveries SET webhook = ?2, updated_at = ?3 WHERE webhook = ?1 AND state = 'pending'")?
                        .execute(params![webhook, to, now])?;
                    effect.wake = true;
                }
                WebhookChange::Delete => {
                    tx.prepare_cached("DELETE FROM webhook_state WHERE webhook = ?1")?
                        .execute([webhook])?;
                    tx.prepare_cached("UPDATE deliveries SET state = 'dead', last_status = 'webhook deleted', updated_at = ?2 WHERE webhook = ?1 AND state = 'pending'")?
                        .execute(params![webhook, now])?;
                }
            }
        }
        Op::Requeue { id, .. } => {
            // A delivered row is sent again from its first part; a dead one
            // resumes at the part that failed.
            effect.changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET part = CASE WHEN state = 'delivered' THEN 0 ELSE part END,
                       state = 'pending', attempts = 0, next_at = ?2, updated_at = ?2 WHERE id = ?1",
                )?
                .execute(params![id, now_ms()])?;
            effect.wake = effect.changed > 0;
        }
        Op::Replay {
            webhook,
            since,
            include_delivered,
            ..
        } => {
            effect.changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET part = CASE WHEN state = 'delivered' THEN 0 ELSE part END,
                       state = 'pending', attempts = 0, next_at = ?3, updated_at = ?3
                     WHERE webhook = ?1 AND created_at >= ?2 AND (state = 'dead' OR (?4 = 1 AND state = 'delivered'))",
                )?
                .execute(params![webhook, since, now_ms(), *include_delivered as i64])?;
            effect.wake = effect.changed > 0;
        }
        Op::Retry { retry, .. } => {
            effect.changed = tx
                .prepare_cached(&format!(
                    "UPDATE deliveries SET part = CASE WHEN state = 'delivered' THEN 0 ELSE part END,
                       state = 'pending', attempts = 0, next_at = ?7, updated_at = ?7
                     WHERE {RETRY_MATCHES}"
                ))?
                .execute(params![
                    retry.webhook,
                    retry.since,
                    retry.session,
                    retry.state.name(),
                    retry.failed as i64,
                    serde_json::to_string(&retry.webhooks).unwrap_or_default(),
                    now_ms()
                ])?;
            effect.wake = effect.changed > 0;
        }
        Op::PutHours { rows, oldest } => {
            let mut put = tx.prepare_cached(
                "INSERT INTO webhook_hours (webhook, hour, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (webhook, hour) DO UPDATE SET value = ?3",
            )?;
            for (webhook, hour, value) in rows {
                put.execute(params![webhook, hour, value])?;
            }
            tx.prepare_cached("DELETE FROM webhook_hours WHERE hour < ?1")?
                .execute([oldest])?;
        }
        Op::Audit { at, entry } => {
            tx.prepare_cached("INSERT INTO audit (at, entry) VALUES (?1, ?2)")?
                .execute(params![at, entry])?;
        }
        Op::Sweep { cutoff } => {
            tx.execute("DELETE FROM audit WHERE at < ?1", [cutoff])?;
            tx.execute("DELETE FROM sessions WHERE updated_at < ?1", [cutoff])?;
            tx.execute(
                "DELETE FROM session_progress WHERE last_event_at < ?1",
                [cutoff],
            )?;
            for state in ["delivered", "dead"] {
                tx.execute(
                    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE state != 'pending' AND state = ?1 AND updated_at < ?2)",
                    params![state, cutoff],
                )?;
                tx.execute(
                    "DELETE FROM deliveries WHERE state != 'pending' AND state = ?1 AND updated_at < ?2",
                    params![state, cutoff],
                )?;
            }
            // An event a kept delivery refers to stays: it is what the
            // delivery sends (a retry, a replay). One lookup in
            // `deliveries_event` per event past the retention.
            tx.execute(
                "DELETE FROM events WHERE created_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_row = events.rowid)",
                [cutoff],
            )?;
        }
        Op::Flush(_) | Op::FlushAsync(_) => {}
    }
    Ok(effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(uuid: &str) -> StoredEvent {
        StoredEvent {
            trace: None,
            event: Event {
                uuid: uuid.into(),
                embed_id: 1.into(),
                embed_jwt: serde_json::Value::Null,
                environment_name: "P".into(),
                template_key: serde_json::Value::Null,
                event_type: "t".into(),
                trigger_type: "user".into(),
                data: serde_json::json!({}),
                created_at: now_ms() as f64 / 1000.0,
            },
            session: None,
            request_id: None,
            test: false,
            registered: None,
        }
    }

    /// An attempt on delivery `id` (part 0) that leaves it in `state`.
    fn outcome(id: i64, state: State, attempts: u32, next_at: i64, label: &str) -> AttemptRecord {
        AttemptRecord {
            id,
            part: 0,
            outcome: label.into(),
            duration: Duration::ZERO,
            response: None,
            detail: None,
            state,
            attempts,
            next_part: 0,
            next_at,
        }
    }

    #[test]
    fn deliveries_survive_reopening_and_insert_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_delivery("w", event("e1")).unwrap();
        store.insert_delivery("w", event("e1")).unwrap();
        store.insert_delivery("w", event("e2")).unwrap();
        store.flush().unwrap();
        store.close();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let due = store.due("w", now_ms() + 1, 10, &HashSet::new()).unwrap();
        assert_eq!(
            due.iter()
                .map(|d| d.event.event.uuid.as_str())
                .collect::<Vec<_>>(),
            ["e1", "e2"]
        );
        let busy: HashSet<i64> = [due[0].id].into();
        assert_eq!(store.due("w", now_ms() + 1, 10, &busy).unwrap().len(), 1);
    }

    /// The deliveries table as versions before sessions were kept made it.
    const EARLIER_DELIVERIES: &str = "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, webhook TEXT NOT NULL, event_uuid TEXT NOT NULL,
        event TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        part INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, last_status TEXT,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, UNIQUE (webhook, event_uuid));";

    /// A database in `dir` with a table as an earlier version made it.
    fn earlier_store(dir: &Path, schema: &str) -> Connection {
        let c = Connection::open(dir.join("taphook.db")).unwrap();
        c.execute_batch(schema).unwrap();
        c
    }

    #[test]
    fn a_store_from_before_sessions_were_kept_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The deliveries table as earlier versions made it.
            let c = earlier_store(dir.path(), EARLIER_DELIVERIES);
            let old = serde_json::to_string(&event("old")).unwrap();
            c.execute(
                "INSERT INTO deliveries VALUES (1, 'w', 'old', ?1, 'dead', 1, 0, 0, '500', 0, 0)",
                [old],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store.insert_delivery("w", event("new")).unwrap();
        store.flush().unwrap();
        let of_session = |key: &str| {
            store
                .list_deliveries(Filter::Any, None, Some(key), 0, 10)
                .unwrap()
                .into_iter()
                .map(|d| (d.event_uuid, d.session))
                .collect::<Vec<_>>()
        };
        let one = Some("1".to_string());
        assert_eq!(
            of_session("1"),
            [("old".to_string(), one.clone()), ("new".to_string(), one)]
        );
        assert!(of_session("2").is_empty());
        // Opening it again finds the column there.
        drop(store);
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .list_deliveries(Filter::Any, None, Some("1"), 0, 10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn dead_deliveries_replay_and_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_delivery("w", event("e1")).unwrap();
        store.flush().unwrap();
        let id = store.due("w", now_ms() + 1, 1, &HashSet::new()).unwrap()[0].id;
        store
            .record_outcome(AttemptRecord {
                duration: Duration::from_millis(12),
                response: Some("oops".into()),
                detail: None,
                ..outcome(id, State::Dead, 3, 0, "500")
            })
            .unwrap();
        store.flush().unwrap();
        assert!(store
            .due("w", now_ms() + 1, 1, &HashSet::new())
            .unwrap()
            .is_empty());
        let dead = store
            .list_deliveries(Filter::State(State::Dead), None, None, 0, 10)
            .unwrap();
        assert_eq!(dead.len(), 1);
        let (_, attempts, _) = store.delivery(id).unwrap().unwrap();
        assert_eq!(
            (
                attempts[0].outcome.as_str(),
                attempts[0]
                    .response
                    .as_ref()
                    .and_then(|r| r.body.as_deref())
            ),
            ("500", Some("oops"))
        );
        assert_eq!(store.replay("w", 0, false).unwrap(), 1);
        assert_eq!(
            store
                .due("w", now_ms() + 1, 1, &HashSet::new())
                .unwrap()
                .len(),
            1
        );
        assert!(store.requeue(id).unwrap());
        assert!(!store.requeue(999).unwrap());
    }

    #[test]
    fn due_follows_the_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for uuid in ["a", "b", "c", "d", "e"] {
            store.insert_delivery("w", event(uuid)).unwrap();
            store.insert_delivery("other", event(uuid)).unwrap();
        }
        store.flush().unwrap();
        let now = now_ms();
        let all = store.due("w", now + 1, 10, &HashSet::new()).unwrap();
        let id = |uuid: &str| all.iter().find(|d| d.event.event.uuid == uuid).unwrap().id;
        // Retries push some later (b latest), one not yet due (d).
        let later = [
            ("b", now - 10),
            ("e", now - 30),
            ("a", now - 20),
            ("d", now + 60_000),
        ];
        for (uuid, at) in later {
            store
                .record_outcome(outcome(id(uuid), State::Pending, 1, at, "500"))
                .unwrap();
        }
        store
            .record_outcome(outcome(id("c"), State::Pending, 1, now - 20, "500"))
            .unwrap();
        store.flush().unwrap();
        let order = |busy: &HashSet<i64>, limit| {
            store
                .due("w", now, limit, busy)
                .unwrap()
                .into_iter()
                .map(|d| d.event.event.uuid.clone())
                .collect::<Vec<_>>()
        };
        // By due time, then id: e, then a and c (same time, a first by
        // id), then b; d is not due.
        assert_eq!(order(&HashSet::new(), 10), ["e", "a", "c", "b"]);
        assert_eq!(order(&HashSet::new(), 2), ["e", "a"]);
        assert_eq!(order(&[id("e"), id("c")].into(), 2), ["a", "b"]);
        assert_eq!(
            store.next_due_at("w", &[id("e")].into(), i64::MAX).unwrap(),
            Some(now - 20)
        );
    }

    #[test]
    fn attempts_and_events_stay_numbered_in_order_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_delivery("w", event("e1")).unwrap();
        store.flush().unwrap();
        let id = store.due("w", now_ms() + 1, 1, &HashSet::new()).unwrap()[0].id;
        let attempt = |store: &Store, label: &str| {
            store
                .record_outcome(outcome(id, State::Pending, 1, 0, label))
                .unwrap()
        };
        attempt(&store, "500");
        attempt(&store, "429");
        store.append_event("s1", &event("x1").event).unwrap();
        store.append_event("s2", &event("y1").event).unwrap();
        store.append_event("s1", &event("x2").event).unwrap();
        store.flush().unwrap();
        store.close();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        attempt(&store, "200");
        store.append_event("s1", &event("x3").event).unwrap();
        store.flush().unwrap();
        let (_, attempts, _) = store.delivery(id).unwrap().unwrap();
        assert_eq!(
            attempts
                .iter()
                .map(|a| (a.n, a.outcome.as_str()))
                .collect::<Vec<_>>(),
            [(1, "500"), (2, "429"), (3, "200")]
        );
        let events = store.events("s1", 0, 0, 10).unwrap();
        assert_eq!(
            events.iter().map(|e| e.1.uuid.as_str()).collect::<Vec<_>>(),
            ["x1", "x2", "x3"]
        );
        // Paging from a returned seq goes on from there.
        let rest = store.events("s1", events[1].0, 0, 10).unwrap();
        assert_eq!(
            rest.iter().map(|e| e.1.uuid.as_str()).collect::<Vec<_>>(),
            ["x2", "x3"]
        );
    }

    /// An event of session 1, accepted with a delivery to `plain` and one
    /// through a registered event to `registered`.
    fn accepted(uuid: &str) -> Accepted {
        let mut e = event(uuid);
        e.session = serde_json::json!({"template_key": "orders"})
            .as_object()
            .cloned();
        e.request_id = Some("req-1".into());
        let stored = Arc::new(e);
        let registered = Arc::new(StoredEvent {
            registered: Some(serde_json::json!({"name": "r"})),
            ..(*stored).clone()
        });
        Accepted {
            event: stored.clone(),
            session: Some("1".into()),
            deliveries: vec![("plain".into(), stored), ("registered".into(), registered)],
        }
    }

    fn due_one(store: &Store, webhook: &str) -> Due {
        let mut due = store
            .due(webhook, now_ms() + 1, 10, &HashSet::new())
            .unwrap();
        assert_eq!(due.len(), 1, "{webhook}");
        due.remove(0)
    }

    #[test]
    fn an_accepted_event_is_one_log_row_its_deliveries_refer_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.accept(accepted("e1")).unwrap();
        store.flush().unwrap();
        let c = Connection::open(dir.path().join("taphook.db")).unwrap();
        let (row, logged_event): (i64, String) = c
            .query_row("SELECT rowid, event FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let rows: Vec<(String, String, Option<i64>)> = c
            .prepare("SELECT webhook, event, event_row FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("plain".into(), "{}".into(), Some(row)),
                (
                    "registered".into(),
                    r#"{"registered":{"name":"r"}}"#.into(),
                    Some(row)
                )
            ],
            "a delivery keeps only what it adds to the logged event"
        );
        assert_eq!(
            serde_json::from_str::<Event>(&logged_event).unwrap().uuid,
            "e1"
        );
        // What each delivery sends is whole again.
        let plain = due_one(&store, "plain");
        let whole = |d: &StoredEvent| {
            (
                d.event.uuid.clone(),
                d.session.clone(),
                d.request_id.clone(),
                d.registered.clone(),
            )
        };
        let fields = serde_json::json!({"template_key": "orders"})
            .as_object()
            .cloned();
        let req = Some("req-1".to_string());
        assert_eq!(
            whole(&plain.event),
            ("e1".into(), fields.clone(), req.clone(), None)
        );
        let registered = due_one(&store, "registered");
        assert_eq!(
            whole(&registered.event),
            (
                "e1".into(),
                fields,
                req,
                Some(serde_json::json!({"name": "r"}))
            )
        );
        let (info, _, sent) = store.delivery(registered.id).unwrap().unwrap();
        assert_eq!(info.event_type, "t");
        assert!(sent.unwrap().registered.is_some());
        assert_eq!(store.events("1", 0, 0, 10).unwrap().len(), 1);

        // Past the retention, the event stays while a delivery needs it...
        let later = now_ms() + 60_000;
        store
            .record_outcome(outcome(plain.id, State::Delivered, 1, 0, "200"))
            .unwrap();
        store.sweep(later).unwrap();
        store.flush().unwrap();
        assert_eq!(due_one(&store, "registered").event.event.uuid, "e1");
        // ...and goes with the last one.
        store
            .record_outcome(outcome(registered.id, State::Dead, 1, 0, "500"))
            .unwrap();
        store.sweep(later).unwrap();
        store.flush().unwrap();
        let left: (i64, i64) = c
            .query_row(
                "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM deliveries)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(left, (0, 0));
    }

    #[test]
    fn an_event_log_from_before_deliveries_referred_to_it_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The event log as earlier versions made it.
            let c = earlier_store(
                dir.path(),
                "CREATE TABLE events (session TEXT NOT NULL, seq INTEGER NOT NULL, created_at INTEGER NOT NULL,
                   event TEXT NOT NULL, PRIMARY KEY (session, seq));",
            );
            let old = serde_json::to_string(&event("old").event).unwrap();
            c.execute(
                "INSERT INTO events (rowid, session, seq, created_at, event) VALUES (5, '1', 4, 0, ?1)",
                [old],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store.insert_delivery("plain", event("inline")).unwrap();
        store.accept(accepted("new")).unwrap();
        store.flush().unwrap();
        let due = store
            .due("plain", now_ms() + 1, 10, &HashSet::new())
            .unwrap();
        assert_eq!(
            due.iter()
                .map(|d| d.event.event.uuid.as_str())
                .collect::<Vec<_>>(),
            ["inline", "new"],
            "a delivery with its event inline and one referring to the log"
        );
        let logged: Vec<_> = store
            .events("1", 0, 0, 10)
            .unwrap()
            .into_iter()
            .map(|(seq, e)| (seq, e.uuid))
            .collect();
        assert_eq!(logged, [(4, "old".to_string()), (5, "new".to_string())]);
    }

    #[test]
    fn the_sweep_reads_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        let c = Connection::open(dir.path().join("taphook.db")).unwrap();
        let plan: String = c
            .query_row(
                "EXPLAIN QUERY PLAN DELETE FROM deliveries WHERE state != 'pending' AND state = ?1 AND updated_at < ?2",
                params!["dead", 0],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("deliveries_ended"), "{plan}");
        let plans: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN DELETE FROM events WHERE created_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_row = events.rowid)",
            )
            .unwrap()
            .query_map([0], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plans.iter().any(|p| p.contains("deliveries_event")),
            "an event's deliveries are looked up, not scanned: {plans:?}"
        );
    }

    #[test]
    fn whole_indexes_of_earlier_versions_stay_while_one_drains_beside() {
        let dir = tempfile::tempdir().unwrap();
        earlier_store(
            dir.path(),
            &format!("{EARLIER_DELIVERIES} CREATE INDEX deliveries_due ON deliveries (webhook, state, next_at, id);"),
        );
        let has = |name: &str| {
            Connection::open(dir.path().join("taphook.db"))
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                    [name],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                == 1
        };
        let beside = Store::open_beside(dir.path(), Durability::Full).unwrap();
        assert!(
            has("deliveries_due"),
            "the draining process's statements name it"
        );
        assert!(has("deliveries_open"));
        beside.close();
        drop(beside);
        let _store = Store::open(dir.path()).unwrap();
        assert!(!has("deliveries_due"), "dropped at the next start");
        assert!(has("deliveries_open"));
    }
}
