//! The pipeline behind the tap: exchange → derive → dedup → event log and
//! funnel → fan-out (filter) → outbox, on every core.
//!
//! One task takes the exchanges in arrival order, matches their routes and
//! builds their documents ([`Deriver::prepare`]), and hands each to one of
//! `threads` lanes by its session: a session's steps go to one lane, in
//! order, and the lanes derive, dedup and fan out in parallel. An exchange
//! found by an alias (`session_alias`) goes to its session's lane; while
//! an exchange that makes aliases is still in a lane, one whose key is
//! neither a session nor a known alias waits for it, so an alias is never
//! looked for before it is made. The funnel's stall checks run on the
//! first task, between batches. Deliveries are written to the outbox
//! (group-committed by the store); the deliver stage takes them from there.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use arc_swap::ArcSwap;

use crate::app::Shared;
use crate::dedup::Dedup;
use crate::derive::{alias_key, Deriver, Exchange, Ready};
use crate::event::DerivedEvent;
use crate::filter::{fan_out, Verdict};
use crate::funnel::{Funnel, FunnelConfig};
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::store::sqlite::{now_ms, Store};
use crate::store::StoredEvent;
use crate::store::{session_key, Accepted, Outbox, SessionStore};
use crate::telemetry;
use crate::traffic::record::Recorder;

/// How many waiting exchanges the pipeline takes at once: their sessions
/// are read together ([`crate::store::SessionStore::prefetch`]).
const BATCH: usize = 64;

/// How many prepared exchanges wait in each lane at most: the tap's queue
/// holds the rest, so `tap.when_full` applies as before.
const LANE_QUEUE: usize = 2 * BATCH;

/// An event pushed through the admin API (`POST /v1/events`), and where
/// to answer whether it was new (`false`: a duplicate of its UUID).
pub struct Pushed {
    pub event: DerivedEvent,
    pub reply: oneshot::Sender<bool>,
}

/// Takes exchanges from the tap and hands them to the lanes.
pub struct Pipeline {
    core: Arc<Core>,
    /// `record:` in the config: every exchange written to HAR files.
    recorder: Option<Recorder>,
    lanes: usize,
}

/// One prepared exchange on its way to a lane; `made` is dropped once
/// the lane has derived it (its aliases are then in the session store).
struct Work {
    exchange: Exchange,
    ready: Ready,
    made: Option<oneshot::Sender<()>>,
}

/// What the pipeline reads and writes, each through what it uses of it:
/// the rules as they are now, the metrics, the sessions and the outbox
/// (whichever store backs them), and the funnel's progress (kept in the
/// embedded store with either backend).
pub struct Parts {
    pub rules: Arc<ArcSwap<Rules>>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<dyn SessionStore>,
    pub outbox: Arc<dyn Outbox>,
    pub progress: Arc<Store>,
    pub deriver: Deriver,
    pub dedup: Dedup,
    pub funnel: FunnelConfig,
    /// Stalled sessions are reported in this environment's name.
    pub environment_name: String,
    /// Lanes: `threads`.
    pub lanes: usize,
}

impl Parts {
    /// The pipeline's parts, from the running process's.
    pub fn of(shared: &Shared) -> Self {
        let config = &shared.config;
        Self {
            rules: shared.rules.clone(),
            metrics: shared.metrics.clone(),
            sessions: shared.sessions.clone(),
            outbox: shared.outbox.clone(),
            progress: shared.store.clone(),
            deriver: Deriver {
                environment_name: config.environment_name.clone(),
                jwt_hs256_secret: config
                    .jwt_hs256_secret
                    .as_ref()
                    .map(|s| s.expose().as_bytes().to_vec()),
                hash_key: shared.hash_key.clone(),
            },
            dedup: Dedup::new(config.dedup_capacity, config.dedup_ttl),
            funnel: config.funnel.clone(),
            environment_name: config.environment_name.clone(),
            lanes: config.threads,
        }
    }
}

