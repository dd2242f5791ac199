//! Overload: when the pipeline is slower than the proxy, finished
//! exchanges wait for room in the tap queue (`tap.when_full: wait`, the
//! default) instead of being dropped, and every request still succeeds.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::StreamExt as _;

const REQUESTS: usize = 60;

/// `POST /_fixtures/count` (the importer answers with the body's size)
/// becomes a `counted` event; the request body is a large JSON document
/// the pipeline parses, so derive is far slower than proxying.
fn rules() -> Vec<(&'static str, String)> {
    vec![(
        "count.yaml",
        format!(
            "routes:\n  - name: count\n    event: counted\n    method: POST\n    path: /_fixtures/count\n    dedup_key: [\"n\", \"$request.body.n\"]\n    data:\n      n: $request.body.n\nwebhooks:\n{}",
            webhook("all", "/hooks/all", "    events: [counted]\n")
        ),
    )]
}

fn body(n: usize) -> Vec<u8> {
    let pad: Vec<usize> = (0..40_000).collect();
    serde_json::to_vec(&serde_json::json!({"n": n, "pad": pad})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tap_queue_makes_exchanges_wait_and_loses_none() {
    let stack = Stack::start(Setup {
        rules: rules(),
        config: "tap:\n  queue_capacity: 1\n",
        ..Default::default()
    })
    .await;
    let statuses: Vec<u16> = futures::stream::iter(0..REQUESTS)
        .map(|n| {
            let stack = &stack;
            async move {
                stack
                    .post("/_fixtures/count", "application/json", body(n))
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let received = stack
        .receiver
        .wait_for("/hooks/all", REQUESTS, Duration::from_secs(60))
        .await;
    let numbers: BTreeSet<u64> = received
        .iter()
        .filter_map(|r| r.json()["data"]["n"].as_u64())
        .collect();
    assert_eq!(numbers, (0..REQUESTS as u64).collect());
    assert_eq!(
        stack
            .metric("taphook_events_dropped_total{reason=\"tap_queue_full\"}")
            .await,
        0.0
    );
    // The queue (one slot) was full: exchanges waited for room.
    assert!(stack.metric("taphook_tap_queue_waits_total").await > 0.0);
}
