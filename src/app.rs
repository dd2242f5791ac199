//! Wiring: one Pingora `Server` with the proxy, the pipeline, the admin
//! listener and the rules reloader as its services.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::mpsc;

use crate::admin::Admin;
use crate::config::{Config, StoreBackend};
use crate::deliver::Dispatcher;
use crate::derive::exchange::Budget;
use crate::filter::HashKey;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Pushed};
use crate::proxy::drain::FirstRequestWindow;
use crate::proxy::listener::BoundSocket;
use crate::proxy::Tap;
use crate::rules::{self, Rules};
use crate::store::jetstream::JetStream;
use crate::store::sqlite::Durability;
use crate::store::{
    AuditTrail, Deliveries, DurableEventLog, DurableSessions, Embedded, EventLog, EventSearch,
    Outbox, SessionStore, Store, WebhookStates,
};

/// State every service shares.
pub struct Shared {
    pub config: Config,
    pub rules: Arc<ArcSwap<Rules>>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<dyn SessionStore>,
    pub events: Arc<dyn EventLog>,
    /// The outbox, sessions and event log on disk.
    pub store: Arc<Store>,
    pub ready: AtomicBool,
    /// Serialises changes made through the admin API.
    pub admin_writes: tokio::sync::Mutex<()>,
    /// Events pushed through the admin API, to the pipeline.
    pub pushed: mpsc::Sender<Pushed>,
    /// Where the pipeline hands deliveries over: `store`, or JetStream.
    pub outbox: Arc<dyn Outbox>,
    /// The deliveries kept, as the admin API reads and changes them.
    pub deliveries: Arc<dyn Deliveries>,
    /// Each webhook's delivery state, as the admin API reads and changes it.
    pub webhook_states: Arc<dyn WebhookStates>,
    /// The admin API's audit trail.
    pub audit: Arc<dyn AuditTrail>,
    /// The newest events of every session, for the search box.
    pub event_search: Arc<dyn EventSearch>,
    /// The JetStream backend, when configured.
    pub jetstream: Option<Arc<JetStream>>,
    /// The key of the `hash` operator.
    pub hash_key: HashKey,
    /// Each webhook's attempts per hour, for 7 days.
    pub history: Arc<crate::history::History>,
    /// Stopping or handing over: responses close their connection, so
    /// kept-alive clients reconnect (to the new process, after an
    /// upgrade) instead of meeting a connection closed under them.
    pub draining: Arc<AtomicBool>,
}

/// What the configured store keeps, each as the trait its users read it
/// through.
struct Kept {
    sessions: Arc<dyn SessionStore>,
    events: Arc<dyn EventLog>,
    outbox: Arc<dyn Outbox>,
    deliveries: Arc<dyn Deliveries>,
    webhook_states: Arc<dyn WebhookStates>,
    audit: Arc<dyn AuditTrail>,
    event_search: Arc<dyn EventSearch>,
}

/// Events pushed through the admin API waiting for the pipeline.
const PUSHED_QUEUE: usize = 1024;

/// Bytes of sessions cached in memory at most (all are on disk). A
/// session is read back from disk only after its importer went quiet
/// for long enough to be evicted; 16 MiB holds ~30,000 typical sessions.
const SESSION_CACHE_BYTES: u64 = 16 << 20;

impl Shared {
    /// Reloads the rules directory; a failing load keeps the current
    /// rules, logs every problem and is counted.
    pub fn reload_rules(&self) -> Result<(), rules::Problems> {
        let loaded = rules::load_dir(&self.config.rules_dir, &rules::source::process_env);
        match loaded {
            Ok(new) => {
                log_warnings(&new);
                self.metrics
                    .init_known_series(new.webhooks.iter().map(|w| w.key.as_str()));
                self.metrics.describe_webhooks(&new.webhooks);
                self.rules.store(Arc::new(new));
                self.metrics
                    .rules_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(dir = %self.config.rules_dir.display(), "rules reloaded");
                Ok(())
            }
            Err(problems) => {
                self.metrics
                    .rules_reloads
                    .with_label_values(&["error"])
                    .inc();
                for p in &problems.0 {
                    tracing::error!(problem = %p, "rules reload failed; keeping the previous rules");
                }
                Err(problems)
            }
        }
    }
}