/// What every lane shares: derive's settings, dedup, the funnel, the
/// sessions and the outbox.
struct Core {
    rules: Arc<ArcSwap<Rules>>,
    metrics: Arc<Metrics>,
    sessions: Arc<dyn SessionStore>,
    outbox: Arc<dyn Outbox>,
    deriver: Deriver,
    dedup: Dedup,
    /// The funnel's progress rows (embedded with either backend).
    progress: Arc<Store>,
    funnel: Funnel,
    /// How often stalled sessions are looked for (`None`: never).
    stall_checks: Option<std::time::Duration>,
    environment_name: String,
}

impl Pipeline {
    pub fn new(parts: Parts) -> Self {
        let core = Core {
            stall_checks: parts.funnel.check_interval(),
            funnel: Funnel::new(parts.funnel, parts.metrics.clone(), parts.progress.clone()),
            rules: parts.rules,
            metrics: parts.metrics,
            sessions: parts.sessions,
            outbox: parts.outbox,
            deriver: parts.deriver,
            dedup: parts.dedup,
            progress: parts.progress,
            environment_name: parts.environment_name,
        };
        Self {
            lanes: parts.lanes.max(1),
            core: Arc::new(core),
            recorder: None,
        }
    }

    /// Records every exchange the pipeline receives.
    pub fn with_recorder(mut self, recorder: Option<Recorder>) -> Self {
        self.recorder = recorder;
        self
    }
}

impl Core {
    /// Dedups one event and hands it to every webhook that should get it;
    /// `false` when it was a duplicate. Every log line about it carries its
    /// UUID and its request's id.
    pub fn accept(&self, event: DerivedEvent, rules: &Rules) -> bool {
        let mut traced = event.trace.as_ref().and_then(|parent| {
            telemetry::EventSpan::start(
                parent,
                &event.event.event_type,
                &event.event.uuid,
                session_key(&event.event.embed_id).as_deref(),
            )
        });
        // The event's span, or in a trace not sampled the context it came
        // with, passed on to the receiver as it is.
        let trace = traced
            .as_ref()
            .map(telemetry::EventSpan::context)
            .or_else(|| event.trace.clone());
        let span = tracing::info_span!(
            "event",
            event = %event.event.uuid,
            event_type = %event.event.event_type,
            request_id = event.request_id.as_deref(),
            trace_id = trace.as_ref().map(telemetry::Parent::trace_id),
        );
        let _entered = span.enter();
        let metrics = &self.metrics;
        metrics
            .events_derived
            .with_label_values(&[&event.event.event_type])
            .inc();
        if !self.dedup.first_seen(&event.event.uuid) {
            if let Some(span) = traced.as_mut() {
                span.duplicate();
            }
            metrics.events_duplicate.inc();
            tracing::debug!("duplicate event dropped");
            return false;
        }
        tracing::debug!("event derived");
        metrics.activity.event(crate::store::sqlite::now_ms());
        self.funnel.observe(&event.event, event.new_session);
        let mut deliver = Vec::new();
        for decision in fan_out(&event, rules) {
            match decision.verdict {
                Verdict::Deliver => {
                    let registered = decision
                        .registered
                        .as_ref()
                        .and_then(|name| rules.registered.iter().find(|r| &r.name == name))
                        .map(|r| r.reference(&event));
                    deliver.push((decision.webhook.key.clone(), registered));
                }
                Verdict::FilterRejected => metrics
                    .filter_rejected
                    .with_label_values(&[&decision.webhook.key])
                    .inc(),
                Verdict::FilterError(e) => {
                    metrics
                        .filter_rejected
                        .with_label_values(&[&decision.webhook.key])
                        .inc();
                    tracing::warn!(webhook = %decision.webhook.key, error = %e, "filter failed to evaluate; event not delivered");
                }
                Verdict::NotSubscribed
                | Verdict::NotAssigned
                | Verdict::OtherMode
                | Verdict::OtherImportIdentifier => {}
            }
        }
        if let Some(span) = traced.as_mut() {
            span.deliveries(deliver.len());
        }
        let trace = trace.as_ref().map(telemetry::Parent::traceparent);
        self.keep(accepted(event, deliver, trace));
        true
    }

