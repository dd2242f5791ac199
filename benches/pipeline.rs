//! Per-exchange costs on the hot parts of the pipeline (criterion):
//! deriving each route of the shipped OneSchema profile, fan-out of one
//! event to 1, 100 and 1,000 filtered webhooks, dedup lookups, and building
//! each format's request body, and the funnel's bookkeeping per event (a
//! session's next step, a new session). `exchange_document` (building the
//! JSON document alone) is the baseline the derive figures are read against.
//!
//! Run: `cargo bench --bench pipeline`

use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use serde_json::json;
use taphook::dedup::Dedup;
use taphook::deliver::formats;
use taphook::derive::{Captured, Deriver, Exchange, FilePart};
use taphook::filter::fan_out;
use taphook::funnel::{Funnel, FunnelConfig};
use taphook::rules::source::Document;
use taphook::rules::{load_dir, load_documents};
use taphook::store::MemorySessions;

fn captured(body: &[u8]) -> Option<Captured> {
    let mut c = Captured::new(1 << 20);
    c.push(body);
    Some(c)
}

fn exchange(method: &str, path: &str, request: &[u8], response: &[u8]) -> Exchange {
    let json = |name: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static("application/json"));
        h
    };
    let mut request_headers = json("content-type");
    request_headers.insert("x-api-key", HeaderValue::from_static("k"));
    Exchange {
        request_id: "bench".into(),
        method: method.into(),
        path: path.into(),
        query: None,
        request_headers,
        request_body: captured(request),
        files: vec![],
        status: 200,
        response_headers: json("content-type"),
        response_body: captured(response),
        completed_at: SystemTime::now(),
        trace: None,
    }
}

