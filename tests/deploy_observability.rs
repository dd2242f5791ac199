//! The Grafana dashboard (`deploy/grafana/taphook.json`) and the Prometheus
//! rules (`deploy/prometheus/taphook.rules.yml`) query only what taphook
//! exports: every `taphook_*` metric they name is one of
//! `Metrics::names()` (a histogram's `_bucket`, `_sum`, `_count` belong to
//! its family), every recording rule they use is defined in the rules
//! file, and every label they select on, group by or match on exists on
//! the metric. The dashboard has the panels operators expect, all on the
//! templated data source, and its PromQL parses (`promtool check rules`).
//! Every alert and recording rule has a promtool unit test. Finally, a
//! live taphook driven through one importer session exports every family
//! the dashboard's funnel rows use.
//!
//! The PromQL checks read the query text, not a parse tree: identifiers
//! outside string literals, `name{...}` selectors, and `by (...)` /
//! `on (...)` clauses. Aggregations must be written `agg by (labels)
//! (expr)` (the test refuses the trailing form), which both files do.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde_json::{json, Value};
use taphook::metrics::Metrics;

const DASHBOARD: &str = "deploy/grafana/taphook.json";
const RULES: &str = "deploy/prometheus/taphook.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/tests/taphook.rules.test.yml";
const RUNBOOK: &str = "https://github.com/your-org/taphook/blob/main/docs/OPERATIONS.md#";

/// Labels Prometheus adds to every scraped series (the scrape's target).
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Panels the dashboard must have, by title.
const PANELS: &[&str] = &[
    "Sessions reaching each stage",
    "Conversion between stages",
    "Time between stages (p50 / p90)",
    "Conversion between stages over time (1h window)",
    "Stalled sessions by template and stage",
    "Stalled / initialized (1h window)",
    "Open sessions (watched for stalls)",
    "Deliveries by webhook and outcome",
    "Delivery failure ratio (5m)",
    "Delivery attempt latency p50 / p99",
    "End-to-end event latency p50 / p99",
    "Delivery attempts by status class",
    "Retries (attempts − finished deliveries)",
    "Dead letters",
    "Outbox backlog (pending)",
    "Webhooks paused / disabled",
    "Events derived by type",
    "Events duplicate and dropped",
    "Events rejected by webhook filters",
    "Proxy requests by route and status class",
    "Proxy latency p50 / p99 by route",
    "Capture bytes",
];

/// Rows whose panels make up the importer funnel (checked live).
const FUNNEL_ROWS: &[&str] = &["Importer funnel: $template_key", "Stalled sessions"];

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ------------------------------------------------------------ the exported families

/// A family's variable labels and whether it is a histogram.
#[derive(Debug, Clone)]
struct Family {
    labels: BTreeSet<String>,
    histogram: bool,
}

/// The metric types `Metrics` uses, and which of them are histograms: a
/// field of another type does not compile here.
trait Kind: Collector {
    const HISTOGRAM: bool;
}
impl Kind for IntCounter {
    const HISTOGRAM: bool = false;
}
impl Kind for IntCounterVec {
    const HISTOGRAM: bool = false;
}
impl Kind for IntGauge {
    const HISTOGRAM: bool = false;
}
impl Kind for IntGaugeVec {
    const HISTOGRAM: bool = false;
}
impl Kind for prometheus::GaugeVec {
    const HISTOGRAM: bool = false;
}
impl Kind for Histogram {
    const HISTOGRAM: bool = true;
}
impl Kind for HistogramVec {
    const HISTOGRAM: bool = true;
}