/// What `taphook check` warns about, in the log (never the values).
pub fn log_warnings(rules: &Rules) {
    for w in &rules.warnings {
        tracing::warn!(problem = %w, "rules");
    }
}

/// How the process starts: on its own sockets, or taking them over from
/// the taphook running on the same `data_dir` ([`crate::upgrade`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Fresh,
    Upgrade,
}

/// How the server is asked to stop.
pub enum Stop {
    /// SIGTERM (graceful), SIGINT (fast); SIGHUP reloads the rules.
    Signals,
    /// A channel, for running in-process (the demo, tests).
    Channel(tokio::sync::oneshot::Receiver<()>),
}

/// Builds and runs taphook until it is stopped.
pub fn run(config: Config, rules: Rules, stop: Stop, launch: Launch) -> anyhow::Result<()> {
    let rules_changes = match stop {
        Stop::Signals => watch_rules(&config.rules_dir),
        Stop::Channel(_) => None,
    };
    log_warnings(&rules);
    let data_dir = config.data_dir.clone();
    let metrics = Arc::new(Metrics::new());
    metrics.init_known_series(rules.webhooks.iter().map(|w| w.key.as_str()));
    metrics.describe_webhooks(&rules.webhooks);
    metrics.rules_reloads.with_label_values(&["success"]).inc();
    let telemetry = start_telemetry(&config, &metrics)?;
    // The process this one takes over, found before anything is bound.
    let previous = match launch {
        Launch::Upgrade => Some(crate::upgrade::running(&config.data_dir)?),
        Launch::Fresh => None,
    };
    // Both listeners are bound first: a taken port is a start-up error,
    // and no other process can take it while the rest starts. Taking
    // over, the proxy's socket comes from the running process instead.
    let proxy_listener = match launch {
        Launch::Fresh => Some(
            BoundSocket::bind(config.listen)
                .with_context(|| format!("cannot listen on {} (listen)", config.listen))?,
        ),
        Launch::Upgrade => None,
    };
    // The admin listener is shared (SO_REUSEPORT) while two processes run.
    let admin_listener =
        crate::proxy::listener::bind_shared(config.admin_listen, launch == Launch::Upgrade)
            .with_context(|| format!("cannot listen on {} (admin_listen)", config.admin_listen))?;
    if !config.admin_listen.ip().is_loopback() && config.admin_tokens.is_empty() {
        tracing::warn!(addr = %config.admin_listen, "admin listener binds a non-loopback address without admin_token");
    }
    let upstream = crate::proxy::upstream::peer(
        config.upstream.resolve().map_err(anyhow::Error::msg)?,
        &config.upstream,
        &config.upstream_tls,
    )
    .context("cannot set up TLS to the upstream (upstream_tls)")?;
    let listener_tls = match &config.tls {
        Some(tls) => Some(
            crate::proxy::tls::settings(tls)
                .context("cannot set up TLS on the proxy listener (tls)")?,
        ),
        None => None,
    };
    let budget = Budget::with_gauge(
        config.max_total_capture_bytes,
        metrics.capture_bytes.clone(),
    );
    let listen = config.listen.to_string();
    let (tx, rx) = mpsc::channel(config.tap_queue);
    let (pushed, pushed_rx) = mpsc::channel(PUSHED_QUEUE);
    // The deliver stage runs on a runtime of its own, so in-flight
    // deliveries can finish after Pingora's services have stopped.
    let deliver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.clamp(1, 4))
        .thread_name("taphook-deliver")
        .enable_all()
        .build()?;
    let mut config = config;
    // With JetStream, the local file holds only the funnel's progress.
    let durability = match config.store {
        StoreBackend::Embedded => Durability::Full,
        StoreBackend::JetStream(_) => Durability::Normal,
    };
    let store = match launch {
        Launch::Fresh => Store::open_with(&config.data_dir, durability),
        // The running process writes on while it drains.
        Launch::Upgrade => Store::open_beside(&config.data_dir, durability),
    }
    .context("cannot open the data directory (data_dir)")?;
    {
        let accepted = metrics.outbox_accepted.clone();
        *store.on_accept.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Box::new(move |n| accepted.inc_by(n)));
    }
    let jetstream = match &config.store {
        StoreBackend::Embedded => None,
        StoreBackend::JetStream(js) => {
            let js = deliver_rt
                .block_on(JetStream::connect(
                    js,
                    config.dedup_ttl,
                    config.events_retention,
                    metrics.clone(),
                ))
                .context("cannot start the JetStream store (store.url)")?;
            if config.funnel.stall_after.take().is_some() {
                tracing::info!("stalled sessions are not reported with the jetstream store (each instance sees part of a session's traffic)");
            }
            Some(js)
        }
    };
    let Kept {
        sessions,
        events,
        outbox,
        deliveries,
        webhook_states,
        audit,
        event_search,
    } = match &jetstream {
        Some(js) => Kept {
            sessions: js.clone(),
            events: js.clone(),
            outbox: js.clone(),
            deliveries: js.clone(),
            webhook_states: js.clone(),
            audit: js.clone(),
            event_search: js.clone(),
        },
        None => Kept {
            sessions: durable_sessions(&store, &config, previous),
            events: Arc::new(DurableEventLog::new(store.clone(), config.events_retention)),
            outbox: store.clone(),
            deliveries: Arc::new(Embedded(store.clone())),
            webhook_states: store.clone(),
            audit: Arc::new(Embedded(store.clone())),
            event_search: Arc::new(Embedded(store.clone())),
        },
    };
    let hash_key = hash_key(&config)?;
    let history = Arc::new(crate::history::History::from_rows(
        store
            .hours(crate::history::hour_of(crate::store::sqlite::now_ms()) - crate::history::HOURS)
            .context("cannot read the webhooks' history from the data directory")?,
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        draining: draining.clone(),
        hash_key,
        history: history.clone(),
        rules: Arc::new(ArcSwap::from_pointee(rules)),
        metrics,
        sessions,
        events,
        store: store.clone(),
        ready: AtomicBool::new(false),
        admin_writes: tokio::sync::Mutex::new(()),
        pushed,
        outbox,
        deliveries,
        webhook_states,
        audit,
        event_search,
        jetstream: jetstream.clone(),
        config,
    });

    let (stop_deliveries, deliveries_stopped) = tokio::sync::watch::channel(false);
    let fast_stop = Arc::new(AtomicBool::new(false));
    let dispatcher = Arc::new(Dispatcher::new(shared.clone())?);
    let drain = {
        let (fast, timeout) = (fast_stop.clone(), shared.config.delivery.shutdown_timeout);
        move || {
            if fast.load(Ordering::Acquire) {
                timeout.min(FAST_DRAIN)
            } else {
                timeout
            }
        }
    };
    if let Some(js) = &jetstream {
        deliver_rt.spawn(crate::rules::replicate::follow(shared.clone(), js.clone()));
    }
    let keeper = Arc::new(HistoryKeeper {
        history: history.clone(),
        store: store.clone(),
        shared: jetstream
            .clone()
            .map(|js| (js, instance_id(&shared.config.data_dir))),
    });
    deliver_rt.spawn(keeper.clone().run());
    // Taking over: the running process's in-flight deliveries get their
    // time to finish before this one reads the outbox.
    let hold = match launch {
        Launch::Upgrade => shared.config.delivery.shutdown_timeout + Duration::from_secs(1),
        Launch::Fresh => Duration::ZERO,
    };
    let delivering = {
        let jetstream = jetstream.clone();
        deliver_rt.spawn(async move {
            tokio::time::sleep(hold).await;
            match jetstream {
                Some(js) => {
                    crate::deliver::jetstream::supervise(dispatcher, js, deliveries_stopped, drain)
                        .await
                }
                None => dispatcher.supervise(deliveries_stopped, drain).await,
            }
        })
    };
    let recorder = match &shared.config.record {
        Some(r) => Some({
            if !r.all && shared.rules.load().routes.routes().is_empty() {
                tracing::warn!(dir = %r.dir.display(), "record: no route could tap anything yet, so every exchange is recorded until one is added (record.all: true records every exchange always)");
            }
            tracing::info!(dir = %r.dir.display(), all = r.all, "recording exchanges to HAR files");
            crate::traffic::record::Recorder::start(r, shared.metrics.clone())
                .with_context(|| format!("cannot record to {} (record.dir)", r.dir.display()))?
        }),
        None => None,
    };
    let deriving = deliver_rt.spawn(
        Pipeline::new(crate::pipeline::Parts::of(&shared))
            .with_recorder(recorder)
            .run(rx, pushed_rx),
    );
    let stop_watch = StopWatch {
        stop_deliveries,
        fast: fast_stop,
        draining,
    };

    let mut conf = ServerConf {
        threads: shared.config.threads,
        ..ServerConf::default()
    };
    // On SIGTERM, requests in flight get this long before the runtimes stop.
    conf.grace_period_seconds = Some(shared.config.shutdown_grace.as_secs_f64().ceil() as u64);
    // Past the dispatcher's own drain deadline, so in-flight deliveries
    // get their time before the runtimes stop.
    conf.graceful_shutdown_timeout_seconds =
        Some(shared.config.delivery.shutdown_timeout.as_secs() + 2);
    // The sockets pass through data_dir (Pingora's default is one path
    // for every server on the machine).
    conf.upgrade_sock = crate::upgrade::upgrade_sock(&shared.config.data_dir)
        .display()
        .to_string();
    let opt = pingora::server::configuration::Opt {
        upgrade: launch == Launch::Upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if let Some(pid) = previous {
        crate::upgrade::ask_to_hand_over(pid);
    }
    server.bootstrap();
    crate::upgrade::write_pid(&shared.config.data_dir);
    let mut tap = pingora::proxy::http_proxy(
        &server.configuration,
        Tap::new(shared.clone(), tx, upstream, budget),
    );
    if shared.config.listen_h2c {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        tap.server_options = Some(options);
    }
    let mut proxy = Service::new(
        "taphook proxy".to_string(),
        FirstRequestWindow::new(tap, shared.config.shutdown_grace),
    );
    let endpoint = pingora::listeners::ListenerConfig::tcp(&listen).l4_buffer(
        pingora::protocols::l4::stream::L4BufferSettings::default()
            .write(crate::proxy::DOWNSTREAM_WRITE_BUFFER),
    );
    match listener_tls {
        Some((settings, certificates)) => {
            proxy.add_listener(endpoint.tls(settings));
            server.add_service(background_service(
                "tls certificate reloader",
                crate::proxy::tls::CertReloader {
                    certificates,
                    metrics: shared.metrics.clone(),
                },
            ));
        }
        None => proxy.add_listener(endpoint),
    }
    match proxy_listener {
        Some(bound) => {
            server.add_service(bound.serve(proxy));
        }
        None => {
            server.add_service(proxy);
        }
    }
    let signal: Box<dyn ShutdownSignalWatch> = match stop {
        Stop::Signals => {
            let signals: Box<dyn ShutdownSignalWatch> = Box::new(Signals { stop: stop_watch });
            server.add_service(background_service(
                "rules reloader",
                Reloader {
                    shared: shared.clone(),
                    changes: crate::reload::Pending::new(rules_changes),
                },
            ));
            signals
        }
        Stop::Channel(rx) => Box::new(ChannelSignal {
            rx: tokio::sync::Mutex::new(Some(rx)),
            stop: stop_watch,
        }),
    };
    server.add_service(background_service(
        "admin",
        Admin::new(shared, admin_listener),
    ));
    tracing::info!(%listen, "taphook running");
    server.run(RunArgs {
        shutdown_signal: signal,
    });
    // The proxy is gone, and with it the tap's sender: the pipeline
    // derives what is left. In-flight deliveries finish (up to the
    // deadline); the rest stays in the outbox. Then everything is committed.
    let _ = deliver_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), deriving).await });
    let _ = deliver_rt.block_on(delivering);
    // The last hours of history (the timeout is made inside the runtime).
    let _ = deliver_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(2), keeper.write()).await });
    if let Some(js) = &jetstream {
        deliver_rt.block_on(js.flush(Duration::from_secs(5)));
    }
    deliver_rt.shutdown_timeout(Duration::from_secs(1));
    store.close();
    if let Some(t) = &telemetry {
        t.shutdown();
    }
    crate::upgrade::remove_pid(&data_dir);
    Ok(())
}