/// One exchange per route of `rules/oneschema.yaml`, as the reference importer answers.
fn session_exchanges() -> Vec<(&'static str, Exchange)> {
    let mut upload = exchange(
        "POST",
        "/v1/embeds/53511/upload",
        b"",
        br#"{"id":53511,"status":"uploaded","filename":"contacts.csv","num_rows":3}"#,
    );
    upload.request_body = None;
    upload.files = vec![FilePart {
        field: "file".into(),
        filename: "contacts.csv".into(),
        content_type: Some("text/csv".into()),
    }];
    vec![
        ("embed_initialized", exchange("POST", "/v1/embeds", br#"{"template_key":"contacts","embed_user_jwt":"eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoidSJ9.c2ln","event_webhook_keys":["event_webhook"],"dev_mode":false}"#, br#"{"id":53511,"token":"tok_53511","status":"initialized"}"#)),
        ("file_uploaded", upload),
        ("header_selected", exchange("POST", "/v1/embeds/53511/set-header", br#"{"index":0}"#, br#"{"id":53511,"status":"header_selected","header_row_index":0,"columns":["name","email"]}"#)),
        ("columns_mapped", exchange("POST", "/v1/embeds/53511/map", br#"{"mapping":{"name":"name","email":"email"}}"#, br#"{"id":53511,"status":"mapped","validation_error_counts":{"total":1,"by_column":{"email":{"invalid_email":1}}}}"#)),
        ("sheet_operation_performed", exchange("POST", "/v1/embeds/53511/sheet-operations", br#"{"operation":"delete_rows"}"#, br#"{"id":53511,"status":"ok","operation":"delete_rows"}"#)),
        ("import_submitted", exchange("POST", "/v1/embeds/53511/import", b"{}", br#"{"id":53511,"status":"submitted","import_type":"api"}"#)),
        ("embed_closed", exchange("DELETE", "/v1/embeds/53511", b"", br#"{"id":53511,"status":"closed"}"#)),
        ("embed_resumed", exchange("POST", "/v1/embeds/53511/resume", b"{}", br#"{"id":53511,"status":"resumed"}"#)),
    ]
}

/// The shipped profile plus `n` webhooks, each with a realistic filter.
fn rules_with_webhooks(n: usize) -> taphook::rules::Rules {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile = std::fs::read_to_string(root.join("rules/oneschema.yaml")).unwrap();
    let hooks: String = (0..n)
        .map(|i| {
            format!(
                "  - key: hook{i}\n    url: http://127.0.0.1:9/h{i}\n    events: [columns_mapped, import_submitted]\n    assignment: session\n    filter: {{\"and\": [{{\"in\": [\"$template_key\", [\"contacts\", \"orders{i}\"]]}}, {{\">=\": [\"$data.validation_error_counts.total\", {}]}}]}}\n",
                i % 3
            )
        })
        .collect();
    let docs = [
        Document::parse(&root.join("rules/oneschema.yaml"), &profile, &|_| None).unwrap(),
        Document::parse(
            Path::new("hooks.yaml"),
            &format!("webhooks:\n{hooks}"),
            &|_| None,
        )
        .unwrap(),
    ];
    load_documents(&docs).unwrap()
}

fn bench(c: &mut Criterion) {
    let rules = load_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
        &|_| None,
    )
    .expect("shipped rules load");
    let sessions = MemorySessions::new(64 << 20, Duration::from_secs(3600));
    let deriver = Deriver::offline("Production");
    let exchanges = session_exchanges();
    // The session must exist for the later steps.
    assert_eq!(deriver.derive(&exchanges[0].1, &rules, &sessions).len(), 1);

    c.bench_function("exchange_document", |b| {
        b.iter(|| black_box(exchanges[0].1.document("Production")))
    });
    let mut derive = c.benchmark_group("derive");
    for (name, ex) in &exchanges {
        assert_eq!(deriver.derive(ex, &rules, &sessions).len(), 1, "{name}");
        derive.bench_function(*name, |b| {
            b.iter(|| black_box(deriver.derive(ex, &rules, &sessions)))
        });
    }
    derive.finish();

    let event = deriver
        .derive(&exchanges[3].1, &rules, &sessions)
        .pop()
        .expect("an event");
    let mut fan = c.benchmark_group("fan_out");
    for n in [1, 100, 1000] {
        let many = rules_with_webhooks(n);
        fan.bench_with_input(BenchmarkId::from_parameter(n), &many, |b, r| {
            b.iter(|| black_box(fan_out(&event, r)))
        });
    }
    fan.finish();

    let dedup = Dedup::new(1_000_000, Duration::from_secs(86400));
    for i in 0..100_000 {
        dedup.first_seen(&format!("event-{i}"));
    }
    c.bench_function("dedup/seen_uuid", |b| {
        b.iter(|| black_box(dedup.first_seen("event-5000")))
    });

    let mut fmt = c.benchmark_group("format");
    let mut batch = event.clone();
    batch.event.data = json!({"batch_id": "b1", "schema_id": 1, "valid_rows": (0..2500).map(|i| json!({"n": i})).collect::<Vec<_>>()});
    for (name, format) in [
        ("oneschema", "oneschema"),
        ("dromo", "dromo"),
        ("dromo-basic", "dromo-basic"),
        ("flatfile_2500_rows", "flatfile"),
    ] {
        let doc = Document::parse(Path::new("h.yaml"), &format!("routes:\n  - name: r\n    event: columns_mapped\n    path: /r\nwebhooks:\n  - key: h\n    url: http://127.0.0.1:9/\n    events: [\"*\"]\n    format: {format}\n"), &|_| None).unwrap();
        let r = load_documents(&[doc]).unwrap();
        let webhook = r.webhooks[0].clone();
        let ev = if format == "flatfile" {
            batch.clone()
        } else {
            event.clone()
        };
        fmt.bench_function(name, |b| {
            b.iter(|| black_box(formats::requests(&webhook, &ev)))
        });
    }
    fmt.finish();

    // The funnel: one event of a known session (cached progress, one store
    // write queued), and of a new one (derive found no session: no read).
    let dir = tempfile::tempdir().expect("temp dir");
    let store = taphook::store::Store::open(dir.path()).expect("store");
    let metrics = std::sync::Arc::new(taphook::metrics::Metrics::new());
    let funnel = Funnel::new(FunnelConfig::default(), metrics, store.clone());
    let mut step = event.event.clone();
    funnel.observe(&step, true);
    let mut group = c.benchmark_group("funnel");
    group.bench_function("observe/known_session", |b| {
        b.iter(|| {
            step.created_at += 0.001;
            funnel.observe(black_box(&step), false)
        })
    });
    let mut n = 0u64;
    group.bench_function("observe/new_session", |b| {
        b.iter(|| {
            n += 1;
            step.embed_id = json!(1_000_000 + n);
            funnel.observe(black_box(&step), true)
        })
    });
    group.finish();
    store.close();

    // The console's per-minute counts: one per event accepted, one per
    // attempt (a mutex and a ring's back entry).
    let activity = taphook::activity::Activity::default();
    let mut group = c.benchmark_group("activity");
    let now = taphook::store::sqlite::now_ms();
    group.bench_function("event", |b| b.iter(|| activity.event(black_box(now))));
    group.bench_function("attempt", |b| {
        b.iter(|| activity.attempt(black_box("analytics"), true, black_box(now)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