/// Every family taphook exports, with its labels from the collector's
/// descriptor. The fields are listed here by hand; the test fails if the
/// list and `Metrics::names()` disagree, so a new metric cannot be missed.
fn families() -> BTreeMap<String, Family> {
    let m = Metrics::new();
    let mut out = BTreeMap::new();
    fn add<K: Kind>(out: &mut BTreeMap<String, Family>, c: &K) {
        for d in c.desc() {
            let family = Family {
                labels: d.variable_labels.iter().cloned().collect(),
                histogram: K::HISTOGRAM,
            };
            out.insert(d.fq_name.clone(), family);
        }
    }
    add(&mut out, &m.proxy_requests);
    add(&mut out, &m.events_derived);
    add(&mut out, &m.events_duplicate);
    add(&mut out, &m.tap_waits);
    add(&mut out, &m.events_dropped);
    add(&mut out, &m.filter_rejected);
    add(&mut out, &m.deliveries);
    add(&mut out, &m.delivery_attempts);
    add(&mut out, &m.delivery_refused);
    add(&mut out, &m.delivery_duration);
    add(&mut out, &m.event_delivery_latency);
    add(&mut out, &m.outbox_pending);
    add(&mut out, &m.outbox_dead);
    add(&mut out, &m.outbox_accepted);
    add(&mut out, &m.webhook_disabled);
    add(&mut out, &m.webhook_paused);
    add(&mut out, &m.webhook_rate_limited);
    add(&mut out, &m.webhook_rate_limit_wait);
    add(&mut out, &m.rules_reloads);
    add(&mut out, &m.tls_reloads);
    add(&mut out, &m.capture_bytes);
    add(&mut out, &m.proxy_request_duration);
    add(&mut out, &m.funnel_sessions);
    add(&mut out, &m.funnel_stage_duration);
    add(&mut out, &m.funnel_open_sessions);
    add(&mut out, &m.sessions_stalled);
    add(&mut out, &m.store_connected);
    add(&mut out, &m.store_buffered);
    add(&mut out, &m.store_buffer_dropped);
    add(&mut out, &m.webhook_info);
    add(&mut out, &m.telemetry_exported);
    add(&mut out, &m.telemetry_dropped);
    let listed: Vec<&String> = out.keys().collect();
    let names: Vec<&String> = m.names().iter().collect();
    assert_eq!(
        listed, names,
        "families() in this test lists other metrics than Metrics::names(): add the new field"
    );
    out
}

// ------------------------------------------------------------ YAML