/// Traces, when `telemetry.otlp` is configured: resolved with the `OTEL_*`
/// environment, the export thread started.
fn start_telemetry(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Option<crate::telemetry::Guard>> {
    let settings =
        crate::telemetry::Settings::resolve(&config.telemetry, &rules::source::process_env)
            .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
    let Some(settings) = settings else {
        return Ok(None);
    };
    let guard = crate::telemetry::start(&settings, metrics)?;
    tracing::info!(
        endpoint = %settings.shown_endpoint(),
        protocol = ?settings.protocol,
        sample_ratio = settings.sample_ratio,
        "traces exported over OTLP"
    );
    Ok(Some(guard))
}

/// The embedded store's sessions. Taking over from `previous`, both
/// processes write the store until it exits: until then every session is
/// looked for in the store, then its keys are read again.
fn durable_sessions(
    store: &Arc<Store>,
    config: &Config,
    previous: Option<i32>,
) -> Arc<DurableSessions> {
    let sessions = Arc::new(DurableSessions::new(
        store.clone(),
        SESSION_CACHE_BYTES,
        config.events_retention,
        previous.is_none(),
    ));
    if let Some(pid) = previous {
        let sessions = sessions.clone();
        let spawned = std::thread::Builder::new()
            .name("taphook-takeover".into())
            .spawn(move || {
                crate::upgrade::wait_for_exit(pid);
                sessions.now_alone();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "every session is looked for in the store until the next start");
        }
    }
    sessions
}

/// How often the webhooks' history is written to the store.
const HISTORY_EVERY: Duration = Duration::from_secs(5);

/// Writes the webhooks' changed hours to the data directory and, with
/// JetStream, this instance's hours of each changed webhook to the shared
/// history bucket.
struct HistoryKeeper {
    history: Arc<crate::history::History>,
    store: Arc<Store>,
    /// The JetStream store and this instance's id there.
    shared: Option<(Arc<JetStream>, String)>,
}

impl HistoryKeeper {
    /// Every [`HISTORY_EVERY`], until the runtime stops.
    async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(HISTORY_EVERY);
        loop {
            every.tick().await;
            self.write().await;
        }
    }

    async fn write(&self) {
        let (rows, oldest) = self.history.changed(crate::store::sqlite::now_ms());
        if rows.is_empty() {
            return;
        }
        let mut webhooks: Vec<String> = rows.iter().map(|(w, _, _)| w.clone()).collect();
        webhooks.sort();
        webhooks.dedup();
        if let Err(e) = self.store.put_hours(rows, oldest) {
            tracing::warn!(error = %e, "webhook history not written");
        }
        let Some((js, instance)) = &self.shared else {
            return;
        };
        for webhook in webhooks {
            let hours = serde_json::to_vec(&self.history.snapshot(&webhook)).unwrap_or_default();
            if let Err(e) = js.put_history(&webhook, instance, hours.into()).await {
                tracing::warn!(%webhook, error = %e, "webhook history not shared");
            }
        }
    }
}

