//! A recording webhook receiver: every request is kept (path, headers,
//! body) and answered from a per-path script, so tests can make a
//! receiver fail, throttle, or hang.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header in seconds.
    RetryAfter(u16, u64),
    /// Never answers (until the connection is dropped).
    Hang,
    /// Answers with the status after a delay in milliseconds.
    Slow(u64, u16),
    /// Answers with the status, an `x-receiver` header, a cookie and a
    /// body of [`VERBOSE_BODY`] bytes (what an attempt's record keeps).
    Verbose(u16),
}

/// The size of a [`Reply::Verbose`] body.
pub const VERBOSE_BODY: usize = 5000;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl Recorded {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, VecDeque<Reply>>,
    /// The answer once a path's script is used up (else 200).
    defaults: HashMap<String, Reply>,
    received: Vec<Recorded>,
}

struct Shared {
    inner: Mutex<Inner>,
    arrivals: broadcast::Sender<Recorded>,
}

/// A running receiver on a loopback port.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts on a free loopback port, in the current Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            arrivals: broadcast::channel(1024).0,
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers the next requests to `path` with `replies`, in order; after
    /// them, 200.
    pub fn script(&self, path: &str, replies: &[Reply]) {
        self.lock()
            .scripts
            .insert(path.to_string(), replies.iter().copied().collect());
    }

    /// Answers every request to `path` after its script with `reply`.
    pub fn default_reply(&self, path: &str, reply: Reply) {
        self.lock().defaults.insert(path.to_string(), reply);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.lock().received.clone()
    }

    /// The requests received on `path`.
    pub fn received_on(&self, path: &str) -> Vec<Recorded> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Arrivals from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.shared.arrivals.subscribe()
    }

    /// Waits until `path` has received at least `n` requests, or `limit`
    /// passes; returns what it received.
    pub async fn wait_for(&self, path: &str, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received_on(path);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let mut recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        status: 200,
    };
    let reply = {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        let reply = inner
            .scripts
            .get_mut(&recorded.path)
            .and_then(VecDeque::pop_front)
            .or_else(|| inner.defaults.get(&recorded.path).copied())
            .unwrap_or(Reply::Status(200));
        recorded.status = match reply {
            Reply::Status(s) | Reply::RetryAfter(s, _) | Reply::Slow(_, s) | Reply::Verbose(s) => s,
            Reply::Hang => 200,
        };
        inner.received.push(recorded.clone());
        reply
    };
    let _ = shared.arrivals.send(recorded);
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s)
            .unwrap_or(StatusCode::OK)
            .into_response(),
        Reply::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap_or(StatusCode::OK),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Slow(ms, s) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::from_u16(s)
                .unwrap_or(StatusCode::OK)
                .into_response()
        }
        Reply::Verbose(s) => (
            StatusCode::from_u16(s).unwrap_or(StatusCode::OK),
            [
                ("x-receiver", "taphook-demo"),
                ("set-cookie", "rid=receiver-secret-cookie; Path=/; HttpOnly"),
            ],
            "r".repeat(VERBOSE_BODY),
        )
            .into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}