fn yaml_to_json(y: &saphyr::Yaml) -> Value {
    use saphyr::{Scalar, Yaml};
    match y {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => json!(b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => json!(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => json!(s.as_ref()),
        Yaml::Representation(s, _, _) => json!(s.as_ref()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => yaml_to_json(inner),
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML node: {y:?}"),
    }
}

fn load_yaml(rel: &str) -> Value {
    use saphyr::LoadableYamlNode;
    let text = std::fs::read_to_string(path(rel)).unwrap();
    let docs = saphyr::Yaml::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    yaml_to_json(&docs[0])
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

struct Rules {
    /// Recording rule name → the exprs recording it (one rule may be
    /// defined several times with different static labels).
    recording: BTreeMap<String, Vec<String>>,
    /// Recording rule name → the labels its series carry.
    recording_labels: BTreeMap<String, BTreeSet<String>>,
    /// (alert name, expr, labels, annotations).
    alerts: Vec<(String, String, Value, Value)>,
}

fn rules() -> Rules {
    let doc = load_yaml(RULES);
    let mut r = Rules {
        recording: BTreeMap::new(),
        recording_labels: BTreeMap::new(),
        alerts: Vec::new(),
    };
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = s(&rule["expr"]).to_string();
            if let Some(name) = rule.get("record") {
                let name = s(name).to_string();
                // A recording rule's series keep its by() labels: require
                // every by() in it to agree, so that set is unambiguous.
                let groupings: BTreeSet<BTreeSet<String>> = by_clauses(&strip_strings(&expr))
                    .into_iter()
                    .map(|(labels, _)| labels)
                    .collect();
                assert_eq!(
                    groupings.len(),
                    1,
                    "{name}: every `by (...)` in a recording rule must keep the same labels: {expr}"
                );
                let mut labels = groupings.into_iter().next().unwrap();
                if let Some(Value::Object(extra)) = rule.get("labels") {
                    labels.extend(extra.keys().cloned());
                }
                r.recording_labels
                    .entry(name.clone())
                    .or_default()
                    .extend(labels);
                r.recording.entry(name).or_default().push(expr);
            } else {
                let name = s(&rule["alert"]).to_string();
                r.alerts.push((
                    name,
                    expr,
                    rule["labels"].clone(),
                    rule["annotations"].clone(),
                ));
            }
        }
    }
    r
}

// ------------------------------------------------------------ PromQL text

/// The expression with every string literal's content removed (quotes
/// kept), so label values cannot look like names.
fn strip_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' && c != '`' {
                    escaped = true;
                } else if d == c {
                    out.push(d);
                    break;
                }
            }
        }
    }
    out
}

/// Identifiers (`[A-Za-z_:][A-Za-z0-9_:]*`) with their byte offsets;
/// tokens that start with a digit (`5m`, `0.5`) are skipped whole.
fn identifiers(text: &str) -> Vec<(usize, &str)> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if word(b[i]) {
            let start = i;
            while i < b.len() && (word(b[i]) || b[i] == b'.') {
                i += 1;
            }
            if !b[start].is_ascii_digit() && !text[start..i].contains('.') {
                out.push((start, &text[start..i]));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The text from `open` (a `(` or `{` at that offset) to its match.
fn balanced(text: &str, open: usize) -> &str {
    let b = text.as_bytes();
    let (o, c) = match b[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        x => panic!("not an opening bracket: {}", x as char),
    };
    let mut depth = 0;
    for (i, &x) in b.iter().enumerate().skip(open) {
        if x == o {
            depth += 1;
        } else if x == c {
            depth -= 1;
            if depth == 0 {
                return &text[open + 1..i];
            }
        }
    }
    panic!("unbalanced brackets in {text}")
}

fn next_non_space(text: &str, from: usize) -> Option<usize> {
    text[from..]
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map(|(i, _)| from + i)
}

fn label_list(inner: &str) -> BTreeSet<String> {
    inner
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `by (labels) (argument)` clauses: the labels and the argument's text.
/// Panics on `by (...)` not followed by its argument (the trailing form
/// `sum(x) by (l)`) and on `without`, which this test does not follow.
fn by_clauses(text: &str) -> Vec<(BTreeSet<String>, String)> {
    let mut out = Vec::new();
    for (at, id) in identifiers(text) {
        assert_ne!(id, "without", "use `by (...)`, not `without`: {text}");
        if id != "by" {
            continue;
        }
        let open = next_non_space(text, at + 2).expect("by (...)");
        assert_eq!(&text[open..=open], "(", "by without labels: {text}");
        let labels = balanced(text, open);
        let after = open + labels.len() + 2;
        let arg = next_non_space(text, after)
            .filter(|&i| text.as_bytes()[i] == b'(')
            .unwrap_or_else(|| panic!("write `agg by (labels) (expr)`: {text}"));
        out.push((label_list(labels), balanced(text, arg).to_string()));
    }
    out
}

/// `on (labels)` clauses of binary operators.
fn on_clauses(text: &str) -> Vec<BTreeSet<String>> {
    identifiers(text)
        .into_iter()
        .filter(|(_, id)| *id == "on")
        .map(|(at, _)| {
            let open = next_non_space(text, at + 2).expect("on (...)");
            label_list(balanced(text, open))
        })
        .collect()
}

/// What a `taphook` identifier refers to.
#[derive(Debug, Clone, PartialEq)]
enum Ref {
    /// A family, and whether the name was its `_bucket` series.
    Metric {
        family: String,
        bucket: bool,
    },
    Recording(String),
}

struct Checker {
    families: BTreeMap<String, Family>,
    rules: Rules,
}

impl Checker {
    fn new() -> Self {
        Checker {
            families: families(),
            rules: rules(),
        }
    }

    /// Resolves an identifier that mentions `taphook_`; `Err` says why it
    /// does not exist.
    fn resolve(&self, id: &str) -> Result<Ref, String> {
        if id.contains(':') {
            return if self.rules.recording.contains_key(id) {
                Ok(Ref::Recording(id.to_string()))
            } else {
                Err(format!("recording rule {id} is not defined in {RULES}"))
            };
        }
        if self.families.contains_key(id) {
            return Ok(Ref::Metric {
                family: id.to_string(),
                bucket: false,
            });
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = id.strip_suffix(suffix) {
                if self.families.get(base).is_some_and(|f| f.histogram) {
                    return Ok(Ref::Metric {
                        family: base.to_string(),
                        bucket: suffix == "_bucket",
                    });
                }
            }
        }
        Err(format!("{id} is not a metric taphook exports"))
    }

    /// Labels a series of this reference can carry.
    fn labels(&self, r: &Ref) -> BTreeSet<String> {
        let mut labels = match r {
            Ref::Metric { family, bucket } => {
                let mut l = self.families[family].labels.clone();
                l.extend(TARGET_LABELS.iter().map(|s| s.to_string()));
                if *bucket {
                    l.insert("le".into());
                }
                l
            }
            Ref::Recording(name) => self.rules.recording_labels[name].clone(),
        };
        labels.insert("__name__".into());
        labels
    }

    /// Every `taphook` reference in the text, resolved.
    fn refs(&self, text: &str, ctx: &str, errors: &mut Vec<String>) -> Vec<(usize, Ref)> {
        let mut out = Vec::new();
        for (at, id) in identifiers(text) {
            if !id.contains("taphook_") {
                continue;
            }
            match self.resolve(id) {
                Ok(r) => out.push((at + id.len(), r)),
                Err(e) => errors.push(format!("{ctx}: {e}")),
            }
        }
        out
    }

    /// Checks one PromQL expression; returns the metric families it uses
    /// (through recording rules too). `ctx` names it in errors.
    fn check_expr(&self, expr: &str, ctx: &str, errors: &mut Vec<String>) -> BTreeSet<String> {
        let text = strip_strings(expr);
        let refs = self.refs(&text, ctx, errors);
        let mut used = BTreeSet::new();
        for (end, r) in &refs {
            // The selector right after the name.
            if let Some(open) = next_non_space(&text, *end).filter(|&i| &text[i..=i] == "{") {
                for matcher in balanced(&text, open).split(',') {
                    let name: String = matcher
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && !self.labels(r).contains(&name) {
                        errors.push(format!("{ctx}: {r:?} has no label `{name}`: {expr}"));
                    }
                }
            }
            match r {
                Ref::Metric { family, .. } => {
                    used.insert(family.clone());
                }
                Ref::Recording(name) => {
                    for inner in &self.rules.recording[name] {
                        used.extend(self.check_expr(inner, &format!("{ctx} → {name}"), errors));
                    }
                }
            }
        }
        for (labels, arg) in by_clauses(&text) {
            for (_, r) in self.refs(&arg, ctx, errors) {
                for l in labels.difference(&self.labels(&r)) {
                    errors.push(format!(
                        "{ctx}: by ({l}) but {r:?} has no label {l}: {expr}"
                    ));
                }
            }
        }
        // Conservative: an on() label must exist on every taphook series
        // in the expression (true of every join these files make).
        for labels in on_clauses(&text) {
            for (_, r) in &refs {
                for l in labels.difference(&self.labels(r)) {
                    errors.push(format!(
                        "{ctx}: on ({l}) but {r:?} has no label {l}: {expr}"
                    ));
                }
            }
        }
        used
    }

    /// `label_values(metric{selector}, label)` of a template variable.
    fn check_label_values(&self, query: &str, ctx: &str, errors: &mut Vec<String>) {
        let text = strip_strings(query);
        let open = text.find("label_values(").expect("label_values") + "label_values".len();
        let args = balanced(&text, open);
        let (selector, label) = args.rsplit_once(',').expect("label_values(metric, label)");
        self.check_expr(selector, ctx, errors);
        let refs = self.refs(selector, ctx, errors);
        assert_eq!(refs.len(), 1, "{ctx}: one metric in {query}");
        if !self.labels(&refs[0].1).contains(label.trim()) {
            errors.push(format!("{ctx}: {:?} has no label {label}", refs[0].1));
        }
    }
}

// ------------------------------------------------------------ the dashboard

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(path(DASHBOARD)).unwrap()).unwrap()
}

/// Every panel, rows' nested panels included, with the title of the row
/// it sits under ("" before any row).
fn panels(d: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut row = String::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            row = s(&p["title"]).to_string();
            for nested in p["panels"].as_array().into_iter().flatten() {
                out.push((row.clone(), nested.clone()));
            }
        }
        out.push((row.clone(), p.clone()));
    }
    out
}

fn exprs(p: &Value) -> Vec<String> {
    p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect()
}

/// The PromQL of the template variables' queries.
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = match &v["query"] {
            Value::String(q) => q.clone(),
            q => s(&q["query"]).to_string(),
        };
        if let Some(def) = v["definition"].as_str() {
            assert_eq!(
                def, q,
                "variable {}: definition and query differ",
                v["name"]
            );
        }
        out.push((s(&v["name"]).to_string(), q));
    }
    out
}

fn assert_no_errors(errors: Vec<String>) {
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn dashboard_queries_use_exported_metrics_and_labels() {
    let c = Checker::new();
    let d = dashboard();
    let mut errors = Vec::new();
    let mut n = 0;
    for (_, p) in panels(&d) {
        for e in exprs(&p) {
            c.check_expr(&e, &format!("panel {:?}", p["title"]), &mut errors);
            n += 1;
        }
    }
    for (name, q) in variable_queries(&d) {
        c.check_label_values(&q, &format!("variable {name}"), &mut errors);
    }
    assert!(n > 30, "only {n} queries found");
    assert_no_errors(errors);
}

#[test]
fn rules_use_exported_metrics_and_labels() {
    let c = Checker::new();
    let mut errors = Vec::new();
    for (name, exprs) in &c.rules.recording {
        for e in exprs {
            c.check_expr(e, &format!("record {name}"), &mut errors);
        }
    }
    for (name, expr, _, _) in &c.rules.alerts {
        c.check_expr(expr, &format!("alert {name}"), &mut errors);
    }
    assert_no_errors(errors);
}

/// The checker itself: it must reject what it is there to reject.
#[test]
fn the_checker_rejects_unknown_metrics_and_labels() {
    let c = Checker::new();
    let bad = [
        "rate(taphook_no_such_total[5m])",
        "taphook_outbox_pending{route=\"x\"}",
        "sum by (template_key) (rate(taphook_deliveries_total[5m]))",
        "histogram_quantile(0.5, sum by (le) (rate(taphook_capture_bytes_bucket[5m])))",
        "sum by (le) (rate(taphook_deliveries_total[5m]))",
        "job_webhook:taphook_nothing:rate5m",
        "job_webhook:taphook_delivery_attempts:rate5m{stage=\"x\"}",
        "a and on (stage) sum by (job, webhook) (taphook_outbox_dead)",
    ];
    for e in bad {
        let mut errors = Vec::new();
        c.check_expr(e, "t", &mut errors);
        assert!(!errors.is_empty(), "accepted: {e}");
    }
    let good = [
        "histogram_quantile(0.9, sum by (le, webhook) (rate(taphook_delivery_duration_seconds_bucket{job=~\"$job\", webhook=~\"taphook_x\"}[5m])))",
        "sum by (job, webhook) (taphook_outbox_dead) and on (job, webhook) taphook_webhook_paused",
        "job_webhook:taphook_delivery_attempts:rate5m{job=\"a\", webhook=\"b\"}",
    ];
    for e in good {
        let mut errors = Vec::new();
        c.check_expr(e, "t", &mut errors);
        assert_no_errors(errors);
    }
    let used = c.check_expr(
        "job_webhook:taphook_delivery_attempts_failed:ratio_rate5m",
        "t",
        &mut Vec::new(),
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["taphook_delivery_attempts_total"]
    );
}

#[test]
fn dashboard_has_the_panels_on_the_templated_datasource() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["template_key", "webhook", "job", "instance"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    }
    let ds_ok = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for (_, p) in &all {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id {}",
            p["id"]
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "{}: gridPos",
            p["title"]
        );
        if p["type"] == "row" {
            continue; // rows hold panels, no queries
        }
        assert!(
            ds_ok(&p["datasource"]),
            "panel {}: datasource {}",
            p["title"],
            p["datasource"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {}: no query", p["title"]);
        for t in targets {
            assert!(
                ds_ok(&t["datasource"]),
                "panel {}: target datasource",
                p["title"]
            );
            assert!(!s(&t["expr"]).trim().is_empty(), "panel {}", p["title"]);
        }
    }
    let titles: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, p)| p["title"].as_str())
        .collect();
    let missing: Vec<_> = PANELS.iter().filter(|t| !titles.contains(*t)).collect();
    assert!(missing.is_empty(), "missing panels: {missing:?}");
    // The funnel row repeats per template, and its bars are in stage order.
    let funnel_row = all
        .iter()
        .find(|(_, p)| p["type"] == "row" && p["title"] == FUNNEL_ROWS[0])
        .expect("funnel row");
    assert_eq!(funnel_row.1["repeat"], "template_key");
    let funnel = all
        .iter()
        .find(|(_, p)| p["title"] == "Sessions reaching each stage")
        .unwrap();
    let stages: Vec<String> = exprs(&funnel.1)
        .iter()
        .map(|e| {
            e.split("stage=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(
        stages,
        [
            "initialized",
            "uploaded",
            "header_selected",
            "mapped",
            "submitted",
            "closed"
        ]
    );
}

/// Grafana's variables replaced by values, each query as a recording rule:
/// `promtool check rules` parses them all.
#[test]
fn dashboard_promql_parses() {
    let d = dashboard();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (_, p) in panels(&d) {
        for e in exprs(&p) {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$__interval", "1m")
                .replace("${datasource}", "x");
            let e = regex_free_vars(&e);
            yaml.push_str(&format!(
                "      - record: dashboard_query_{n}\n        expr: {}\n",
                serde_json::to_string(&e).unwrap()
            ));
            n += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is needed (make test installs it)");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `$name` / `${name}` → `.*` (every variable is used in `=~` matchers).
fn regex_free_vars(e: &str) -> String {
    let mut out = String::new();
    let mut rest = e;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let tail = tail.strip_prefix('{').unwrap_or(tail);
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push_str(".*");
        rest = tail[len..].strip_prefix('}').unwrap_or(&tail[len..]);
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------ the rules file

#[test]
fn every_alert_has_severity_annotations_runbook_and_unit_tests() {
    let r = rules();
    let tests = load_yaml(RULES_TEST);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut recorded = String::new();
    for t in tests["tests"].as_array().expect("tests") {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = s(&a["alertname"]).to_string();
            match a["exp_alerts"].as_array() {
                Some(list) if !list.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
        for e in t["promql_expr_test"].as_array().into_iter().flatten() {
            recorded.push_str(s(&e["expr"]));
            recorded.push('\n');
        }
    }
    let operations = std::fs::read_to_string(path("docs/OPERATIONS.md")).ok();
    if operations.is_none() {
        eprintln!("docs/OPERATIONS.md missing: runbook anchors not checked against it");
    }
    let mut names = BTreeSet::new();
    for (name, expr, labels, annotations) in &r.alerts {
        assert!(names.insert(name.clone()), "alert {name} defined twice");
        assert!(
            ["critical", "warning", "info"].contains(&s(&labels["severity"])),
            "{name}: severity {}",
            labels["severity"]
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                !s(&annotations[key]).trim().is_empty(),
                "{name}: annotation {key}"
            );
        }
        assert!(
            s(&annotations["description"]).contains("$labels."),
            "{name}: the description names no label"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            s(&annotations["runbook_url"]),
            format!("{RUNBOOK}{anchor}"),
            "{name}: runbook_url"
        );
        if let Some(doc) = &operations {
            assert!(
                doc.lines().any(|l| l.trim() == format!("### {name}")),
                "docs/OPERATIONS.md has no `### {name}` heading (anchor #{anchor})"
            );
        }
        assert!(fires.contains(name), "{name}: no unit test where it fires");
        assert!(
            quiet.contains(name),
            "{name}: no unit test where it must not fire"
        );
        assert!(!expr.trim().is_empty());
    }
    for name in r.recording.keys() {
        assert!(
            recorded.contains(name.as_str()),
            "recording rule {name}: no promql_expr_test"
        );
    }
    let untested: Vec<_> = fires
        .union(&quiet)
        .filter(|n| !names.contains(*n))
        .collect();
    assert!(
        untested.is_empty(),
        "tests for unknown alerts: {untested:?}"
    );
}

