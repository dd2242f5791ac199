//! How the proxy stops accepting (on SIGTERM, and on an upgrade once the
//! new process has the listening sockets): connections accepted in the
//! last moment still get their first request served.
//!
//! Pingora's HTTP proxy, once its listener stops, closes at once every
//! connection that is waiting for a request. That is right for an idle
//! kept-alive connection, but a connection accepted a moment before (its
//! TLS handshake just done, its request still on the wire) is closed
//! unanswered too, and the client sees a reset: a handful per upgrade under
//! load, where new connections arrive all the time. [`FirstRequestWindow`]
//! wraps the proxy and holds that close back for a short window, so those
//! requests arrive, are read and are answered (with `Connection: close`,
//! as the draining proxy answers everything), and the window's end closes
//! what is still idle.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// The longest a connection accepted before the listener stopped may take
/// to send its first request.
pub const FIRST_REQUEST_WINDOW: Duration = Duration::from_secs(2);

/// A server app whose clean-up (closing the connections that wait for a
/// request) waits `window` after its listener stops.
pub struct FirstRequestWindow<A> {
    inner: Arc<A>,
    window: Duration,
}

impl<A> FirstRequestWindow<A> {
    /// The window is [`FIRST_REQUEST_WINDOW`], or `grace` when shorter
    /// (the process stops serving altogether at the grace's end).
    pub fn new(inner: A, grace: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            window: FIRST_REQUEST_WINDOW.min(grace),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FirstRequestWindow<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tracing::info!(window = ?self.window, "proxy listener stopped; connections just accepted get their first request read");
        tokio::time::sleep(self.window).await;
        self.inner.cleanup().await;
    }
}
