//! `ordering: session` under test: sessions that each go through six
//! steps, a receiver that fails each session's third step twice with 503
//! and records every arrival, and the check that each session's
//! deliveries kept their order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{json, Value};

pub const STEPS: [&str; 6] = [
    "embed_initialized",
    "file_uploaded",
    "header_selected",
    "columns_mapped",
    "import_submitted",
    "embed_closed",
];

/// Step by step, every session at each step: the events to push, in the
/// order they are accepted.
pub fn step_by_step(sessions: &[String]) -> Vec<Value> {
    STEPS
        .iter()
        .flat_map(|step| {
            sessions
                .iter()
                .map(move |s| json!({"event_type": step, "embed_id": s}))
        })
        .collect()
}

/// One arrival.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    /// When the status was sent back.
    pub answered: Instant,
    pub session: String,
    pub step: usize,
    pub status: u16,
}

/// The receiver: every arrival, and how often each session's third step
/// was failed.
#[derive(Default)]
pub struct Recorder {
    pub arrivals: Mutex<Vec<Arrival>>,
    failed: Mutex<HashMap<String, u32>>,
}

async fn record(State(rec): State<Arc<Recorder>>, body: axum::body::Bytes) -> StatusCode {
    let at = Instant::now();
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    let session = event["embed_id"].as_str().unwrap_or_default().to_string();
    let step = STEPS
        .iter()
        .position(|s| event["event_type"] == *s)
        .unwrap_or(usize::MAX);
    // Long enough that sessions' deliveries overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let status = if step == 2 {
        let mut failed = rec.failed.lock().unwrap();
        let n = failed.entry(session.clone()).or_default();
        *n += 1;
        if *n <= 2 {
            503
        } else {
            200
        }
    } else {
        200
    };
    rec.arrivals.lock().unwrap().push(Arrival {
        at,
        answered: Instant::now(),
        session,
        step,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Recorder {
    /// Listens on a free loopback port; returns the recorder and the URL
    /// to deliver to.
    pub async fn start() -> (Arc<Recorder>, String) {
        let rec = Arc::new(Recorder::default());
        let app = axum::Router::new()
            .route("/ordered", axum::routing::post(record))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ordered", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rec, url)
    }

    /// How many arrivals were answered 200.
    pub fn delivered(&self) -> usize {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.status == 200)
            .count()
    }

    /// Sessions with a step not delivered yet, and what each received.
    pub fn unfinished(&self, sessions: &[String]) -> Vec<(String, Vec<(usize, u16)>)> {
        let got = self.arrivals.lock().unwrap().clone();
        sessions
            .iter()
            .filter(|s| {
                (0..STEPS.len()).any(|step| {
                    !got.iter()
                        .any(|a| a.session == **s && a.step == step && a.status == 200)
                })
            })
            .map(|s| {
                let mine = got
                    .iter()
                    .filter(|a| a.session == *s)
                    .map(|a| (a.step, a.status));
                (s.clone(), mine.collect())
            })
            .collect()
    }

    /// Waits until every session's every step was delivered; the panic
    /// message gets what is unfinished and `context()`.
    pub async fn wait_done(
        &self,
        sessions: &[String],
        limit: Duration,
        context: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let unfinished = self.unfinished(sessions);
            if unfinished.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "unfinished: {unfinished:?}\n{}",
                context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each session's steps arrived in order: no step before every earlier
    /// one was delivered, its 200 answered (a step may come twice around a
    /// restart: at least once); the third failed twice, then went
    /// through; and the sessions went side by side, not one after another.
    pub fn assert_in_order(&self, sessions: &[String]) {
        let mut arrivals = self.arrivals.lock().unwrap().clone();
        arrivals.sort_by_key(|a| a.at);
        let mut spans = Vec::new();
        for s in sessions {
            let mine: Vec<&Arrival> = arrivals.iter().filter(|a| a.session == *s).collect();
            let summary: Vec<(usize, u16)> = mine.iter().map(|a| (a.step, a.status)).collect();
            for a in &mine {
                for earlier in 0..a.step {
                    assert!(
                        mine.iter()
                            .any(|b| b.step == earlier && b.status == 200 && b.answered <= a.at),
                        "{s}: step {} arrived before step {earlier} was delivered: {summary:?}",
                        a.step
                    );
                }
            }
            for step in 0..STEPS.len() {
                assert!(
                    mine.iter().any(|a| a.step == step && a.status == 200),
                    "{s}: step {step} not delivered: {summary:?}"
                );
            }
            let third: Vec<u16> = mine
                .iter()
                .filter(|a| a.step == 2)
                .map(|a| a.status)
                .collect();
            assert_eq!(third[..3], [503, 503, 200], "{s}: {summary:?}");
            spans.push((mine[0].at, mine.last().unwrap().at));
        }
        let last_start = spans.iter().map(|s| s.0).max().unwrap();
        let first_end = spans.iter().map(|s| s.1).min().unwrap();
        assert!(last_start < first_end, "sessions went one after another");
    }
}