    /// Hands an accepted event and its deliveries to the outbox, in one
    /// write (the outbox skips an event with nothing to keep).
    fn keep(&self, accepted: Accepted) {
        let deliveries = accepted.deliveries.len();
        if let Err(e) = self.outbox.accept(accepted) {
            self.metrics
                .events_dropped
                .with_label_values(&["store_unavailable"])
                .inc_by(deliveries as u64);
            tracing::error!(error = %e, deliveries, "event not accepted by the store");
        }
    }
}

/// The event as it is kept, and each delivery of it: the event is moved,
/// not copied, and a delivery that adds nothing (no registered event)
/// shares it.
fn accepted(
    event: DerivedEvent,
    deliver: Vec<(String, Option<serde_json::Value>)>,
    trace: Option<String>,
) -> Accepted {
    let session = session_key(&event.event.embed_id);
    let stored = Arc::new(StoredEvent {
        event: event.event,
        session: event.session,
        registered: None,
        request_id: event.request_id,
        test: false,
        trace,
    });
    let deliveries = deliver
        .into_iter()
        .map(|(webhook, registered)| match registered {
            None => (webhook, stored.clone()),
            Some(registered) => {
                let own = StoredEvent {
                    registered: Some(registered),
                    ..(*stored).clone()
                };
                (webhook, Arc::new(own))
            }
        })
        .collect();
    Accepted {
        event: stored,
        session,
        deliveries,
    }
}

impl Pipeline {
    /// Processes exchanges until every sender (the tap) is gone, so an
    /// exchange the proxy finished during shutdown is still derived, and
    /// until every lane has derived what it was given; looks for stalled
    /// sessions in between.
    pub async fn run(
        self,
        mut receiver: mpsc::Receiver<Exchange>,
        mut pushed: mpsc::Receiver<Pushed>,
    ) {
        let every = self.core.stall_checks;
        let mut ticks =
            tokio::time::interval(every.unwrap_or(std::time::Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lanes = JoinSet::new();
        let mut dispatch = Dispatch {
            core: self.core.clone(),
            lanes: (0..self.lanes)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(LANE_QUEUE);
                    lanes.spawn(lane(self.core.clone(), rx));
                    tx
                })
                .collect(),
            making: VecDeque::new(),
            next: 0,
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                taken = receiver.recv_many(&mut batch, BATCH) => match taken {
                    0 => break,
                    _ => {
                        if let Some(recorder) = &self.recorder {
                            batch.iter().for_each(|e| recorder.record(e));
                        }
                        dispatch.batch(&mut batch).await;
                    }
                },
                Some(p) = pushed.recv() => {
                    let rules = self.core.rules.load_full();
                    let _ = p.reply.send(self.core.accept(p.event, &rules));
                }
                _ = ticks.tick(), if every.is_some() => self.core.report_stalls().await,
            }
        }
        drop(dispatch);
        while lanes.join_next().await.is_some() {}
        tracing::debug!("pipeline drained");
    }
}

/// Derives and accepts the exchanges of one lane, in the order given.
async fn lane(core: Arc<Core>, mut rx: mpsc::Receiver<Work>) {
    let mut taken = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut taken, BATCH).await > 0 {
        for work in taken.drain(..) {
            core.derive(work);
        }
        // Let the other lanes and the deliver stage run between batches.
        tokio::task::yield_now().await;
    }
}

/// Hands prepared exchanges to lanes by session.
struct Dispatch {
    core: Arc<Core>,
    lanes: Vec<mpsc::Sender<Work>>,
    /// Exchanges that make aliases, not yet derived by their lane.
    making: VecDeque<oneshot::Receiver<()>>,
    /// The lane of the next exchange that has no session.
    next: usize,
}