/// The file in `data_dir` that keeps this instance's id in the shared
/// history (the same across its restarts, so its hours are not counted
/// twice).
const INSTANCE_ID_FILE: &str = "instance_id";

/// This instance's id, kept in `data_dir` (made on the first start; a
/// new one for this run if it cannot be written).
fn instance_id(data_dir: &std::path::Path) -> String {
    let path = data_dir.join(INSTANCE_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Err(e) = write_private(&path, &id) {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep this instance's id; its history gets a new one each start");
    }
    id
}

/// The file in `data_dir` that keeps the `hash` key when the config
/// sets no `session_secret`.
const SESSION_SECRET_FILE: &str = "session_secret";

/// The key of `hash`: `session_secret`, else one made on the first start
/// and kept in `data_dir` (readable by its owner only), so session keys
/// stay the same across restarts. Replicas sharing JetStream need the
/// same `session_secret` to hash alike.
fn hash_key(config: &Config) -> anyhow::Result<HashKey> {
    if let Some(s) = &config.session_secret {
        return Ok(HashKey::new(s.expose().as_bytes()));
    }
    if matches!(config.store, StoreBackend::JetStream(_)) {
        tracing::warn!("no session_secret: each replica hashes session keys with a key of its own; set session_secret to the same value on every replica");
    }
    let path = config.data_dir.join(SESSION_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(HashKey::new(s.trim().as_bytes())),
        // Empty: a start that died between creating and writing it.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = crate::filter::hash::random_secret();
    write_private(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), "no session_secret: made one for `hash` and kept it in data_dir");
    Ok(HashKey::new(secret.as_bytes()))
}

/// Writes a file only its owner can read, whole or not at all: a
/// temporary file, synced, then renamed over `path`.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How much of the drain deadline a fast stop (SIGINT) allows.
const FAST_DRAIN: Duration = Duration::from_millis(500);

/// Tells the deliver stage to stop starting attempts, and how fast.
struct StopWatch {
    stop_deliveries: tokio::sync::watch::Sender<bool>,
    fast: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl StopWatch {
    fn stop(&self, signal: ShutdownSignal) -> ShutdownSignal {
        self.draining.store(true, Ordering::Release);
        self.fast.store(
            matches!(signal, ShutdownSignal::FastShutdown),
            Ordering::Release,
        );
        let _ = self.stop_deliveries.send(true);
        signal
    }
}

/// SIGTERM stops gracefully, SIGINT fast; both stop the deliver stage
/// first (SIGHUP is the reloader's).
struct Signals {
    stop: StopWatch,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot watch SIGTERM/SIGINT/SIGQUIT; stopping");
            return self.stop.stop(ShutdownSignal::FastShutdown);
        };
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listening sockets to the new process, then stopping; in-flight requests finish");
                self.stop.stop(ShutdownSignal::GracefulUpgrade)
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping; in-flight deliveries may finish");
                self.stop.stop(ShutdownSignal::GracefulTerminate)
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping fast");
                self.stop.stop(ShutdownSignal::FastShutdown)
            }
        }
    }
}

