//! The command line: `run`, `check`, `eval`, `explain`, `draft`, `test`,
//! `demo`, `replay`, and `importer` (the reference importer on its own).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{Config, LogFormat};
use crate::event::{DerivedEvent, Event};
use crate::filter::fan_out;
use crate::rules::{self, source::process_env, Rules};

#[derive(Parser)]
#[command(
    name = "taphook",
    version,
    about = "An inline reverse proxy that turns a data importer's traffic into lifecycle webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy, the admin listener and the delivery workers.
    Run {
        /// The config file.
        #[arg(long, default_value = "taphook.yaml")]
        config: PathBuf,
        /// Take over from the taphook running on the same data_dir: its
        /// listening sockets pass to this process, it finishes its
        /// in-flight requests and exits. No connection is refused.
        #[arg(long)]
        upgrade: bool,
    },
    /// Replace the running taphook without dropping a connection: starts
    /// `taphook run --upgrade` in the background and returns once it
    /// serves (what the systemd unit's `ExecReload` runs).
    Upgrade {
        /// The config file (its data_dir finds the running process).
        #[arg(long, default_value = "taphook.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and its rules directory, or a rules directory.
    Check {
        #[arg(long, conflicts_with_all = ["rules", "path"])]
        config: Option<PathBuf>,
        #[arg(long, conflicts_with = "path")]
        rules: Option<PathBuf>,
        /// A rules directory or a config file.
        path: Option<PathBuf>,
    },
    /// Print the event catalog of a rules directory: the AsyncAPI 3.0
    /// document of the webhooks, or with --out, that document and every
    /// JSON Schema (2020-12) as files, for receivers to generate their
    /// types from.
    Catalog {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Write `asyncapi.json` and `schemas/{format}/{event_type}.json` here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show which webhooks an event would reach, and why.
    Eval {
        #[arg(long)]
        rules: PathBuf,
        /// A JSON file: the event envelope, or {"event": ..., "session": ...}.
        #[arg(long)]
        event: PathBuf,
    },
    /// Show what the rules make of recorded traffic (a HAR file): for each
    /// exchange, the events derived and the routes that nearly fired.
    Explain {
        /// The HAR file (a browser's "Save all as HAR", or taphook's own).
        #[arg(long)]
        har: PathBuf,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// `environment_name` in the events.
        #[arg(long, default_value = "Production")]
        environment: String,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Record an importer's traffic, with no config and no routes: proxy
    /// every request to the upstream and write every exchange to a HAR
    /// file (secrets replaced by pseudonyms). Stop with Ctrl-C.
    Record {
        /// The importer: http://host:port.
        #[arg(long)]
        upstream: String,
        /// Where clients connect.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The directory the HAR files go to.
        #[arg(long, default_value = "recordings")]
        out: PathBuf,
        /// `pseudonym` (a stable `redacted:...` per secret value) or
        /// `remove` (`REDACTED`).
        #[arg(long, default_value = "pseudonym")]
        redact_mode: String,
        /// The largest body copied, per request and per response.
        #[arg(long, default_value = "16MiB")]
        max_body_bytes: String,
    },
    /// Write a starting rules file from a HAR of an importer's traffic:
    /// lifecycle routes found by evidence (uploads, confirm steps, polls
    /// reaching a terminal state), sessions threaded by the ids the
    /// exchanges share. A draft to rename and run `taphook test` on.
    Draft {
        /// A HAR file, or a directory of them (read in name order); give
        /// it several times for several recordings (read in that order).
        #[arg(long, required = true)]
        har: Vec<PathBuf>,
        /// Say, for each route, which exchanges and evidence led to it.
        #[arg(long)]
        why: bool,
        /// Also write a route test file here: the recording and the
        /// events the draft derives from it, for `taphook test`.
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// Run route tests: recorded or inline traffic and the events it must
    /// give (see the README, "Testing routes").
    Test {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Test files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a scripted import session through the proxy and print the webhooks.
    Demo,
    /// Re-queue a webhook's dead deliveries (works whether taphook runs or not).
    Replay {
        #[arg(long, default_value = "taphook.yaml")]
        config: PathBuf,
        /// The webhook's key.
        #[arg(long)]
        webhook: String,
        /// Only deliveries created since: RFC 3339 (2026-11-22T09:00:00Z),
        /// seconds since the epoch, or a duration ago (2h).
        #[arg(long)]
        since: Option<String>,
        /// Also send again deliveries that succeeded.
        #[arg(long)]
        include_delivered: bool,
    },
    /// Run the reference importer on its own.
    Importer {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } => {}
        // `taphook record` prints what it records; its log says only
        // what goes wrong.
        Command::Record { .. } => init_logging(LogFormat::Text, "warn"),
        _ => init_logging(LogFormat::Text, DEFAULT_LOG),
    }
    let result = match cli.command {
        Command::Run { config, upgrade } => run(&config, upgrade),
        Command::Upgrade { config } => upgrade(&config),
        Command::Check {
            config,
            rules,
            path,
        } => return check(config, rules, path),
        Command::Eval { rules, event } => eval(&rules, &event),
        Command::Catalog { rules, out } => catalog(&rules, out.as_deref()),
        Command::Explain {
            har,
            rules,
            environment,
            json,
        } => explain(&har, &rules, &environment, json),
        Command::Test { rules, files } => return test(&rules, &files),
        Command::Draft { har, why, tests } => draft(&har, why, tests.as_deref()),
        Command::Record {
            upstream,
            listen,
            out,
            redact_mode,
            max_body_bytes,
        } => crate::traffic::record::capture(&crate::traffic::record::Capture {
            upstream,
            listen,
            out,
            redact_mode,
            max_body_bytes,
        }),
        Command::Demo => crate::demo::run(),
        Command::Replay {
            config,
            webhook,
            since,
            include_delivered,
        } => replay(&config, &webhook, since.as_deref(), include_delivered),
        Command::Importer { listen } => importer(&listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taphook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter when `RUST_LOG` is not set.
const DEFAULT_LOG: &str = "info,pingora_core=warn,pingora_proxy=warn";

/// Crates that see the proxied and delivered traffic: at debug and trace
/// they log headers and bodies verbatim (`Authorization`, cookies, JWTs,
/// webhook secrets), so they never log below info, whatever `RUST_LOG` says.
const TRAFFIC_CRATES: &[&str] = &[
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_cache",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "axum",
    "tower_http",
];

/// Logs to stderr, as text or (`log.format: json`) one JSON object per
/// line: the line's fields at the top level, and under `span` the context
/// it was written in (an event's `event` UUID and `request_id`, a
/// delivery's `webhook` and `delivery`). `default` is the filter when
/// `RUST_LOG` is not set.
fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let cap = TRAFFIC_CRATES.iter().fold(
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::TRACE),
        |t, name| t.with_target(*name, tracing::Level::INFO),
    );
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(cap).with_filter(filter))
        .try_init();
}

fn load_config(path: &Path) -> anyhow::Result<(Config, Rules)> {
    let config = Config::load(path, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    let rules =
        rules::load_dir(&config.rules_dir, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    Ok((config, rules))
}

fn run(path: &Path, upgrade: bool) -> anyhow::Result<()> {
    let (config, rules) =
        load_config(path).with_context(|| format!("cannot start with {}", path.display()))?;
    init_logging(config.log, DEFAULT_LOG);
    let launch = if upgrade {
        crate::app::Launch::Upgrade
    } else {
        crate::app::Launch::Fresh
    };
    crate::app::run(config, rules, crate::app::Stop::Signals, launch)
}

fn upgrade(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path, &process_env)
        .map_err(|p| anyhow::anyhow!("{p}"))
        .with_context(|| format!("cannot upgrade with {}", path.display()))?;
    let pid =
        crate::upgrade::start_upgrade(path, &config.data_dir, std::time::Duration::from_secs(60))?;
    println!(
        "taphook (pid {pid}) serves {} now; the previous process finishes its requests and exits",
        config.listen
    );
    Ok(())
}

fn check(config: Option<PathBuf>, rules_dir: Option<PathBuf>, path: Option<PathBuf>) -> ExitCode {
    let (config, rules_dir) = match (config, rules_dir, path) {
        (Some(c), _, _) => (Some(c), None),
        (_, Some(r), _) => (None, Some(r)),
        (_, _, Some(p)) if p.is_dir() => (None, Some(p)),
        (_, _, Some(p)) => (Some(p), None),
        (None, None, None) => (Some(PathBuf::from("taphook.yaml")), None),
    };
    let loaded = match (config, rules_dir) {
        (Some(c), _) => Config::load(&c, &process_env).and_then(|cfg| {
            tls_files(&c, &cfg)?;
            rules::load_dir(&cfg.rules_dir, &process_env)
        }),
        (_, Some(r)) => rules::load_dir(&r, &process_env),
        (None, None) => unreachable!("one of them is set above"),
    };
    match loaded {
        Ok(rules) => {
            print!("{}", summary(&rules));
            let catalog = crate::catalog::Catalog::new(&rules);
            match catalog.check() {
                Ok(n) => println!(
                    "  catalog  {n} JSON Schemas (2020-12) for {} event types, and an AsyncAPI 3.0 document whose references all resolve",
                    catalog.event_types().len()
                ),
                Err(problems) => {
                    for p in &problems {
                        println!("{p}");
                    }
                    eprintln!("{} problem(s) found", problems.len());
                    return ExitCode::FAILURE;
                }
            }
            for w in &rules.warnings {
                println!("{w}");
            }
            if !rules.warnings.is_empty() {
                eprintln!("{} warning(s)", rules.warnings.len());
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems.0 {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `taphook catalog`: the AsyncAPI document on stdout, or the document
/// and every schema under `out`.
fn catalog(rules_dir: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let rules = rules::load_dir(rules_dir, &process_env).map_err(|problems| {
        let lines: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    let catalog = crate::catalog::Catalog::new(&rules);
    let doc = serde_json::to_string_pretty(&catalog.asyncapi())?;
    let Some(out) = out else {
        println!("{doc}");
        return Ok(());
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("asyncapi.json"), doc)?;
    let mut n = 0;
    for shape in crate::catalog::Shape::ALL {
        let dir = out.join("schemas").join(shape.name());
        std::fs::create_dir_all(&dir)?;
        for event_type in catalog.event_types() {
            if let Some(schema) = catalog.schema(shape, &event_type) {
                std::fs::write(
                    dir.join(format!("{event_type}.json")),
                    serde_json::to_string_pretty(&schema)?,
                )?;
                n += 1;
            }
        }
    }
    println!(
        "wrote {} and {n} schemas under {}",
        out.join("asyncapi.json").display(),
        out.join("schemas").display()
    );
    Ok(())
}

/// The TLS files the config names, read as taphook will at start: the
/// listener's pair (and its client CA), the upstream's CA and client pair.
fn tls_files(path: &std::path::Path, cfg: &Config) -> Result<(), rules::Problems> {
    let mut problems = Vec::new();
    if let Some(tls) = &cfg.tls {
        if let Err(e) = crate::proxy::tls::settings(tls) {
            problems.push(rules::Problem::new(path, 1, e.to_string()));
        }
    }
    let anywhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    if let Err(e) = crate::proxy::upstream::peer(anywhere, &cfg.upstream, &cfg.upstream_tls) {
        problems.push(rules::Problem::new(path, 1, e.to_string()));
    }
    if let Some(ca) = &cfg.delivery.ca {
        if let Err(e) = crate::deliver::destination::Ca::read(ca) {
            problems.push(rules::Problem::new(path, 1, format!("{e:#}")));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(rules::Problems(problems))
    }
}

/// What `taphook check` prints for valid rules.
pub fn summary(rules: &Rules) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let routes = rules.routes.routes();
    let _ = writeln!(
        out,
        "ok: {} file(s), {} route(s), {} webhook(s), {} app(s), {} registered event(s)",
        rules.files.len(),
        routes.len(),
        rules.webhooks.len(),
        rules.apps.len(),
        rules.registered.len()
    );
    for r in routes {
        let method = if r.methods.is_empty() {
            "*".to_string()
        } else {
            r.methods.join("|")
        };
        let _ = writeln!(
            out,
            "  route   {:<28} {:<6} {:<40} -> {}",
            r.name, method, r.path, r.event
        );
    }
    for w in &rules.webhooks {
        let events = match &w.events {
            rules::model::EventSelector::All => "*".to_string(),
            rules::model::EventSelector::Some(s) => s.iter().cloned().collect::<Vec<_>>().join(","),
        };
        let _ = writeln!(
            out,
            "  webhook {:<28} {:<10} {} [{}]",
            w.key,
            w.format.name(),
            crate::secret::redact_url(&w.url),
            events
        );
    }
    for a in &rules.apps {
        let _ = writeln!(
            out,
            "  app     {:<28} permissions: {}",
            a.id,
            a.permissions.join(",")
        );
    }
    for e in &rules.registered {
        let _ = writeln!(
            out,
            "  event   {:<28} {}/{} <- {}",
            e.name, e.app, e.topic, e.event_type
        );
    }
    out
}

fn eval(rules_dir: &Path, event_file: &Path) -> anyhow::Result<()> {
    let rules = rules::load_dir(rules_dir, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    let text = std::fs::read_to_string(event_file)
        .with_context(|| format!("cannot read {}", event_file.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", event_file.display()))?;
    let (event, session) = match value.get("event") {
        Some(e) if e.is_object() => (e.clone(), value.get("session").cloned()),
        _ => (value, None),
    };
    let event: Event =
        serde_json::from_value(event).context("the event does not have the envelope's fields")?;
    let session = match session {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => bail!("`session` must be an object"),
    };
    let derived = DerivedEvent {
        event,
        session,
        derived_at: std::time::Instant::now(),
        registered: None,
        request_id: None,
        new_session: false,
        trace: None,
    };
    for d in fan_out(&derived, &rules) {
        let why = d.why(&derived.event.event_type);
        println!("{:<28} {why}", d.webhook.key);
    }
    Ok(())
}

/// The exchanges of HAR files, in order: each path a file, or a directory
/// whose `*.har` files are read in name order; entries are numbered on
/// from one file to the next. Errors name the file.
fn read_har(hars: &[PathBuf]) -> anyhow::Result<Vec<crate::traffic::har::Recorded>> {
    let mut files = Vec::new();
    for har in hars {
        if !har.is_dir() {
            files.push(har.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(har)
            .with_context(|| format!("cannot read {}", har.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "har"))
            .collect();
        found.sort();
        if found.is_empty() {
            bail!("{}: no .har file in the directory", har.display());
        }
        files.extend(found);
    }
    let mut all = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let first = all.len();
        let read = crate::traffic::har::read(&text).with_context(|| format!("{}", f.display()))?;
        all.extend(read.into_iter().map(|mut r| {
            r.entry += first;
            r
        }));
    }
    Ok(all)
}

fn explain(har: &Path, rules_dir: &Path, environment: &str, json: bool) -> anyhow::Result<()> {
    let rules = rules::load_dir(rules_dir, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    let recorded = read_har(&[har.to_path_buf()])?;
    let reports = crate::traffic::explain::explain(&rules, &recorded, environment);
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", crate::traffic::explain::table(&reports));
    }
    Ok(())
}

fn draft(hars: &[PathBuf], why: bool, tests: Option<&Path>) -> anyhow::Result<()> {
    let recorded = read_har(hars)?;
    let draft = crate::traffic::draft::Draft::of(&recorded);
    let source = hars
        .iter()
        .map(|h| h.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let text = draft.render(&source, why);
    if let Some(path) = tests {
        let [har] = hars else {
            bail!("--tests needs one HAR file (give --har once)");
        };
        if har.is_dir() {
            bail!("--tests needs one HAR file, not a directory");
        }
        let file = crate::traffic::draft::tests_file(&draft, &text, &recorded, har, path)
            .map_err(anyhow::Error::msg)?;
        std::fs::write(path, file).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {}: run `taphook test --rules <dir> {}` once the routes are in <dir>",
            path.display(),
            path.display()
        );
    }
    print!("{text}");
    Ok(())
}

fn test(rules_dir: &Path, paths: &[PathBuf]) -> ExitCode {
    let result = (|| -> anyhow::Result<crate::traffic::route_tests::Outcome> {
        let rules = rules::load_dir(rules_dir, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|f| {
                        matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    })
                    .collect();
                found.sort();
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        crate::traffic::route_tests::run(&rules, &files).map_err(anyhow::Error::msg)
    })();
    match result {
        Ok(outcome) => {
            print!("{}", outcome.report);
            if outcome.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("taphook: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn replay(
    config: &Path,
    webhook: &str,
    since: Option<&str>,
    include_delivered: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    let rules =
        rules::load_dir(&config.rules_dir, &process_env).map_err(|p| anyhow::anyhow!("{p}"))?;
    if rules.webhook(webhook).is_none() {
        bail!("no webhook `{webhook}` in {}", config.rules_dir.display());
    }
    let since = match since {
        None => 0,
        Some(text) => crate::admin::parse_since_text(text)
            .with_context(|| format!("--since `{text}`: expected RFC 3339, seconds since the epoch, or a duration like 2h"))?,
    };
    let n = match &config.store {
        crate::config::StoreBackend::JetStream(js) => {
            if include_delivered {
                bail!("--include-delivered needs the embedded store: the JetStream work queue does not keep delivered deliveries");
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
                let js = crate::store::jetstream::JetStream::connect(
                    js,
                    config.dedup_ttl,
                    config.events_retention,
                    metrics,
                )
                .await?;
                anyhow::Ok(js.replay(webhook, since).await?)
            })?
        }
        crate::config::StoreBackend::Embedded => {
            let store = crate::store::Store::open(&config.data_dir)?;
            let n = store.replay(webhook, since, include_delivered)?;
            store.close();
            n
        }
    };
    println!("re-queued {n} deliveries for webhook `{webhook}`");
    Ok(())
}

fn importer(listen: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let imp = crate::demo::importer::ReferenceImporter::start_on(listen).await?;
        tracing::info!(url = %imp.url(), "reference importer listening");
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
