//! Derive and fan-out cost per exchange, on the shipped OneSchema profile.
//! `exchange_document` (building the JSON document alone) is the baseline
//! the derive figures are read against.
//!
//! Run: `cargo bench --bench pipeline`

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use taphook::derive::{Captured, Deriver, Exchange};
use taphook::filter::fan_out;
use taphook::rules::load_dir;
use taphook::store::MemorySessions;

fn captured(body: &[u8]) -> Option<Captured> {
    let mut c = Captured::new(1 << 20);
    c.push(body);
    Some(c)
}

fn create_exchange() -> Exchange {
    let json = |v: &str| (v.to_string(), Bytes::from_static(b"application/json"));
    Exchange {
        method: "POST".into(),
        path: "/v1/embeds".into(),
        query: None,
        request_headers: vec![json("content-type"), ("x-api-key".into(), Bytes::from_static(b"k"))],
        request_body: captured(br#"{"template_key":"contacts","embed_user_jwt":"eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoidSJ9.c2ln","event_webhook_keys":["event_webhook"],"dev_mode":false}"#),
        files: vec![],
        status: 200,
        response_headers: vec![json("content-type")],
        response_body: captured(br#"{"id":53511,"token":"tok_53511","status":"initialized"}"#),
        completed_at: SystemTime::now(),
    }
}

fn map_exchange() -> Exchange {
    let mut ex = create_exchange();
    ex.path = "/v1/embeds/53511/map".into();
    ex.request_body = captured(br#"{"mapping":{"name":"name","email":"email"}}"#);
    ex.response_body = captured(br#"{"id":53511,"status":"mapped","validation_error_counts":{"total":1,"by_column":{"email":{"invalid_email":1}}}}"#);
    ex
}

fn bench(c: &mut Criterion) {
    let rules = load_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
        &|_| None,
    )
    .expect("shipped rules load");
    let sessions = MemorySessions::new(10_000, Duration::from_secs(3600));
    let deriver = Deriver {
        environment_name: "Production".into(),
        jwt_hs256_secret: None,
    };
    let create = create_exchange();
    let map = map_exchange();
    // The session must exist for the later steps.
    deriver.derive(&create, &rules, &sessions);

    c.bench_function("exchange_document", |b| {
        b.iter(|| black_box(create.document("Production")))
    });
    c.bench_function("derive/embed_initialized", |b| {
        b.iter(|| black_box(deriver.derive(&create, &rules, &sessions)))
    });
    c.bench_function("derive/columns_mapped", |b| {
        b.iter(|| black_box(deriver.derive(&map, &rules, &sessions)))
    });
    let event = deriver
        .derive(&map, &rules, &sessions)
        .pop()
        .expect("an event");
    c.bench_function("fan_out/shipped_webhooks", |b| {
        b.iter(|| black_box(fan_out(&event, &rules)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