/// Stops the server when the channel fires or its sender is dropped.
struct ChannelSignal {
    rx: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    stop: StopWatch,
}

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        if let Some(rx) = self.rx.lock().await.take() {
            let _ = rx.await;
        }
        self.stop.stop(ShutdownSignal::FastShutdown)
    }
}

/// Reloads the rules on SIGHUP and when a file in the rules directory
/// changes (changes within 250 ms make one reload).
struct Reloader {
    shared: Arc<Shared>,
    /// The rules directory's changes since [`run`] began.
    changes: crate::reload::Pending,
}

/// Changes closer together than this make one reload.
const RELOAD_SETTLE: Duration = Duration::from_millis(250);

impl Reloader {
    async fn reload(&self) {
        // One change at a time: an admin API write cannot be undone by a
        // reload that read the directory before it.
        let _one_at_a_time = self.shared.admin_writes.lock().await;
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.reload_rules()).await;
    }
}

/// Watches the rules directory, files whose name starts with a dot
/// (editors' swap files) aside. Made at the top of [`run`], so an edit
/// while taphook starts is not missed (the reloader service starts after
/// the listeners serve).
fn watch_rules(rules_dir: &std::path::Path) -> Option<crate::reload::Changes> {
    let hidden = |p: &std::path::Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    };
    crate::reload::watch(
        &[rules_dir.to_path_buf()],
        notify::RecursiveMode::Recursive,
        move |e| e.paths.iter().any(|p| !hidden(p)),
        "the rules directory",
    )
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Let an editor finish writing, then reload once.
        let changes = self.changes.take();
        crate::reload::on_signal_or_change(shutdown, changes, RELOAD_SETTLE, "the rules", || {
            self.reload()
        })
        .await;
    }
}