impl Dispatch {
    /// Prepares a batch of exchanges, reads the sessions they need all at
    /// once (a remote store answers many reads in the time of one), and
    /// hands each to its lane.
    async fn batch(&mut self, batch: &mut Vec<Exchange>) {
        self.making
            .retain_mut(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        let rules = self.core.rules.load_full();
        let deriver = &self.core.deriver;
        // Each exchange's session keys are worked out once: for the
        // prefetch and for its lane.
        let ready: Vec<_> = batch
            .drain(..)
            .filter_map(|e| {
                let ready = deriver.prepare_ready(&e, rules.clone())?;
                let keys = ready.prepared().route_keys();
                Some((ready, keys, e))
            })
            .collect();
        let sessions = &self.core.sessions;
        if sessions.prefetches() {
            let keys = ready
                .iter()
                .flat_map(|(r, keys, _)| r.prepared().session_keys(keys))
                .collect();
            sessions.prefetch(keys).await;
        }
        for (ready, keys, exchange) in ready {
            let lane = self.lane_of(&ready, keys).await;
            let made = ready.prepared().makes_aliases().then(|| {
                let (tx, rx) = oneshot::channel();
                self.making.push_back(rx);
                tx
            });
            let work = Work {
                exchange,
                ready,
                made,
            };
            if self.lanes[lane].send(work).await.is_err() {
                tracing::error!(lane, "pipeline lane gone; exchange not derived");
            }
        }
    }

    /// The lane of an exchange whose routes give `route_keys`: its first
    /// session's (an alias's session's), or the next in turn when it has
    /// none.
    async fn lane_of(&mut self, ready: &Ready, route_keys: Vec<String>) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        let prepared = ready.prepared();
        let Some(key) = route_keys.into_iter().next() else {
            self.next = (self.next + 1) % self.lanes.len();
            return self.next;
        };
        let session = if prepared.aliases() {
            self.canonical(key).await
        } else {
            key
        };
        let mut hasher = std::hash::DefaultHasher::new();
        session.hash(&mut hasher);
        (hasher.finish() % self.lanes.len() as u64) as usize
    }

    /// The session `key` names: itself when it is one, the session it is
    /// an alias of, or (neither) itself once every exchange that could
    /// still make it an alias has been derived.
    async fn canonical(&mut self, key: String) -> String {
        let sessions = &self.core.sessions;
        if sessions.contains(&key) {
            return key;
        }
        while let Some(rx) = self.making.pop_front() {
            let _ = rx.await;
        }
        let alias = alias_key(&key);
        if !sessions.contains(&alias) {
            return key;
        }
        sessions
            .get(&alias)
            .and_then(|alias| session_key(&alias.key))
            .unwrap_or(key)
    }
}

impl Core {
    /// Derives one exchange and accepts its events.
    fn derive(&self, work: Work) {
        let Work {
            exchange,
            ready,
            made,
        } = work;
        let events = match &exchange.trace {
            None => self
                .deriver
                .derive_prepared(ready.prepared(), &exchange, &*self.sessions),
            Some(parent) => {
                let start = std::time::SystemTime::now();
                let (mut events, fired) =
                    self.deriver
                        .derive_fired(ready.prepared(), &exchange, &*self.sessions);
                let span = telemetry::derive(parent, start, fired, events.len());
                for e in &mut events {
                    e.trace = Some(span.clone());
                }
                events
            }
        };
        drop(made);
        for event in events {
            let _ = self.accept(event, ready.rules());
        }
    }

    /// Accepts a `session_stalled` event for every session idle past
    /// `funnel.stall_after`, and waits until they are committed, so the
    /// next look does not find them again.
    async fn report_stalls(&self) {
        let stalls = self
            .funnel
            .stalls(now_ms(), &self.environment_name, &*self.sessions);
        match stalls {
            Ok(events) if !events.is_empty() => {
                let rules = self.rules.load_full();
                for event in events {
                    tracing::info!(session = %event.event.embed_id, "session stalled");
                    let _ = self.accept(event, &rules);
                }
                if let Err(e) = self.progress.committed_now().await {
                    tracing::error!(error = %e, "stalls not committed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot look for stalled sessions"),
        }
        self.funnel.count_open();
    }
}