// ------------------------------------------------------------ live

/// The families the dashboard's funnel rows read, through recording rules
/// too.
fn funnel_families(c: &Checker) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (row, p) in panels(&dashboard()) {
        if FUNNEL_ROWS.contains(&row.as_str()) {
            for e in exprs(&p) {
                used.extend(c.check_expr(&e, "funnel", &mut Vec::new()));
            }
        }
    }
    used
}

/// A live taphook, after one full importer session and one left to
/// stall, exports every family the funnel rows use.
///
/// Needs the funnel wiring (the `funnel:` config section and the funnel
/// metrics being set): before it is merged, taphook refuses the
/// `funnel:` key and this test fails at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_taphook_exports_the_funnel_families() {
    let c = Checker::new();
    let wanted = funnel_families(&c);
    for f in [
        "taphook_funnel_sessions_total",
        "taphook_funnel_stage_duration_seconds",
        "taphook_sessions_stalled_total",
        "taphook_funnel_open_sessions",
    ] {
        assert!(wanted.contains(f), "the funnel rows do not use {f}");
    }
    let stack = common::Stack::start(common::Setup {
        rules: vec![(
            "hooks.yaml",
            format!(
                "webhooks:\n{}",
                common::webhook("all", "/hooks/all", "    events: [\"*\"]\n")
            ),
        )],
        config: "funnel:\n  stall_after: 1s\n",
        ..Default::default()
    })
    .await;
    let done = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(done).await;
    let _stalled = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut text = stack.metrics().await;
    loop {
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|f| !text.contains(&format!("# TYPE {f} ")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not exported: {missing:?}\n{text}\n{}",
            stack.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = stack.metrics().await;
    }
}
